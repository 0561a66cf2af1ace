#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests: a failure should panic")]
//! Hot reload over real HTTP: every way a policy directory changes, a broken set that leaves
//! the old one serving, SIGHUP and the admin endpoint, and atomic swaps under load.

mod common;

use std::os::unix::fs::symlink;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::*;

/// How long a change may take to go live in these tests. The contract is one second; the
/// margin is for a loaded CI machine running debug builds in parallel.
const LIVE_WITHIN: Duration = Duration::from_secs(10);

const UNBLOCK: &str = "/openim/callbackAfterRemoveBlackCommand";

fn deny_rule(id: &str, user: &str, code: i32) -> String {
    format!(
        "rules:\n  - id: {id}\n    when:\n      blackUserID: {{ equals: {user} }}\n    decision: deny\n    error: {{ code: {code}, message: \"{id}\" }}\n"
    )
}

#[tokio::test]
async fn edits_in_place_renames_new_and_removed_files_all_go_live() {
    let dir = PolicyDir::with("10-a.yaml", &deny_rule("a", "u_9", 101));
    let server = Server::start(dir.path(), &[]);
    assert_eq!(server.post(UNBLOCK, &unblock("u_1", "u_9")).await.1, refusal(101, "a", ""));

    // Edit in place.
    let v = server.policy_version().await;
    dir.write("10-a.yaml", &deny_rule("a", "u_9", 102));
    server.wait_for_new_version(&v, LIVE_WITHIN).await;
    assert_eq!(server.post(UNBLOCK, &unblock("u_1", "u_9")).await.1, refusal(102, "a", ""));

    // Write-and-rename.
    let v = server.policy_version().await;
    dir.write_and_rename("10-a.yaml", &deny_rule("a", "u_9", 103));
    server.wait_for_new_version(&v, LIVE_WITHIN).await;
    assert_eq!(server.post(UNBLOCK, &unblock("u_1", "u_9")).await.1, refusal(103, "a", ""));

    // A new file; it sorts first, so its rule decides first.
    let v = server.policy_version().await;
    dir.write("05-first.yaml", &deny_rule("first", "u_9", 104));
    server.wait_for_new_version(&v, LIVE_WITHIN).await;
    assert_eq!(server.post(UNBLOCK, &unblock("u_1", "u_9")).await.1, refusal(104, "first", ""));

    // The file removed again.
    let v = server.policy_version().await;
    dir.remove("05-first.yaml");
    server.wait_for_new_version(&v, LIVE_WITHIN).await;
    assert_eq!(server.post(UNBLOCK, &unblock("u_1", "u_9")).await.1, refusal(103, "a", ""));

    // Files that are not policy files change nothing.
    dir.write("notes.txt", "hello");
    dir.write(".10-a.yaml.swp", "garbage: [");
    assert_eq!(server.admin_get("/v1/status").await["last_reload"]["ok"], true);
}

