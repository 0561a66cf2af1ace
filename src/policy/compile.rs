//! Raw policy files → a [`PolicySet`]: names checked, regexes compiled, lists loaded,
//! the rule index built. Every [`LoadError`] is born here or in `parse`.
//!
//! Compilation is pure but for reading list files; `load` does the directory walk and
//! `reload` the swapping.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use regex::Regex;

use super::index::Index;
use super::parse::{
    self, RawDecision, RawEntry, RawError, RawFile, RawGroup, RawList, RawMode, RawOps, RuleLines, Scalar,
};
use super::warn::{self, Warning};
use crate::decision::{Outcome, Refusal};

/// A place in a policy file, shown as `file:line`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    /// The policy file.
    pub file: PathBuf,
    /// 1-based line.
    pub line: usize,
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

/// Why a policy set could not be loaded. Each message starts with `file:line:`.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The directory itself could not be listed.
    #[error("{}: cannot read the policy directory: {source}; create it or pass --policies DIR", dir.display())]
    Dir { dir: PathBuf, source: std::io::Error },
    /// A policy or list file could not be read.
    #[error("{}:1: cannot read the file: {source}", file.display())]
    Read { file: PathBuf, source: std::io::Error },
    /// The YAML is malformed or has an unknown key or a wrong type.
    #[error("{at}: {message}")]
    Syntax { at: Place, message: String },
    /// Two rules share an id.
    #[error("{at}: rule `{rule}`: id already used at {first}; rule ids must be unique across the policy set")]
    DuplicateRuleId { at: Place, rule: String, first: Place },
    /// Two files define the same list.
    #[error("{at}: list `{list}` is already defined at {first}; list names must be unique across the policy set")]
    DuplicateList { at: Place, list: String, first: Place },
    /// A condition names a list nobody defined.
    #[error("{at}: rule `{rule}`: unknown list `{list}`; defined lists: {known}")]
    UnknownList { at: Place, rule: String, list: String, known: String },
    /// `decision: deny` with no `error:`.
    #[error("{at}: rule `{rule}`: a deny needs `error: {{ code: N, message: \"...\" }}` (code 100 or more)")]
    DenyWithoutError { at: Place, rule: String },
    /// Any other problem with one rule.
    #[error("{at}: rule `{rule}`: {message}")]
    Rule { at: Place, rule: String, message: String },
    /// A problem with one list.
    #[error("{at}: list `{list}`: {message}")]
    List { at: Place, list: String, message: String },
    /// More than one file sets `default`.
    #[error("{at}: `default` is already set at {first}; at most one file of a set may set it")]
    DefaultTwice { at: Place, first: Place },
    /// A problem with the top-level `default`/`error` pair.
    #[error("{at}: {message}")]
    Default { at: Place, message: String },
}

impl LoadError {
    /// The file and line the error is about, for ordering: `None` for the directory.
    fn sort_key(&self) -> Option<(&Path, usize)> {
        match self {
            LoadError::Dir { .. } => None,
            LoadError::Read { file, .. } => Some((file, 1)),
            LoadError::Syntax { at, .. }
            | LoadError::DuplicateRuleId { at, .. }
            | LoadError::DuplicateList { at, .. }
            | LoadError::UnknownList { at, .. }
            | LoadError::DenyWithoutError { at, .. }
            | LoadError::Rule { at, .. }
            | LoadError::List { at, .. }
            | LoadError::DefaultTwice { at, .. }
            | LoadError::Default { at, .. } => Some((&at.file, at.line)),
        }
    }
}

/// All the reasons one load failed; a set is refused whole when there is any.
#[derive(Debug)]
pub struct LoadErrors(pub Vec<LoadError>);

impl fmt::Display for LoadErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for LoadErrors {}

/// A compiled, immutable policy set. Requests share it through an `Arc`; a reload builds a
/// new one and swaps it in whole.
#[derive(Debug)]
pub struct PolicySet {
    pub(crate) rules: Vec<Rule>,
    pub(crate) default: Outcome,
    pub(crate) index: Index,
    /// Every top-level body key a rule reads, sorted: decoders need keep no other.
    body_keys: Box<[Box<str>]>,
    warnings: Vec<Warning>,
    version: String,
    files: Vec<PathBuf>,
}

