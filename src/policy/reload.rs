//! The live policy set: held in an `ArcSwap`, replaced whole by a reload, watched on disk.
//!
//! A request loads the current `Arc<PolicySet>` once and decides with it alone, so every
//! answer comes wholly from one set. A reload builds the new set off the request path and
//! swaps it in; a set that fails to load leaves the old one serving.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::error::LoadErrors;
use super::load::{load_dir, load_dir_after};
use super::set::PolicySet;

/// The result of the last reload attempt, for status pages and logs.
#[derive(Debug, Clone)]
pub struct ReloadStatus {
    /// When the last attempt finished.
    pub last_attempt: SystemTime,
    /// When a set was last loaded successfully (the first load counts).
    pub last_success: SystemTime,
    /// The errors of the last attempt, if it failed.
    pub last_error: Option<String>,
}

/// What a successful reload did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reloaded {
    /// A set with a new version is now serving.
    Swapped,
    /// The files were unchanged; the serving set stays.
    Unchanged,
}

/// The policy directory and the set loaded from it.
#[derive(Debug)]
pub struct PolicyStore {
    dir: PathBuf,
    current: ArcSwap<PolicySet>,
    status: Mutex<ReloadStatus>,
    // Serialises reloads so a slow, older load can never be swapped in over a newer one.
    reload_lock: Mutex<()>,
}

impl PolicyStore {
    /// Loads `dir`; fails if the first set does not load.
    pub fn open(dir: &Path) -> Result<PolicyStore, LoadErrors> {
        let set = load_dir(dir)?;
        let now = SystemTime::now();
        note_loaded(&set, now);
        log_warnings(&set);
        Ok(PolicyStore {
            dir: dir.to_path_buf(),
            current: ArcSwap::from_pointee(set),
            status: Mutex::new(ReloadStatus { last_attempt: now, last_success: now, last_error: None }),
            reload_lock: Mutex::new(()),
        })
    }

    /// The policy directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The serving set. Hold the `Arc` for the whole of one decision.
    pub fn current(&self) -> Arc<PolicySet> {
        self.current.load_full()
    }

    /// The last reload's result.
    pub fn status(&self) -> ReloadStatus {
        lock(&self.status).clone()
    }

    /// Loads the directory again and swaps the new set in if its version differs. Blocking:
    /// call it from a blocking thread. On failure the serving set stays and the errors are
    /// logged, counted and kept for status.
    pub fn reload(&self) -> Result<Reloaded, LoadErrors> {
        let _one_at_a_time = lock(&self.reload_lock);
        let started = Instant::now();
        let result = load_dir_after(&self.dir, Some(&self.current.load()));
        let now = SystemTime::now();
        let mut status = lock(&self.status);
        status.last_attempt = now;
        match result {
            Ok(set) => {
                status.last_success = now;
                let was_failing = status.last_error.take().is_some();
                if set.version() == self.current.load().version() {
                    metrics::counter!("callgate_policy_reloads_total", "result" => "unchanged").increment(1);
                    tracing::debug!(version = set.version(), "policy files unchanged");
                    if was_failing {
                        // The files are back to what is serving: that too ends the failure.
                        log_recovered(&set);
                    }
                    return Ok(Reloaded::Unchanged);
                }
                tracing::info!(
                    version = set.version(),
                    rules = set.rule_count(),
                    files = set.files().len(),
                    took_ms = started.elapsed().as_millis() as u64,
                    "policy set loaded"
                );
                log_warnings(&set);
                if was_failing {
                    log_recovered(&set);
                }
                note_loaded(&set, now);
                self.current.store(Arc::new(set));
                metrics::counter!("callgate_policy_reloads_total", "result" => "ok").increment(1);
                Ok(Reloaded::Swapped)
            }
            Err(errors) => {
                status.last_error = Some(errors.to_string());
                metrics::counter!("callgate_policy_reloads_total", "result" => "error").increment(1);
                // One line, whatever the number of errors: a log line is one event.
                let each: Vec<String> = errors.0.iter().map(ToString::to_string).collect();
                tracing::error!(
                    serving = self.current.load().version(),
                    "policy set refused, the previous set stays in force ({} error(s)): {}",
                    each.len(),
                    each.join("; ")
                );
                Err(errors)
            }
        }
    }
}

fn note_loaded(set: &PolicySet, at: SystemTime) {
    let secs = at.duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
    metrics::gauge!("callgate_policy_last_success_timestamp_seconds").set(secs);
    metrics::gauge!("callgate_policy_rules").set(set.rule_count() as f64);
}

/// Each warning of a set that is about to serve, one line each, so that a typo shows in the
/// log of the change that made it.
fn log_warnings(set: &PolicySet) {
    for warning in set.warnings() {
        tracing::warn!("{warning}");
    }
}

