//! (PolicySet, Event) → Decision: first-match evaluation, dry-run hits, rate caps, and the
//! trace that `check` and `explain` show. No I/O but through the cap store and the list
//! store (for lists held in Redis, asked before the rules are looked at).

use std::borrow::Cow;
use std::collections::HashMap;

use serde_json::{Map, Value};

use super::model::{Cond, Group, RateCap, RedisSet, Rule, Scalar, Step, Test, TraceStep, lookup, value_text};
use super::set::PolicySet;
use crate::decision::{CapHit, Decision, DryRunHit, Outcome};
use crate::event::{Event, Source};
use crate::lists::ListStore;
use crate::ratecap::{CapCheck, CapOutcome, CapStore, OnError, cap_key_from_head};

/// What the list store answered for one callback: for each (Redis set key, ID) asked,
/// whether the ID is a member. An ID not asked is in no list held in Redis (offline tools,
/// `explain`).
#[derive(Debug, Default)]
pub struct Listed(Vec<(String, String, bool)>);

impl Listed {
    fn contains(&self, set: &RedisSet, id: &str) -> bool {
        self.0.iter().any(|(key, asked, is_member)| *is_member && *key == set.key && asked == id)
    }
}

/// A rule reached while planning, in rule order.
#[derive(Debug, Clone, Copy)]
enum Reached {
    /// A dry-run rule (without a cap) that held.
    DryRun(usize),
    /// A rate-capped rule whose conditions held: whether it holds is up to its cap, the
    /// `usize` after it indexes `Plan::checks`.
    Cap(usize, usize),
}

/// The first half of a decision: every rule that could decide has been looked at, except
/// that rate caps are yet to be checked. [`Plan::cap_checks`] go to a cap store, whose
/// answer [`Plan::finish`] turns into the [`Decision`].
#[derive(Debug)]
pub struct Plan<'s> {
    set: &'s PolicySet,
    /// What decides when no rule does.
    default: &'s Outcome,
    reached: Vec<Reached>,
    checks: Vec<CapCheck>,
    /// The first enforced rule without a cap that held.
    stop: Option<usize>,
}

impl Plan<'_> {
    /// The caps to check, in rule order; empty for most callbacks.
    pub fn cap_checks(&self) -> &[CapCheck] {
        &self.checks
    }

    /// The answer when no cap decides: the stop rule's, or the default's.
    pub fn is_allow_if_no_cap_decides(&self) -> bool {
        let outcome = self.stop.and_then(|i| self.set.rules.get(i)).map_or(self.default, |r| &r.outcome);
        *outcome == Outcome::Allow
    }

    /// The decision, given what the cap store found (`None`: caps treated as not exceeded,
    /// for offline use).
    pub fn finish(self, caps: Option<&CapOutcome>) -> Decision {
        let rules = &self.set.rules;
        let mut dry_run = Vec::new();
        let mut cap_hits = Vec::new();
        for reached in &self.reached {
            match *reached {
                Reached::DryRun(i) => {
                    dry_run.push(DryRunHit { rule: rules[i].id.clone(), outcome: rules[i].outcome.clone() })
                }
                Reached::Cap(i, k) => {
                    let rule = &rules[i];
                    let counted = caps.and_then(|c| c.counts.get(k).copied().flatten());
                    if let (Some((count, is_exceeded)), Some(check)) = (counted, self.checks.get(k)) {
                        cap_hits.push(CapHit { rule: rule.id.clone(), count, max: check.max, is_exceeded });
                    }
                    if caps.and_then(|c| c.decided_by) == Some(k) {
                        return Decision {
                            outcome: rule.outcome.clone(),
                            rule: Some(rule.id.clone()),
                            dry_run,
                            caps: cap_hits,
                        };
                    }
                    let is_exceeded = match (counted, caps) {
                        (Some((_, e)), _) => e,
                        // The store failed with on_error=deny: an enforced cap decided above;
                        // a dry-run cap would have held.
                        (None, Some(c)) => c.decided_by.is_some() && rule.is_dry_run,
                        (None, None) => false,
                    };
                    if is_exceeded && rule.is_dry_run {
                        dry_run.push(DryRunHit { rule: rule.id.clone(), outcome: rule.outcome.clone() });
                    }
                }
            }
        }
        match self.stop.and_then(|i| rules.get(i)) {
            Some(rule) => {
                Decision { outcome: rule.outcome.clone(), rule: Some(rule.id.clone()), dry_run, caps: cap_hits }
            }
            None => Decision { outcome: self.default.clone(), rule: None, dry_run, caps: cap_hits },
        }
    }
}

