#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests: a failure should panic")]
//! Tencent callbacks and records over real HTTP: the Sign check, every refusal, durable
//! acknowledgements that survive SIGKILL, OpenIM decisions recorded, rotation, and queries
//! through `callgate events` and `GET /v1/events`.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use common::*;
use common::{TENCENT_APP as APP, TENCENT_OK as OK, TENCENT_TOKEN as TOKEN, unix_now as now};

fn fail(info: &str) -> String {
    serde_json::json!({"ActionStatus":"FAIL","ErrorCode":1,"ErrorInfo":info}).to_string()
}

fn unblock_body(from: &str, to: &str) -> String {
    format!(
        r#"{{"CallbackCommand":"Sns.CallbackBlackListDelete","PairList":[{{"From_Account":"{from}","To_Account":"{to}"}}]}}"#
    )
}

fn secured(policies: &std::path::Path) -> Server {
    Server::start(policies, &["--tencent-app-id", APP, "--tencent-token", TOKEN])
}

#[tokio::test]
async fn the_documented_test_vector_is_accepted_over_http_within_its_window() {
    // The documented vector (token xxxxyyyy, RequestTime 1669872112) is years old, so a
    // server is started with a window that reaches back to it.
    let dir = PolicyDir::new();
    let skew = format!("{}s", now() - 1_669_872_112 + 3_600);
    let server =
        Server::start(dir.path(), &["--tencent-app-id", APP, "--tencent-token", TOKEN, "--tencent-max-skew", &skew]);
    let query = format!(
        "SdkAppid={APP}&CallbackCommand=Sns.CallbackBlackListDelete&contenttype=json&ClientIP=1.2.3.4&OptPlatform=RESTAPI&RequestTime=1669872112&Sign=17773bc39a671d7b9aa835458704d2a6db81360a5940292b587d6d760d484061"
    );
    assert_eq!(server.post_tencent(&query, &unblock_body("a", "b")).await, (200, OK.to_string()));
    let wrong = query.replace("Sign=1", "Sign=0");
    assert_eq!(
        server.post_tencent(&wrong, &unblock_body("a", "b")).await,
        (401, fail("Sign does not match sha256(token + RequestTime)"))
    );
}

#[tokio::test]
async fn a_signed_fresh_callback_is_acknowledged_and_found_by_events() {
    let dir = PolicyDir::new();
    let mut server = secured(dir.path());
    let body = wire(&sample("tencent/Sns.CallbackBlackListDelete.json"));
    let (status, answer) = server.post_tencent(&signed_query("Sns.CallbackBlackListDelete", now()), &body).await;
    assert_eq!((status, answer.as_str()), (200, OK));
    // Also the other spelling of the app ID parameter.
    let other = signed_query("Sns.CallbackBlackListDelete", now()).replace("SdkAppid=", "SdkAppId=");
    assert_eq!(server.post_tencent(&other, &unblock_body("u_2001", "u_2002")).await.0, 200);

    // Durable before the ack: readable at once, while the server still runs.
    let found = events(server.data_dir(), &["--user", "u_1006", "--source", "tencent"]);
    assert_eq!(found.len(), 1, "{found:?}");
    let r = &found[0];
    assert_eq!(r["command"], "Sns.CallbackBlackListDelete");
    assert_eq!(r["decision"], "ack");
    assert_eq!(r["sdk_app_id"], APP);
    assert_eq!(r["client_ip"], "203.0.113.7");
    assert_eq!(r["opt_platform"], "iOS");
    assert_eq!(r["body"]["PairList"][1]["To_Account"], "u_1006");
    assert!(r["time"].as_str().unwrap().ends_with('Z'));

    assert_eq!(events(server.data_dir(), &["--user", "u_2002"]).len(), 1);
    assert_eq!(events(server.data_dir(), &["--command", "Sns.CallbackBlackListDelete"]).len(), 2);
    assert_eq!(events(server.data_dir(), &["--since", "1h", "--source", "tencent", "--limit", "1"]).len(), 1);
    assert_eq!(events(server.data_dir(), &["--user", "nobody"]).len(), 0);

    let via_admin = server.admin_get("/v1/events?user=u_1006").await;
    assert_eq!(via_admin["events"].as_array().unwrap().len(), 1);
    assert_eq!(server.terminate(), Some(0));
}

