//! Raw policy files → compiled rules and the default: names checked, regexes compiled,
//! lists loaded. Every [`LoadError`] is born here or in `parse`.
//!
//! Compilation is pure but for reading list files; `load` does the directory walk, runs
//! `warn` over what compiled and assembles the [`PolicySet`], and `reload` swaps it in.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use regex::Regex;

use super::error::{ListError, LoadError, LoadErrors, RuleError};
use super::lines::RuleLines;
use super::model::{
    Cond, FieldPath, Group, List, OnCommands, Place, RateCap, RedisSet, Rule, Scalar, ScalarSet, SourceFile, Test,
    TextSet, glob_reaches,
};
use super::parse::{self, RawDecision, RawEntry, RawError, RawFile, RawGroup, RawList, RawMode, RawOps};
use super::set::PolicySet;
use crate::catalog::{self, CodeFamily, Decided, TencentAnswer};
use crate::decision::{Outcome, Refusal};
use crate::event::Source;
use crate::ratecap::cap_key_head;

/// The longest rate-cap window.
const MAX_CAP_WINDOW: std::time::Duration = std::time::Duration::from_secs(30 * 86_400);

/// What a set's files compile to: its rules, in file and rule order, and its default.
#[derive(Debug)]
pub struct Compiled {
    /// Every rule of the set.
    pub rules: Vec<Rule>,
    /// What decides when no rule does.
    pub default: Outcome,
}

/// What every rule of a set may refer to.
struct Known<'a> {
    lists: &'a HashMap<String, Arc<List>>,
    /// Whether a list not in `lists` may be defined where a file did not parse.
    may_be_defined: &'a dyn Fn(&str) -> bool,
    /// The previous set's compiled regexes, by pattern.
    regexes: &'a HashMap<String, Regex>,
}

/// Compiles the files of one set, in the order given. List files are resolved against
/// `dir` and read through `read_list`, so the caller sees (and can hash) every file read.
pub fn compile(
    dir: &Path,
    sources: &[SourceFile],
    read_list: &mut dyn FnMut(&Path) -> std::io::Result<String>,
    previous: Option<&PolicySet>,
) -> Result<Compiled, LoadErrors> {
    let mut errors = Vec::new();
    let parsed = parse_sources(sources, &mut errors);
    // A list whose definition did not parse is not reported again as unknown where used.
    let unparsed: Vec<&parse::Unparsed> = parsed.iter().map(|(_, raw)| &raw.unparsed).collect();
    let may_be_defined = |list: &str| unparsed.iter().any(|u| u.may_define_list(list));

    let lists = compile_lists(dir, &parsed, read_list, &mut errors);

    // Regexes unchanged since the previous set are reused, not compiled again: compiling is
    // most of the cost of loading a large set, and a reload usually changes few of them.
    let regexes = previous.map(PolicySet::regexes).unwrap_or_default();
    let known = Known { lists: &lists, may_be_defined: &may_be_defined, regexes: &regexes };
    let mut rules = Vec::new();
    let mut first_place: HashMap<String, Place> = HashMap::new();
    let mut default: Option<(Place, Outcome)> = None;
    for (src, raw) in &parsed {
        let lines = RuleLines::new(&src.text, raw.rules.len());
        compile_rules(src, raw, &lines, &known, &mut first_place, &mut rules, &mut errors);
        compile_default(src, raw, &lines, &mut default, &mut errors);
    }

    if !errors.is_empty() {
        // Shape errors are found before the checks of the whole set; report both in the
        // order they are written. Files keep their load order: paths sort as their names.
        errors.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
        return Err(LoadErrors(errors));
    }
    Ok(Compiled { rules, default: default.map_or(Outcome::Allow, |(_, o)| o) })
}

/// Parses every file, each paired with what parsed; what did not is added to `errors`.
fn parse_sources<'s>(sources: &'s [SourceFile], errors: &mut Vec<LoadError>) -> Vec<(&'s SourceFile, RawFile)> {
    let mut parsed = Vec::new();
    for src in sources {
        let (raw, parse_errors) = parse::parse_file(&src.text);
        for e in parse_errors {
            errors.push(LoadError::Syntax { at: Place { file: src.path.clone(), line: e.line }, message: e.message });
        }
        parsed.push((src, raw));
    }
    parsed
}

