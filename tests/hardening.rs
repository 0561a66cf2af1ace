#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests: a failure should panic")]
//! Access control and limits over real sockets: the OpenIM path token, the source
//! allowlist, header size, slow headers and bodies, idle kept-alive connections, concurrent
//! callbacks and connections.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const DENY_ALL: &str = "rules:\n  - id: no\n    decision: deny\n    error: { code: 150, message: no }\n";

/// "Go on" in every OpenIM version: a caller that is not allowed decides nothing.
fn forbidden() -> String {
    r#"{"actionCode":0,"errCode":0,"errMsg":"forbidden","errDlt":"forbidden","nextCode":0}"#.to_string()
}

/// Opens a raw connection to `base` (`http://host:port`).
async fn connect(base: &str) -> TcpStream {
    TcpStream::connect(base.trim_start_matches("http://")).await.unwrap()
}

/// Reads until the server closes the connection (or `limit` passes); returns what came.
async fn read_to_close(stream: &mut TcpStream, limit: Duration) -> Option<String> {
    let mut out = Vec::new();
    match tokio::time::timeout(limit, stream.read_to_end(&mut out)).await {
        Ok(_) => Some(String::from_utf8_lossy(&out).into_owned()),
        Err(_) => None,
    }
}

/// One callback as a keep-alive HTTP/1.1 client sends it.
const CALLBACK: &[u8] =
    b"POST /openim/cmdX HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}";

/// Reads one response (head, then a Content-Length body) and leaves the connection open.
async fn read_response(stream: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let read_one = async {
        loop {
            if let Some(end) = out.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&out[..end]).to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map_or(0, |v| v.trim().parse().unwrap());
                if out.len() >= end + 4 + len {
                    return;
                }
            }
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed mid-response: {}", String::from_utf8_lossy(&out));
            out.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read_one).await.expect("no response within 10 s");
    String::from_utf8(out).unwrap()
}

/// Sends one callback down `stream` and asserts the whole refusal comes back on it.
async fn assert_refused_on(stream: &mut TcpStream) {
    stream.write_all(CALLBACK).await.unwrap();
    let answer = read_response(stream).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with(&format!("\r\n\r\n{}", refusal(150, "no", ""))), "{answer}");
    assert!(!answer.to_ascii_lowercase().contains("connection: close"), "{answer}");
}

