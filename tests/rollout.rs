#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests: a failure should panic")]
//! A rolling restart under load drops no callback: two callgate instances behind a real
//! HAProxy (TCP mode, health checks on `/readyz`), a client that pools connections as
//! OpenIM's does and never retries a POST, and each instance restarted in turn with SIGTERM,
//! then started again on the same ports.
//!
//! OpenIM ≥ 3.7 fails the user's operation when a callback cannot be delivered, so one
//! transport error or wrong answer is a failure. What makes it pass is callgate's drain on
//! SIGTERM: `/readyz` answers 503 at once (HAProxy marks the instance down within a check
//! interval and sends it no new connection), callbacks are still answered for
//! `--shutdown-delay`, each with `Connection: close` (the client leaves every kept-alive
//! connection it uses, after its answer), and only then does callgate stop accepting.
//!
//! To see it fail, run it without the drain:
//! `ROLLOUT_SHUTDOWN_DELAY=0s cargo test --test rollout -- --nocapture`.

mod common;

use std::collections::HashMap;
use std::error::Error as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::{Duration, Instant};

use common::*;

const POLICY: &str = "rules:
  - id: no-blocks
    on: [callbackBeforeAddBlackCommand]
    decision: deny
    error: { code: 20003, message: \"no blocks during the test\" }
  - id: friends-welcome
    on: [callbackBeforeAddFriendCommand]
    decision: allow
";

/// Longer than HAProxy needs to see `/readyz` fail (one 100 ms check interval): the margin
/// is what a rolling restart relies on.
const SHUTDOWN_DELAY: &str = "1500ms";

/// Concurrent callers: even ones pool as OpenIM does (Go's `http.Transport` as OpenIM builds
/// it: at most 2 idle connections kept per host, none ever closed for idleness), odd ones keep
/// every connection they open, forever.
const WORKERS: usize = 8;

/// How long a callback may take, as OpenIM's callback timeout.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// The whole test, start to finish.
const TEST_LIMIT: Duration = Duration::from_secs(50);

/// Phases of the run, as a call saw it when it was sent.
const BEFORE: u8 = 0;
const A_RESTARTING: u8 = 1;
const BETWEEN: u8 = 2;
const B_RESTARTING: u8 = 3;
const AFTER: u8 = 4;
const PHASES: [&str; 5] = ["before", "a restarting", "between", "b restarting", "after"];

/// `n` free loopback ports below the kernel's ephemeral range. An instance is restarted on
/// the same ports while thousands of connections come and go: a port of the ephemeral range
/// could be taken, while its instance is down, as the source port of one of them.
fn fixed_ports(n: usize) -> Vec<u16> {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(0);
    let mut held = Vec::new();
    if low > 12_000 {
        let span = u32::from(low) - 10_000;
        let seed = std::process::id().wrapping_mul(7919)
            ^ std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
        for i in 0..span {
            let port = u16::try_from(10_000 + (seed.wrapping_add(i.wrapping_mul(97))) % span).unwrap();
            if let Ok(l) = std::net::TcpListener::bind(("127.0.0.1", port)) {
                held.push(l);
                if held.len() == n {
                    break;
                }
            }
        }
    }
    while held.len() < n {
        held.push(std::net::TcpListener::bind("127.0.0.1:0").unwrap());
    }
    held.iter().map(|l| l.local_addr().unwrap().port()).collect()
}

/// HAProxy in the foreground (`-db`), in TCP mode, in front of the instances. Killed on drop.
struct HaProxy {
    child: Child,
    port: u16,
    socket: PathBuf,
    stderr: PathBuf,
    _dir: tempfile::TempDir,
}

/// An instance as HAProxy knows it: name, callback port, admin port.
type Backend<'a> = (&'a str, u16, u16);

