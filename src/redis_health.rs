//! Whether Redis answers: one circuit breaker for the one Redis that rate caps and lists held
//! in Redis share, so that a Redis outage costs a decision nothing instead of a timeout.
//!
//! Every call to Redis on a decision's path goes through [`RedisHealth::call`], which bounds
//! it by its timeout. After [`OPEN_AFTER`] failures in a row — of caps or lists alike — the
//! circuit opens: for [`OPEN_FOR`] no call is sent and each fails at once with
//! [`RedisCallError::CircuitOpen`], which its caller answers per `--on-error`. Then one call
//! probes; the others still fail at once until it is answered, and its answer closes the
//! circuit or opens it again. The state is the gauge `callgate_redis_circuit_open`, each
//! failure counts in `callgate_redis_errors_total{reason}`, and the log says when an outage
//! begins, every [`OUTAGE_LOG_EVERY`] while it lasts, and when it ends — never once per call.
//!
//! What a failure means for a decision (which answer `--on-error` gives) is the callers'
//! business: [`crate::ratecap`] and [`crate::lists`]. The record stream keeps its own longer
//! timeout and is not part of this breaker: a stream copy is not on a decision's path.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Failures in a row that open the circuit.
pub const OPEN_AFTER: u32 = 3;
/// How long the circuit stays open before one call is let through to try again.
pub const OPEN_FOR: Duration = Duration::from_millis(500);
/// How often a Redis outage that goes on is logged again.
pub const OUTAGE_LOG_EVERY: Duration = Duration::from_secs(10);

/// Why a call to Redis gave no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RedisCallError {
    /// Redis did not answer in time.
    #[error("redis timed out after {0:?}")]
    Timeout(Duration),
    /// Redis answered with an error or the connection failed.
    #[error("redis: {0}")]
    Redis(String),
    /// The circuit is open after repeated failures: the call was not sent.
    #[error("redis is unavailable (circuit open)")]
    CircuitOpen,
}

impl RedisCallError {
    /// A short stable name, for metric labels.
    pub fn kind(&self) -> &'static str {
        match self {
            RedisCallError::Timeout(_) => "timeout",
            RedisCallError::Redis(_) => "redis",
            RedisCallError::CircuitOpen => "circuit_open",
        }
    }
}

/// The circuit breaker of the one Redis; shared (in an `Arc`) by the cap store and the list
/// store.
#[derive(Debug, Default)]
pub struct RedisHealth {
    /// Failures in a row; a success resets it.
    failures: AtomicU32,
    /// While `Some` and in the future, calls fail at once. Past it, the next call takes the
    /// probe by moving it on, so that the calls after it still fail at once.
    open_until: Mutex<Option<Instant>>,
    outage: Outage,
}

/// What to do with one call.
#[derive(Debug, PartialEq, Eq)]
enum Admission {
    /// Send it.
    Send,
    /// The circuit is open: fail it at once.
    Refuse,
}

impl RedisHealth {
    /// A closed circuit; sets `callgate_redis_circuit_open` to 0.
    pub fn new() -> RedisHealth {
        metrics::gauge!("callgate_redis_circuit_open").set(0.0);
        RedisHealth::default()
    }