/// Compiles the rules of one file into `rules`; a rule whose id is taken, or that has any
/// error, is left out and its errors added to `errors`.
fn compile_rules(
    src: &SourceFile,
    raw: &RawFile,
    lines: &RuleLines<'_>,
    known: &Known<'_>,
    first_place: &mut HashMap<String, Place>,
    rules: &mut Vec<Rule>,
    errors: &mut Vec<LoadError>,
) {
    for (i, raw_rule) in raw.rules.iter().enumerate() {
        let Some(raw_rule) = raw_rule else { continue };
        let at = Place { file: src.path.clone(), line: lines.rule(i) };
        if let Some(first) = first_place.get(&raw_rule.id) {
            errors.push(LoadError::DuplicateRuleId { at, rule: raw_rule.id.clone(), first: first.clone() });
            continue;
        }
        first_place.insert(raw_rule.id.clone(), at.clone());
        let mut ctx = RuleCtx { lines, index: i, at: &at, rule: &raw_rule.id, known, errors: &mut *errors };
        if let Some(rule) = ctx.compile_rule(raw_rule) {
            rules.push(rule);
        }
    }
}

/// Compiles one file's top-level `default` (with its `error`) into `default`, unless an
/// earlier file set it.
fn compile_default(
    src: &SourceFile,
    raw: &RawFile,
    lines: &RuleLines<'_>,
    default: &mut Option<(Place, Outcome)>,
    errors: &mut Vec<LoadError>,
) {
    if let Some(d) = raw.default {
        let at = Place { file: src.path.clone(), line: lines.top_level("default:") };
        if let Some((first, _)) = default {
            errors.push(LoadError::DefaultTwice { at, first: first.clone() });
            return;
        }
        match compile_outcome(d, raw.error.as_ref()) {
            Ok(outcome) => *default = Some((at, outcome)),
            // The `error:` it needs is there, but broken; that is reported already.
            Err(_) if raw.unparsed.is_error => *default = Some((at, Outcome::Allow)),
            Err(kind) => errors.push(LoadError::Default { at, kind }),
        }
    } else if raw.error.is_some() && !raw.unparsed.is_default {
        let at = Place { file: src.path.clone(), line: lines.top_level("error:") };
        errors.push(LoadError::ErrorWithoutDefault { at });
    }
}

fn compile_outcome(decision: RawDecision, error: Option<&RawError>) -> Result<Outcome, RuleError> {
    match (decision, error) {
        (RawDecision::Allow, None) => Ok(Outcome::Allow),
        (RawDecision::Discard, None) => Ok(Outcome::Discard),
        (RawDecision::Allow | RawDecision::Discard, Some(_)) => Err(RuleError::ErrorWithAllow),
        (RawDecision::Deny, Some(e)) => Ok(Outcome::Deny(Arc::new(Refusal {
            code: e.code.code,
            message: e.message.clone(),
            detail: e.detail.clone(),
            codes: e.code.per_family.clone(),
        }))),
        (RawDecision::Deny, None) => Err(RuleError::DenyWithoutError),
    }
}

/// The decided commands a rule's `on` reaches, by the family their codes lie in: OpenIM
/// (named as `every OpenIM command` when `on` is omitted) and Tencent's before-callbacks.
fn reach(on: &OnCommands) -> Vec<(CodeFamily, Cow<'static, str>, Option<&'static Decided>)> {
    let mut reached = Vec::new();
    let (exact, globs) = match on {
        OnCommands::Every => return vec![(CodeFamily::OpenIm, Cow::Borrowed("every OpenIM command"), None)],
        OnCommands::Some { exact, globs } => (exact, globs),
    };
    for name in exact {
        if !catalog::is_tencent_name(name) {
            reached.push((CodeFamily::OpenIm, Cow::Owned(name.to_string()), None));
        } else if let Some(decided) = catalog::tencent_decided(name) {
            reached.push((decided.family, Cow::Borrowed(decided.name), Some(decided)));
        }
    }
    for glob in globs {
        if let Some(openim) = catalog::OPENIM.iter().find(|c| glob_reaches(glob, Source::OpenIm, c.name)) {
            reached.push((CodeFamily::OpenIm, Cow::Borrowed(openim.name), None));
        } else if !catalog::is_tencent_name(glob) {
            reached.push((CodeFamily::OpenIm, Cow::Owned(glob.to_string()), None));
        }
        for decided in catalog::TENCENT_DECIDED.iter().filter(|d| glob_reaches(glob, Source::Tencent, d.name)) {
            reached.push((decided.family, Cow::Borrowed(decided.name), Some(decided)));
        }
    }
    reached
}