impl PolicySet {
    /// The sha256 (hex) of the set's file names and contents.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The policy and list files the set was built from.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// How many rules the set has.
    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }

    /// What in the set is probably a mistake (a command no IM server sends, a field none of
    /// a rule's commands carries), in file and rule order. Warnings never refuse a set.
    pub fn warnings(&self) -> &[Warning] {
        &self.warnings
    }

    /// Whether any rule of the set reads the top-level body key `key` (in a condition, a
    /// rate-cap key, or below it by a dotted path or JSON pointer). A decoder may drop the
    /// other keys: no answer can depend on them.
    pub fn reads(&self, key: &str) -> bool {
        self.body_keys.binary_search_by(|k| (**k).cmp(key)).is_ok()
    }

    /// Every compiled regex of the set, by pattern.
    fn regexes(&self) -> HashMap<String, Regex> {
        fn walk(group: &Group, out: &mut HashMap<String, Regex>) {
            for cond in &group.0 {
                match cond {
                    Cond::Field { test: Test::Regex(re), .. } => {
                        out.insert(re.as_str().to_string(), re.clone());
                    }
                    Cond::Field { .. } => {}
                    Cond::Any(groups) | Cond::All(groups) => groups.iter().for_each(|g| walk(g, out)),
                    Cond::Not(g) => walk(g, out),
                }
            }
        }
        let mut out = HashMap::new();
        for rule in &self.rules {
            walk(&rule.when, &mut out);
        }
        out
    }

    /// The empty set: no rules, default allow. Used only where no directory is involved.
    pub fn empty() -> PolicySet {
        PolicySet {
            rules: Vec::new(),
            default: Outcome::Allow,
            index: Index::default(),
            body_keys: Box::default(),
            warnings: Vec::new(),
            version: String::new(),
            files: Vec::new(),
        }
    }
}

/// One compiled rule.
#[derive(Debug)]
pub struct Rule {
    /// Its unique id.
    pub id: Arc<str>,
    /// Where it is written.
    pub at: Place,
    /// Which commands it applies to.
    pub on: OnCommands,
    /// Its conditions.
    pub when: Group,
    /// A rate cap that must also hold (be exceeded) for the rule to hold.
    pub rate_cap: Option<RateCap>,
    /// What it decides when it holds.
    pub outcome: Outcome,
    /// Whether it only reports ("would …") instead of deciding.
    pub is_dry_run: bool,
}

/// `rate_cap:` compiled: the rule holds when allowing the callback would make more than
/// `max` allowed callbacks with the same key values within `per`.
#[derive(Debug)]
pub struct RateCap {
    /// The fields whose values, with the rule id, make the key.
    pub fields: Vec<FieldPath>,
    /// The field names as written, joined by `,`: part of the key, so counts are kept
    /// across reloads only while the key fields stay the same.
    pub field_names: String,
    /// Allowed callbacks per window.
    pub max: u64,
    /// The window.
    pub per: std::time::Duration,
}

/// The longest rate-cap window.
const MAX_CAP_WINDOW: std::time::Duration = std::time::Duration::from_secs(30 * 86_400);

/// The commands a rule applies to.
#[derive(Debug)]
pub enum OnCommands {
    /// `on` omitted: every command.
    Every,
    /// Exact names and `*` globs.
    Some { exact: Vec<Box<str>>, globs: Vec<Box<str>> },
}

impl OnCommands {
    /// Whether the rule applies to `command`.
    pub fn matches(&self, command: &str) -> bool {
        match self {
            OnCommands::Every => true,
            OnCommands::Some { exact, globs } => {
                exact.iter().any(|c| **c == *command) || globs.iter().any(|g| glob_matches(g, command))
            }
        }
    }
}