impl PolicySet {
    /// Plans the decision of one callback. The fast path: only indexed candidates are
    /// checked, and planning stops at the first enforced rule without a cap that holds.
    pub fn plan(&self, event: &Event) -> Plan<'_> {
        self.plan_listed(event, &Listed::default())
    }

    /// [`PolicySet::plan`], with what the list store answered for `event`.
    fn plan_listed(&self, event: &Event, listed: &Listed) -> Plan<'_> {
        let mut plan =
            Plan { set: self, default: self.default_for(event), reached: Vec::new(), checks: Vec::new(), stop: None };
        for i in self.index.candidates(&event.command, &event.body) {
            let i = i as usize;
            let Some(rule) = self.rules.get(i) else { continue };
            if !rule.on.matches(event) || !rule.when.holds(&event.body, listed) {
                continue;
            }
            if let Some(cap) = &rule.rate_cap {
                plan.reached.push(Reached::Cap(i, plan.checks.len()));
                plan.checks.push(cap_check(rule, cap, &event.body));
            } else if rule.is_dry_run {
                plan.reached.push(Reached::DryRun(i));
            } else {
                plan.stop = Some(i);
                break;
            }
        }
        plan
    }

    /// What decides `event` when no rule does: the set's default — but a Tencent callback
    /// only when the default's error states a code for its family (`code: { group: N }`),
    /// else allow, so that a set written for OpenIM refuses nothing of Tencent's.
    pub fn default_for(&self, event: &Event) -> &Outcome {
        static ALLOW: Outcome = Outcome::Allow;
        match &self.default {
            Outcome::Deny(r) if event.source == Source::Tencent => {
                let family = event.code_family();
                if r.codes.iter().any(|(f, _)| *f == family) { &self.default } else { &ALLOW }
            }
            default => default,
        }
    }

    /// Decides one callback without a cap store: caps are treated as never exceeded and
    /// nothing is counted. For offline tools and benchmarks; the server uses
    /// [`PolicySet::decide_with_caps`].
    pub fn decide(&self, event: &Event) -> Decision {
        self.plan(event).finish(None)
    }

    /// Decides one callback, asking `lists` about lists held in Redis and checking (and
    /// counting) rate caps in `caps`. When a store fails, what it was asked answers per
    /// `on_error`; the failure is counted.
    pub async fn decide_with_caps(
        &self,
        event: &Event,
        caps: &CapStore,
        lists: &ListStore,
        on_error: OnError,
    ) -> Decision {
        let listed = self.ask_lists(event, lists, on_error).await;
        let plan = self.plan_listed(event, &listed);
        if plan.cap_checks().is_empty() {
            return plan.finish(None);
        }
        let outcome = match caps.check(plan.cap_checks(), plan.is_allow_if_no_cap_decides()).await {
            Ok(outcome) => outcome,
            Err(err) => {
                metrics::counter!("callgate_ratecap_errors_total", "reason" => err.kind()).increment(1);
                tracing::debug!("rate cap answered per on_error={on_error:?}: {err}");
                on_error.outcome(plan.cap_checks())
            }
        };
        plan.finish(Some(&outcome))
    }

    /// Asks `lists` whether the IDs `event` carries are in the lists held in Redis that the
    /// rules it may reach test. When the store fails, each such test answers per `on_error`:
    /// allow reads the lists as empty, deny as holding every ID.
    async fn ask_lists(&self, event: &Event, lists: &ListStore, on_error: OnError) -> Listed {
        let mut questions: Vec<(&RedisSet, Cow<'_, str>)> = Vec::new();
        for &i in &self.redis_list_rules {
            let Some(rule) = self.rules.get(i as usize) else { continue };
            if rule.on.matches(event) {
                redis_list_questions(&rule.when, &event.body, &mut questions);
            }
        }
        if questions.is_empty() {
            return Listed::default();
        }
        questions.sort_unstable();
        questions.dedup();
        let asked: Vec<(&RedisSet, &str)> = questions.iter().map(|(set, id)| (*set, &**id)).collect();
        let answers = match lists.ask(&asked).await {
            Ok(answers) => answers,
            Err(err) => {
                metrics::counter!("callgate_list_errors_total", "reason" => err.kind()).increment(1);
                tracing::debug!("a list held in redis answered per on_error={on_error:?}: {err}");
                vec![on_error == OnError::Deny; asked.len()]
            }
        };
        Listed(
            asked
                .iter()
                .zip(answers)
                .map(|((set, id), is_member)| (set.key.clone(), id.to_string(), is_member))
                .collect(),
        )
    }

    /// The rate caps whose rules' conditions hold for `event`, reached or not, for
    /// [`PolicySet::explain`] to be given their counts.
    pub fn cap_checks_for(&self, event: &Event) -> Vec<CapCheck> {
        self.rules
            .iter()
            .filter(|r| r.on.matches(event) && r.when.holds(&event.body, &Listed::default()))
            .filter_map(|r| r.rate_cap.as_ref().map(|cap| cap_check(r, cap, &event.body)))
            .collect()
    }

    /// Decides one callback by looking at every rule in order, and says what happened to
    /// each. `cap_counts` gives the count in each cap's window by key (missing: 0); nothing
    /// is counted. Always agrees with [`PolicySet::decide`] given the same counts; slower,
    /// for `check` and `explain`.
    pub fn explain(&self, event: &Event, cap_counts: &HashMap<String, u64>) -> (Decision, Vec<TraceStep>) {
        let mut dry_run = Vec::new();
        let mut caps = Vec::new();
        let mut trace = Vec::with_capacity(self.rules.len());
        let mut decided: Option<&Rule> = None;
        for rule in &self.rules {
            let mut cap = None;
            let step = if decided.is_some() {
                Step::NotReached
            } else if !rule.on.matches(event) {
                Step::Skipped
            } else if !rule.when.holds(&event.body, &Listed::default()) {
                Step::NotHeld
            } else {
                let is_held = match &rule.rate_cap {
                    None => true,
                    Some(rc) => {
                        let check = cap_check(rule, rc, &event.body);
                        let count = cap_counts.get(&check.key).copied().unwrap_or(0);
                        let is_exceeded = count + 1 > rc.max;
                        cap = Some((count, rc.max));
                        caps.push(CapHit { rule: rule.id.clone(), count, max: rc.max, is_exceeded });
                        is_exceeded
                    }
                };
                if !is_held {
                    Step::UnderCap
                } else if rule.is_dry_run {
                    dry_run.push(DryRunHit { rule: rule.id.clone(), outcome: rule.outcome.clone() });
                    Step::HeldDryRun
                } else {
                    decided = Some(rule);
                    Step::Decided
                }
            };
            trace.push(TraceStep { rule: rule.id.clone(), at: rule.at.to_string(), step, cap });
        }
        let decision = match decided {
            Some(rule) => Decision { outcome: rule.outcome.clone(), rule: Some(rule.id.clone()), dry_run, caps },
            None => Decision { outcome: self.default_for(event).clone(), rule: None, dry_run, caps },
        };
        (decision, trace)
    }
}

