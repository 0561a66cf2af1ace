#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests: a failure should panic")]
//! Faults while serving: the record directory vanishes (so records cannot be written), the
//! policy directory is deleted or swapped for another, and a list file of 1,000,000 IDs.

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;

const DENY_SYS: &str = "rules:\n  - id: no-sys\n    when:\n      blackUserID: { regex: '^sys_' }\n    decision: deny\n    error: { code: 150, message: no }\n";

/// With the record directory gone, a Tencent callback is answered FAIL (it cannot be kept),
/// while OpenIM callbacks are still decided and the lost records are counted.
#[tokio::test]
async fn records_that_cannot_be_written_fail_tencent_and_are_counted_for_openim() {
    let dir = PolicyDir::with("10.yaml", DENY_SYS);
    let data = tempfile::tempdir().unwrap();
    let records = data.path().join("records");
    let server = Server::start_with_data(dir.path(), &records, &["--record-max-bytes", "4096"]);
    let query = "SdkAppid=1&CallbackCommand=Sns.CallbackFriendDelete&contenttype=json&ClientIP=1.1.1.1&OptPlatform=Web";
    let body = wire(&sample("tencent/Sns.CallbackFriendDelete.json"));
    assert_eq!(server.post_tencent(query, &body).await.0, 200);

    std::fs::remove_dir_all(&records).unwrap();
    // The open file still takes writes until it is full; then a new file cannot be made.
    let started = Instant::now();
    let failed = loop {
        let (status, answer) = server.post_tencent(query, &body).await;
        if status != 200 {
            break (status, answer);
        }
        assert!(started.elapsed() < Duration::from_secs(20), "Tencent callbacks still acknowledged");
    };
    assert_eq!(failed.0, 500);
    assert!(
        failed.1.starts_with(r#"{"ActionStatus":"FAIL","ErrorCode":1,"ErrorInfo":"cannot record the callback"#),
        "{}",
        failed.1
    );

    for _ in 0..20 {
        assert_eq!(
            server.post("/openim/callbackAfterRemoveBlackCommand", &unblock("u_1", "sys_1")).await.1,
            refusal(150, "no", "")
        );
    }
    // OpenIM records are written behind the answer, so the losses are counted a moment later.
    server.wait_for_metric("callgate_records_failed_total", 20.0, Duration::from_secs(10)).await;
    assert!(server.logs().contains("records not written"));

    // The directory comes back: records are written again, by themselves.
    std::fs::create_dir_all(&records).unwrap();
    let acknowledged = async || server.post_tencent(query, &body).await.0 == 200;
    wait_until(Duration::from_secs(20), acknowledged, || "never recovered".into()).await;
}

/// A small tmpfs, unmounted (lazily, so open files do not stop it) on drop.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    /// Mounts a tmpfs of `bytes`; `None` when not running as root (mounting needs it). As
    /// root a failure to mount is a failure of the test.
    fn mount(bytes: u64) -> Option<SmallDisk> {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let euid = status.lines().find_map(|l| l.strip_prefix("Uid:")).and_then(|l| l.split_whitespace().nth(1));
        if euid != Some("0") {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .unwrap()
            .success();
        assert!(ok, "cannot mount a tmpfs as root");
        Some(SmallDisk { dir })
    }

    /// Fills the disk up but for `free` bytes: a reserve file of that size is made first,
    /// then a filler grows until the disk is full, then the reserve is removed. Returns the
    /// filler's path; removing it frees the disk.
    fn fill_leaving(&self, free: usize) -> std::path::PathBuf {
        use std::io::Write;
        let reserve = self.dir.path().join("reserve");
        std::fs::write(&reserve, vec![b'r'; free]).unwrap();
        let filler = self.dir.path().join("filler");
        let mut file = std::fs::File::create(&filler).unwrap();
        let chunk = vec![b'f'; 4096];
        while file.write_all(&chunk).is_ok() {}
        std::fs::remove_file(reserve).unwrap();
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

/// The record disk full (a real ENOSPC from a small tmpfs): Tencent callbacks are answered
/// FAIL while nothing can be written, OpenIM callbacks are still decided and their lost
/// records counted, and once space is freed records are written again by themselves, with
/// no torn line left in the file.
#[tokio::test]
async fn a_full_record_disk_fails_tencent_and_recovers_when_space_is_freed() {
    let Some(disk) = SmallDisk::mount(512 << 10) else {
        eprintln!("skipped: mounting a small tmpfs needs root");
        return;
    };
    let dir = PolicyDir::with("10.yaml", DENY_SYS);
    let records = disk.dir.path().join("records");
    std::fs::create_dir(&records).unwrap();
    let filler = disk.fill_leaving(16 << 10);
    let mut server = Server::start_with_data(dir.path(), &records, &[]);
    let query = "SdkAppid=1&CallbackCommand=Sns.CallbackFriendDelete&contenttype=json&ClientIP=1.1.1.1&OptPlatform=Web";
    let body = wire(&sample("tencent/Sns.CallbackFriendDelete.json"));

    let mut acknowledged = 0;
    let failed = loop {
        let (status, answer) = server.post_tencent(query, &body).await;
        if status != 200 {
            break (status, answer);
        }
        acknowledged += 1;
        assert!(acknowledged < 1000, "16 KiB never filled up");
    };
    assert!(acknowledged > 0, "the first records fit");
    assert_eq!(failed.0, 500);
    assert!(failed.1.starts_with(r#"{"ActionStatus":"FAIL","ErrorCode":1,"ErrorInfo":"cannot record the callback"#));
    assert!(failed.1.contains("No space left on device"), "{}", failed.1);

    for _ in 0..20 {
        assert_eq!(
            server.post("/openim/callbackAfterRemoveBlackCommand", &unblock("u_1", "sys_1")).await.1,
            refusal(150, "no", "")
        );
    }
    // OpenIM records are written behind the answer, so the losses are counted a moment later.
    server.wait_for_metric("callgate_records_failed_total", 21.0, Duration::from_secs(10)).await;

    std::fs::remove_file(filler).unwrap();
    let acknowledged_again = async || server.post_tencent(query, &body).await.0 == 200;
    wait_until(Duration::from_secs(20), acknowledged_again, || "never recovered".into()).await;
    acknowledged += 1;
    assert_eq!(server.terminate(), Some(0));
    // Every line in the file is whole (a failed write is cut back), and every acknowledged
    // callback is there.
    let recorded = events(&records, &["--source", "tencent"]);
    assert_eq!(recorded.len(), acknowledged, "acknowledged callbacks on disk");
    for f in std::fs::read_dir(&records).unwrap() {
        let text = std::fs::read_to_string(f.unwrap().path()).unwrap();
        for line in text.lines() {
            serde_json::from_str::<serde_json::Value>(line).unwrap_or_else(|e| panic!("torn line {line:?}: {e}"));
        }
    }
}

/// The policy directory deleted while serving: the serving set stays, the failure shows in
/// status; once the directory is back it is watched again and loaded, with no SIGHUP, and
/// so are later edits in it. (Fixed bug: the watch died with the old directory.)
#[tokio::test]
async fn a_deleted_policy_directory_leaves_the_serving_set_in_force() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("policies");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("10.yaml"), DENY_SYS).unwrap();
    let server = Server::start(&dir, &[]);
    let version = server.policy_version().await;

    std::fs::remove_dir_all(&dir).unwrap();
    let has_failed = async || server.admin_get("/v1/status").await["last_reload"]["ok"] == false;
    wait_until(Duration::from_secs(10), has_failed, || format!("no failed reload seen: {}", server.logs())).await;
    let status = server.admin_get("/v1/status").await;
    assert_eq!(status["policy_version"], version.as_str());
    assert!(status["last_reload"]["error"].as_str().unwrap().contains("cannot read the policy directory"), "{status}");
    assert_eq!(
        server.post("/openim/callbackAfterRemoveBlackCommand", &unblock("u_1", "sys_1")).await.1,
        refusal(150, "no", "")
    );

    // Made again as a deploy tool does, possibly on the old inode (ext4 reuses it at once).
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("10.yaml"), DENY_SYS.replace("code: 150", "code: 151")).unwrap();
    server.wait_for_new_version(&version, Duration::from_secs(10)).await;
    assert_eq!(
        server.post("/openim/callbackAfterRemoveBlackCommand", &unblock("u_1", "sys_1")).await.1,
        refusal(151, "no", "")
    );
    assert_eq!(server.admin_get("/v1/status").await["last_reload"]["ok"], true);

    // An edit in place in the new directory is seen too: the watch is on it.
    let recreated = server.policy_version().await;
    std::fs::write(dir.join("10.yaml"), DENY_SYS.replace("code: 150", "code: 152")).unwrap();
    server.wait_for_new_version(&recreated, Duration::from_secs(10)).await;
    assert_eq!(
        server.post("/openim/callbackAfterRemoveBlackCommand", &unblock("u_1", "sys_1")).await.1,
        refusal(152, "no", "")
    );
    assert!(!server.logs().contains("SIGHUP"), "reloaded by the watcher alone");
}

/// The policy path is a symlink a deploy points at each release in turn: the new release goes
/// live with no SIGHUP, and edits in it are seen (the watch follows the link's new target).
#[tokio::test]
async fn a_policy_symlink_pointed_at_a_new_release_is_watched_again() {
    let parent = tempfile::tempdir().unwrap();
    let release = |name: &str, code: u32| {
        let dir = parent.path().join(name);
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("10.yaml"), DENY_SYS.replace("code: 150", &format!("code: {code}"))).unwrap();
    };
    release("v1", 150);
    let current = parent.path().join("current");
    std::os::unix::fs::symlink("v1", &current).unwrap();
    let server = Server::start(&current, &[]);
    let v1 = server.policy_version().await;

    // Swapped atomically, as `ln -sfn` over a temporary link and a rename do.
    release("v2", 151);
    let next = parent.path().join("current.next");
    std::os::unix::fs::symlink("v2", &next).unwrap();
    std::fs::rename(&next, &current).unwrap();
    server.wait_for_new_version(&v1, Duration::from_secs(10)).await;
    assert_eq!(
        server.post("/openim/callbackAfterRemoveBlackCommand", &unblock("u_1", "sys_1")).await.1,
        refusal(151, "no", "")
    );

    let v2 = server.policy_version().await;
    std::fs::write(parent.path().join("v2/10.yaml"), DENY_SYS.replace("code: 150", "code: 152")).unwrap();
    server.wait_for_new_version(&v2, Duration::from_secs(10)).await;
    assert_eq!(
        server.post("/openim/callbackAfterRemoveBlackCommand", &unblock("u_1", "sys_1")).await.1,
        refusal(152, "no", "")
    );
}

/// A list file of 1,000,000 IDs loads, decides, and reloads.
#[tokio::test]
async fn a_list_of_a_million_ids() {
    let dir = PolicyDir::with(
        "10.yaml",
        "lists:\n  banned: { file: lists/banned.txt }\nrules:\n  - id: banned\n    when:\n      blackUserID: { in_list: banned }\n    decision: deny\n    error: { code: 150, message: banned }\n",
    );
    let seed = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() % 1000;
    let ids: String = (0..1_000_000).map(|i| format!("u_{seed}_{i}\n")).collect();
    dir.write("lists/banned.txt", &ids);
    let started = Instant::now();
    let server = Server::start(dir.path(), &[]);
    let startup = started.elapsed();
    assert_eq!(
        server.post("/openim/callbackAfterRemoveBlackCommand", &unblock("u_1", &format!("u_{seed}_999999"))).await.1,
        refusal(150, "banned", "")
    );
    assert_eq!(server.post("/openim/callbackAfterRemoveBlackCommand", &unblock("u_1", "u_other")).await.1, ALLOW);
    let v = server.policy_version().await;
    dir.write("lists/banned.txt", &format!("{ids}u_late\n"));
    server.wait_for_new_version(&v, Duration::from_secs(60)).await;
    assert_eq!(
        server.post("/openim/callbackAfterRemoveBlackCommand", &unblock("u_1", "u_late")).await.1,
        refusal(150, "banned", "")
    );
    eprintln!("1,000,000-ID list: server ready in {startup:?} (debug build)");
}
