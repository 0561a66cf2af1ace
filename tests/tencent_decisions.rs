#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests: a failure should panic")]
//! Tencent Cloud Chat before-callbacks decided by the policies, over real HTTP with signed
//! requests: allow, refuse with the custom code, discard, per-item answers (`ResultItem`,
//! `RefusedMembers_Account`), a cap counting items, dry run (rule and server), a bad Sign,
//! the default, a rule with a code per family, records, metrics and `callgate test`; the
//! items of a large invitation decided concurrently against a cap in Redis.

mod common;

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use common::*;

const POLICY: &str = r#"
lists:
  banned: [u_banned]
rules:
  - id: c2c-muted
    on: C2C.CallbackBeforeSendMsg
    when:
      From_Account: { in_list: banned }
    decision: deny
    error: { code: 120001, message: "you are muted" }
  - id: spam-dropped
    on: "*.CallbackBeforeSendMsg"
    when:
      From_Account: { regex: '^spam_' }
    decision: discard
  - id: watch
    on: C2C.CallbackBeforeSendMsg
    when:
      To_Account: { equals: u_watch }
    decision: deny
    error: { code: 120002, message: "watched" }
    mode: dry_run
  - id: group-muted
    on: Group.CallbackBeforeSendMsg
    when:
      From_Account: { in_list: banned }
    decision: deny
    error: { code: 10101, message: "muted in groups" }
  - id: no-guest-groups
    on: [Group.CallbackBeforeCreateGroup, Group.CallbackBeforeCreateTopic]
    when:
      Operator_Account: { regex: '^guest_' }
    decision: deny
    error: { code: 10102, message: "guests cannot create groups" }
  - id: staff-only
    on: Group.CallbackBeforeApplyJoinGroup
    when:
      GroupId: { equals: "@TGS#staff" }
      Requestor_Account: { regex: '^guest_' }
    decision: deny
    error: { code: 10103, message: "staff only" }
  - id: no-banned-members
    on: Group.CallbackBeforeInviteJoinGroup
    when:
      item.Member_Account: { in_list: banned }
    decision: deny
    error: { code: 10104, message: "banned users cannot join" }
  - id: vip-private
    on: "Sns.CallbackPrevFriend*"
    when:
      item.To_Account: { regex: '^vip_' }
    decision: deny
    error: { code: 38001, message: "vip accounts take no requests" }
  - id: both-systems
    on: [callbackBeforeAddFriendCommand, Sns.CallbackPrevFriendAdd]
    when:
      any:
        - fromUserID: { equals: u_both }
        - From_Account: { equals: u_both }
    decision: deny
    error:
      code: { openim: 20010, sns: 38010 }
      message: "no friends for u_both"
  - id: friend-rate
    on: Sns.CallbackPrevFriendAdd
    rate_cap: { key: [From_Account], max: 3, per: 1m }
    decision: deny
    error: { code: 38002, message: "too many friend requests" }
"#;

fn answer(code: i32, info: &str) -> String {
    json!({"ActionStatus": "OK", "ErrorCode": code, "ErrorInfo": info}).to_string()
}

fn c2c(from: &str, to: &str) -> String {
    let mut body: Value = serde_json::from_str(&sample("tencent/C2C.CallbackBeforeSendMsg.json")).unwrap();
    body["From_Account"] = from.into();
    body["To_Account"] = to.into();
    body.to_string()
}

fn friend_add(from: &str, to: &[&str]) -> String {
    let mut body: Value = serde_json::from_str(&sample("tencent/Sns.CallbackPrevFriendAdd.json")).unwrap();
    body["From_Account"] = from.into();
    body["Requester_Account"] = from.into();
    let item = body["FriendItem"][0].clone();
    body["FriendItem"] = to
        .iter()
        .map(|id| {
            let mut item = item.clone();
            item["To_Account"] = (*id).into();
            item
        })
        .collect();
    body.to_string()
}

fn invite(members: &[&str]) -> String {
    let members: Vec<Value> = members.iter().map(|m| json!({"Member_Account": m})).collect();
    json!({"CallbackCommand": "Group.CallbackBeforeInviteJoinGroup", "GroupId": "@TGS#1", "Type": "Public",
        "Operator_Account": "u_1", "DestinationMembers": members, "EventTime": 1_749_540_000_123u64})
    .to_string()
}

fn group_body(command: &str, fields: Value) -> String {
    let mut body = json!({"CallbackCommand": command, "EventTime": "1749540000123"});
    body.as_object_mut().unwrap().extend(fields.as_object().unwrap().clone());
    body.to_string()
}

