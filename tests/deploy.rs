#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests: a failure should panic")]
//! The files in deploy/ against the real binary, so they cannot rot: the example config
//! names every setting and starts a server, the Kubernetes manifest's ConfigMap is the
//! shipped policy set and serves as the kubelet mounts it, with the Deployment's settings,
//! the systemd unit passes only real flags, the alert rules and the Grafana dashboard watch
//! metrics the server exports, and the Dockerfile (which no container engine builds here)
//! names callgate's settings, ports and paths as the manifest does, its health check follows
//! readiness, and the binary needs no library its Debian base lacks.

mod common;

use std::collections::BTreeSet;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::time::Duration;

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
    common::wait_until(
        Duration::from_secs(5),
        async || server.admin_get("/readyz").await["policy_version"].as_str().unwrap() != old,
        || format!("still {old}; logs:\n{}", server.logs()),
    )
    .await;
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
    let (at_start, after) = scrapes_before_and_after_first_events().await;
    for (name, in_increase) in &names {
        assert!(!in_increase || exported(&at_start, name), "`{name}` is not exported at start-up:\n{at_start}");
    }
    for (name, _) in &names {
        assert!(exported(&after, name), "`{name}` is not exported:\n{after}");
    }
}

/// Whether the metrics `text` declares `name`.
fn exported(text: &str, name: &str) -> bool {
    text.lines().any(|l| l.starts_with(&format!("# TYPE {name} ")))
}

/// `/metrics` of a server with Redis (the shipped policies), at start and after its first
/// events: a decision, a dry-run hit, a bad OpenIM and a bad Tencent callback.
async fn scrapes_before_and_after_first_events() -> (String, String) {
    let redis = RedisServer::start();
    let url = redis.url();
    let server = Server::start(&repo("policies"), &["--redis-url", &url]);
    let scrape =
        || async { server.client.get(format!("{}/metrics", server.admin)).send().await.unwrap().text().await.unwrap() };
    let at_start = scrape().await;
    assert_eq!(server.post("/openim/callbackBeforeAddBlackCommand", STAFF_BLOCK).await.0, 200);
    // `trial-no-unblock-of-unverified` is in dry run: it would deny a guest's unblock.
    assert_eq!(server.post("/openim/callbackAfterRemoveBlackCommand", &unblock("u_1", "guest_1")).await.1, ALLOW);
    assert_eq!(server.post("/openim/callbackBeforeAddBlackCommand", "not json").await.0, 400);
    assert_eq!(server.post_tencent("CallbackCommand=Sns.CallbackBlackListDelete", "{}").await.0, 400);
    (at_start, scrape().await)
}

/// deploy/grafana-dashboard.json is a dashboard Grafana imports (unique panel ids, panels
/// inside the 24-column grid, every query on the `datasource` variable), and every metric it
/// queries is exported by a real server.
#[tokio::test]
async fn the_grafana_dashboard_queries_metrics_the_server_exports() {
    let dashboard: serde_json::Value = serde_json::from_str(&read("deploy/grafana-dashboard.json")).unwrap();
    assert_eq!(dashboard["uid"], "callgate");
    let panels = dashboard["panels"].as_array().unwrap();
    let mut ids = BTreeSet::new();
    let mut queries = Vec::new();
    for panel in panels {
        assert!(ids.insert(panel["id"].as_u64().unwrap()), "panel id repeated: {panel}");
        let grid = &panel["gridPos"];
        assert!(grid["x"].as_u64().unwrap() + grid["w"].as_u64().unwrap() <= 24, "{panel}");
        if panel["type"] == "row" {
            continue;
        }
        assert!(panel["title"].as_str().is_some_and(|t| !t.is_empty()), "{panel}");
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{panel}");
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{panel}");
        for target in targets {
            queries.push(target["expr"].as_str().unwrap().to_string());
        }
    }
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        if let Some(query) = variable["query"]["query"].as_str() {
            queries.push(query.to_string());
        }
    }
    let names: BTreeSet<String> = queries.iter().flat_map(|q| rule_metrics(q)).map(|(name, _)| name).collect();
    // Decisions, dry runs, latency, reloads, Redis, records, bad and forbidden requests.
    for needed in [
        "callgate_decisions_total",
        "callgate_dry_run_hits_total",
        "callgate_decision_seconds",
        "callgate_policy_reloads_total",
        "callgate_redis_errors_total",
        "callgate_redis_circuit_open",
        "callgate_records_failed_total",
        "callgate_bad_requests_total",
        "callgate_forbidden_total",
    ] {
        assert!(names.contains(needed), "the dashboard does not show `{needed}`: {names:?}");
    }
    let (_, after) = scrapes_before_and_after_first_events().await;
    for name in &names {
        assert!(exported(&after, name), "`{name}` is not exported:\n{after}");
    }
}

