//! Arbitrary bytes as a file of records, replayed; see tests/fuzz_checks/record_read.rs.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/fuzz_checks/record_read.rs"]
mod check;

static DIR: LazyLock<tempfile::TempDir> = LazyLock::new(check::new_dir);

fuzz_target!(|data: &[u8]| check::check(DIR.path(), data));
