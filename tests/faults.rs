#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests: a failure should panic")]
//! Faults while serving: the record directory vanishes (so records cannot be written), the
//! policy directory is deleted, and a list file of 1,000,000 IDs.

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;

const DENY_SYS: &str = "rules:\n  - id: no-sys\n    when:\n      blackUserID: { regex: '^sys_' }\n    decision: deny\n    error: { code: 150, message: no }\n";

fn unblock(user: &str) -> String {
    format!(r#"{{"callbackCommand":"callbackAfterRemoveBlackCommand","ownerUserID":"u_1","blackUserID":"{user}"}}"#)
}

/// With the record directory gone, a Tencent callback is answered FAIL (it cannot be kept),
/// while OpenIM callbacks are still decided and the lost records are counted.
#[tokio::test]
async fn records_that_cannot_be_written_fail_tencent_and_are_counted_for_openim() {
    let dir = PolicyDir::with("10.yaml", DENY_SYS);
    let data = tempfile::tempdir().unwrap();
    let records = data.path().join("records");
    let server = Server::start_with_data(dir.path(), &records, &["--record-max-bytes", "4096"]);
    let query = "SdkAppid=1&CallbackCommand=Sns.CallbackFriendDelete&contenttype=json&ClientIP=1.1.1.1&OptPlatform=Web";
    let body = wire(&sample("tencent/Sns.CallbackFriendDelete.json"));
    assert_eq!(server.post_tencent(query, &body).await.0, 200);

    std::fs::remove_dir_all(&records).unwrap();
    // The open file still takes writes until it is full; then a new file cannot be made.
    let started = Instant::now();
    let failed = loop {
        let (status, answer) = server.post_tencent(query, &body).await;
        if status != 200 {
            break (status, answer);
        }
        assert!(started.elapsed() < Duration::from_secs(20), "Tencent callbacks still acknowledged");
    };
    assert_eq!(failed.0, 500);
    assert!(
        failed.1.starts_with(r#"{"ActionStatus":"FAIL","ErrorCode":1,"ErrorInfo":"cannot record the callback"#),
        "{}",
        failed.1
    );

    for _ in 0..20 {
        assert_eq!(
            server.post("/openim/callbackAfterRemoveBlackCommand", &unblock("sys_1")).await.1,
            refusal(150, "no", "")
        );
    }
    // OpenIM records are written behind the answer, so the losses are counted a moment later.
    server.wait_for_metric("callgate_records_failed_total", 20.0, Duration::from_secs(10)).await;
    assert!(server.logs().contains("records not written"));

    // The directory comes back: records are written again, by themselves.
    std::fs::create_dir_all(&records).unwrap();
    let started = Instant::now();
    while server.post_tencent(query, &body).await.0 != 200 {
        assert!(started.elapsed() < Duration::from_secs(20), "never recovered");
    }
}

/// The policy directory deleted while serving: the serving set stays, the failure shows in
/// status; once the directory is back, SIGHUP (or the admin reload) loads it.
#[tokio::test]
async fn a_deleted_policy_directory_leaves_the_serving_set_in_force() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("policies");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("10.yaml"), DENY_SYS).unwrap();
    let server = Server::start(&dir, &[]);
    let version = server.policy_version().await;

    std::fs::remove_dir_all(&dir).unwrap();
    let started = Instant::now();
    while server.admin_get("/v1/status").await["last_reload"]["ok"] != false {
        assert!(started.elapsed() < Duration::from_secs(10), "no failed reload seen: {}", server.logs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let status = server.admin_get("/v1/status").await;
    assert_eq!(status["policy_version"], version.as_str());
    assert!(status["last_reload"]["error"].as_str().unwrap().contains("cannot read the policy directory"), "{status}");
    assert_eq!(
        server.post("/openim/callbackAfterRemoveBlackCommand", &unblock("sys_1")).await.1,
        refusal(150, "no", "")
    );

    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("10.yaml"), DENY_SYS.replace("code: 150", "code: 151")).unwrap();
    server.signal("HUP");
    server.wait_for_new_version(&version, Duration::from_secs(10)).await;
    assert_eq!(
        server.post("/openim/callbackAfterRemoveBlackCommand", &unblock("sys_1")).await.1,
        refusal(151, "no", "")
    );
}

/// A list file of 1,000,000 IDs loads, decides, and reloads.
#[tokio::test]
async fn a_list_of_a_million_ids() {
    let dir = PolicyDir::with(
        "10.yaml",
        "lists:\n  banned: { file: lists/banned.txt }\nrules:\n  - id: banned\n    when:\n      blackUserID: { in_list: banned }\n    decision: deny\n    error: { code: 150, message: banned }\n",
    );
    let seed = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() % 1000;
    let ids: String = (0..1_000_000).map(|i| format!("u_{seed}_{i}\n")).collect();
    dir.write("lists/banned.txt", &ids);
    let started = Instant::now();
    let server = Server::start(dir.path(), &[]);
    let startup = started.elapsed();
    assert_eq!(
        server.post("/openim/callbackAfterRemoveBlackCommand", &unblock(&format!("u_{seed}_999999"))).await.1,
        refusal(150, "banned", "")
    );
    assert_eq!(server.post("/openim/callbackAfterRemoveBlackCommand", &unblock("u_other")).await.1, ALLOW);
    let v = server.policy_version().await;
    dir.write("lists/banned.txt", &format!("{ids}u_late\n"));
    server.wait_for_new_version(&v, Duration::from_secs(60)).await;
    assert_eq!(
        server.post("/openim/callbackAfterRemoveBlackCommand", &unblock("u_late")).await.1,
        refusal(150, "banned", "")
    );
    eprintln!("1,000,000-ID list: server ready in {startup:?} (debug build)");
}