/// The all-clear after one or more failed reloads, for whoever watched the failures.
fn log_recovered(set: &PolicySet) {
    tracing::info!("policy set recovered: version {} ({} rules)", set.version(), set.rule_count());
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded data stays consistent even if a holder panicked: every write is whole.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How long the directory must be quiet before a reload, so that a burst of writes (an
/// editor's save, a ConfigMap swap) makes one reload.
const QUIET: Duration = Duration::from_millis(100);
/// The longest a reload waits for quiet once a change was seen.
const MAX_WAIT: Duration = Duration::from_millis(400);

/// How often the watcher checks that the directory it watches is still the one at the
/// policy path.
const RECHECK: Duration = Duration::from_secs(1);

/// Keeps the watch alive; dropping it stops watching.
pub struct Watch {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        // The task owns the notify watcher: ending it ends the watch.
        self.task.abort();
    }
}

/// Watches the store's directory (recursively, so list files and ConfigMap `..data` swaps
/// count) and reloads after each burst of changes. Must be called inside a tokio runtime.
///
/// A notify watch follows the directory it was set on, not its path: once the directory is
/// removed (`rm -rf policies && cp -r new policies`), moved away, or the path is a symlink
/// pointed elsewhere, the watch sees nothing of what is at the path now. So, once a
/// [`RECHECK`], the watcher compares what is at the path with what it watches and, when they
/// differ, watches the path again and reloads. A poll rather than a watch on the parent
/// directory: the parent may be `/`, unreadable, or shared with the busy data directory, and a
/// symlink's target can change without any event in it. "Differ" is a new device and inode,
/// or a removal or move of the watched directory itself reported by notify, since a directory
/// removed and made again at once may get the same inode back.
pub fn watch(store: Arc<PolicyStore>) -> notify::Result<Watch> {
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let dir = store.dir().to_path_buf();
    let is_lost = Arc::new(AtomicBool::new(false));
    let mut watcher = notify::recommended_watcher({
        let dir = dir.clone();
        let is_lost = is_lost.clone();
        move |res: notify::Result<notify::Event>| match res {
            Ok(event) if is_change(&event.kind) => {
                if is_self_gone(&event, &dir) {
                    is_lost.store(true, Ordering::Relaxed);
                }
                let _ = tx.send(());
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("policy watcher error: {e}"),
        }
    })?;
    let mut root = Root { watched: identity(&dir), dir, is_lost, is_failing: false };
    watcher.watch(&root.dir, RecursiveMode::Recursive)?;
    let task = tokio::spawn(async move {
        let mut recheck = tokio::time::interval(RECHECK);
        recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                seen = rx.recv() => if seen.is_none() { return },
                _ = recheck.tick() => if !root.rewatch_if_replaced(&mut watcher) { continue },
            }
            let first = Instant::now();
            while first.elapsed() < MAX_WAIT {
                match tokio::time::timeout(QUIET, rx.recv()).await {
                    Ok(Some(())) => continue,
                    Ok(None) => return,
                    Err(_quiet) => break,
                }
            }
            let store = store.clone();
            // Errors are logged and kept in status by `reload` itself.
            let _ = tokio::task::spawn_blocking(move || store.reload()).await;
        }
    });
    Ok(Watch { task })
}

/// The policy directory as the watcher knows it.
struct Root {
    dir: PathBuf,
    /// The device and inode watched; `None` while nothing is (the directory is missing, or
    /// watching it failed).
    watched: Option<(u64, u64)>,
    /// Set by the watcher when notify reports the watched directory itself removed or moved.
    is_lost: Arc<AtomicBool>,
    /// Whether the last attempt to watch failed, so a lasting failure is logged once.
    is_failing: bool,
}

impl Root {
    /// Watches the path again if what is there is not what is watched. Returns whether it
    /// did, so the new directory's files should be loaded.
    fn rewatch_if_replaced(&mut self, watcher: &mut notify::RecommendedWatcher) -> bool {
        let now = identity(&self.dir);
        let is_lost = self.is_lost.swap(false, Ordering::Relaxed);
        if now.is_none() {
            // Missing: the serving set stays, and the failed reload its removal caused shows
            // in status.
            self.watched = None;
            return false;
        }
        if now == self.watched && !is_lost {
            return false;
        }
        // The old watch may be gone already: notify drops it when the directory is removed.
        let _ = watcher.unwatch(&self.dir);
        match watcher.watch(&self.dir, RecursiveMode::Recursive) {
            Ok(()) => {
                tracing::info!(dir = %self.dir.display(), "policy directory replaced; watching the new one");
                self.watched = now;
                self.is_failing = false;
                true
            }
            Err(e) => {
                if !self.is_failing {
                    tracing::warn!(
                        dir = %self.dir.display(),
                        "cannot watch the replaced policy directory, trying again every {RECHECK:?}: {e}"
                    );
                }
                self.is_failing = true;
                self.watched = None;
                false
            }
        }
    }
}

/// The device and inode of the directory at `dir` (through symlinks), if there is one.
fn identity(dir: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(dir).ok().filter(|m| m.is_dir()).map(|m| (m.dev(), m.ino()))
}

/// Whether `event` says the watched directory itself was removed or moved away, so the watch
/// on it is dead or follows it elsewhere.
fn is_self_gone(event: &notify::Event, dir: &Path) -> bool {
    use notify::event::ModifyKind;
    matches!(event.kind, EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(_)))
        && event.paths.iter().any(|p| p == dir)
}

/// Whether an event may have changed what a load would read. Opens and reads are not
/// changes: counting them would make every reload (which reads the files) trigger another.
fn is_change(kind: &EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode, MetadataKind, ModifyKind};
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        EventKind::Modify(ModifyKind::Metadata(MetadataKind::AccessTime)) => false,
        _ => true,
    }
}
