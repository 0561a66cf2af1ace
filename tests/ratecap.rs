#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests: a failure should panic")]
//! Rate caps over real HTTP, each behaviour against both stores: in memory, and a real
//! `redis-server` started on a random port. Window edges are unit-tested in
//! `src/ratecap/memory.rs`, where the clock can be set.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

const UNBLOCK: &str = "/openim/callbackAfterRemoveBlackCommand";

fn cap_policy(max: u64, per: &str) -> String {
    format!(
        "rules:\n  - id: no-sys\n    when:\n      blackUserID: {{ regex: '^sys_' }}\n    decision: deny\n    error: {{ code: 150, message: no }}\n  - id: unblock-rate\n    on: [\"callbackAfterRemoveBlack*\"]\n    rate_cap: {{ key: [ownerUserID], max: {max}, per: {per} }}\n    decision: deny\n    error: {{ code: 20002, message: too many }}\n"
    )
}

fn capped() -> String {
    refusal(20002, "too many", "")
}

/// The stores to run each test against: memory, and Redis (kept alive by the returned value).
fn backends() -> Vec<(&'static str, Option<RedisServer>)> {
    vec![("memory", None), ("redis", Some(RedisServer::start()))]
}

/// Starts callgate on `dir`, with caps in `redis` when given; then waits until its start-up
/// probe has connected to Redis, so no test's first callbacks race the connection.
async fn start(dir: &PolicyDir, redis: Option<&RedisServer>, extra: &[&str]) -> Server {
    let url = redis.map(RedisServer::url);
    let mut args: Vec<&str> = extra.to_vec();
    if let Some(url) = &url {
        args.extend(["--redis-url", url]);
        // Exactness must not hang on how loaded the test machine is: a Redis call that times
        // out answers per --on-error (allow), which would count as a cap passed.
        if !extra.contains(&"--redis-timeout") {
            args.extend(["--redis-timeout", "2s"]);
        }
    }
    let server = Server::start(dir.path(), &args);
    if redis.is_some() {
        server.wait_for_log("redis is reachable", Duration::from_secs(10)).await;
    }
    server
}

