//! `eval`: a fixed policy set, an arbitrary command and an arbitrary JSON body.
//!
//! Input: byte 0 picks one of [`POLICIES`]; the bytes up to the first `\n` after it are the
//! command; the rest is the body, skipped unless it is a JSON object. The indexed fast path
//! (`decide`) must agree with the full scan (`explain`) on outcome, deciding rule and dry-run
//! hits, the trace must tell the same story, and nothing may panic.

use std::sync::LazyLock;

use callgate::event::Event;
use callgate::policy::{PolicySet, load_dir};
use serde_json::{Map, Value};

/// Policies that between them use every operator, dotted paths (through arrays too), JSON
/// pointers (with `~0`/`~1`), nested any/all/not, exact and glob `on`, dry run, rate caps,
/// inline and file lists, numbers, floats and booleans, and every kind of index anchor.
pub const POLICIES: [&str; 3] = [
    // Every operator, on the fields OpenIM sends.
    r#"
lists:
  staff: [u_admin, u_ops, 42]
  blocked: { file: lists/blocked.txt }
rules:
  - id: staff-allow
    on: ["callbackBefore*"]
    when:
      sendID: { in_list: staff }
    decision: allow
  - id: blocked-sender
    when:
      sendID: { in_list: blocked }
      sessionType: { in: [1, 3] }
    decision: deny
    error: { code: 100, message: blocked }
  - id: text-spam
    on: [callbackBeforeSendSingleMsgCommand, callbackBeforeSendGroupMsgCommand]
    when:
      contentType: { equals: 101 }
      content: { regex: '(?i)buy\s+now|https?://' }
      recvID: { not_in_list: staff }
    decision: deny
    error: { code: 20001, message: spam, detail: no links }
  - id: group-at-all
    on: ["callback*Group*"]
    when:
      atUserList.0: { equals: AtAllTag }
      groupID: { not_equals: "" }
      sendID: { not_in: [u_owner, 7] }
    decision: deny
    error: { code: 20002, message: no at-all }
  - id: pointer-nested
    when:
      /offlinePushInfo/title: { regex: '^[A-Z]' }
      /a~1b/c~0d: { exists: true }
    decision: allow
  - id: dry-long-nick
    mode: dry_run
    when:
      senderNickname: { regex: '^.{10,}$', not_regex: '^bot_' }
    decision: deny
    error: { code: 30000, message: long nickname }
  - id: bool-flags
    when:
      iOSBadgeCount: { equals: true }
      isAtSelf: { not_equals: false }
    decision: allow
  - id: numbers
    when:
      score: { in: [1.5, "2", true, -0, 1e3] }
    decision: deny
    error: { code: 101, message: score }
  - id: missing-request
    on: [callbackBeforeAddFriendCommand]
    when:
      reqMsg: { exists: false }
      fromUserID: { exists: true }
    decision: deny
    error: { code: 20003, message: say hello }
default: allow
"#,
    // Logic, rate caps and a default deny.
    r#"
rules:
  - id: capped
    on: "*"
    when:
      sendID: { exists: true }
    rate_cap: { key: [sendID, /groupID, initMemberList.0.userID], max: 5, per: 1m }
    decision: deny
    error: { code: 20010, message: slow down }
  - id: dry-capped
    mode: dry_run
    rate_cap: { key: sendID, max: 1, per: 10s }
    decision: deny
    error: { code: 20011, message: would slow down }
  - id: nested
    when:
      any:
        - all:
            - initMemberList.1.roleLevel: { in: [60, 100] }
            - not: { groupType: { equals: 2 } }
        - not:
            any:
              - ex: { regex: '.' }
              - ex: { exists: false }
        - groupName: { regex: '^[\p{L} ]+$' }
      not:
        creatorUserID: { in: [u_bad] }
    decision: allow
  - id: dry-exact
    on: [callbackBeforeCreateGroupCommand]
    mode: dry_run
    decision: allow
  - id: exact-on
    on: [callbackBeforeCreateGroupCommand, callbackBeforeJoinGroupCommand]
    decision: deny
    error: { code: 20012, message: no groups today }
  - id: glob-middle
    on: ["callback*Friend*Command", "*Black*"]
    when:
      all:
        - fromUserID: { not_regex: '^u_1' }
        - toUserID: { not_in: [u_1001] }
    decision: allow
  - id: dry-every
    mode: dry_run
    when:
      not:
        not:
          operationID: { exists: true }
    decision: allow
default: deny
error: { code: 9999, message: nothing allowed this, detail: default }
"#,
    // Index stress: several anchors on one field, the same field named three ways.
    r#"
lists:
  ids: [u_1001, u_1002, "3259018725", "1"]
rules:
  - id: dry-eq
    mode: dry_run
    when:
      status: { equals: 1 }
    decision: deny
    error: { code: 200, message: dry eq }
  - id: in-status
    when:
      status: { in: [2, "3"] }
      groupID: { regex: '^\d+$' }
    decision: deny
    error: { code: 201, message: in }
  - id: list-status
    when:
      status: { in_list: ids }
    decision: allow
  - id: regex-status
    when:
      status: { regex: '^[0-9]{2,}$' }
    decision: deny
    error: { code: 202, message: regex }
  - id: regex-status-2
    when:
      status: { regex: '0$' }
      sendID: { in_list: ids }
    decision: allow
  - id: pointer-status
    when:
      /status: { equals: 7 }
    decision: deny
    error: { code: 203, message: pointer }
  - id: dotted-user
    when:
      initMemberList.0.userID: { in_list: ids }
      /initMemberList/0/roleLevel: { equals: 100 }
    decision: allow
  - id: bool-in
    when:
      isAtSelf: { in: [true] }
    decision: deny
    error: { code: 204, message: bool }
  - id: negated-only
    when:
      sendID: { not_equals: u_1001 }
      recvID: { not_in_list: ids }
    decision: deny
    error: { code: 205, message: negated }
  - id: nested-only
    on: ["*Msg*"]
    when:
      any:
        - sendID: { equals: u_1001 }
        - recvID: { equals: u_1002 }
    decision: allow
default: allow
"#,
];

/// The file list that the first policy names.
const BLOCKED_IDS: &str = "# blocked\nu_1003\n  u_spam  \n\n1749540000000\n";

/// The compiled [`POLICIES`], loaded once through `load_dir` like any policy set.
pub static SETS: LazyLock<Vec<PolicySet>> = LazyLock::new(|| {
    POLICIES
        .iter()
        .map(|text| {
            let dir = tempfile::tempdir().expect("temp dir");
            std::fs::create_dir(dir.path().join("lists")).expect("lists dir");
            std::fs::write(dir.path().join("lists/blocked.txt"), BLOCKED_IDS).expect("list file");
            std::fs::write(dir.path().join("policy.yaml"), text).expect("policy file");
            load_dir(dir.path()).unwrap_or_else(|e| panic!("fixed fuzz policy does not load: {e}"))
        })
        .collect()
});

/// Runs the check on one input.
pub fn check(data: &[u8]) {
    let Some((&pick, rest)) = data.split_first() else { return };
    let (command, body) = match rest.iter().position(|&b| b == b'\n') {
        Some(at) => (&rest[..at], &rest[at + 1..]),
        None => (rest, &[][..]),
    };
    let Ok(body) = serde_json::from_slice::<Map<String, Value>>(body) else { return };
    let set = &SETS[usize::from(pick) % SETS.len()];
    super::agree::check_event(set, &Event::openim(String::from_utf8_lossy(command), body));
}
