//! Test harness: a real `callgate serve` process on random loopback ports, a temporary
//! policy directory, and an HTTP client. Readiness is the server's own "serving" line on
//! stdout, never a sleep.
#![allow(dead_code, reason = "each test file uses a different part of the harness")]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long a server may take to print its ready line.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The real-shaped callback bodies kept in tests/fixtures/samples (see its INDEX.md).
pub fn sample(rel: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/samples").join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("sample {}: {e}", path.display()))
}

/// Compacts indented JSON into the one line OpenIM sends, with its trailing newline.
pub fn wire(json: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(json).expect("sample is JSON");
    format!("{}\n", serde_json::to_string(&v).unwrap())
}

/// A temporary policy directory.
pub struct PolicyDir {
    pub dir: tempfile::TempDir,
}

impl PolicyDir {
    /// An empty directory.
    pub fn new() -> PolicyDir {
        PolicyDir { dir: tempfile::tempdir().unwrap() }
    }

    /// A directory holding one policy file.
    pub fn with(name: &str, yaml: &str) -> PolicyDir {
        let d = PolicyDir::new();
        d.write(name, yaml);
        d
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a file in place (creating parent directories).
    pub fn write(&self, rel: &str, text: &str) {
        let path = self.dir.path().join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    /// Writes a file by write-to-temp-and-rename, as many editors and deploy tools do.
    pub fn write_and_rename(&self, rel: &str, text: &str) {
        let path = self.dir.path().join(rel);
        let tmp = self.dir.path().join(format!(".{rel}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(tmp, path).unwrap();
    }

    pub fn remove(&self, rel: &str) {
        std::fs::remove_file(self.dir.path().join(rel)).unwrap();
    }
}

/// A running `callgate serve`. Killed on drop.
pub struct Server {
    child: Child,
    /// `http://127.0.0.1:PORT` of the callback listener.
    pub base: String,
    /// `http://127.0.0.1:PORT` of the admin listener.
    pub admin: String,
    /// The policy version printed at start.
    pub version: String,
    log: PathBuf,
    data: PathBuf,
    _scratch: tempfile::TempDir,
    pub client: reqwest::Client,
}

impl Server {
    /// Starts a server on `policies` with extra flags.
    pub fn start(policies: &Path, extra: &[&str]) -> Server {
        Server::try_start(policies, extra).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts a server; returns its stderr if it exits or stalls before it is ready.
    pub fn try_start(policies: &Path, extra: &[&str]) -> Result<Server, String> {
        Server::spawn(policies, None, extra, &[])
    }

    /// Starts a server with extra environment variables.
    pub fn start_with_env(policies: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
        Server::spawn(policies, None, extra, env).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts a server whose records go to `data` (which outlives it), as for a restart.
    pub fn start_with_data(policies: &Path, data: &Path, extra: &[&str]) -> Server {
        Server::spawn_with_data(policies, data, extra).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Server::start_with_data`]; returns its stderr if it does not start.
    pub fn spawn_with_data(policies: &Path, data: &Path, extra: &[&str]) -> Result<Server, String> {
        Server::spawn(policies, Some(data), extra, &[])
    }

    /// Starts a server on the given callback and admin addresses (not random ports), with its
    /// records in `data`, as for an instance restarted where a load balancer expects it.
    pub fn start_on(policies: &Path, data: &Path, listen: &str, admin: &str, extra: &[&str]) -> Server {
        Server::launch(policies, Some(data), (listen, admin), extra, &[]).unwrap_or_else(|e| panic!("{e}"))
    }

    fn spawn(policies: &Path, data: Option<&Path>, extra: &[&str], env: &[(&str, &str)]) -> Result<Server, String> {
        Server::launch(policies, data, ("127.0.0.1:0", "127.0.0.1:0"), extra, env)
    }

    fn launch(
        policies: &Path,
        data: Option<&Path>,
        (listen, admin): (&str, &str),
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Server, String> {
        let scratch = tempfile::tempdir().unwrap();
        let log = scratch.path().join("stderr.log");
        let data = data.map_or_else(|| scratch.path().join("data"), Path::to_path_buf);
        let mut child = Command::new(env!("CARGO_BIN_EXE_callgate"))
            .arg("serve")
            .args(["--listen", listen, "--admin-listen", admin])
            .arg("--policies")
            .arg(policies)
            .arg("--data-dir")
            .arg(&data)
            .args(extra)
            .env_remove("CALLGATE_CONFIG")
            .env("CALLGATE_LOG", "debug")
            // Tests that stop a server do not wait out the drain; the drain tests set their own.
            .env("CALLGATE_SHUTDOWN_DELAY", "0s")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.contains("serving callbacks on") => {
                    let urls: Vec<&str> = line
                        .split_whitespace()
                        .filter(|w| w.starts_with("http://"))
                        .map(|w| w.trim_end_matches(';'))
                        .collect();
                    let version =
                        line.split("policy version ").nth(1).unwrap_or("").split(' ').next().unwrap_or("").to_string();
                    return Ok(Server {
                        child,
                        base: urls[0].to_string(),
                        admin: urls[1].to_string(),
                        version,
                        log,
                        data,
                        _scratch: scratch,
                        client: reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap(),
                    });
                }
                Ok(_) => continue,
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!(
                        "server did not start:\n{}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    ));
                }
            }
        }
    }

    /// The process id, for signals.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal to the server process.
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill").args(["-s", sig, &self.pid().to_string()]).status().unwrap();
        assert!(status.success());
    }

    /// The record directory.
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// Kills the process with SIGKILL, as a crash would, and waits for it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits for a clean exit; returns the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        self.signal("TERM");
        self.wait()
    }

    /// Waits for the process to exit (after a signal); returns the exit code.
    pub fn wait(&mut self) -> Option<i32> {
        self.child.wait().unwrap().code()
    }

    /// POSTs a Tencent callback with `query`; returns status and body text.
    pub async fn post_tencent(&self, query: &str, body: &str) -> (u16, String) {
        let resp = self
            .client
            .post(format!("{}/tencent?{query}", self.base))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    }

    /// Everything the server logged so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log holds `needle`; fails the test after `limit`.
    pub async fn wait_for_log(&self, needle: &str, limit: Duration) {
        wait_until(
            limit,
            async || self.logs().contains(needle),
            || format!("no `{needle}` in the log:\n{}", self.logs()),
        )
        .await;
    }

    /// POSTs `body` to `path` on the callback listener; returns status and body text.
    pub async fn post(&self, path: &str, body: &str) -> (u16, String) {
        post(self, path, body).await
    }

    /// GETs `path` on the admin listener as JSON.
    pub async fn admin_get(&self, path: &str) -> serde_json::Value {
        let resp = self.client.get(format!("{}{path}", self.admin)).send().await.unwrap();
        resp.json().await.unwrap()
    }

    /// The value of one unlabelled sample in `/metrics` (0 when absent), e.g.
    /// `metric("callgate_records_failed_total")`.
    pub async fn metric(&self, name: &str) -> f64 {
        let resp = self.client.get(format!("{}/metrics", self.admin)).send().await.unwrap();
        let text = resp.text().await.unwrap();
        let prefix = format!("{name} ");
        text.lines().find_map(|l| l.strip_prefix(&prefix)).and_then(|v| v.trim().parse().ok()).unwrap_or(0.0)
    }

    /// The sum of every sample of `name`, whatever its labels (0 when absent), e.g.
    /// `metric_sum("callgate_redis_errors_total")` over all reasons.
    pub async fn metric_sum(&self, name: &str) -> f64 {
        let resp = self.client.get(format!("{}/metrics", self.admin)).send().await.unwrap();
        let text = resp.text().await.unwrap();
        text.lines()
            .filter(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{')))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Polls `/metrics` until `name` reaches `at_least`; panics after `limit`.
    pub async fn wait_for_metric(&self, name: &str, at_least: f64, limit: Duration) {
        wait_until(limit, async || self.metric(name).await >= at_least, || format!("{name} is not {at_least}")).await;
    }

    /// The serving policy version, from `/v1/status`.
    pub async fn policy_version(&self) -> String {
        self.admin_get("/v1/status").await["policy_version"].as_str().unwrap().to_string()
    }

    /// Waits until the serving policy version differs from `old`, polling status.
    /// Returns the time it took. Panics after `limit`.
    pub async fn wait_for_new_version(&self, old: &str, limit: Duration) -> Duration {
        let started = Instant::now();
        let what = || format!("policy version still {old}; logs:\n{}", self.logs());
        wait_until(limit, async || self.policy_version().await != old, what).await;
        started.elapsed()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The exact allow answer.
pub const ALLOW: &str = r#"{"actionCode":0,"errCode":0,"errMsg":"","errDlt":"","nextCode":0}"#;

/// What a test talks HTTP to: a [`Server`] process or an [`InProcess`] server.
pub trait Endpoint {
    /// `http://IP:PORT` of the callback listener.
    fn base(&self) -> &str;
    /// `http://IP:PORT` of the admin listener.
    fn admin(&self) -> &str;
    fn client(&self) -> &reqwest::Client;
}

impl Endpoint for Server {
    fn base(&self) -> &str {
        &self.base
    }
    fn admin(&self) -> &str {
        &self.admin
    }
    fn client(&self) -> &reqwest::Client {
        &self.client
    }
}

impl Endpoint for InProcess {
    fn base(&self) -> &str {
        &self.base
    }
    fn admin(&self) -> &str {
        &self.admin
    }
    fn client(&self) -> &reqwest::Client {
        &self.client
    }
}

/// Sends `body` to `path` on the callback listener with OpenIM's headers.
pub async fn request(server: &impl Endpoint, method: reqwest::Method, path: &str, body: &str) -> reqwest::Response {
    server
        .client()
        .request(method, format!("{}{path}", server.base()))
        .header("content-type", "application/json; charset=utf-8")
        .header("operationID", "op-test")
        .body(body.to_string())
        .send()
        .await
        .unwrap()
}

/// POSTs `body` to `path` on the callback listener as OpenIM does; returns status and body.
pub async fn post(server: &impl Endpoint, path: &str, body: &str) -> (u16, String) {
    let resp = request(server, reqwest::Method::POST, path, body).await;
    (resp.status().as_u16(), resp.text().await.unwrap())
}

/// A server started in this test's process, as mini-redis's tests do: no binary, no stdout
/// to parse, stopped when dropped. For what needs a process — signals, SIGKILL, logs, CLI
/// output — use [`Server`].
pub struct InProcess {
    /// `http://IP:PORT` of the callback listener.
    pub base: String,
    /// `http://IP:PORT` of the admin listener.
    pub admin: String,
    pub client: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<callgate::server::Stop>>,
    _data: tempfile::TempDir,
}

impl InProcess {
    /// Serves `policies` on random loopback ports with `settings` (records in a temporary
    /// directory), in the current runtime.
    pub async fn start(policies: &Path, settings: callgate::config::Settings) -> InProcess {
        let data = tempfile::tempdir().unwrap();
        let config = callgate::config::Settings {
            listen: Some("127.0.0.1:0".into()),
            admin_listen: Some("127.0.0.1:0".into()),
            policies: Some(policies.to_path_buf()),
            data_dir: Some(data.path().to_path_buf()),
            ..settings
        }
        .resolve()
        .unwrap();
        let store = callgate::policy::PolicyStore::open(&config.policies).unwrap();
        let state = std::sync::Arc::new(callgate::server::State::from_config(&config, store, None).unwrap());
        let bound = callgate::server::bind(&config).await.unwrap();
        let (base, admin) = (format!("http://{}", bound.callbacks_addr), format!("http://{}", bound.admin_addr));
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let shutdown = async { stopped.await.unwrap_or(callgate::server::Stop::Now) };
        tokio::spawn(callgate::server::serve(bound, state, shutdown));
        let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
        InProcess { base, admin, client, stop: Some(stop), _data: data }
    }

    /// POSTs `body` to `path` on the callback listener; returns status and body text.
    pub async fn post(&self, path: &str, body: &str) -> (u16, String) {
        post(self, path, body).await
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(callgate::server::Stop::Now);
        }
    }
}

/// Polls `condition` (every 10 ms) until it holds; fails the test with `what()` after `limit`.
/// The one wait loop of the tests: readiness is checked, never slept for.
pub async fn wait_until(limit: Duration, mut condition: impl AsyncFnMut() -> bool, what: impl Fn() -> String) {
    let started = Instant::now();
    while !condition().await {
        assert!(started.elapsed() < limit, "after {limit:?}: {}", what());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits for `child` to exit, at most `limit`; past it, kills it and returns `None`.
pub fn wait_child(child: &mut std::process::Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// An OpenIM removal from a blocklist: `owner` removes `black`.
pub fn unblock(owner: &str, black: &str) -> String {
    format!(
        r#"{{"callbackCommand":"callbackAfterRemoveBlackCommand","ownerUserID":"{owner}","blackUserID":"{black}"}}"#
    )
}

/// A JSON object body of exactly `len` bytes (`{"pad":"aaa…"}`).
pub fn body_of_len(len: usize) -> String {
    let empty = r#"{"pad":""}"#;
    format!(r#"{{"pad":"{}"}}"#, "a".repeat(len - empty.len()))
}

/// Runs `callgate ARGS…` to its end.
pub fn run_callgate(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_callgate")).args(args).output().unwrap()
}

/// Exit code (-1 when killed by a signal) and stdout of `callgate ARGS…`.
pub fn callgate_stdout(args: &[&str]) -> (i32, String) {
    let out = run_callgate(args);
    (out.status.code().unwrap_or(-1), String::from_utf8(out.stdout).unwrap())
}

/// The repository's root, where Cargo.toml is.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The Tencent app ID the Tencent tests configure (`--tencent-app-id`).
pub const TENCENT_APP: &str = "1400000001";
/// The Tencent callback-authentication token the Tencent tests configure (`--tencent-token`).
pub const TENCENT_TOKEN: &str = "xxxxyyyy";
/// Tencent's acknowledgement, and a before-callback's "allow".
pub const TENCENT_OK: &str = r#"{"ActionStatus":"OK","ErrorCode":0,"ErrorInfo":""}"#;

/// Now, in Unix seconds, as `RequestTime` carries it.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// A query as Tencent sends it for `command` at `time`, signed with [`TENCENT_TOKEN`].
pub fn signed_query(command: &str, time: u64) -> String {
    let t = time.to_string();
    format!(
        "SdkAppid={TENCENT_APP}&CallbackCommand={command}&contenttype=json&ClientIP=203.0.113.7&OptPlatform=iOS&RequestTime={t}&Sign={}",
        callgate::protocol::tencent::sign(TENCENT_TOKEN, &t)
    )
}

/// The exact refusal answer for `code`, `msg`, `detail`.
pub fn refusal(code: i32, msg: &str, detail: &str) -> String {
    let q = |s: &str| serde_json::to_string(s).unwrap();
    format!(r#"{{"actionCode":0,"errCode":{code},"errMsg":{},"errDlt":{},"nextCode":1}}"#, q(msg), q(detail))
}

/// Runs `callgate events --data-dir DIR ARGS…` and returns the records as JSON values.
pub fn events(data: &Path, args: &[&str]) -> Vec<serde_json::Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_callgate"))
        .arg("events")
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "events failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// The files of [`RedisServer::start_tls`], written into `dir`: `ca.pem`, a CA made for the
/// test alone; `redis.crt`/`.key`, signed by it for `127.0.0.1` and `localhost`; and
/// `client.crt`/`.key`, a client certificate signed by it.
fn write_tls_files(dir: &Path) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
    // Each certificate gets its own name: OpenSSL (Redis) takes a certificate whose subject
    // is its issuer's for self-signed, and refuses it.
    let params = |names: &[&str], common_name: &str| {
        let mut params = CertificateParams::new(names.iter().map(ToString::to_string).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(DnType::CommonName, common_name);
        params
    };
    let mut ca_params = params(&[], "callgate test CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    for (name, names, common_name) in
        [("redis", &["127.0.0.1", "localhost"][..], "redis"), ("client", &["callgate"][..], "callgate")]
    {
        let key = KeyPair::generate().unwrap();
        let cert = params(names, common_name).signed_by(&key, &ca).unwrap();
        std::fs::write(dir.join(format!("{name}.crt")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
    }
}

/// A real `redis-server` on a random loopback port, with no persistence. Killed on drop.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    /// The TLS port, when started with [`RedisServer::start_tls`].
    pub tls_port: Option<u16>,
    /// Whether TLS clients must show a certificate signed by the CA.
    requires_client_cert: bool,
    /// Of a node of a Redis Cluster: the port of its cluster bus. Given, as redis-server
    /// otherwise takes the port 10,000 above its own and refuses to start on a port above
    /// 55535, which the kernel hands out.
    cluster_port: Option<u16>,
    _dir: tempfile::TempDir,
}

/// A port free on 127.0.0.1 just now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl RedisServer {
    /// Starts redis-server on a free port and waits until it answers PING.
    pub fn start() -> RedisServer {
        RedisServer::launch(false, false, false, tempfile::tempdir().unwrap())
    }

    /// Starts redis-server on free ports (a TLS port too with `has_tls`), with the options
    /// given, in `dir`. A port found free can be taken by another process before redis-server
    /// binds it (tests run in parallel); redis-server then exits, and is started again on
    /// other ports.
    fn launch(has_tls: bool, requires_client_cert: bool, is_cluster_node: bool, dir: tempfile::TempDir) -> RedisServer {
        let mut redis =
            RedisServer { child: None, port: 0, tls_port: None, requires_client_cert, cluster_port: None, _dir: dir };
        for _ in 0..5 {
            redis.port = free_port();
            redis.tls_port = has_tls.then(free_port);
            redis.cluster_port = is_cluster_node.then(free_port);
            if redis.try_start() {
                return redis;
            }
        }
        panic!("redis-server exited at start five times, on other ports each time");
    }

    /// Starts redis-server listening also with TLS on a second port, with a certificate for
    /// `127.0.0.1` and `localhost` signed by a CA made for this server alone
    /// ([`RedisServer::ca_file`]). The plain port stays open for the test's own commands.
    /// With `requires_client_cert`, TLS clients must show a certificate signed by that CA,
    /// as [`RedisServer::client_cert`] is.
    pub fn start_tls(requires_client_cert: bool) -> RedisServer {
        let dir = tempfile::tempdir().unwrap();
        write_tls_files(dir.path());
        RedisServer::launch(true, requires_client_cert, false, dir)
    }

    /// The PEM file of the CA that signed the TLS certificate.
    pub fn ca_file(&self) -> PathBuf {
        self._dir.path().join("ca.pem")
    }

    /// A client certificate and its key, signed by the CA.
    pub fn client_cert(&self) -> (PathBuf, PathBuf) {
        (self._dir.path().join("client.crt"), self._dir.path().join("client.key"))
    }

    /// `rediss://127.0.0.1:TLS_PORT`.
    pub fn tls_url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.tls_port.expect("started with start_tls"))
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port (empty) and waits until it answers.
    pub fn restart(&mut self) {
        assert!(self.try_start(), "redis-server exited at start on port {}", self.port);
    }

    /// Starts the server on its ports and waits until it answers; false if it exited first
    /// (its port taken).
    fn try_start(&mut self) -> bool {
        self.kill();
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self._dir.path())
            .args(self.tls_args())
            .args(match self.cluster_port {
                Some(port) => {
                    vec!["--cluster-enabled".to_string(), "yes".into(), "--cluster-port".into(), port.to_string()]
                }
                None => Vec::new(),
            })
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (.ci/run installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        while !self.answers_ping() {
            if self.child.as_mut().is_some_and(|c| c.try_wait().is_ok_and(|exited| exited.is_some())) {
                self.child = None;
                return false;
            }
            assert!(Instant::now() < deadline, "redis-server did not start on port {}", self.port);
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }

    fn tls_args(&self) -> Vec<String> {
        let Some(port) = self.tls_port else { return Vec::new() };
        let file = |name: &str| self._dir.path().join(name).display().to_string();
        vec![
            "--tls-port".into(),
            port.to_string(),
            "--tls-cert-file".into(),
            file("redis.crt"),
            "--tls-key-file".into(),
            file("redis.key"),
            "--tls-ca-cert-file".into(),
            file("ca.pem"),
            "--tls-auth-clients".into(),
            if self.requires_client_cert { "yes" } else { "no" }.into(),
            // A TLS cluster's nodes talk to each other, and tell clients where they are, on
            // their TLS ports.
            "--tls-cluster".into(),
            if self.cluster_port.is_some() { "yes" } else { "no" }.into(),
        ]
    }

    fn answers_ping(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else { return false };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        let mut buf = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

impl RedisServer {
    /// Sends one command (inline protocol) and returns the raw reply line, e.g. `:3`.
    pub fn command(&self, args: &[&str]) -> String {
        use std::io::{BufRead, Write};
        let stream = std::net::TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut writer = stream.try_clone().unwrap();
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        writer.write_all(req.as_bytes()).unwrap();
        let mut line = String::new();
        BufReader::new(stream).read_line(&mut line).unwrap();
        line.trim_end().to_string()
    }
}

/// A real Redis Cluster of three masters on random loopback ports (made by `redis-cli
/// --cluster create`, which comes with redis-server), no persistence. Killed on drop.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts the nodes, joins them, and waits until every node says the cluster is ok.
    pub fn start() -> RedisCluster {
        RedisCluster::create(false)
    }

    /// The same, with every node also listening with TLS (as [`RedisServer::start_tls`],
    /// all with certificates of one CA) and the nodes joined over TLS, so that the cluster
    /// tells clients its nodes' TLS ports. Clients need no certificate of their own.
    pub fn start_tls() -> RedisCluster {
        RedisCluster::create(true)
    }

    fn create(is_tls: bool) -> RedisCluster {
        let files = tempfile::tempdir().unwrap();
        if is_tls {
            write_tls_files(files.path());
        }
        let nodes: Vec<RedisServer> = (0..3)
            .map(|_| {
                let dir = tempfile::tempdir().unwrap();
                for file in std::fs::read_dir(files.path()).unwrap() {
                    let file = file.unwrap();
                    std::fs::copy(file.path(), dir.path().join(file.file_name())).unwrap();
                }
                RedisServer::launch(is_tls, false, true, dir)
            })
            .collect();
        let addrs: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.tls_port.unwrap_or(n.port))).collect();
        let ca = files.path().join("ca.pem");
        let tls_args = if is_tls { vec!["--tls".into(), "--cacert".into(), ca.display().to_string()] } else { vec![] };
        let out = Command::new("redis-cli")
            .args(tls_args)
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli must be installed (it comes with redis-server)");
        assert!(out.status.success(), "redis-cli --cluster create: {}", String::from_utf8_lossy(&out.stdout));
        let cluster = RedisCluster { nodes };
        cluster.wait_until_ok();
        cluster
    }

    /// Starts every node again (emptied of data, but on the same ports and keeping its
    /// cluster configuration) and waits until the cluster is ok.
    pub fn restart(&mut self) {
        for node in &mut self.nodes {
            node.restart();
        }
        self.wait_until_ok();
    }

    fn wait_until_ok(&self) {
        let deadline = Instant::now() + START_TIMEOUT;
        for node in &self.nodes {
            while !self.cli(node.port, &["CLUSTER", "INFO"]).contains("cluster_state:ok") {
                assert!(Instant::now() < deadline, "the cluster did not come up");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// `redis://127.0.0.1:PORT` of the first node.
    pub fn url(&self) -> String {
        self.nodes[0].url()
    }

    /// `rediss://127.0.0.1:TLS_PORT` of the first node, of a cluster made by
    /// [`RedisCluster::start_tls`].
    pub fn tls_url(&self) -> String {
        self.nodes[0].tls_url()
    }

    /// Waits up to 10 s until callgate's record stream in the cluster holds `len` records.
    pub async fn wait_for_records(&self, len: usize) {
        let started = Instant::now();
        while self.cli(self.nodes[0].port, &["XLEN", "callgate:records"]) != len.to_string() {
            assert!(started.elapsed() < Duration::from_secs(10), "records did not reach the stream in the cluster");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Runs a command with `redis-cli -c` (following the cluster's redirections) on the node
    /// at `port`; returns its output.
    pub fn cli(&self, port: u16, args: &[&str]) -> String {
        let out = Command::new("redis-cli").args(["-c", "-p", &port.to_string()]).args(args).output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

/// A TCP proxy in front of a server that delays every byte by `one_way` in each direction,
/// as a network with a round trip of twice that would: bytes are timed as they arrive and
/// passed on when due, so requests sent together (pipelined, or concurrent on one
/// connection) share their round trip and requests sent one after another pay one each.
/// [`LatencyProxy::hang`] holds the server's answers back, as a hung server or a network
/// that drops packets would. Stops with the runtime it was started in.
pub struct LatencyProxy {
    pub port: u16,
    hung: tokio::sync::watch::Sender<bool>,
}

impl LatencyProxy {
    /// Listens on a free port, forwarding each connection to `127.0.0.1:upstream`.
    pub async fn start(upstream: u16, one_way: Duration) -> LatencyProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (hung, is_hung) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await else { continue };
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                let never_hung = tokio::sync::watch::channel(false).1;
                tokio::spawn(delayed_copy(client_read, server_write, one_way, never_hung));
                tokio::spawn(delayed_copy(server_read, client_write, one_way, is_hung.clone()));
            }
        });
        LatencyProxy { port, hung }
    }

    /// `redis://127.0.0.1:PORT` of the proxy.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// From now on, the server's answers are held back (connections stay open and requests
    /// still reach it), until [`LatencyProxy::answer`].
    pub fn hang(&self) {
        self.hung.send_replace(true);
    }

    /// Passes the server's answers on again, those held back first.
    pub fn answer(&self) {
        self.hung.send_replace(false);
    }
}

/// Copies `from` to `to`, each chunk `delay` after it was read and not while `is_hung`;
/// stops when either side closes.
async fn delayed_copy(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
    mut is_hung: tokio::sync::watch::Receiver<bool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (chunks, mut due) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let writer = tokio::spawn(async move {
        while let Some((at, chunk)) = due.recv().await {
            tokio::time::sleep_until(at).await;
            if is_hung.wait_for(|hung| !hung).await.is_err() || to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    });
    let mut buf = vec![0u8; 64 * 1024];
    while let Ok(n @ 1..) = from.read(&mut buf).await {
        if chunks.send((tokio::time::Instant::now() + delay, buf[..n].to_vec())).is_err() {
            break;
        }
    }
    drop(chunks);
    let _ = writer.await;
}