#[tokio::test]
async fn a_cap_allows_max_per_key_and_refused_callbacks_do_not_count() {
    for (name, redis) in backends() {
        let dir = PolicyDir::with("10.yaml", &cap_policy(3, "1m"));
        let mut server = start(&dir, redis.as_ref(), &[]).await;
        // Refused by an earlier rule: never counted against the cap.
        for _ in 0..5 {
            assert_eq!(server.post(UNBLOCK, &unblock("u_1", "sys_1")).await.1, refusal(150, "no", ""), "{name}");
        }
        for i in 0..3 {
            assert_eq!(server.post(UNBLOCK, &unblock("u_1", &format!("u_{i}"))).await.1, ALLOW, "{name}: call {i}");
        }
        // The fourth would make 4 in the window: refused, and refusals are not counted.
        for _ in 0..3 {
            assert_eq!(server.post(UNBLOCK, &unblock("u_1", "u_9")).await.1, capped(), "{name}");
        }
        // Other keys have their own count.
        assert_eq!(server.post(UNBLOCK, &unblock("u_2", "u_9")).await.1, ALLOW, "{name}");
        // Other commands are not capped by this rule.
        assert_eq!(server.post("/openim/callbackBeforeAddBlackCommand", r#"{"ownerUserID":"u_1"}"#).await.1, ALLOW);

        assert_eq!(server.terminate(), Some(0));
        let records = events(server.data_dir(), &["--user", "u_1", "--command", "callbackAfterRemoveBlackCommand"]);
        let caps: Vec<(u64, bool)> = records
            .iter()
            .filter(|r| r["body"]["blackUserID"] != "sys_1")
            .map(|r| (r["caps"][0]["count"].as_u64().unwrap(), r["caps"][0]["exceeded"].as_bool().unwrap()))
            .collect();
        assert_eq!(caps, vec![(0, false), (1, false), (2, false), (3, true), (3, true), (3, true)], "{name}");
        assert_eq!(records.last().unwrap()["rule"], "unblock-rate");
        assert_eq!(records.last().unwrap()["caps"][0]["max"], 3);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_for_one_key_never_exceed_the_cap() {
    for (name, redis) in backends() {
        let dir = PolicyDir::with("10.yaml", &cap_policy(25, "1h"));
        let server = Arc::new(start(&dir, redis.as_ref(), &[]).await);
        let mut tasks = Vec::new();
        for t in 0..10 {
            let server = server.clone();
            tasks.push(tokio::spawn(async move {
                let mut allowed = 0;
                for i in 0..20 {
                    let (_, body) = server.post(UNBLOCK, &unblock("hot", &format!("u_{t}_{i}"))).await;
                    allowed += usize::from(body == ALLOW);
                }
                allowed
            }));
        }
        let mut allowed = 0;
        for t in tasks {
            allowed += t.await.unwrap();
        }
        assert_eq!(allowed, 25, "{name}: 200 concurrent requests, cap 25");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_sharing_redis_hold_one_global_cap() {
    let redis = RedisServer::start();
    let dir = PolicyDir::with("10.yaml", &cap_policy(10, "1h"));
    let a = Arc::new(start(&dir, Some(&redis), &[]).await);
    let b = Arc::new(start(&dir, Some(&redis), &[]).await);
    let mut tasks = Vec::new();
    for t in 0..8 {
        let server = if t % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            let mut allowed = 0;
            for i in 0..10 {
                let (_, body) = server.post(UNBLOCK, &unblock("shared", &format!("u_{t}_{i}"))).await;
                allowed += usize::from(body == ALLOW);
            }
            allowed
        }));
    }
    let mut allowed = 0;
    for t in tasks {
        allowed += t.await.unwrap();
    }
    assert_eq!(allowed, 10, "80 requests over two instances, one cap of 10");
}

#[tokio::test]
async fn counts_survive_a_reload_that_keeps_rule_key_and_window() {
    for (name, redis) in backends() {
        let dir = PolicyDir::with("10.yaml", &cap_policy(3, "1h"));
        let server = start(&dir, redis.as_ref(), &[]).await;
        for i in 0..2 {
            assert_eq!(server.post(UNBLOCK, &unblock("u_1", &format!("u_{i}"))).await.1, ALLOW);
        }
        // Another rule added, the cap's max raised: same rule id, key and window.
        let v = server.policy_version().await;
        dir.write("10.yaml", &format!("{}  - id: extra\n    on: [other]\n    decision: allow\n", cap_policy(4, "1h")));
        server.wait_for_new_version(&v, Duration::from_secs(10)).await;
        assert_eq!(server.post(UNBLOCK, &unblock("u_1", "u_7")).await.1, ALLOW, "{name}");
        assert_eq!(server.post(UNBLOCK, &unblock("u_1", "u_8")).await.1, ALLOW, "{name}");
        assert_eq!(
            server.post(UNBLOCK, &unblock("u_1", "u_9")).await.1,
            capped(),
            "{name}: 4 counted across the reload"
        );

        // A new window is a new cap: counting starts again.
        let v = server.policy_version().await;
        dir.write("10.yaml", &cap_policy(4, "2h"));
        server.wait_for_new_version(&v, Duration::from_secs(10)).await;
        assert_eq!(server.post(UNBLOCK, &unblock("u_1", "u_10")).await.1, ALLOW, "{name}");
    }
}

#[tokio::test]
async fn a_dry_run_cap_reports_would_deny_and_allows() {
    let dir = PolicyDir::with(
        "10.yaml",
        &cap_policy(1, "1h").replace("    error: { code: 20002", "    mode: dry_run\n    error: { code: 20002"),
    );
    let mut server = Server::start(dir.path(), &[]);
    assert_eq!(server.post(UNBLOCK, &unblock("u_1", "u_2")).await.1, ALLOW);
    assert_eq!(server.post(UNBLOCK, &unblock("u_1", "u_3")).await.1, ALLOW);
    assert_eq!(server.terminate(), Some(0));
    let would = events(server.data_dir(), &["--decision", "would_deny"]);
    assert_eq!(would.len(), 1);
    assert_eq!(would[0]["dry_run"][0]["rule"], "unblock-rate");
    assert_eq!(would[0]["caps"][0], serde_json::json!({"rule":"unblock-rate","count":1,"max":1,"exceeded":true}));
}

/// Redis killed mid-test: caps answer per on_error (fast), the outage is logged once, and
/// callgate goes back to Redis by itself when it returns.
#[tokio::test]
async fn redis_killed_and_restarted() {
    let mut redis = RedisServer::start();
    let dir = PolicyDir::with("10.yaml", &cap_policy(2, "1h"));
    let open = start(&dir, Some(&redis), &["--redis-timeout", "50ms"]).await;
    let closed = start(&dir, Some(&redis), &["--on-error", "deny", "--redis-timeout", "50ms"]).await;
    assert_eq!(open.post(UNBLOCK, &unblock("u_1", "a")).await.1, ALLOW);

    // On a busy machine a call may time out before the kill too. Once a refusal shows Redis
    // answering (on_error allow never refuses), any such outage is over, and the log from
    // there on is about the kill's.
    wait_until(
        Duration::from_secs(10),
        async || open.post(UNBLOCK, &unblock("u_7", "a")).await.1 == capped(),
        || format!("redis never refused: {}", open.logs()),
    )
    .await;
    let logged_before_kill = open.logs().len();
    redis.kill();
    let mut slowest = Duration::ZERO;
    for i in 0..50 {
        let started = Instant::now();
        assert_eq!(open.post(UNBLOCK, &unblock("u_1", &format!("x{i}"))).await.1, ALLOW, "on_error allow");
        slowest = slowest.max(started.elapsed());
    }
    for _ in 0..5 {
        assert_eq!(closed.post(UNBLOCK, &unblock("u_5", "x")).await.1, capped(), "on_error deny");
    }
    // Each call is bounded by the 50 ms timeout, and the open circuit skips Redis entirely.
    assert!(slowest < Duration::from_secs(1), "slowest answer with redis down: {slowest:?}");
    let outage_log = &open.logs()[logged_before_kill..];
    assert_eq!(
        outage_log.matches("rate caps and lists held in redis answer per on_error until it is back").count(),
        1,
        "{}",
        open.logs()
    );
    // The outage is logged at its first failure, and not again for each call (the next line
    // comes after 10 s, with the count).
    assert_eq!(
        outage_log.matches("rate caps and lists held in redis answer per on_error until it answers again").count(),
        1,
        "{}",
        open.logs()
    );
    // Rules without caps are unaffected by the outage.
    assert_eq!(open.post(UNBLOCK, &unblock("u_1", "sys_1")).await.1, refusal(150, "no", ""));

    redis.restart();
    // The restarted Redis is empty: u_9 is allowed twice, then capped.
    common::wait_until(
        Duration::from_secs(20),
        async || closed.post(UNBLOCK, &unblock("u_9", "x")).await.1 == ALLOW,
        || format!("callgate did not go back to redis: {}", closed.logs()),
    )
    .await;
    assert_eq!(closed.post(UNBLOCK, &unblock("u_9", "y")).await.1, ALLOW);
    assert_eq!(closed.post(UNBLOCK, &unblock("u_9", "z")).await.1, capped());
    assert!(closed.logs().contains("redis answers again after"), "{}", closed.logs());
    assert!(closed.logs().contains("calls failed or were not sent)"), "{}", closed.logs());
}

/// `rediss://`: caps (and the record stream) use a Redis reached over TLS, its certificate
/// verified against `--redis-ca-file`. Without that file the test's private CA is unknown to
/// the system, so the handshake fails and caps answer per on_error: verification is on.
#[tokio::test]
async fn redis_over_tls_with_its_certificate_verified() {
    let redis = RedisServer::start_tls(false);
    let dir = PolicyDir::with("10.yaml", &cap_policy(2, "1h"));
    let (url, ca) = (redis.tls_url(), redis.ca_file());
    let verified = Server::start(
        dir.path(),
        &["--redis-url", &url, "--redis-ca-file", ca.to_str().unwrap(), "--on-error", "deny"],
    );
    verified.wait_for_log("redis is reachable", Duration::from_secs(10)).await;
    assert_eq!(verified.post(UNBLOCK, &unblock("u_1", "a")).await.1, ALLOW);
    assert_eq!(verified.post(UNBLOCK, &unblock("u_1", "b")).await.1, ALLOW);
    assert_eq!(verified.post(UNBLOCK, &unblock("u_1", "c")).await.1, capped());
    // Counted in that Redis (seen through its plain port), and the records reached its stream.
    common::wait_until(
        Duration::from_secs(10),
        async || redis.command(&["XLEN", "callgate:records"]) == ":3",
        || "records did not reach the stream over TLS".into(),
    )
    .await;
    assert_eq!(redis.command(&["DBSIZE"]), ":2", "one cap key and the record stream");
    assert_eq!(verified.metric_sum("callgate_redis_errors_total").await, 0.0, "{}", verified.logs());

    let unverified = Server::start(dir.path(), &["--redis-url", &url, "--on-error", "deny"]);
    for i in 0..5 {
        assert_eq!(unverified.post(UNBLOCK, &unblock("u_2", &format!("x{i}"))).await.1, capped(), "on_error deny");
    }
    // The start-up probe says why, rather than leaving only timeouts in the log.
    let limit = Duration::from_secs(10);
    unverified.wait_for_log("cannot connect to redis: invalid peer certificate: UnknownIssuer", limit).await;

    // A CA file is for TLS only, and must hold a certificate: both refused at start.
    let plain = redis.url();
    let err =
        Server::try_start(dir.path(), &["--redis-url", &plain, "--redis-ca-file", ca.to_str().unwrap()]).err().unwrap();
    assert!(err.contains("rediss://"), "{err}");
    let not_pem = dir.path().join("not-a-ca.pem");
    std::fs::write(&not_pem, "hello").unwrap();
    let err = Server::try_start(dir.path(), &["--redis-url", &url, "--redis-ca-file", not_pem.to_str().unwrap()])
        .err()
        .unwrap();
    assert!(err.contains("holds no PEM block"), "{err}");
}

/// A Redis that asks TLS clients for a certificate (Redis's own default): callgate shows the
/// one given by --redis-client-cert/--redis-client-key; without it the handshake fails, the
/// log says so, and caps answer per on_error.
#[tokio::test]
async fn redis_that_asks_for_a_client_certificate() {
    let redis = RedisServer::start_tls(true);
    let dir = PolicyDir::with("10.yaml", &cap_policy(1, "1h"));
    let (url, ca, (cert, key)) = (redis.tls_url(), redis.ca_file(), redis.client_cert());
    let ca = ca.to_str().unwrap();
    let with_cert = Server::start(
        dir.path(),
        &[
            "--redis-url",
            &url,
            "--redis-ca-file",
            ca,
            "--redis-client-cert",
            cert.to_str().unwrap(),
            "--redis-client-key",
            key.to_str().unwrap(),
            "--on-error",
            "deny",
        ],
    );
    with_cert.wait_for_log("redis is reachable", Duration::from_secs(10)).await;
    assert_eq!(with_cert.post(UNBLOCK, &unblock("u_1", "a")).await.1, ALLOW, "{}", with_cert.logs());
    assert_eq!(with_cert.post(UNBLOCK, &unblock("u_1", "b")).await.1, capped());

    let without = Server::start(dir.path(), &["--redis-url", &url, "--redis-ca-file", ca, "--on-error", "deny"]);
    assert_eq!(without.post(UNBLOCK, &unblock("u_2", "a")).await.1, capped(), "on_error deny");
    without.wait_for_log("cannot connect to redis", Duration::from_secs(10)).await;
}

/// A Redis Cluster of three masters with `--redis-cluster`: two instances hold one global
/// count, a decision with two caps on different keys (on different slots) is checked cap by
/// cap, and records reach the stream.
#[tokio::test]
async fn caps_in_a_redis_cluster() {
    let cluster = RedisCluster::start();
    let policy = "rules:\n  - id: per-owner\n    rate_cap: { key: [ownerUserID], max: 3, per: 1h }\n    decision: deny\n    error: { code: 20002, message: too many }\n  - id: per-target\n    rate_cap: { key: [blackUserID], max: 100, per: 1h }\n    decision: deny\n    error: { code: 20003, message: too popular }\n";
    let dir = PolicyDir::with("10.yaml", policy);
    let url = cluster.url();
    let args = ["--redis-url", &url, "--redis-cluster", "--on-error", "deny"];
    let (a, b) = (Server::start(dir.path(), &args), Server::start(dir.path(), &args));
    for server in [&a, &b] {
        server.wait_for_log("redis cluster is reachable", Duration::from_secs(10)).await;
    }
    let mut answers = Vec::new();
    for i in 0..6 {
        let server = if i % 2 == 0 { &a } else { &b };
        answers.push(server.post(UNBLOCK, &unblock("u_1", &format!("t_{i}"))).await.1);
    }
    let allowed = answers.iter().filter(|a| *a == ALLOW).count();
    assert_eq!(allowed, 3, "{answers:?}\n{}", a.logs());
    assert!(answers[3..].iter().all(|a| *a == capped()), "{answers:?}");
    cluster.wait_for_records(6).await;
    assert_eq!(a.metric_sum("callgate_redis_errors_total").await, 0.0, "{}", a.logs());
}

/// A Redis Cluster reached over TLS, as managed Redis offers it: callgate finds the other
/// nodes from the first and reaches them over TLS too, each verified against the CA file.
#[tokio::test]
async fn caps_in_a_redis_cluster_over_tls() {
    let cluster = RedisCluster::start_tls();
    let dir = PolicyDir::with("10.yaml", &cap_policy(2, "1h"));
    let (url, ca) = (cluster.tls_url(), cluster.nodes[0].ca_file());
    let server = Server::start(
        dir.path(),
        &["--redis-url", &url, "--redis-cluster", "--redis-ca-file", ca.to_str().unwrap(), "--on-error", "deny"],
    );
    // The start-up probe logs once the connections callbacks use are made. With on_error
    // deny, an allow means the count reached the cluster.
    server.wait_for_log("redis cluster is reachable", Duration::from_secs(10)).await;
    assert_eq!(server.post(UNBLOCK, &unblock("u_1", "a")).await.1, ALLOW, "{}", server.logs());
    assert_eq!(server.post(UNBLOCK, &unblock("u_1", "b")).await.1, ALLOW);
    assert_eq!(server.post(UNBLOCK, &unblock("u_1", "c")).await.1, capped());
    cluster.wait_for_records(3).await;
    assert_eq!(server.metric_sum("callgate_redis_errors_total").await, 0.0, "{}", server.logs());
}

/// The whole cluster killed mid-test: caps answer per on_error, fast; when the nodes come
/// back (same ports, same cluster), callgate counts in the cluster again by itself.
#[tokio::test]
async fn a_redis_cluster_killed_and_restarted() {
    let mut cluster = RedisCluster::start();
    let dir = PolicyDir::with("10.yaml", &cap_policy(2, "1h"));
    let url = cluster.url();
    let server = Server::start(dir.path(), &["--redis-url", &url, "--redis-cluster", "--on-error", "deny"]);
    server.wait_for_log("redis cluster is reachable", Duration::from_secs(10)).await;
    assert_eq!(server.post(UNBLOCK, &unblock("u_1", "a")).await.1, ALLOW);

    for node in &mut cluster.nodes {
        node.kill();
    }
    for i in 0..20 {
        let started = Instant::now();
        assert_eq!(server.post(UNBLOCK, &unblock("u_2", &format!("x{i}"))).await.1, capped(), "on_error deny");
        assert!(started.elapsed() < Duration::from_secs(1), "answer {i} took {:?}", started.elapsed());
    }

    cluster.restart();
    // The restarted nodes are empty: u_9 is allowed twice, then capped.
    common::wait_until(
        Duration::from_secs(30),
        async || server.post(UNBLOCK, &unblock("u_9", "x")).await.1 == ALLOW,
        || format!("callgate did not go back to the cluster: {}", server.logs()),
    )
    .await;
    assert_eq!(server.post(UNBLOCK, &unblock("u_9", "y")).await.1, ALLOW);
    assert_eq!(server.post(UNBLOCK, &unblock("u_9", "z")).await.1, capped());
}

/// The Redis key of a cap on one key field (see `redis_key` in src/ratecap/redis.rs): the
/// value is the hash tag.
fn cap_redis_key(rule: &str, per: Duration, field: &str, value: &str) -> String {
    format!("callgate:cap:{rule}\u{1f}{}\u{1f}{field}\u{1f}{{{value}}}", per.as_millis())
}

/// Starts `n` callgate instances on `cluster` with `policy`, caps answering deny on error (so
/// an allow is a count that reached the cluster), each waited for until it reaches it.
async fn start_on_cluster(cluster: &RedisCluster, policy: &str, n: usize) -> (PolicyDir, Vec<Arc<Server>>) {
    let dir = PolicyDir::with("10.yaml", policy);
    let url = cluster.url();
    let args = ["--redis-url", &url, "--redis-cluster", "--on-error", "deny", "--redis-timeout", "2s"];
    let mut servers = Vec::new();
    for _ in 0..n {
        let server = Server::start(dir.path(), &args);
        server.wait_for_log("redis cluster is reachable", Duration::from_secs(10)).await;
        servers.push(Arc::new(server));
    }
    (dir, servers)
}

/// Posts every body in `calls` at once, spread over `servers`; returns the answers in order.
async fn post_all(servers: &[Arc<Server>], calls: Vec<String>) -> Vec<String> {
    let tasks: Vec<_> = calls
        .into_iter()
        .enumerate()
        .map(|(i, body)| {
            let server = servers[i % servers.len()].clone();
            tokio::spawn(async move { server.post(UNBLOCK, &body).await.1 })
        })
        .collect();
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.unwrap());
    }
    answers
}

const PER_OWNER: &str = "rules:\n  - id: per-owner\n    rate_cap: { key: [ownerUserID], max: 50, per: 1h }\n    decision: deny\n    error: { code: 20002, message: too many }\n";

/// 10,000 users' caps spread over the three masters: each holds 25–42 % of the cap keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn caps_of_many_users_spread_over_every_master() {
    let cluster = RedisCluster::start();
    let (_dir, servers) = start_on_cluster(&cluster, PER_OWNER, 1).await;
    let server = &servers[0];
    let tasks: Vec<_> = (0..32)
        .map(|t| {
            let server = server.clone();
            tokio::spawn(async move {
                let mut allowed = 0;
                for u in (t..10_000).step_by(32) {
                    allowed += usize::from(server.post(UNBLOCK, &unblock(&format!("u_{u}"), "x")).await.1 == ALLOW);
                }
                allowed
            })
        })
        .collect();
    let mut allowed = 0;
    for task in tasks {
        allowed += task.await.unwrap();
    }
    assert_eq!(allowed, 10_000, "{}", server.logs());
    // Each node's own cap keys (KEYS in a script runs on the node it is sent to).
    let count = r"return #redis.call('KEYS', 'callgate:cap:*')";
    let per_node: Vec<u64> = cluster
        .nodes
        .iter()
        .map(|n| n.command(&["EVAL", count, "0"]).trim_start_matches(':').parse().unwrap())
        .collect();
    eprintln!("cap keys per master: {per_node:?}");
    assert_eq!(per_node.iter().sum::<u64>(), 10_000, "{per_node:?}");
    for keys in &per_node {
        assert!((2_500..=4_200).contains(keys), "each master holds 25–42 % of the cap keys: {per_node:?}");
    }
}