/// Matches `*` (any run of characters, possibly empty) against `text`; nothing else is special.
pub(super) fn glob_matches(glob: &str, text: &str) -> bool {
    let mut parts = glob.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let mut parts = parts.peekable();
    if parts.peek().is_none() {
        return rest.is_empty();
    }
    while let Some(part) = parts.next() {
        if parts.peek().is_none() {
            // The last part must end the text, after what the parts before it took.
            return rest.len() >= part.len() && rest.ends_with(part);
        }
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    true
}

/// Conditions that must all hold.
#[derive(Debug, Default)]
pub struct Group(pub Vec<Cond>);

/// One condition.
#[derive(Debug)]
pub enum Cond {
    /// A test of one field, possibly negated.
    Field { field: FieldPath, test: Test, is_negated: bool },
    /// At least one group holds.
    Any(Vec<Group>),
    /// Every group holds.
    All(Vec<Group>),
    /// The group does not hold.
    Not(Group),
}

/// A positive test of a field's value.
#[derive(Debug)]
pub enum Test {
    /// Equal by text (strings, numbers) or as a boolean.
    Equals(Scalar),
    /// One of an inline set.
    In(ScalarSet),
    /// A member of a named list.
    InList(Arc<List>),
    /// The regex finds a match in the text.
    Regex(Regex),
    /// The field is present (`true`) or absent (`false`).
    Exists(bool),
}

/// Inline values for `in`: texts and booleans.
#[derive(Debug, Default)]
pub struct ScalarSet {
    /// Strings and numbers, by text.
    pub texts: HashSet<Box<str>>,
    /// Booleans.
    pub bools: Vec<bool>,
}

/// A named list of IDs.
#[derive(Debug)]
pub struct List {
    /// Its name.
    pub name: String,
    /// Its IDs.
    pub ids: HashSet<Box<str>>,
}

/// Where a field lives in a callback body.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum FieldPath {
    /// A top-level key.
    Key(Box<str>),
    /// `a.b.0.c`: object keys, or array indexes where the value is an array.
    Dotted(Box<[Box<str>]>),
    /// A JSON pointer, `/a/0/c`.
    Pointer(Box<str>),
}

impl fmt::Display for FieldPath {
    /// The path as written in a policy.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FieldPath::Key(k) | FieldPath::Pointer(k) => f.write_str(k),
            FieldPath::Dotted(parts) => f.write_str(&parts.join(".")),
        }
    }
}

impl FieldPath {
    /// The top-level key of the body this path starts at.
    pub fn top_key(&self) -> std::borrow::Cow<'_, str> {
        match self {
            FieldPath::Key(k) => (**k).into(),
            FieldPath::Dotted(parts) => parts.first().map_or("", |p| &**p).into(),
            FieldPath::Pointer(p) => {
                let rest = p.strip_prefix('/').unwrap_or(p);
                let first = rest.split('/').next().unwrap_or("");
                if first.contains('~') { first.replace("~1", "/").replace("~0", "~").into() } else { first.into() }
            }
        }
    }

    fn parse(text: &str) -> Result<FieldPath, String> {
        if text.is_empty() {
            return Err("a field name is empty".into());
        }
        if text.starts_with('/') {
            let mut chars = text.chars().peekable();
            while let Some(c) = chars.next() {
                if c == '~' && !matches!(chars.peek(), Some('0' | '1')) {
                    return Err(format!("field `{text}`: in a JSON pointer `~` must be followed by 0 or 1"));
                }
            }
            return Ok(FieldPath::Pointer(text.into()));
        }
        if text.contains('.') {
            let parts: Vec<Box<str>> = text.split('.').map(Into::into).collect();
            if parts.iter().any(|p| p.is_empty()) {
                return Err(format!("field `{text}`: a dotted path has an empty part"));
            }
            return Ok(FieldPath::Dotted(parts.into()));
        }
        Ok(FieldPath::Key(text.into()))
    }
}

/// One policy file ready to compile.
pub struct SourceFile {
    /// Path as shown in messages.
    pub path: PathBuf,
    /// The YAML text.
    pub text: String,
}

