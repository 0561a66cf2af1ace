#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests: a failure should panic")]
//! The admin listener over real HTTP: metrics, health, status, explain, and the Redis
//! Stream copy of records.

mod common;

use std::time::Duration;

use common::*;

const POLICY: &str = "rules:
  - id: no-sys
    on: [callbackBeforeAddBlackCommand]
    when:
      blackUserID: { regex: '^sys_' }
    decision: deny
    error: { code: 150, message: no }
  - id: trial
    when:
      blackUserID: { regex: '^guest_' }
    decision: deny
    error: { code: 151, message: trial }
    mode: dry_run
  - id: add-rate
    on: [callbackBeforeAddBlackCommand]
    rate_cap: { key: [ownerUserID], max: 2, per: 1h }
    decision: deny
    error: { code: 152, message: slow down }
";

fn add_black(owner: &str, black: &str) -> String {
    format!(r#"{{"callbackCommand":"callbackBeforeAddBlackCommand","ownerUserID":"{owner}","blackUserID":"{black}"}}"#)
}

async fn metrics(server: &Server) -> String {
    let resp = server.client.get(format!("{}/metrics", server.admin)).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    resp.text().await.unwrap()
}

/// The value of the sample line that starts with `series` (name and labels, exactly).
fn sample_value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
}