/// 200 calls at once for one user, over two instances on the cluster, cap 50: exactly 50
/// are allowed, and the cap's key holds exactly those 50.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_on_a_cluster_allow_exactly_the_max_of_concurrent_calls() {
    let cluster = RedisCluster::start();
    let (_dir, servers) = start_on_cluster(&cluster, PER_OWNER, 2).await;
    let calls = (0..200).map(|i| unblock("hot", &format!("t_{i}"))).collect();
    let answers = post_all(&servers, calls).await;
    assert_eq!(answers.iter().filter(|a| *a == ALLOW).count(), 50, "{}", servers[0].logs());
    assert!(answers.iter().all(|a| *a == ALLOW || *a == capped()), "{answers:?}");
    let key = cap_redis_key("per-owner", Duration::from_secs(3600), "ownerUserID", "hot");
    assert_eq!(cluster.cli(cluster.nodes[0].port, &["ZCARD", &key]), "50");
    // One round trip a decision: 200 scripts run in all (a first EVALSHA on a node that does
    // not know the script yet fails, then the script is loaded: not counted).
    let scripts: u64 = cluster.nodes.iter().map(|n| scripts_run(&cluster.cli(n.port, &["INFO", "commandstats"]))).sum();
    assert_eq!(scripts, 200);
}