/// Compiles the files of one set, in the order given. List files are resolved against
/// `dir` and read through `read_list`, so the caller sees (and can hash) every file read.
/// The set's version and file list are set by the caller with `with_identity`.
pub fn compile(
    dir: &Path,
    sources: &[SourceFile],
    read_list: &mut dyn FnMut(&Path) -> std::io::Result<String>,
    previous: Option<&PolicySet>,
) -> Result<PolicySet, LoadErrors> {
    let mut errors = Vec::new();
    let mut parsed = Vec::new();
    for src in sources {
        let (raw, parse_errors) = parse::parse_file(&src.text);
        for e in parse_errors {
            errors.push(LoadError::Syntax { at: Place { file: src.path.clone(), line: e.line }, message: e.message });
        }
        parsed.push((src, raw));
    }
    // A list whose definition did not parse is not reported again as unknown where used.
    let unparsed: Vec<&parse::Unparsed> = parsed.iter().map(|(_, raw)| &raw.unparsed).collect();
    let may_be_defined = |list: &str| unparsed.iter().any(|u| u.may_define_list(list));

    let lists = compile_lists(dir, &parsed, read_list, &mut errors);

    // Regexes unchanged since the previous set are reused, not compiled again: compiling is
    // most of the cost of loading a large set, and a reload usually changes few of them.
    let known = previous.map(PolicySet::regexes).unwrap_or_default();
    let mut rules = Vec::new();
    let mut warnings = Vec::new();
    let mut first_place: HashMap<String, Place> = HashMap::new();
    let mut default: Option<(Place, Outcome)> = None;
    for (src, raw) in &parsed {
        let lines = RuleLines::new(&src.text, raw.rules.len());
        for (i, raw_rule) in raw.rules.iter().enumerate() {
            let Some(raw_rule) = raw_rule else { continue };
            let at = Place { file: src.path.clone(), line: lines.rule(i) };
            if let Some(first) = first_place.get(&raw_rule.id) {
                errors.push(LoadError::DuplicateRuleId { at, rule: raw_rule.id.clone(), first: first.clone() });
                continue;
            }
            first_place.insert(raw_rule.id.clone(), at.clone());
            let mut ctx = RuleCtx {
                lines: &lines,
                index: i,
                at: &at,
                rule: &raw_rule.id,
                lists: &lists,
                may_be_defined: &may_be_defined,
                regexes: &known,
                errors: &mut errors,
            };
            if let Some(rule) = ctx.compile_rule(raw_rule) {
                let locate = |needles: &[&str]| {
                    lines.find_in_rule(i, needles).map(|line| Place { file: src.path.clone(), line })
                };
                warnings.extend(warn::rule_warnings(&rule, &locate));
                rules.push(rule);
            }
        }
        if let Some(d) = raw.default {
            let at = Place { file: src.path.clone(), line: lines.top_level("default:") };
            if let Some((first, _)) = &default {
                errors.push(LoadError::DefaultTwice { at, first: first.clone() });
                continue;
            }
            match compile_outcome(d, raw.error.as_ref()) {
                Ok(outcome) => default = Some((at, outcome)),
                // The `error:` it needs is there, but broken; that is reported already.
                Err(_) if raw.unparsed.is_error => default = Some((at, Outcome::Allow)),
                Err(message) => errors.push(LoadError::Default { at, message: format!("default: {message}") }),
            }
        } else if raw.error.is_some() && !raw.unparsed.is_default {
            let at = Place { file: src.path.clone(), line: lines.top_level("error:") };
            errors.push(LoadError::Default {
                at,
                message: "a top-level `error:` is only used with `default: deny`".into(),
            });
        }
    }

    if !errors.is_empty() {
        // Shape errors are found before the checks of the whole set; report both in the
        // order they are written. Files keep their load order: paths sort as their names.
        errors.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
        return Err(LoadErrors(errors));
    }
    let index = Index::build(&rules);
    let default = default.map_or(Outcome::Allow, |(_, o)| o);
    let body_keys = body_keys(&rules);
    Ok(PolicySet { rules, default, index, body_keys, warnings, version: String::new(), files: Vec::new() })
}

