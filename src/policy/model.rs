//! The compiled policy model: a rule and its parts ([`Rule`], [`Cond`], [`Test`],
//! [`FieldPath`], …), the [`Place`] each is written at, the [`Warning`]s a set carries, and
//! the steps of an explained decision. Shapes and their small accessors only.
//!
//! Every pass imports this module and none is imported by it: `compile` builds these
//! shapes, `index` files them, `eval` reads them, `warn` checks them, `cases` runs them.
//! The whole set, `PolicySet`, lives in `set`.

use std::borrow::Cow;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use regex::Regex;
use serde_json::{Map, Value};

use crate::decision::Outcome;
use crate::event::{Event, Source};

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
    /// The rule id, window and field names (as written, joined by `,`) that begin every
    /// key of this cap: see [`crate::ratecap::cap_key_head`]. Counts are kept across reloads
    /// only while these stay the same.
    pub key_head: String,
    /// Allowed callbacks per window.
    pub max: u64,
    /// The window.
    pub per: std::time::Duration,
}

/// The commands a rule applies to.
#[derive(Debug)]
pub enum OnCommands {
    /// `on` omitted: every OpenIM command. Tencent's before-callbacks are decided only by
    /// rules that name them, so a set written for OpenIM decides nothing of Tencent's.
    Every,
    /// Exact names and `*` globs.
    Some { exact: Vec<Box<str>>, globs: Vec<Box<str>> },
}

impl OnCommands {
    /// Whether the rule applies to `event`'s command.
    pub fn matches(&self, event: &Event) -> bool {
        let command = event.command.as_str();
        match self {
            OnCommands::Every => event.source == Source::OpenIm,
            OnCommands::Some { exact, globs } => {
                exact.iter().any(|c| **c == *command) || globs.iter().any(|g| glob_reaches(g, event.source, command))
            }
        }
    }
}

/// Whether an `on` glob reaches a command that `source` sent. A glob reaches Tencent's
/// commands (`System.Name`) only when it holds a dot itself (`C2C.*`,
/// `*.CallbackBeforeSendMsg`), and OpenIM's only when it holds none, so `*` keeps meaning
/// every OpenIM command, as omitting `on` does.
pub(super) fn glob_reaches(glob: &str, source: Source, command: &str) -> bool {
    crate::catalog::is_tencent_name(glob) == (source == Source::Tencent) && glob_matches(glob, command)
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

/// Texts a callback's are looked up in: a list's IDs, `in` values. Hashed with foldhash,
/// randomly seeded, several times quicker than std's SipHash on short IDs: the texts in such
/// a set come from the policy set, a callback only looks its own up, so the flooding SipHash
/// guards against (many colliding keys inserted) cannot be aimed at them. The index's maps
/// use the same hasher for the same reason.
pub type TextSet = foldhash::HashSet<Box<str>>;

/// Inline values for `in`: texts and booleans.
#[derive(Debug, Default)]
pub struct ScalarSet {
    /// Strings and numbers, by text.
    pub texts: TextSet,
    /// Booleans.
    pub bools: Vec<bool>,
}

/// A named list of IDs.
#[derive(Debug)]
pub struct List {
    /// Its name.
    pub name: String,
    /// Its IDs (none for a list held in Redis).
    pub ids: TextSet,
    /// Where the list is held when not in the policy set: a Redis set, asked live.
    pub redis: Option<RedisSet>,
}

/// A list held in a Redis set, asked live by the server's list store
/// ([`crate::lists::ListStore`]); offline, no ID is in it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RedisSet {
    /// The set's key.
    pub key: String,
    /// How long an answer may be reused (zero: asked every time).
    pub cache: std::time::Duration,
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

    /// The key under the top-level one (`To_Account` in `item.To_Account`), when there is one.
    pub fn second_key(&self) -> Option<std::borrow::Cow<'_, str>> {
        match self {
            FieldPath::Key(_) => None,
            FieldPath::Dotted(parts) => parts.get(1).map(|p| (**p).into()),
            FieldPath::Pointer(p) => {
                let second = p.strip_prefix('/')?.split('/').nth(1)?;
                Some(if second.contains('~') {
                    second.replace("~1", "/").replace("~0", "~").into()
                } else {
                    second.into()
                })
            }
        }
    }

    /// Reads a field as a policy writes it: a key, a dotted path, or a JSON pointer.
    pub fn parse(text: &str) -> Result<FieldPath, FieldPathError> {
        if text.is_empty() {
            return Err(FieldPathError::Empty);
        }
        if text.starts_with('/') {
            let mut chars = text.chars().peekable();
            while let Some(c) = chars.next() {
                if c == '~' && !matches!(chars.peek(), Some('0' | '1')) {
                    return Err(FieldPathError::PointerEscape { field: text.into() });
                }
            }
            return Ok(FieldPath::Pointer(text.into()));
        }
        if text.contains('.') {
            let parts: Vec<Box<str>> = text.split('.').map(Into::into).collect();
            if parts.iter().any(|p| p.is_empty()) {
                return Err(FieldPathError::EmptyPart { field: text.into() });
            }
            return Ok(FieldPath::Dotted(parts.into()));
        }
        Ok(FieldPath::Key(text.into()))
    }
}