#[tokio::test]
async fn every_bad_tencent_request_is_refused_and_not_recorded() {
    let dir = PolicyDir::new();
    let server =
        Server::start(dir.path(), &["--tencent-app-id", APP, "--tencent-token", TOKEN, "--max-body-bytes", "2048"]);
    let good = signed_query("Sns.CallbackBlackListDelete", now());
    let body = unblock_body("u_1", "u_2");
    let t = now().to_string();
    let cases: Vec<(String, String, u16, String)> = vec![
        (good.replace(&format!("SdkAppid={APP}&"), ""), body.clone(), 403, fail("missing SdkAppid in the query")),
        (good.replace(APP, "1400000999"), body.clone(), 403, fail("SdkAppid `1400000999` is not this server's app")),
        (
            good[..good.find("&Sign=").unwrap()].to_string(),
            body.clone(),
            401,
            fail("missing Sign in the query; callback authentication is on"),
        ),
        (
            good.replace(&format!("RequestTime={t}&"), ""),
            body.clone(),
            401,
            fail("missing RequestTime in the query; callback authentication is on"),
        ),
        (
            good.replace(&format!("RequestTime={t}"), "RequestTime=yesterday"),
            body.clone(),
            401,
            fail("RequestTime `yesterday` is not a Unix time in seconds"),
        ),
        (
            signed_query("Sns.CallbackBlackListDelete", now() - 120),
            body.clone(),
            401,
            fail("RequestTime is 120 s from now; at most 60 s is accepted"),
        ),
        (
            signed_query("Sns.CallbackBlackListDelete", now()).replace("&Sign=", "&Sign=0"),
            body.clone(),
            401,
            fail("Sign does not match sha256(token + RequestTime)"),
        ),
        (
            signed_query("Sns.CallbackBlackListAdd", now()),
            body.clone(),
            400,
            fail(
                "callback command in the query is `Sns.CallbackBlackListAdd` but the body's `CallbackCommand` is `Sns.CallbackBlackListDelete`",
            ),
        ),
        (good.clone(), "not json".into(), 400, fail("body is not valid JSON: expected ident at line 1 column 2")),
        (good.clone(), "[1,2]".into(), 400, fail("body must be a JSON object, got an array")),
        (
            good.clone(),
            format!("{{\"pad\":\"{}\"}}", "x".repeat(4096)),
            413,
            fail("body is larger than the limit of 2048 bytes"),
        ),
        (
            good.clone(),
            r#"{"CallbackCommand":"Sns.CallbackBlackListDelete","PairList":[{"From_Account":"a"}]}"#.into(),
            400,
            fail(
                "Sns.CallbackBlackListDelete: PairList must be a list of {\"From_Account\":…,\"To_Account\":…}: missing field `To_Account`",
            ),
        ),
    ];
    for (query, body, status, answer) in &cases {
        let (got_status, got) = server.post_tencent(query, body).await;
        // The clock may tick between signing and checking: 120 s then reads as 121 s.
        let got = got.replace("RequestTime is 121 s from now", "RequestTime is 120 s from now");
        assert_eq!((got_status, got), (*status, answer.clone()), "query {query}");
    }
    assert!(events(server.data_dir(), &[]).is_empty(), "refused callbacks must not be recorded");
    assert_eq!(server.logs().matches("Tencent callback refused").count(), cases.len());
    // Still serving.
    assert_eq!(server.post_tencent(&good, &body).await.0, 200);
}

#[tokio::test]
async fn without_an_app_id_any_is_accepted_with_a_warning() {
    let dir = PolicyDir::new();
    let server = Server::start(dir.path(), &[]);
    assert!(server.logs().contains("no Tencent app ID configured"));
    let query = "SdkAppid=42&CallbackCommand=Group.CallbackAfterNewMemberJoin&contenttype=json&ClientIP=1.1.1.1&OptPlatform=Web";
    let body = wire(&sample("tencent/Group.CallbackAfterNewMemberJoin.json"));
    assert_eq!(server.post_tencent(query, &body).await, (200, OK.to_string()));
    for name in ["C2C.CallbackAfterSendMsg", "Sns.CallbackFriendAdd", "State.StateChange", "Sns.CallbackBlackListAdd"] {
        let query = format!("SdkAppid=42&CallbackCommand={name}&contenttype=json&ClientIP=1.1.1.1&OptPlatform=Android");
        assert_eq!(server.post_tencent(&query, &wire(&sample(&format!("tencent/{name}.json")))).await.0, 200, "{name}");
    }
    assert_eq!(events(server.data_dir(), &["--source", "tencent"]).len(), 5);
}