impl HaProxy {
    fn start(port: u16, backends: &[Backend<'_>]) -> HaProxy {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("admin.sock");
        let mut cfg = format!(
            "global
    maxconn 256
    nbthread 1
    stats socket {socket} mode 600 level admin

defaults
    mode tcp
    timeout connect 1s
    # Longer than the test: a proxy's idle timeout would close pooled connections under the
    # client, which is the race the drain exists to avoid.
    timeout client 5m
    timeout server 5m
    timeout check 1s
    # A connect refused by a stopped instance is tried again on the other one.
    retries 2
    option redispatch 1

frontend callbacks
    bind 127.0.0.1:{port}
    default_backend callgate

backend callgate
    balance roundrobin
    option httpchk GET /readyz
    http-check expect status 200
",
            socket = socket.display()
        );
        for (name, listen, admin) in backends {
            cfg.push_str(&format!(
                "    server {name} 127.0.0.1:{listen} check port {admin} inter 100ms fall 1 rise 1\n"
            ));
        }
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, cfg).unwrap();
        let stderr = dir.path().join("stderr.log");
        let child = Command::new("haproxy")
            .arg("-f")
            .arg(&path)
            .arg("-db")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("haproxy must be installed (.ci/run installs it)");
        HaProxy { child, port, socket, stderr, _dir: dir }
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// `show stat` on the admin socket: one map of column → value per server of `callgate`,
    /// by server name. Empty while HAProxy is not listening yet.
    async fn servers(&self) -> HashMap<String, HashMap<String, String>> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let Ok(mut conn) = tokio::net::UnixStream::connect(&self.socket).await else { return HashMap::new() };
        conn.write_all(b"show stat\n").await.unwrap();
        let mut text = String::new();
        conn.read_to_string(&mut text).await.unwrap();
        let mut lines = text.lines();
        let Some(header) = lines.next().and_then(|h| h.strip_prefix("# ")) else { return HashMap::new() };
        let columns: Vec<&str> = header.split(',').collect();
        lines
            .map(|l| columns.iter().map(|c| c.to_string()).zip(l.split(',').map(str::to_string)).collect())
            .filter(|row: &HashMap<String, String>| {
                row["pxname"] == "callgate" && row["svname"] != "BACKEND" && row["svname"] != "FRONTEND"
            })
            .map(|row| (row["svname"].clone(), row))
            .collect()
    }

    /// Waits until HAProxy holds `server` up (`true`: UP after a passed check) or down;
    /// returns how long that took. Panics after `limit`.
    async fn wait_for(&self, server: &str, up: bool, limit: Duration) -> Duration {
        let started = Instant::now();
        // The last table seen, for the failure message.
        let servers = std::cell::RefCell::new(HashMap::new());
        common::wait_until(
            limit,
            async || {
                let seen = self.servers().await;
                let is_there = seen.get(server).is_some_and(|row| {
                    let is_up = row["status"] == "UP" && row["check_status"] == "L7OK";
                    let is_down = row["status"].starts_with("DOWN");
                    (up && is_up) || (!up && is_down)
                });
                *servers.borrow_mut() = seen;
                is_there
            },
            || {
                let state = if up { "up" } else { "down" };
                format!("HAProxy does not see {server} {state}: {:?}\n{}", servers.borrow(), self.logs())
            },
        )
        .await;
        started.elapsed()
    }
}

impl Drop for HaProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One callgate instance: fixed ports, its own data directory, restarted in place.
struct Instance {
    name: &'static str,
    listen: String,
    admin: String,
    data: PathBuf,
    policies: PathBuf,
    delay: String,
    running: Option<Server>,
    /// Stopped processes, kept for their logs.
    stopped: Vec<Server>,
}

impl Instance {
    async fn start(&mut self) {
        let (policies, data, listen, admin) =
            (self.policies.clone(), self.data.clone(), self.listen.clone(), self.admin.clone());
        let delay = self.delay.clone();
        let server = tokio::task::spawn_blocking(move || {
            Server::start_on(&policies, &data, &listen, &admin, &["--shutdown-delay", &delay])
        })
        .await
        .unwrap();
        self.running = Some(server);
    }

    /// Sends `signal`; waits for the exit, which must be clean. Returns the exit's time
    /// after the signal, and, for SIGTERM, when HAProxy saw the instance down.
    async fn stop(&mut self, signal: &'static str, haproxy: Option<&HaProxy>) -> (Duration, Option<Duration>) {
        let mut server = self.running.take().unwrap();
        let sent = Instant::now();
        server.signal(signal);
        let exit = tokio::task::spawn_blocking(move || {
            let code = server.wait();
            (server, code, sent.elapsed())
        });
        let seen_down = match haproxy {
            Some(h) => Some(h.wait_for(self.name, false, Duration::from_secs(10)).await),
            None => None,
        };
        let (server, code, exited_after) = exit.await.unwrap();
        assert_eq!(code, Some(0), "{} exited {code:?} on SIG{signal}:\n{}", self.name, server.logs());
        self.stopped.push(server);
        (exited_after, seen_down)
    }

    fn logs(&self) -> String {
        self.stopped.iter().chain(&self.running).map(Server::logs).collect::<Vec<_>>().join("\n--- restarted ---\n")
    }
}

/// One callback sent: its operationID, the phase it was sent in, and what went wrong.
struct Call {
    op: String,
    phase: u8,
    failure: Option<String>,
}

/// An error with its causes, as one line.
fn chain(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}