/// Why a field, as written, names no place in a body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FieldPathError {
    /// ``.
    #[error("a field name is empty")]
    Empty,
    /// `/a~2b`.
    #[error("field `{field}`: in a JSON pointer `~` must be followed by 0 or 1")]
    PointerEscape { field: String },
    /// `a..b`.
    #[error("field `{field}`: a dotted path has an empty part")]
    EmptyPart { field: String },
}

/// A value a condition compares with: strings and numbers by their text, or a boolean.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scalar {
    /// A string, or a number kept as the text YAML gave it.
    Text(String),
    /// `true` or `false`.
    Bool(bool),
}

/// Finds a field in a callback body. Inlined, whatever the size of its caller: it is on
/// every condition's path and the index's, and lives in another codegen unit than its
/// callers in eval and index; a top-level key, the common field, is one map lookup.
#[inline(always)]
pub(crate) fn lookup<'v>(body: &'v Map<String, Value>, field: &FieldPath) -> Option<&'v Value> {
    match field {
        FieldPath::Key(k) => body.get(&**k),
        FieldPath::Dotted(_) | FieldPath::Pointer(_) => lookup_path(body, field),
    }
}

/// [`lookup`] of a dotted path or a JSON pointer.
fn lookup_path<'v>(body: &'v Map<String, Value>, field: &FieldPath) -> Option<&'v Value> {
    match field {
        FieldPath::Key(k) => body.get(&**k),
        FieldPath::Dotted(parts) => {
            let (first, rest) = parts.split_first()?;
            let mut value = body.get(&**first)?;
            for part in rest {
                value = match value {
                    Value::Object(m) => m.get(&**part)?,
                    Value::Array(a) => a.get(part.parse::<usize>().ok()?)?,
                    _ => return None,
                };
            }
            Some(value)
        }
        FieldPath::Pointer(p) => {
            // The body is a map, not a Value: resolve the first token here, the rest with
            // serde_json's pointer.
            let value = body.get(&*field.top_key())?;
            let rest = p.strip_prefix('/')?;
            let tail = rest.find('/').map_or("", |at| &rest[at..]);
            if tail.is_empty() { Some(value) } else { value.pointer(tail) }
        }
    }
}

/// The text conditions compare: strings as they are, numbers as JSON writes them.
/// Other types have no text and never match a list or a regex.
#[inline]
pub(crate) fn value_text(value: &Value) -> Option<Cow<'_, str>> {
    match value {
        Value::String(s) => Some(Cow::Borrowed(s)),
        Value::Number(n) => Some(Cow::Owned(n.to_string())),
        _ => None,
    }
}

/// One policy file ready to compile.
pub struct SourceFile {
    /// Path as shown in messages.
    pub path: PathBuf,
    /// The YAML text.
    pub text: String,
}

/// Whether `name` is a policy file: `*.yaml` or `*.yml`, not hidden. Hidden names are
/// skipped so editor lock files (`.#x.yaml`) and Kubernetes' `..data` never count.
pub fn is_policy_file_name(name: &str) -> bool {
    !name.starts_with('.') && (name.ends_with(".yaml") || name.ends_with(".yml"))
}

/// Something in a loaded policy set that is probably not what was meant, with where it is
/// written and, when something close exists, what was probably meant. Rendered once, by
/// `Display`, as `file:line: warning: rule `id`: …`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Warning {
    /// `on` names a command that no IM server sends.
    UnknownCommand { at: Place, rule: String, command: String, suggestion: Option<String> },
    /// A glob in `on` matches no command that an IM server sends.
    GlobMatchesNothing { at: Place, rule: String, glob: String, suggestion: Option<String> },
    /// A `when` field whose top-level key none of the rule's commands carries.
    UnknownField { at: Place, rule: String, field: String, key: String, commands: Commands, suggestion: Option<String> },
    /// A rate-cap key field whose top-level key none of the rule's commands carries.
    UnknownCapKey {
        at: Place,
        rule: String,
        field: String,
        key: String,
        commands: Commands,
        suggestion: Option<String>,
    },
}

