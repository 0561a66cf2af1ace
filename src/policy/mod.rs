//! Policies: the operator's YAML rules, compiled into a [`PolicySet`] and evaluated.
//!
//! - `parse`: YAML text → raw structs (shape errors, with lines)
//! - `compile`: raw structs → `PolicySet` (cross-checks, regexes, lists); `LoadError`
//! - `index`: which rules could hold for a callback, without scanning them all
//! - `eval`: `PolicySet::decide` and `PolicySet::explain`
//! - `load`: a directory → a `PolicySet` with its version
//! - `reload`: the live set, swapped whole; the file watcher
//!
//! Nothing here knows about HTTP or any IM server's wire format.

mod compile;
mod eval;
mod index;
mod load;
mod parse;
mod reload;

pub use compile::{LoadError, LoadErrors, Outcome, Place, PolicySet, Refusal};
pub use eval::{CapHit, Decision, DryRunHit, Plan, Step, TraceStep};
pub use load::load_dir;
pub use reload::{PolicyStore, ReloadStatus, Reloaded, Watch, watch};