fn start(dir: &PolicyDir, extra: &[&str]) -> Server {
    let mut args = vec!["--tencent-app-id", TENCENT_APP, "--tencent-token", TENCENT_TOKEN];
    args.extend_from_slice(extra);
    Server::start(dir.path(), &args)
}

/// The records of `server` passing `filter`, once there are `count`: decisions are answered
/// before their records are written.
async fn records_when(server: &Server, filter: &[&str], count: usize) -> Vec<Value> {
    wait_until(
        std::time::Duration::from_secs(10),
        async || events(server.data_dir(), filter).len() >= count,
        || format!("fewer than {count} records for {filter:?}"),
    )
    .await;
    events(server.data_dir(), filter)
}

/// POSTs a signed `command` callback; returns status and answer.
async fn send(server: &Server, command: &str, body: &str) -> (u16, String) {
    server.post_tencent(&signed_query(command, unix_now()), body).await
}

#[tokio::test]
async fn whole_callbacks_are_allowed_refused_and_discarded_with_the_custom_codes() {
    let dir = PolicyDir::with("policy.yaml", POLICY);
    let server = start(&dir, &[]);
    let c2c_cmd = "C2C.CallbackBeforeSendMsg";
    let ok = (200, TENCENT_OK.to_string());
    assert_eq!(send(&server, c2c_cmd, &c2c("u_1", "u_2")).await, ok);
    assert_eq!(send(&server, c2c_cmd, &c2c("u_banned", "u_2")).await, (200, answer(120001, "you are muted")));
    assert_eq!(send(&server, c2c_cmd, &c2c("spam_9", "u_2")).await, (200, answer(2, "")));

    let group_cmd = "Group.CallbackBeforeSendMsg";
    let group_msg =
        |from: &str| group_body(group_cmd, json!({"GroupId": "@TGS#1", "Type": "Public", "From_Account": from}));
    assert_eq!(send(&server, group_cmd, &group_msg("u_1")).await, ok);
    assert_eq!(send(&server, group_cmd, &group_msg("u_banned")).await, (200, answer(10101, "muted in groups")));
    assert_eq!(send(&server, group_cmd, &group_msg("spam_1")).await, (200, answer(2, "")));

    for command in ["Group.CallbackBeforeCreateGroup", "Group.CallbackBeforeCreateTopic"] {
        let create = |who: &str| group_body(command, json!({"Operator_Account": who, "Type": "Public", "Name": "n"}));
        assert_eq!(send(&server, command, &create("u_1")).await, ok, "{command}");
        assert_eq!(
            send(&server, command, &create("guest_1")).await,
            (200, answer(10102, "guests cannot create groups")),
            "{command}"
        );
    }

    let apply = "Group.CallbackBeforeApplyJoinGroup";
    let join = |group: &str, who: &str| group_body(apply, json!({"GroupId": group, "Requestor_Account": who}));
    assert_eq!(send(&server, apply, &join("@TGS#staff", "u_1")).await, ok);
    assert_eq!(send(&server, apply, &join("@TGS#open", "guest_1")).await, ok);
    assert_eq!(send(&server, apply, &join("@TGS#staff", "guest_1")).await, (200, answer(10103, "staff only")));

    // Each decision is counted under its command, rule and outcome.
    let text = server.client.get(format!("{}/metrics", server.admin)).send().await.unwrap().text().await.unwrap();
    for (rule, outcome, count) in [("c2c-muted", "deny", 1), ("spam-dropped", "discard", 1), ("(default)", "allow", 1)]
    {
        let sample = format!(
            "callgate_decisions_total{{command=\"C2C.CallbackBeforeSendMsg\",rule=\"{rule}\",outcome=\"{outcome}\"}} {count}"
        );
        assert!(text.lines().any(|l| l == sample), "no `{sample}` in\n{text}");
    }
}

