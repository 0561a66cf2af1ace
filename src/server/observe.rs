//! Metrics and logs of each decision, OpenIM's and Tencent's alike. Labels stay bounded:
//! commands no catalog names count as `other`, and rule ids come from the policy sets loaded.

use std::collections::HashMap;
use std::time::Duration;

use metrics::{Counter, Histogram};

use crate::catalog;
use crate::decision::{Decision, Outcome};

/// The `outcome` label of `callgate_decisions_total`.
const OUTCOMES: [&str; 5] = ["allow", "deny", "discard", "would_deny", "would_discard"];

/// Counts and logs one decision; `is_dry_run` is the server's `--dry-run` (what would have
/// been refused was answered "go on").
pub fn decision(command: &str, decision: &Decision, is_dry_run: bool, latency: Duration) {
    let rule = decision.rule.as_deref().unwrap_or("(default)");
    let outcome = match (&decision.outcome, is_dry_run) {
        (Outcome::Allow, _) => 0,
        (Outcome::Deny(_), false) => 1,
        (Outcome::Discard, false) => 2,
        (Outcome::Deny(_), true) => 3,
        (Outcome::Discard, true) => 4,
    };
    HANDLES.with_borrow_mut(|handles| {
        handles.decision(command_slot(command), rule, outcome).increment(1);
        handles.latency.record(latency.as_secs_f64());
        for hit in &decision.dry_run {
            handles.dry_run_hit(&hit.rule, hit.outcome.is_refusal()).increment(1);
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
    /// `callgate_decisions_total` by rule, then by command slot and outcome.
    decisions: HashMap<Box<str>, Vec<Option<Counter>>>,
    /// `callgate_dry_run_hits_total` by rule: would allow, would refuse.
    dry_run_hits: HashMap<Box<str>, [Counter; 2]>,
    latency: Histogram,
}

impl Default for Handles {
    fn default() -> Handles {
        Handles {
            decisions: HashMap::new(),
            dry_run_hits: HashMap::new(),
            latency: metrics::histogram!("callgate_decision_seconds"),
        }
    }
}

impl Handles {
    fn decision(&mut self, slot: usize, rule: &str, outcome: usize) -> &Counter {
        // Not `entry(rule.into())`: that would allocate the key on every decision.
        if !self.decisions.contains_key(rule) {
            self.decisions.insert(rule.into(), vec![None; SLOTS * OUTCOMES.len()]);
        }
        let slots = self.decisions.get_mut(rule).map(Vec::as_mut_slice).unwrap_or_default();
        slots[slot * OUTCOMES.len() + outcome].get_or_insert_with(|| {
            metrics::counter!("callgate_decisions_total", "command" => slot_name(slot), "rule" => rule.to_string(), "outcome" => OUTCOMES[outcome])
        })
    }

    fn dry_run_hit(&mut self, rule: &str, would_refuse: bool) -> &Counter {
        if !self.dry_run_hits.contains_key(rule) {
            let counter = |would: &'static str| metrics::counter!("callgate_dry_run_hits_total", "rule" => rule.to_string(), "would" => would);
            self.dry_run_hits.insert(rule.into(), [counter("allow"), counter("deny")]);
        }
        &self.dry_run_hits[rule][usize::from(would_refuse)]
    }
}
