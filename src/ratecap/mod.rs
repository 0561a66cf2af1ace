//! Rate-cap stores: exact rolling-window counts of allowed callbacks per key. One interface,
//! two stores — in memory (the default) and Redis (shared by several instances). A store
//! counts keys and knows no rules.
//!
//! The one operation, [`CapStore::check`], takes the cap rules a callback reached, in rule
//! order, and atomically: finds the first enforced cap that allowing this callback would
//! exceed; and, when the final answer is allow, counts the callback against every cap it
//! was checked against and stayed under. So a cap is never exceeded, also under concurrent
//! requests, and only allowed callbacks count.
//!
//! A window is half-open: a callback counted at time `t` counts in `(now - per, now]`, so it
//! stops counting exactly `per` after it was allowed.

mod memory;
mod redis;

pub use memory::MemoryCaps;
pub use redis::RedisCaps;

use std::time::Duration;

use crate::redis_health::RedisCallError;

/// One cap to check for one callback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapCheck {
    /// The rule whose cap this is (for messages and tests; the key already holds it).
    pub rule: std::sync::Arc<str>,
    /// The rule id, window and key values, as one string; see [`cap_key`].
    pub key: String,
    /// Allowed callbacks per window.
    pub max: u64,
    /// The window.
    pub per: Duration,
    /// A dry-run cap never decides.
    pub is_dry_run: bool,
    /// What the rule decides when its cap is exceeded is allow (unusual, but legal).
    pub is_allow_when_exceeded: bool,
}

/// What the store found.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CapOutcome {
    /// The first enforced cap that was exceeded: it decides.
    pub decided_by: Option<usize>,
    /// For each check: the count in its window before this callback, and whether it was
    /// exceeded. Checks after `decided_by` were not reached and have `None`.
    pub counts: Vec<Option<(u64, bool)>>,
}

/// Why a store could not answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CapError {
    /// Redis gave no answer (timeout, error, circuit open).
    #[error(transparent)]
    Redis(#[from] RedisCallError),
    /// The in-memory store tracks its maximum number of keys.
    #[error("the rate-cap store is full ({0} keys)")]
    Full(usize),
}

impl CapError {
    /// A short stable name, for metric labels.
    pub fn kind(&self) -> &'static str {
        match self {
            CapError::Redis(err) => err.kind(),
            CapError::Full(_) => "full",
        }
    }
}

/// What a cap answers when its store cannot: allow (fail open, the default) or deny.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// The cap is treated as not exceeded, and nothing is counted.
    #[default]
    Allow,
    /// The cap is treated as exceeded.
    Deny,
}

impl OnError {
    /// The outcome that stands in for the store's answer.
    pub fn outcome(self, checks: &[CapCheck]) -> CapOutcome {
        match self {
            OnError::Allow => CapOutcome { decided_by: None, counts: vec![None; checks.len()] },
            OnError::Deny => {
                let decided_by = checks.iter().position(|c| !c.is_dry_run);
                CapOutcome { decided_by, counts: vec![None; checks.len()] }
            }
        }
    }
}

/// The store in use.
#[derive(Debug)]
pub enum CapStore {
    /// Counts in this process.
    Memory(MemoryCaps),
    /// Counts in Redis, shared by every instance that uses it.
    Redis(RedisCaps),
}

impl CapStore {
    /// Checks `checks` (in rule order) and counts this callback where it is allowed.
    /// `allow_if_none_decides` is what the callback's answer is when no cap decides.
    pub async fn check(&self, checks: &[CapCheck], allow_if_none_decides: bool) -> Result<CapOutcome, CapError> {
        match self {
            CapStore::Memory(m) => m.check(checks, allow_if_none_decides),
            CapStore::Redis(r) => r.check(checks, allow_if_none_decides).await,
        }
    }

    /// The counts of `checks` without counting anything, for explanations.
    pub async fn peek(&self, checks: &[CapCheck]) -> Result<Vec<u64>, CapError> {
        match self {
            CapStore::Memory(m) => Ok(m.peek(checks)),
            CapStore::Redis(r) => r.peek(checks).await,
        }
    }
}

/// The key of one cap: rule id, window, key field names and their values. Counts survive a
/// reload exactly when rule id, key fields and window are unchanged. Parts are separated by
/// `\u{1f}` (unit separator), which IDs do not contain.
pub fn cap_key<V: AsRef<str>>(rule: &str, per: Duration, fields: &str, values: impl IntoIterator<Item = V>) -> String {
    cap_key_from_head(&cap_key_head(rule, per, fields), values)
}