#[tokio::test]
async fn list_file_edits_go_live() {
    let dir = PolicyDir::with(
        "10-a.yaml",
        "lists:\n  staff: { file: lists/staff.txt }\nrules:\n  - id: staff-only\n    when:\n      ownerUserID: { not_in_list: staff }\n    decision: deny\n    error: { code: 150, message: staff only }\n",
    );
    dir.write("lists/staff.txt", "# staff\nadmin_1\n");
    let server = Server::start(dir.path(), &[]);
    let body = |owner: &str| format!(r#"{{"callbackCommand":"x","ownerUserID":"{owner}"}}"#);
    assert_eq!(server.post("/openim/x", &body("admin_1")).await.1, ALLOW);
    assert_eq!(server.post("/openim/x", &body("admin_2")).await.1, refusal(150, "staff only", ""));

    let v = server.policy_version().await;
    dir.write("lists/staff.txt", "# staff\nadmin_1\nadmin_2\n");
    server.wait_for_new_version(&v, LIVE_WITHIN).await;
    assert_eq!(server.post("/openim/x", &body("admin_2")).await.1, ALLOW);
}

#[tokio::test]
async fn a_broken_set_leaves_the_old_one_in_force_until_fixed() {
    let dir = PolicyDir::with("10-a.yaml", &deny_rule("a", "u_9", 101));
    let server = Server::start(dir.path(), &[]);
    let good = server.policy_version().await;

    dir.write("10-a.yaml", "rules:\n  - id: a\n    decision: deny\n");
    let status = wait_for_reload_result(&server, false).await;
    let error = status["last_reload"]["error"].as_str().unwrap();
    assert!(
        error
            .ends_with("10-a.yaml:2: rule `a`: a deny needs `error: { code: N, message: \"...\" }` (code 100 or more)"),
        "{error}"
    );
    assert_eq!(status["policy_version"], good.as_str());
    assert_eq!(server.post(UNBLOCK, &unblock("u_1", "u_9")).await.1, refusal(101, "a", ""));
    // One line says it all, the errors with their places.
    let logs = server.logs();
    let refused: Vec<&str> = logs.lines().filter(|l| l.contains("policy set refused")).collect();
    assert_eq!(refused.len(), 1, "{logs}");
    assert!(refused[0].contains("the previous set stays in force (1 error(s)): "), "{logs}");
    assert!(refused[0].contains("10-a.yaml:2: rule `a`: a deny needs `error:"), "{logs}");
    assert!(refused[0].contains(" ERROR "), "{logs}");

    dir.write("10-a.yaml", &deny_rule("a", "u_9", 105));
    server.wait_for_new_version(&good, LIVE_WITHIN).await;
    assert_eq!(server.post(UNBLOCK, &unblock("u_1", "u_9")).await.1, refusal(105, "a", ""));
    assert_eq!(server.admin_get("/v1/status").await["last_reload"]["ok"], true);
}

/// Waits until status shows the last reload's result as `ok`; returns the status.
async fn wait_for_reload_result(server: &Server, ok: bool) -> serde_json::Value {
    let mut status = serde_json::Value::Null;
    common::wait_until(
        LIVE_WITHIN,
        async || {
            status = server.admin_get("/v1/status").await;
            status["last_reload"]["ok"] == ok
        },
        || format!("no reload with ok = {ok} seen; logs:\n{}", server.logs()),
    )
    .await;
    status
}

#[tokio::test]
async fn a_reload_that_succeeds_after_a_failed_one_logs_the_recovery() {
    const RECOVERED: &str = "policy set recovered: version ";
    let dir = PolicyDir::with("10-a.yaml", &deny_rule("a", "u_9", 101));
    let server = Server::start(dir.path(), &[]);

    // A reload after a good one is no recovery.
    let v = server.policy_version().await;
    dir.write_and_rename("10-a.yaml", &deny_rule("a", "u_9", 102));
    server.wait_for_new_version(&v, LIVE_WITHIN).await;
    let good = server.policy_version().await;

    dir.write_and_rename("10-a.yaml", "rules:\n  - id: a\n    decision: deny\n");
    wait_for_reload_result(&server, false).await;
    assert!(!server.logs().contains(RECOVERED), "{}", server.logs());

    // Fixed with a new set: one INFO line naming it.
    dir.write_and_rename("10-a.yaml", &deny_rule("a", "u_9", 103));
    server.wait_for_new_version(&good, LIVE_WITHIN).await;
    let fixed = server.policy_version().await;
    let line = format!("{RECOVERED}{fixed} (1 rules)");
    server.wait_for_log(&line, LIVE_WITHIN).await;
    let logged: Vec<String> = server.logs().lines().filter(|l| l.contains(RECOVERED)).map(String::from).collect();
    assert_eq!(logged.len(), 1, "{logged:?}");
    assert!(logged[0].contains("INFO") && logged[0].ends_with(&line), "{}", logged[0]);

    // Broken again, then put back exactly as serving: the set is unchanged, yet that is a
    // recovery too.
    dir.write_and_rename("10-a.yaml", "rules: [\n");
    wait_for_reload_result(&server, false).await;
    dir.write_and_rename("10-a.yaml", &deny_rule("a", "u_9", 103));
    wait_for_reload_result(&server, true).await;
    assert_eq!(server.policy_version().await, fixed);
    let logged_twice = async || server.logs().matches(&line).count() >= 2;
    wait_until(LIVE_WITHIN, logged_twice, || format!("no second recovery logged:\n{}", server.logs())).await;
}

/// Lays out a directory the way Kubernetes mounts a ConfigMap: the files are symlinks into
/// `..data`, itself a symlink to a timestamped directory, swapped by an atomic rename.
struct ConfigMapDir {
    dir: PolicyDir,
    generation: std::cell::Cell<u32>,
}

impl ConfigMapDir {
    fn new(files: &[(&str, String)]) -> ConfigMapDir {
        let cm = ConfigMapDir { dir: PolicyDir::new(), generation: std::cell::Cell::new(0) };
        let target = cm.stage(files);
        symlink(&target, cm.dir.path().join("..data")).unwrap();
        for (name, _) in files {
            symlink(format!("..data/{name}"), cm.dir.path().join(name)).unwrap();
        }
        cm
    }

    fn stage(&self, files: &[(&str, String)]) -> String {
        let generation = self.generation.get() + 1;
        self.generation.set(generation);
        let name = format!("..2026_11_22_00_00_{generation:02}");
        for (file, text) in files {
            self.dir.write(&format!("{name}/{file}"), text);
        }
        name
    }

    /// Points `..data` at a new generation with one atomic rename, as the kubelet does.
    fn swap(&self, files: &[(&str, String)]) {
        let target = self.stage(files);
        let tmp = self.dir.path().join("..data_tmp");
        symlink(&target, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.path().join("..data")).unwrap();
    }

    fn path(&self) -> &std::path::Path {
        self.dir.path()
    }
}

#[tokio::test]
async fn configmap_symlink_swap_goes_live() {
    let cm = ConfigMapDir::new(&[("policy.yaml", deny_rule("a", "u_9", 101))]);
    let server = Server::start(cm.path(), &[]);
    assert_eq!(server.post(UNBLOCK, &unblock("u_1", "u_9")).await.1, refusal(101, "a", ""));
    let v = server.policy_version().await;
    cm.swap(&[("policy.yaml", deny_rule("a", "u_9", 202))]);
    server.wait_for_new_version(&v, LIVE_WITHIN).await;
    assert_eq!(server.post(UNBLOCK, &unblock("u_1", "u_9")).await.1, refusal(202, "a", ""));
}

#[tokio::test]
async fn sighup_and_admin_endpoint_force_a_reload() {
    let dir = PolicyDir::with("10-a.yaml", &deny_rule("a", "u_9", 101));
    let server = Server::start(dir.path(), &[]);
    let attempted = || async { server.admin_get("/v1/status").await["last_reload"]["attempted_at"].as_f64().unwrap() };

    let before = attempted().await;
    server.signal("HUP");
    wait_until(
        LIVE_WITHIN,
        async || attempted().await != before,
        || format!("SIGHUP made no reload; logs:\n{}", server.logs()),
    )
    .await;
    assert!(server.logs().contains("SIGHUP: reloading policies"));

    let resp = server.client.post(format!("{}/v1/reload", server.admin)).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["result"], "unchanged");

    dir.write("10-a.yaml", "rules: [");
    let resp = server.client.post(format!("{}/v1/reload", server.admin)).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 422);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["result"], "error");
    assert!(body["errors"][0].as_str().unwrap().ends_with("10-a.yaml:1: unclosed `[`: the list that starts at column 8 has no `]`; end it with `]`, and separate its items with `,`"), "{body}");
    assert_eq!(server.post(UNBLOCK, &unblock("u_1", "u_9")).await.1, refusal(101, "a", ""));
}