/// The instructions of the Dockerfile's final stage (or of `stage`, by `AS` name), in order,
/// as (KEYWORD, arguments): continuation lines joined, comments dropped.
fn dockerfile_stage(stage: Option<&str>) -> Vec<(String, String)> {
    let mut all: Vec<(String, String)> = Vec::new();
    let mut current = String::new();
    for line in read("Dockerfile").lines() {
        let line = line.trim();
        if current.is_empty() && (line.is_empty() || line.starts_with('#')) {
            continue;
        }
        if let Some(head) = line.strip_suffix('\\') {
            current.push_str(head.trim_end());
            current.push(' ');
            continue;
        }
        current.push_str(line);
        let (keyword, args) = current.split_once(' ').unwrap_or((&current, ""));
        all.push((keyword.to_uppercase(), args.trim().to_string()));
        current.clear();
    }
    let starts: Vec<usize> = all.iter().enumerate().filter(|(_, (k, _))| k == "FROM").map(|(i, _)| i).collect();
    let start = match stage {
        None => *starts.last().expect("a FROM"),
        Some(name) => *starts
            .iter()
            .find(|i| all[**i].1.ends_with(&format!(" AS {name}")))
            .unwrap_or_else(|| panic!("no stage {name}")),
    };
    let end = starts.iter().find(|i| **i > start).copied().unwrap_or(all.len());
    all[start..end].to_vec()
}

/// The arguments of every `keyword` instruction of `stage`.
fn instructions<'a>(stage: &'a [(String, String)], keyword: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    stage.iter().filter(move |(k, _)| k == keyword).map(|(_, a)| a.as_str())
}

/// A JSON-array (exec form) argument.
fn exec_form(args: &str) -> Vec<String> {
    serde_json::from_str(args).unwrap_or_else(|e| panic!("not an exec-form array: {args}: {e}"))
}

/// The image's environment: every `ENV KEY=VALUE` of the final stage.
fn image_env(stage: &[(String, String)]) -> Vec<(String, String)> {
    instructions(stage, "ENV")
        .flat_map(str::split_whitespace)
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or_else(|| panic!("ENV {pair}: write KEY=VALUE"));
            (k.to_string(), v.to_string())
        })
        .collect()
}

fn port_of(addr: &str) -> u16 {
    addr.parse::<std::net::SocketAddr>().unwrap_or_else(|e| panic!("{addr}: {e}")).port()
}

/// The HEALTHCHECK's command line, and its `--timeout`.
fn healthcheck(stage: &[(String, String)]) -> (Vec<String>, Duration) {
    let args = instructions(stage, "HEALTHCHECK").next().expect("a HEALTHCHECK");
    let (options, cmd) = args.split_once("CMD ").unwrap();
    let timeout = options
        .split_whitespace()
        .find_map(|o| o.strip_prefix("--timeout="))
        .map(|t| callgate::duration::parse(t).unwrap())
        .expect("HEALTHCHECK --timeout=");
    (exec_form(cmd.trim()), timeout)
}

/// Runs the HEALTHCHECK command as Docker would in the container, with the image's
/// environment and `admin` as the admin address; returns whether it passed.
fn run_healthcheck(stage: &[(String, String)], admin: &str) -> bool {
    let (cmd, timeout) = healthcheck(stage);
    let mut child = std::process::Command::new(&cmd[0])
        .args(&cmd[1..])
        .envs(image_env(stage))
        .env("CALLGATE_ADMIN_LISTEN", admin)
        .spawn()
        .unwrap();
    common::wait_child(&mut child, timeout).is_some_and(|status| status.success())
}

