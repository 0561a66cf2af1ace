#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests: a failure should panic")]
//! The process as an operator runs it: configuration precedence, the admin token, and a
//! graceful shutdown that loses no answered request and no record.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::*;

const DENY_ALL: &str = "rules:\n  - id: no\n    decision: deny\n    error: { code: 150, message: no }\n";

#[tokio::test]
async fn flags_beat_env_beat_the_config_file_beat_defaults() {
    let dir = PolicyDir::with("10.yaml", DENY_ALL);
    let config_dir = tempfile::tempdir().unwrap();
    let config = config_dir.path().join("callgate.yaml");
    std::fs::write(&config, "max_body_bytes: 100\ndry_run: true\nrecords: false\n").unwrap();
    let config_arg = config.to_str().unwrap();

    // File only: limit 100, dry run on.
    let s = Server::start(dir.path(), &["--config", config_arg]);
    assert_eq!(s.post("/openim/x", &body_of_len(100)).await, (200, ALLOW.to_string()), "dry run from the file");
    // Over the limit: in dry run, which refuses nothing, not refused either.
    let (status, answer) = s.post("/openim/x", &body_of_len(101)).await;
    assert_eq!(status, 413);
    assert!(answer.contains(r#""nextCode":0"#) && answer.contains(r#""errDlt":"too_large""#), "{answer}");
    assert!(s.logs().contains("records are off"));
    drop(s);

    // Env beats file: limit 200; dry run still from the file.
    let s = Server::start_with_env(dir.path(), &["--config", config_arg], &[("CALLGATE_MAX_BODY_BYTES", "200")]);
    assert_eq!(s.post("/openim/x", &body_of_len(200)).await, (200, ALLOW.to_string()));
    assert_eq!(s.post("/openim/x", &body_of_len(201)).await.0, 413);
    drop(s);

    // Flag beats env; env beats file for dry run too.
    let s = Server::start_with_env(
        dir.path(),
        &["--config", config_arg, "--max-body-bytes", "300"],
        &[("CALLGATE_MAX_BODY_BYTES", "200"), ("CALLGATE_DRY_RUN", "false")],
    );
    assert_eq!(s.post("/openim/x", &body_of_len(300)).await, (200, refusal(150, "no", "")));
    assert_eq!(s.post("/openim/x", &body_of_len(301)).await.0, 413);
    drop(s);

    // A bad key in the file is an error that names it.
    std::fs::write(&config, "max_body_bytez: 100\n").unwrap();
    let err = Server::try_start(dir.path(), &["--config", config_arg]).err().unwrap();
    assert!(err.contains("unknown field `max_body_bytez`"), "{err}");
}

#[tokio::test]
async fn the_admin_token_guards_everything_but_the_probes() {
    let dir = PolicyDir::with("10.yaml", DENY_ALL);
    let s = Server::start(dir.path(), &["--admin-token", "s3cret"]);
    let get = |path: &'static str, auth: Option<&'static str>| {
        let s = &s;
        async move {
            let mut req = s.client.get(format!("{}{path}", s.admin));
            if let Some(a) = auth {
                req = req.header("authorization", a);
            }
            req.send().await.unwrap().status().as_u16()
        }
    };
    assert_eq!(get("/healthz", None).await, 200);
    assert_eq!(get("/readyz", None).await, 200);
    for path in ["/v1/status", "/metrics", "/v1/events"] {
        assert_eq!(get(path, None).await, 401, "{path}");
        assert_eq!(get(path, Some("Bearer wrong")).await, 401, "{path}");
        assert_eq!(get(path, Some("s3cret")).await, 401, "{path}: the scheme is required");
        assert_eq!(get(path, Some("Bearer s3cret")).await, 200, "{path}");
    }
    let reload = s.client.post(format!("{}/v1/reload", s.admin)).send().await.unwrap();
    assert_eq!(reload.status().as_u16(), 401);
    assert!(!s.logs().contains("s3cret"), "the token is never logged");
}

#[tokio::test]
async fn an_admin_api_off_loopback_without_a_token_does_not_start() {
    let dir = PolicyDir::with("10.yaml", DENY_ALL);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_callgate"))
        .args(["serve", "--listen", "127.0.0.1:0", "--admin-listen", "0.0.0.0:0", "--policies"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("`admin_listen`: `0.0.0.0:0` is not a loopback address, so the admin API needs a token"),
        "{err}"
    );
}

/// SIGTERM while requests are in flight: every request that got an answer got a whole,
/// valid one, the process exits 0, and every answered decision is in the records.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_finishes_requests_in_flight_and_flushes_records() {
    let dir = PolicyDir::with("10.yaml", DENY_ALL);
    let mut server = Server::start(dir.path(), &[]);
    let answered = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for t in 0..8 {
        let (base, client, answered) = (server.base.clone(), server.client.clone(), answered.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..500 {
                let body = format!(r#"{{"callbackCommand":"x","n":"{t}-{i}"}}"#);
                let Ok(resp) = client.post(format!("{base}/openim/x")).body(body).send().await else { break };
                let Ok(text) = resp.text().await else { break };
                assert_eq!(text, refusal(150, "no", ""), "a request in flight got a partial answer");
                answered.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    while answered.load(Ordering::Relaxed) < 200 {
        tokio::task::yield_now().await;
    }
    assert_eq!(server.terminate(), Some(0));
    for t in tasks {
        t.await.unwrap();
    }
    let answered = answered.load(Ordering::Relaxed);
    let recorded = events(server.data_dir(), &[]).len();
    assert!(recorded >= answered, "{answered} answered but only {recorded} recorded");
    assert!(server.logs().contains("records flushed"));
}

/// One data directory, one writer: a second instance on the same `--data-dir` stops at start,
/// naming the directory and the process that holds it.
#[tokio::test]
async fn a_second_instance_on_the_same_data_dir_does_not_start() {
    let dir = PolicyDir::with("10.yaml", DENY_ALL);
    let data = tempfile::tempdir().unwrap();
    let mut first = Server::start_with_data(dir.path(), data.path(), &[]);
    let err = Server::spawn_with_data(dir.path(), data.path(), &[]).err().expect("the second instance must not start");
    let want =
        format!("the data directory `{}` is in use by another callgate (pid {});", data.path().display(), first.pid());
    assert!(err.contains(&want), "{err}");
    // The first one goes on, and once it has stopped the directory is free again.
    assert_eq!(first.post("/openim/cmdX", "{}").await, (200, refusal(150, "no", "")));
    assert_eq!(first.terminate(), Some(0));
    let second = Server::start_with_data(dir.path(), data.path(), &[]);
    assert_eq!(second.post("/openim/cmdX", "{}").await.0, 200);
}

/// SIGTERM drains first: /readyz answers 503 at once, callbacks (on kept-alive and new
/// connections) are still answered, each with `Connection: close`, for --shutdown-delay;
/// then the server stops.
#[tokio::test]
async fn sigterm_drains_for_the_shutdown_delay_before_stopping() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = PolicyDir::with("10.yaml", DENY_ALL);
    let mut server = Server::start(dir.path(), &["--shutdown-delay", "2s"]);
    let ready = server.client.get(format!("{}/readyz", server.admin)).send().await.unwrap();
    assert_eq!(ready.status().as_u16(), 200);
    let mut kept = tokio::net::TcpStream::connect(server.base.trim_start_matches("http://")).await.unwrap();
    async fn answer(stream: &mut tokio::net::TcpStream) -> String {
        let request = b"POST /openim/cmdX HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}";
        stream.write_all(request).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut buf)).await.unwrap().unwrap();
        String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase()
    }
    assert!(!answer(&mut kept).await.contains("connection: close"));

    let stopped_at = std::time::Instant::now();
    server.signal("TERM");
    server.wait_for_log("draining for 2s", std::time::Duration::from_secs(5)).await;
    let ready = server.client.get(format!("{}/readyz", server.admin)).send().await.unwrap();
    assert_eq!(ready.status().as_u16(), 503);
    assert_eq!(ready.json::<serde_json::Value>().await.unwrap()["status"], "draining");
    let during = answer(&mut kept).await;
    assert!(during.starts_with("http/1.1 200") && during.contains("\r\nconnection: close\r\n"), "{during}");
    assert!(during.contains(r#""errcode":150"#), "{during}");
    let mut fresh = tokio::net::TcpStream::connect(server.base.trim_start_matches("http://")).await.unwrap();
    assert!(answer(&mut fresh).await.contains("\r\nconnection: close\r\n"));

    let code = server.wait();
    assert_eq!(code, Some(0));
    let took = stopped_at.elapsed();
    assert!(took >= std::time::Duration::from_millis(1900), "stopped after {took:?}, before the delay");
}

/// What a newcomer sees when something is off: log lines without colour codes when stderr is
/// not a terminal, one line per event; a port in use said once; `events` on a directory that
/// does not exist fails with its path.
#[tokio::test]
async fn errors_and_logs_read_plainly() {
    let dir = PolicyDir::with("10.yaml", DENY_ALL);
    let server = Server::start(dir.path(), &[]);
    let logs = server.logs();
    assert!(!logs.contains('\u{1b}'), "colour codes in a log file: {logs:?}");
    assert!(logs.lines().all(|l| l.contains(" INFO ") || l.contains(" WARN ") || l.contains(" DEBUG ")), "{logs}");

    let taken = server.base.trim_start_matches("http://").to_string();
    let data = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_callgate"))
        .args(["serve", "--listen", &taken, "--admin-listen", "127.0.0.1:0", "--policies"])
        .arg(dir.path())
        .arg("--data-dir")
        .arg(data.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("callgate: cannot listen on {taken}: ")), "{err}");
    assert_eq!(err.matches("in use").count(), 1, "the OS error said more than once: {err}");

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_callgate"))
        .args(["events", "--data-dir", "/nonexistent/records"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no record directory `/nonexistent/records`"), "{stderr}");
}
