#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests: a failure should panic")]
//! The files in deploy/ against the real binary, so they cannot rot: the example config
//! names every setting and starts a server, the Kubernetes manifest's ConfigMap is the
//! shipped policy set and serves as the kubelet mounts it, with the Deployment's settings,
//! the systemd unit passes only real flags, and the alert rules watch metrics the server
//! exports.

mod common;

use std::collections::BTreeSet;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use serde::Deserialize;
use serde_yaml_ng::Value;

const STAFF_BLOCK: &str =
    r#"{"callbackCommand":"callbackBeforeAddBlackCommand","ownerUserID":"u_1","blackUserID":"admin_2"}"#;

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn staff_refusal() -> String {
    refusal(20003, "staff accounts cannot be blocked", "")
}

/// The `serve --help` text of the binary under test.
fn serve_help() -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_callgate")).args(["serve", "--help"]).output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

/// Every long flag of `serve`, without `--`, `--config` and `--help`.
fn serve_flags() -> BTreeSet<String> {
    serve_help()
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("--"))
        .map(|l| l.split([' ', '<', '[']).next().unwrap().to_string())
        .filter(|f| f != "config" && f != "help")
        .collect()
}

/// Every environment variable `serve` reads, as its help lists them.
fn serve_env_vars() -> BTreeSet<String> {
    serve_help()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("[env: "))
        .map(|l| l.split(['=', ']']).next().unwrap().to_string())
        .collect()
}

