//! The in-memory cap store: for each key, the times of the allowed callbacks still in its
//! window. Exact, and bounded: at most `max` times per key, at most `max_keys` keys, and
//! keys whose window has emptied are reclaimed by [`MemoryCaps::sweep`].
//!
//! Memory: a key holding one time takes a 41-byte table slot and no other allocation; with
//! the table's spare capacity that is 50–90 bytes per key (86 measured with 1,000,000 keys
//! by `cargo run --release --example cap_memory`), plus 8 bytes per further time.
//!
//! Keys are spread over shards, each behind a std `Mutex`: a check holds its shards for a
//! few hash lookups and never across an `.await`, so a blocking lock is the cheap, right tool.

use std::collections::hash_map::{Entry, RandomState};
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use super::{CapCheck, CapError, CapOutcome, resolve, under};

const SHARDS: usize = 64;

/// A key as 128 bits of two independently, randomly keyed SipHashes of its text. Keeping
/// the hash instead of the text makes a tracked key about 45 bytes instead of about 200;
/// a collision needs 2^64 work against keys an attacker cannot learn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct KeyHash([u64; 2]);

impl Hash for KeyHash {
    /// Its second half, already a keyed hash: hashing it again in the shard's table would
    /// cost three more SipHashes a check and add nothing (the first half picks the shard).
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.0[1]);
    }
}

/// The shard table's hasher: passes a [`KeyHash`]'s half through.
#[derive(Debug, Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }

    /// Only [`KeyHash`] is hashed here, through `write_u64`; any other input is folded in
    /// so that the hasher is still a correct one.
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// The allowed times (ms since the store's start) of one key, oldest first. Most keys hold
/// one time, kept inline; more spill into a queue.
#[derive(Debug)]
#[expect(clippy::box_collection, reason = "a boxed queue keeps the common one-time case at 16 bytes, not 32")]
enum Times {
    One(u64),
    Many(Box<VecDeque<u64>>),
}

#[derive(Debug)]
struct Window {
    times: Times,
    /// The window in ms, for sweeping; caps longer than `u32::MAX` ms (49 days) are
    /// refused when policies load.
    per_ms: u32,
}

impl Window {
    /// Drops times that left the window `(now - per, now]`; returns how many remain.
    fn prune(&mut self, now: u64, per_ms: u64) -> usize {
        match &mut self.times {
            Times::One(t) if *t + per_ms <= now => {
                self.times = Times::Many(Box::default());
                0
            }
            Times::One(_) => 1,
            Times::Many(q) => {
                while q.front().is_some_and(|&t| t + per_ms <= now) {
                    q.pop_front();
                }
                q.len()
            }
        }
    }

    fn push(&mut self, now: u64) {
        match &mut self.times {
            Times::Many(q) if q.is_empty() => self.times = Times::One(now),
            Times::Many(q) => q.push_back(now),
            Times::One(t) => self.times = Times::Many(Box::new(VecDeque::from([*t, now]))),
        }
    }
}

type Shard = HashMap<KeyHash, Window, BuildHasherDefault<KeyHasher>>;

/// Exact rolling-window counts in this process.
#[derive(Debug)]
pub struct MemoryCaps {
    shards: Box<[Mutex<Shard>]>,
    keys: AtomicUsize,
    max_keys: usize,
    started: Instant,
    hashers: [RandomState; 2],
}

