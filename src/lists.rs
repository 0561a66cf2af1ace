//! The list store: answers whether IDs are in lists held in Redis sets
//! (`lists: banned: { redis: "app:banned-users" }`), asked live so that an application's
//! `SADD` is seen by the next callback. One `SMISMEMBER` per list a decision asks about,
//! each bounded by the Redis timeout; an optional per-list cache reuses an answer for at most
//! its `cache` duration. Knows no rules: policy evaluation says what to ask.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::policy::RedisSet;
use crate::redis_client::RedisConn;

/// Answers kept at most; past that the cache is emptied (it only saves round trips).
const MAX_CACHED: usize = 100_000;

/// Why a list could not be asked.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ListStoreError {
    /// No Redis is configured, yet the policy set has a list held in Redis.
    #[error("the list `{0}` is held in redis, and no --redis-url is set")]
    NoRedis(String),
    /// Redis did not answer in time.
    #[error("redis timed out after {0:?}")]
    Timeout(Duration),
    /// Redis answered with an error or the connection failed.
    #[error("redis: {0}")]
    Redis(String),
}

impl ListStoreError {
    /// A short stable name, for metric labels.
    pub fn kind(&self) -> &'static str {
        match self {
            ListStoreError::NoRedis(_) => "no_redis",
            ListStoreError::Timeout(_) => "timeout",
            ListStoreError::Redis(_) => "redis",
        }
    }
}

/// Where lists held in Redis are asked.
pub struct ListStore {
    conn: Option<RedisConn>,
    timeout: Duration,
    /// (set key, ID) → (is a member, when Redis said so).
    cache: Mutex<HashMap<(String, String), (bool, Instant)>>,
}

impl std::fmt::Debug for ListStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListStore").field("timeout", &self.timeout).finish_non_exhaustive()
    }
}

impl ListStore {
    /// A store asking the Redis of `conn`, each call bounded by `timeout`; with no `conn`,
    /// every question fails (and is answered per `--on-error`).
    pub fn new(conn: Option<RedisConn>, timeout: Duration) -> ListStore {
        ListStore { conn, timeout, cache: Mutex::new(HashMap::new()) }
    }

    /// Whether each `(set, id)` is a member, in order: from the cache when its answer is
    /// younger than the set's `cache`, else one `SMISMEMBER` per set.
    pub async fn ask(&self, questions: &[(&RedisSet, &str)]) -> Result<Vec<bool>, ListStoreError> {
        let mut answers = vec![None; questions.len()];
        self.answer_from_cache(questions, &mut answers);
        let mut by_set: Vec<(&RedisSet, Vec<usize>)> = Vec::new();
        for (i, (set, _)) in questions.iter().enumerate() {
            if answers[i].is_some() {
                continue;
            }
            match by_set.iter_mut().find(|(s, _)| s == set) {
                Some((_, asked)) => asked.push(i),
                None => by_set.push((set, vec![i])),
            }
        }
        for (set, asked) in by_set {
            let ids: Vec<&str> = asked.iter().map(|&i| questions[i].1).collect();
            let members = self.smismember(set, &ids).await?;
            for (&i, is_member) in asked.iter().zip(members) {
                answers[i] = Some(is_member);
            }
            if !set.cache.is_zero() {
                self.keep(set, &ids, &asked, &answers);
            }
        }
        Ok(answers.into_iter().map(|a| a.unwrap_or(false)).collect())
    }

    fn answer_from_cache(&self, questions: &[(&RedisSet, &str)], answers: &mut [Option<bool>]) {
        if questions.iter().all(|(set, _)| set.cache.is_zero()) {
            return;
        }
        let cache = self.cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        for ((set, id), answer) in questions.iter().zip(answers.iter_mut()) {
            let cached = cache.get(&(set.key.clone(), (*id).to_string()));
            if let Some((is_member, _)) = cached.filter(|(_, at)| now.duration_since(*at) < set.cache) {
                *answer = Some(*is_member);
            }
        }
    }

    fn keep(&self, set: &RedisSet, ids: &[&str], asked: &[usize], answers: &[Option<bool>]) {
        let mut cache = self.cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if cache.len() + ids.len() > MAX_CACHED {
            cache.clear();
        }
        let now = Instant::now();
        for (id, &i) in ids.iter().zip(asked) {
            if let Some(is_member) = answers[i] {
                cache.insert((set.key.clone(), (*id).to_string()), (is_member, now));
            }
        }
    }

    async fn smismember(&self, set: &RedisSet, ids: &[&str]) -> Result<Vec<bool>, ListStoreError> {
        let Some(conn) = &self.conn else { return Err(ListStoreError::NoRedis(set.key.clone())) };
        let mut conn = conn.clone();
        let mut cmd = redis::cmd("SMISMEMBER");
        cmd.arg(&set.key).arg(ids);
        match tokio::time::timeout(self.timeout, cmd.query_async::<Vec<bool>>(&mut conn)).await {
            Ok(Ok(members)) if members.len() == ids.len() => Ok(members),
            Ok(Ok(members)) => {
                Err(ListStoreError::Redis(format!("{} answers to {} questions", members.len(), ids.len())))
            }
            Ok(Err(e)) => Err(ListStoreError::Redis(e.to_string())),
            Err(_) => Err(ListStoreError::Timeout(self.timeout)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cached_answer_is_used_only_while_younger_than_the_lists_cache() {
        let store = ListStore::new(None, Duration::from_millis(50));
        let set = RedisSet { key: "banned".into(), cache: Duration::from_secs(1) };
        let now = Instant::now();
        {
            let mut cache = store.cache.lock().unwrap();
            cache.insert(("banned".into(), "fresh".into()), (true, now));
            cache.insert(("banned".into(), "stale".into()), (true, now - Duration::from_millis(1001)));
        }
        let mut answers = [None, None, None];
        store.answer_from_cache(&[(&set, "fresh"), (&set, "stale"), (&set, "unknown")], &mut answers);
        assert_eq!(answers, [Some(true), None, None]);
        let uncached = RedisSet { cache: Duration::ZERO, ..set.clone() };
        let mut answers = [None];
        store.answer_from_cache(&[(&uncached, "fresh")], &mut answers);
        assert_eq!(answers, [None], "a list without cache is asked every time");
    }
}
