//! The live policy set: held in an `ArcSwap`, replaced whole by a reload, watched on disk.
//!
//! A request loads the current `Arc<PolicySet>` once and decides with it alone, so every
//! answer comes wholly from one set. A reload builds the new set off the request path and
//! swaps it in; a set that fails to load leaves the old one serving.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::compile::{LoadErrors, PolicySet};
use super::load::{load_dir, load_dir_after};

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
                status.last_error = None;
                if set.version() == self.current.load().version() {
                    metrics::counter!("callgate_policy_reloads_total", "result" => "unchanged").increment(1);
                    tracing::debug!(version = set.version(), "policy files unchanged");
                    return Ok(Reloaded::Unchanged);
                }
                tracing::info!(
                    version = set.version(),
                    rules = set.rule_count(),
                    files = set.files().len(),
                    took_ms = started.elapsed().as_millis() as u64,
                    "policy set loaded"
                );
                note_loaded(&set, now);
                self.current.store(Arc::new(set));
                metrics::counter!("callgate_policy_reloads_total", "result" => "ok").increment(1);
                Ok(Reloaded::Swapped)
            }
            Err(errors) => {
                status.last_error = Some(errors.to_string());
                metrics::counter!("callgate_policy_reloads_total", "result" => "error").increment(1);
                tracing::error!(
                    serving = self.current.load().version(),
                    "policy set refused, the previous set stays in force:\n{errors}"
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

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded data stays consistent even if a holder panicked: every write is whole.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How long the directory must be quiet before a reload, so that a burst of writes (an
/// editor's save, a ConfigMap swap) makes one reload.
const QUIET: Duration = Duration::from_millis(100);
/// The longest a reload waits for quiet once a change was seen.
const MAX_WAIT: Duration = Duration::from_millis(400);

/// Keeps the watch alive; dropping it stops watching.
pub struct Watch {
    _watcher: notify::RecommendedWatcher,
}

/// Watches the store's directory (recursively, so list files and ConfigMap `..data` swaps
/// count) and reloads after each burst of changes. Must be called inside a tokio runtime.
pub fn watch(store: Arc<PolicyStore>) -> notify::Result<Watch> {
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
        Ok(event) if is_change(&event.kind) => {
            let _ = tx.send(());
        }
        Ok(_) => {}
        Err(e) => tracing::warn!("policy watcher error: {e}"),
    })?;
    watcher.watch(store.dir(), RecursiveMode::Recursive)?;
    tokio::spawn(async move {
        while rx.recv().await.is_some() {
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
    Ok(Watch { _watcher: watcher })
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