/// Scripts a node ran successfully, from its `INFO commandstats`
/// (`cmdstat_evalsha:calls=4,usec=…,failed_calls=1`).
fn scripts_run(info: &str) -> u64 {
    let mut total = 0;
    for line in info.lines() {
        let Some(stats) = line.strip_prefix("cmdstat_evalsha:").or_else(|| line.strip_prefix("cmdstat_eval:")) else {
            continue;
        };
        let stat = |name: &str| -> u64 {
            stats.split(',').find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=')).map_or(0, |v| v.parse().unwrap())
        };
        total += stat("calls") - stat("failed_calls");
    }
    total
}

const OWNER_THEN_TARGET: &str = "rules:\n  - id: per-owner\n    rate_cap: { key: [ownerUserID], max: 50, per: 1h }\n    decision: deny\n    error: { code: 20002, message: too many }\n  - id: per-target\n    rate_cap: { key: [blackUserID], max: 3, per: 1h }\n    decision: deny\n    error: { code: 20003, message: too popular }\n";

/// A decision with two caps on different slots, the second refusing: the first has not
/// counted the refused call (its reservation was given back).
#[tokio::test]
async fn a_call_refused_by_a_cap_on_another_slot_counts_in_no_cap() {
    let cluster = RedisCluster::start();
    let (_dir, servers) = start_on_cluster(&cluster, OWNER_THEN_TARGET, 1).await;
    let server = &servers[0];
    let port = cluster.nodes[0].port;
    let hour = Duration::from_secs(3600);
    let (owner, target) = (
        cap_redis_key("per-owner", hour, "ownerUserID", "u_1"),
        cap_redis_key("per-target", hour, "blackUserID", "t_1"),
    );
    assert_ne!(cluster.cli(port, &["CLUSTER", "KEYSLOT", &owner]), cluster.cli(port, &["CLUSTER", "KEYSLOT", &target]));
    let popular = refusal(20003, "too popular", "");
    for (i, user) in ["u_1", "u_2", "u_3"].into_iter().enumerate() {
        assert_eq!(server.post(UNBLOCK, &unblock(user, "t_1")).await.1, ALLOW, "call {i}");
    }
    for _ in 0..5 {
        assert_eq!(server.post(UNBLOCK, &unblock("u_1", "t_1")).await.1, popular);
    }
    assert_eq!(cluster.cli(port, &["ZCARD", &owner]), "1", "refused calls were given back from per-owner");
    assert_eq!(cluster.cli(port, &["ZCARD", &target]), "3");
    // An allowed call: two scripts (one per slot); a refused one: three (the give-back).
    let scripts: u64 = cluster.nodes.iter().map(|n| scripts_run(&cluster.cli(n.port, &["INFO", "commandstats"]))).sum();
    assert_eq!(scripts, 3 * 2 + 5 * 3);
    // And u_1 still has 49 of its 50.
    let calls = (0..60).map(|i| unblock("u_1", &format!("other_{i}"))).collect();
    let answers = post_all(&servers, calls).await;
    assert_eq!(answers.iter().filter(|a| *a == ALLOW).count(), 49);
}