/// The setting a line of the example config sets, commented out (`# key: …`) or not.
fn setting_of(line: &str) -> Option<&str> {
    let line = line.strip_prefix("# ").unwrap_or(line);
    let (key, _) = line.split_once(':')?;
    (!key.is_empty() && key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')).then_some(key)
}

/// Waits until `/readyz` (open even with an admin token) shows a version other than `old`.
async fn wait_for_ready_version(server: &Server, old: &str) {
    let started = Instant::now();
    loop {
        let ready = server.admin_get("/readyz").await;
        if ready["policy_version"].as_str().unwrap() != old {
            return;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "still {old}; logs:\n{}", server.logs());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn the_example_config_starts_a_server() {
    let example = repo("deploy/callgate.example.yaml");
    let server = Server::start(&repo("policies"), &["--config", example.to_str().unwrap()]);
    let ready = server.admin_get("/readyz").await;
    assert_eq!(ready["status"], "ready");
    assert_eq!(ready["policy_version"], server.version.as_str());
    assert_eq!(server.post("/openim/callbackBeforeAddBlackCommand", STAFF_BLOCK).await, (200, staff_refusal()));
    // The example sets `log_format: json`: the file was read, under the flags given.
    let logs = server.logs();
    let first = logs.lines().next().unwrap();
    assert!(serde_json::from_str::<serde_json::Value>(first).is_ok(), "not a JSON log line: {first}");
}

#[tokio::test]
async fn the_example_config_names_every_setting_once_each_with_a_valid_value() {
    let text = read("deploy/callgate.example.yaml");
    let keys: Vec<&str> = text.lines().filter_map(setting_of).collect();
    let unique: BTreeSet<String> = keys.iter().map(ToString::to_string).collect();
    assert_eq!(unique.len(), keys.len(), "a setting appears twice: {keys:?}");
    let flags: BTreeSet<String> = serve_flags().iter().map(|f| f.replace('-', "_")).collect();
    assert_eq!(unique, flags, "the example config and `callgate serve --help` disagree");

    // Every commented setting taken in: each key is known and each example value valid.
    let all: Vec<&str> =
        text.lines().map(|l| if setting_of(l).is_some() { l.trim_start_matches("# ") } else { l }).collect();
    let dir = PolicyDir::new();
    // TLS files go with a rediss:// URL and must exist: the example's paths become files
    // made here, and its URL the TLS form of the example's.
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    dir.write("redis.crt", &made.cert.pem());
    dir.write("redis.key", &made.signing_key.serialize_pem());
    let file = |name: &str| dir.path().join(name).display().to_string();
    let all: Vec<String> = all
        .iter()
        .map(|l| match setting_of(l) {
            Some(key @ ("redis_ca_file" | "redis_client_cert")) => format!("{key}: {}", file("redis.crt")),
            Some("redis_client_key") => format!("redis_client_key: {}", file("redis.key")),
            Some("redis_url") => l.replace("redis://", "rediss://"),
            _ => l.to_string(),
        })
        .collect();
    dir.write("callgate.yaml", &all.join("\n"));
    let config = dir.path().join("callgate.yaml");
    let server = Server::try_start(&repo("policies"), &["--config", config.to_str().unwrap()])
        .unwrap_or_else(|e| panic!("the example with every setting uncommented does not start: {e}"));
    assert_eq!(server.admin_get("/readyz").await["status"], "ready");
}

/// The documents of deploy/kubernetes.yaml, by kind and name.
struct Manifest {
    docs: Vec<Value>,
}

impl Manifest {
    fn load() -> Manifest {
        let text = read("deploy/kubernetes.yaml");
        let docs = serde_yaml_ng::Deserializer::from_str(&text)
            .map(|doc| Value::deserialize(doc).unwrap())
            .filter(|doc| !doc.is_null())
            .collect();
        Manifest { docs }
    }

    fn get(&self, kind: &str, name: &str) -> &Value {
        self.docs
            .iter()
            .find(|d| d["kind"].as_str() == Some(kind) && d["metadata"]["name"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("no {kind} {name} in deploy/kubernetes.yaml"))
    }
}

fn str_of(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v:?}"))
}

/// Lays out `files` (path → text) as the kubelet mounts a ConfigMap volume: the files in a
/// timestamped directory, `..data` pointing at it, and a symlink through `..data` for each
/// top-level name. Returns the generation's name.
fn kubelet_stage(dir: &PolicyDir, generation: u32, files: &[(String, String)]) -> String {
    let name = format!("..2026_11_22_00_00_00.{generation}");
    for (path, text) in files {
        dir.write(&format!("{name}/{path}"), text);
    }
    name
}

fn kubelet_mount(files: &[(String, String)]) -> PolicyDir {
    let dir = PolicyDir::new();
    let generation = kubelet_stage(&dir, 1, files);
    symlink(&generation, dir.path().join("..data")).unwrap();
    let tops: BTreeSet<&str> = files.iter().map(|(p, _)| p.split('/').next().unwrap()).collect();
    for top in tops {
        symlink(format!("..data/{top}"), dir.path().join(top)).unwrap();
    }
    dir
}

/// A ConfigMap update: a new generation, then one atomic rename of `..data`.
fn kubelet_swap(dir: &PolicyDir, files: &[(String, String)]) {
    let generation = kubelet_stage(dir, 2, files);
    let tmp = dir.path().join("..data_tmp");
    symlink(&generation, &tmp).unwrap();
    std::fs::rename(&tmp, dir.path().join("..data")).unwrap();
}

#[tokio::test]
async fn the_kubernetes_manifest_serves_the_shipped_policies_as_a_pod_would() {
    let manifest = Manifest::load();
    let config_map = manifest.get("ConfigMap", "callgate-policies");
    let pod = &manifest.get("Deployment", "callgate")["spec"]["template"]["spec"];
    let container = &pod["containers"][0];

    // The ConfigMap holds the shipped policy set, and the volume mounts every key at the
    // path the shipped policy files use.
    let volume = pod["volumes"].as_sequence().unwrap().iter().find(|v| v["name"] == "policies").unwrap();
    assert_eq!(str_of(&volume["configMap"]["name"]), "callgate-policies");
    let data = &config_map["data"];
    let items = volume["configMap"]["items"].as_sequence().unwrap();
    assert_eq!(
        items.len(),
        data.as_mapping().unwrap().len(),
        "every ConfigMap key needs an item, or it is not mounted"
    );
    let files: Vec<(String, String)> = items
        .iter()
        .map(|item| {
            let (key, path) = (str_of(&item["key"]), str_of(&item["path"]));
            let text = str_of(&data[key]).to_string();
            assert_eq!(text, read(&format!("policies/{path}")), "ConfigMap key {key} is not policies/{path}");
            (path.to_string(), text)
        })
        .collect();

    // The Deployment's settings are real; the secrets get test values (no Redis here).
    let known = serve_env_vars();
    let mut env: Vec<(String, String)> = Vec::new();
    for var in container["env"].as_sequence().unwrap() {
        let name = str_of(&var["name"]);
        assert!(known.contains(name), "{name} is not a setting of `callgate serve`");
        let value = match (&var["value"], &var["valueFrom"]["secretKeyRef"]["key"]) {
            (Value::String(v), _) => v.clone(),
            (_, Value::String(key)) => format!("test-{key}"),
            other => panic!("{name}: {other:?}"),
        };
        if name != "CALLGATE_REDIS_URL" {
            env.push((name.to_string(), value));
        }
    }
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();

    let mounted = kubelet_mount(&files);
    // Flags beat the Deployment's env: loopback ports, temp dirs, and this test's address.
    let server = Server::start_with_env(mounted.path(), &["--allow-source", "127.0.0.1"], &env);

    // The probes need no admin token; everything else on the admin port does.
    for probe in ["readinessProbe", "livenessProbe"] {
        assert_eq!(str_of(&container[probe]["httpGet"]["port"]), "admin");
        let path = str_of(&container[probe]["httpGet"]["path"]);
        let resp = server.client.get(format!("{}{path}", server.admin)).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 200, "{probe} {path}");
    }
    let status = server.client.get(format!("{}/v1/status", server.admin)).send().await.unwrap();
    assert_eq!(status.status().as_u16(), 401);

    let path = "/openim/test-openim-path-token/callbackBeforeAddBlackCommand";
    assert_eq!(server.post(path, STAFF_BLOCK).await, (200, staff_refusal()));
    assert_eq!(server.post("/openim/callbackBeforeAddBlackCommand", STAFF_BLOCK).await.0, 403);

    // An edit of the list file in the ConfigMap goes live with the kubelet's swap.
    let edited: Vec<(String, String)> = files
        .iter()
        .map(|(p, t)| (p.clone(), if p == "lists/staff.txt" { t.replace("admin_2\n", "") } else { t.clone() }))
        .collect();
    assert_ne!(edited, files);
    kubelet_swap(&mounted, &edited);
    wait_for_ready_version(&server, &server.version).await;
    assert_eq!(server.post(path, STAFF_BLOCK).await, (200, ALLOW.to_string()));
}

/// How long callgate waits, after it stops accepting, for requests in flight (`DRAIN_FOR` in
/// src/server/listen.rs, read from the source so that the two cannot drift apart).
fn in_flight_limit() -> Duration {
    let source = read("src/server/listen.rs");
    let secs = source
        .lines()
        .find_map(|l| l.strip_prefix("const DRAIN_FOR: Duration = Duration::from_secs("))
        .and_then(|rest| rest.strip_suffix(");"))
        .expect("src/server/listen.rs defines `const DRAIN_FOR: Duration = Duration::from_secs(N);`");
    Duration::from_secs(secs.parse().unwrap())
}

/// The plain value of an env variable of a container, if it sets one.
fn env_value<'a>(container: &'a Value, name: &str) -> Option<&'a str> {
    container["env"].as_sequence()?.iter().find(|v| v["name"].as_str() == Some(name))?["value"].as_str()
}