#[tokio::test]
async fn items_are_decided_one_by_one() {
    let dir = PolicyDir::with("policy.yaml", POLICY);
    let server = start(&dir, &[]);
    let add = "Sns.CallbackPrevFriendAdd";
    let (status, body) = send(&server, add, &friend_add("u_1", &["u_2", "vip_7"])).await;
    assert_eq!(status, 200);
    let want = json!({"ActionStatus": "OK", "ErrorCode": 0, "ErrorInfo": "", "ResultItem": [
        {"To_Account": "u_2", "ResultCode": 0, "ResultInfo": ""},
        {"To_Account": "vip_7", "ResultCode": 38001, "ResultInfo": "vip accounts take no requests"},
    ]});
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap(), want);

    let response = "Sns.CallbackPrevFriendResponse";
    let mut body: Value = serde_json::from_str(&sample("tencent/Sns.CallbackPrevFriendResponse.json")).unwrap();
    body["ResponseFriendItem"][1]["To_Account"] = "vip_1".into();
    let (status, answer_text) = send(&server, response, &body.to_string()).await;
    assert_eq!(status, 200);
    let results = &serde_json::from_str::<Value>(&answer_text).unwrap()["ResultItem"];
    assert_eq!(results[0], json!({"To_Account": "u_1001", "ResultCode": 0, "ResultInfo": ""}));
    assert_eq!(results[1]["ResultCode"], 38001);

    // Group invitations: the refused members alone, or the whole request when all are.
    let invite_cmd = "Group.CallbackBeforeInviteJoinGroup";
    let (status, some) = send(&server, invite_cmd, &invite(&["u_1", "u_banned", "u_3"])).await;
    assert_eq!(status, 200);
    let want = json!({"ActionStatus": "OK", "ErrorCode": 0, "ErrorInfo": "", "RefusedMembers_Account": ["u_banned"]});
    assert_eq!(serde_json::from_str::<Value>(&some).unwrap(), want);
    assert_eq!(
        send(&server, invite_cmd, &invite(&["u_banned"])).await,
        (200, answer(10104, "banned users cannot join"))
    );
    assert_eq!(
        serde_json::from_str::<Value>(&send(&server, invite_cmd, &invite(&["u_1"])).await.1).unwrap(),
        json!({"ActionStatus": "OK", "ErrorCode": 0, "ErrorInfo": "", "RefusedMembers_Account": []})
    );

    // A rule that reaches OpenIM and Tencent answers each with its own code.
    let (_, both) = send(&server, add, &friend_add("u_both", &["u_9"])).await;
    assert_eq!(serde_json::from_str::<Value>(&both).unwrap()["ResultItem"][0]["ResultCode"], 38010);
    let openim = r#"{"callbackCommand":"callbackBeforeAddFriendCommand","fromUserID":"u_both","toUserID":"u_9"}"#;
    assert_eq!(
        server.post("/openim/callbackBeforeAddFriendCommand", openim).await,
        (200, refusal(20010, "no friends for u_both", ""))
    );

    // The record of a per-item callback holds each item's decision.
    let records = records_when(&server, &["--command", add], 2).await;
    let first = records.iter().find(|r| r["body"]["From_Account"] == "u_1").unwrap();
    assert_eq!(first["decision"], "partial");
    assert_eq!(first["SdkAppid"].as_str().or(first["sdk_app_id"].as_str()), Some(TENCENT_APP));
    let allowed = &first["items"][0];
    assert_eq!(
        (&allowed["account"], &allowed["decision"], &allowed["rule"]),
        (&json!("u_2"), &json!("allow"), &Value::Null)
    );
    assert_eq!(allowed["caps"], json!([{"rule": "friend-rate", "count": 0, "max": 3, "exceeded": false}]));
    assert_eq!(
        first["items"][1],
        json!({"account": "vip_7", "decision": "deny", "rule": "vip-private", "error_code": 38001})
    );
}

#[tokio::test]
async fn a_cap_counts_items_and_refuses_past_its_max() {
    let dir = PolicyDir::with("policy.yaml", POLICY);
    let server = start(&dir, &[]);
    let add = "Sns.CallbackPrevFriendAdd";
    let codes = |answer: &str| -> Vec<i64> {
        let answer: Value = serde_json::from_str(answer).unwrap();
        answer["ResultItem"].as_array().unwrap().iter().map(|i| i["ResultCode"].as_i64().unwrap()).collect()
    };
    // Three items allowed (the cap is 3 a minute), the fourth and fifth refused.
    assert_eq!(codes(&send(&server, add, &friend_add("u_cap", &["a_1", "a_2"])).await.1), [0, 0]);
    assert_eq!(codes(&send(&server, add, &friend_add("u_cap", &["a_3", "a_4", "a_5"])).await.1), [0, 38002, 38002]);
    // Another sender has a cap of its own.
    assert_eq!(codes(&send(&server, add, &friend_add("u_other", &["a_1"])).await.1), [0]);
}