    /// Sends `call` unless the circuit is open, bounded by `timeout`; notes how it went.
    /// `call` is only polled when it is sent.
    pub async fn call<T>(
        &self,
        timeout: Duration,
        call: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, RedisCallError> {
        if self.admit(Instant::now(), timeout) == Admission::Refuse {
            self.outage.failed(&RedisCallError::CircuitOpen);
            return Err(RedisCallError::CircuitOpen);
        }
        let result = match tokio::time::timeout(timeout, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(RedisCallError::Redis(e.to_string())),
            Err(_) => Err(RedisCallError::Timeout(timeout)),
        };
        match &result {
            Ok(_) => self.succeeded(),
            Err(err) => self.failed(err, Instant::now()),
        }
        result
    }

    /// Whether a call at `now` is sent. Past the open deadline this call is the probe: the
    /// deadline moves on by the probe's `timeout` (at least [`OPEN_FOR`]), so the calls after
    /// it fail at once until its answer closes or reopens the circuit — and, should the probe
    /// be dropped unanswered, the next call after that probes again.
    fn admit(&self, now: Instant, timeout: Duration) -> Admission {
        let mut open_until = self.open_until.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match *open_until {
            None => Admission::Send,
            Some(until) if now < until => Admission::Refuse,
            Some(_) => {
                *open_until = Some(now + timeout.max(OPEN_FOR));
                Admission::Send
            }
        }
    }

    fn succeeded(&self) {
        self.failures.store(0, Ordering::Relaxed);
        // Whatever the count said: a failure that raced this success may have opened it.
        if self.open_until.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take().is_some() {
            metrics::gauge!("callgate_redis_circuit_open").set(0.0);
        }
        self.outage.succeeded();
    }

    fn failed(&self, err: &RedisCallError, now: Instant) {
        self.outage.failed(err);
        metrics::counter!("callgate_redis_errors_total", "reason" => err.kind()).increment(1);
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures < OPEN_AFTER {
            return;
        }
        let mut open_until = self.open_until.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if open_until.replace(now + OPEN_FOR).is_none() {
            metrics::gauge!("callgate_redis_circuit_open").set(1.0);
            tracing::error!(
                "redis failed {failures} times in a row ({err}); rate caps and lists held in redis answer per on_error until it is back"
            );
        }
    }
}

/// What operators read of a Redis outage: its first failure at once, then one line every
/// [`OUTAGE_LOG_EVERY`] with how many calls failed or were not sent and the last error, and
/// a line when Redis answers again. (Metrics count each failure.)
#[derive(Debug, Default)]
struct Outage {
    /// Whether Redis is failing; read on every call, so an atomic.
    is_on: AtomicBool,
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
    fn failed(&self, err: &RedisCallError) {
        if let Some(line) = self.note_failure(err, Instant::now()) {
            tracing::error!("{line}");
        }
    }