/// Two instances, 200 calls at once from one user to 20 targets, a cap per user (50) and
/// one per target (3) on other slots, and a rule after them refusing a third of the
/// calls: whatever interleaving, every cap's key holds exactly the allowed calls it saw,
/// and none holds more than its max.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_calls_with_caps_on_different_slots_count_exactly_the_allowed() {
    let cluster = RedisCluster::start();
    let policy = format!(
        "{OWNER_THEN_TARGET}  - id: no-sys\n    when:\n      operationID: {{ regex: '^sys' }}\n    decision: deny\n    error: {{ code: 150, message: no }}\n"
    );
    let (_dir, servers) = start_on_cluster(&cluster, &policy, 2).await;
    let body = |i: usize| {
        let op = if i.is_multiple_of(3) { "sys" } else { "op" };
        format!(
            r#"{{"callbackCommand":"callbackAfterRemoveBlackCommand","operationID":"{op}_{i}","ownerUserID":"hot","blackUserID":"t_{}"}}"#,
            i % 20
        )
    };
    let answers = post_all(&servers, (0..200).map(body).collect()).await;
    let hour = Duration::from_secs(3600);
    let port = cluster.nodes[0].port;
    let zcard = |key: String| -> u64 { cluster.cli(port, &["ZCARD", &key]).parse().unwrap() };
    let mut allowed_per_target = [0u64; 20];
    for (i, answer) in answers.iter().enumerate() {
        if *answer == ALLOW {
            assert!(!i.is_multiple_of(3), "a call the last rule refuses is never allowed");
            allowed_per_target[i % 20] += 1;
        }
    }
    let allowed: u64 = allowed_per_target.iter().sum();
    assert!(allowed > 0 && allowed <= 50, "{allowed} allowed\n{}", servers[0].logs());
    assert_eq!(zcard(cap_redis_key("per-owner", hour, "ownerUserID", "hot")), allowed);
    for (t, n) in allowed_per_target.iter().enumerate() {
        assert!(*n <= 3, "target {t}: {n} allowed");
        assert_eq!(zcard(cap_redis_key("per-target", hour, "blackUserID", &format!("t_{t}"))), *n, "target {t}");
    }
}
