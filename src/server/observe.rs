//! Metrics, logs and the status page's numbers of each decision, OpenIM's and Tencent's
//! alike. Labels stay bounded: commands no catalog names count as `other`, and rule ids come
//! from the policy sets loaded.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use metrics::{Counter, Histogram};

use super::status::{self, Counted, Live, RuleWindow};
use crate::catalog;
use crate::decision::{Decision, Outcome};
use crate::event::Event;

/// The `outcome` label of `callgate_decisions_total`.
const OUTCOMES: [&str; 5] = ["allow", "deny", "discard", "would_deny", "would_discard"];

/// Counts and logs one decision, and keeps it for the status page (`live`); `is_dry_run` is
/// the server's `--dry-run` (what would have been refused was answered "go on").
pub fn decision(live: &Live, event: &Event, decision: &Decision, is_dry_run: bool, latency: Duration) {
    let command = event.command.as_str();
    let rule = decision.rule.as_deref().unwrap_or("(default)");
    let outcome = match (&decision.outcome, is_dry_run) {
        (Outcome::Allow, _) => 0,
        (Outcome::Deny(_), false) => 1,
        (Outcome::Discard, false) => 2,
        (Outcome::Deny(_), true) => 3,
        (Outcome::Discard, true) => 4,
    };
    let counted = match outcome {
        0 => Counted::Allow,
        1 | 2 => Counted::Deny,
        _ => Counted::WouldDeny,
    };
    HANDLES.with_borrow_mut(|handles| {
        handles.latency.record(latency.as_secs_f64());
        let of_rule = handles.rule(rule);
        of_rule.decision(command_slot(command), rule, outcome).increment(1);
        status::observe(live, of_rule.window(live, rule), event, decision, counted, latency);
        for hit in &decision.dry_run {
            let of_rule = handles.rule(&hit.rule);
            of_rule.dry_run_hit(&hit.rule, hit.outcome.is_refusal()).increment(1);
            status::observe_dry_run(live, of_rule.window(live, &hit.rule), event, hit);
            // Records and the metric carry every hit; a log line each would flood the log.
            tracing::debug!(command, rule = %hit.rule, would = hit.outcome.as_str(), "dry-run rule held");
        }
    });
    if outcome >= 3 {
        tracing::debug!(command, rule, "dry run: would {}", decision.outcome.as_str());
    }
}

/// The commands that get a label of their own: OpenIM's, then the Tencent callbacks
/// callgate decides; one more slot is `other`.
fn command_slot(command: &str) -> usize {
    catalog::openim_index(command)
        .or_else(|| {
            catalog::TENCENT_DECIDED.binary_search_by(|d| d.name.cmp(command)).ok().map(|i| catalog::OPENIM.len() + i)
        })
        .unwrap_or(SLOTS - 1)
}

/// Command slots: every labelled command and `other`.
const SLOTS: usize = catalog::OPENIM.len() + catalog::TENCENT_DECIDED.len() + 1;

fn slot_name(slot: usize) -> &'static str {
    let tencent = slot.checked_sub(catalog::OPENIM.len());
    match (catalog::OPENIM.get(slot), tencent.and_then(|i| catalog::TENCENT_DECIDED.get(i))) {
        (Some(openim), _) => openim.name,
        (None, Some(tencent)) => tencent.name,
        (None, None) => "other",
    }
}

thread_local! {
    /// Each worker thread's handles of the decision metrics. Finding a labelled metric in the
    /// registry hashes and clones its labels, which cost as much as deciding; a handle, once
    /// found, is kept for as long as the thread. Rule ids are bounded by the policy sets
    /// loaded, as the registry's own series are.
    static HANDLES: std::cell::RefCell<Handles> = std::cell::RefCell::new(Handles::default());
}

struct Handles {
    /// Where each rule's handles are in `rules`: one lookup a decision.
    by_rule: HashMap<Box<str>, usize>,
    rules: Vec<RuleHandles>,
    latency: Histogram,
}

/// One rule's handles.
#[derive(Default)]
struct RuleHandles {
    /// `callgate_decisions_total` by command slot and outcome.
    decisions: Vec<Option<Counter>>,
    /// `callgate_dry_run_hits_total`: would allow, would refuse.
    dry_run_hits: Option<[Counter; 2]>,
    /// The status page's window of the rule, with the id of the [`Live`] it belongs to.
    live: Option<(u64, Arc<RuleWindow>)>,
}

impl Default for Handles {
    fn default() -> Handles {
        Handles {
            by_rule: HashMap::new(),
            rules: Vec::new(),
            latency: metrics::histogram!("callgate_decision_seconds"),
        }
    }
}

impl Handles {
    fn rule(&mut self, rule: &str) -> &mut RuleHandles {
        // Not `entry(rule.into())`: that would allocate the key on every decision.
        let at = match self.by_rule.get(rule) {
            Some(&at) => at,
            None => {
                self.rules.push(RuleHandles::default());
                self.by_rule.insert(rule.into(), self.rules.len() - 1);
                self.rules.len() - 1
            }
        };
        &mut self.rules[at]
    }
}

impl RuleHandles {
    fn decision(&mut self, slot: usize, rule: &str, outcome: usize) -> &Counter {
        if self.decisions.is_empty() {
            self.decisions = vec![None; SLOTS * OUTCOMES.len()];
        }
        self.decisions[slot * OUTCOMES.len() + outcome].get_or_insert_with(|| {
            metrics::counter!("callgate_decisions_total", "command" => slot_name(slot), "rule" => rule.to_string(), "outcome" => OUTCOMES[outcome])
        })
    }

    fn dry_run_hit(&mut self, rule: &str, would_refuse: bool) -> &Counter {
        let [allow, deny] = self.dry_run_hits.get_or_insert_with(|| {
            let counter = |would: &'static str| metrics::counter!("callgate_dry_run_hits_total", "rule" => rule.to_string(), "would" => would);
            [counter("allow"), counter("deny")]
        });
        if would_refuse { deny } else { allow }
    }

    /// The rule's window in `live`; the server's one in production, looked up again only
    /// when a thread serves another server (tests run several in one process).
    fn window(&mut self, live: &Live, rule: &str) -> &RuleWindow {
        if self.live.as_ref().is_none_or(|(id, _)| *id != live.id()) {
            self.live = Some((live.id(), live.rule(rule)));
        }
        let (_, window) = self.live.get_or_insert_with(|| (live.id(), live.rule(rule)));
        window
    }
}