/// The part of a [`cap_key`] its rule fixes: rule id, window and key field names. Made once
/// per rule when policies load, so that a callback's key is a copy and its values.
pub fn cap_key_head(rule: &str, per: Duration, fields: &str) -> String {
    format!("{rule}\u{1f}{}\u{1f}{fields}", per.as_millis())
}

/// The [`cap_key`] whose [`cap_key_head`] is `head`, for these key values.
pub fn cap_key_from_head<V: AsRef<str>>(head: &str, values: impl IntoIterator<Item = V>) -> String {
    let mut key = String::with_capacity(head.len() + 32);
    key.push_str(head);
    for v in values {
        key.push('\u{1f}');
        key.push_str(v.as_ref());
    }
    key
}

/// A cap key cut in two: rule id, window and key field names; and the key values (empty for
/// a cap without key fields). See [`cap_key`].
pub(crate) fn cap_key_parts(key: &str) -> (&str, &str) {
    match key.match_indices('\u{1f}').nth(2) {
        Some((i, _)) => (&key[..i], &key[i + 1..]),
        None => (key, ""),
    }
}

/// The decision logic every store shares, given each key's count in its window: returns
/// the outcome, and whether the callback counts (it does when it is allowed), in which case
/// [`under`] says against which checks.
fn resolve(
    checks: &[CapCheck],
    mut counts: impl FnMut(usize) -> u64,
    allow_if_none_decides: bool,
) -> (CapOutcome, bool) {
    let mut outcome = CapOutcome { decided_by: None, counts: vec![None; checks.len()] };
    for (i, check) in checks.iter().enumerate() {
        let count = counts(i);
        let is_exceeded = count + 1 > check.max;
        outcome.counts[i] = Some((count, is_exceeded));
        if is_exceeded && !check.is_dry_run {
            outcome.decided_by = Some(i);
            break;
        }
    }
    let is_allowed = match outcome.decided_by {
        Some(i) => checks[i].is_allow_when_exceeded,
        None => allow_if_none_decides,
    };
    (outcome, is_allowed)
}

/// The checks an allowed callback counts against: every one reached and not exceeded.
fn under(outcome: &CapOutcome) -> impl Iterator<Item = usize> + '_ {
    outcome.counts.iter().enumerate().filter(|(_, c)| matches!(c, Some((_, false)))).map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(max: u64, is_dry_run: bool) -> CapCheck {
        CapCheck {
            rule: "r".into(),
            key: "k".into(),
            max,
            per: Duration::from_secs(60),
            is_dry_run,
            is_allow_when_exceeded: false,
        }
    }

    #[test]
    fn first_enforced_exceeded_cap_decides_and_nothing_counts() {
        let checks = [check(5, false), check(1, true), check(2, false), check(9, false)];
        let (outcome, is_counted) = resolve(&checks, |i| [1, 1, 2, 0][i], true);
        assert_eq!(outcome.decided_by, Some(2));
        assert_eq!(outcome.counts, vec![Some((1, false)), Some((1, true)), Some((2, true)), None]);
        assert!(!is_counted);
    }

    #[test]
    fn an_allowed_callback_counts_against_every_cap_it_stayed_under() {
        let checks = [check(5, false), check(1, true), check(3, false)];
        let (outcome, is_counted) = resolve(&checks, |i| [4, 1, 0][i], true);
        assert_eq!(outcome.decided_by, None);
        assert!(is_counted);
        assert_eq!(under(&outcome).collect::<Vec<_>>(), vec![0, 2]);
        let (_, is_counted) = resolve(&checks, |i| [4, 1, 0][i], false);
        assert!(!is_counted, "a callback refused by a later rule is not counted");
    }

    #[test]
    fn cap_key_keeps_its_exact_form() {
        // Counts in Redis, and across reloads, are found by this string: it must not change.
        let key = cap_key("unblock-rate", Duration::from_secs(60), "ownerUserID,groupID", ["u_1", "g_2"]);
        assert_eq!(key, "unblock-rate\u{1f}60000\u{1f}ownerUserID,groupID\u{1f}u_1\u{1f}g_2");
    }
}