    /// Counts a failure at `now`; returns the line to log, if one is due.
    fn note_failure(&self, err: &RedisCallError, now: Instant) -> Option<String> {
        let mut state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        state.failed_in_all += 1;
        // An open circuit says nothing new about Redis: the error worth showing is the last
        // one Redis gave.
        if *err != RedisCallError::CircuitOpen || state.last_error.is_empty() {
            state.last_error = err.to_string();
        }
        if !self.is_on.swap(true, Ordering::Relaxed) {
            state.since = Some(now);
            state.last_logged = Some(now);
            state.failed_since_logged = 0;
            return Some(format!(
                "redis failed ({err}): rate caps and lists held in redis answer per on_error until it answers again"
            ));
        }
        state.failed_since_logged += 1;
        let since_logged = state.last_logged.map_or(OUTAGE_LOG_EVERY, |t| now.duration_since(t));
        if since_logged < OUTAGE_LOG_EVERY {
            return None;
        }
        let line = format!(
            "redis still failing: {} calls failed or were not sent in the last {:.0?} (answered per on_error); last error: {}",
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
            "redis answers again after {lasted:.1?}: rate caps and lists held in redis use it again ({} calls failed or were not sent)",
            state.failed_in_all
        );
        *state = OutageState::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_millis(50);

    fn timeout() -> RedisCallError {
        RedisCallError::Timeout(TIMEOUT)
    }

    #[test]
    fn the_circuit_opens_after_failures_in_a_row_only() {
        let health = RedisHealth::new();
        let now = Instant::now();
        health.failed(&timeout(), now);
        health.failed(&timeout(), now);
        health.succeeded();
        health.failed(&timeout(), now);
        health.failed(&timeout(), now);
        assert_eq!(health.admit(now, TIMEOUT), Admission::Send, "a success between resets the count");
        health.failed(&timeout(), now);
        assert_eq!(health.admit(now, TIMEOUT), Admission::Refuse);
        assert_eq!(health.admit(now + OPEN_FOR - Duration::from_millis(1), TIMEOUT), Admission::Refuse);
    }

    #[test]
    fn after_open_for_one_call_probes_and_its_answer_decides() {
        let health = RedisHealth::new();
        let opened = Instant::now();
        for _ in 0..OPEN_AFTER {
            health.failed(&timeout(), opened);
        }
        let later = opened + OPEN_FOR;
        assert_eq!(health.admit(later, TIMEOUT), Admission::Send, "the probe");
        assert_eq!(health.admit(later, TIMEOUT), Admission::Refuse, "while the probe is out");
        assert_eq!(health.admit(later + OPEN_FOR - Duration::from_millis(1), TIMEOUT), Admission::Refuse);
        // The probe fails: open again for OPEN_FOR from its failure.
        let failed_at = later + TIMEOUT;
        health.failed(&timeout(), failed_at);
        assert_eq!(health.admit(failed_at + OPEN_FOR - Duration::from_millis(1), TIMEOUT), Admission::Refuse);
        assert_eq!(health.admit(failed_at + OPEN_FOR, TIMEOUT), Admission::Send, "the next probe");
        // It succeeds: closed, every call is sent.
        health.succeeded();
        assert_eq!(health.admit(failed_at + OPEN_FOR, TIMEOUT), Admission::Send);
        assert_eq!(health.admit(failed_at + OPEN_FOR, TIMEOUT), Admission::Send);
    }

    #[test]
    fn a_success_closes_the_circuit_even_when_a_racing_success_reset_the_count() {
        let health = RedisHealth::new();
        let now = Instant::now();
        for _ in 0..OPEN_AFTER {
            health.failed(&timeout(), now);
        }
        // A success that ran between the third failure's count and its opening.
        health.failures.store(0, Ordering::Relaxed);
        assert_eq!(health.admit(now + OPEN_FOR, TIMEOUT), Admission::Send, "the probe");
        health.succeeded();
        assert_eq!(health.admit(now + OPEN_FOR, TIMEOUT), Admission::Send, "closed by the probe's success");
    }

    #[test]
    fn a_probe_that_never_answers_holds_the_circuit_no_longer_than_its_timeout() {
        let health = RedisHealth::new();
        let opened = Instant::now();
        for _ in 0..OPEN_AFTER {
            health.failed(&timeout(), opened);
        }
        let long = Duration::from_secs(2);
        let probed = opened + OPEN_FOR;
        assert_eq!(health.admit(probed, long), Admission::Send);
        assert_eq!(health.admit(probed + long - Duration::from_millis(1), long), Admission::Refuse);
        assert_eq!(health.admit(probed + long, long), Admission::Send, "the probe was dropped: probe again");
    }

    #[tokio::test]
    async fn an_open_circuit_fails_at_once_without_sending() {
        let health = RedisHealth::new();
        for _ in 0..OPEN_AFTER {
            let err = health.call(TIMEOUT, std::future::pending::<redis::RedisResult<()>>()).await;
            assert_eq!(err, Err(timeout()));
        }
        let mut is_sent = false;
        let call = async {
            is_sent = true;
            Ok(())
        };
        let started = Instant::now();
        assert_eq!(health.call(Duration::from_secs(10), call).await, Err(RedisCallError::CircuitOpen));
        assert!(started.elapsed() < TIMEOUT);
        assert!(!is_sent, "the call was polled");
    }

    #[tokio::test]
    async fn an_error_from_redis_counts_as_a_failure_and_an_answer_as_a_success() {
        let health = RedisHealth::new();
        let refused = || async { Err::<(), _>(redis::RedisError::from((redis::ErrorKind::Io, "connection refused"))) };
        for _ in 0..OPEN_AFTER - 1 {
            let err = health.call(TIMEOUT, refused()).await.unwrap_err();
            assert!(matches!(err, RedisCallError::Redis(_)), "{err}");
        }
        assert_eq!(health.call(TIMEOUT, async { Ok(7) }).await, Ok(7));
        health.call(TIMEOUT, refused()).await.unwrap_err();
        assert_eq!(health.admit(Instant::now(), TIMEOUT), Admission::Send, "the answer reset the count");
    }

    #[test]
    fn an_outage_is_logged_at_once_then_every_ten_seconds_with_its_count() {
        let outage = Outage::default();
        let start = Instant::now();
        let line = |secs: u64, err: RedisCallError| outage.note_failure(&err, start + Duration::from_secs(secs));
        assert!(line(0, timeout()).is_some_and(|l| l.starts_with("redis failed (redis timed out after 50ms): ")));
        assert_eq!(line(1, RedisCallError::CircuitOpen), None);
        assert_eq!(line(9, RedisCallError::CircuitOpen), None);
        let again = line(10, RedisCallError::CircuitOpen).unwrap();
        assert_eq!(
            again,
            "redis still failing: 3 calls failed or were not sent in the last 10s (answered per on_error); last error: redis timed out after 50ms"
        );
        assert_eq!(line(11, timeout()), None);
        outage.succeeded();
        assert!(line(12, timeout()).is_some_and(|l| l.starts_with("redis failed (")), "a new outage is logged at once");
    }
}
