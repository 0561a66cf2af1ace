//! Why a policy set did not load: [`LoadError`], one per problem, each with the place it
//! is about, and [`LoadErrors`], all of one load, in the order they are written.

use std::fmt;
use std::path::{Path, PathBuf};

use super::model::Place;

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
