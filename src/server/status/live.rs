//! [`Live`]: the status page's numbers, kept in fixed memory while callbacks are decided —
//! decisions per rule per minute for the last hour, decision latency and callbacks per
//! 10 seconds for the last 15 minutes, the latest refusals, and Tencent acks by command.
//!
//! A decided callback costs two relaxed atomic increments here (its rule's minute, its
//! latency's bucket) and one load of the current tick; a refusal also takes a lock to join
//! the ring. Nothing here is read unless someone asks `GET /v1/live`; a ticker (one wakeup
//! a second) moves the clock on and clears the slots that come round again, so the hot path
//! never checks a slot's age.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::catalog;
use crate::decision::Outcome;
use crate::event::Event;

/// Seconds a point of the series covers.
pub const STEP_SECONDS: u64 = 10;
/// Points of the series: 15 minutes.
const SERIES_LEN: usize = 90;
/// Minute slots of a rule: the current one and the 60 before it, for a sliding hour.
const MINUTES: usize = 61;
/// Refusals kept.
pub const REFUSALS_KEPT: usize = 200;
/// Refusals listed per 10-second step at most: past it a flood of refusals costs one atomic
/// increment each (counted as unlisted), not an entry built under a lock.
const LISTED_PER_STEP: u64 = 100;
/// Body fields shown for a refusal, and the characters kept of each.
const IDS_KEPT: usize = 8;
const ID_CHARS: usize = 64;

/// The decision outcomes counted per rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counted {
    /// Answered allow, or a dry-run rule would have.
    Allow = 0,
    /// Answered deny (or, for Tencent, discard).
    Deny = 1,
    /// Would have been refused: a dry-run rule, or any refusal under `serve --dry-run`.
    WouldDeny = 2,
}

/// Upper bounds of the latency buckets, in nanoseconds: 5 µs, then each 1.3 times the last,
/// up to about 1.1 s; a last bucket holds everything slower.
const BOUNDS: [u64; 48] = bounds();
const BUCKETS: usize = BOUNDS.len() + 1;

const fn bounds() -> [u64; 48] {
    let mut out = [5_000; 48];
    let mut i = 1;
    while i < out.len() {
        out[i] = out[i - 1] * 13 / 10;
        i += 1;
    }
    out
}

/// One 10-second point: decision latencies by bucket (their sum is the decisions), and
/// Tencent acks.
struct Point {
    latency: [AtomicU64; BUCKETS],
    tencent_acks: AtomicU64,
}

impl Point {
    fn new() -> Point {
        Point { latency: std::array::from_fn(|_| AtomicU64::new(0)), tencent_acks: AtomicU64::new(0) }
    }

    fn clear(&self) {
        self.latency.iter().for_each(|b| b.store(0, Ordering::Relaxed));
        self.tencent_acks.store(0, Ordering::Relaxed);
    }
}

/// One rule's decisions per minute, by [`Counted`] outcome.
#[derive(Debug)]
pub struct RuleWindow {
    minutes: [[AtomicU64; 3]; MINUTES],
}

impl RuleWindow {
    fn new() -> RuleWindow {
        RuleWindow { minutes: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))) }
    }

    fn slot(&self, minute: u64) -> &[AtomicU64; 3] {
        &self.minutes[(minute % MINUTES as u64) as usize]
    }

    /// An estimate of the decisions in the last `minutes` minutes (1 to 60): the current
    /// minute so far, the full ones before it, and of the oldest the part still inside.
    fn sum(&self, minute: u64, into_minute: f64, minutes: u64) -> [u64; 3] {
        let mut out = [0.0; 3];
        for back in 0..=minutes {
            let Some(m) = minute.checked_sub(back) else { break };
            let weight = if back == minutes { 1.0 - into_minute } else { 1.0 };
            for (o, n) in out.iter_mut().zip(self.slot(m)) {
                *o += weight * n.load(Ordering::Relaxed) as f64;
            }
        }
        out.map(|n| n.round() as u64)
    }
}

/// A refusal, or a would-deny, as the page lists it.
#[derive(Debug, Clone, Serialize)]
pub struct Refusal {
    /// Unix time in milliseconds.
    pub time_ms: u64,
    /// `deny`, `discard`, `would_deny` or `would_discard`.
    pub kind: String,
    /// The callback command.
    pub command: String,
    /// The body fields the policy set reads (IDs, mostly), as text.
    pub ids: Vec<(String, String)>,
    /// The rule that decided; `None` for the default.
    pub rule: Option<Arc<str>>,
    /// The errCode of the refusal; `None` for a discard.
    pub error_code: Option<i32>,
}

