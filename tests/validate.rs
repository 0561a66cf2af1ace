#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests: a failure should panic")]
//! `callgate validate` and `callgate check`: golden bad-policy cases and the trace.
//!
//! Each directory under tests/bad_policies/ is one policy set that must be refused, with
//! `expected.txt` holding the exact messages (`{dir}` stands for the directory).

mod common;

use std::path::Path;
use std::process::Command;

#[test]
fn every_bad_policy_is_refused_with_its_exact_message() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bad_policies");
    let mut cases = 0;
    let mut failures = Vec::new();
    for entry in std::fs::read_dir(&root).unwrap() {
        let dir = entry.unwrap().path();
        let expected = std::fs::read_to_string(dir.join("expected.txt")).unwrap();
        let dir_text = dir.to_str().unwrap();
        let (code, stdout) = common::callgate_stdout(&["validate", "--policies", dir_text]);
        let expected_lines = expected.lines().count();
        let want = format!("{expected}{expected_lines} error(s); the policy set would be refused\n");
        let got = stdout.replace(dir_text, "{dir}");
        if code != 1 || got != want {
            failures.push(format!("{}: exit {code}\n--- want\n{want}--- got\n{got}", dir.display()));
        }
        cases += 1;
    }
    assert!(cases >= 25, "only {cases} cases found");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn shipped_policies_validate() {
    let (code, stdout) = common::callgate_stdout(&["validate", "--policies", "policies"]);
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.starts_with("ok: 5 rules in 2 files; version "), "{stdout}");
}

/// The benchmarks' policies (bench/policies/, read by bench/load.sh and bench/instr.sh) load,
/// so a change of the policy language cannot leave a benchmark measuring a refused set.
#[test]
fn benchmark_policies_validate() {
    let (code, stdout) = common::callgate_stdout(&["validate", "--policies", "bench/policies/cap"]);
    assert_eq!(code, 0, "{stdout}");
    let (code, stdout) = common::callgate_stdout(&["validate", "--policies", "bench/policies/list"]);
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.starts_with("ok: 1 rules in 1 files"), "{stdout}");
    // The Tencent rules go beside the shipped ones, as the scripts put them.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("lists")).unwrap();
    for (from, to) in [
        ("policies/10-blocklist.yaml", "10-blocklist.yaml"),
        ("policies/lists/staff.txt", "lists/staff.txt"),
        ("bench/policies/tencent/20-tencent.yaml", "20-tencent.yaml"),
    ] {
        std::fs::copy(from, dir.path().join(to)).unwrap();
    }
    let (code, stdout) = common::callgate_stdout(&["validate", "--policies", dir.path().to_str().unwrap()]);
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.starts_with("ok: 7 rules in 3 files"), "{stdout}");
}

#[test]
fn check_prints_decision_and_trace() {
    let dir = tempfile::tempdir().unwrap();
    let event = dir.path().join("unblock-bot.json");
    std::fs::write(
        &event,
        r#"{"callbackCommand":"callbackAfterRemoveBlackCommand","ownerUserID":"u_1","blackUserID":"bot_guest_1"}"#,
    )
    .unwrap();
    let guest = dir.path().join("unblock-guest.json");
    std::fs::write(
        &guest,
        r#"{"callbackCommand":"callbackAfterRemoveBlackCommand","ownerUserID":"u_1","blackUserID":"guest_9"}"#,
    )
    .unwrap();
    let (code, stdout) =
        common::callgate_stdout(&["check", "--policies", "policies", event.to_str().unwrap(), guest.to_str().unwrap()]);
    assert_eq!(code, 0, "{stdout}");
    let stdout = stdout.replace(dir.path().to_str().unwrap(), "{tmp}");
    let want = "\
{tmp}/unblock-bot.json: callbackAfterRemoveBlackCommand: deny, by rule `keep-system-accounts-blocked`: errCode 20001 \"system accounts cannot be unblocked\"
  not held     staff-may-always-unblock                 policies/10-blocklist.yaml:13
  decided      keep-system-accounts-blocked             policies/10-blocklist.yaml:19
  not reached  staff-cannot-be-blocked                  policies/10-blocklist.yaml:26
  not reached  trial-no-unblock-of-unverified           policies/10-blocklist.yaml:35
  not reached  unblock-rate                             policies/10-blocklist.yaml:45
{tmp}/unblock-guest.json: callbackAfterRemoveBlackCommand: allow, by the default
  not held     staff-may-always-unblock                 policies/10-blocklist.yaml:13
  not held     keep-system-accounts-blocked             policies/10-blocklist.yaml:19
  skipped      staff-cannot-be-blocked                  policies/10-blocklist.yaml:26
  dry run      trial-no-unblock-of-unverified           policies/10-blocklist.yaml:35
  under cap    unblock-rate                             policies/10-blocklist.yaml:45  (cap 0/10 in window)
  dry run: rule `trial-no-unblock-of-unverified` would deny
";
    assert_eq!(stdout, want);
}

#[test]
fn check_decides_every_shared_sample() {
    let samples = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/samples/openim");
    let mut args = vec!["check".to_string(), "--policies".into(), "policies".into()];
    for entry in std::fs::read_dir(samples).unwrap() {
        args.push(entry.unwrap().path().to_str().unwrap().to_string());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, stdout) = common::callgate_stdout(&args);
    assert_eq!(code, 0);
    assert_eq!(stdout.lines().filter(|l| l.contains(": allow, by the default")).count(), 52, "{stdout}");
}

/// `callgate validate | head -1`: the reader closing the pipe early is its choice. Enough
/// warnings that the output cannot fit the pipe's buffer, read by nobody.
#[test]
fn validate_into_a_closed_pipe_is_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let rules: String =
        (0..3000).map(|i| format!("  - id: r{i}\n    on: [noSuchCommand{i}]\n    decision: allow\n")).collect();
    std::fs::write(dir.path().join("policy.yaml"), format!("rules:\n{rules}")).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_callgate"))
        .args(["validate", "--policies", dir.path().to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(0), "{stderr}");
}
