//! The Redis cap store, shared by every callgate instance that points at the same Redis —
//! one server or a Redis Cluster, with one key layout and one code path.
//!
//! Each key is a sorted set of the allowed callbacks in its window: one member per callback
//! (a token unique to the decision), scored by its time (ms, Redis's own clock). A Lua
//! script checks and counts the caps of one slot atomically (Redis runs a script alone):
//! drop times that left the window, count, find the first enforced cap exceeded, count the
//! callback where it is allowed. Keys expire one window after their last callback, so Redis
//! memory stays bounded.
//!
//! Keys spread over a cluster's slots: a key's hash tag is its cap's key values (the user,
//! say), so one user's caps share a slot and different users' caps spread over every node.
//! A decision's caps are checked in rule order, one script per run of caps on one slot —
//! one round trip when they all share one (always on one server). When they do not, the
//! answer is known only at the last run, so the earlier runs *reserve* the callback (count
//! it where it stays under) and a refusal *gives back* those reservations (removes its
//! token). Why that is exact, also when callgate dies between the two, is in [`RedisCaps::check`].
//!
//! Every call goes through [`RedisHealth::call`]: bounded by the timeout, and not sent while
//! the circuit breaker of the one Redis (shared with lists held in Redis) is open.

use std::borrow::Cow;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use redis::Script;
use redis::cluster_routing::Slot;

use crate::redis_client::RedisConn;
use crate::redis_health::RedisHealth;

use super::{CapCheck, CapError, CapOutcome, cap_key_parts};

/// Prefix of every cap key. Before the cluster layout the prefix was `{callgate}:cap:`, a
/// hash tag that put every cap in one slot; such keys are no longer read and expire by
/// themselves (see docs/operations.md, "Upgrading to caps spread over a cluster").
const KEY_PREFIX: &str = "callgate:cap:";