/// Two versions whose answers differ, and where a set mixing one file of each would give a
/// third answer: in A the first file decides; in B the first file's rule never holds and
/// the second file decides. A (10 from B, 20 from A) mix would answer 102.
fn version_files(v: char) -> Vec<(&'static str, String)> {
    match v {
        'A' => {
            vec![("10-first.yaml", deny_rule("first", "u_9", 101)), ("20-second.yaml", deny_rule("second", "u_9", 102))]
        }
        _ => vec![
            ("10-first.yaml", deny_rule("first", "nobody", 201)),
            ("20-second.yaml", deny_rule("second", "u_9", 202)),
        ],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_answer_comes_wholly_from_one_set_while_sets_flip() {
    let cm = ConfigMapDir::new(&version_files('A'));
    let server = Arc::new(Server::start(cm.path(), &[]));
    let answer_a = refusal(101, "first", "");
    let answer_b = refusal(202, "second", "");

    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..8 {
        let (server, stop) = (server.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let mut answers = Vec::new();
            // Bounded in count as well as by the flipper's stop.
            for _ in 0..5_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let (status, body) = server.post(UNBLOCK, &unblock("u_1", "u_9")).await;
                answers.push((status, body));
            }
            answers
        }));
    }
    let mut flips = 0;
    for i in 0..20 {
        let serving = server.policy_version().await;
        cm.swap(&version_files(if i % 2 == 0 { 'B' } else { 'A' }));
        server.wait_for_new_version(&serving, LIVE_WITHIN).await;
        flips += 1;
    }
    stop.store(true, Ordering::Relaxed);
    let (mut seen_a, mut seen_b) = (0, 0);
    for w in workers {
        for (status, body) in w.await.unwrap() {
            assert_eq!(status, 200);
            if body == answer_a {
                seen_a += 1;
            } else if body == answer_b {
                seen_b += 1;
            } else {
                panic!("answer from no single set: {body}");
            }
        }
    }
    assert_eq!(flips, 20);
    assert!(seen_a > 0 && seen_b > 0, "both sets must have answered: A {seen_a}, B {seen_b}");
    assert!(server.logs().matches("policy set loaded").count() >= 2, "{}", server.logs());
}

#[tokio::test]
async fn a_ten_thousand_rule_set_goes_live() {
    let rules = |code: i32| {
        let mut yaml = String::from("rules:\n");
        for i in 0..10_000 {
            yaml.push_str(&format!(
                "  - id: r{i}\n    on: [callbackAfterRemoveBlackCommand]\n    when:\n      blackUserID: {{ equals: user_{i} }}\n    decision: deny\n    error: {{ code: {code}, message: \"r{i}\" }}\n"
            ));
        }
        yaml
    };
    let dir = PolicyDir::with("big.yaml", &rules(101));
    let server = Server::start(dir.path(), &[]);
    assert_eq!(server.post(UNBLOCK, &unblock("u_1", "user_9999")).await.1, refusal(101, "r9999", ""));
    let v = server.policy_version().await;
    dir.write_and_rename("big.yaml", &rules(102));
    server.wait_for_new_version(&v, LIVE_WITHIN).await;
    assert_eq!(server.post(UNBLOCK, &unblock("u_1", "user_9999")).await.1, refusal(102, "r9999", ""));
}
