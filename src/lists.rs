//! The list store: answers whether IDs are in lists held in Redis sets
//! (`lists: banned: { redis: "app:banned-users" }`), asked live so that an application's
//! `SADD` is seen by the next callback. Knows no rules: policy evaluation says what to ask.
//!
//! A decision's questions cost one round trip: one `SMISMEMBER` per set (all the IDs asked of
//! it at once), every set in one pipeline. In a Redis Cluster a pipeline must stay on one
//! slot (the redis crate refuses one whose keys cross slots), so the sets are pipelined per
//! slot and the slots asked concurrently: as many round trips, but at once. Each pipeline is
//! bounded by the Redis timeout and goes through the circuit breaker shared with rate caps
//! ([`crate::redis_health`]): while it is open, nothing is asked and [`ListStore::ask`] fails
//! at once. An optional per-list cache reuses an answer for at most its `cache` duration.
//!
//! A decision's rate caps cannot go in the same round trip: which caps it checks depends on
//! these answers (a rule's cap counts only when its conditions hold). So a decision that asks
//! a list and checks a cap in Redis costs two round trips; one with either alone costs one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::cluster_routing::Slot;

use crate::policy::RedisSet;
use crate::redis_client::RedisConn;
use crate::redis_health::{RedisCallError, RedisHealth};

/// Answers kept at most; past that the cache is emptied (it only saves round trips).
const MAX_CACHED: usize = 100_000;

/// Why a list could not be asked.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ListStoreError {
    /// No Redis is configured, yet the policy set has a list held in Redis.
    #[error("the list `{0}` is held in redis, and no --redis-url is set")]
    NoRedis(String),
    /// Redis gave no answer (timeout, error, circuit open: then nothing was asked).
    #[error(transparent)]
    Redis(#[from] RedisCallError),
}

impl ListStoreError {
    /// A short stable name, for metric labels.
    pub fn kind(&self) -> &'static str {
        match self {
            ListStoreError::NoRedis(_) => "no_redis",
            ListStoreError::Redis(err) => err.kind(),
        }
    }
}

/// Where lists held in Redis are asked.
pub struct ListStore {
    /// The Redis asked, and the breaker it shares with rate caps.
    redis: Option<(RedisConn, Arc<RedisHealth>)>,
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
    /// A store asking the Redis of `redis`, each pipeline bounded by `timeout` and guarded by
    /// its breaker; with no Redis, every question fails (and is answered per `--on-error`).
    pub fn new(redis: Option<(RedisConn, Arc<RedisHealth>)>, timeout: Duration) -> ListStore {
        ListStore { redis, timeout, cache: Mutex::new(HashMap::new()) }
    }

    /// Whether each `(set, id)` is a member, in order: from the cache when its answer is
    /// younger than the set's `cache`, else asked in one round trip (see the module doc).
    pub async fn ask(&self, questions: &[(&RedisSet, &str)]) -> Result<Vec<bool>, ListStoreError> {
        let mut answers = vec![None; questions.len()];
        self.answer_from_cache(questions, &mut answers);
        // Each set asked, with the questions (indices) asked of it.
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
        if !by_set.is_empty() {
            let asks: Vec<(&RedisSet, Vec<&str>)> =
                by_set.iter().map(|(set, asked)| (*set, asked.iter().map(|&i| questions[i].1).collect())).collect();
            let members = self.smismember(&asks).await?;
            for (((set, asked), (_, ids)), members) in by_set.iter().zip(&asks).zip(members) {
                for (&i, is_member) in asked.iter().zip(members) {
                    answers[i] = Some(is_member);
                }
                if !set.cache.is_zero() {
                    self.keep(set, ids, asked, &answers);
                }
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

    /// For each `(set, ids)`, whether each ID is a member: one pipeline of `SMISMEMBER`s per
    /// slot (one in all on one server), the pipelines sent at once.
    async fn smismember(&self, asks: &[(&RedisSet, Vec<&str>)]) -> Result<Vec<Vec<bool>>, ListStoreError> {
        let Some((conn, health)) = &self.redis else {
            return Err(ListStoreError::NoRedis(asks.first().map(|(set, _)| set.key.clone()).unwrap_or_default()));
        };
        let is_cluster = matches!(conn, RedisConn::Cluster(_));
        let pipelines = by_slot(asks.iter().map(|(set, _)| &*set.key), is_cluster).into_iter().map(|sets| async move {
            let mut pipe = redis::pipe();
            for &i in &sets {
                pipe.cmd("SMISMEMBER").arg(&asks[i].0.key).arg(&asks[i].1);
            }
            let mut conn = conn.clone();
            let replies: Vec<Vec<bool>> = health.call(self.timeout, pipe.query_async(&mut conn)).await?;
            let is_whole =
                replies.len() == sets.len() && sets.iter().zip(&replies).all(|(&i, r)| r.len() == asks[i].1.len());
            if !is_whole {
                let message = format!("answers to {} sets do not match the questions", sets.len());
                return Err(ListStoreError::Redis(RedisCallError::Redis(message)));
            }
            Ok(sets.into_iter().zip(replies))
        });
        let mut members = vec![Vec::new(); asks.len()];
        for (i, reply) in futures_util::future::try_join_all(pipelines).await?.into_iter().flatten() {
            members[i] = reply;
        }
        Ok(members)
    }
}

/// The keys at each index of `keys`, grouped so that one pipeline can carry each group: in a
/// cluster, by slot; on one server, all in one.
fn by_slot<'k>(keys: impl Iterator<Item = &'k str>, is_cluster: bool) -> Vec<Vec<usize>> {
    let mut groups: Vec<(Option<Slot>, Vec<usize>)> = Vec::new();
    for (i, key) in keys.enumerate() {
        let slot = is_cluster.then(|| Slot::for_key(key));
        match groups.iter_mut().find(|(s, _)| *s == slot) {
            Some((_, group)) => group.push(i),
            None => groups.push((slot, vec![i])),
        }
    }
    groups.into_iter().map(|(_, group)| group).collect()
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

    #[test]
    fn sets_are_pipelined_together_on_one_server_and_per_slot_in_a_cluster() {
        let keys = ["app:banned-users", "app:muted-users", "{app}:a", "{app}:b"];
        assert_eq!(by_slot(keys.into_iter(), false), vec![vec![0, 1, 2, 3]]);
        assert_eq!(by_slot(keys.into_iter(), true), vec![vec![0], vec![1], vec![2, 3]]);
        assert_eq!(by_slot([].into_iter(), true), Vec::<Vec<usize>>::new());
    }
}