/// The cap check of a rate-capped rule for one callback body.
fn cap_check(rule: &Rule, cap: &RateCap, body: &Map<String, Value>) -> CapCheck {
    let values = cap.fields.iter().map(|f| lookup(body, f).and_then(value_text).unwrap_or(Cow::Borrowed("")));
    CapCheck {
        rule: rule.id.clone(),
        key: cap_key_from_head(&cap.key_head, values),
        max: cap.max,
        per: cap.per,
        is_dry_run: rule.is_dry_run,
        is_allow_when_exceeded: rule.outcome == Outcome::Allow,
    }
}

/// Adds to `out` the (set, ID) questions of `group`'s tests on lists held in Redis, for the
/// IDs `body` carries.
fn redis_list_questions<'a>(
    group: &'a Group,
    body: &'a Map<String, Value>,
    out: &mut Vec<(&'a RedisSet, Cow<'a, str>)>,
) {
    for cond in &group.0 {
        match cond {
            Cond::Field { field, test: Test::InList(list), .. } => {
                if let (Some(set), Some(id)) = (&list.redis, lookup(body, field).and_then(value_text)) {
                    out.push((set, id));
                }
            }
            Cond::Field { .. } => {}
            Cond::Any(groups) | Cond::All(groups) => groups.iter().for_each(|g| redis_list_questions(g, body, out)),
            Cond::Not(g) => redis_list_questions(g, body, out),
        }
    }
}

