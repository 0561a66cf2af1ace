#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests: a failure should panic")]
//! Lists held in Redis sets (`lists: banned: { redis: key }`) over real HTTP against a real
//! `redis-server` (and a real cluster): asked live, cached for at most the stated time,
//! several in one round trip, answered per `--on-error` when Redis fails, and at once while
//! the circuit breaker that lists share with rate caps is open.

mod common;

use std::time::{Duration, Instant};

use common::*;

const UNBLOCK: &str = "/openim/callbackAfterRemoveBlackCommand";

fn banned_policy(source: &str) -> String {
    format!(
        "lists:\n  banned: {source}\nrules:\n  - id: no-banned\n    when:\n      ownerUserID: {{ in_list: banned }}\n    decision: deny\n    error: {{ code: 20010, message: banned }}\n"
    )
}

fn banned() -> String {
    refusal(20010, "banned", "")
}

async fn start(dir: &PolicyDir, url: &str, extra: &[&str]) -> Server {
    let mut args = vec!["--redis-url", url];
    if !extra.contains(&"--redis-timeout") {
        args.extend(["--redis-timeout", "2s"]);
    }
    args.extend(extra);
    let server = Server::start(dir.path(), &args);
    let reachable =
        if extra.contains(&"--redis-cluster") { "redis cluster is reachable" } else { "redis is reachable" };
    server.wait_for_log(reachable, Duration::from_secs(10)).await;
    server
}

#[tokio::test]
async fn an_id_added_to_the_set_is_refused_by_the_next_callback() {
    let redis = RedisServer::start();
    let dir = PolicyDir::with("10.yaml", &banned_policy("{ redis: \"app:banned-users\" }"));
    let server = start(&dir, &redis.url(), &[]).await;
    assert_eq!(server.post(UNBLOCK, &unblock("u_1", "x")).await.1, ALLOW);
    assert_eq!(redis.command(&["SADD", "app:banned-users", "u_1"]), ":1");
    assert_eq!(server.post(UNBLOCK, &unblock("u_1", "x")).await.1, banned(), "seen at once: no cache");
    assert_eq!(server.post(UNBLOCK, &unblock("u_2", "x")).await.1, ALLOW, "others are not in the set");
    assert_eq!(redis.command(&["SREM", "app:banned-users", "u_1"]), ":1");
    assert_eq!(server.post(UNBLOCK, &unblock("u_1", "x")).await.1, ALLOW);
    assert_eq!(server.metric_sum("callgate_list_errors_total").await, 0.0, "{}", server.logs());
}

/// With `cache: 1m` an answer is reused (a change is not seen at once); without, it is asked
/// every time (the test above). The bound itself is the cache's age check, unit-tested.
#[tokio::test]
async fn a_cached_answer_is_reused_within_its_bound() {
    let redis = RedisServer::start();
    let dir = PolicyDir::with("10.yaml", &banned_policy("{ redis: \"app:banned-users\", cache: 1m }"));
    let server = start(&dir, &redis.url(), &[]).await;
    assert_eq!(server.post(UNBLOCK, &unblock("u_1", "x")).await.1, ALLOW);
    redis.command(&["SADD", "app:banned-users", "u_1", "u_2"]);
    assert_eq!(server.post(UNBLOCK, &unblock("u_1", "x")).await.1, ALLOW, "u_1's answer is cached");
    assert_eq!(server.post(UNBLOCK, &unblock("u_2", "x")).await.1, banned(), "u_2 was never asked");
}

/// Redis down: a test on a list held there answers per --on-error — allow reads the list as
/// empty, deny as holding every ID — and rules without such lists are unaffected.
#[tokio::test]
async fn redis_down_answers_per_on_error() {
    let mut redis = RedisServer::start();
    let policy = banned_policy("{ redis: \"app:banned-users\" }");
    let dir = PolicyDir::with("10.yaml", &policy);
    let open = start(&dir, &redis.url(), &["--redis-timeout", "50ms"]).await;
    let closed = start(&dir, &redis.url(), &["--on-error", "deny", "--redis-timeout", "50ms"]).await;
    redis.command(&["SADD", "app:banned-users", "u_1"]);
    redis.kill();
    assert_eq!(open.post(UNBLOCK, &unblock("u_1", "x")).await.1, ALLOW, "on_error allow: the list reads as empty");
    assert_eq!(closed.post(UNBLOCK, &unblock("u_2", "x")).await.1, banned(), "on_error deny: every ID is in it");
    assert!(open.metric_sum("callgate_list_errors_total").await >= 1.0);
    redis.restart();
    redis.command(&["SADD", "app:banned-users", "u_1"]);
    common::wait_until(
        Duration::from_secs(20),
        async || closed.post(UNBLOCK, &unblock("u_2", "x")).await.1 == ALLOW,
        || format!("callgate did not go back to redis: {}", closed.logs()),
    )
    .await;
    assert_eq!(closed.post(UNBLOCK, &unblock("u_1", "x")).await.1, banned());
}

