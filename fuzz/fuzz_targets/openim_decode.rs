//! Arbitrary OpenIM requests; see tests/fuzz_checks/openim_decode.rs.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/fuzz_checks/openim_decode.rs"]
mod check;

fuzz_target!(|data: &[u8]| check::check(data));