/// What keeps OpenIM's callbacks answered while pods come and go: enough replicas, a rolling
/// update that adds a pod before removing one, a disruption budget over the same pods, and
/// a drain (CALLGATE_SHUTDOWN_DELAY) that the grace period leaves room for.
#[test]
fn the_kubernetes_manifest_keeps_callbacks_answered_while_pods_are_replaced() {
    let manifest = Manifest::load();
    let deployment = manifest.get("Deployment", "callgate");
    let spec = &deployment["spec"];
    let pod = &spec["template"]["spec"];
    let container = &pod["containers"][0];

    let replicas = spec["replicas"].as_u64().unwrap();
    assert!(replicas >= 2, "{replicas} replica(s): a restart or a node drain leaves nothing to answer");
    assert_eq!(spec["strategy"]["type"].as_str(), Some("RollingUpdate"));
    assert_eq!(
        spec["strategy"]["rollingUpdate"]["maxUnavailable"].as_u64(),
        Some(0),
        "start a pod before stopping one"
    );

    // The budget covers exactly the Deployment's pods and lets a node drain proceed one pod
    // at a time (minAvailable == replicas would block every drain).
    let budget = manifest.get("PodDisruptionBudget", "callgate");
    let labels = &spec["selector"]["matchLabels"];
    assert_eq!(&budget["spec"]["selector"]["matchLabels"], labels);
    assert_eq!(&spec["template"]["metadata"]["labels"], labels);
    let min_available = budget["spec"]["minAvailable"].as_u64().expect("minAvailable as a number");
    assert!((1..replicas).contains(&min_available), "minAvailable {min_available} of {replicas} replicas");

    // The drain: set explicitly, and shorter than the grace period by more than the time
    // requests in flight may still take after it.
    let delay = env_value(container, "CALLGATE_SHUTDOWN_DELAY").expect("CALLGATE_SHUTDOWN_DELAY is set explicitly");
    let delay = callgate::duration::parse(delay).unwrap();
    let grace = Duration::from_secs(pod["terminationGracePeriodSeconds"].as_u64().unwrap());
    assert!(
        grace > delay + in_flight_limit(),
        "terminationGracePeriodSeconds {grace:?} must exceed the shutdown delay {delay:?} + {:?} for requests in flight",
        in_flight_limit()
    );

    // Readiness on /readyz (503 from SIGTERM on), checked often, on the admin port; the drain
    // outlasts the time the probe takes to see it.
    let readiness = &container["readinessProbe"];
    assert_eq!(str_of(&readiness["httpGet"]["path"]), "/readyz");
    assert_eq!(str_of(&readiness["httpGet"]["port"]), "admin");
    let period = readiness["periodSeconds"].as_u64().unwrap();
    let failures = readiness["failureThreshold"].as_u64().unwrap_or(3);
    assert!(period <= 5, "readiness every {period} s");
    assert!(delay >= Duration::from_secs(2 * period * failures), "the drain ends before readiness fails");

    // A preStop hook, if any, must not run a program: the image need not have one.
    if let Some(pre_stop) = container["lifecycle"]["preStop"].as_mapping() {
        assert!(!pre_stop.contains_key("exec"), "preStop runs a command the image may not have: {pre_stop:?}");
    }
}

