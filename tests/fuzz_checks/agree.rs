//! The agreement every policy set owes every callback, checked by the `eval` and
//! `policy_load` targets: the indexed fast path (`decide`) answers like the full scan
//! (`explain`), and the trace tells the same story as the decision.

use callgate::event::Event;
use callgate::policy::{PolicySet, Step};
use serde_json::Value;

/// Checks `set` on `event`; panics on any disagreement.
pub fn check_event(set: &PolicySet, event: &Event) {
    let fast = set.decide(event);
    let (full, trace) = set.explain(event, &Default::default());
    assert_eq!(
        (&fast.outcome, &fast.rule, &fast.dry_run),
        (&full.outcome, &full.rule, &full.dry_run),
        "decide and explain disagree on command `{}`",
        event.command
    );
    assert!(fast.caps.is_empty(), "decide without a store counted caps: {:?}", fast.caps);
    // With no counts, a cap (max ≥ 1) is never exceeded.
    assert!(full.caps.iter().all(|c| c.count == 0 && !c.is_exceeded), "{:?}", full.caps);

    assert_eq!(trace.len(), set.rule_count());
    let decided: Vec<_> = trace.iter().filter(|s| s.step == Step::Decided).map(|s| s.rule.clone()).collect();
    assert_eq!(decided.first(), full.rule.as_ref(), "trace names another deciding rule");
    assert!(decided.len() <= 1, "several rules decided: {decided:?}");
    let after = trace.iter().skip_while(|s| s.step != Step::Decided).skip(1);
    assert!(after.clone().all(|s| s.step == Step::NotReached), "a rule after the decision was evaluated");
    let held_dry: Vec<_> = trace.iter().filter(|s| s.step == Step::HeldDryRun).map(|s| s.rule.clone()).collect();
    let hit_dry: Vec<_> = full.dry_run.iter().map(|h| h.rule.clone()).collect();
    assert_eq!(held_dry, hit_dry, "dry-run hits and trace differ");

    for check in set.cap_checks_for(event) {
        assert!(!check.key.is_empty() && check.max >= 1, "{check:?}");
    }
    use callgate::protocol::openim::{OpenImVersion, encode};
    let answer: Value = serde_json::from_slice(&encode(&fast.outcome, OpenImVersion::V3_7)).expect("answer");
    assert_eq!(answer["nextCode"], Value::from(u8::from(fast.outcome.as_str() == "deny")), "{answer}");
}