/// A client as OpenIM's: kept-alive connections never closed for idleness, and no retry of
/// a POST that has been sent. (Like Go's `http.Transport`, hyper still sends a request again
/// on a new connection when the pooled one it took turns out closed before a byte of the
/// request was written; a request that reached the wire is never sent twice.)
fn client(max_idle: Option<usize>) -> reqwest::Client {
    let builder = reqwest::Client::builder()
        .pool_idle_timeout(None)
        .timeout(CALL_TIMEOUT)
        .retry(reqwest::retry::never())
        .no_proxy();
    match max_idle {
        Some(n) => builder.pool_max_idle_per_host(n),
        None => builder,
    }
    .build()
    .unwrap()
}

async fn worker(
    w: usize,
    client: reqwest::Client,
    url: String,
    phase: Arc<AtomicU8>,
    stop: Arc<AtomicBool>,
) -> Vec<Call> {
    let deny = (
        "callbackBeforeAddBlackCommand",
        r#"{"callbackCommand":"callbackBeforeAddBlackCommand","ownerUserID":"u_1","blackUserID":"u_2"}"#,
        refusal(20003, "no blocks during the test", ""),
    );
    let allow = (
        "callbackBeforeAddFriendCommand",
        r#"{"callbackCommand":"callbackBeforeAddFriendCommand","fromUserID":"u_1","toUserID":"u_2","reqMsg":"hi"}"#,
        ALLOW.to_string(),
    );
    // Steady load: two workers (one of each pool) flat out, the others pausing 1 to 3 ms
    // between calls, so that pooled connections also sit idle between calls, as OpenIM's do.
    let pace = Duration::from_millis((w / 2 % 4) as u64);
    let mut calls = Vec::new();
    for n in 0.. {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let (command, body, want) = if (n + w).is_multiple_of(2) { &deny } else { &allow };
        let op = format!("w{w}-{n}");
        let phase = phase.load(Ordering::Relaxed);
        let sent = client
            .post(format!("{url}/openim/{command}"))
            .header("content-type", "application/json; charset=utf-8")
            .header("operationID", &op)
            .body(*body)
            .send()
            .await;
        let failure = match sent {
            Ok(resp) => {
                let status = resp.status().as_u16();
                match resp.text().await {
                    Ok(text) if status == 200 && text == *want => None,
                    Ok(text) => Some(format!("answered {status} {text}")),
                    Err(e) => Some(format!("answer not read: {}", chain(&e))),
                }
            }
            Err(e) => Some(chain(&e)),
        };
        calls.push(Call { op, phase, failure });
        tokio::time::sleep(pace).await;
    }
    calls
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_behind_haproxy_drops_no_callback() {
    tokio::time::timeout(TEST_LIMIT, rolling_restart()).await.expect("the rolling restart took too long");
}

async fn rolling_restart() {
    let delay = std::env::var("ROLLOUT_SHUTDOWN_DELAY").unwrap_or_else(|_| SHUTDOWN_DELAY.to_string());
    let policies = PolicyDir::with("10.yaml", POLICY);
    let data = tempfile::tempdir().unwrap();
    let ports = fixed_ports(5);
    let mut instances: Vec<Instance> = ["a", "b"]
        .iter()
        .enumerate()
        .map(|(i, name)| Instance {
            name,
            listen: format!("127.0.0.1:{}", ports[2 * i]),
            admin: format!("127.0.0.1:{}", ports[2 * i + 1]),
            data: data.path().join(name),
            policies: policies.path().to_path_buf(),
            delay: delay.clone(),
            running: None,
            stopped: Vec::new(),
        })
        .collect();
    for instance in &mut instances {
        instance.start().await;
    }
    let haproxy = HaProxy::start(ports[4], &[("a", ports[0], ports[1]), ("b", ports[2], ports[3])]);
    for name in ["a", "b"] {
        haproxy.wait_for(name, true, Duration::from_secs(10)).await;
    }

    let url = format!("http://127.0.0.1:{}", haproxy.port);
    let (go_like, keep_all) = (client(Some(2)), client(None));
    let phase = Arc::new(AtomicU8::new(BEFORE));
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            let client = if w.is_multiple_of(2) { go_like.clone() } else { keep_all.clone() };
            tokio::spawn(worker(w, client, url.clone(), phase.clone(), stop.clone()))
        })
        .collect();

    // Load on both, then each restarted in turn, each given load again before the next.
    let settle = Duration::from_secs(1);
    tokio::time::sleep(settle).await;
    let mut timings = Vec::new();
    let mut drains = Vec::new();
    for (i, instance) in instances.iter_mut().enumerate() {
        phase.store(if i == 0 { A_RESTARTING } else { B_RESTARTING }, Ordering::Relaxed);
        let (exited_after, seen_down) = instance.stop("TERM", Some(&haproxy)).await;
        let seen_down = seen_down.unwrap();
        let started = Instant::now();
        instance.start().await;
        haproxy.wait_for(instance.name, true, Duration::from_secs(10)).await;
        let seen_up = started.elapsed();
        timings.push(format!(
            "{}: HAProxy saw it down {} ms after SIGTERM; it exited 0 after {} ms; up again in HAProxy {} ms after it was started",
            instance.name,
            seen_down.as_millis(),
            exited_after.as_millis(),
            seen_up.as_millis()
        ));
        drains.push((instance.name, seen_down, exited_after));
        phase.store(if i == 0 { BETWEEN } else { AFTER }, Ordering::Relaxed);
        tokio::time::sleep(settle).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut calls = Vec::new();
    for w in workers {
        calls.extend(w.await.unwrap());
    }
    let stats = haproxy.servers().await;
    drop(haproxy);
    // SIGINT: no drain needed now; every record is flushed.
    for instance in &mut instances {
        instance.stop("INT", None).await;
    }

    // Which instance answered each call, from the records (one per callback, with its
    // operationID), in both lives of each instance.
    let mut answered_by: HashMap<String, Vec<&str>> = HashMap::new();
    for instance in &instances {
        for record in events(&instance.data, &[]) {
            answered_by.entry(record["operation_id"].as_str().unwrap().to_string()).or_default().push(instance.name);
        }
    }

    let failed: Vec<&Call> = calls.iter().filter(|c| c.failure.is_some()).collect();
    let mut per_phase: HashMap<&str, [usize; 5]> = HashMap::new();
    let mut unrecorded = Vec::new();
    for call in calls.iter().filter(|c| c.failure.is_none()) {
        match answered_by.get(&call.op).map(Vec::as_slice) {
            Some([name]) => per_phase.entry(name).or_default()[usize::from(call.phase)] += 1,
            other => unrecorded.push(format!("{}: recorded by {other:?}", call.op)),
        }
    }

    println!(
        "rolling restart behind HAProxy, shutdown delay {delay}, {WORKERS} workers: {} calls sent, {} failed",
        calls.len(),
        failed.len()
    );
    for name in ["a", "b"] {
        let counts = per_phase.get(name).copied().unwrap_or_default();
        let by_phase: Vec<String> = PHASES.iter().zip(counts).map(|(p, n)| format!("{p} {n}")).collect();
        println!("  answered by {name}: {} ({})", counts.iter().sum::<usize>(), by_phase.join(", "));
    }
    for line in &timings {
        println!("  {line}");
    }
    for (name, row) in &stats {
        println!(
            "  HAProxy {name}: sessions {}, connect errors {}, retries {}, redispatches {}",
            row["stot"], row["econ"], row["wretr"], row["wredis"]
        );
    }
    for call in failed.iter().take(40) {
        let worker: usize = call.op[1..].split('-').next().unwrap().parse().unwrap();
        let pool = if worker.is_multiple_of(2) { "Go-like pool" } else { "keep-all pool" };
        // Decided but not delivered (an answer lost) or never read by callgate at all.
        let seen = match answered_by.get(&call.op) {
            Some(names) => format!("recorded by {}", names.join(" and ")),
            None => "in no record".to_string(),
        };
        println!(
            "  FAILED {} ({pool}, sent {}, {seen}): {}",
            call.op,
            PHASES[usize::from(call.phase)],
            call.failure.as_ref().unwrap()
        );
    }

    let logs = || instances.iter().map(|i| format!("=== {}:\n{}", i.name, i.logs())).collect::<String>();
    assert!(failed.is_empty(), "{} of {} calls failed (listed above)", failed.len(), calls.len());
    assert!(
        unrecorded.is_empty(),
        "answered calls not recorded exactly once: {:?}",
        &unrecorded[..unrecorded.len().min(20)]
    );
    let count = |name: &str, phases: &[u8]| {
        phases.iter().map(|p| per_phase.get(name).map_or(0, |c| c[usize::from(*p)])).sum::<usize>()
    };
    for (name, before, after) in [
        ("a", &[BEFORE][..], &[BETWEEN, B_RESTARTING, AFTER][..]),
        ("b", &[BEFORE, A_RESTARTING, BETWEEN][..], &[AFTER][..]),
    ] {
        assert!(count(name, before) > 0, "{name} answered nothing before its restart\n{}", logs());
        assert!(count(name, after) > 0, "{name} answered nothing after its restart\n{}", logs());
    }
    // Why nothing failed: each instance was out of HAProxy's rotation before it stopped
    // accepting, so HAProxy never had to retry a connect on it.
    for (name, seen_down, exited_after) in drains {
        assert!(seen_down < exited_after, "HAProxy saw {name} down only after it had stopped");
    }
    for (name, row) in &stats {
        assert_eq!((row["econ"].as_str(), row["wredis"].as_str()), ("0", "0"), "HAProxy met {name} stopped");
    }
}