#[test]
fn the_systemd_unit_passes_real_flags_and_matches_the_example_config() {
    let unit = read("deploy/callgate.service");
    let value = |key: &str| {
        unit.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("no {key}= in deploy/callgate.service"))
            .to_string()
    };
    let exec = value("ExecStart");
    let mut words = exec.split_whitespace().skip(1);
    assert_eq!(words.next(), Some("serve"));
    let flags = serve_flags();
    let mut config = None;
    while let Some(word) = words.next() {
        let flag = word.strip_prefix("--").unwrap_or_else(|| panic!("`{word}` in ExecStart is not a flag"));
        if flag == "config" {
            config = words.next();
        } else {
            assert!(flags.contains(flag), "--{flag} in ExecStart is not a flag of `callgate serve`");
        }
    }
    // The example config, installed as the unit's config file, points at the unit's dirs.
    let config = config.expect("ExecStart passes --config");
    assert_eq!(config, format!("/etc/{}/callgate.yaml", value("ConfigurationDirectory")));
    let example = read("deploy/callgate.example.yaml");
    let setting = |key: &str| example.lines().find_map(|l| l.strip_prefix(&format!("{key}: "))).unwrap().to_string();
    assert_eq!(setting("policies"), format!("/etc/{}/policies", value("ConfigurationDirectory")));
    assert_eq!(setting("data_dir"), format!("/var/lib/{}", value("StateDirectory")));
    assert_eq!(value("WorkingDirectory"), setting("data_dir"));
}

/// The metric names in `expr`, without a histogram's `_bucket`/`_sum`/`_count` suffix, each
/// with whether it stands directly inside `increase(` (its first event must be seen).
fn rule_metrics(expr: &str) -> Vec<(String, bool)> {
    let mut found = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("callgate_") {
        let name: String =
            rest[at..].chars().take_while(|c| c.is_ascii_lowercase() || *c == '_' || c.is_ascii_digit()).collect();
        let in_increase = rest[..at].ends_with("increase(");
        let base = ["_bucket", "_sum", "_count"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(&name);
        found.push((base.to_string(), in_increase));
        rest = &rest[at + name.len()..];
    }
    found
}

/// Every alert in deploy/prometheus-rules.yaml names metrics a real server exports, and each
/// counter an `increase()` watches is exported at 0 before anything happened, so the first
/// failure moves it.
#[tokio::test]
async fn the_alert_rules_watch_metrics_the_server_exports() {
    let rules: Value = serde_yaml_ng::from_str(&read("deploy/prometheus-rules.yaml")).unwrap();
    let mut names = Vec::new();
    for group in rules["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            assert!(rule["alert"].as_str().is_some_and(|a| a.starts_with("Callgate")), "{rule:?}");
            assert!(rule["labels"]["severity"].as_str().is_some(), "{rule:?}");
            names.extend(rule_metrics(str_of(&rule["expr"])));
        }
    }
    assert!(names.len() >= 9, "{names:?}");
    let redis = RedisServer::start();
    let url = redis.url();
    let server = Server::start(&repo("policies"), &["--redis-url", &url]);
    let scrape =
        || async { server.client.get(format!("{}/metrics", server.admin)).send().await.unwrap().text().await.unwrap() };
    let exported = |text: &str, name: &str| text.lines().any(|l| l.starts_with(&format!("# TYPE {name} ")));
    let at_start = scrape().await;
    for (name, in_increase) in &names {
        assert!(!in_increase || exported(&at_start, name), "`{name}` is not exported at start-up:\n{at_start}");
    }
    // The rest appear with their first event: a decision, a bad callback of each kind.
    assert_eq!(server.post("/openim/callbackBeforeAddBlackCommand", STAFF_BLOCK).await.0, 200);
    assert_eq!(server.post("/openim/callbackBeforeAddBlackCommand", "not json").await.0, 400);
    assert_eq!(server.post_tencent("CallbackCommand=Sns.CallbackBlackListDelete", "{}").await.0, 400);
    let after = scrape().await;
    for (name, _) in &names {
        assert!(exported(&after, name), "`{name}` is not exported:\n{after}");
    }
}
