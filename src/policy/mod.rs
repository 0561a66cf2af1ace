//! Policies: the operator's YAML rules, compiled into a [`PolicySet`] and evaluated.
//!
//! The model, which imports no pass:
//! - `model`: the compiled shapes — `Rule`, its conditions and tests, `FieldPath`, `Place`,
//!   `Warning`, the steps of a trace — and their small accessors
//! - `index`: which rules could hold for a callback, without scanning them all
//! - `set`: `PolicySet`, the rules with their index, default, warnings and version
//! - `error`: `LoadError`, every reason a set is refused, each with its place
//!
//! The passes, which import the model and not each other:
//! - `parse`: YAML text → raw structs (shape errors, with lines); `syntax` explains YAML
//!   that does not parse, and `lines` finds a rule's lines in the text
//! - `compile`: raw structs → rules and a default (cross-checks, regexes, lists)
//! - `warn`: what loads but is probably a mistake, checked against [`crate::catalog`]
//! - `eval`: `PolicySet::decide` and `PolicySet::explain`
//! - `cases`: the test cases kept beside the policies, run by `callgate test`
//!
//! And the callers that run them:
//! - `load`: a directory → parse and compile, warn, assemble a `PolicySet` with its version
//! - `reload`: the live set, swapped whole; the file watcher
//!
//! [`SCHEMA`] is the JSON Schema of a policy file, for editors.
//!
//! Nothing here knows about HTTP or any IM server's wire format.

mod cases;
mod compile;
mod error;
mod eval;
mod index;
mod lines;
mod load;
mod model;
mod parse;
mod reload;
mod set;
mod syntax;
mod warn;

pub use cases::{CASES_DIR, CaseError, CaseReport, CaseRun, pinning_case, run_cases};
pub use error::{ListError, LoadError, LoadErrors, RuleError};
pub use eval::{Listed, Plan};
pub use load::{load_dir, load_dir_after};
pub use model::{Commands, FieldPathError, OnCommands, Place, RedisSet, Rule, Step, TraceStep, Warning};
pub use reload::{PolicyStore, ReloadStatus, Reloaded, Watch, watch};
pub use set::PolicySet;

/// The JSON Schema (draft-07) of one policy file, as `schema/policy.schema.json` holds it
/// and `callgate schema` prints it. Editors use it to complete and check policy files; the
/// loader stays the judge (cross-file checks such as duplicate ids are beyond a schema).
pub const SCHEMA: &str = include_str!("../../schema/policy.schema.json");