#[tokio::test]
async fn openim_decisions_are_recorded_with_rule_dry_run_and_version() {
    let dir = PolicyDir::with(
        "10.yaml",
        "rules:\n  - id: trial\n    when:\n      blackUserID: { regex: '^guest_' }\n    decision: deny\n    error: { code: 150, message: trial }\n    mode: dry_run\n  - id: no-sys\n    when:\n      blackUserID: { regex: '^sys_' }\n    decision: deny\n    error: { code: 151, message: no }\n",
    );
    let mut server = Server::start(dir.path(), &[]);
    let post = |user: &'static str| {
        let body = format!(
            r#"{{"callbackCommand":"callbackBeforeAddBlackCommand","ownerUserID":"u_1","blackUserID":"{user}"}}"#
        );
        let s = &server;
        async move { s.post("/openim/callbackBeforeAddBlackCommand", &body).await }
    };
    post("sys_1").await;
    post("guest_1").await;
    post("u_2").await;
    // Records of OpenIM decisions are not waited for; a clean stop flushes them.
    assert_eq!(server.terminate(), Some(0));
    let all = events(server.data_dir(), &["--source", "openim"]);
    assert_eq!(all.len(), 3, "{all:?}");
    assert_eq!(all[0]["decision"], "deny");
    assert_eq!(all[0]["rule"], "no-sys");
    assert_eq!(all[0]["error_code"], 151);
    assert_eq!(all[0]["operation_id"], "op-test");
    assert_eq!(all[0]["policy_version"], server.version.as_str());
    assert!(all[0]["latency_us"].as_u64().is_some());
    assert_eq!(all[1]["decision"], "allow");
    assert_eq!(all[1]["dry_run"][0]["rule"], "trial");
    assert_eq!(all[1]["dry_run"][0]["would"], "deny");
    assert_eq!(events(server.data_dir(), &["--decision", "deny"]).len(), 1);
    assert_eq!(events(server.data_dir(), &["--decision", "would_deny"]).len(), 1);
    assert_eq!(events(server.data_dir(), &["--user", "sys_1"]).len(), 1);
}

#[tokio::test]
async fn server_dry_run_records_what_enforcement_would_have_answered() {
    let dir = PolicyDir::with(
        "10.yaml",
        "rules:\n  - id: no-sys\n    when:\n      blackUserID: { regex: '^sys_' }\n    decision: deny\n    error: { code: 151, message: no }\n",
    );
    let mut server = Server::start(dir.path(), &["--dry-run"]);
    let body = r#"{"callbackCommand":"callbackBeforeAddBlackCommand","ownerUserID":"u_1","blackUserID":"sys_1"}"#;
    assert_eq!(server.post("/openim/callbackBeforeAddBlackCommand", body).await, (200, ALLOW.to_string()));
    assert_eq!(server.terminate(), Some(0));
    let r = &events(server.data_dir(), &[])[0];
    assert_eq!(r["decision"], "allow");
    assert_eq!(r["would"]["decision"], "deny");
    assert_eq!(r["would"]["rule"], "no-sys");
    assert_eq!(r["would"]["error_code"], 151);
}

#[tokio::test]
async fn record_files_rotate_by_size_and_lose_nothing() {
    let dir = PolicyDir::new();
    let mut server = Server::start(dir.path(), &["--record-max-bytes", "4096"]);
    for i in 0..100 {
        let body = format!(
            r#"{{"callbackCommand":"callbackAfterRemoveBlackCommand","ownerUserID":"u_{i}","blackUserID":"u_x"}}"#
        );
        assert_eq!(server.post("/openim/callbackAfterRemoveBlackCommand", &body).await.0, 200);
    }
    assert_eq!(server.terminate(), Some(0));
    let files: Vec<_> = std::fs::read_dir(server.data_dir()).unwrap().map(|e| e.unwrap().path()).collect();
    assert!(files.len() >= 5, "{files:?}");
    for f in &files {
        assert!(std::fs::metadata(f).unwrap().len() <= 4096, "{}", f.display());
    }
    let all = events(server.data_dir(), &[]);
    let owners: Vec<String> = all.iter().map(|r| r["body"]["ownerUserID"].as_str().unwrap().to_string()).collect();
    let expected: Vec<String> = (0..100).map(|i| format!("u_{i}")).collect();
    assert_eq!(owners, expected, "records in order, none lost");
}

