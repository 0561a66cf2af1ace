#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests: a failure should panic")]
//! `callgate replay` over records written by a real `callgate serve`: the server answers a
//! known sequence of callbacks, is stopped (so its records are on disk), and candidate
//! policy sets are replayed against its records.

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
    assert!(text.contains("replayed 6 OpenIM callback(s)"), "{text}");
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
    assert!(text.contains("replayed 12 OpenIM callback(s)"), "{text}");
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
