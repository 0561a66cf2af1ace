//! `record_read`: arbitrary bytes as a file of records, replayed by `callgate::replay`.
//!
//! A replay never panics and never fails on what a line holds (a bad line is counted); each
//! line read ends in exactly one count; replaying with cases picked (bodies built afresh for
//! each record) finds what replaying without does (bodies rewritten in place); and in a fuzz
//! build each line is read by replay's scanner as serde_json reads it, or left to serde_json
//! (`callgate::replay::check_line`, compiled under `cfg(fuzzing)` only: plain `cargo test`
//! runs that part on the seeds in the scanner's own unit tests).

use std::path::Path;
use std::sync::LazyLock;

use callgate::policy::PolicySet;
use callgate::record::EventFilter;
use callgate::replay::{CasePicker, replay};

/// Rules of every kind a replay decides with: a regex, a cap (on the records' clock), a
/// dry-run rule, a Tencent message rule, and per-item Tencent rules.
const POLICY: &str = r#"rules:
  - id: no-sys
    when:
      blackUserID: { regex: '^sys_' }
    decision: deny
    error: { code: 150, message: no }
  - id: cap
    on: ["callback*Black*"]
    rate_cap: { key: [ownerUserID], max: 2, per: 1s }
    decision: deny
    error: { code: 151, message: too many }
  - id: trial
    when:
      sendID: { regex: '1' }
    decision: deny
    error: { code: 152, message: trial }
    mode: dry_run
  - id: muted
    on: C2C.CallbackBeforeSendMsg
    when:
      From_Account: { equals: m }
    decision: discard
  - id: no-bots
    on: [Sns.CallbackPrevFriendAdd, Group.CallbackBeforeInviteJoinGroup]
    when:
      item.To_Account: { regex: '^bot' }
    decision: deny
    error: { code: { sns: 38001, group: 10101 }, message: no bots }
"#;

static SET: LazyLock<PolicySet> = LazyLock::new(|| {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("10.yaml"), POLICY).expect("write policy");
    callgate::policy::load_dir(dir.path()).expect("the fixed policy loads")
});

/// A directory for [`check`] to write its records file into; in `/dev/shm` where there is
/// one (see `policy_load::new_dir`).
pub fn new_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() { tempfile::tempdir_in(shm) } else { tempfile::tempdir() }.expect("temp dir")
}

/// Runs the check on one input, as the records of `dir` (made by [`new_dir`]).
pub fn check(dir: &Path, data: &[u8]) {
    std::fs::write(dir.join("records-0000000000001.jsonl"), data).expect("write records");
    let filter = EventFilter::default();
    let plain = replay(dir, &SET, &filter, None, |_| {}).expect("a replay fails only when records cannot be read");
    let r = &plain.records;
    assert_eq!(r.read, r.replayed + r.tencent_skipped + r.filtered_out + r.malformed, "{r:?}");
    let c = &plain.changes;
    assert_eq!(c.changed, c.allow_to_deny + c.deny_to_allow + c.other_rule);
    assert!(plain.malformed.len() as u64 <= r.malformed);

    let mut picker = CasePicker::new(8);
    let with_cases = replay(dir, &SET, &filter, Some(&mut picker), |_| {}).expect("replay with cases");
    let json = |report: &callgate::replay::Report| {
        let v = serde_json::to_value(report).expect("a report serializes");
        (v["records"].clone(), v["changes"].clone(), v["rules"].clone(), v["examples"].clone())
    };
    assert_eq!(json(&plain), json(&with_cases), "bodies rewritten in place and built afresh disagree");

    #[cfg(fuzzing)]
    for line in data.split(|&b| b == b'\n') {
        if let Ok(line) = std::str::from_utf8(line) {
            callgate::replay::check_line(line);
        }
    }
}
