//! `callgate replay`: what a candidate policy set would have answered to the recorded
//! decided callbacks (OpenIM's, Tencent before-callbacks, item by item where so decided),
//! compared with what was answered then.
//!
//! Records are read once, oldest first, through [`crate::record::visit`] (the one reader of
//! records), so memory stays flat whatever their size. Rate caps are replayed on a virtual
//! clock: one fresh [`MemoryCaps`], each callback checked at its record's time, counting
//! only what the candidate allows, as the server does. Caps start empty at the first
//! replayed record: counts from before it are not known.
//!
//! This module decides and counts; `main.rs` prints. It knows no HTTP.
//!
//! - `fields`: what replay reads of a record line, without building all of it
//! - `cases`: the policy test cases `--write-cases` picks and writes

mod cases;
mod fields;

pub use cases::{CasePicker, CasesWritten, DEFAULT_MAX_CASES, WriteCasesError};

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::Path;
use std::time::SystemTime;

use serde::Serialize;
use serde_json::{Map, Value};

use self::cases::Offer;
use self::fields::{Bodies, Fields, Keep};
use crate::catalog::{self, Decided, TencentAnswer};
use crate::decision::{Decision, Outcome};
use crate::event::{Event, Source};
use crate::policy::PolicySet;
use crate::protocol::tencent;
use crate::ratecap::{MemoryCaps, OnError};
use crate::record::{self, Cursor, EventFilter, FilterError, RawLine};

/// Keys the replay's cap store tracks at most: generous, as a week of traffic may hold
/// millions of keys; keys whose window emptied are swept as the virtual clock goes on.
const MAX_CAP_KEYS: usize = 50_000_000;
/// How far the virtual clock goes between sweeps of emptied cap keys, in ms.
const SWEEP_EVERY_MS: u64 = 60_000;
/// Examples kept per direction of change.
const EXAMPLES: usize = 3;
/// Malformed lines whose place is kept (all are counted).
const MALFORMED_KEPT: usize = 20;
/// Users listed as the most affected.
const TOP_USERS: usize = 10;
/// Distinct users counted at most, so memory stays bounded; later ones are not counted.
const MAX_USERS: usize = 100_000;
/// The rule name of the default answer in the report.
pub const DEFAULT_RULE: &str = "(default)";
/// Which body fields name the users of a callback, as the report says.
pub const USER_FIELDS: &str = "top-level body fields whose name contains `user` or `account` (any case), and `sendID`/`recvID`: \
     strings or lists of strings";

/// Why a replay could not run. A bad record line is not one: it is counted and reported.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The records could not be read.
    #[error(transparent)]
    Read(#[from] FilterError),
}

/// How an answer changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Allowed then, refused now.
    AllowToDeny,
    /// Refused then, allowed now.
    DenyToAllow,
    /// The same decision, by another rule or with another error code.
    OtherRule,
}

impl Direction {
    /// Every direction, in report order.
    pub const ALL: [Direction; 3] = [Direction::AllowToDeny, Direction::DenyToAllow, Direction::OtherRule];

    /// The report's words.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::AllowToDeny => "allow → deny",
            Direction::DenyToAllow => "deny → allow",
            Direction::OtherRule => "same decision, other rule or error code",
        }
    }
}

/// What `callgate replay --fail-on` refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FailOn {
    /// Any callback allowed then and refused now.
    AllowToDeny,
    /// Any callback refused then and allowed now.
    DenyToAllow,
    /// Any change at all, other rules and error codes included.
    AnyChange,
}

/// One answer: then (from the record) or now (from the candidate).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Answer {
    /// `allow` or `deny`.
    pub decision: &'static str,
    /// The deciding rule; `None` for the default.
    pub rule: Option<String>,
    /// The errCode of a refusal.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<i64>,
}

impl Answer {
    fn rule_name(&self) -> &str {
        self.rule.as_deref().unwrap_or(DEFAULT_RULE)
    }
}

impl std::fmt::Display for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} by {}", self.decision, self.rule_name())?;
        match self.error_code {
            Some(code) => write!(f, " ({code})"),
            None => Ok(()),
        }
    }
}