#[tokio::test]
async fn the_openim_path_token_is_required_and_never_logged() {
    let dir = PolicyDir::with("10.yaml", DENY_ALL);
    let mut server = Server::start(dir.path(), &["--openim-path-token", "k7Hq2pZ"]);
    let body = r#"{"callbackCommand":"cmdX"}"#;
    let denied = refusal(150, "no", "");
    assert_eq!(server.post("/openim/k7Hq2pZ/cmdX", body).await, (200, denied.clone()));
    assert_eq!(server.post("/openim/k7Hq2pZ?command=cmdX", body).await, (200, denied.clone()));
    // The command only in the body: OpenIM 2.x's bare URL, refused in its form.
    let denied_v2 = denied.replacen(r#""actionCode":0"#, r#""actionCode":1"#, 1);
    assert_eq!(server.post("/openim/k7Hq2pZ", body).await, (200, denied_v2));
    for path in ["/openim/cmdX", "/openim", "/openim/k7Hq2pY/cmdX", "/openim/k7Hq2pZZ/cmdX", "/openim?command=cmdX"] {
        assert_eq!(server.post(path, body).await, (403, forbidden()), "{path}");
    }
    assert_eq!(server.terminate(), Some(0));
    assert_eq!(events(server.data_dir(), &[]).len(), 3, "refused requests are not recorded");
    let logs = server.logs();
    assert_eq!(logs.matches("callback refused: forbidden").count(), 5);
    assert!(!logs.contains("k7Hq2p"), "the token must never be logged");
}

#[tokio::test]
async fn the_source_allowlist_guards_both_endpoints() {
    let dir = PolicyDir::with("10.yaml", DENY_ALL);
    let elsewhere = Server::start(dir.path(), &["--allow-source", "10.0.0.0/8", "--allow-source", "192.168.0.0/16"]);
    assert_eq!(elsewhere.post("/openim/cmdX", "{}").await, (403, forbidden()));
    let (status, body) = elsewhere.post_tencent("CallbackCommand=Sns.CallbackFriendAdd", "{}").await;
    assert_eq!((status, body.as_str()), (403, r#"{"ActionStatus":"FAIL","ErrorCode":1,"ErrorInfo":"forbidden"}"#));

    let here = Server::start_with_env(dir.path(), &[], &[("CALLGATE_ALLOW_SOURCE", "10.0.0.0/8,127.0.0.1")]);
    assert_eq!(here.post("/openim/cmdX", "{}").await.0, 200);
    assert_eq!(here.post_tencent("CallbackCommand=Sns.CallbackFriendAdd", "{}").await.0, 200);

    let err = Server::try_start(dir.path(), &["--allow-source", "10.0.0.0/40"]).err().unwrap();
    assert!(err.contains("`allow_source`: `10.0.0.0/40` is not a network"), "{err}");
}

#[tokio::test]
async fn oversized_headers_get_431() {
    let dir = PolicyDir::with("10.yaml", DENY_ALL);
    let server = Server::start(dir.path(), &["--max-header-bytes", "4096"]);
    let resp = server
        .client
        .post(format!("{}/openim/cmdX", server.base))
        .header("x-pad", "a".repeat(8192))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 431);
    assert_eq!(server.post("/openim/cmdX", "{}").await.0, 200, "still serving");
}

#[tokio::test]
async fn a_slow_client_cannot_hold_a_connection_or_a_request() {
    let dir = PolicyDir::with("10.yaml", DENY_ALL);
    let server = Server::start(dir.path(), &["--read-timeout", "1s"]);

    // Headers that never finish: the connection is closed after the timeout.
    let mut slow = connect(&server.base).await;
    slow.write_all(b"POST /openim/cmdX HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let started = Instant::now();
    let answer = read_to_close(&mut slow, Duration::from_secs(10)).await;
    assert!(answer.is_some(), "connection still open after 10 s");
    assert!(started.elapsed() >= Duration::from_millis(900), "closed too early: {:?}", started.elapsed());

    // A body that never finishes: answered 400 ("go on", body_timeout) after the timeout.
    let mut slow = connect(&server.base).await;
    slow.write_all(b"POST /openim/cmdX HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"a\":").await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), slow.read(&mut buf)).await.unwrap().unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(
        answer.contains(r#""errCode":0,"errMsg":"body was not received in time","errDlt":"body_timeout","nextCode":0"#),
        "{answer}"
    );
}

/// Regression: hyper starts its header read timeout as soon as it waits for a request, so
/// a kept-alive connection idle for `--read-timeout` (10 s) was closed, and a callback a Go
/// client (which keeps idle connections 90 s) sent down it just then failed.
#[tokio::test]
async fn an_idle_kept_alive_connection_outlives_the_read_timeout() {
    let dir = PolicyDir::with("10.yaml", DENY_ALL);
    let server = Server::start(dir.path(), &["--read-timeout", "1s", "--idle-timeout", "5s"]);
    let mut conn = connect(&server.base).await;
    assert_refused_on(&mut conn).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    // The same socket, so the same connection, serves again after twice the read timeout.
    assert_refused_on(&mut conn).await;

    // Once a request starts to arrive, even after an idle spell, the read timeout applies
    // again, not what is left of the idle timeout.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    conn.write_all(b"POST /openim/cmdX HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let started = Instant::now();
    let answer = read_to_close(&mut conn, Duration::from_secs(10)).await;
    assert!(answer.is_some(), "connection still open after 10 s");
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(900), "closed too early: {took:?}");
    assert!(took < Duration::from_secs(3), "held to the idle timeout, not the read timeout: {took:?}");
}

/// OpenIM ≥ 3.7 keeps idle connections forever and does not retry a POST: by default a
/// connection idle longer than every timeout callgate has is still served when reused.
#[tokio::test]
async fn by_default_an_idle_connection_is_kept_past_every_timeout() {
    let dir = PolicyDir::with("10.yaml", DENY_ALL);
    let server = Server::start(dir.path(), &["--read-timeout", "1s", "--redis-timeout", "1s"]);
    let mut conn = connect(&server.base).await;
    assert_refused_on(&mut conn).await;
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert_refused_on(&mut conn).await;
    // A connection that has never sent a request is kept too.
    let mut fresh = connect(&server.base).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_refused_on(&mut fresh).await;
}

#[tokio::test]
async fn an_idle_connection_is_closed_after_the_idle_timeout() {
    let dir = PolicyDir::with("10.yaml", DENY_ALL);
    // The read timeout (10 s) is far longer, so a close within 5 s is the idle timeout's.
    let server = Server::start(dir.path(), &["--idle-timeout", "1s"]);
    let mut used = connect(&server.base).await;
    assert_refused_on(&mut used).await;
    let started = Instant::now();
    let answer = read_to_close(&mut used, Duration::from_secs(5)).await;
    assert_eq!(answer.as_deref(), Some(""), "an idle kept-alive connection must be closed, without a word");
    assert!(started.elapsed() >= Duration::from_millis(900), "closed too early: {:?}", started.elapsed());

    // A connection that never sends a request is idle too.
    let mut unused = connect(&server.base).await;
    let answer = read_to_close(&mut unused, Duration::from_secs(5)).await;
    assert_eq!(answer.as_deref(), Some(""));
}

#[tokio::test]
async fn idle_connections_do_not_hold_up_shutdown() {
    let dir = PolicyDir::with("10.yaml", DENY_ALL);
    let mut server = Server::start(dir.path(), &["--idle-timeout", "60s"]);
    let mut used = connect(&server.base).await;
    assert_refused_on(&mut used).await;
    let mut unused = connect(&server.base).await;
    let started = Instant::now();
    assert_eq!(server.terminate(), Some(0));
    // Well under the 10 s shutdown waits for requests in flight.
    assert!(started.elapsed() < Duration::from_secs(5), "shutdown took {:?}", started.elapsed());
    assert_eq!(read_to_close(&mut used, Duration::from_secs(5)).await.as_deref(), Some(""));
    assert_eq!(read_to_close(&mut unused, Duration::from_secs(5)).await.as_deref(), Some(""));
}

#[tokio::test]
async fn callbacks_past_the_concurrency_limit_get_503_in_wire_format() {
    let dir = PolicyDir::with("10.yaml", DENY_ALL);
    let server = Server::start(dir.path(), &["--max-concurrent-requests", "1", "--read-timeout", "60s"]);
    // One callback holds the only slot while its body trickles in. If a probe happened to
    // hold the slot just when the holder arrived, the holder itself was answered 503: then
    // start over with a new holder.
    let busy = r#"{"actionCode":0,"errCode":0,"errMsg":"callgate is busy; too many callbacks at once","errDlt":"busy","nextCode":0}"#;
    let started = Instant::now();
    let mut holder = loop {
        assert!(started.elapsed() < Duration::from_secs(30), "never busy");
        let mut holder = connect(&server.base).await;
        holder.write_all(b"POST /openim/cmdX HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{").await.unwrap();
        let (status, body) = server.post("/openim/cmdX", "{}").await;
        let mut peek = [0u8; 1];
        let holder_was_answered =
            tokio::time::timeout(Duration::from_millis(50), holder.peek(&mut peek)).await.is_ok_and(|r| r.is_ok());
        if status == 503 && !holder_was_answered {
            assert_eq!(body, busy);
            break holder;
        }
    };
    holder.write_all(b"}").await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = holder.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    assert_eq!(server.post("/openim/cmdX", "{}").await.0, 200, "the slot is free again");
}

/// At the connection cap the connection idle the longest makes room for a new one; when
/// every connection is busy with a request, a new one is closed at once.
#[tokio::test]
async fn at_the_connection_cap_the_longest_idle_connection_makes_room() {
    let dir = PolicyDir::with("10.yaml", DENY_ALL);
    let server = Server::start(dir.path(), &["--max-connections", "3"]);
    let mut oldest = connect(&server.base).await;
    assert_refused_on(&mut oldest).await;
    // Idle times are told apart to within the time hyper takes to wait again after an
    // answer (a few ms on a loaded machine).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut younger = connect(&server.base).await;
    assert_refused_on(&mut younger).await;
    // Busy: a request head begun and never finished.
    let mut busy = connect(&server.base).await;
    busy.write_all(b"POST /openim/cmdX HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;

    let mut newcomer = connect(&server.base).await;
    assert_refused_on(&mut newcomer).await;
    assert_eq!(
        read_to_close(&mut oldest, Duration::from_secs(5)).await.as_deref(),
        Some(""),
        "the oldest idle one goes"
    );
    assert_refused_on(&mut younger).await;

    // Now every connection is busy: the next one is closed without an answer.
    for conn in [&mut younger, &mut newcomer] {
        conn.write_all(b"POST /openim/cmdX HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut refused = connect(&server.base).await;
    let _ = refused.write_all(b"POST /openim/cmdX HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}").await;
    let answer = read_to_close(&mut refused, Duration::from_secs(10)).await;
    assert_eq!(answer.as_deref(), Some(""), "a connection past the cap must be closed without an answer");
}

/// Regression (found by the soak): an answer sent before the body was read closes the
/// connection; it must say so, or a keep-alive client sends its next callback down a
/// connection that is gone.
#[tokio::test]
async fn answers_before_the_body_is_read_say_connection_close() {
    let dir = PolicyDir::with("10.yaml", DENY_ALL);
    // A body over the limit that never comes is waited for up to the read timeout.
    let server = Server::start(dir.path(), &["--max-body-bytes", "1024", "--read-timeout", "1s"]);
    for (request, status) in [
        ("POST /openim/cmdX HTTP/1.1\r\nHost: x\r\nContent-Length: 200000\r\n\r\n", "413"),
        ("PUT /openim/cmdX HTTP/1.1\r\nHost: x\r\nContent-Length: 200000\r\n\r\n", "405"),
        ("POST /elsewhere HTTP/1.1\r\nHost: x\r\nContent-Length: 200000\r\n\r\n", "404"),
        ("POST /tencent HTTP/1.1\r\nHost: x\r\nContent-Length: 200000\r\n\r\n", "413"),
    ] {
        let mut conn = connect(&server.base).await;
        conn.write_all(request.as_bytes()).await.unwrap();
        let answer = read_to_close(&mut conn, Duration::from_secs(10)).await.unwrap();
        assert!(answer.starts_with(&format!("HTTP/1.1 {status}")), "{answer}");
        assert!(answer.to_ascii_lowercase().contains("\r\nconnection: close\r\n"), "{answer}");
    }
    let resp = server.client.get(format!("{}/tencent", server.base)).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 405);
    assert_eq!(resp.headers()["allow"], "POST");
    assert_eq!(
        resp.text().await.unwrap(),
        r#"{"ActionStatus":"FAIL","ErrorCode":1,"ErrorInfo":"callbacks must be POSTed"}"#
    );
}

/// Padding a message past the size limit must not get it past the rules: the body is read to
/// its end and refused (413, nextCode 1), and the kept-alive connection serves on.
#[tokio::test]
async fn a_body_over_the_limit_is_refused_and_the_connection_kept() {
    let dir = PolicyDir::new();
    let server = Server::start(dir.path(), &["--max-body-bytes", "1024"]);
    let padded = format!(r#"{{"callbackCommand":"cmdX","content":"{}"}}"#, "x".repeat(4096));
    let mut conn = connect(&server.base).await;
    let head = format!("POST /openim/cmdX HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n", padded.len());
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.write_all(padded.as_bytes()).await.unwrap();
    let answer = read_response(&mut conn).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    let refused =
        refusal(1003, "callback body is larger than callgate's limit of 1024 bytes (--max-body-bytes)", "too_large");
    assert!(answer.ends_with(&format!("\r\n\r\n{refused}")), "{answer}");
    assert!(!answer.to_ascii_lowercase().contains("connection: close"), "{answer}");
    // The same connection decides the next callback (the default allows).
    conn.write_all(CALLBACK).await.unwrap();
    let answer = read_response(&mut conn).await;
    assert!(answer.ends_with(&format!("\r\n\r\n{ALLOW}")), "{answer}");
}

/// The default limit decides a 16 MiB body (twice what a stock OpenIM can send) and refuses
/// one byte more.
#[tokio::test]
async fn a_16_mib_body_is_decided_by_default() {
    let dir = PolicyDir::with("10.yaml", DENY_ALL);
    let server = Server::start(dir.path(), &[]);
    let frame = r#"{"callbackCommand":"cmdX","content":""}"#;
    let limit = 16 << 20;
    let body = |len: usize| format!(r#"{{"callbackCommand":"cmdX","content":"{}"}}"#, "x".repeat(len - frame.len()));
    let (status, got) = server.post("/openim/cmdX", &body(limit)).await;
    assert_eq!((status, got), (200, refusal(150, "no", "")));
    let (status, got) = server.post("/openim/cmdX", &body(limit + 1)).await;
    assert_eq!(status, 413, "{got}");
    assert!(got.contains(r#""errCode":1003"#) && got.contains(r#""nextCode":1"#), "{got}");
}

/// A flood of bad callbacks writes a few log lines a second per reason, then one line with
/// how many were not logged; the metric counts every one.
#[tokio::test]
async fn a_flood_of_bad_callbacks_cannot_flood_the_log() {
    let dir = PolicyDir::with("10.yaml", DENY_ALL);
    let server = Server::start(dir.path(), &[]);
    let started = Instant::now();
    for _ in 0..300 {
        assert_eq!(server.post("/openim/cmdX", "not json").await.0, 400);
    }
    let seconds = started.elapsed().as_secs() + 1;
    server.wait_for_log("in that second not logged", Duration::from_secs(5)).await;
    let logged = server.logs().matches("bad OpenIM callback: body is not valid JSON").count() as u64;
    assert!(logged >= 10 && logged <= 10 * seconds, "{logged} lines in {seconds} s");
    assert_eq!(server.metric_sum("callgate_bad_requests_total").await, 300.0);
}
