//! The Redis cap store, shared by every callgate instance that points at the same Redis.
//!
//! Each key is a sorted set of the times (ms, Redis's own clock) of allowed callbacks. One
//! Lua script per decision does what the in-memory store does — drop times that left the
//! window, count, find the first enforced cap exceeded, count the callback where it is
//! allowed — atomically (Redis runs a script alone) and in one round trip. Keys expire one
//! window after their last callback, so Redis memory stays bounded.
//!
//! Every call has a timeout. After repeated failures a circuit breaker stops calling for a
//! while, so a Redis outage costs each decision nothing; each state change is logged once.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use redis::Script;

use crate::redis_client::RedisConn;

use super::{CapCheck, CapError, CapOutcome};

/// Failures in a row that open the circuit.
const OPEN_AFTER: u32 = 3;
/// How long the circuit stays open before one call is let through to try again.
const OPEN_FOR: Duration = Duration::from_millis(500);
/// Prefix of every key callgate writes. The `{callgate}` hash tag puts every cap key in one
/// Redis Cluster slot: a decision's caps are checked by one script, which Cluster runs only
/// on keys of one slot. (Caps are small counters; one node holds them all.)
const KEY_PREFIX: &str = "{callgate}:cap:";

/// KEYS: the cap keys. ARGV[1]: 1 when the answer is allow if no cap decides; then four
/// per key: max, window in ms, 1 for dry run, 1 when the rule allows when exceeded.
/// Returns {decided (1-based, 0 for none), count of key 1, exceeded 1/0, count of key 2, …}
/// for the keys reached.
const CHECK: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {0}
local under = {}
local decided = 0
for i = 1, #KEYS do
  local a = 1 + (i - 1) * 4
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
local allowed
if decided > 0 then allowed = ARGV[1 + (decided - 1) * 4 + 4] == '1' else allowed = ARGV[1] == '1' end
if allowed then
  for _, i in ipairs(under) do
    local per = tonumber(ARGV[1 + (i - 1) * 4 + 2])
    local count = redis.call('ZCARD', KEYS[i])
    redis.call('ZADD', KEYS[i], now, now .. '-' .. count)
    redis.call('PEXPIRE', KEYS[i], per)
  end
end
return out
";

/// KEYS: the cap keys; ARGV: their windows in ms. Returns each key's count.
const PEEK: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
for i = 1, #KEYS do
  out[i] = redis.call('ZCOUNT', KEYS[i], '(' .. (now - tonumber(ARGV[i])), '+inf')
end
return out
";

/// Rate caps counted in Redis.
pub struct RedisCaps {
    conn: RedisConn,
    timeout: Duration,
    check: Script,
    peek: Script,
    failures: AtomicU32,
    open_until: Mutex<Option<Instant>>,
    outage: Outage,
}

/// How often a Redis outage that goes on is logged again.
const OUTAGE_LOG_EVERY: Duration = Duration::from_secs(10);

/// What operators read of a Redis outage: its first failure at once, then one line every
/// [`OUTAGE_LOG_EVERY`] with how many cap checks were answered per `on_error` and the last
/// error, and a line when Redis answers again. (Metrics count each failure.)
#[derive(Debug, Default)]
struct Outage {
    /// Whether Redis is failing; read on every call, so an atomic.
    is_on: std::sync::atomic::AtomicBool,
    state: Mutex<OutageState>,
}

#[derive(Debug, Default)]
struct OutageState {
    since: Option<Instant>,
    last_logged: Option<Instant>,
    failed_since_logged: u64,
    failed_in_all: u64,
    last_error: String,
}

impl Outage {
    fn failed(&self, err: &CapError) {
        if let Some(line) = self.note_failure(err, Instant::now()) {
            tracing::error!("{line}");
        }
    }

    /// Counts a failure at `now`; returns the line to log, if one is due.
    fn note_failure(&self, err: &CapError, now: Instant) -> Option<String> {
        let mut state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        state.failed_in_all += 1;
        state.last_error = err.to_string();
        if !self.is_on.swap(true, Ordering::Relaxed) {
            state.since = Some(now);
            state.last_logged = Some(now);
            state.failed_since_logged = 0;
            return Some(format!("redis failed ({err}): rate caps answer per on_error until it answers again"));
        }
        state.failed_since_logged += 1;
        let since_logged = state.last_logged.map_or(OUTAGE_LOG_EVERY, |t| now.duration_since(t));
        if since_logged < OUTAGE_LOG_EVERY {
            return None;
        }
        let line = format!(
            "redis still failing: {} cap checks answered per on_error in the last {:.0?}; last error: {}",
            state.failed_since_logged, since_logged, state.last_error
        );
        state.last_logged = Some(now);
        state.failed_since_logged = 0;
        Some(line)
    }