/// A decision the candidate changes: a callback's, or one item's of a Tencent callback
/// decided item by item.
#[derive(Debug, Clone, Serialize)]
pub struct Change {
    /// The record's time, as written.
    pub time: String,
    /// OpenIM's operationID.
    pub operation_id: String,
    /// The callback command.
    pub command: String,
    /// The item's account, for a Tencent callback decided item by item.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub item: Option<String>,
    /// How it changed.
    pub direction: Direction,
    /// What was answered then (under `serve --dry-run`, what enforcement would have answered).
    pub old: Answer,
    /// What the candidate answers.
    pub new: Answer,
    /// Where the record is, as `file:line`.
    pub at: String,
}

/// Decisions of one rule (or the default), before and after.
#[derive(Debug, Default, Clone, Serialize)]
pub struct RuleCounts {
    /// Callbacks it decided then, by decision.
    pub before: DecisionCounts,
    /// Callbacks it decides with the candidate, by decision.
    pub after: DecisionCounts,
    /// Callbacks it would have refused as a dry-run rule, then.
    pub would_deny_before: u64,
    /// Callbacks it would refuse as a dry-run rule, with the candidate.
    pub would_deny_after: u64,
}

/// Allows and denies.
#[derive(Debug, Default, Clone, Serialize)]
pub struct DecisionCounts {
    /// Allowed.
    pub allow: u64,
    /// Refused.
    pub deny: u64,
}

impl DecisionCounts {
    fn add(&mut self, decision: &str) {
        if decision == "allow" {
            self.allow += 1;
        } else {
            self.deny += 1;
        }
    }
}

/// How many records were read, and what became of them.
#[derive(Debug, Default, Clone, Serialize)]
pub struct RecordCounts {
    /// Lines read (whole or torn), before the filters.
    pub read: u64,
    /// Callbacks decided again: OpenIM's, and Tencent before-callbacks.
    pub replayed: u64,
    /// Of those, the items decided again of Tencent callbacks decided item by item (each
    /// item is a decision of its own, compared and counted as a callback is).
    pub items: u64,
    /// Tencent records passing the filters that are not replayed: acknowledgements, reports
    /// of what happened, which nothing decided.
    pub tencent_skipped: u64,
    /// Records the filters left out.
    pub filtered_out: u64,
    /// Lines that are not a record callgate can replay, torn ones included.
    pub malformed: u64,
}

/// A line that could not be replayed.
#[derive(Debug, Clone, Serialize)]
pub struct Malformed {
    /// `file:line`.
    pub at: String,
    /// What is wrong with it.
    pub reason: String,
}

/// A user and how many of their callbacks changed.
#[derive(Debug, Clone, Serialize)]
pub struct AffectedUser {
    /// The ID.
    pub user: String,
    /// Changed callbacks naming them.
    pub changed: u64,
}

/// The users most affected, and how they were found.
#[derive(Debug, Clone, Serialize)]
pub struct Users {
    /// Which body fields were read for user IDs.
    pub fields: &'static str,
    /// The most affected first.
    pub top: Vec<AffectedUser>,
}

/// Counts of changes.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Changes {
    /// Records answered as then.
    pub unchanged: u64,
    /// Records answered otherwise.
    pub changed: u64,
    /// Allowed then, refused now.
    pub allow_to_deny: u64,
    /// Refused then, allowed now.
    pub deny_to_allow: u64,
    /// Same decision, other rule or error code.
    pub other_rule: u64,
}

/// What a replay found: `callgate replay`'s report, text or JSON
/// (`schema/replay-report.schema.json`).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The candidate set's version.
    pub policy_version: String,
    /// Records read and what became of them.
    pub records: RecordCounts,
    /// The first malformed lines (all are counted in `records.malformed`).
    pub malformed: Vec<Malformed>,
    /// The time of the first replayed record: rate caps start empty there.
    pub first_time: Option<String>,
    /// The time of the last replayed record.
    pub last_time: Option<String>,
    /// Callbacks a store error (the cap store full) answered as if no cap were exceeded.
    pub cap_store_errors: u64,
    /// What changed.
    pub changes: Changes,
    /// Per rule (and `(default)`): decisions before and after.
    pub rules: BTreeMap<String, RuleCounts>,
    /// The users most affected.
    pub users: Users,
    /// A few changes of each direction, the first ones.
    pub examples: BTreeMap<Direction, Vec<Change>>,
}