#[tokio::test]
async fn metrics_cover_decisions_reloads_records_and_bad_requests_without_user_labels() {
    let dir = PolicyDir::with("10.yaml", POLICY);
    let server = Server::start(dir.path(), &[]);
    let cmd = "/openim/callbackBeforeAddBlackCommand";
    assert_eq!(server.post(cmd, &add_black("u_secret_77", "sys_1")).await.1, refusal(150, "no", ""));
    assert_eq!(server.post(cmd, &add_black("u_secret_77", "guest_1")).await.1, ALLOW);
    assert_eq!(server.post(cmd, &add_black("u_secret_77", "u_2")).await.1, ALLOW);
    assert_eq!(server.post(cmd, &add_black("u_secret_77", "u_3")).await.1, refusal(152, "slow down", ""));
    assert_eq!(server.post("/openim/myOwnCommand", r#"{"x":1}"#).await.1, ALLOW);
    assert_eq!(server.post("/openim/x", "not json").await.0, 400);
    let v = server.policy_version().await;
    dir.write("10.yaml", &format!("{POLICY}  - id: more\n    on: [zzz]\n    decision: allow\n"));
    let new_version_after = server.wait_for_new_version(&v, Duration::from_secs(10)).await;
    assert!(new_version_after < Duration::from_secs(10));
    let before_failure = server.admin_get("/v1/status").await["policy_version"].clone();
    dir.write("10.yaml", "rules: [");
    common::wait_until(
        Duration::from_secs(10),
        async || server.admin_get("/v1/status").await["last_reload"]["ok"] == false,
        || "no failed reload in status".into(),
    )
    .await;

    let text = metrics(&server).await;
    let c = "callgate_decisions_total{command=\"callbackBeforeAddBlackCommand\",";
    assert_eq!(sample_value(&text, &format!("{c}rule=\"no-sys\",outcome=\"deny\"}}")), Some(1.0), "{text}");
    assert_eq!(sample_value(&text, &format!("{c}rule=\"(default)\",outcome=\"allow\"}}")), Some(2.0), "{text}");
    assert_eq!(sample_value(&text, &format!("{c}rule=\"add-rate\",outcome=\"deny\"}}")), Some(1.0), "{text}");
    assert_eq!(
        sample_value(&text, "callgate_decisions_total{command=\"other\",rule=\"(default)\",outcome=\"allow\"}"),
        Some(1.0),
        "unknown commands share one label"
    );
    assert_eq!(sample_value(&text, "callgate_dry_run_hits_total{rule=\"trial\",would=\"deny\"}"), Some(1.0), "{text}");
    assert_eq!(sample_value(&text, "callgate_decision_seconds_count"), Some(5.0), "{text}");
    assert!(text.contains("callgate_decision_seconds_bucket{le=\"0.001\"}"));
    assert_eq!(sample_value(&text, "callgate_policy_reloads_total{result=\"ok\"}"), Some(1.0), "{text}");
    assert_eq!(sample_value(&text, "callgate_policy_reloads_total{result=\"error\"}"), Some(1.0), "{text}");
    assert!(sample_value(&text, "callgate_policy_last_success_timestamp_seconds").unwrap() > 1.7e9);
    assert_eq!(
        sample_value(&text, &format!("callgate_policy_info{{version={before_failure}}}")),
        Some(1.0),
        "the serving version, once: {text}"
    );
    assert_eq!(text.matches("callgate_policy_info{").count(), 1);
    assert_eq!(sample_value(&text, "callgate_bad_requests_total{source=\"openim\",reason=\"not_json\"}"), Some(1.0));
    assert!(sample_value(&text, "callgate_records_written_total").is_some(), "{text}");
    assert!(!text.contains("u_secret_77"), "no label may carry a user ID");
}

#[tokio::test]
async fn health_readiness_status_and_explain() {
    let dir = PolicyDir::with("10.yaml", POLICY);
    let server = Server::start(dir.path(), &[]);
    assert_eq!(server.admin_get("/healthz").await["status"], "ok");
    let ready = server.admin_get("/readyz").await;
    assert_eq!(ready["status"], "ready");
    assert_eq!(ready["policy_version"], server.version.as_str());
    let status = server.admin_get("/v1/status").await;
    assert_eq!(status["rules"], 3);
    assert_eq!(status["files"].as_array().unwrap().len(), 1);
    assert_eq!(status["last_reload"]["ok"], true);

    // Two allowed callbacks use up the cap; explain then shows it, without counting.
    let cmd = "/openim/callbackBeforeAddBlackCommand";
    server.post(cmd, &add_black("u_1", "a")).await;
    server.post(cmd, &add_black("u_1", "b")).await;
    let explain = |body: String| {
        let server = &server;
        async move {
            let resp = server.client.post(format!("{}/v1/explain", server.admin)).body(body).send().await.unwrap();
            (resp.status().as_u16(), resp.json::<serde_json::Value>().await.unwrap())
        }
    };
    for _ in 0..2 {
        let (status, e) = explain(add_black("u_1", "guest_1")).await;
        assert_eq!(status, 200);
        assert_eq!(e["decision"], "deny", "{e}");
        assert_eq!(e["rule"], "add-rate");
        assert_eq!(e["error"]["code"], 152);
        assert_eq!(e["dry_run"][0]["rule"], "trial");
        assert_eq!(e["caps"][0], serde_json::json!({"rule":"add-rate","count":2,"max":2,"exceeded":true}));
        let steps: Vec<&str> = e["trace"].as_array().unwrap().iter().map(|t| t["step"].as_str().unwrap()).collect();
        assert_eq!(steps, ["not held", "dry run", "decided"]);
    }
    let (status, e) = explain(add_black("u_2", "x")).await;
    assert_eq!((status, e["decision"].as_str()), (200, Some("allow")));
    assert_eq!(e["trace"][2]["step"], "under cap");
    assert_eq!(e["trace"][2]["cap"], serde_json::json!({"count":0,"max":2}));
    // Explaining counted nothing: u_2 still has its whole cap.
    assert_eq!(server.post(cmd, &add_black("u_2", "c")).await.1, ALLOW);
    assert_eq!(server.post(cmd, &add_black("u_2", "d")).await.1, ALLOW);
    let (status, e) = explain("[]".into()).await;
    assert_eq!(status, 400);
    assert_eq!(e["error"], "body must be a JSON object, got an array");
}

#[tokio::test]
async fn records_are_copied_to_a_redis_stream_and_redis_faults_show_in_metrics() {
    let mut redis = RedisServer::start();
    let dir = PolicyDir::with("10.yaml", POLICY);
    let url = redis.url();
    let server = Server::start(dir.path(), &["--redis-url", &url]);
    for i in 0..5 {
        server.post("/openim/callbackBeforeAddBlackCommand", &add_black(&format!("s_{i}"), "x")).await;
    }
    common::wait_until(
        Duration::from_secs(10),
        async || redis.command(&["XLEN", "callgate:records"]) == ":5",
        || format!("stream has {}", redis.command(&["XLEN", "callgate:records"])),
    )
    .await;

    redis.kill();
    for i in 0..5 {
        assert_eq!(
            server.post("/openim/callbackBeforeAddBlackCommand", &add_black(&format!("d_{i}"), "x")).await.1,
            ALLOW
        );
    }
    let text = metrics(&server).await;
    assert!(
        sample_value(&text, "callgate_redis_errors_total{reason=\"timeout\"}").unwrap_or(0.0)
            + sample_value(&text, "callgate_redis_errors_total{reason=\"redis\"}").unwrap_or(0.0)
            >= 3.0,
        "{text}"
    );
    assert_eq!(sample_value(&text, "callgate_redis_circuit_open"), Some(1.0), "{text}");
    assert!(
        sample_value(&text, "callgate_ratecap_errors_total{reason=\"circuit_open\"}").unwrap_or(0.0) >= 1.0,
        "{text}"
    );
}

/// Every answer of the admin API is JSON — wrong methods and unknown paths included — and
/// `/` says what is there.
#[tokio::test]
async fn every_admin_answer_is_json_and_the_root_lists_the_endpoints() {
    let dir = PolicyDir::with("10.yaml", POLICY);
    let server = InProcess::start(dir.path(), Default::default()).await;
    for (method, path, status) in [
        (reqwest::Method::GET, "/v1/reload", 405),
        (reqwest::Method::POST, "/v1/status", 405),
        (reqwest::Method::GET, "/nope", 404),
        (reqwest::Method::GET, "/", 200),
    ] {
        let resp = server.client.request(method.clone(), format!("{}{path}", server.admin)).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), status, "{method} {path}");
        assert_eq!(resp.headers()["content-type"], "application/json", "{method} {path}");
        let body: serde_json::Value = resp.json().await.unwrap();
        if status == 200 {
            assert_eq!(body["endpoints"]["GET /v1/status"].as_str().map(|s| !s.is_empty()), Some(true), "{body}");
            assert!(body["endpoints"]["POST /v1/reload"].is_string(), "{body}");
        } else {
            assert!(body["error"].as_str().is_some_and(|e| e.contains("GET /")), "{method} {path}: {body}");
        }
    }
}
