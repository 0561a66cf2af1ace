#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests: a failure should panic")]
//! Warnings about policies that load but are probably typos: every kind, with its place and
//! suggestion, and everywhere they show — `validate` (and `--strict`), `check`, `test`, the
//! log of `serve` and of each reload, and `/v1/status`.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;

/// The two mistakes operators make most: a misspelt command and a field in the wrong case.
/// Both load, and neither rule would ever hold.
const TYPOS: &str = "\
rules:
  - id: no-blocking-bots
    on: [callbackBeforeAddBlakCommand]
    when:
      blackUserID: { regex: '^bot_' }
    decision: deny
    error: { code: 20010, message: \"bots cannot be blocked\" }
  - id: staff-cannot-be-blocked
    on: [callbackBeforeAddBlackCommand]
    when:
      blackUserId: { in: [admin_1] }
    decision: deny
    error: { code: 20011, message: \"staff cannot be blocked\" }
";

/// The warnings of [`TYPOS`], with `{dir}` for the policy directory.
const TYPO_WARNINGS: &str = "\
{dir}/policy.yaml:3: warning: rule `no-blocking-bots`: no IM server sends command `callbackBeforeAddBlakCommand`, so the rule never applies to it; did you mean `callbackBeforeAddBlackCommand`?
{dir}/policy.yaml:11: warning: rule `staff-cannot-be-blocked`: field `blackUserId` is not in the body of `callbackBeforeAddBlackCommand`, so the condition always finds it missing; did you mean `blackUserID`?
";

struct Output {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `callgate ARGS…`, with the policy directory `dir` written `{dir}` in its output.
fn callgate(dir: &Path, args: &[&str]) -> Output {
    let out = common::run_callgate(args);
    let text = |bytes: Vec<u8>| String::from_utf8(bytes).unwrap().replace(dir.to_str().unwrap(), "{dir}");
    Output { code: out.status.code().unwrap_or(-1), stdout: text(out.stdout), stderr: text(out.stderr) }
}

/// The warning lines of `text`, joined with newlines.
fn warning_lines(text: &str) -> String {
    text.lines().filter(|l| l.contains(": warning: ")).map(|l| format!("{l}\n")).collect()
}

#[test]
fn validate_warns_with_suggestions_and_still_accepts_the_set() {
    let dir = PolicyDir::with("policy.yaml", TYPOS);
    let dir_text = dir.path().to_str().unwrap();
    let out = callgate(dir.path(), &["validate", "--policies", dir_text]);
    assert_eq!(out.code, 0, "{}", out.stdout);
    let (warnings, last) = out.stdout.rsplit_once("ok: ").unwrap();
    assert_eq!(warnings, TYPO_WARNINGS);
    assert!(last.starts_with("2 rules in 1 files; version ") && last.ends_with("; 2 warnings\n"), "{last}");
}

#[test]
fn validate_strict_refuses_warnings() {
    let dir = PolicyDir::with("policy.yaml", TYPOS);
    let out = callgate(dir.path(), &["validate", "--strict", "--policies", dir.path().to_str().unwrap()]);
    assert_eq!(out.code, 1, "{}", out.stdout);
    assert_eq!(out.stdout, format!("{TYPO_WARNINGS}2 warning(s); with --strict the policy set is refused\n"));
}

#[test]
fn the_shipped_policies_have_no_warnings() {
    let out = callgate(Path::new("policies"), &["validate", "--strict", "--policies", "policies"]);
    assert_eq!(out.code, 0, "{}", out.stdout);
    assert!(out.stdout.starts_with("ok: 5 rules in 2 files; version "), "{}", out.stdout);
    assert!(!out.stdout.contains("warning"), "{}", out.stdout);
}

#[test]
fn check_and_test_print_warnings_on_stderr() {
    let dir = PolicyDir::with("policy.yaml", TYPOS);
    dir.write(
        "tests/staff.yaml",
        "- name: staff blocked\n  callback: { callbackCommand: callbackBeforeAddBlackCommand, ownerUserID: u_1, blackUserID: admin_1 }\n  expect: { decision: allow, rule: default }\n",
    );
    let event = dir.path().join("block.json");
    std::fs::write(&event, common::sample("openim/callbackBeforeAddBlackCommand.json")).unwrap();
    let dir_text = dir.path().to_str().unwrap();

    let check = callgate(dir.path(), &["check", "--policies", dir_text, event.to_str().unwrap()]);
    assert_eq!(check.code, 0, "{}", check.stderr);
    assert_eq!(check.stderr, TYPO_WARNINGS);
    assert!(check.stdout.starts_with("{dir}/block.json: callbackBeforeAddBlackCommand: allow, by the default\n"));
    assert_eq!(warning_lines(&check.stdout), "", "the answer on stdout stays clean");

    let test = callgate(dir.path(), &["test", "--policies", dir_text]);
    assert_eq!(test.code, 0, "{}", test.stdout);
    assert_eq!(test.stderr, TYPO_WARNINGS);
    assert_eq!(test.stdout, "1 passed, 0 failed\n");
}

/// Every kind of warning, and what does not warn, in one set read by the library.
#[test]
fn every_kind_of_warning_with_its_place_and_suggestion() {
    let dir = PolicyDir::with(
        "policy.yaml",
        r#"rules:
  - id: glob-typo
    on: ["callbackAfterRemoveBlak*"]
    decision: allow
  - id: case-typo-in-on
    on: [callbackbeforeaddblackcommand, Sns.CallbackBlackListDelete]
    decision: allow
  - id: nested-and-dotted
    on: ["callbackBeforeSend*MsgCommand"]
    when:
      any:
        - sendId: { equals: u_1 }
        - not:
            offlinePushInfo.title: { exists: true }
      all:
        - /atUserList/0: { equals: u_2 }
        - /recvID: { exists: true }
        - groupID: { exists: true }
    decision: allow
  - id: cap-key
    on: [callbackAfterRemoveBlackCommand]
    rate_cap: { key: [ownerUserId, blackUserID], max: 3, per: 1m }
    decision: allow
  - id: no-on-means-every-openim-command
    when:
      From_Account: { equals: u_1 }
      ownerUserId: { exists: true }
    decision: allow
  - id: tencent-fields-for-tencent-commands
    on: ["Sns.*"]
    when:
      PairList: { exists: true }
    decision: allow
  - id: nothing-known-so-fields-go-unchecked
    on: [noSuchCommand]
    when:
      anything: { exists: true }
    decision: allow
"#,
    );
    let set = callgate::policy::load_dir(dir.path()).unwrap();
    let warnings: String =
        set.warnings().iter().map(|w| format!("{w}\n").replace(dir.path().to_str().unwrap(), "{dir}")).collect();
    assert_eq!(
        warnings,
        "\
{dir}/policy.yaml:3: warning: rule `glob-typo`: glob `callbackAfterRemoveBlak*` matches no command an IM server sends, so the rule never applies through it; did you mean `callbackAfterRemoveBlack*`?
{dir}/policy.yaml:6: warning: rule `case-typo-in-on`: no IM server sends command `callbackbeforeaddblackcommand`, so the rule never applies to it; did you mean `callbackBeforeAddBlackCommand`?
{dir}/policy.yaml:12: warning: rule `nested-and-dotted`: field `sendId` is not in the body of any of the rule's 2 commands, so the condition always finds it missing; did you mean `sendID`?
{dir}/policy.yaml:14: warning: rule `nested-and-dotted`: field `offlinePushInfo.title`: `offlinePushInfo` is not in the body of any of the rule's 2 commands, so the condition always finds it missing
{dir}/policy.yaml:22: warning: rule `cap-key`: rate_cap key `ownerUserId` is not in the body of `callbackAfterRemoveBlackCommand`, so every callback counts under one empty value; did you mean `ownerUserID`?
{dir}/policy.yaml:26: warning: rule `no-on-means-every-openim-command`: field `From_Account` is not in the body of any OpenIM command (the rule has no `on`), so the condition always finds it missing
{dir}/policy.yaml:35: warning: rule `nothing-known-so-fields-go-unchecked`: no IM server sends command `noSuchCommand`, so the rule never applies to it
"
    );
}

#[tokio::test]
async fn serve_and_each_reload_log_the_warnings_and_status_shows_them() {
    let dir = PolicyDir::with("policy.yaml", TYPOS);
    let server = Server::start(dir.path(), &[]);
    let placed = |text: &str| text.replace("{dir}", dir.path().to_str().unwrap());
    let expected: Vec<String> = TYPO_WARNINGS.lines().map(placed).collect();
    let logged = |warning: &str| server.logs().lines().filter(|l| l.contains(warning) && l.contains("WARN")).count();
    for warning in &expected {
        assert_eq!(logged(warning), 1, "not logged once at WARN: {warning}\n{}", server.logs());
    }
    let status = server.admin_get("/v1/status").await;
    assert_eq!(status["warnings"], serde_json::json!(expected));
    assert_eq!(status["rules"], 2, "the existing keys stay");

    // A reload logs the new set's warnings. Written whole (by rename), so no reload reads a
    // half-written file and logs what it warns about.
    let v = server.policy_version().await;
    dir.write_and_rename("policy.yaml", &TYPOS.replace("blackUserId", "blackUserIDs"));
    server.wait_for_new_version(&v, Duration::from_secs(10)).await;
    let new_warning = placed(
        "{dir}/policy.yaml:11: warning: rule `staff-cannot-be-blocked`: field `blackUserIDs` is not in the body of `callbackBeforeAddBlackCommand`, so the condition always finds it missing; did you mean `blackUserID`?",
    );
    server.wait_for_log(&new_warning, Duration::from_secs(10)).await;
    assert_eq!(logged(&new_warning), 1);
    assert_eq!(logged(&expected[0]), 2, "the unchanged typo is logged again with the new set");
    let status = server.admin_get("/v1/status").await;
    assert_eq!(status["warnings"], serde_json::json!([expected[0].clone(), new_warning]));

    // Fixed: no warnings left in status.
    let v = server.policy_version().await;
    dir.write_and_rename(
        "policy.yaml",
        &TYPOS
            .replace("callbackBeforeAddBlakCommand", "callbackBeforeAddBlackCommand")
            .replace("blackUserId", "blackUserID"),
    );
    server.wait_for_new_version(&v, Duration::from_secs(10)).await;
    assert_eq!(server.admin_get("/v1/status").await["warnings"], serde_json::json!([]));
}