/// The items of one callback are decided concurrently: a 100-member invitation checked
/// against a cap in Redis, behind a proxy that adds 5 ms each way, takes a few round trips
/// of 10 ms, not one per member; and the cap, checked atomically per item, allows exactly its
/// max of the 100.
#[tokio::test]
async fn a_large_invitation_is_decided_in_a_few_round_trips_and_its_cap_stays_exact() {
    const ONE_WAY: Duration = Duration::from_millis(5);
    let redis = RedisServer::start();
    let proxy = LatencyProxy::start(redis.port, ONE_WAY).await;
    let dir = PolicyDir::with(
        "policy.yaml",
        "rules:\n  - id: invite-rate\n    on: Group.CallbackBeforeInviteJoinGroup\n    rate_cap: { key: [Operator_Account], max: 60, per: 1m }\n    decision: deny\n    error: { code: 10105, message: too many invitations }\n",
    );
    let server = start(&dir, &["--redis-url", &proxy.url(), "--redis-timeout", "2s"]);
    server.wait_for_log("redis is reachable", Duration::from_secs(10)).await;
    let invite_cmd = "Group.CallbackBeforeInviteJoinGroup";
    // Loads the cap's script into Redis, so that the timed invitation does not.
    send(&server, invite_cmd, &invite(&["m_warm"])).await;

    let members: Vec<String> = (0..100).map(|i| format!("m_{i}")).collect();
    let members: Vec<&str> = members.iter().map(String::as_str).collect();
    let started = Instant::now();
    let (status, answer) = send(&server, invite_cmd, &invite(&members)).await;
    let took = started.elapsed();
    assert_eq!(status, 200, "{answer}");
    let refused = serde_json::from_str::<Value>(&answer).unwrap()["RefusedMembers_Account"].as_array().unwrap().len();
    assert_eq!(refused, 100 - 59, "59 of the cap's 60 were left after the warm-up: {answer}");
    let key = "callgate:cap:invite-rate\u{1f}60000\u{1f}Operator_Account\u{1f}{u_1}";
    assert_eq!(redis.command(&["ZCARD", key]), ":60", "allowed items are counted, refused ones not");
    let round_trip = 2 * ONE_WAY;
    eprintln!("a 100-member invitation with a cap in redis, round trip {round_trip:?}: {took:?}");
    assert!(
        took < 30 * round_trip,
        "100 items took {took:?}, {} round trips",
        took.as_millis() / round_trip.as_millis()
    );
}

#[tokio::test]
async fn dry_run_rules_and_a_dry_run_server_refuse_nothing_and_record_what_they_would_do() {
    let dir = PolicyDir::with("policy.yaml", POLICY);
    let server = start(&dir, &[]);
    let c2c_cmd = "C2C.CallbackBeforeSendMsg";
    assert_eq!(send(&server, c2c_cmd, &c2c("u_1", "u_watch")).await, (200, TENCENT_OK.to_string()));
    let records = records_when(&server, &["--command", c2c_cmd], 1).await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["decision"], "allow");
    assert_eq!(records[0]["dry_run"], json!([{"rule": "watch", "would": "deny", "error_code": 120002}]));

    let dry = start(&dir, &["--dry-run"]);
    assert_eq!(send(&dry, c2c_cmd, &c2c("u_banned", "u_2")).await, (200, TENCENT_OK.to_string()));
    assert_eq!(send(&dry, c2c_cmd, &c2c("spam_1", "u_2")).await, (200, TENCENT_OK.to_string()));
    let add = "Sns.CallbackPrevFriendAdd";
    let (_, items) = send(&dry, add, &friend_add("u_1", &["vip_1"])).await;
    assert_eq!(serde_json::from_str::<Value>(&items).unwrap()["ResultItem"][0]["ResultCode"], 0);
    let records = records_when(&dry, &[], 3).await;
    let would: Vec<(Value, Value, Value)> = records
        .iter()
        .filter(|r| r["command"] == c2c_cmd)
        .map(|r| (r["decision"].clone(), r["would"]["decision"].clone(), r["would"]["error_code"].clone()))
        .collect();
    assert_eq!(
        would,
        [(json!("allow"), json!("deny"), json!(120001)), (json!("allow"), json!("discard"), Value::Null)]
    );
    let item = &records.iter().find(|r| r["command"] == add).unwrap()["items"][0];
    assert_eq!(item["decision"], "allow");
    assert_eq!(item["would"], json!({"decision": "deny", "rule": "vip-private", "error_code": 38001}));
}

