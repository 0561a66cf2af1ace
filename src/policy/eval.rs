//! (PolicySet, Event) → Decision: first-match evaluation, dry-run hits, and the trace that
//! `check` and `explain` show. No I/O.

use std::borrow::Cow;
use std::sync::Arc;

use serde_json::{Map, Value};

use super::compile::{Cond, FieldPath, Group, Outcome, PolicySet, Rule, Test};
use super::parse::Scalar;
use crate::event::Event;

/// What the policy set decided for one callback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Allow, or deny with a refusal: what enforcement answers.
    pub outcome: Outcome,
    /// The rule that decided; `None` when the default decided.
    pub rule: Option<Arc<str>>,
    /// Dry-run rules that held on the way, with what each would have decided.
    pub dry_run: Vec<DryRunHit>,
}

/// A rule in `mode: dry_run` that held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DryRunHit {
    /// The rule's id.
    pub rule: Arc<str>,
    /// What it would have decided.
    pub outcome: Outcome,
}

/// What happened to one rule during an explained evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// `on` does not name the command.
    Skipped,
    /// The conditions did not hold.
    NotHeld,
    /// A dry-run rule held; evaluation went on.
    HeldDryRun,
    /// The rule held and decided.
    Decided,
    /// A rule after the deciding one.
    NotReached,
}

impl Step {
    /// A short word for the trace.
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Skipped => "skipped",
            Step::NotHeld => "not held",
            Step::HeldDryRun => "dry run",
            Step::Decided => "decided",
            Step::NotReached => "not reached",
        }
    }
}

/// One line of a trace: a rule and what happened to it.
#[derive(Debug, Clone)]
pub struct TraceStep {
    /// The rule's id.
    pub rule: Arc<str>,
    /// Where it is written, as `file:line`.
    pub at: String,
    /// What happened.
    pub step: Step,
}

impl PolicySet {
    /// Decides one callback. The fast path: only indexed candidates are checked.
    pub fn decide(&self, event: &Event) -> Decision {
        let mut dry_run = Vec::new();
        for i in self.index.candidates(&event.command, &event.body) {
            let Some(rule) = self.rules.get(i as usize) else {
                continue;
            };
            if !rule.on.matches(&event.command) || !rule.when.holds(&event.body) {
                continue;
            }
            if rule.is_dry_run {
                dry_run.push(DryRunHit { rule: rule.id.clone(), outcome: rule.outcome.clone() });
                continue;
            }
            return Decision { outcome: rule.outcome.clone(), rule: Some(rule.id.clone()), dry_run };
        }
        Decision { outcome: self.default.clone(), rule: None, dry_run }
    }

    /// Decides one callback by looking at every rule in order, and says what happened to
    /// each. Always agrees with [`PolicySet::decide`]; slower, for `check` and `explain`.
    pub fn explain(&self, event: &Event) -> (Decision, Vec<TraceStep>) {
        let mut dry_run = Vec::new();
        let mut trace = Vec::with_capacity(self.rules.len());
        let mut decided: Option<&Rule> = None;
        for rule in &self.rules {
            let step = if decided.is_some() {
                Step::NotReached
            } else if !rule.on.matches(&event.command) {
                Step::Skipped
            } else if !rule.when.holds(&event.body) {
                Step::NotHeld
            } else if rule.is_dry_run {
                dry_run.push(DryRunHit { rule: rule.id.clone(), outcome: rule.outcome.clone() });
                Step::HeldDryRun
            } else {
                decided = Some(rule);
                Step::Decided
            };
            trace.push(TraceStep { rule: rule.id.clone(), at: rule.at.to_string(), step });
        }
        let decision = match decided {
            Some(rule) => Decision { outcome: rule.outcome.clone(), rule: Some(rule.id.clone()), dry_run },
            None => Decision { outcome: self.default.clone(), rule: None, dry_run },
        };
        (decision, trace)
    }
}

impl Group {
    /// Whether every condition holds for `body`.
    pub fn holds(&self, body: &Map<String, Value>) -> bool {
        self.0.iter().all(|c| c.holds(body))
    }
}

impl Cond {
    fn holds(&self, body: &Map<String, Value>) -> bool {
        match self {
            Cond::Field { field, test, is_negated } => {
                let value = lookup(body, field);
                if let Test::Exists(should_exist) = test {
                    return value.is_some() == *should_exist;
                }
                // A missing field fails every positive test and passes every negation.
                value.is_some_and(|v| test.holds(v)) != *is_negated
            }
            Cond::Any(groups) => groups.iter().any(|g| g.holds(body)),
            Cond::All(groups) => groups.iter().all(|g| g.holds(body)),
            Cond::Not(group) => !group.holds(body),
        }
    }
}

impl Test {
    fn holds(&self, value: &Value) -> bool {
        match self {
            Test::Equals(Scalar::Bool(b)) => value.as_bool() == Some(*b),
            Test::Equals(Scalar::Text(t)) => value_text(value).is_some_and(|v| *v == **t),
            Test::In(set) => match value {
                Value::Bool(b) => set.bools.contains(b),
                _ => value_text(value).is_some_and(|v| set.texts.contains(&*v)),
            },
            Test::InList(list) => value_text(value).is_some_and(|v| list.ids.contains(&*v)),
            Test::Regex(re) => value_text(value).is_some_and(|v| re.is_match(&v)),
            Test::Exists(should_exist) => *should_exist,
        }
    }
}

/// Finds a field in a callback body.
pub(crate) fn lookup<'v>(body: &'v Map<String, Value>, field: &FieldPath) -> Option<&'v Value> {
    match field {
        FieldPath::Key(k) => body.get(&**k),
        FieldPath::Dotted(parts) => {
            let (first, rest) = parts.split_first()?;
            let mut value = body.get(&**first)?;
            for part in rest {
                value = match value {
                    Value::Object(m) => m.get(&**part)?,
                    Value::Array(a) => a.get(part.parse::<usize>().ok()?)?,
                    _ => return None,
                };
            }
            Some(value)
        }
        FieldPath::Pointer(p) => {
            // The body is a map, not a Value: resolve the first token here, the rest with
            // serde_json's pointer.
            let rest = p.strip_prefix('/')?;
            let (first, tail) = match rest.find('/') {
                Some(at) => (&rest[..at], &rest[at..]),
                None => (rest, ""),
            };
            let value = if first.contains('~') {
                body.get(&first.replace("~1", "/").replace("~0", "~"))?
            } else {
                body.get(first)?
            };
            if tail.is_empty() { Some(value) } else { value.pointer(tail) }
        }
    }
}

/// The text conditions compare: strings as they are, numbers as JSON writes them.
/// Other types have no text and never match a list or a regex.
pub(crate) fn value_text(value: &Value) -> Option<Cow<'_, str>> {
    match value {
        Value::String(s) => Some(Cow::Borrowed(s)),
        Value::Number(n) => Some(Cow::Owned(n.to_string())),
        _ => None,
    }
}
