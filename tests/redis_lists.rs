#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests: a failure should panic")]
//! Lists held in Redis sets (`lists: banned: { redis: key }`) over real HTTP against a real
//! `redis-server` (and a real cluster): asked live, cached for at most the stated time, and
//! answered per `--on-error` when Redis fails.

mod common;

use std::time::Duration;

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

/// In a cluster the set is asked on the node that holds it.
#[tokio::test]
async fn a_list_in_a_redis_cluster() {
    let cluster = RedisCluster::start();
    let dir = PolicyDir::with("10.yaml", &banned_policy("{ redis: \"app:banned-users\" }"));
    let server = start(&dir, &cluster.url(), &["--redis-cluster", "--on-error", "allow"]).await;
    assert_eq!(cluster.cli(cluster.nodes[0].port, &["SADD", "app:banned-users", "u_1"]), "1");
    assert_eq!(server.post(UNBLOCK, &unblock("u_1", "x")).await.1, banned());
    assert_eq!(server.post(UNBLOCK, &unblock("u_2", "x")).await.1, ALLOW);
}