/// The commands a rule's fields were checked against, as a message names them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Commands {
    /// `on` omitted: every OpenIM command.
    EveryOpenIm,
    /// The one known command `on` names or matches.
    One(&'static str),
    /// This many known commands.
    Several(usize),
}

impl fmt::Display for Commands {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Commands::EveryOpenIm => f.write_str("any OpenIM command (the rule has no `on`)"),
            Commands::One(name) => write!(f, "`{name}`"),
            Commands::Several(n) => write!(f, "any of the rule's {n} commands"),
        }
    }
}

impl Warning {
    /// Where the warning points.
    pub fn at(&self) -> &Place {
        match self {
            Warning::UnknownCommand { at, .. }
            | Warning::GlobMatchesNothing { at, .. }
            | Warning::UnknownField { at, .. }
            | Warning::UnknownCapKey { at, .. } => at,
        }
    }

    fn rule(&self) -> &str {
        match self {
            Warning::UnknownCommand { rule, .. }
            | Warning::GlobMatchesNothing { rule, .. }
            | Warning::UnknownField { rule, .. }
            | Warning::UnknownCapKey { rule, .. } => rule,
        }
    }

    fn suggestion(&self) -> Option<&str> {
        match self {
            Warning::UnknownCommand { suggestion, .. }
            | Warning::GlobMatchesNothing { suggestion, .. }
            | Warning::UnknownField { suggestion, .. }
            | Warning::UnknownCapKey { suggestion, .. } => suggestion.as_deref(),
        }
    }
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: warning: rule `{}`: ", self.at(), self.rule())?;
        // A dotted path or pointer is checked by its first key; say which key is missing.
        let field = |f: &mut fmt::Formatter<'_>, what: &str, field: &str, key: &str| {
            if field == key { write!(f, "{what} `{field}` is") } else { write!(f, "{what} `{field}`: `{key}` is") }
        };
        match self {
            Warning::UnknownCommand { command, .. } => {
                write!(f, "no IM server sends command `{command}`, so the rule never applies to it")?
            }
            Warning::GlobMatchesNothing { glob, .. } => {
                write!(f, "glob `{glob}` matches no command an IM server sends, so the rule never applies through it")?
            }
            Warning::UnknownField { field: name, key, commands, .. } => {
                field(f, "field", name, key)?;
                write!(f, " not in the body of {commands}, so the condition always finds it missing")?
            }
            Warning::UnknownCapKey { field: name, key, commands, .. } => {
                field(f, "rate_cap key", name, key)?;
                write!(f, " not in the body of {commands}, so every callback counts under one empty value")?
            }
        }
        if let Some(suggestion) = self.suggestion() {
            write!(f, "; did you mean `{suggestion}`?")?;
        }
        Ok(())
    }
}

/// What happened to one rule during an explained evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// `on` does not name the command.
    Skipped,
    /// The conditions did not hold.
    NotHeld,
    /// The conditions held but the rate cap was not exceeded.
    UnderCap,
    /// A dry-run rule held; evaluation went on.
    HeldDryRun,
    /// The rule held and decided.
    Decided,
    /// A rule after the deciding one.
    NotReached,
}

impl Step {
    /// A short word for the trace.
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Skipped => "skipped",
            Step::NotHeld => "not held",
            Step::UnderCap => "under cap",
            Step::HeldDryRun => "dry run",
            Step::Decided => "decided",
            Step::NotReached => "not reached",
        }
    }
}

/// One line of a trace: a rule and what happened to it.
#[derive(Debug, Clone)]
pub struct TraceStep {
    /// The rule's id.
    pub rule: Arc<str>,
    /// Where it is written, as `file:line`.
    pub at: String,
    /// What happened.
    pub step: Step,
    /// For a rate-capped rule whose conditions held: (count in the window, max).
    pub cap: Option<(u64, u64)>,
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
        let c2c = "C2C.CallbackBeforeSendMsg";
        assert!(!glob_reaches("*", Source::Tencent, c2c), "`*` is every OpenIM command");
        assert!(glob_reaches("*", Source::OpenIm, "odd.name"), "`*` is every OpenIM command");
        assert!(glob_reaches("*.CallbackBeforeSendMsg", Source::Tencent, c2c));
        assert!(glob_reaches("C2C.CallbackBefore*", Source::Tencent, c2c));
    }
}