/// The status page's numbers for one server. See the module docs.
pub struct Live {
    id: u64,
    /// Unix seconds / [`STEP_SECONDS`], moved on by [`Live::advance`].
    tick: AtomicU64,
    series: Box<[Point]>,
    /// Windows of the rules that decided something since start, by id. Locked when a
    /// worker thread meets a rule first, when the page reads, and once a minute to clear.
    rules: Mutex<HashMap<Box<str>, Arc<RuleWindow>>>,
    refusals: Mutex<VecDeque<Refusal>>,
    /// The step `listed` counts in, and how many refusals joined the ring in it.
    listed_step: AtomicU64,
    listed: AtomicU64,
    /// Refusals not listed since start, for the budget was spent.
    unlisted: AtomicU64,
    /// Acks by index in [`catalog::TENCENT`]; the last counts commands it does not list.
    tencent_acks: [AtomicU64; catalog::TENCENT.len() + 1],
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live").field("id", &self.id).field("tick", &self.tick).finish_non_exhaustive()
    }
}

impl Default for Live {
    fn default() -> Live {
        Live::new()
    }
}

fn unix_now() -> Duration {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default()
}

impl Live {
    /// An empty view, its clock at now.
    pub fn new() -> Live {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        Live {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            tick: AtomicU64::new(unix_now().as_secs() / STEP_SECONDS),
            series: (0..SERIES_LEN).map(|_| Point::new()).collect(),
            rules: Mutex::default(),
            refusals: Mutex::default(),
            listed_step: AtomicU64::new(0),
            listed: AtomicU64::new(0),
            unlisted: AtomicU64::new(0),
            tencent_acks: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// Tells this view from others in the same process (tests run several servers), so a
    /// worker thread's cached [`RuleWindow`] is known to be this view's.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The window of rule `id` (`(default)` for the default), made on first use.
    pub fn rule(&self, id: &str) -> Arc<RuleWindow> {
        let mut rules = self.rules.lock().unwrap_or_else(PoisonError::into_inner);
        rules.entry(id.into()).or_insert_with(|| Arc::new(RuleWindow::new())).clone()
    }

    /// Counts one outcome of a rule in the current minute.
    pub fn count(&self, window: &RuleWindow, outcome: Counted) {
        let minute = self.tick.load(Ordering::Relaxed) / (60 / STEP_SECONDS);
        window.slot(minute)[outcome as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one decision and its latency in the current point.
    pub fn decided(&self, latency: Duration) {
        let nanos = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        let bucket = BOUNDS.partition_point(|&b| b < nanos);
        self.point().latency[bucket].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one acknowledged Tencent callback.
    pub fn acked(&self, command: &str) {
        let at = catalog::TENCENT.iter().position(|c| c.name == command).unwrap_or(catalog::TENCENT.len());
        self.tencent_acks[at].fetch_add(1, Ordering::Relaxed);
        self.point().tencent_acks.fetch_add(1, Ordering::Relaxed);
    }

    /// Keeps a refusal (or would-deny) of `event`, dropping the oldest past [`REFUSALS_KEPT`];
    /// past [`LISTED_PER_STEP`] in the current step, only counts it as unlisted.
    /// `would` is `""`, or `"would_"` for what was not enforced.
    pub fn refused(&self, event: &Event, rule: Option<&Arc<str>>, outcome: &Outcome, would: &str) {
        let step = self.tick.load(Ordering::Relaxed);
        if self.listed_step.load(Ordering::Relaxed) != step {
            // Two threads may both reset at a step's start: a few more are listed, no harm.
            self.listed_step.store(step, Ordering::Relaxed);
            self.listed.store(0, Ordering::Relaxed);
        }
        if self.listed.fetch_add(1, Ordering::Relaxed) >= LISTED_PER_STEP {
            self.unlisted.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let ids = event
            .body
            .iter()
            .filter(|(k, _)| *k != "callbackCommand")
            .take(IDS_KEPT)
            .map(|(k, v)| {
                let text = v.as_str().map_or_else(|| v.to_string(), str::to_string);
                (k.clone(), text.chars().take(ID_CHARS).collect())
            })
            .collect();
        let refusal = Refusal {
            time_ms: u64::try_from(unix_now().as_millis()).unwrap_or(u64::MAX),
            kind: format!("{would}{}", outcome.as_str()),
            command: event.command.chars().take(crate::event::MAX_COMMAND_LEN).collect(),
            ids,
            rule: rule.cloned(),
            error_code: outcome.error_code(),
        };
        let mut ring = self.refusals.lock().unwrap_or_else(PoisonError::into_inner);
        if ring.len() == REFUSALS_KEPT {
            ring.pop_front();
        }
        ring.push_back(refusal);
    }

    fn point(&self) -> &Point {
        &self.series[(self.tick.load(Ordering::Relaxed) % SERIES_LEN as u64) as usize]
    }

    /// Moves the clock to `now` (unix time), first clearing every point and minute slot it
    /// comes to: they last held numbers 15 minutes or an hour old.
    pub fn advance(&self, now: Duration) {
        let new = now.as_secs() / STEP_SECONDS;
        let old = self.tick.load(Ordering::Relaxed);
        if new <= old {
            return;
        }
        for t in (old + 1..=new).take(SERIES_LEN) {
            self.series[(t % SERIES_LEN as u64) as usize].clear();
        }
        let per_minute = 60 / STEP_SECONDS;
        let (old_minute, new_minute) = (old / per_minute, new / per_minute);
        if new_minute > old_minute {
            let rules = self.rules.lock().unwrap_or_else(PoisonError::into_inner);
            for m in (old_minute + 1..=new_minute).take(MINUTES) {
                for window in rules.values() {
                    window.slot(m).iter().for_each(|n| n.store(0, Ordering::Relaxed));
                }
            }
        }
        self.tick.store(new, Ordering::Relaxed);
    }

    /// Runs [`Live::advance`] once a second, for as long as the server runs.
    pub async fn keep_time(self: Arc<Live>) {
        let mut every = tokio::time::interval(Duration::from_secs(1));
        loop {
            every.tick().await;
            self.advance(unix_now());
        }
    }

    /// Rule `id`'s decisions in the last minute and the last hour, by [`Counted`] outcome;
    /// zeros for a rule that has decided nothing since start.
    pub fn rule_counts(&self, id: &str) -> ([u64; 3], [u64; 3]) {
        let window = self.rules.lock().unwrap_or_else(PoisonError::into_inner).get(id).cloned();
        let Some(window) = window else { return ([0; 3], [0; 3]) };
        let minute = self.tick.load(Ordering::Relaxed) / (60 / STEP_SECONDS);
        let into_minute = (unix_now().as_secs_f64() % 60.0) / 60.0;
        (window.sum(minute, into_minute, 1), window.sum(minute, into_minute, 60))
    }

    /// The latest refusals, newest first.
    pub fn refusals(&self) -> Vec<Refusal> {
        self.refusals.lock().unwrap_or_else(PoisonError::into_inner).iter().rev().cloned().collect()
    }

    /// Refusals not listed since start: more than [`LISTED_PER_STEP`] came in a step.
    pub fn unlisted(&self) -> u64 {
        self.unlisted.load(Ordering::Relaxed)
    }

    /// Tencent acks since start by command, the commands with none left out.
    pub fn tencent_acks(&self) -> Vec<(&'static str, u64)> {
        let names = catalog::TENCENT.iter().map(|c| c.name).chain(["other"]);
        names
            .zip(&self.tencent_acks)
            .map(|(name, n)| (name, n.load(Ordering::Relaxed)))
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    /// The last 15 minutes, oldest point first; the last point is the one filling now.
    pub fn series(&self) -> Series {
        let tick = self.tick.load(Ordering::Relaxed);
        let first = tick.saturating_sub(SERIES_LEN as u64 - 1);
        let mut series = Series { start: first * STEP_SECONDS, step_seconds: STEP_SECONDS, ..Series::default() };
        for t in first..=tick {
            let point = &self.series[(t % SERIES_LEN as u64) as usize];
            let counts: Vec<u64> = point.latency.iter().map(|b| b.load(Ordering::Relaxed)).collect();
            let decisions: u64 = counts.iter().sum();
            series.decisions.push(decisions);
            series.p50_ms.push(quantile_ms(&counts, decisions, 0.5));
            series.p99_ms.push(quantile_ms(&counts, decisions, 0.99));
            series.tencent_acks.push(point.tencent_acks.load(Ordering::Relaxed));
        }
        series
    }
}

/// Per 10-second point: OpenIM decisions, their latency quantiles, Tencent acks.
#[derive(Debug, Default, Serialize)]
pub struct Series {
    /// Unix time at which the first point begins.
    pub start: u64,
    /// Seconds each point covers.
    pub step_seconds: u64,
    /// OpenIM callbacks decided.
    pub decisions: Vec<u64>,
    /// Median decision latency, in ms (the upper bound of its bucket); `null` with none.
    pub p50_ms: Vec<Option<f64>>,
    /// 99th percentile, likewise.
    pub p99_ms: Vec<Option<f64>>,
    /// Tencent callbacks acknowledged.
    pub tencent_acks: Vec<u64>,
}

/// The upper bound, in ms, of the bucket holding quantile `q` of `total` latencies.
fn quantile_ms(counts: &[u64], total: u64, q: f64) -> Option<f64> {
    if total == 0 {
        return None;
    }
    let rank = ((q * total as f64).ceil() as u64).max(1);
    let mut seen = 0;
    for (i, n) in counts.iter().enumerate() {
        seen += n;
        if seen >= rank {
            let bound = BOUNDS.get(i).copied().unwrap_or(BOUNDS[BOUNDS.len() - 1] * 13 / 10);
            return Some(bound as f64 / 1e6);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decision::Refusal as Refused;

    #[test]
    fn a_minute_slot_is_cleared_when_its_minute_comes_round_again() {
        let live = Live::new();
        let start = Duration::from_secs(live.tick.load(Ordering::Relaxed) * STEP_SECONDS);
        let window = live.rule("r");
        live.count(&window, Counted::Deny);
        live.count(&window, Counted::Deny);
        assert_eq!(live.rule_counts("r").1, [0, 2, 0]);
        // An hour and a minute on, the old counts are out of the window and their slot empty.
        live.advance(start + Duration::from_secs(61 * 60));
        assert_eq!(window.sum(live.tick.load(Ordering::Relaxed) / 6, 0.0, 60), [0, 0, 0]);
        live.count(&window, Counted::Allow);
        assert_eq!(live.rule_counts("r").0[0], 1);
    }

    #[test]
    fn latency_quantiles_come_from_the_buckets() {
        let live = Live::new();
        for _ in 0..98 {
            live.decided(Duration::from_micros(4));
        }
        live.decided(Duration::from_millis(2));
        live.decided(Duration::from_millis(2));
        let series = live.series();
        assert_eq!(series.decisions.len(), SERIES_LEN);
        assert_eq!(series.decisions.last(), Some(&100));
        assert_eq!(series.p50_ms.last(), Some(&Some(0.005)));
        let p99 = series.p99_ms.last().copied().flatten().unwrap();
        assert!((2.0..2.7).contains(&p99), "p99 {p99}");
        assert_eq!(series.p50_ms[0], None);
    }

    #[test]
    fn the_refusal_ring_keeps_the_newest_and_lists_a_flood_only_in_part() {
        let live = Live::new();
        let start = live.tick.load(Ordering::Relaxed) * STEP_SECONDS;
        let mut body = serde_json::Map::new();
        body.insert("callbackCommand".into(), "c".into());
        body.insert("sendID".into(), "u_1".into());
        let event = Event::openim("c", body);
        for step in 0..3 {
            live.advance(Duration::from_secs(start + step * STEP_SECONDS));
            for code in 0..(LISTED_PER_STEP + 5) {
                let deny = Outcome::Deny(Arc::new(Refused::new((step * 1000 + code) as i32, "m", "")));
                live.refused(&event, None, &deny, "");
            }
        }
        let refusals = live.refusals();
        assert_eq!(refusals.len(), REFUSALS_KEPT);
        assert_eq!(refusals[0].error_code, Some(2000 + LISTED_PER_STEP as i32 - 1), "the newest listed first");
        assert_eq!(refusals[0].kind, "deny");
        assert_eq!(refusals[0].ids, vec![("sendID".to_string(), "u_1".to_string())]);
        assert_eq!(live.unlisted(), 15);
    }
}
