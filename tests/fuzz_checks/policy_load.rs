//! `policy_load`: arbitrary bytes as the files of a policy directory, loaded with `load_dir`.
//!
//! Input: split at the first two NUL bytes into `10-a.yaml`, `20-b.yaml` (absent when there
//! is no NUL) and `lists/ids.txt` (absent when there is no second NUL). Loading must never
//! panic; a refusal must name a place (`file:line:` with a line ≥ 1) in the directory; a set
//! that loads must carry its version, and decide like its full scan on a few callbacks.

use std::path::Path;

use callgate::event::Event;
use serde_json::{Map, Value};

/// The files an input is split into, in order.
const FILES: [&str; 3] = ["10-a.yaml", "20-b.yaml", "lists/ids.txt"];

/// Callbacks every set that loads is asked about: small, but with the shapes OpenIM sends
/// (nested objects, arrays of objects, null, booleans, numbers as numbers).
const EVENTS: [&str; 3] = [
    r#"{"callbackCommand":"callbackBeforeSendSingleMsgCommand","sendID":"u_1001","recvID":"u_1002","sessionType":1,"contentType":101,"status":1,"content":"{\"content\":\"hi https://x.y\"}","atUserList":null,"senderNickname":"Alice","offlinePushInfo":{"title":"T","iOSBadgeCount":true}}"#,
    r#"{"callbackCommand":"callbackBeforeCreateGroupCommand","creatorUserID":"u_1001","groupID":"3259018725","groupType":2,"ex":"","initMemberList":[{"userID":"u_1001","roleLevel":100},{"userID":"u_1004","roleLevel":60}]}"#,
    r#"{"callbackCommand":"callbackAfterRemoveBlackCommand","ownerUserID":"u_ops","blackUserID":"bot_7","score":1.5,"a/b":{"c~d":[0,-1,1e3]}}"#,
];

/// A policy directory for [`check`] to write into, with its `lists/` folder. In `/dev/shm`
/// where there is one: rewriting a file on ext4 forces a write-back, which cost a quarter of
/// the fuzzer's time.
pub fn new_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    let dir = if shm.is_dir() { tempfile::tempdir_in(shm) } else { tempfile::tempdir() }.expect("temp dir");
    std::fs::create_dir(dir.path().join("lists")).expect("lists dir");
    dir
}

/// Runs the check on one input, in `dir` (made by [`new_dir`]; its files are replaced).
pub fn check(dir: &Path, data: &[u8]) {
    let mut parts = data.splitn(FILES.len(), |&b| b == 0);
    for name in FILES {
        let path = dir.join(name);
        match parts.next() {
            Some(bytes) => std::fs::write(&path, bytes).expect("write policy file"),
            None => {
                if path.exists() {
                    std::fs::remove_file(&path).expect("remove policy file");
                }
            }
        }
    }

    let dir_text = dir.display().to_string();
    match callgate::policy::load_dir(dir) {
        Ok(set) => {
            assert_eq!(set.version().len(), 64, "version `{}`", set.version());
            assert!(!set.files().is_empty());
            for text in EVENTS {
                let body: Map<String, Value> = serde_json::from_str(text).expect("fixed event");
                let command = body["callbackCommand"].as_str().expect("fixed command").to_string();
                super::agree::check_event(&set, &Event::openim(command, body));
            }
        }
        Err(errors) => {
            assert!(!errors.0.is_empty(), "refused with no error");
            for error in &errors.0 {
                let message = error.to_string();
                let rest = message
                    .strip_prefix(dir_text.as_str())
                    .unwrap_or_else(|| panic!("message names no file in the directory: {message}"));
                // `/10-a.yaml:12: ...`: a file, a line, a message.
                let mut fields = rest.splitn(3, ':');
                let (file, line) = (fields.next().unwrap_or(""), fields.next().unwrap_or(""));
                assert!(FILES.iter().any(|f| file == format!("/{f}")), "message names no file: {message}");
                assert!(line.parse::<usize>().is_ok_and(|n| n >= 1), "message has no line ≥ 1: {message}");
                assert!(fields.next().is_some_and(|m| m.len() > 1), "message says nothing: {message}");
            }
        }
    }
}