/// KEYS: the cap keys of one slot. ARGV[1]: 1 when the callback is counted if no cap of
/// these decides; ARGV[2]: the decision's token (the member added); then four per key: max,
/// window in ms, 1 for dry run, 1 when the rule allows when exceeded.
/// Returns {decided (1-based, 0 for none), count of key 1, exceeded 1/0, count of key 2, …}
/// for the keys reached.
const CHECK: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {0}
local under = {}
local decided = 0
for i = 1, #KEYS do
  local a = 2 + (i - 1) * 4
  local max, per = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now - per)
  local count = redis.call('ZCARD', KEYS[i])
  local exceeded = count + 1 > max
  out[#out + 1] = count
  out[#out + 1] = exceeded and 1 or 0
  if not exceeded then
    under[#under + 1] = i
  elseif ARGV[a + 3] ~= '1' then
    decided = i
    break
  end
end
out[1] = decided
local counted
if decided > 0 then counted = ARGV[2 + (decided - 1) * 4 + 4] == '1' else counted = ARGV[1] == '1' end
if counted then
  for _, i in ipairs(under) do
    redis.call('ZADD', KEYS[i], now, ARGV[2])
    redis.call('PEXPIRE', KEYS[i], ARGV[2 + (i - 1) * 4 + 2])
  end
end
return out
";

/// KEYS: cap keys of one slot; ARGV[1]: a decision's token. Removes it from each key.
const GIVE_BACK: &str = r"
for i = 1, #KEYS do
  redis.call('ZREM', KEYS[i], ARGV[1])
end
return #KEYS
";

/// KEYS: the cap keys of one slot; ARGV: their windows in ms. Returns each key's count.
const PEEK: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
for i = 1, #KEYS do
  out[i] = redis.call('ZCOUNT', KEYS[i], '(' .. (now - tonumber(ARGV[i])), '+inf')
end
return out
";

/// The Redis key of a cap key: `callgate:cap:` + rule id, window and key field names, then
/// the key values as the hash tag: `callgate:cap:unblock-rate␟60000␟ownerUserID␟{u_1}`.
/// `%`, `{` and `}` are percent-encoded in both parts, so that no value can choose a
/// slot but by being that value, and two cap keys never share a Redis key.
pub fn redis_key(cap_key: &str) -> String {
    let (head, values) = cap_key_parts(cap_key);
    let (head, values) = (escape(head), escape(values));
    let mut key = String::with_capacity(KEY_PREFIX.len() + head.len() + values.len() + 3);
    key.push_str(KEY_PREFIX);
    key.push_str(&head);
    key.push_str("\u{1f}{");
    key.push_str(&values);
    key.push('}');
    key
}

fn escape(text: &str) -> Cow<'_, str> {
    if !text.contains(['%', '{', '}']) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '%' => out.push_str("%25"),
            '{' => out.push_str("%7B"),
            '}' => out.push_str("%7D"),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// The runs of consecutive checks that one script can check: in a cluster, those whose keys
/// share a slot; on one server, all of them.
fn runs(keys: &[String], is_cluster: bool) -> Vec<Range<usize>> {
    let mut runs: Vec<Range<usize>> = Vec::new();
    let mut last_slot = None;
    for (i, key) in keys.iter().enumerate() {
        let slot = is_cluster.then(|| Slot::for_key(key));
        match runs.last_mut() {
            Some(run) if slot == last_slot => run.end = i + 1,
            _ => runs.push(i..i + 1),
        }
        last_slot = slot;
    }
    runs
}

/// Rate caps counted in Redis.
pub struct RedisCaps {
    conn: RedisConn,
    timeout: Duration,
    check: Script,
    give_back: Script,
    peek: Script,
    /// The next decision's token: a random start, then one more per decision, so tokens are
    /// unique in this process and, in practice, across instances.
    tokens: AtomicU64,
    health: Arc<RedisHealth>,
}

impl std::fmt::Debug for RedisCaps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCaps").field("timeout", &self.timeout).finish_non_exhaustive()
    }
}

impl RedisCaps {
    /// A store in the Redis of `conn` (see [`crate::redis_client`]), each call bounded by
    /// `timeout` and guarded by `health`. The connection is lazy, so callgate starts even while
    /// Redis is down; caps then answer per `on_error` until it is back.
    pub fn new(conn: RedisConn, timeout: Duration, health: Arc<RedisHealth>) -> RedisCaps {
        RedisCaps {
            conn,
            timeout,
            check: Script::new(CHECK),
            give_back: Script::new(GIVE_BACK),
            peek: Script::new(PEEK),
            tokens: AtomicU64::new(random_u64()),
            health,
        }
    }

    fn is_cluster(&self) -> bool {
        matches!(self.conn, RedisConn::Cluster(_))
    }

    /// A token as the decimal of a 63-bit number: Redis keeps such a member as an 8-byte
    /// integer, which makes each counted callback 21 bytes instead of 29 as 16 hex digits.
    fn next_token(&self) -> String {
        (self.tokens.fetch_add(1, Ordering::Relaxed) & (i64::MAX as u64)).to_string()
    }

    /// See [`super::CapStore::check`]. Caps are checked in rule order, one script per run of
    /// caps on one slot (see [`runs`]); a run before the last *reserves* the callback in the
    /// caps it stays under, as the answer is not known yet, and a refusal *gives back* every
    /// reservation. Why this is exact:
    ///
    /// - No cap passes its max: a script adds the callback to a key only when the key's count,
    ///   reservations included, stays within max, and Redis runs each script alone.
    /// - A refused callback counts in no cap: its reservations are given back before it is
    ///   answered. Meanwhile a reservation counts, so a concurrent callback on the same key may
    ///   be refused that would have been allowed a round trip later (never the other way).
    /// - An allowed callback's member is never removed but by its window: give-back removes
    ///   only the refused decision's own token. So nothing under-counts.
    /// - callgate dying (or Redis failing) between reserve and give-back leaves the
    ///   reservation: the cap over-counts by one callback for at most its window.
    pub async fn check(&self, checks: &[CapCheck], allow_if_none_decides: bool) -> Result<CapOutcome, CapError> {
        let keys: Vec<String> = checks.iter().map(|c| redis_key(&c.key)).collect();
        let runs = runs(&keys, self.is_cluster());
        let token = self.next_token();
        // When no answer but refuse is possible, nothing is counted and no run reserves.
        let may_allow = allow_if_none_decides || checks.iter().any(|c| c.is_allow_when_exceeded);
        let mut outcome = CapOutcome { decided_by: None, counts: vec![None; checks.len()] };
        let mut reserved = Vec::new();
        for (n, run) in runs.iter().enumerate() {
            let counts_if_none_decides = if n + 1 == runs.len() { allow_if_none_decides } else { may_allow };
            let result = self.check_run(&checks[run.clone()], &keys[run.clone()], counts_if_none_decides, &token).await;
            let (decided, counts) = match result {
                Ok(reply) => reply,
                Err(err) => {
                    // A script whose answer was lost may have run: its keys are given back too.
                    reserved.extend(run.clone());
                    self.give_back(&keys, &reserved, &token).await;
                    return Err(err);
                }
            };
            for (i, count) in run.clone().zip(counts) {
                outcome.counts[i] = count;
            }
            let is_counted = decided.map_or(counts_if_none_decides, |d| checks[run.start + d].is_allow_when_exceeded);
            if is_counted {
                reserved.extend(run.clone().filter(|&i| matches!(outcome.counts[i], Some((_, false)))));
            }
            if let Some(d) = decided {
                outcome.decided_by = Some(run.start + d);
                if !is_counted {
                    self.give_back(&keys, &reserved, &token).await;
                }
                return Ok(outcome);
            }
        }
        if !allow_if_none_decides {
            self.give_back(&keys, &reserved, &token).await;
        }
        Ok(outcome)
    }

    /// Checks one run of caps on one slot with [`CHECK`]; returns the cap that decided (its
    /// index in the run) and each cap's count and whether it was exceeded.
    async fn check_run(
        &self,
        checks: &[CapCheck],
        keys: &[String],
        counts_if_none_decides: bool,
        token: &str,
    ) -> Result<(Option<usize>, Vec<Option<(u64, bool)>>), CapError> {
        let mut invocation = self.check.prepare_invoke();
        invocation.arg(u8::from(counts_if_none_decides)).arg(token);
        for (c, key) in checks.iter().zip(keys) {
            invocation.key(key);
            invocation
                .arg(c.max)
                .arg(c.per.as_millis() as u64)
                .arg(u8::from(c.is_dry_run))
                .arg(u8::from(c.is_allow_when_exceeded));
        }
        let reply: Vec<i64> = self.call(invocation).await?;
        let decided = reply.first().copied().unwrap_or(0);
        let mut counts = vec![None; checks.len()];
        for (slot, pair) in counts.iter_mut().zip(reply[1.min(reply.len())..].chunks(2)) {
            if let [count, exceeded] = pair {
                *slot = Some((*count as u64, *exceeded == 1));
            }
        }
        let decided = usize::try_from(decided).ok().filter(|&d| d > 0 && d <= checks.len()).map(|d| d - 1);
        Ok((decided, counts))
    }

    /// Removes `token` from the keys at `reserved`, one script per slot. A failure leaves
    /// those reservations to expire with their window; it is logged and counted.
    async fn give_back(&self, keys: &[String], reserved: &[usize], token: &str) {
        if reserved.is_empty() {
            return;
        }
        let reserved_keys: Vec<String> = reserved.iter().filter_map(|&i| keys.get(i).cloned()).collect();
        for run in runs(&reserved_keys, self.is_cluster()) {
            let mut invocation = self.give_back.prepare_invoke();
            invocation.arg(token);
            for key in &reserved_keys[run.clone()] {
                invocation.key(key);
            }
            if let Err(err) = self.call::<i64>(invocation).await {
                metrics::counter!("callgate_ratecap_reservations_left_total").increment(run.len() as u64);
                tracing::warn!(
                    "could not give back a refused callback's reservation in {} cap(s) ({err}): each over-counts by one until its window ends",
                    run.len()
                );
            }
        }
    }

    /// See [`super::CapStore::peek`].
    pub async fn peek(&self, checks: &[CapCheck]) -> Result<Vec<u64>, CapError> {
        let keys: Vec<String> = checks.iter().map(|c| redis_key(&c.key)).collect();
        let mut counts = Vec::with_capacity(checks.len());
        for run in runs(&keys, self.is_cluster()) {
            let mut invocation = self.peek.prepare_invoke();
            for (c, key) in checks[run.clone()].iter().zip(&keys[run]) {
                invocation.key(key);
                invocation.arg(c.per.as_millis() as u64);
            }
            let reply: Vec<i64> = self.call(invocation).await?;
            counts.extend(reply.into_iter().map(|c| c.max(0) as u64));
        }
        Ok(counts)
    }

    /// Runs a script with the timeout and the circuit breaker.
    async fn call<T: redis::FromRedisValue>(&self, invocation: redis::ScriptInvocation<'_>) -> Result<T, CapError> {
        let mut conn = self.conn.clone();
        Ok(self.health.call(self.timeout, invocation.invoke_async(&mut conn)).await?)
    }
}

/// 64 random bits, from the process's randomly keyed hasher.
fn random_u64() -> u64 {
    use std::hash::BuildHasher;
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    std::collections::hash_map::RandomState::new().hash_one((nanos, std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caps_key_values_are_its_hash_tag() {
        let key = super::super::cap_key("unblock-rate", Duration::from_secs(60), "ownerUserID,groupID", ["u_1", "g_2"]);
        assert_eq!(
            redis_key(&key),
            "callgate:cap:unblock-rate\u{1f}60000\u{1f}ownerUserID,groupID\u{1f}{u_1\u{1f}g_2}"
        );
        let no_fields = super::super::cap_key::<&str>("global", Duration::from_secs(1), "", []);
        assert_eq!(redis_key(&no_fields), "callgate:cap:global\u{1f}1000\u{1f}\u{1f}{}");
        // A value cannot choose its slot with braces of its own, nor look like another value.
        let braces = super::super::cap_key("r", Duration::from_secs(1), "f", ["{x}y%"]);
        assert_eq!(redis_key(&braces), "callgate:cap:r\u{1f}1000\u{1f}f\u{1f}{%7Bx%7Dy%25}");
    }

    #[test]
    fn caps_of_one_user_share_a_slot_and_different_users_do_not() {
        let key =
            |rule: &str, user: &str| redis_key(&super::super::cap_key(rule, Duration::from_secs(60), "u", [user]));
        // The slot is the values' own: CLUSTER KEYSLOT of the key and of `u_1` agree.
        assert_eq!(Slot::for_key(key("a", "u_1")), Slot::for_key("u_1"));
        let keys = [key("a", "u_1"), key("b", "u_1"), key("c", "u_2"), key("d", "u_1")];
        assert_eq!(runs(&keys, true), vec![0..2, 2..3, 3..4], "consecutive caps on one slot run together");
        assert_eq!(runs(&keys, false), vec![0..4], "one server: one script");
        assert_eq!(runs(&[], true), Vec::<Range<usize>>::new());
    }
}