/// In a cluster each set is asked on the node that holds it; two sets on different nodes
/// (which one pipeline cannot carry) are both asked in one decision.
#[tokio::test]
async fn lists_in_a_redis_cluster() {
    let cluster = RedisCluster::start();
    let dir = PolicyDir::with("10.yaml", &two_lists_policy());
    let server = start(&dir, &cluster.url(), &["--redis-cluster", "--on-error", "allow"]).await;
    let port = cluster.nodes[0].port;
    let slot = |key: &str| cluster.cli(port, &["CLUSTER", "KEYSLOT", key]).parse::<u16>().unwrap();
    let node_of = |slot: u16| slot / 5462;
    assert_ne!(node_of(slot("app:banned-users")), node_of(slot("app:muted-users")), "the sets must be on two nodes");
    assert_eq!(cluster.cli(port, &["SADD", "app:banned-users", "u_1"]), "1");
    assert_eq!(cluster.cli(port, &["SADD", "app:muted-users", "m_1"]), "1");
    assert_eq!(server.post(UNBLOCK, &unblock("u_1", "x")).await.1, banned());
    assert_eq!(server.post(UNBLOCK, &unblock("u_2", "m_1")).await.1, muted());
    assert_eq!(server.post(UNBLOCK, &unblock("u_2", "x")).await.1, ALLOW);
    assert_eq!(server.metric_sum("callgate_list_errors_total").await, 0.0, "{}", server.logs());
}

/// A policy with two lists held in Redis, both tested by every unblock callback.
fn two_lists_policy() -> String {
    "lists:\n  banned: { redis: \"app:banned-users\" }\n  muted: { redis: \"app:muted-users\" }\nrules:\n  - id: no-banned\n    when:\n      ownerUserID: { in_list: banned }\n    decision: deny\n    error: { code: 20010, message: banned }\n  - id: no-muted\n    when:\n      blackUserID: { in_list: muted }\n    decision: deny\n    error: { code: 20011, message: muted }\n".into()
}

fn muted() -> String {
    refusal(20011, "muted", "")
}

/// Two lists tested by one decision are asked in one round trip (one pipeline), not one
/// after the other: behind a proxy that adds 150 ms each way, a decision takes one round
/// trip of 300 ms, where two would take 600.
#[tokio::test]
async fn two_lists_in_one_decision_are_asked_in_one_round_trip() {
    const ONE_WAY: Duration = Duration::from_millis(150);
    let redis = RedisServer::start();
    let proxy = LatencyProxy::start(redis.port, ONE_WAY).await;
    let dir = PolicyDir::with("10.yaml", &two_lists_policy());
    let server = start(&dir, &proxy.url(), &[]).await;
    redis.command(&["SADD", "app:banned-users", "u_1"]);
    redis.command(&["SADD", "app:muted-users", "m_1"]);
    let mut fastest = Duration::MAX;
    for (owner, black, want) in [("u_1", "x", banned()), ("u_2", "m_1", muted()), ("u_2", "x", ALLOW.into())] {
        let started = Instant::now();
        assert_eq!(server.post(UNBLOCK, &unblock(owner, black)).await.1, want, "{owner} {black}");
        fastest = fastest.min(started.elapsed());
    }
    let round_trip = 2 * ONE_WAY;
    eprintln!("a decision asking two lists, round trip {round_trip:?}: fastest {fastest:?}");
    assert!(fastest >= round_trip, "the proxy delays: {fastest:?}");
    assert!(fastest < round_trip * 9 / 5, "two lists took {fastest:?}: more than one round trip of {round_trip:?}");
}

