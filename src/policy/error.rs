//! Why a policy set did not load: [`LoadError`], one per problem, each with the place it
//! is about, and [`LoadErrors`], all of one load, in the order they are written.

use std::fmt;
use std::path::{Path, PathBuf};

use super::model::{FieldPathError, Place};
use crate::catalog::CodeFamily;

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
    #[error("{at}: rule `{rule}`: {kind}")]
    Rule { at: Place, rule: String, kind: RuleError },
    /// A problem with one list.
    #[error("{at}: list `{list}`: {kind}")]
    List { at: Place, list: String, kind: ListError },
    /// More than one file sets `default`.
    #[error("{at}: `default` is already set at {first}; at most one file of a set may set it")]
    DefaultTwice { at: Place, first: Place },
    /// The top-level `default` and its `error` do not fit together.
    #[error("{at}: default: {kind}")]
    Default { at: Place, kind: RuleError },
    /// A top-level `error:` without `default: deny`.
    #[error("{at}: a top-level `error:` is only used with `default: deny`")]
    ErrorWithoutDefault { at: Place },
}

/// What is wrong with one rule (or the default) beyond its shape: the part of a
/// [`LoadError::Rule`] message after the rule's name.
#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    /// An id with characters other than letters, digits and `_ - . :`.
    #[error("id `{id}` may hold only letters, digits and `_ - . :`, and must not be empty")]
    BadId { id: String },
    /// `on: []`.
    #[error("`on` is empty, so the rule would never apply; list commands or remove `on`")]
    EmptyOn,
    /// A command name in `on` with characters no command has.
    #[error("command `{command}` may hold only letters, digits, `_`, `.` and the glob `*`")]
    BadCommand { command: String },
    /// `error:` with an allow or a discard.
    #[error("`error:` is only used with a deny; remove it or make the decision deny")]
    ErrorWithAllow,
    /// A deny with no `error:`.
    #[error("a deny needs `error: {{ code: N, message: \"...\" }}` (code 100 or more)")]
    DenyWithoutError,
    /// `rate_cap: { max: 0 }`.
    #[error("rate_cap max is {max}; it must be at least 1")]
    CapMaxTooLow { max: u64 },
    /// A rate-cap window longer than the longest supported.
    #[error("rate_cap per is `{per}`; windows up to 30d are supported")]
    CapWindowTooLong { per: String },
    /// A rate-cap window that is no duration.
    #[error("rate_cap per: {reason}")]
    BadCapWindow { reason: String },
    /// A rate-cap key field that names no place in a body.
    #[error("rate_cap key: {0}")]
    BadCapKey(FieldPathError),
    /// A condition's field that names no place in a body.
    #[error("{0}")]
    BadField(FieldPathError),
    /// A code outside the range of a family the rule reaches.
    #[error(
        "error code {code} is outside [{}, {}], the codes {} passes to its client, and `on` reaches `{command}`; use a code in that range, or one per family: `code: {{ {}: N, ... }}`",
        family.range().start(), family.range().end(), family.reader(), family.key()
    )]
    CodeOutOfRange { code: i32, family: CodeFamily, command: String },
    /// `code: { … }` without the family of a command the rule reaches.
    #[error(
        "`code` states no `{}` code, and `on` reaches `{command}`; add `{}: N` with N in [{}, {}]",
        family.key(), family.key(), family.range().start(), family.range().end()
    )]
    NoCodeFor { family: CodeFamily, command: String },
    /// `decision: discard` on a callback that is not a Tencent message.
    #[error(
        "`decision: discard` drops a Tencent message, and `on` reaches {command}, which is none; discard works on C2C.CallbackBeforeSendMsg, Group.CallbackBeforeSendMsg and OfficialAccount.CallbackBeforeSendMsg"
    )]
    DiscardNotMessage { command: String },
    /// A regex the regex engine refuses (its syntax was checked while parsing; this is
    /// what is left, such as a compiled size over the limit).
    #[error("regex `{pattern}`: {reason}")]
    BadRegex { pattern: String, reason: String },
}

/// What is wrong with one list.
#[derive(Debug, thiserror::Error)]
pub enum ListError {
    /// `true` or `false` among the IDs.
    #[error("`{value}` is not an ID; list entries are strings or numbers")]
    NotAnId { value: bool },
    /// A list file outside the policy directory.
    #[error("file `{file}` must be a relative path inside the policy directory, so that edits to it are seen")]
    FileOutside { file: String },
    /// A list file that could not be read.
    #[error("cannot read `{}`: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    /// A Redis list's cache that is not a duration, or too long.
    #[error("cache `{cache}`: {reason}")]
    BadCache { cache: String, reason: String },
}

impl LoadError {
    /// The file and line the error is about, for ordering: `None` for the directory.
    pub(super) fn sort_key(&self) -> Option<(&Path, usize)> {
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
            | LoadError::Default { at, .. }
            | LoadError::ErrorWithoutDefault { at } => Some((&at.file, at.line)),
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