/// Every path, port and variable the Dockerfile names is callgate's and the manifest's.
#[test]
fn the_dockerfile_agrees_with_callgate_and_the_kubernetes_manifest() {
    let build = dockerfile_stage(Some("build"));
    let runtime = dockerfile_stage(None);
    let manifest = Manifest::load();
    let pod = &manifest.get("Deployment", "callgate")["spec"]["template"]["spec"];
    let container = &pod["containers"][0];

    // The builder's Rust is at least the crate's rust-version; the runtime is the builder's
    // Debian release, so its glibc is the one the binary was linked against.
    let builder = build[0].1.split_whitespace().next().unwrap().to_string();
    let (rust, release) = builder.strip_prefix("rust:").unwrap().split_once('-').unwrap();
    let minimum = read("Cargo.toml")
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = \"")?.strip_suffix('"').map(str::to_string))
        .unwrap();
    let version = |v: &str| v.split('.').map(|n| n.parse::<u32>().unwrap()).collect::<Vec<_>>();
    assert!(version(rust) >= version(&minimum), "builder {builder}, rust-version {minimum}");
    let base = runtime[0].1.as_str();
    assert_eq!(base, format!("debian:{release}-slim"), "the runtime is not the builder's Debian release");
    assert!(instructions(&build, "RUN").any(|r| r.contains("cargo build --release --locked")));

    // The binary is where the image runs it and where the manifest runs it.
    let copied = instructions(&runtime, "COPY")
        .find(|c| c.starts_with("--from=build "))
        .and_then(|c| c.split_whitespace().last())
        .unwrap()
        .to_string();
    let mut command = exec_form(instructions(&runtime, "ENTRYPOINT").next().unwrap());
    command.extend(exec_form(instructions(&runtime, "CMD").next().unwrap()));
    assert_eq!(command[0], copied);
    assert_eq!(copied, "/usr/local/bin/callgate");
    let manifest_command: Vec<&str> = container["command"].as_sequence().unwrap().iter().map(str_of).collect();
    assert_eq!(command, manifest_command);

    // Settings: real ones, the manifest's values, and no secret baked in.
    let env = image_env(&runtime);
    let known = serve_env_vars();
    let get = |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str()).unwrap();
    for (name, value) in &env {
        assert!(known.contains(name), "ENV {name} is not a setting of `callgate serve`");
        assert_ne!(name, "CALLGATE_ADMIN_TOKEN", "a token baked into the image");
        if let Some(theirs) = env_value(container, name) {
            assert_eq!(value, theirs, "{name}: the image and deploy/kubernetes.yaml disagree");
        }
    }

    // Ports: the defaults' ports, on all interfaces, exposed, and the manifest's.
    let (callbacks, admin) = (port_of(get("CALLGATE_LISTEN")), port_of(get("CALLGATE_ADMIN_LISTEN")));
    assert_eq!(callbacks, port_of(callgate::config::DEFAULT_LISTEN));
    assert_eq!(admin, port_of(callgate::config::DEFAULT_ADMIN_LISTEN));
    for var in ["CALLGATE_LISTEN", "CALLGATE_ADMIN_LISTEN"] {
        assert!(get(var).starts_with("0.0.0.0:"), "{var}: a container must listen on all interfaces");
    }
    let exposed: BTreeSet<u16> =
        instructions(&runtime, "EXPOSE").flat_map(str::split_whitespace).map(|p| p.parse().unwrap()).collect();
    assert_eq!(exposed, BTreeSet::from([callbacks, admin]));
    let ports = container["ports"].as_sequence().unwrap();
    let port = |name: &str| ports.iter().find(|p| p["name"] == name).unwrap()["containerPort"].as_u64().unwrap();
    assert_eq!((port("callbacks"), port("admin")), (u64::from(callbacks), u64::from(admin)));

    // Directories: the volumes are the policy and data directories, mounted there by the
    // manifest; the shipped policies are copied to the policy directory.
    let volumes: BTreeSet<String> = instructions(&runtime, "VOLUME").flat_map(exec_form).collect();
    assert_eq!(volumes, BTreeSet::from([get("CALLGATE_POLICIES").to_string(), get("CALLGATE_DATA_DIR").to_string()]));
    let mounts: BTreeSet<String> =
        container["volumeMounts"].as_sequence().unwrap().iter().map(|m| str_of(&m["mountPath"]).to_string()).collect();
    assert_eq!(volumes, mounts);
    let policies_copy = instructions(&runtime, "COPY").find(|c| c.starts_with("policies")).unwrap();
    assert_eq!(policies_copy.split_whitespace().last().unwrap().trim_end_matches('/'), get("CALLGATE_POLICIES"));

    // The user: not root, the manifest's uid and gid, owner of the data directory.
    let user = instructions(&runtime, "USER").last().unwrap();
    let security = &pod["securityContext"];
    assert_eq!(
        user,
        format!("{}:{}", security["runAsUser"].as_u64().unwrap(), security["runAsGroup"].as_u64().unwrap())
    );
    assert!(!user.starts_with("0:") && !user.starts_with("root"));
    let uid = user.split(':').next().unwrap();
    let data_dir = get("CALLGATE_DATA_DIR");
    assert!(
        instructions(&runtime, "RUN").any(
            |r| r.contains(&format!("--uid {uid}")) && r.contains(&format!("-o {uid} -g {uid} -m 0700 {data_dir}"))
        ),
        "the data directory is made for uid {uid}"
    );

    assert_eq!(instructions(&runtime, "STOPSIGNAL").collect::<Vec<_>>(), ["SIGTERM"]);
    // The health check asks the readiness probe's path.
    let readiness = str_of(&container["readinessProbe"]["httpGet"]["path"]);
    assert!(healthcheck(&runtime).0.iter().any(|a| a.contains(&format!("GET {readiness} "))));
}