impl Report {
    /// Why `--fail-on` and `--max-changes` refuse this replay; empty when they do not.
    pub fn trips(&self, fail_on: &[FailOn], max_changes: Option<u64>) -> Vec<String> {
        let c = &self.changes;
        let mut reasons = Vec::new();
        for f in fail_on {
            match f {
                FailOn::AllowToDeny if c.allow_to_deny > 0 => {
                    reasons.push(format!("{} callback(s) allowed then are refused now", c.allow_to_deny))
                }
                FailOn::DenyToAllow if c.deny_to_allow > 0 => {
                    reasons.push(format!("{} callback(s) refused then are allowed now", c.deny_to_allow))
                }
                FailOn::AnyChange if c.changed > 0 => reasons.push(format!("{} callback(s) changed", c.changed)),
                _ => {}
            }
        }
        if let Some(max) = max_changes
            && c.changed > max
        {
            reasons.push(format!("{} callback(s) changed, more than --max-changes {max}", c.changed));
        }
        reasons
    }

    /// The report as text, for a person.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        // Writing to a String cannot fail.
        let _ = self.write_text(&mut s);
        s
    }

    fn write_text(&self, s: &mut String) -> std::fmt::Result {
        let r = &self.records;
        let c = &self.changes;
        writeln!(s, "replayed {} callback(s) with policy version {}", r.replayed, self.policy_version)?;
        if r.items > 0 {
            writeln!(s, "  of them {} item(s) of Tencent callbacks decided item by item, each compared", r.items)?;
        }
        if let (Some(first), Some(last)) = (&self.first_time, &self.last_time) {
            writeln!(s, "  from {first} to {last}")?;
            writeln!(s, "  rate caps start empty at {first}: counts from before it are not known")?;
        }
        writeln!(
            s,
            "  lines read {}; Tencent acknowledgements skipped {}; filtered out {}; malformed {}",
            r.read, r.tencent_skipped, r.filtered_out, r.malformed
        )?;
        for m in &self.malformed {
            writeln!(s, "  {}: {}", m.at, m.reason)?;
        }
        if self.cap_store_errors > 0 {
            writeln!(
                s,
                "  {} callback(s) met a full cap store and were decided as if under their caps",
                self.cap_store_errors
            )?;
        }
        writeln!(s, "\nunchanged {}, changed {}", c.unchanged, c.changed)?;
        writeln!(s, "  allow → deny   {}", c.allow_to_deny)?;
        writeln!(s, "  deny → allow   {}", c.deny_to_allow)?;
        writeln!(s, "  other rule     {}", c.other_rule)?;
        writeln!(
            s,
            "\nper rule {:<23} {:>18} {:>18} {:>24}",
            "", "before allow/deny", "after allow/deny", "would-deny before/after"
        )?;
        for (rule, n) in &self.rules {
            let pair = |a: u64, b: u64| format!("{a}/{b}");
            writeln!(
                s,
                "  {rule:<30} {:>18} {:>18} {:>24}",
                pair(n.before.allow, n.before.deny),
                pair(n.after.allow, n.after.deny),
                pair(n.would_deny_before, n.would_deny_after)
            )?;
        }
        if !self.users.top.is_empty() {
            writeln!(s, "\nusers most affected (from {})", self.users.fields)?;
            for u in &self.users.top {
                writeln!(s, "  {:<30} {} changed", u.user, u.changed)?;
            }
        }
        for (direction, examples) in &self.examples {
            writeln!(s, "\nexamples, {}:", direction.as_str())?;
            for e in examples {
                let item = e.item.as_ref().map(|id| format!(" item {id}")).unwrap_or_default();
                writeln!(s, "  {} {} {}{item} ({}): {} → {}", e.time, e.operation_id, e.command, e.at, e.old, e.new)?;
            }
        }
        Ok(())
    }
}

/// Replays the records of `dir` that pass `filter` (its `decision`, `source` and `limit`
/// are not used) with `set`, oldest first; calls `on_change` for every changed record as it
/// is met. With `cases`, offers every replayed callback to it (`--write-cases`).
pub fn replay(
    dir: &Path,
    set: &PolicySet,
    filter: &EventFilter,
    mut cases: Option<&mut CasePicker>,
    mut on_change: impl FnMut(&Change),
) -> Result<Report, ReplayError> {
    let mut run = Run::new(set);
    let cutoff = filter.cutoff();
    record::visit(dir, &Cursor::default(), cutoff.map(record::epoch_ms), |raw| {
        run.records.read += 1;
        match run.line(&raw, filter, cutoff, cases.as_deref_mut(), &mut on_change) {
            Ok(()) => {}
            Err(reason) => {
                run.records.malformed += 1;
                if run.malformed.len() < MALFORMED_KEPT {
                    run.malformed.push(Malformed { at: place(&raw), reason });
                }
            }
        }
    })?;
    Ok(run.report())
}

