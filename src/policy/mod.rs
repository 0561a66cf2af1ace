//! Policies: the operator's YAML rules, compiled into a [`PolicySet`] and evaluated.
//!
//! - `parse`: YAML text → raw structs (shape errors, with lines)
//! - `syntax`: YAML that does not parse, explained in plain words
//! - `compile`: raw structs → `PolicySet` (cross-checks, regexes, lists); `LoadError`
//! - `index`: which rules could hold for a callback, without scanning them all
//! - `eval`: `PolicySet::decide` and `PolicySet::explain`
//! - `load`: a directory → a `PolicySet` with its version
//! - `reload`: the live set, swapped whole; the file watcher
//! - `warn`: what loads but is probably a mistake, checked against [`crate::catalog`]
//! - `cases`: the test cases kept beside the policies, run by `callgate test`
//!
//! [`SCHEMA`] is the JSON Schema of a policy file, for editors.
//!
//! Nothing here knows about HTTP or any IM server's wire format.

mod cases;
mod compile;
mod eval;
mod index;
mod load;
mod parse;
mod reload;
mod syntax;
mod warn;

pub use cases::{CASES_DIR, CaseError, CaseReport, CaseRun, run_cases};
pub use compile::{LoadError, LoadErrors, Place, PolicySet};
pub use eval::{Plan, Step, TraceStep};
pub use load::{load_dir, load_dir_after};
pub use reload::{PolicyStore, ReloadStatus, Reloaded, Watch, watch};
pub use warn::{Commands, Warning};

/// The JSON Schema (draft-07) of one policy file, as `schema/policy.schema.json` holds it
/// and `callgate schema` prints it. Editors use it to complete and check policy files; the
/// loader stays the judge (cross-file checks such as duplicate ids are beyond a schema).
pub const SCHEMA: &str = include_str!("../../schema/policy.schema.json");
