#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests: a failure should panic")]
//! `callgate replay` over records written by a real `callgate serve`: the server answers a
//! known sequence of callbacks, is stopped (so its records are on disk), and candidate
//! policy sets are replayed against its records — over several rotated record files too —
//! and the test cases `--write-cases` writes from them are run by `callgate test`.

mod common;

use std::path::Path;

use common::*;
use serde_json::Value;

const UNBLOCK: &str = "/openim/callbackAfterRemoveBlackCommand";

const NO_SYS: &str = "  - id: no-sys\n    when:\n      blackUserID: { regex: '^sys_' }\n    decision: deny\n    error: { code: 150, message: no }\n";
const NO_GUEST: &str = "  - id: no-guest\n    when:\n      blackUserID: { regex: '^guest_' }\n    decision: deny\n    error: { code: 160, message: no guests }\n";

fn cap_rule(max: u64) -> String {
    format!(
        "  - id: unblock-rate\n    on: [\"callbackAfterRemoveBlack*\"]\n    rate_cap: {{ key: [ownerUserID], max: {max}, per: 1m }}\n    decision: deny\n    error: {{ code: 20002, message: too many }}\n"
    )
}

fn policies(rules: &[&str]) -> PolicyDir {
    match rules {
        [] => PolicyDir::with("10.yaml", "rules: []\n"),
        _ => PolicyDir::with("10.yaml", &format!("rules:\n{}", rules.concat())),
    }
}

/// Serves `live`, posts `calls` (owner, black) in order, stops the server; returns it, so
/// its data directory lives on.
async fn recorded(live: &PolicyDir, calls: &[(&str, &str)]) -> Server {
    let mut server = Server::start(live.path(), &[]);
    for (owner, black) in calls {
        let (status, _) = server.post(UNBLOCK, &unblock(owner, black)).await;
        assert_eq!(status, 200);
    }
    assert_eq!(server.terminate(), Some(0));
    server
}

