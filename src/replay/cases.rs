//! Policy test cases from a replay (`callgate replay --write-cases FILE`): which replayed
//! callbacks become cases, and the file they are written to.
//!
//! Each case pins what the candidate set decides for one recorded callback (decision, rule,
//! errCode, the dry-run rules that held), in the format `callgate test` reads; the case is
//! read back and run as `callgate test` would before it is kept ([`pinning_case`]). At
//! most `max` are written, chosen in this order, each in the order met:
//!
//! 1. pins: the first callback of each command that each rule (or the default) decided, and
//!    that each dry-run rule held for, so every rule that decided is pinned;
//! 2. changes: callbacks the candidate answers otherwise than was answered then;
//! 3. others.
//!
//! Identical callbacks (same command, the same fields the set reads, the same cap counts
//! and answer) are written once. A callback keeps only `callbackCommand` and the top-level
//! fields the set reads (as the server decodes one), so a case is short and shows what
//! decided it. A case's `caps` are the counts the replay's cap store held; callbacks met
//! while the store was full are not written, their counts being unknown.

use std::collections::{BTreeMap, HashSet};
use std::hash::{Hash, Hasher};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use super::{Answer, Direction, RawLine, Report, place};
use crate::decision::Decision;
use crate::event::Event;
use crate::policy::{PolicySet, pinning_case};

/// How many cases `--write-cases` writes unless `--max-cases` says otherwise.
pub const DEFAULT_MAX_CASES: usize = 200;

/// Callbacks whose case failed that are remembered, so as not to be tried again.
const UNREPRODUCED_REMEMBERED: u64 = 1_000;

/// Why the cases could not be written.
#[derive(Debug, thiserror::Error)]
#[error("cannot write the cases to `{}`", file.display())]
pub struct WriteCasesError {
    file: PathBuf,
    source: std::io::Error,
}

/// Which bucket a case is picked into, in order of preference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bucket {
    Pin,
    Changed,
    Other,
}

/// A case kept: where its record was met, and its YAML with a comment.
#[derive(Debug)]
struct Picked {
    seq: u64,
    text: String,
}

/// A replayed callback offered as a case.
pub(super) struct Offer<'a> {
    pub at: &'a RawLine<'a>,
    pub time: &'a str,
    pub event: &'a Event,
    pub decision: &'a Decision,
    pub direction: Option<Direction>,
    pub old: &'a Answer,
}

/// Picks the cases of a replay as callbacks are replayed, holding at most `max` of each
/// kind: memory stays bounded whatever the number of records.
#[derive(Debug)]
pub struct CasePicker {
    max: usize,
    seq: u64,
    /// Hashes of the (command, rule) pairs already pinned; `default` for the default.
    pinned: HashSet<u64>,
    buckets: [Vec<Picked>; 3],
    /// Hashes of the cases kept, so an identical callback is not kept twice.
    seen: HashSet<u64>,
    /// Callbacks whose case did not reproduce the replay's decision offline.
    unreproduced: u64,
    first_problem: Option<String>,
}

/// What was written.
#[derive(Debug, Clone, Default)]
pub struct CasesWritten {
    /// Cases written.
    pub written: usize,
    /// Of them, pinning a rule for a command.
    pub pins: usize,
    /// Of them, changed callbacks.
    pub changed: usize,
    /// Of them, the others.
    pub others: usize,
    /// Callbacks left out because their case did not pass offline.
    pub unreproduced: u64,
    /// Why the first of those did not.
    pub first_problem: Option<String>,
}

impl CasePicker {
    /// A picker that writes at most `max` cases.
    pub fn new(max: usize) -> CasePicker {
        CasePicker {
            max,
            seq: 0,
            pinned: HashSet::new(),
            buckets: [Vec::new(), Vec::new(), Vec::new()],
            seen: HashSet::new(),
            unreproduced: 0,
            first_problem: None,
        }
    }

    /// Offers a replayed callback: kept when it falls in a bucket with room and is not
    /// identical to one kept.
    pub(super) fn offer(&mut self, set: &PolicySet, offer: &Offer<'_>) {
        self.seq += 1;
        let command = &offer.event.command;
        let pins = pin_keys(offer.decision).map(|rule| pin_hash(command, rule));
        let is_new_pin = pins.clone().any(|pin| !self.pinned.contains(&pin));
        let bucket = if is_new_pin {
            Bucket::Pin
        } else if offer.direction.is_some() {
            Bucket::Changed
        } else {
            Bucket::Other
        };
        if self.buckets[bucket as usize].len() >= self.max {
            return;
        }
        let caps: BTreeMap<String, u64> = offer.decision.caps.iter().map(|c| (c.rule.to_string(), c.count)).collect();
        let identity = identity(offer, &caps);
        if !self.seen.insert(identity) {
            return;
        }
        let name = match offer.event.operation_id.as_str() {
            "" => format!("{command} at {}", offer.time),
            id => format!("{command} {id} at {}", offer.time),
        };
        match pinning_case(set, name, command, offer.event.body.clone(), caps, offer.decision) {
            Ok(yaml) => {
                self.pinned.extend(pins);
                let text = format!("# {}: {}\n{yaml}", place(offer.at), why(bucket, offer));
                self.buckets[bucket as usize].push(Picked { seq: self.seq, text });
            }
            Err(problem) => {
                self.unreproduced += 1;
                self.first_problem.get_or_insert(problem);
                // Kept cases bound `seen`; past a few, failures are not remembered either.
                if self.unreproduced > UNREPRODUCED_REMEMBERED {
                    self.seen.remove(&identity);
                }
            }
        }
    }