/// The top-level body keys `rules` read, sorted and without repeats.
fn body_keys(rules: &[Rule]) -> Box<[Box<str>]> {
    fn walk(group: &Group, out: &mut Vec<Box<str>>) {
        for cond in &group.0 {
            match cond {
                Cond::Field { field, .. } => out.push(field.top_key().into()),
                Cond::Any(groups) | Cond::All(groups) => groups.iter().for_each(|g| walk(g, out)),
                Cond::Not(g) => walk(g, out),
            }
        }
    }
    let mut keys = Vec::new();
    for rule in rules {
        walk(&rule.when, &mut keys);
        if let Some(cap) = &rule.rate_cap {
            keys.extend(cap.fields.iter().map(|f| f.top_key().into()));
        }
    }
    keys.sort_unstable();
    keys.dedup();
    keys.into()
}

impl PolicySet {
    pub(crate) fn with_identity(mut self, version: String, files: Vec<PathBuf>) -> PolicySet {
        self.version = version;
        self.files = files;
        self
    }
}

fn compile_outcome(decision: RawDecision, error: Option<&RawError>) -> Result<Outcome, String> {
    match (decision, error) {
        (RawDecision::Allow, None) => Ok(Outcome::Allow),
        (RawDecision::Allow, Some(_)) => {
            Err("`error:` is only used with a deny; remove it or make the decision deny".into())
        }
        (RawDecision::Deny, Some(e)) => {
            Ok(Outcome::Deny(Arc::new(Refusal { code: e.code, message: e.message.clone(), detail: e.detail.clone() })))
        }
        (RawDecision::Deny, None) => {
            Err("a deny needs `error: { code: N, message: \"...\" }` (code 100 or more)".into())
        }
    }
}

fn compile_lists(
    dir: &Path,
    parsed: &[(&SourceFile, RawFile)],
    read_list: &mut dyn FnMut(&Path) -> std::io::Result<String>,
    errors: &mut Vec<LoadError>,
) -> HashMap<String, Arc<List>> {
    let mut lists = HashMap::new();
    let mut first_place: HashMap<&str, Place> = HashMap::new();
    for (src, raw) in parsed {
        for (name, raw_list) in &raw.lists {
            let line =
                src.text.lines().position(|l| l.trim_start().starts_with(&format!("{name}:"))).map_or(1, |i| i + 1);
            let at = Place { file: src.path.clone(), line };
            if let Some(first) = first_place.get(name.as_str()) {
                errors.push(LoadError::DuplicateList { at, list: name.clone(), first: first.clone() });
                continue;
            }
            first_place.insert(name, at.clone());
            let list_err = |message: String| LoadError::List { at: at.clone(), list: name.clone(), message };
            let ids = match raw_list {
                RawList::Inline(values) => {
                    let mut ids = HashSet::with_capacity(values.len());
                    for v in values {
                        match v {
                            Scalar::Text(t) => {
                                ids.insert(t.as_str().into());
                            }
                            Scalar::Bool(b) => {
                                errors
                                    .push(list_err(format!("`{b}` is not an ID; list entries are strings or numbers")));
                            }
                        }
                    }
                    ids
                }
                RawList::File(rel) => {
                    let rel_path = Path::new(rel);
                    if rel_path.is_absolute()
                        || rel_path.components().any(|c| matches!(c, std::path::Component::ParentDir))
                    {
                        errors.push(list_err(format!("file `{rel}` must be a relative path inside the policy directory, so that edits to it are seen")));
                        continue;
                    }
                    let path = dir.join(rel_path);
                    match read_list(&path) {
                        Ok(text) => parse_list_file(&text),
                        Err(e) => {
                            errors.push(list_err(format!("cannot read `{}`: {e}", path.display())));
                            continue;
                        }
                    }
                }
            };
            lists.insert(name.clone(), Arc::new(List { name: name.clone(), ids }));
        }
    }
    lists
}

/// One ID a line; blank lines and lines starting with `#` are skipped; spaces trimmed.
fn parse_list_file(text: &str) -> HashSet<Box<str>> {
    text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(Into::into).collect()
}

