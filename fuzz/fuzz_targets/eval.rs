//! A fixed policy set, arbitrary callbacks; see tests/fuzz_checks/eval.rs.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/fuzz_checks/agree.rs"]
mod agree;
#[path = "../../tests/fuzz_checks/eval.rs"]
mod check;

fuzz_target!(|data: &[u8]| check::check(data));
