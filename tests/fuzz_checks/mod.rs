//! The checks behind the fuzz targets in `fuzz/`, one file per target. `tests/fuzz_seeds.rs`
//! replays the committed seeds through them, and each target includes its file with
//! `#[path]`, so `cargo test` and `cargo fuzz` run exactly the same code on an input.

pub mod agree;
pub mod eval;
pub mod openim_decode;
pub mod policy_load;
pub mod record_read;
pub mod tencent_decode;