/// A Redis that hangs (its answers held back, so each call waits out --redis-timeout): once
/// three calls have failed the circuit opens, and while it is open each list test answers
/// per --on-error at once, counted as `circuit_open`; a rate cap, which never called Redis in
/// this outage, answers at once too, as the breaker is Redis's, not the lists'. When Redis
/// answers again, one probe closes the circuit and lists are asked again.
#[tokio::test]
async fn an_open_circuit_answers_lists_at_once_and_closes_when_redis_answers_again() {
    const TIMEOUT: Duration = Duration::from_secs(2);
    let redis = RedisServer::start();
    let proxy = LatencyProxy::start(redis.port, Duration::ZERO).await;
    let policy = format!(
        "{}  - id: add-rate\n    on: callbackBeforeAddBlackCommand\n    rate_cap: {{ key: [ownerUserID], max: 100, per: 1m }}\n    decision: deny\n    error: {{ code: 20002, message: too many }}\n",
        banned_policy("{ redis: \"app:banned-users\" }")
            .replace("  - id: no-banned\n", "  - id: no-banned\n    on: callbackAfterRemoveBlackCommand\n")
    );
    let dir = PolicyDir::with("10.yaml", &policy);
    let server = start(&dir, &proxy.url(), &["--redis-timeout", "2s", "--on-error", "allow"]).await;
    const ADD_BLACK: &str = "/openim/callbackBeforeAddBlackCommand";
    let add_black = r#"{"ownerUserID":"u_1","blackUserID":"x"}"#;
    redis.command(&["SADD", "app:banned-users", "u_1"]);
    assert_eq!(server.post(UNBLOCK, &unblock("u_1", "x")).await.1, banned());
    assert_eq!(server.post(ADD_BLACK, add_black).await.1, ALLOW);

    proxy.hang();
    // Before the circuit opens, each decision waits out the timeout: three at once.
    let started = Instant::now();
    let body = unblock("u_1", "x");
    let (a, b, c) = tokio::join!(server.post(UNBLOCK, &body), server.post(UNBLOCK, &body), server.post(UNBLOCK, &body));
    let waited = started.elapsed();
    assert_eq!([a.1, b.1, c.1], [ALLOW; 3].map(String::from), "on_error allow: the list reads as empty");
    assert!(waited >= TIMEOUT, "the first calls wait out the timeout: {waited:?}");
    server.wait_for_metric("callgate_redis_circuit_open", 1.0, Duration::from_secs(5)).await;

    let started = Instant::now();
    for _ in 0..20 {
        assert_eq!(server.post(UNBLOCK, &body).await.1, ALLOW);
    }
    let twenty = started.elapsed();
    eprintln!("redis hung: 3 decisions before the circuit opened took {waited:?}; 20 after it took {twenty:?}");
    assert!(twenty < TIMEOUT, "20 decisions with the circuit open took {twenty:?}");
    assert!(server.metric(r#"callgate_list_errors_total{reason="circuit_open"}"#).await >= 20.0);
    let failed = server.metric(r#"callgate_list_errors_total{reason="timeout"}"#).await
        + server.metric(r#"callgate_list_errors_total{reason="redis"}"#).await;
    assert_eq!(failed, 3.0, "the three calls before the circuit opened");

    let started = Instant::now();
    assert_eq!(server.post(ADD_BLACK, add_black).await.1, ALLOW, "on_error allow");
    assert!(started.elapsed() < TIMEOUT, "a cap with the circuit open waited {:?}", started.elapsed());
    assert_eq!(server.metric(r#"callgate_ratecap_errors_total{reason="circuit_open"}"#).await, 1.0);
    assert_eq!(server.logs().matches("redis failed 3 times in a row").count(), 1, "{}", server.logs());

    proxy.answer();
    redis.command(&["SADD", "app:banned-users", "u_2"]);
    wait_until(
        Duration::from_secs(10),
        async || server.post(UNBLOCK, &unblock("u_2", "x")).await.1 == banned(),
        || format!("lists were not asked again: {}", server.logs()),
    )
    .await;
    assert_eq!(server.post(UNBLOCK, &unblock("u_1", "x")).await.1, banned());
    assert_eq!(server.metric("callgate_redis_circuit_open").await, 0.0);
    assert!(server.logs().contains("redis answers again after"), "{}", server.logs());
}