/// For the `record_read` fuzz target (`cargo fuzz` builds with `cfg(fuzzing)`): panics
/// unless replay's scanner reads `line` as serde_json does, or leaves it to serde_json.
#[cfg(fuzzing)]
pub fn check_line(line: &str) {
    fields::agreement::check(line);
}

/// `file:line` of a record line (`?` for the line when it was not counted).
fn place(raw: &RawLine<'_>) -> String {
    let line = raw.line.map_or_else(|| "?".to_string(), |n| n.to_string());
    format!("{}:{line}", raw.file.display())
}

/// The state of one replay.
struct Run<'s> {
    set: &'s PolicySet,
    caps: MemoryCaps,
    /// The virtual clock, ms since the epoch; it never goes back, though record times may
    /// by a millisecond or so (several requests decided at once, written in turn).
    now: u64,
    last_sweep: u64,
    records: RecordCounts,
    malformed: Vec<Malformed>,
    first_time: Option<String>,
    /// The last replayed record's time as written, and in ms: records decided in the same
    /// millisecond share it, so it is parsed once.
    last_time: String,
    last_ms: u64,
    /// The second (`YYYY-MM-DDTHH:MM:SS`) of the last time parsed whole, and its ms: the
    /// records of one second differ only in their milliseconds.
    second: String,
    second_ms: u64,
    /// The event replayed, kept from record to record so that its strings are reused; its
    /// bodies kept by command, each rewritten in place by the next of its command.
    event: Event,
    bodies: Bodies,
    cap_store_errors: u64,
    changes: Changes,
    rules: BTreeMap<String, RuleCounts>,
    /// The counts of [`DEFAULT_RULE`], put in `rules` by the report.
    default_counts: Option<RuleCounts>,
    users: HashMap<String, u64>,
    examples: BTreeMap<Direction, Vec<Change>>,
}