    fn succeeded(&self) {
        if !self.is_on.load(Ordering::Relaxed) {
            return;
        }
        let mut state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if !self.is_on.swap(false, Ordering::Relaxed) {
            return;
        }
        let lasted = state.since.map_or(Duration::ZERO, |t| t.elapsed());
        tracing::info!(
            "redis answers again after {lasted:.1?}: rate caps are counted in redis again ({} cap checks were answered per on_error)",
            state.failed_in_all
        );
        *state = OutageState::default();
    }
}

impl std::fmt::Debug for RedisCaps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCaps").field("timeout", &self.timeout).finish_non_exhaustive()
    }
}

impl RedisCaps {
    /// A store in the Redis of `conn` (see [`crate::redis_client`]), each call bounded by
    /// `timeout`. The connection is lazy, so callgate starts even while Redis is down; caps
    /// then answer per `on_error` until it is back.
    pub fn new(conn: RedisConn, timeout: Duration) -> RedisCaps {
        metrics::gauge!("callgate_redis_circuit_open").set(0.0);
        RedisCaps {
            conn,
            timeout,
            check: Script::new(CHECK),
            peek: Script::new(PEEK),
            failures: AtomicU32::new(0),
            open_until: Mutex::new(None),
            outage: Outage::default(),
        }
    }

    fn key(key: &str) -> String {
        format!("{KEY_PREFIX}{key}")
    }

    /// See [`super::CapStore::check`].
    pub async fn check(&self, checks: &[CapCheck], allow_if_none_decides: bool) -> Result<CapOutcome, CapError> {
        let mut invocation = self.check.prepare_invoke();
        invocation.arg(u8::from(allow_if_none_decides));
        for c in checks {
            invocation.key(Self::key(&c.key));
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
        let decided_by = usize::try_from(decided).ok().filter(|&d| d > 0 && d <= checks.len()).map(|d| d - 1);
        Ok(CapOutcome { decided_by, counts })
    }

    /// See [`super::CapStore::peek`].
    pub async fn peek(&self, checks: &[CapCheck]) -> Result<Vec<u64>, CapError> {
        let mut invocation = self.peek.prepare_invoke();
        for c in checks {
            invocation.key(Self::key(&c.key));
            invocation.arg(c.per.as_millis() as u64);
        }
        let reply: Vec<i64> = self.call(invocation).await?;
        Ok(reply.into_iter().map(|c| c.max(0) as u64).collect())
    }

    /// Runs a script with the timeout and the circuit breaker.
    async fn call<T: redis::FromRedisValue>(&self, invocation: redis::ScriptInvocation<'_>) -> Result<T, CapError> {
        if self.is_open() {
            self.outage.failed(&CapError::CircuitOpen);
            return Err(CapError::CircuitOpen);
        }
        let mut conn = self.conn.clone();
        let result = match tokio::time::timeout(self.timeout, invocation.invoke_async(&mut conn)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(CapError::Redis(e.to_string())),
            Err(_) => Err(CapError::Timeout(self.timeout)),
        };
        match &result {
            Ok(_) => self.succeeded(),
            Err(e) => self.failed(e),
        }
        result
    }

    fn is_open(&self) -> bool {
        let open_until = self.open_until.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // Past the deadline the circuit is half open: calls go through until one fails.
        open_until.is_some_and(|t| Instant::now() < t)
    }

    fn succeeded(&self) {
        if self.failures.swap(0, Ordering::Relaxed) >= OPEN_AFTER {
            *self.open_until.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = None;
            metrics::gauge!("callgate_redis_circuit_open").set(0.0);
        }
        self.outage.succeeded();
    }

    fn failed(&self, err: &CapError) {
        self.outage.failed(err);
        metrics::counter!("callgate_redis_errors_total", "reason" => err.kind()).increment(1);
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures >= OPEN_AFTER {
            *self.open_until.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
                Some(Instant::now() + OPEN_FOR);
            if failures == OPEN_AFTER {
                metrics::gauge!("callgate_redis_circuit_open").set(1.0);
                tracing::error!(
                    "redis failed {failures} times in a row ({err}); rate caps answer per on_error until it is back"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_is_logged_at_once_then_every_ten_seconds_with_its_count() {
        let outage = Outage::default();
        let start = Instant::now();
        let line = |secs: u64| {
            outage.note_failure(&CapError::Timeout(Duration::from_millis(50)), start + Duration::from_secs(secs))
        };
        assert!(line(0).is_some_and(|l| l.starts_with("redis failed (")));
        assert_eq!(line(1), None);
        assert_eq!(line(9), None);
        let again = line(10).unwrap();
        assert!(
            again.starts_with("redis still failing: 3 cap checks answered per on_error in the last 10s; last error: "),
            "{again}"
        );
        assert_eq!(line(11), None);
        outage.succeeded();
        assert!(line(12).is_some_and(|l| l.starts_with("redis failed (")), "a new outage is logged at once");
    }
}