/// `callgate events --follow` prints the matching records there are, then each new one as
/// it is written, across file rotation, until stopped.
#[tokio::test]
async fn events_follow_prints_new_records_as_they_are_written() {
    let dir = PolicyDir::new();
    let mut server = Server::start(dir.path(), &["--record-max-bytes", "4096"]);
    let unblock = |who: &str| {
        format!(r#"{{"callbackCommand":"callbackAfterRemoveBlackCommand","ownerUserID":"{who}","blackUserID":"u_x"}}"#)
    };
    server.post("/openim/callbackAfterRemoveBlackCommand", &unblock("u_0")).await;
    common::wait_until(
        std::time::Duration::from_secs(10),
        async || !events(server.data_dir(), &[]).is_empty(),
        || "the first record was not written".into(),
    )
    .await;
    /// Stops the follower however the test ends: it never stops by itself.
    struct Follower(std::process::Child);
    impl Drop for Follower {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut follower = Follower(
        std::process::Command::new(env!("CARGO_BIN_EXE_callgate"))
            .args(["events", "--follow", "--command", "callbackAfterRemoveBlackCommand", "--data-dir"])
            .arg(server.data_dir())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stdout = follower.0.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let other = r#"{"callbackCommand":"callbackBeforeAddBlackCommand","ownerUserID":"u_1","blackUserID":"u_x"}"#;
    for i in 1..=60 {
        server.post("/openim/callbackAfterRemoveBlackCommand", &unblock(&format!("u_{i}"))).await;
        server.post("/openim/callbackBeforeAddBlackCommand", other).await;
    }
    let mut owners = Vec::new();
    while owners.len() < 61 {
        let line =
            rx.recv_timeout(std::time::Duration::from_secs(10)).unwrap_or_else(|_| panic!("followed {owners:?}"));
        let record: serde_json::Value = serde_json::from_str(&line).unwrap();
        owners.push(record["body"]["ownerUserID"].as_str().unwrap().to_string());
    }
    drop(follower);
    let expected: Vec<String> = (0..=60).map(|i| format!("u_{i}")).collect();
    assert_eq!(owners, expected, "every matching record once, in order");
    let files = std::fs::read_dir(server.data_dir()).unwrap().count();
    assert!(files > 3, "the records rotated across {files} files");
    assert_eq!(server.terminate(), Some(0));
}

/// `--record-max-total-bytes`: the oldest files are deleted so that all files together,
/// the one being written counted as full, never pass the limit; the newest records stay.
/// `--record-max-age`: at start-up (and every few seconds), a file whose newest record is
/// older than the age is deleted.
#[tokio::test]
async fn old_record_files_are_deleted_by_total_size_and_by_age() {
    let dir = PolicyDir::new();
    let data = tempfile::tempdir().unwrap();
    let total = |dir: &std::path::Path| -> u64 {
        std::fs::read_dir(dir).unwrap().filter_map(|e| e.ok()?.metadata().ok()).map(|m| m.len()).sum()
    };
    let extra = ["--record-max-bytes", "4096", "--record-max-total-bytes", "12288"];
    let mut server = Server::start_with_data(dir.path(), data.path(), &extra);
    for i in 0..100 {
        let body = format!(
            r#"{{"callbackCommand":"callbackAfterRemoveBlackCommand","ownerUserID":"u_{i}","blackUserID":"u_x"}}"#
        );
        assert_eq!(server.post("/openim/callbackAfterRemoveBlackCommand", &body).await.0, 200);
        assert!(total(data.path()) <= 12288, "after {i}: {} bytes", total(data.path()));
    }
    server.wait_for_metric("callgate_records_pruned_files_total", 1.0, std::time::Duration::from_secs(10)).await;
    assert_eq!(server.terminate(), Some(0));
    assert!(total(data.path()) <= 12288, "{} bytes", total(data.path()));
    let owners: Vec<String> =
        events(data.path(), &[]).iter().map(|r| r["body"]["ownerUserID"].as_str().unwrap().to_string()).collect();
    let first: usize = owners[0].trim_start_matches("u_").parse().unwrap();
    assert!(first > 0, "the oldest records were deleted");
    let expected: Vec<String> = (first..100).map(|i| format!("u_{i}")).collect();
    assert_eq!(owners, expected, "the newest records kept, in order");

    // Two files from two minutes ago: the first's newest record is older than the second
    // file, 90 s old; the second's may be as new as the files written above.
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
    let line = |who: &str| {
        format!(
            "{{\"time\":\"2026-01-01T00:00:00.000Z\",\"source\":\"openim\",\"command\":\"c\",\"decision\":\"allow\",\"body\":{{\"ownerUserID\":\"{who}\"}}}}\n"
        )
    };
    for (ago, who) in [(120_000, "old_1"), (90_000, "old_2")] {
        std::fs::write(data.path().join(format!("records-{:013}.jsonl", now_ms - ago)), line(who)).unwrap();
    }
    let server = Server::start_with_data(dir.path(), data.path(), &["--record-max-age", "30s"]);
    let kept = |who: &str| !events(data.path(), &["--user", who]).is_empty();
    assert!(!kept("old_1") && kept("old_2") && kept("u_99"), "{}", server.logs());
    assert!(server.logs().contains("deleted a record file: older than --record-max-age"), "{}", server.logs());
}

/// Sends signed Tencent callbacks from many tasks, kills the server with SIGKILL while they
/// are in flight, restarts it on the same data directory, and checks that every callback
/// that was acknowledged is in the records, and that every record line parses.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_acknowledged_event_survives_sigkill() {
    let dir = PolicyDir::new();
    let data = tempfile::tempdir().unwrap();
    let extra = ["--tencent-app-id", APP, "--tencent-token", TOKEN];
    let mut server = Server::start_with_data(dir.path(), data.path(), &extra);
    let base = server.base.clone();
    let client = server.client.clone();
    let killed = Arc::new(AtomicBool::new(false));

    let mut senders = Vec::new();
    for task in 0..16 {
        let (base, client, killed) = (base.clone(), client.clone(), killed.clone());
        senders.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for n in 0..2_000 {
                if killed.load(Ordering::Relaxed) && n % 8 == 0 {
                    break;
                }
                let id = format!("t{task}_{n}");
                let url = format!("{base}/tencent?{}", signed_query("Sns.CallbackBlackListDelete", now()));
                let Ok(resp) = client.post(url).body(unblock_body(&id, "victim")).send().await else { break };
                let status = resp.status().as_u16();
                let Ok(text) = resp.text().await else { break };
                if status == 200 && text == OK {
                    acked.push(id);
                }
            }
            acked
        }));
    }
    // Kill once enough callbacks are acknowledged that the kill lands mid-stream.
    let started = std::time::Instant::now();
    loop {
        let on_disk: u64 = std::fs::read_dir(data.path()).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum();
        if on_disk > 200_000 || started.elapsed() > std::time::Duration::from_secs(20) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    server.kill();
    killed.store(true, Ordering::Relaxed);
    let mut acked = Vec::new();
    for s in senders {
        acked.extend(s.await.unwrap());
    }
    assert!(acked.len() > 500, "only {} acknowledged before the kill", acked.len());

    // Restart on the same records: a torn tail is repaired, and every line parses.
    let server = Server::start_with_data(dir.path(), data.path(), &extra);
    let recorded = events(server.data_dir(), &["--source", "tencent"]);
    let ids: std::collections::HashSet<String> =
        recorded.iter().map(|r| r["body"]["PairList"][0]["From_Account"].as_str().unwrap().to_string()).collect();
    let missing: Vec<&String> = acked.iter().filter(|id| !ids.contains(*id)).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged events missing, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    for file in std::fs::read_dir(data.path()).unwrap() {
        let path = file.unwrap().path();
        if path.extension().is_some_and(|e| e == "jsonl") {
            for line in std::fs::read_to_string(&path).unwrap().lines() {
                serde_json::from_str::<serde_json::Value>(line)
                    .unwrap_or_else(|e| panic!("{}: {e}: {line}", path.display()));
            }
        }
    }
    // Still accepting after the restart.
    assert_eq!(
        server.post_tencent(&signed_query("Sns.CallbackBlackListDelete", now()), &unblock_body("after", "x")).await.0,
        200
    );
}