impl<'s> Run<'s> {
    fn new(set: &'s PolicySet) -> Run<'s> {
        Run {
            set,
            caps: MemoryCaps::new(MAX_CAP_KEYS),
            now: 0,
            last_sweep: 0,
            records: RecordCounts::default(),
            malformed: Vec::new(),
            first_time: None,
            last_time: String::new(),
            last_ms: 0,
            second: String::new(),
            second_ms: 0,
            event: Event::openim(String::new(), Map::new()),
            bodies: Bodies::default(),
            cap_store_errors: 0,
            changes: Changes::default(),
            rules: BTreeMap::new(),
            default_counts: None,
            users: HashMap::new(),
            examples: BTreeMap::new(),
        }
    }

    /// Replays one line, calling `on_change` for each decision the candidate changes; `Err`
    /// with a reason when it is not a replayable record (nothing of it is counted then).
    fn line(
        &mut self,
        raw: &RawLine<'_>,
        filter: &EventFilter,
        cutoff: Option<SystemTime>,
        cases: Option<&mut CasePicker>,
        on_change: &mut dyn FnMut(&Change),
    ) -> Result<(), String> {
        if raw.is_unfinished {
            return Err("torn: the line has no end (a crash while writing, or still being written)".into());
        }
        let text = raw.text.map_err(|e| format!("not UTF-8: {e}"))?;
        let set = self.set;
        let is_writing_cases = cases.is_some();
        let keep = BodyKeys { set, is_writing_cases };
        // A case shows the body: built afresh, its keys in its own order.
        let bodies = if is_writing_cases { &mut Bodies::default() } else { &mut self.bodies };
        let mut fields = Fields::parse(text, &keep, bodies)?;
        if !passes(filter, &fields, text, cutoff) {
            self.records.filtered_out += 1;
            return Ok(());
        }
        let tencent = match fields.source().as_deref() {
            Some("openim") => None,
            Some("tencent") => match fields.command().and_then(|c| catalog::tencent_decided(&c)) {
                Some(decided) if fields.decision() != Some("ack") => Some(decided),
                _ => {
                    self.records.tencent_skipped += 1;
                    return Ok(());
                }
            },
            _ => return Err("no `source` openim or tencent".into()),
        };
        let time = fields.time().ok_or("no `time`")?;
        let at_ms = self.time_ms(&time)?;
        if let Some(decided) = tencent.filter(|d| d.answer.is_per_item()) {
            return self.items(raw, text, (&time, at_ms), decided, cases, on_change);
        }
        if fields.has_items() {
            return Err(format!(
                "`items` recorded for {}, which is decided as a whole",
                fields.command().unwrap_or_default()
            ));
        }
        let command = fields.command().ok_or("no `command`")?;
        let old = fields.old_answer()?;
        let body = fields.take_body()?;

        self.tick(&time, at_ms);
        let mut event = std::mem::replace(&mut self.event, Event::openim(String::new(), Map::new()));
        event.source = if tencent.is_some() { Source::Tencent } else { Source::OpenIm };
        event.command.clear();
        event.command.push_str(&command);
        event.operation_id.clear();
        if let Some(id) = fields.operation_id() {
            event.operation_id.push_str(&id);
        }
        event.body = body;
        let then = Then { old, would_denies: fields.would_denies(), item: None };
        let change = self.judge(raw, &time, &event, then, cases);
        if !is_writing_cases {
            self.bodies.keep(&event.command, std::mem::take(&mut event.body));
        }
        self.event = event;
        if let Some(change) = change {
            self.changed(&change, text, on_change);
        }
        Ok(())
    }

    /// Replays a Tencent before-callback decided item by item: each item of its body's list
    /// decided again at the record's time, in list order, and compared with the verdict
    /// recorded for it. Such records are few, so the line is read whole.
    fn items(
        &mut self,
        raw: &RawLine<'_>,
        text: &str,
        (time, at_ms): (&str, u64),
        decided: &Decided,
        mut cases: Option<&mut CasePicker>,
        on_change: &mut dyn FnMut(&Change),
    ) -> Result<(), String> {
        let (TencentAnswer::ResultItems { list, account } | TencentAnswer::RefusedAccounts { list, account, .. }) =
            decided.answer
        else {
            return Err(format!("{} is decided as a whole", decided.name));
        };
        let mut record: Map<String, Value> = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
        let Some(Value::Object(mut body)) = record.remove("body") else {
            return Err("`body` is not a JSON object".into());
        };
        let Some(Value::Array(recorded)) = record.get("items") else {
            return Err("no `items` list: each item's verdict is not known".into());
        };
        // The list, and what else the body keys of every other record keep: the rules read
        // nothing more.
        let keep = BodyKeys { set: self.set, is_writing_cases: cases.is_some() };
        body.retain(|key, _| key == list || keep.keeps(key));
        let event = Event::offline(decided.name, body);
        let items = tencent::items(&event, list, account).map_err(|e| e.to_string())?;
        if items.len() != recorded.len() {
            return Err(format!("{} item(s) recorded for {} in the body's `{list}`", recorded.len(), items.len()));
        }
        let mut thens = Vec::with_capacity(items.len());
        for ((id, item), verdict) in items.iter().zip(recorded) {
            let verdict = verdict.as_object().ok_or("an entry of `items` is not an object")?;
            let recorded_id = verdict.get("account").and_then(Value::as_str);
            if recorded_id != Some(id.as_str()) {
                return Err(format!("the body's item `{id}` is recorded as {recorded_id:?}"));
            }
            let fields = Fields::of_item(verdict);
            thens.push((item, Then { old: fields.old_answer()?, would_denies: fields.would_denies(), item: Some(id) }));
        }
        self.tick(time, at_ms);
        self.records.items += thens.len() as u64;
        for (item, then) in thens {
            let item_event = event.item(list, item);
            if let Some(change) = self.judge(raw, time, &item_event, then, cases.as_deref_mut()) {
                self.changed(&change, text, on_change);
            }
        }
        Ok(())
    }

    /// Decides `event` again and compares with what was answered `then`: counts both, offers
    /// the callback as a case, and gives the change, if any.
    fn judge(
        &mut self,
        raw: &RawLine<'_>,
        time: &str,
        event: &Event,
        then: Then<'_>,
        cases: Option<&mut CasePicker>,
    ) -> Option<Change> {
        let (decision, is_counted) = self.decide(event);
        let new = Answer {
            decision: decision.outcome.as_str(),
            rule: decision.rule.as_deref().map(str::to_string),
            // The command's code family only for a refusal: most callbacks are allowed.
            error_code: match &decision.outcome {
                Outcome::Deny(refusal) => Some(i64::from(refusal.code_for(event.code_family()))),
                Outcome::Allow | Outcome::Discard => None,
            },
        };
        let old = then.old;
        self.count(&then.would_denies, &old, &new, &decision);
        let direction = direction(&old, &new);
        if let Some(cases) = cases
            && is_counted
        {
            cases.offer(self.set, &Offer { at: raw, time, event, decision: &decision, direction, old: &old });
        }
        let Some(direction) = direction else {
            self.changes.unchanged += 1;
            return None;
        };
        Some(Change {
            time: time.to_string(),
            operation_id: event.operation_id.clone(),
            command: event.command.clone(),
            item: then.item.map(str::to_string),
            direction,
            old,
            new,
            at: place(raw),
        })
    }

    /// The time of a record in ms since the epoch.
    fn time_ms(&mut self, time: &str) -> Result<u64, String> {
        if time == self.last_time && !self.last_time.is_empty() {
            return Ok(self.last_ms);
        }
        // `YYYY-MM-DDTHH:MM:SS.mmmZ`, as the server writes times.
        let (second, ms) = match time.as_bytes() {
            [.., b'.', a, b, c, b'Z'] if time.len() == 24 && [a, b, c].iter().all(|d| d.is_ascii_digit()) => {
                let ms = [a, b, c].iter().fold(0, |ms, &&d| ms * 10 + u64::from(d - b'0'));
                (&time[..19], Some(ms))
            }
            _ => (time, None),
        };
        if let Some(ms) = ms
            && second == self.second
        {
            return Ok(self.second_ms + ms);
        }
        let at = humantime::parse_rfc3339_weak(time).map_err(|e| format!("`time` {time:?}: {e}"))?;
        let at_ms = record::epoch_ms(at);
        // From 1 s after the epoch, where ms are not clamped at 0.
        if let Some(ms) = ms
            && at_ms >= 1000
        {
            self.second.clear();
            self.second.push_str(second);
            self.second_ms = at_ms - ms;
        }
        Ok(at_ms)
    }

    /// Moves the virtual clock to a replayed record's time.
    fn tick(&mut self, time: &str, at_ms: u64) {
        self.records.replayed += 1;
        if self.first_time.is_none() {
            self.first_time = Some(time.to_string());
        }
        if self.last_time != time {
            self.last_time.clear();
            self.last_time.push_str(time);
        }
        self.last_ms = at_ms;
        self.now = self.now.max(at_ms);
        if self.now >= self.last_sweep + SWEEP_EVERY_MS {
            self.caps.sweep_at(self.now);
            self.last_sweep = self.now;
        }
    }

    /// Decides as the server does, with the cap store at the record's time; also whether
    /// every cap was counted (the store answered).
    fn decide(&mut self, event: &Event) -> (Decision, bool) {
        let plan = self.set.plan(event);
        if plan.cap_checks().is_empty() {
            return (plan.finish(None), true);
        }
        match self.caps.check_at(plan.cap_checks(), plan.is_allow_if_no_cap_decides(), self.now) {
            Ok(outcome) => (plan.finish(Some(&outcome)), true),
            Err(_) => {
                self.cap_store_errors += 1;
                let outcome = OnError::Allow.outcome(plan.cap_checks());
                (plan.finish(Some(&outcome)), false)
            }
        }
    }

    /// Counts a replayed decision, then and now, per rule.
    fn count(&mut self, would_denies: &[Cow<'_, str>], old: &Answer, new: &Answer, decision: &Decision) {
        self.count_rule(old.rule_name(), |n| n.before.add(old.decision));
        self.count_rule(new.rule_name(), |n| n.after.add(new.decision));
        for rule in would_denies {
            self.count_rule(rule, |n| n.would_deny_before += 1);
        }
        for hit in decision.dry_run.iter().filter(|h| h.outcome.is_refusal()) {
            self.count_rule(&hit.rule, |n| n.would_deny_after += 1);
        }
    }

    /// Applies `f` to the counts of `rule`, allocating its name only the first time it is
    /// met; the default's, which count most records, are kept apart from the map.
    fn count_rule(&mut self, rule: &str, f: impl FnOnce(&mut RuleCounts)) {
        if rule == DEFAULT_RULE {
            return f(self.default_counts.get_or_insert_default());
        }
        match self.rules.get_mut(rule) {
            Some(counts) => f(counts),
            None => f(self.rules.entry(rule.to_string()).or_default()),
        }
    }

    /// Counts a change (by direction, by user, and as an example) and hands it to `on_change`.
    fn changed(&mut self, change: &Change, line: &str, on_change: &mut dyn FnMut(&Change)) {
        self.changes.changed += 1;
        match change.direction {
            Direction::AllowToDeny => self.changes.allow_to_deny += 1,
            Direction::DenyToAllow => self.changes.deny_to_allow += 1,
            Direction::OtherRule => self.changes.other_rule += 1,
        }
        // The line is read again for the users: changes are few.
        let body = Fields::parse(line, &is_user_field, &mut Bodies::default()).and_then(|mut f| f.take_body());
        let body = body.unwrap_or_default();
        let mut users = users_of(&body);
        if let Some(item) = change.item.as_deref()
            && !users.contains(&item)
        {
            users.push(item);
        }
        for user in users {
            if let Some(n) = self.users.get_mut(user) {
                *n += 1;
            } else if self.users.len() < MAX_USERS {
                self.users.insert(user.to_string(), 1);
            }
        }
        let examples = self.examples.entry(change.direction).or_default();
        if examples.len() < EXAMPLES {
            examples.push(change.clone());
        }
        on_change(change);
    }

    fn report(mut self) -> Report {
        if let Some(counts) = self.default_counts.take() {
            self.rules.insert(DEFAULT_RULE.to_string(), counts);
        }
        let mut top: Vec<AffectedUser> =
            self.users.into_iter().map(|(user, changed)| AffectedUser { user, changed }).collect();
        top.sort_by(|a, b| b.changed.cmp(&a.changed).then_with(|| a.user.cmp(&b.user)));
        top.truncate(TOP_USERS);
        let has_replayed = self.records.replayed > 0;
        Report {
            policy_version: self.set.version().to_string(),
            records: self.records,
            malformed: self.malformed,
            first_time: self.first_time,
            last_time: has_replayed.then_some(self.last_time),
            cap_store_errors: self.cap_store_errors,
            changes: self.changes,
            rules: self.rules,
            users: Users { fields: USER_FIELDS, top },
            examples: self.examples,
        }
    }
}

/// What was answered then for one decision replayed.
struct Then<'a> {
    old: Answer,
    /// The dry-run rules that would have refused it.
    would_denies: Vec<Cow<'a, str>>,
    /// The item's account, for one item of a callback decided item by item.
    item: Option<&'a str>,
}

/// Whether a record passes `filter`: from its time and command alone when the filter reads
/// nothing else, as it mostly does; else from the whole record, parsed.
fn passes(filter: &EventFilter, fields: &Fields<'_>, text: &str, cutoff: Option<SystemTime>) -> bool {
    if filter.is_time_and_command_only() {
        return filter.matches_time_and_command(fields.time().as_deref(), fields.command().as_deref(), cutoff);
    }
    serde_json::from_str::<Value>(text).is_ok_and(|record| filter.matches(&record, cutoff))
}

/// How an answer changed; `None` when it did not.
fn direction(old: &Answer, new: &Answer) -> Option<Direction> {
    // A discard (Tencent messages) refuses as a deny does.
    match (old.decision != "allow", new.decision != "allow") {
        (false, true) => Some(Direction::AllowToDeny),
        (true, false) => Some(Direction::DenyToAllow),
        _ if old != new => Some(Direction::OtherRule),
        _ => None,
    }
}

/// The body keys a replay builds: those the set reads, as the server decodes a request (no
/// answer depends on the others), and the command when a case shows the body. A type rather
/// than a closure, so that the test is inlined into the scan of every key.
struct BodyKeys<'s> {
    set: &'s PolicySet,
    is_writing_cases: bool,
}