    /// Writes the chosen cases to `file` (a temporary file beside it, renamed over it when
    /// whole), headed by what they come from.
    pub fn write(self, file: &Path, report: &Report) -> Result<CasesWritten, WriteCasesError> {
        let (text, written) = self.into_text(report);
        write_atomically(file, text.as_bytes())
            .map_err(|source| WriteCasesError { file: file.to_path_buf(), source })?;
        Ok(written)
    }

    /// The file's text: pins first, then changes, then others, up to `max`, in the order
    /// their records were met.
    fn into_text(self, report: &Report) -> (String, CasesWritten) {
        let mut written = CasesWritten {
            unreproduced: self.unreproduced,
            first_problem: self.first_problem,
            ..CasesWritten::default()
        };
        let mut chosen = Vec::new();
        let [pins, changed, others] = self.buckets;
        for (bucket, count) in
            [(pins, &mut written.pins), (changed, &mut written.changed), (others, &mut written.others)]
        {
            let room = self.max - chosen.len();
            *count = bucket.len().min(room);
            chosen.extend(bucket.into_iter().take(room));
        }
        written.written = chosen.len();
        chosen.sort_by_key(|p| p.seq);
        let mut text = header(report);
        for picked in chosen {
            text.push('\n');
            text.push_str(&picked.text);
        }
        (text, written)
    }
}

/// The rules a decision pins: the deciding rule (`default` for the default) and the
/// dry-run rules that held.
fn pin_keys(decision: &Decision) -> impl Iterator<Item = &str> + Clone {
    std::iter::once(decision.rule.as_deref().unwrap_or("default")).chain(decision.dry_run.iter().map(|hit| &*hit.rule))
}

fn pin_hash(command: &str, rule: &str) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    (command, rule).hash(&mut h);
    h.finish()
}

/// What makes two cases the same: command, callback as the set reads it, cap counts and
/// answer.
fn identity(offer: &Offer<'_>, caps: &BTreeMap<String, u64>) -> u64 {
    // A fixed hasher: the same records pick the same cases on every run.
    let mut h = std::hash::DefaultHasher::new();
    offer.event.command.hash(&mut h);
    serde_json::to_string(&offer.event.body).unwrap_or_default().hash(&mut h);
    caps.hash(&mut h);
    let d = offer.decision;
    (d.outcome.as_str(), d.outcome.error_code(), d.rule.as_deref()).hash(&mut h);
    d.dry_run.iter().for_each(|hit| hit.rule.hash(&mut h));
    h.finish()
}

/// Why a case was written, for its comment.
fn why(bucket: Bucket, offer: &Offer<'_>) -> String {
    let rule = offer.decision.rule.as_deref().unwrap_or("(default)");
    let mut why = match bucket {
        Bucket::Pin => format!("pins `{rule}` for this command"),
        Bucket::Changed | Bucket::Other => format!("decided by `{rule}`"),
    };
    if let Some(direction) = offer.direction {
        why.push_str(&format!("; changed, {}: answered {} then", direction.as_str(), offer.old));
    }
    why
}

fn header(report: &Report) -> String {
    let span = match (&report.first_time, &report.last_time) {
        (Some(first), Some(last)) => format!(", from {first} to {last}"),
        _ => String::new(),
    };
    format!(
        "# Written by `callgate replay --write-cases`: what the policy set decides for recorded\n\
         # callbacks. Put this file in the policy directory's tests/ and run `callgate test`.\n\
         # Policy version: {}\n\
         # Records: {} callback(s) replayed{span}\n\
         # A callback keeps `callbackCommand` and the fields the policy set reads; `caps` are the\n\
         # rate-cap counts the replay found (counts start empty at the first replayed record).\n",
        report.policy_version, report.records.replayed
    )
}

/// Writes `bytes` to a temporary file beside `file`, syncs it and renames it over `file`:
/// a reader sees the old file or the whole new one, never a part.
fn write_atomically(file: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match file.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let temp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let written = std::fs::File::create(&temp).and_then(|mut f| {
        f.write_all(bytes)?;
        f.sync_all()
    });
    match written.and_then(|()| std::fs::rename(&temp, file)) {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = std::fs::remove_file(&temp);
            Err(e)
        }
    }
}