/// The image's environment with a token serves the shipped policies, and its HEALTHCHECK
/// passes while it is ready and fails while it drains; without a token it does not start,
/// and says which variable to set.
#[tokio::test]
async fn the_images_environment_needs_a_token_and_its_healthcheck_follows_readiness() {
    let runtime = dockerfile_stage(None);
    let env = image_env(&runtime);
    let data = tempfile::tempdir().unwrap();

    // No token: refused before anything is bound (the listen flag keeps the callback port
    // on loopback all the same).
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_callgate"))
        .args(["serve", "--listen", "127.0.0.1:0", "--policies"])
        .arg(repo("policies"))
        .arg("--data-dir")
        .arg(data.path())
        .envs(env.iter().cloned())
        .env_remove("CALLGATE_ADMIN_TOKEN")
        .env_remove("CALLGATE_CONFIG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status = common::wait_child(&mut child, Duration::from_secs(10))
        .expect("the image's environment without a token started a server");
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(1));
    assert!(err.contains("CALLGATE_ADMIN_TOKEN"), "{err}");

    // With a token (the harness's loopback ports and temp dirs beat the image's).
    let mut with_token: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    with_token.push(("CALLGATE_ADMIN_TOKEN", "image-test-token"));
    let mut server = Server::start_with_env(&repo("policies"), &["--shutdown-delay", "3s"], &with_token);
    assert_eq!(server.post("/openim/callbackBeforeAddBlackCommand", STAFF_BLOCK).await, (200, staff_refusal()));
    let admin = server.admin.trim_start_matches("http://").to_string();
    assert!(run_healthcheck(&runtime, &admin), "the HEALTHCHECK fails on a ready server");
    server.signal("TERM");
    common::wait_until(
        Duration::from_secs(2),
        async || server.admin_get("/readyz").await["status"] == "draining",
        || "no drain after SIGTERM".into(),
    )
    .await;
    assert!(!run_healthcheck(&runtime, &admin), "the HEALTHCHECK passes on a draining server");
    assert_eq!(server.wait(), Some(0));
}