fn lock(m: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    // Every write to a shard is whole, so a poisoned one is still consistent.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl MemoryCaps {
    /// A store tracking at most `max_keys` keys.
    pub fn new(max_keys: usize) -> MemoryCaps {
        MemoryCaps {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::default())).collect(),
            keys: AtomicUsize::new(0),
            max_keys,
            started: Instant::now(),
            hashers: [RandomState::new(), RandomState::new()],
        }
    }

    fn hash(&self, key: &str) -> KeyHash {
        KeyHash([self.hashers[0].hash_one(key), self.hashers[1].hash_one(key)])
    }

    fn shard_of(hash: &KeyHash) -> usize {
        (hash.0[0] as usize) % SHARDS
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// How many keys are tracked.
    pub fn key_count(&self) -> usize {
        self.keys.load(Ordering::Relaxed)
    }

    /// See [`super::CapStore::check`].
    pub fn check(&self, checks: &[CapCheck], allow_if_none_decides: bool) -> Result<CapOutcome, CapError> {
        self.check_at(checks, allow_if_none_decides, self.now_ms())
    }

    /// [`MemoryCaps::check`] at a given time (ms since the store started), for tests of the
    /// window edges.
    pub fn check_at(&self, checks: &[CapCheck], allow_if_none_decides: bool, now: u64) -> Result<CapOutcome, CapError> {
        // Lock every shard involved, in index order so concurrent checks cannot deadlock,
        // and hold them all: the check and the counting are one atomic step. One or two
        // checks (nearly every callback's) take no allocation.
        match checks {
            [a] => {
                let hashes = [self.hash(&a.key)];
                let mut guards = [lock(&self.shards[Self::shard_of(&hashes[0])])];
                self.check_locked(checks, &hashes, &mut guards, |_| 0, allow_if_none_decides, now)
            }
            [a, b] => {
                let hashes = [self.hash(&a.key), self.hash(&b.key)];
                let shard_ids = [Self::shard_of(&hashes[0]), Self::shard_of(&hashes[1])];
                if shard_ids[0] == shard_ids[1] {
                    let mut guards = [lock(&self.shards[shard_ids[0]])];
                    self.check_locked(checks, &hashes, &mut guards, |_| 0, allow_if_none_decides, now)
                } else {
                    let first = usize::from(shard_ids[1] < shard_ids[0]);
                    let mut guards = [lock(&self.shards[shard_ids[first]]), lock(&self.shards[shard_ids[1 - first]])];
                    let guard_of = |i: usize| usize::from(i != first);
                    self.check_locked(checks, &hashes, &mut guards, guard_of, allow_if_none_decides, now)
                }
            }
            _ => {
                let hashes: Vec<KeyHash> = checks.iter().map(|c| self.hash(&c.key)).collect();
                let mut shard_ids: Vec<usize> = hashes.iter().map(Self::shard_of).collect();
                shard_ids.sort_unstable();
                shard_ids.dedup();
                let mut guards: Vec<MutexGuard<'_, Shard>> = shard_ids.iter().map(|&i| lock(&self.shards[i])).collect();
                let guard_of = |i: usize| shard_ids.binary_search(&Self::shard_of(&hashes[i])).unwrap_or(0);
                self.check_locked(checks, &hashes, &mut guards, guard_of, allow_if_none_decides, now)
            }
        }
    }

    /// The check and the counting, with every shard `checks` need locked: `hashes[i]` is
    /// `checks[i]`'s key, in the shard `guards[guard_of(i)]`.
    fn check_locked(
        &self,
        checks: &[CapCheck],
        hashes: &[KeyHash],
        guards: &mut [MutexGuard<'_, Shard>],
        guard_of: impl Fn(usize) -> usize,
        allow_if_none_decides: bool,
        now: u64,
    ) -> Result<CapOutcome, CapError> {
        let counts = |i: usize| match guards[guard_of(i)].get_mut(&hashes[i]) {
            Some(w) => w.prune(now, checks[i].per.as_millis() as u64) as u64,
            None => 0,
        };
        let (outcome, is_counted) = resolve(checks, counts, allow_if_none_decides);
        if !is_counted {
            return Ok(outcome);
        }
        // Refuse before changing anything, so a full store never counts half a callback.
        let new_keys = under(&outcome).filter(|&i| !guards[guard_of(i)].contains_key(&hashes[i])).count();
        if new_keys > 0 && self.keys.load(Ordering::Relaxed) + new_keys > self.max_keys {
            return Err(CapError::Full(self.max_keys));
        }
        for i in under(&outcome) {
            let per_ms = u32::try_from(checks[i].per.as_millis()).unwrap_or(u32::MAX);
            match guards[guard_of(i)].entry(hashes[i]) {
                Entry::Occupied(mut e) => {
                    let w = e.get_mut();
                    w.per_ms = per_ms;
                    w.push(now);
                }
                Entry::Vacant(e) => {
                    self.keys.fetch_add(1, Ordering::Relaxed);
                    e.insert(Window { times: Times::One(now), per_ms });
                }
            }
        }
        Ok(outcome)
    }

    /// The counts of `checks` in their windows, counting nothing.
    pub fn peek(&self, checks: &[CapCheck]) -> Vec<u64> {
        let now = self.now_ms();
        checks
            .iter()
            .map(|c| {
                let hash = self.hash(&c.key);
                let mut map = lock(&self.shards[Self::shard_of(&hash)]);
                map.get_mut(&hash).map_or(0, |w| w.prune(now, c.per.as_millis() as u64) as u64)
            })
            .collect()
    }

    /// Removes every key whose window has emptied; returns how many. Run it periodically.
    pub fn sweep(&self) -> usize {
        self.sweep_at(self.now_ms())
    }

    /// [`MemoryCaps::sweep`] at a given time.
    pub fn sweep_at(&self, now: u64) -> usize {
        let mut removed = 0;
        for shard in self.shards.iter() {
            let mut map = lock(shard);
            let before = map.len();
            map.retain(|_, w| {
                let per_ms = u64::from(w.per_ms);
                w.prune(now, per_ms) > 0
            });
            removed += before - map.len();
        }
        self.keys.fetch_sub(removed, Ordering::Relaxed);
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn cap(key: &str, max: u64, per_ms: u64) -> CapCheck {
        CapCheck {
            rule: "r".into(),
            key: key.into(),
            max,
            per: Duration::from_millis(per_ms),
            is_dry_run: false,
            is_allow_when_exceeded: false,
        }
    }

    fn allowed(store: &MemoryCaps, c: &CapCheck, at: u64) -> bool {
        store.check_at(std::slice::from_ref(c), true, at).unwrap().decided_by.is_none()
    }

    #[test]
    fn window_edges_are_exact() {
        let store = MemoryCaps::new(100);
        let c = cap("k", 2, 1000);
        assert!(allowed(&store, &c, 0));
        assert!(allowed(&store, &c, 500));
        assert!(!allowed(&store, &c, 999), "third within (−1 s, now] is refused");
        assert!(allowed(&store, &c, 1000), "the callback at 0 left the window exactly 1 s later");
        assert!(!allowed(&store, &c, 1499));
        assert!(allowed(&store, &c, 1500));
        assert!(!allowed(&store, &c, 1999));
    }

    #[test]
    fn refused_callbacks_do_not_count() {
        let store = MemoryCaps::new(100);
        let c = cap("k", 1, 1000);
        assert!(allowed(&store, &c, 0));
        for t in 1..1000 {
            assert!(!allowed(&store, &c, t));
        }
        assert!(allowed(&store, &c, 1000), "refusals in between did not extend the window");
        // A callback that a later rule refuses is not counted either.
        let other = cap("other", 1, 1000);
        store.check_at(std::slice::from_ref(&other), false, 0).unwrap();
        assert!(allowed(&store, &other, 1));
    }

    #[test]
    fn the_key_bound_holds_and_sweeping_frees_room() {
        let store = MemoryCaps::new(3);
        for k in ["a", "b", "c"] {
            assert!(allowed(&store, &cap(k, 5, 1000), 0));
        }
        assert!(matches!(store.check_at(&[cap("d", 5, 1000)], true, 10), Err(CapError::Full(3))));
        assert!(allowed(&store, &cap("a", 5, 1000), 10), "known keys still count when full");
        assert_eq!(store.sweep_at(999), 0);
        assert_eq!(store.sweep_at(1010), 3);
        assert_eq!(store.key_count(), 0);
        assert!(allowed(&store, &cap("d", 5, 1000), 1010));
    }

    #[test]
    fn several_caps_are_checked_and_counted_together() {
        // Pairs of keys land in one shard or in two (held in either order); three or more
        // take the general path. Each is checked the same.
        let store = MemoryCaps::new(10_000);
        for n in [1, 2, 3, 5] {
            for pair in 0..200 {
                let checks: Vec<CapCheck> =
                    (0..n).map(|i| cap(&format!("{n}-{pair}-{i}"), if i == n - 1 { 1 } else { 2 }, 1000)).collect();
                let first = store.check_at(&checks, true, 0).unwrap();
                assert_eq!((first.decided_by, first.counts), (None, vec![Some((0, false)); n]));
                let second = store.check_at(&checks, true, 1).unwrap();
                assert_eq!(second.decided_by, Some(n - 1), "the last cap, max 1, is exceeded");
                let mut counts = vec![Some((1, false)); n];
                counts[n - 1] = Some((1, true));
                assert_eq!(second.counts, counts);
                assert_eq!(store.peek(&checks), vec![1; n], "a refused callback counts nowhere");
                let mut wider = checks.clone();
                wider[n - 1].max = 2;
                assert_eq!(store.check_at(&wider, true, 2).unwrap().decided_by, None);
                assert_eq!(store.peek(&checks), vec![2; n]);
            }
        }
    }

    #[test]
    fn concurrent_checks_never_exceed_the_cap() {
        let store = std::sync::Arc::new(MemoryCaps::new(100));
        let allowed_total = std::sync::Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (store, total) = (store.clone(), allowed_total.clone());
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        if store.check(&[cap("hot", 50, 60_000)], true).unwrap().decided_by.is_none() {
                            total.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(allowed_total.load(Ordering::Relaxed), 50);
    }
}