/// What compiling one rule needs to know and report.
struct RuleCtx<'a, 'b> {
    lines: &'a RuleLines<'b>,
    index: usize,
    at: &'a Place,
    rule: &'a str,
    lists: &'a HashMap<String, Arc<List>>,
    /// Whether a list not in `lists` may be defined where a file did not parse.
    may_be_defined: &'a dyn Fn(&str) -> bool,
    regexes: &'a HashMap<String, Regex>,
    errors: &'a mut Vec<LoadError>,
}

impl RuleCtx<'_, '_> {
    fn fail(&mut self, needle: &str, message: String) {
        let at = Place { file: self.at.file.clone(), line: self.lines.within_rule(self.index, needle) };
        self.errors.push(LoadError::Rule { at, rule: self.rule.to_string(), message });
    }

    fn compile_rule(&mut self, raw: &parse::RawRule) -> Option<Rule> {
        let errors_before = self.errors.len();
        if !is_valid_id(&raw.id) {
            self.fail(
                "id:",
                format!("id `{}` may hold only letters, digits and `_ - . :`, and must not be empty", raw.id),
            );
        }
        let on = match &raw.on {
            None => OnCommands::Every,
            Some(names) if names.is_empty() => {
                self.fail("on:", "`on` is empty, so the rule would never apply; list commands or remove `on`".into());
                OnCommands::Every
            }
            Some(names) => {
                let (mut exact, mut globs) = (Vec::new(), Vec::new());
                for name in names {
                    if name.is_empty()
                        || !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '*'))
                    {
                        self.fail(
                            name,
                            format!("command `{name}` may hold only letters, digits, `_`, `.` and the glob `*`"),
                        );
                    } else if name.contains('*') {
                        globs.push(name.as_str().into());
                    } else {
                        exact.push(name.as_str().into());
                    }
                }
                OnCommands::Some { exact, globs }
            }
        };
        let when = match &raw.when {
            Some(group) => self.compile_group(group),
            None => Group::default(),
        };
        let rate_cap = raw.rate_cap.as_ref().and_then(|cap| self.compile_rate_cap(cap));
        let outcome = match compile_outcome(raw.decision, raw.error.as_ref()) {
            Ok(o) => o,
            Err(_) if raw.decision == RawDecision::Deny => {
                self.errors.push(LoadError::DenyWithoutError { at: self.at.clone(), rule: self.rule.to_string() });
                Outcome::Allow
            }
            Err(message) => {
                self.fail("error:", message);
                Outcome::Allow
            }
        };
        if self.errors.len() > errors_before {
            return None;
        }
        Some(Rule {
            id: raw.id.as_str().into(),
            at: self.at.clone(),
            on,
            when,
            rate_cap,
            outcome,
            is_dry_run: raw.mode == RawMode::DryRun,
        })
    }

    fn compile_rate_cap(&mut self, cap: &parse::RawRateCap) -> Option<RateCap> {
        let errors_before = self.errors.len();
        if cap.max < 1 {
            self.fail("max:", format!("rate_cap max is {}; it must be at least 1", cap.max));
        }
        let per = match crate::duration::parse(&cap.per) {
            Ok(per) if per > MAX_CAP_WINDOW => {
                self.fail("per:", format!("rate_cap per is `{}`; windows up to 30d are supported", cap.per));
                None
            }
            Ok(per) => Some(per),
            Err(message) => {
                self.fail("per:", format!("rate_cap per: {message}"));
                None
            }
        };
        let names = cap.key.clone().unwrap_or_default();
        let mut fields = Vec::with_capacity(names.len());
        for name in &names {
            match FieldPath::parse(name) {
                Ok(f) => fields.push(f),
                Err(message) => self.fail(name, format!("rate_cap key: {message}")),
            }
        }
        match per {
            Some(per) if self.errors.len() == errors_before => {
                Some(RateCap { fields, field_names: names.join(","), max: cap.max, per })
            }
            _ => None,
        }
    }

    fn compile_group(&mut self, raw: &RawGroup) -> Group {
        let mut conds = Vec::new();
        for entry in &raw.0 {
            match entry {
                RawEntry::Any(groups) => conds.push(Cond::Any(groups.iter().map(|g| self.compile_group(g)).collect())),
                RawEntry::All(groups) => conds.push(Cond::All(groups.iter().map(|g| self.compile_group(g)).collect())),
                RawEntry::Not(group) => conds.push(Cond::Not(self.compile_group(group))),
                RawEntry::Field { field, ops } => self.compile_ops(field, ops, &mut conds),
            }
        }
        Group(conds)
    }

    fn compile_ops(&mut self, field: &str, ops: &RawOps, conds: &mut Vec<Cond>) {
        let path = match FieldPath::parse(field) {
            Ok(p) => p,
            Err(message) => return self.fail(field, message),
        };
        let mut push = |test: Test, is_negated: bool| conds.push(Cond::Field { field: path.clone(), test, is_negated });
        if let Some(v) = &ops.equals {
            push(Test::Equals(v.clone()), false);
        }
        if let Some(v) = &ops.not_equals {
            push(Test::Equals(v.clone()), true);
        }
        if let Some(v) = &ops.in_ {
            push(Test::In(scalar_set(v)), false);
        }
        if let Some(v) = &ops.not_in {
            push(Test::In(scalar_set(v)), true);
        }
        if let Some(b) = ops.exists {
            push(Test::Exists(b), false);
        }
        for (name, is_negated) in [(&ops.in_list, false), (&ops.not_in_list, true)] {
            let Some(name) = name else { continue };
            match self.lists.get(name) {
                Some(list) => {
                    conds.push(Cond::Field { field: path.clone(), test: Test::InList(list.clone()), is_negated })
                }
                None if (self.may_be_defined)(name) => {}
                None => {
                    let mut known: Vec<&str> = self.lists.keys().map(String::as_str).collect();
                    known.sort_unstable();
                    let known =
                        if known.is_empty() { "none; define it under `lists:`".to_string() } else { known.join(", ") };
                    let at = Place { file: self.at.file.clone(), line: self.lines.within_rule(self.index, name) };
                    self.errors.push(LoadError::UnknownList {
                        at,
                        rule: self.rule.to_string(),
                        list: name.clone(),
                        known,
                    });
                }
            }
        }
        for (pattern, is_negated) in [(&ops.regex, false), (&ops.not_regex, true)] {
            let Some(pattern) = pattern else { continue };
            let compiled = match self.regexes.get(&pattern.0) {
                Some(re) => Ok(re.clone()),
                None => Regex::new(&pattern.0),
            };
            match compiled {
                Ok(re) => conds.push(Cond::Field { field: path.clone(), test: Test::Regex(re), is_negated }),
                Err(e) => self.fail(
                    &pattern.0,
                    format!("regex `{}`: {}", pattern.0, e.to_string().lines().last().unwrap_or("invalid")),
                ),
            }
        }
    }
}

fn scalar_set(values: &[Scalar]) -> ScalarSet {
    let mut set = ScalarSet::default();
    for v in values {
        match v {
            Scalar::Text(t) => {
                set.texts.insert(t.as_str().into());
            }
            Scalar::Bool(b) => set.bools.push(*b),
        }
    }
    set
}

fn is_valid_id(id: &str) -> bool {
    !id.is_empty() && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_matches("callbackAfterRemoveBlack*", "callbackAfterRemoveBlackCommand"));
        assert!(glob_matches("*", "anything"));
        assert!(glob_matches("callback*Black*Command", "callbackBeforeAddBlackCommand"));
        assert!(glob_matches("*Command", "xCommand"));
        assert!(!glob_matches("*Command", "Commandx"));
        assert!(!glob_matches("a*b*c", "acb"));
        assert!(glob_matches("a*a", "aa"));
        assert!(!glob_matches("a*a", "a"));
        assert!(glob_matches("exact", "exact"));
        assert!(!glob_matches("exact", "exactly"));
    }
}