/// The binary needs no library that debian:bookworm-slim lacks: only libc6's and
/// libgcc-s1's, which every Debian image has (libc6 is a dependency of the Essential
/// packages, libgcc-s1 of libc6). The binary under test links as the release one does.
#[test]
fn the_binary_needs_only_libraries_every_debian_image_has() {
    let binary = env!("CARGO_BIN_EXE_callgate");
    let out = std::process::Command::new("ldd").arg(binary).output().expect("ldd (libc-bin) is installed");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success() && !text.contains("not found"), "{text}");
    // soname → resolved path (the vDSO has none; the loader is its own path).
    let libs: Vec<(String, Option<String>)> = text
        .lines()
        .map(|l| {
            let l = l.trim();
            match l.split_once(" => ") {
                Some((name, rest)) => (name.to_string(), Some(rest.split(" (").next().unwrap().to_string())),
                None => {
                    let name = l.split(" (").next().unwrap().to_string();
                    let path = name.starts_with('/').then(|| name.clone());
                    (name, path)
                }
            }
        })
        .collect();
    let dockerfile = read("Dockerfile");
    for (name, _) in &libs {
        let soname = name.rsplit('/').next().unwrap();
        let is_vdso = soname.starts_with("linux-vdso") || soname.starts_with("linux-gate");
        let is_loader = soname.starts_with("ld-linux");
        assert!(
            is_vdso || is_loader || ["libc.so.6", "libm.so.6", "libgcc_s.so.1"].contains(&soname),
            "the binary needs {soname}, which debian:bookworm-slim may not have"
        );
        assert!(is_vdso || is_loader || dockerfile.contains(soname), "the Dockerfile's comment does not list {soname}");
    }
    let status = std::process::Command::new(binary).arg("--version").output().unwrap();
    assert!(status.status.success(), "the binary does not start here");

    // Where dpkg is (a Debian machine, as CI): each library's package is in the closure of the
    // Essential set under Depends/Pre-Depends, which every Debian image carries.
    let Ok(query) = std::process::Command::new("dpkg-query")
        .args(["-W", "-f", "${Package}\t${Essential}\t${Pre-Depends}, ${Depends}\n"])
        .output()
    else {
        return;
    };
    let query = String::from_utf8(query.stdout).unwrap();
    let mut deps: std::collections::HashMap<&str, Vec<&str>> = std::collections::HashMap::new();
    let mut base: Vec<&str> = Vec::new();
    for line in query.lines() {
        let mut fields = line.split('\t');
        let (Some(name), Some(essential), Some(depends)) = (fields.next(), fields.next(), fields.next()) else {
            continue;
        };
        // A single named dependency (not an alternative): `libc6 (>= 2.34)`, `libc6:any`.
        let named = depends
            .split(',')
            .map(str::trim)
            .filter(|d| !d.is_empty() && !d.contains('|'))
            .map(|d| d.split([' ', ':']).next().unwrap());
        deps.insert(name, named.collect());
        if essential == "yes" {
            base.push(name);
        }
    }
    let mut closure: BTreeSet<&str> = BTreeSet::new();
    while let Some(name) = base.pop() {
        if closure.insert(name) {
            base.extend(deps.get(name).into_iter().flatten());
        }
    }
    for (name, path) in &libs {
        let Some(path) = path else { continue };
        let owner = std::process::Command::new("dpkg").args(["-S", path]).output().unwrap();
        let owner = String::from_utf8(owner.stdout).unwrap();
        let package = owner.split(':').next().unwrap_or("").trim();
        assert!(!package.is_empty(), "{name} ({path}) belongs to no Debian package");
        assert!(closure.contains(package), "{name} comes from {package}, which a minimal Debian image may lack");
    }
}

/// The build context keeps what `cargo build --release --locked` and the image's COPY read,
/// and leaves out the target directory and the repository's history.
#[test]
fn the_dockerignore_keeps_the_build_inputs() {
    let patterns: Vec<String> = read(".dockerignore")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.trim_matches('/').to_string())
        .collect();
    assert!(patterns.iter().all(|p| !p.starts_with('!')), "exceptions are not checked here");
    // `*` and `**` as any run of characters, `/` included: an over-approximation.
    fn matches(pattern: &[u8], path: &[u8]) -> bool {
        match pattern.first() {
            None => path.is_empty(),
            Some(b'*') => (0..=path.len()).any(|i| matches(&pattern[1..], &path[i..])),
            Some(c) => path.first() == Some(c) && matches(&pattern[1..], &path[1..]),
        }
    }
    let ignored = |path: &str| {
        let mut prefixes = path.split('/').scan(String::new(), |acc, part| {
            if !acc.is_empty() {
                acc.push('/');
            }
            acc.push_str(part);
            Some(acc.clone())
        });
        prefixes.any(|p| patterns.iter().any(|pat| matches(pat.as_bytes(), p.as_bytes())))
    };
    for path in ["target", ".git"] {
        assert!(ignored(path), "{path} goes into the build context");
    }
    // The build's inputs: the manifest, the lock file, the sources, the files they include,
    // every declared target, and what the runtime stage copies.
    let mut inputs = vec!["Cargo.toml".to_string(), "Cargo.lock".into(), "src/main.rs".into(), "src/lib.rs".into()];
    let mut sources = vec![repo("src")];
    while let Some(dir) = sources.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                sources.push(path);
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            for (_, rest) in text.match_indices("include_str!(\"").map(|(i, _)| text.split_at(i + 14)) {
                let rel = rest.split('"').next().unwrap();
                let file = path.parent().unwrap().join(rel);
                let file = file.canonicalize().unwrap();
                inputs.push(file.strip_prefix(repo("").canonicalize().unwrap()).unwrap().display().to_string());
            }
        }
    }
    for line in read("Cargo.toml").lines() {
        if line.trim() == "[[bench]]" {
            inputs.push("benches".into());
        }
    }
    for copy in instructions(&dockerfile_stage(None), "COPY").filter(|c| !c.starts_with("--from")) {
        inputs.push(copy.split_whitespace().next().unwrap().trim_end_matches('/').to_string());
    }
    for input in &inputs {
        assert!(repo(input).exists(), "{input} does not exist");
        assert!(!ignored(input), "{input} is needed by the image build but .dockerignore leaves it out");
    }
}