impl Keep for BodyKeys<'_> {
    #[inline(always)]
    fn keeps(&self, key: &str) -> bool {
        self.set.reads(key) || (self.is_writing_cases && key == "callbackCommand")
    }
}

/// Whether a body key names users, per [`USER_FIELDS`].
fn is_user_field(key: &str) -> bool {
    let has = |word: &str| key.as_bytes().windows(word.len()).any(|w| w.eq_ignore_ascii_case(word.as_bytes()));
    has("user") || has("account") || key.eq_ignore_ascii_case("sendid") || key.eq_ignore_ascii_case("recvid")
}

/// The user IDs of a body, per [`USER_FIELDS`].
fn users_of(body: &Map<String, Value>) -> Vec<&str> {
    let mut ids = Vec::new();
    for (key, value) in body {
        if !is_user_field(key) {
            continue;
        }
        match value {
            Value::String(s) if !s.is_empty() => ids.push(s.as_str()),
            Value::Array(items) => ids.extend(items.iter().filter_map(Value::as_str).filter(|s| !s.is_empty())),
            _ => {}
        }
    }
    ids.sort_unstable();
    ids.dedup();
    ids
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn caps_count_on_the_records_clock() {
        let policies = tempfile::tempdir().unwrap();
        std::fs::write(
            policies.path().join("10.yaml"),
            "rules:\n  - id: cap\n    rate_cap: { key: [ownerUserID], max: 1, per: 1s }\n    decision: deny\n    error: { code: 150, message: no }\n",
        )
        .unwrap();
        let set = crate::policy::load_dir(policies.path()).unwrap();
        let data = tempfile::tempdir().unwrap();
        let record = |ms: &str| {
            format!(
                "{{\"time\":\"2026-01-01T00:00:{ms}Z\",\"source\":\"openim\",\"command\":\"c\",\"decision\":\"allow\",\"body\":{{\"ownerUserID\":\"u\"}}}}\n"
            )
        };
        // At 0, 0.5 s, 1 s (the first left the window), 1.999 s and 2.5 s.
        let text: String = ["00.000", "00.500", "01.000", "01.999", "02.500"].map(record).concat();
        std::fs::write(data.path().join("records-0000000000001.jsonl"), text).unwrap();
        let mut lines = Vec::new();
        let report = replay(data.path(), &set, &EventFilter::default(), None, |c| lines.push(c.at.clone())).unwrap();
        let lines: Vec<&str> = lines.iter().map(|at| at.rsplit(':').next().unwrap()).collect();
        assert_eq!(lines, ["2", "4"]);
        assert_eq!(report.changes.allow_to_deny, 2);
        assert_eq!(report.first_time.as_deref(), Some("2026-01-01T00:00:00.000Z"));
    }

    #[test]
    fn an_item_recorded_under_server_dry_run_compares_with_what_it_would_have_answered() {
        let policies = tempfile::tempdir().unwrap();
        std::fs::write(policies.path().join("10.yaml"), "rules: []\n").unwrap();
        let set = crate::policy::load_dir(policies.path()).unwrap();
        let data = tempfile::tempdir().unwrap();
        // As `serve --dry-run` records: every item answered allow; `would` says what not.
        let line = r#"{"time":"2026-01-01T00:00:00.000Z","source":"tencent","command":"Sns.CallbackPrevFriendAdd","decision":"allow","items":[{"account":"b","decision":"allow","dry_run":[{"rule":"d","would":"deny","error_code":38001}],"would":{"decision":"deny","rule":"no","error_code":38001}},{"account":"c","decision":"allow","would":{"decision":"allow","rule":null}}],"body":{"From_Account":"a","FriendItem":[{"To_Account":"b"},{"To_Account":"c"}]}}"#;
        std::fs::write(data.path().join("records-0000000000001.jsonl"), format!("{line}\n")).unwrap();
        let mut changes = Vec::new();
        let report = replay(data.path(), &set, &EventFilter::default(), None, |c| changes.push(c.clone())).unwrap();
        assert_eq!((report.records.replayed, report.records.items, report.changes.unchanged), (1, 2, 1));
        let [change] = changes.as_slice() else { panic!("{changes:?}") };
        assert_eq!((change.item.as_deref(), change.direction), (Some("b"), Direction::DenyToAllow));
        assert_eq!(change.old, Answer { decision: "deny", rule: Some("no".into()), error_code: Some(38001) });
        assert_eq!(report.rules["d"].would_deny_before, 1);
        let users: Vec<&str> = report.users.top.iter().map(|u| u.user.as_str()).collect();
        assert_eq!(users, ["a", "b"], "the requester and the item");
    }

    #[test]
    fn users_come_from_user_and_account_fields_only() {
        let body = json!({"ownerUserID": "u1", "userIDList": ["u2", "u1"], "From_Account": "u3",
            "sendID": "u4", "groupID": "g", "operationID": "o", "content": "u5"});
        let Value::Object(body) = body else { unreachable!() };
        assert_eq!(users_of(&body), ["u1", "u2", "u3", "u4"]);
    }
}