impl Group {
    /// Whether every condition holds for `body`, given what lists held in Redis answered.
    pub fn holds(&self, body: &Map<String, Value>, listed: &Listed) -> bool {
        self.0.iter().all(|c| c.holds(body, listed))
    }
}

impl Cond {
    fn holds(&self, body: &Map<String, Value>, listed: &Listed) -> bool {
        match self {
            Cond::Field { field, test, is_negated } => {
                let value = lookup(body, field);
                if let Test::Exists(should_exist) = test {
                    return value.is_some() == *should_exist;
                }
                // A missing field fails every positive test and passes every negation.
                value.is_some_and(|v| test.holds(v, listed)) != *is_negated
            }
            Cond::Any(groups) => groups.iter().any(|g| g.holds(body, listed)),
            Cond::All(groups) => groups.iter().all(|g| g.holds(body, listed)),
            Cond::Not(group) => !group.holds(body, listed),
        }
    }
}

impl Test {
    fn holds(&self, value: &Value, listed: &Listed) -> bool {
        match self {
            Test::Equals(Scalar::Bool(b)) => value.as_bool() == Some(*b),
            Test::Equals(Scalar::Text(t)) => value_text(value).is_some_and(|v| *v == **t),
            Test::In(set) => match value {
                Value::Bool(b) => set.bools.contains(b),
                _ => value_text(value).is_some_and(|v| set.texts.contains(&*v)),
            },
            Test::InList(list) => value_text(value).is_some_and(|v| match &list.redis {
                None => list.ids.contains(&*v),
                Some(set) => listed.contains(set, &v),
            }),
            Test::Regex(re) => value_text(value).is_some_and(|v| re.is_match(&v)),
            Test::Exists(should_exist) => *should_exist,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::event::Event;
    use crate::ratecap::cap_key;

    #[test]
    fn a_callbacks_cap_key_is_cap_key_of_its_rule_and_values() {
        // The key is built from a head made when policies load; it must stay the key
        // `cap_key` makes (Redis keys and counts across reloads are found by it).
        let dir = tempfile::tempdir().unwrap();
        let yaml = "rules:\n  - id: unblock-rate\n    rate_cap: { key: [ownerUserID, seq, groupID], max: 5, per: 90s }\n    decision: deny\n    error: { code: 150, message: no }\n";
        std::fs::write(dir.path().join("10.yaml"), yaml).unwrap();
        let set = super::super::load_dir(dir.path()).unwrap();
        let body = serde_json::json!({ "ownerUserID": "u_1", "seq": 7 });
        let event = Event::openim("callbackAfterRemoveBlackCommand", body.as_object().unwrap().clone());
        let plan = set.plan(&event);
        let expected = cap_key("unblock-rate", Duration::from_secs(90), "ownerUserID,seq,groupID", ["u_1", "7", ""]);
        assert_eq!(plan.cap_checks()[0].key, expected);
    }
}
