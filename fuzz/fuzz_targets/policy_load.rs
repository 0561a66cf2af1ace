//! Arbitrary bytes as policy files; see tests/fuzz_checks/policy_load.rs.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/fuzz_checks/agree.rs"]
mod agree;
#[path = "../../tests/fuzz_checks/policy_load.rs"]
mod check;

/// One directory for the whole run: each input rewrites its files.
static DIR: LazyLock<tempfile::TempDir> = LazyLock::new(check::new_dir);

fuzz_target!(|data: &[u8]| check::check(DIR.path(), data));