/// Checks an outcome against what its rule reaches: a refusal's code in each family's
/// range (or one stated per family), a discard only on Tencent messages.
fn check_reach(on: &OnCommands, outcome: &Outcome) -> Option<RuleError> {
    let reached = reach(on);
    match outcome {
        Outcome::Allow => None,
        Outcome::Discard => reached
            .into_iter()
            .find(|(_, _, decided)| !decided.is_some_and(|d| d.answer == TencentAnswer::Message))
            .map(|(_, command, _)| RuleError::DiscardNotMessage { command: command.into_owned() }),
        Outcome::Deny(refusal) => reached.into_iter().find_map(|(family, command, _)| {
            let command = command.into_owned();
            if refusal.codes.is_empty() {
                let code = refusal.code;
                (!family.range().contains(&i64::from(code))).then_some(RuleError::CodeOutOfRange {
                    code,
                    family,
                    command,
                })
            } else {
                (!refusal.codes.iter().any(|(f, _)| *f == family)).then_some(RuleError::NoCodeFor { family, command })
            }
        }),
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
            let list_err = |kind: ListError| LoadError::List { at: at.clone(), list: name.clone(), kind };
            let ids = match raw_list {
                RawList::Redis { key, cache } => {
                    match redis_set(key, cache.as_deref()) {
                        Ok(set) => {
                            lists.insert(
                                name.clone(),
                                Arc::new(List { name: name.clone(), ids: TextSet::default(), redis: Some(set) }),
                            );
                        }
                        Err(kind) => errors.push(list_err(kind)),
                    }
                    continue;
                }
                RawList::Inline(values) => {
                    let mut ids = TextSet::with_capacity_and_hasher(values.len(), Default::default());
                    for v in values {
                        match v {
                            Scalar::Text(t) => {
                                ids.insert(t.as_str().into());
                            }
                            Scalar::Bool(b) => {
                                errors.push(list_err(ListError::NotAnId { value: *b }));
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
                        errors.push(list_err(ListError::FileOutside { file: rel.clone() }));
                        continue;
                    }
                    let path = dir.join(rel_path);
                    match read_list(&path) {
                        Ok(text) => parse_list_file(&text),
                        Err(e) => {
                            errors.push(list_err(ListError::Read { path, source: e }));
                            continue;
                        }
                    }
                }
            };
            lists.insert(name.clone(), Arc::new(List { name: name.clone(), ids, redis: None }));
        }
    }
    lists
}

/// The longest cache of a Redis list's answers: a cache is a staleness bound, kept short.
const MAX_LIST_CACHE: std::time::Duration = std::time::Duration::from_secs(60);

fn redis_set(key: &str, cache: Option<&str>) -> Result<RedisSet, ListError> {
    let cache = match cache {
        None => std::time::Duration::ZERO,
        Some(text) => match crate::duration::parse(text) {
            Ok(d) if d <= MAX_LIST_CACHE => d,
            Ok(_) => return Err(ListError::BadCache { cache: text.into(), reason: "longer than 1m; a cache bounds how stale an answer may be: write a short duration such as `1s`, or leave it out".into() }),
            Err(reason) => return Err(ListError::BadCache { cache: text.into(), reason }),
        },
    };
    Ok(RedisSet { key: key.into(), cache })
}

/// One ID a line; blank lines and lines starting with `#` are skipped; spaces trimmed.
fn parse_list_file(text: &str) -> TextSet {
    text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(Into::into).collect()
}

/// What compiling one rule needs to know and report.
struct RuleCtx<'a, 'b> {
    lines: &'a RuleLines<'b>,
    index: usize,
    at: &'a Place,
    rule: &'a str,
    known: &'a Known<'a>,
    errors: &'a mut Vec<LoadError>,
}

impl RuleCtx<'_, '_> {
    fn fail(&mut self, needle: &str, kind: RuleError) {
        let at = Place { file: self.at.file.clone(), line: self.lines.within_rule(self.index, needle) };
        self.errors.push(LoadError::Rule { at, rule: self.rule.to_string(), kind });
    }

    fn compile_rule(&mut self, raw: &parse::RawRule) -> Option<Rule> {
        let errors_before = self.errors.len();
        if !is_valid_id(&raw.id) {
            self.fail("id:", RuleError::BadId { id: raw.id.clone() });
        }
        let on = match &raw.on {
            None => OnCommands::Every,
            Some(names) if names.is_empty() => {
                self.fail("on:", RuleError::EmptyOn);
                OnCommands::Every
            }
            Some(names) => {
                let (mut exact, mut globs) = (Vec::new(), Vec::new());
                for name in names {
                    if name.is_empty()
                        || !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '*'))
                    {
                        self.fail(name, RuleError::BadCommand { command: name.clone() });
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
        let rate_cap = raw.rate_cap.as_ref().and_then(|cap| self.compile_rate_cap(&raw.id, cap));
        let outcome = match compile_outcome(raw.decision, raw.error.as_ref()) {
            Ok(o) => {
                if let Some(kind) = check_reach(&on, &o) {
                    let needle = if o == Outcome::Discard { "decision:" } else { "code:" };
                    self.fail(needle, kind);
                }
                o
            }
            Err(RuleError::DenyWithoutError) => {
                self.errors.push(LoadError::DenyWithoutError { at: self.at.clone(), rule: self.rule.to_string() });
                Outcome::Allow
            }
            Err(kind) => {
                self.fail("error:", kind);
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

    fn compile_rate_cap(&mut self, rule: &str, cap: &parse::RawRateCap) -> Option<RateCap> {
        let errors_before = self.errors.len();
        if cap.max < 1 {
            self.fail("max:", RuleError::CapMaxTooLow { max: cap.max });
        }
        let per = match crate::duration::parse(&cap.per) {
            Ok(per) if per > MAX_CAP_WINDOW => {
                self.fail("per:", RuleError::CapWindowTooLong { per: cap.per.clone() });
                None
            }
            Ok(per) => Some(per),
            Err(reason) => {
                self.fail("per:", RuleError::BadCapWindow { reason });
                None
            }
        };
        let names = cap.key.clone().unwrap_or_default();
        let mut fields = Vec::with_capacity(names.len());
        for name in &names {
            match FieldPath::parse(name) {
                Ok(f) => fields.push(f),
                Err(e) => self.fail(name, RuleError::BadCapKey(e)),
            }
        }
        match per {
            Some(per) if self.errors.len() == errors_before => {
                Some(RateCap { fields, key_head: cap_key_head(rule, per, &names.join(",")), max: cap.max, per })
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
            Err(e) => return self.fail(field, RuleError::BadField(e)),
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
            match self.known.lists.get(name) {
                Some(list) => {
                    conds.push(Cond::Field { field: path.clone(), test: Test::InList(list.clone()), is_negated })
                }
                None if (self.known.may_be_defined)(name) => {}
                None => {
                    let mut known: Vec<&str> = self.known.lists.keys().map(String::as_str).collect();
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
            let compiled = match self.known.regexes.get(&pattern.0) {
                Some(re) => Ok(re.clone()),
                None => Regex::new(&pattern.0),
            };
            match compiled {
                Ok(re) => conds.push(Cond::Field { field: path.clone(), test: Test::Regex(re), is_negated }),
                Err(e) => self.fail(
                    &pattern.0,
                    RuleError::BadRegex {
                        pattern: pattern.0.clone(),
                        reason: e.to_string().lines().last().unwrap_or("invalid").to_string(),
                    },
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
