#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests: a failure should panic")]
//! Replays the committed fuzz seeds, `tests/fuzz_seeds/<target>/*`, through the same checks
//! the fuzz targets in `fuzz/` run (`tests/fuzz_checks/`), so plain `cargo test` keeps every
//! input the fuzzer found interesting passing without cargo-fuzz or nightly.

mod fuzz_checks;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

use fuzz_checks::{eval, openim_decode, policy_load, record_read, tencent_decode};

/// Runs `check` on every seed of `target`, and names every seed that panics.
fn replay(target: &str, check: impl Fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz_seeds").join(target);
    let mut paths: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    paths.sort();
    assert!(paths.len() >= 10, "{}: only {} seeds", dir.display(), paths.len());
    let failures: Vec<String> = paths
        .iter()
        .filter(|path| catch_unwind(AssertUnwindSafe(|| check(&std::fs::read(path).unwrap()))).is_err())
        .map(|path| path.display().to_string())
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} seeds fail; rerun one with `cargo fuzz run {target} <file>` in fuzz/:\n{}",
        failures.len(),
        paths.len(),
        failures.join("\n")
    );
}

#[test]
fn policy_load_seeds() {
    let dir = policy_load::new_dir();
    replay("policy_load", |data| policy_load::check(dir.path(), data));
}

#[test]
fn record_read_seeds() {
    let dir = record_read::new_dir();
    replay("record_read", |data| record_read::check(dir.path(), data));
}

#[test]
fn eval_seeds() {
    replay("eval", eval::check);
}

#[test]
fn openim_decode_seeds() {
    replay("openim_decode", openim_decode::check);
}

#[test]
fn tencent_decode_seeds() {
    replay("tencent_decode", tencent_decode::check);
}

#[test]
fn eval_policies_load_and_use_every_operator() {
    assert!(eval::SETS.iter().all(|set| set.rule_count() >= 7));
    let text = eval::POLICIES.concat();
    for word in [
        "equals:",
        "not_equals:",
        " in:",
        "not_in:",
        "in_list:",
        "not_in_list:",
        "regex:",
        "not_regex:",
        "exists: true",
        "exists: false",
        "any:",
        "all:",
        "not:",
        "rate_cap:",
        "dry_run",
        "*",
        "/a~1b/c~0d",
        ".0.",
    ] {
        assert!(text.contains(word), "the eval policies never use `{word}`");
    }
}