fn replay(data: &Path, candidate: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let mut all = vec!["replay", "--policies", candidate.to_str().unwrap(), "--data-dir", data.to_str().unwrap()];
    all.extend_from_slice(args);
    let out = run_callgate(&all);
    (out.status.code(), String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
}

/// The changed records, from `--format jsonl`.
fn changes(data: &Path, candidate: &Path) -> Vec<Value> {
    let (code, out, err) = replay(data, candidate, &["--format", "jsonl"]);
    assert_eq!(code, Some(0), "{err}");
    out.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// The line number of a change's record (`…/records-N.jsonl:LINE`).
fn line_of(change: &Value) -> usize {
    change["at"].as_str().unwrap().rsplit(':').next().unwrap().parse().unwrap()
}

fn report(data: &Path, candidate: &Path, args: &[&str]) -> Value {
    let mut all = vec!["--format", "json"];
    all.extend_from_slice(args);
    let (code, out, err) = replay(data, candidate, &all);
    assert_eq!(code, Some(0), "{err}");
    serde_json::from_str(&out).unwrap()
}

const REGEX_CALLS: [(&str, &str); 6] =
    [("u_1", "sys_1"), ("u_1", "u_2"), ("u_2", "guest_1"), ("u_3", "guest_2"), ("u_1", "u_3"), ("u_2", "sys_guest")];

#[tokio::test]
async fn a_candidate_adding_a_regex_changes_exactly_the_records_it_matches() {
    let live = policies(&[NO_SYS]);
    let server = recorded(&live, &REGEX_CALLS).await;
    let candidate = policies(&[NO_SYS, NO_GUEST]);

    let changed = changes(server.data_dir(), candidate.path());
    // Records are written in the order posted, one a line: the 3rd and 4th calls, and not
    // the 6th, which `no-sys` still refuses first.
    assert_eq!(changed.iter().map(line_of).collect::<Vec<_>>(), [3, 4]);
    for c in &changed {
        assert_eq!(c["direction"], "allow_to_deny");
        assert_eq!(c["old"], serde_json::json!({"decision": "allow", "rule": null}));
        assert_eq!(c["new"], serde_json::json!({"decision": "deny", "rule": "no-guest", "error_code": 160}));
        assert_eq!(c["command"], "callbackAfterRemoveBlackCommand");
        assert_eq!(c["operation_id"], "op-test");
    }

    let r = report(server.data_dir(), candidate.path(), &[]);
    assert_eq!(r["records"]["replayed"], 6);
    assert_eq!(r["changes"]["changed"], 2);
    assert_eq!(r["changes"]["unchanged"], 4);
    assert_eq!(r["changes"]["allow_to_deny"], 2);
    assert_eq!(r["rules"]["(default)"]["before"], serde_json::json!({"allow": 4, "deny": 0}));
    assert_eq!(r["rules"]["(default)"]["after"], serde_json::json!({"allow": 2, "deny": 0}));
    assert_eq!(r["rules"]["no-guest"]["after"], serde_json::json!({"allow": 0, "deny": 2}));
    assert_eq!(r["rules"]["no-sys"]["before"], r["rules"]["no-sys"]["after"]);
    let users: Vec<&str> = r["users"]["top"].as_array().unwrap().iter().map(|u| u["user"].as_str().unwrap()).collect();
    assert_eq!(users, ["guest_1", "guest_2", "u_2", "u_3"], "one changed callback each, by ID");

    // The text report says the same.
    let (code, text, _) = replay(server.data_dir(), candidate.path(), &[]);
    assert_eq!(code, Some(0));
    assert!(text.contains("replayed 6 callback(s)"), "{text}");
    assert!(text.contains("unchanged 4, changed 2"), "{text}");
    assert!(text.contains("allow → deny   2"), "{text}");
    assert!(text.contains("rate caps start empty at"), "{text}");
    assert!(text.contains("allow by (default) → deny by no-guest (160)"), "{text}");

    // Filters narrow what is replayed, as in `callgate events`.
    let r = report(server.data_dir(), candidate.path(), &["--user", "u_3"]);
    assert_eq!(r["records"]["replayed"], 2, "u_3 as owner once and as blocked once");
    assert_eq!(r["changes"]["changed"], 1);
}

/// Owners A and B unblock in turn; `sys_` calls are refused by an earlier rule and must not
/// count against the cap.
const CAP_CALLS: [(&str, &str); 12] = [
    ("a", "x1"),
    ("a", "sys_1"),
    ("b", "x1"),
    ("a", "x2"),
    ("a", "x3"),
    ("a", "sys_2"),
    ("b", "x2"),
    ("a", "x4"),
    ("a", "x5"),
    ("b", "x3"),
    ("b", "x4"),
    ("a", "x6"),
];

/// The 1-based positions of the calls a cap of `max` per owner refuses, when all fall in one
/// window: computed from the sequence, not by callgate.
fn refused_by_cap(calls: &[(&str, &str)], max: usize) -> Vec<usize> {
    let mut allowed = std::collections::HashMap::<&str, usize>::new();
    let mut refused = Vec::new();
    for (i, (owner, black)) in calls.iter().enumerate() {
        if black.starts_with("sys_") {
            continue;
        }
        let n = allowed.entry(owner).or_default();
        if *n < max {
            *n += 1;
        } else {
            refused.push(i + 1);
        }
    }
    refused
}

#[tokio::test]
async fn a_tightened_cap_refuses_exactly_the_calls_past_it() {
    // Live: a cap no owner reaches. The whole test runs well within its 1-minute window.
    let live = policies(&[NO_SYS, &cap_rule(100)]);
    let server = recorded(&live, &CAP_CALLS).await;

    for max in [1, 2, 3] {
        let candidate = policies(&[NO_SYS, &cap_rule(max)]);
        let changed = changes(server.data_dir(), candidate.path());
        let expected = refused_by_cap(&CAP_CALLS, max as usize);
        assert!(!expected.is_empty());
        assert_eq!(changed.iter().map(line_of).collect::<Vec<_>>(), expected, "max {max}");
        for c in &changed {
            assert_eq!(c["new"], serde_json::json!({"decision": "deny", "rule": "unblock-rate", "error_code": 20002}));
        }
    }
}

#[tokio::test]
async fn the_live_set_replayed_changes_nothing_caps_included() {
    // Live caps refuse some calls; replaying the same set must refuse the same ones.
    let live = policies(&[NO_SYS, &cap_rule(2)]);
    let server = recorded(&live, &CAP_CALLS).await;
    let denied = events(server.data_dir(), &["--decision", "deny"]);
    assert_eq!(denied.len(), 2 + refused_by_cap(&CAP_CALLS, 2).len(), "the live server capped");

    let (code, text, err) = replay(server.data_dir(), live.path(), &["--fail-on", "any-change"]);
    assert_eq!(code, Some(0), "{text}{err}");
    assert!(text.contains("replayed 12 callback(s)"), "{text}");
    assert!(text.contains("unchanged 12, changed 0"), "{text}");
}

#[tokio::test]
async fn the_gate_exit_codes() {
    let live = policies(&[NO_SYS]);
    let server = recorded(&live, &REGEX_CALLS).await;
    let data = server.data_dir();
    let candidate = policies(&[NO_SYS, NO_GUEST]); // 2 allow → deny
    let code = |args: &[&str]| replay(data, candidate.path(), args).0;
    assert_eq!(code(&[]), Some(0));
    assert_eq!(code(&["--fail-on", "allow-to-deny"]), Some(1));
    assert_eq!(code(&["--fail-on", "deny-to-allow"]), Some(0));
    assert_eq!(code(&["--fail-on", "deny-to-allow", "--fail-on", "any-change"]), Some(1));
    assert_eq!(code(&["--max-changes", "2"]), Some(0));
    assert_eq!(code(&["--max-changes", "1"]), Some(1));
    let (_, _, err) = replay(data, candidate.path(), &["--fail-on", "allow-to-deny"]);
    assert!(err.contains("2 callback(s) allowed then are refused now"), "{err}");

    // Dropping `no-sys` lets the two sys_ calls through: deny → allow only.
    let looser = policies(&[]);
    assert_eq!(replay(data, looser.path(), &["--fail-on", "deny-to-allow"]).0, Some(1));
    assert_eq!(replay(data, looser.path(), &["--fail-on", "allow-to-deny"]).0, Some(0));

    // A candidate that does not load: 2, with the place of the error.
    let broken = PolicyDir::with(
        "10.yaml",
        "rules:\n  - id: bad\n    when:\n      blackUserID: { regex: '(' }\n    decision: deny\n    error: { code: 150, message: no }\n",
    );
    let (code, out, err) = replay(data, broken.path(), &["--fail-on", "any-change"]);
    assert_eq!(code, Some(2), "{out}{err}");
    assert!(err.contains("10.yaml:4"), "{err}");
    // No record directory: 2 as well.
    let (code, _, err) = replay(&data.join("nope"), candidate.path(), &[]);
    assert_eq!(code, Some(2), "{err}");
}

#[tokio::test]
async fn bad_lines_and_tencent_acks_are_counted_never_fatal() {
    let live = policies(&[NO_SYS]);
    let server = recorded(&live, &REGEX_CALLS).await;
    let data = server.data_dir();
    let file = std::fs::read_dir(data)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .unwrap();
    let mut text = std::fs::read_to_string(&file).unwrap();
    text.push_str("not json\n");
    text.push_str(r#"{"time":"2026-01-01T00:00:00.000Z","source":"tencent","command":"C2C.CallbackAfterSendMsg","decision":"ack","latency_us":1,"body":{}}"#);
    text.push('\n');
    text.push_str(r#"{"time":"2026-01-01T00:00:00.000Z","source":"openim","#); // torn by a crash
    std::fs::write(&file, text).unwrap();

    let candidate = policies(&[NO_SYS, NO_GUEST]);
    let r = report(data, candidate.path(), &[]);
    assert_eq!(r["records"]["replayed"], 6);
    assert_eq!(r["records"]["tencent_skipped"], 1);
    assert_eq!(r["records"]["malformed"], 2);
    let at: Vec<&str> = r["malformed"].as_array().unwrap().iter().map(|m| m["at"].as_str().unwrap()).collect();
    let name = file.display().to_string();
    assert_eq!(at, [format!("{name}:7"), format!("{name}:9")]);
    assert_eq!(r["changes"]["changed"], 2);
}

#[tokio::test]
async fn the_json_report_follows_its_schema() {
    let live = policies(&[NO_SYS, &cap_rule(100)]);
    let server = recorded(&live, &CAP_CALLS).await;
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("schema/replay-report.schema.json"))
            .unwrap(),
    )
    .unwrap();
    jsonschema::draft7::meta::validate(&schema).unwrap();
    let validator = jsonschema::draft7::new(&schema).unwrap();
    // Every kind of change, so every part of the report is filled.
    let candidate = policies(&[NO_GUEST, &cap_rule(2)]);
    let r = report(server.data_dir(), candidate.path(), &[]);
    let errors: Vec<String> = validator.iter_errors(&r).map(|e| format!("{}: {e}", e.instance_path())).collect();
    assert!(errors.is_empty(), "{errors:#?}\n{r:#}");
    assert!(r["changes"]["deny_to_allow"].as_u64().unwrap() > 0);
    assert!(r["changes"]["allow_to_deny"].as_u64().unwrap() > 0);
    assert!(!r["examples"]["deny_to_allow"].as_array().unwrap().is_empty());
    // And the schema is strict enough to refuse a report that is not one.
    let mut wrong = r.clone();
    wrong["changes"]["changed"] = Value::from(-1);
    assert!(!validator.is_valid(&wrong));
}

#[tokio::test]
async fn under_server_dry_run_the_old_answer_is_what_enforcement_would_have_sent() {
    let live = policies(&[NO_SYS]);
    let mut server = Server::start(live.path(), &["--dry-run"]);
    for (owner, black) in REGEX_CALLS {
        assert_eq!(server.post(UNBLOCK, &unblock(owner, black)).await.1, ALLOW, "dry run answers allow");
    }
    assert_eq!(server.terminate(), Some(0));
    let data = server.data_dir();

    // The same set: what it would have refused it still refuses.
    let (code, text, err) = replay(data, live.path(), &["--fail-on", "any-change"]);
    assert_eq!(code, Some(0), "{text}{err}");
    assert!(text.contains("unchanged 6, changed 0"), "{text}");

    // Another error code for the same refusals: the decision holds, the answer changes.
    let recoded = policies(&[&NO_SYS.replace("code: 150", "code: 151")]);
    let changed = changes(data, recoded.path());
    assert_eq!(changed.iter().map(line_of).collect::<Vec<_>>(), [1, 6]);
    for c in &changed {
        assert_eq!(c["direction"], "other_rule");
        assert_eq!(c["old"], serde_json::json!({"decision": "deny", "rule": "no-sys", "error_code": 150}));
        assert_eq!(c["new"], serde_json::json!({"decision": "deny", "rule": "no-sys", "error_code": 151}));
    }
}

/// The record files of a data directory, oldest first.
fn record_files(data: &Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(data)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    files.sort();
    files
}

/// The 1-based position of a change's record among all records, across files.
fn position_of(change: &Value, files: &[std::path::PathBuf]) -> usize {
    let at = change["at"].as_str().unwrap();
    let (file, _) = at.rsplit_once(':').unwrap();
    let before: usize = files
        .iter()
        .take_while(|f| f.to_str().unwrap() != file)
        .map(|f| std::fs::read_to_string(f).unwrap().lines().count())
        .sum();
    before + line_of(change)
}

#[tokio::test]
async fn records_rotated_over_several_files_are_replayed_in_order_caps_included() {
    // 48 calls by four owners, a guest or a sys_ account now and then; files rotate at
    // 4 KiB (the least `serve` takes), so about a dozen records a file.
    let names: Vec<(String, String)> = (0..48)
        .map(|i| {
            let black = match i % 7 {
                3 => format!("guest_{i}"),
                5 => format!("sys_{i}"),
                _ => format!("x{i}"),
            };
            (["a", "b", "c", "d"][i % 4].to_string(), black)
        })
        .collect();
    let calls: Vec<(&str, &str)> = names.iter().map(|(o, b)| (o.as_str(), b.as_str())).collect();
    let live = policies(&[NO_SYS, &cap_rule(100)]);
    let mut server = Server::start(live.path(), &["--record-max-bytes", "4096"]);
    for (owner, black) in &calls {
        assert_eq!(server.post(UNBLOCK, &unblock(owner, black)).await.0, 200);
    }
    assert_eq!(server.terminate(), Some(0));
    let files = record_files(server.data_dir());
    assert!(files.len() >= 3, "records rotated into {} file(s)", files.len());

    // A regex: exactly the guest calls, wherever their file.
    let candidate = policies(&[NO_SYS, NO_GUEST, &cap_rule(100)]);
    let r = report(server.data_dir(), candidate.path(), &[]);
    assert_eq!(r["records"]["replayed"], 48);
    assert_eq!(r["records"]["malformed"], 0);
    let guests: Vec<usize> = (1..=48).filter(|&i| calls[i - 1].1.starts_with("guest_")).collect();
    let changed = changes(server.data_dir(), candidate.path());
    assert_eq!(changed.iter().map(|c| position_of(c, &files)).collect::<Vec<_>>(), guests);

    // A cap of 3 per owner: the counts carry over from one file to the next.
    let candidate = policies(&[NO_SYS, &cap_rule(3)]);
    let changed = changes(server.data_dir(), candidate.path());
    let expected = refused_by_cap(&calls, 3);
    assert!(expected.len() > 20);
    assert_eq!(changed.iter().map(|c| position_of(c, &files)).collect::<Vec<_>>(), expected);
    let files_with_changes: std::collections::BTreeSet<&str> =
        changed.iter().map(|c| c["at"].as_str().unwrap().rsplit_once(':').unwrap().0).collect();
    assert!(files_with_changes.len() >= 2, "{files_with_changes:?}");
}

/// The cases of a file written by `--write-cases`.
fn written_cases(file: &Path) -> Vec<Value> {
    let yaml: serde_yaml_ng::Value = serde_yaml_ng::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
    serde_json::to_value(yaml).unwrap().as_array().unwrap().clone()
}

/// A dry-run rule beside the enforced ones, so cases pin dry-run hits too.
const TRIAL: &str = "  - id: trial\n    when:\n      blackUserID: { regex: '^x1' }\n    decision: deny\n    error: { code: 170, message: trial }\n    mode: dry_run\n";

#[tokio::test]
async fn written_cases_pin_the_candidates_decisions_and_pass_callgate_test() {
    let live = policies(&[NO_SYS, &cap_rule(100)]);
    let mut calls = CAP_CALLS.to_vec();
    calls.extend([("a", "sys_1"), ("c", "guest_1"), ("a", "sys_1")]);
    let server = recorded(&live, &calls).await;
    let candidate = policies(&[NO_SYS, NO_GUEST, TRIAL, &cap_rule(2)]);
    let file = candidate.path().join("tests/replayed.yaml");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();

    let (code, out, err) =
        replay(server.data_dir(), candidate.path(), &["--write-cases", file.to_str().unwrap(), "--format", "json"]);
    assert_eq!(code, Some(0), "{err}");
    serde_json::from_str::<Value>(&out).expect("stdout is still the JSON report");
    let cases = written_cases(&file);
    // 15 callbacks, of which ("a", "sys_1") three times: 13 cases.
    assert_eq!(cases.len(), 13, "{}", std::fs::read_to_string(&file).unwrap());
    assert!(err.contains("wrote 13 case(s)"), "{err}");
    let rules: std::collections::BTreeSet<&str> = cases.iter().map(|c| c["expect"]["rule"].as_str().unwrap()).collect();
    assert_eq!(rules, ["default", "no-guest", "no-sys", "unblock-rate"].into());
    for case in &cases {
        let name = case["name"].as_str().unwrap();
        assert!(name.starts_with("callbackAfterRemoveBlackCommand op-test at 20"), "{name}");
        let keys: Vec<&String> = case["callback"].as_object().unwrap().keys().collect();
        assert_eq!(keys, ["blackUserID", "callbackCommand", "ownerUserID"], "only what the set reads");
    }
    // The capped calls carry the count the replay found, and the cap's refusal.
    let capped: Vec<&Value> = cases.iter().filter(|c| c["expect"]["rule"] == "unblock-rate").collect();
    assert_eq!(capped.len(), refused_by_cap(&CAP_CALLS, 2).len());
    assert!(capped.iter().all(|c| c["caps"]["unblock-rate"] == 2 && c["expect"]["error_code"] == 20002));
    let trial = cases.iter().filter(|c| c["expect"]["dry_run"] == serde_json::json!(["trial"])).count();
    assert_eq!(trial, 2, "x1, by owners a and b");

    let (code, out) = callgate_stdout(&["test", "--policies", candidate.path().to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(out.ends_with("13 passed, 0 failed\n"), "{out}");

    // They pin the candidate, not the live set: against the live set the changes fail.
    let against_live = PolicyDir::with("10.yaml", &format!("rules:\n{}{}{TRIAL}{}", NO_SYS, NO_GUEST, cap_rule(100)));
    against_live.write("tests/replayed.yaml", &std::fs::read_to_string(&file).unwrap());
    let (code, out) = callgate_stdout(&["test", "--policies", against_live.path().to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.ends_with(&format!("{} passed, {} failed\n", 13 - capped.len(), capped.len())), "{out}");
}

#[tokio::test]
async fn max_cases_keeps_one_case_per_rule_first() {
    let live = policies(&[NO_SYS, &cap_rule(100)]);
    let server = recorded(&live, &CAP_CALLS).await;
    let candidate = policies(&[NO_SYS, &cap_rule(2)]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cases.yaml");
    let args = ["--write-cases", file.to_str().unwrap(), "--max-cases", "3"];
    let (code, _, err) = replay(server.data_dir(), candidate.path(), &args);
    assert_eq!(code, Some(0), "{err}");
    let rules: Vec<String> =
        written_cases(&file).iter().map(|c| c["expect"]["rule"].as_str().unwrap().to_string()).collect();
    // The default, no-sys and the cap each decided: one of each, in record order.
    assert_eq!(rules, ["default", "no-sys", "unblock-rate"]);
    assert!(err.contains("(3 pinning a rule, 0 changed, 0 other)"), "{err}");

    // A file that cannot be written: exit 2, and nothing left behind.
    let bad = dir.path().join("no/such/dir/cases.yaml");
    let (code, _, err) = replay(server.data_dir(), candidate.path(), &["--write-cases", bad.to_str().unwrap()]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("cannot write the cases to"), "{err}");
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, ["cases.yaml"]);
}

#[tokio::test]
async fn a_case_that_would_not_pass_is_left_out_and_said() {
    let live = policies(&[NO_SYS]);
    let server = recorded(&live, &REGEX_CALLS).await;
    // A rule named `default` makes `rule: default` ambiguous: `callgate test` refuses such a
    // case, so none can be written.
    let candidate = policies(&[&NO_SYS.replace("id: no-sys", "id: default")]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cases.yaml");
    let (code, _, err) = replay(server.data_dir(), candidate.path(), &["--write-cases", file.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("wrote 0 case(s)"), "{err}");
    assert!(err.contains("6 callback(s) left out"), "{err}");
    assert!(err.contains("a rule is also named `default`"), "{err}");
    assert!(std::fs::read_to_string(&file).unwrap().starts_with("# Written by `callgate replay --write-cases`"));
}

#[tokio::test]
async fn tencent_before_callbacks_decided_as_a_whole_are_replayed_with_their_codes() {
    let live = PolicyDir::with(
        "10.yaml",
        "rules:\n  - id: muted\n    on: C2C.CallbackBeforeSendMsg\n    when:\n      From_Account: { equals: u_muted }\n    decision: deny\n    error: { code: 120001, message: muted }\n",
    );
    let mut server = Server::start(live.path(), &["--tencent-app-id", TENCENT_APP, "--tencent-token", TENCENT_TOKEN]);
    let c2c = "C2C.CallbackBeforeSendMsg";
    let message = |from: &str| format!(r#"{{"CallbackCommand":"{c2c}","From_Account":"{from}","To_Account":"u_2"}}"#);
    for from in ["u_muted", "u_1", "spam_1"] {
        assert_eq!(server.post_tencent(&signed_query(c2c, unix_now()), &message(from)).await.0, 200);
    }
    // A report is not replayed: it is skipped and counted.
    let unblock =
        r#"{"CallbackCommand":"Sns.CallbackBlackListDelete","PairList":[{"From_Account":"a","To_Account":"b"}]}"#;
    let add = "Sns.CallbackPrevFriendAdd";
    let friend = format!(r#"{{"CallbackCommand":"{add}","From_Account":"u_1","FriendItem":[{{"To_Account":"u_2"}}]}}"#);
    assert_eq!(server.post_tencent(&signed_query("Sns.CallbackBlackListDelete", unix_now()), unblock).await.0, 200);
    assert_eq!(server.post_tencent(&signed_query(add, unix_now()), &friend).await.0, 200);
    assert_eq!(server.terminate(), Some(0));

    let candidate = PolicyDir::with(
        "10.yaml",
        "rules:\n  - id: spam\n    on: \"*.CallbackBeforeSendMsg\"\n    when:\n      From_Account: { regex: '^spam_' }\n    decision: discard\n  - id: muted\n    on: C2C.CallbackBeforeSendMsg\n    when:\n      From_Account: { equals: u_muted }\n    decision: deny\n    error: { code: 120009, message: muted }\n",
    );
    let report = report(server.data_dir(), candidate.path(), &[]);
    // The report is skipped; the friend request is replayed item by item (see below).
    assert_eq!((&report["records"]["replayed"], &report["records"]["tencent_skipped"]), (&4.into(), &1.into()));
    assert_eq!(report["records"]["items"], 1);
    let changed = changes(server.data_dir(), candidate.path());
    let summary: Vec<(Value, Value, Value)> = changed
        .iter()
        .map(|c| (c["direction"].clone(), c["old"]["error_code"].clone(), c["new"]["error_code"].clone()))
        .collect();
    assert_eq!(
        summary,
        [("other_rule".into(), 120001.into(), 120009.into()), ("allow_to_deny".into(), Value::Null, Value::Null)],
        "{changed:?}"
    );
}

/// A group invitation, decided member by member.
fn invitation(operator: &str, members: &[&str]) -> String {
    let members: Vec<Value> = members.iter().map(|m| serde_json::json!({ "Member_Account": m })).collect();
    serde_json::json!({"CallbackCommand": "Group.CallbackBeforeInviteJoinGroup", "GroupId": "@TGS#1",
        "Operator_Account": operator, "DestinationMembers": members})
    .to_string()
}

#[tokio::test]
async fn tencent_callbacks_decided_item_by_item_are_replayed_item_by_item() {
    let invite = "Group.CallbackBeforeInviteJoinGroup";
    let no_bots = format!(
        "  - id: no-bots\n    on: {invite}\n    when:\n      item.Member_Account: {{ regex: '^bot_' }}\n    decision: deny\n    error: {{ code: 10104, message: no bots }}\n"
    );
    let live = policies(&[&no_bots]);
    let mut server = Server::start(live.path(), &["--tencent-app-id", TENCENT_APP, "--tencent-token", TENCENT_TOKEN]);
    let calls: [(&str, &[&str]); 3] =
        [("op_1", &["u_1", "bot_1", "u_2"]), ("op_2", &["u_3"]), ("op_1", &["u_4", "u_5", "bot_2"])];
    for (operator, members) in calls {
        let (status, _) = server.post_tencent(&signed_query(invite, unix_now()), &invitation(operator, members)).await;
        assert_eq!(status, 200);
    }
    assert_eq!(server.terminate(), Some(0));

    // The candidate lets bots in but caps invitations at 3 members a minute per operator:
    // op_1's items, in list order on the records' clock, are u_1 bot_1 u_2 (3 allowed),
    // then u_4 u_5 bot_2 (refused by the cap; bot_2 was refused then too, by no-bots).
    let cap = format!(
        "  - id: invite-rate\n    on: {invite}\n    rate_cap: {{ key: [Operator_Account], max: 3, per: 1m }}\n    decision: deny\n    error: {{ code: 10105, message: too many }}\n"
    );
    let candidate = policies(&[&cap]);
    let report = report(server.data_dir(), candidate.path(), &[]);
    assert_eq!(report["records"]["replayed"], 3);
    assert_eq!(report["records"]["items"], 7);
    assert_eq!(report["records"]["tencent_skipped"], 0);
    assert_eq!(report["changes"]["unchanged"], 3, "u_1, u_2, u_3");
    let directions = ["deny_to_allow", "allow_to_deny", "other_rule"].map(|d| report["changes"][d].as_u64().unwrap());
    assert_eq!(directions, [1, 2, 1], "bot_2 was refused then by no-bots and now by the cap");
    assert_eq!(report["rules"]["no-bots"]["before"]["deny"], 2);
    assert_eq!(report["rules"]["invite-rate"]["after"]["deny"], 3);
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("schema/replay-report.schema.json"))
            .unwrap(),
    )
    .unwrap();
    assert!(jsonschema::draft7::new(&schema).unwrap().is_valid(&report), "{report:#}");

    let changed: Vec<(String, String, Value)> = changes(server.data_dir(), candidate.path())
        .iter()
        .map(|c| {
            (
                c["item"].as_str().unwrap().into(),
                c["direction"].as_str().unwrap().into(),
                c["new"]["error_code"].clone(),
            )
        })
        .collect();
    let expected = [
        ("bot_1", "deny_to_allow", Value::Null),
        ("u_4", "allow_to_deny", 10105.into()),
        ("u_5", "allow_to_deny", 10105.into()),
        ("bot_2", "other_rule", 10105.into()),
    ];
    let expected: Vec<(String, String, Value)> = expected.map(|(i, d, c)| (i.into(), d.into(), c)).into();
    assert_eq!(changed, expected);
    let (_, text, _) = replay(server.data_dir(), candidate.path(), &[]);
    assert!(text.contains("of them 7 item(s)"), "{text}");
    assert!(text.contains(&format!("{invite} item u_4")), "{text}");
    let top: Vec<&str> =
        report["users"]["top"].as_array().unwrap().iter().map(|u| u["user"].as_str().unwrap()).collect();
    assert_eq!(top[0], "op_1", "every change is an invitation by op_1: {top:?}");

    // Written cases pin items too, and pass `callgate test`.
    let file = candidate.path().join("tests/replayed.yaml");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    let (code, _, err) = replay(server.data_dir(), candidate.path(), &["--write-cases", file.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{err}");
    let cases = written_cases(&file);
    assert!(cases.iter().any(|c| c["callback"]["item"]["Member_Account"] == "bot_2"), "{cases:?}");
    let (code, out) = callgate_stdout(&["test", "--policies", candidate.path().to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn an_item_record_that_does_not_match_its_body_is_malformed_and_counts_nothing() {
    let data = tempfile::tempdir().unwrap();
    let line = |items: &str| {
        format!(
            r#"{{"time":"2026-01-01T00:00:00.000Z","source":"tencent","command":"Group.CallbackBeforeInviteJoinGroup","decision":"allow","items":{items},"body":{{"Operator_Account":"o","DestinationMembers":[{{"Member_Account":"a"}},{{"Member_Account":"b"}}]}}}}"#
        )
    };
    let text = [
        line(r#"[{"account":"a","decision":"allow"}]"#),
        line(r#"[{"account":"a","decision":"allow"},{"account":"c","decision":"allow"}]"#),
        line(r#"[{"account":"a","decision":"allow"},{"account":"b","decision":"maybe"}]"#),
        line(r#"[{"account":"a","decision":"allow"},{"account":"b","decision":"allow"}]"#),
    ]
    .join("\n");
    std::fs::write(data.path().join("records-0000000000001.jsonl"), text + "\n").unwrap();
    let candidate = policies(&[]);
    let report = report(data.path(), candidate.path(), &[]);
    assert_eq!((&report["records"]["malformed"], &report["records"]["replayed"]), (&3.into(), &1.into()));
    assert_eq!((&report["records"]["items"], &report["changes"]["unchanged"]), (&2.into(), &2.into()));
    let reasons: Vec<&str> =
        report["malformed"].as_array().unwrap().iter().map(|m| m["reason"].as_str().unwrap()).collect();
    assert_eq!(
        reasons,
        [
            "1 item(s) recorded for 2 in the body's `DestinationMembers`",
            "the body's item `b` is recorded as Some(\"c\")",
            "decision Some(\"maybe\") is not allow, deny or discard"
        ]
    );
}