#[tokio::test]
async fn a_callback_callgate_cannot_take_is_never_refused_because_of_callgate() {
    let dir = PolicyDir::with("policy.yaml", POLICY);
    let server = start(&dir, &[]);
    let c2c_cmd = "C2C.CallbackBeforeSendMsg";
    let bad_sign = signed_query(c2c_cmd, unix_now()).replace("&Sign=", "&Sign=0");
    for (query, body, status) in [
        (bad_sign, c2c("u_banned", "u_2"), 401),
        (signed_query(c2c_cmd, unix_now()), "not json".to_string(), 400),
        (signed_query("Sns.CallbackPrevFriendAdd", unix_now()), r#"{"FriendItem":7}"#.to_string(), 400),
    ] {
        let (got_status, answer) = server.post_tencent(&query, &body).await;
        let answer: Value = serde_json::from_str(&answer).unwrap();
        assert_eq!((got_status, &answer["ActionStatus"], &answer["ErrorCode"]), (status, &json!("FAIL"), &json!(0)));
    }
    // An after-callback that cannot be taken is not acknowledged (ErrorCode 1), as before.
    let after = signed_query("Sns.CallbackBlackListDelete", unix_now()).replace("&Sign=", "&Sign=0");
    let (status, answer) = server.post_tencent(&after, "{}").await;
    assert_eq!((status, serde_json::from_str::<Value>(&answer).unwrap()["ErrorCode"].clone()), (401, json!(1)));
}

#[tokio::test]
async fn the_default_decides_tencent_only_where_it_states_a_code_for_it() {
    let dir = PolicyDir::with(
        "policy.yaml",
        "default: deny\nerror: { code: { openim: 20099, c2c: 120099 }, message: \"closed\" }\n",
    );
    let server = start(&dir, &[]);
    assert_eq!(send(&server, "C2C.CallbackBeforeSendMsg", &c2c("u_1", "u_2")).await, (200, answer(120099, "closed")));
    let group = group_body("Group.CallbackBeforeApplyJoinGroup", json!({"GroupId": "g", "Requestor_Account": "u"}));
    assert_eq!(send(&server, "Group.CallbackBeforeApplyJoinGroup", &group).await, (200, TENCENT_OK.to_string()));
    assert_eq!(server.post("/openim/callbackBeforeAddFriendCommand", "{}").await, (200, refusal(20099, "closed", "")));
}

#[test]
fn tencent_cases_run_in_callgate_test() {
    let dir = PolicyDir::with("policy.yaml", POLICY);
    dir.write(
        "tests/tencent.yaml",
        r#"
- name: muted users cannot send
  callback: { CallbackCommand: C2C.CallbackBeforeSendMsg, From_Account: u_banned, To_Account: u_2 }
  expect: { decision: deny, rule: c2c-muted, error_code: 120001 }
- name: spam is dropped
  callback: { CallbackCommand: Group.CallbackBeforeSendMsg, From_Account: spam_1, GroupId: g }
  expect: { decision: discard, rule: spam-dropped }
- name: one friend item, as the rules see it
  callback: { CallbackCommand: Sns.CallbackPrevFriendAdd, From_Account: u_both, item: { To_Account: u_2 } }
  expect: { decision: deny, rule: both-systems, error_code: 38010 }
"#,
    );
    let (code, stdout) = callgate_stdout(&["test", "--policies", dir.path().to_str().unwrap()]);
    assert_eq!((code, stdout.as_str()), (0, "3 passed, 0 failed\n"));
}

#[tokio::test]
async fn explain_decides_a_tencent_callback_with_its_code() {
    let dir = PolicyDir::with("policy.yaml", POLICY);
    let server = start(&dir, &[]);
    let explain = |body: String| {
        let request = server.client.post(format!("{}/v1/explain", server.admin)).body(body);
        async move { request.send().await.unwrap().json::<Value>().await.unwrap() }
    };
    let muted = explain(c2c("u_banned", "u_2")).await;
    assert_eq!((&muted["decision"], &muted["rule"]), (&json!("deny"), &json!("c2c-muted")));
    assert_eq!(muted["error"]["code"], 120001);
    let item = json!({"CallbackCommand": "Sns.CallbackPrevFriendAdd", "From_Account": "u_both", "item": {"To_Account": "u_2"}});
    let both = explain(item.to_string()).await;
    assert_eq!((&both["rule"], &both["error"]["code"]), (&json!("both-systems"), &json!(38010)));
}

#[test]
fn a_misspelt_item_field_is_warned_of() {
    let dir = PolicyDir::with(
        "policy.yaml",
        "rules:\n  - id: vip\n    on: Sns.CallbackPrevFriendAdd\n    when:\n      item.To_Acount: { equals: x }\n    decision: deny\n    error: { code: 38001, message: m }\n",
    );
    let (code, stdout) = callgate_stdout(&["validate", "--policies", dir.path().to_str().unwrap()]);
    assert_eq!(code, 0, "{stdout}");
    assert!(
        stdout.contains("policy.yaml:5: warning: rule `vip`: field `item.To_Acount` is not in the body of `Sns.CallbackPrevFriendAdd`, so the condition always finds it missing; did you mean `item.To_Account`?"),
        "{stdout}"
    );
}
