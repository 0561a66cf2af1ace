//! The [`Recorder`]: one writer thread appends record lines to size-rotated files.
//!
//! Group commit: the thread takes every line waiting in its queue, writes them with one
//! `write`, and — when any of them waits for durability — makes them durable with one
//! `fdatasync`. So durable records cost one sync per batch, not per record, and the batch
//! grows by itself with load. A Tencent acknowledgement waits for its sync; an OpenIM
//! decision does not wait at all.
//!
//! Files are `records-<unix ms at creation>.jsonl`; the newest is appended to. On start, a
//! torn last line (a crash mid-write) is cut off and kept beside the file as `….torn`.
//! With a [`Retention`], the thread also deletes the oldest files it no longer keeps: at
//! start, after each rotation, and every [`PRUNE_EVERY`].
//!
//! One data directory has one writer: the recorder holds an exclusive lock on
//! [`LOCK_FILE`] (with the holder's process id in it) for as long as it lives, so a second
//! instance pointed at the same directory stops at start instead of interleaving its lines.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, oneshot};

use super::Line;
use super::stream::StreamSink;

/// Record file names start with this.
pub const SEGMENT_PREFIX: &str = "records-";
/// Record file names end with this.
pub const SEGMENT_SUFFIX: &str = ".jsonl";

/// The lock file in the data directory; holds the process id of the callgate writing there.
pub const LOCK_FILE: &str = "callgate.lock";

/// How many records may wait for the writer. Past this an OpenIM record is dropped and
/// counted (its callback is still answered); a Tencent record waits for room.
const QUEUE: usize = 65_536;
/// The most records written by one `write`.
const MAX_BATCH: usize = 4_096;
/// Records that nobody waits for are made durable at least this often.
const SYNC_EVERY: Duration = Duration::from_secs(1);
/// How long an OpenIM record may wait for room in a full queue.
const QUEUE_WAIT: Duration = Duration::from_millis(500);
/// After a batch that nobody waits for, the writer lets the next batch gather this long, so
/// that under load it wakes once per batch rather than once per record.
const LINGER: Duration = Duration::from_millis(1);

/// How often the writer looks for files its [`Retention`] no longer keeps (also after
/// each rotation).
const PRUNE_EVERY: Duration = Duration::from_secs(10);

/// Which closed record files are kept; the file being written is always kept. The default
/// keeps every file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    /// A file is deleted once its newest record is older than this.
    pub max_age: Option<Duration>,
    /// The oldest files are deleted while all of them together take more bytes than this.
    pub max_total_bytes: Option<u64>,
}

impl Retention {
    fn keeps_all(self) -> bool {
        self == Retention::default()
    }
}

/// Why a record could not be written.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RecordError {
    /// The file system refused.
    #[error("cannot write records in `{}`: {message}", dir.display())]
    Io { dir: PathBuf, message: String },
    /// Another process holds the data directory.
    #[error(
        "the data directory `{}` is in use by another callgate ({holder}); give each instance its own --data-dir",
        dir.display()
    )]
    InUse { dir: PathBuf, holder: String },
    /// The recorder has stopped.
    #[error("the recorder has stopped")]
    Stopped,
    /// The queue was full and the record was not waited for.
    #[error("the record queue is full")]
    QueueFull,
}

/// Told when a durable record is on disk, or why it is not.
type Done = oneshot::Sender<Result<(), RecordError>>;

enum Job {
    Line { line: Line, done: Option<Done> },
    Stop(oneshot::Sender<()>),
}

/// Appends record lines; cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Recorder {
    tx: mpsc::Sender<Job>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// Held locked while the recorder lives; the lock goes with the process.
    _lock: File,
}

impl Recorder {
    /// Opens (creating it if needed) the record directory, repairs a torn last line, deletes
    /// the files `retention` does not keep, and starts the writer thread. `max_file_bytes`
    /// is the size at which a file is rotated. Records written are also copied to `stream`
    /// when given.
    pub fn open(
        dir: &Path,
        max_file_bytes: u64,
        retention: Retention,
        stream: Option<StreamSink>,
    ) -> Result<Recorder, RecordError> {
        std::fs::create_dir_all(dir).map_err(|e| io_error(dir, &e))?;
        let lock = lock_dir(dir)?;
        let segment = Segment::open_newest(dir, max_file_bytes, retention)?;
        segment.prune();
        let (tx, rx) = mpsc::channel(QUEUE);
        let thread = std::thread::Builder::new()
            .name("callgate-records".into())
            .spawn(move || run(segment, rx, stream))
            .map_err(|e| io_error(dir, &e))?;
        Ok(Recorder { tx, thread: Mutex::new(Some(thread)), _lock: lock })
    }

    /// Queues a line without waiting for the disk. When the queue is full (the disk is
    /// slower than the callbacks) it waits up to [`QUEUE_WAIT`] for room: slowing answers
    /// a little beats losing records. A line that still cannot be queued is counted and
    /// logged.
    pub async fn record(&self, line: Line) {
        let job = match self.tx.try_send(Job::Line { line, done: None }) {
            Ok(()) => return,
            Err(mpsc::error::TrySendError::Closed(_)) => return count_lost(1, &RecordError::Stopped),
            Err(mpsc::error::TrySendError::Full(job)) => job,
        };
        match tokio::time::timeout(QUEUE_WAIT, self.tx.send(job)).await {
            Ok(Ok(())) => {}
            Ok(Err(_closed)) => count_lost(1, &RecordError::Stopped),
            Err(_full) => count_lost(1, &RecordError::QueueFull),
        }
    }

    /// Queues a line and waits until it is durable on disk.
    pub async fn record_durable(&self, line: Line) -> Result<(), RecordError> {
        let (done, wait) = oneshot::channel();
        self.tx.send(Job::Line { line, done: Some(done) }).await.map_err(|_| RecordError::Stopped)?;
        wait.await.unwrap_or(Err(RecordError::Stopped))
    }

    /// Writes and syncs everything queued so far, then stops the writer. Later records
    /// fail with [`RecordError::Stopped`] (and are counted).
    pub async fn stop(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Job::Stop(done)).await.is_ok() {
            let _ = wait.await;
        }
        let thread = self.thread.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        if let Some(thread) = thread {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

/// Takes the data directory's lock, or says who holds it.
fn lock_dir(dir: &Path) -> Result<File, RecordError> {
    let path = dir.join(LOCK_FILE);
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| io_error(dir, &e))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let pid = std::fs::read_to_string(&path).unwrap_or_default();
            let holder = match pid.trim() {
                "" => "process unknown".to_string(),
                pid => format!("pid {pid}"),
            };
            return Err(RecordError::InUse { dir: dir.to_path_buf(), holder });
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(io_error(dir, &e)),
    }
    let wrote = file.set_len(0).and_then(|()| file.write_all(format!("{}\n", std::process::id()).as_bytes()));
    wrote.map_err(|e| io_error(dir, &e))?;
    Ok(file)
}

fn io_error(dir: &Path, e: &std::io::Error) -> RecordError {
    RecordError::Io { dir: dir.to_path_buf(), message: e.to_string() }
}

/// Counts lost records, and logs them at most once a second so that an overloaded server
/// does not also flood its log.
fn count_lost(n: usize, err: &RecordError) {
    static LAST_LOGGED: AtomicU64 = AtomicU64::new(0);
    metrics::counter!("callgate_records_failed_total").increment(n as u64);
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    if LAST_LOGGED.swap(now, Ordering::Relaxed) != now {
        tracing::error!(records = n, "records lost: {err} (all losses are counted in callgate_records_failed_total)");
    }
}

/// The writer thread: batches, writes, syncs, answers, until stopped.
fn run(segment: Segment, mut rx: mpsc::Receiver<Job>, stream: Option<StreamSink>) {
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut writer = Writer::new(segment, stream);
    let mut batch: Vec<(Line, Option<Done>)> = Vec::new();
    let mut was_waited_for = false;
    loop {
        writer.prune_if_due();
        // Wait for work, but wake up in time to sync records nobody waits for, and to prune.
        let first = match recv_within(&mut rx, &waker, writer.next_chore_in()) {
            Ok(job) => job,
            Err(Idle) => {
                writer.sync_if_due();
                continue;
            }
        };
        let Some(first) = first else {
            let _ = writer.segment.sync();
            return;
        };
        let stop = take_batch(first, &mut rx, &mut batch);
        if !batch.is_empty() {
            was_waited_for = batch.iter().any(|(_, d)| d.is_some());
            writer.write_batch(&mut batch, stop.is_some() || was_waited_for);
        }
        if let Some(done) = stop {
            let _ = writer.segment.sync();
            let _ = done.send(());
            return;
        }
        if !was_waited_for {
            std::thread::sleep(LINGER);
        }
    }
}

/// No job came in the time given.
struct Idle;

/// Wakes the writer thread when its queue has a job (or has lost its senders).
struct Unpark(Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

/// The next job, waiting for it at most `left` (`None`: as long as it takes); `Ok(None)`
/// when every sender is gone. Run on the writer thread, whose `waker` unparks it.
///
/// The queue is polled and the thread parked in between, with a deadline: a wait with
/// no runtime. A current-thread runtime's `block_on` with a `timeout` (its timer wheel, its
/// driver's park) cost each wake-up about 3,000 instructions, more than writing the batch
/// it woke for (callgrind, issue 19). An unpark that comes between the poll and the park is
/// not lost: the park returns at once; a park that returns for no reason polls again.
fn recv_within(rx: &mut mpsc::Receiver<Job>, waker: &Waker, left: Option<Duration>) -> Result<Option<Job>, Idle> {
    // A deadline too far to represent is no deadline.
    let deadline = left.and_then(|left| Instant::now().checked_add(left));
    let mut cx = Context::from_waker(waker);
    loop {
        if let Poll::Ready(job) = rx.poll_recv(&mut cx) {
            return Ok(job);
        }
        match deadline {
            None => std::thread::park(),
            Some(deadline) => {
                let now = Instant::now();
                if now >= deadline {
                    return Err(Idle);
                }
                std::thread::park_timeout(deadline - now);
            }
        }
    }
}

/// Moves `first` and the jobs waiting behind it (up to [`MAX_BATCH`] lines) into `batch`;
/// returns a stop request met on the way.
fn take_batch(
    first: Job,
    rx: &mut mpsc::Receiver<Job>,
    batch: &mut Vec<(Line, Option<Done>)>,
) -> Option<oneshot::Sender<()>> {
    let mut next = Some(first);
    while let Some(job) = next {
        match job {
            Job::Line { line, done } => batch.push((line, done)),
            Job::Stop(done) => return Some(done),
        }
        next = if batch.len() < MAX_BATCH { rx.try_recv().ok() } else { None };
    }
    None
}

/// The writer thread's state between batches.
struct Writer {
    segment: Segment,
    stream: Option<StreamSink>,
    /// Scratch space a batch is gathered in.
    buf: Vec<u8>,
    last_sync: Instant,
    /// Written but not yet synced.
    is_dirty: bool,
    was_failing: bool,
    last_prune: Instant,
}

impl Writer {
    fn new(segment: Segment, stream: Option<StreamSink>) -> Writer {
        let now = Instant::now();
        Writer {
            segment,
            stream,
            buf: Vec::new(),
            last_sync: now,
            is_dirty: false,
            was_failing: false,
            last_prune: now,
        }
    }

    fn prune_if_due(&mut self) {
        if !self.segment.retention.keeps_all() && self.last_prune.elapsed() >= PRUNE_EVERY {
            self.segment.prune();
            self.last_prune = Instant::now();
        }
    }

    /// How long until a sync or a prune is due; `None` when neither ever is.
    fn next_chore_in(&self) -> Option<Duration> {
        let sync_in = self.is_dirty.then(|| SYNC_EVERY.saturating_sub(self.last_sync.elapsed()));
        let keeps_all = self.segment.retention.keeps_all();
        let prune_in = (!keeps_all).then(|| PRUNE_EVERY.saturating_sub(self.last_prune.elapsed()));
        sync_in.into_iter().chain(prune_in).min()
    }

    fn sync_if_due(&mut self) {
        if self.is_dirty && self.last_sync.elapsed() >= SYNC_EVERY {
            if self.segment.sync().is_ok() {
                self.is_dirty = false;
            }
            self.last_sync = Instant::now();
        }
    }

    /// Writes (and, when `must_sync` or a sync is due, syncs) a batch, copies it to the
    /// stream, counts and logs the result, and answers those waiting; empties `batch`.
    fn write_batch(&mut self, batch: &mut Vec<(Line, Option<Done>)>, must_sync: bool) {
        let needs_sync = must_sync || self.last_sync.elapsed() >= SYNC_EVERY;
        let mut result = self.segment.append(batch.iter().map(|(line, _)| line), &mut self.buf);
        if result.is_ok() {
            self.is_dirty = true;
            if needs_sync {
                result = self.segment.sync();
                self.last_sync = Instant::now();
                self.is_dirty = result.is_err();
            }
        }
        metrics::counter!("callgate_records_written_total").increment(if result.is_ok() {
            batch.len() as u64
        } else {
            0
        });
        if let (Ok(()), Some(stream)) = (&result, &self.stream) {
            for (line, _) in batch.iter() {
                stream.send(line);
            }
        }
        match &result {
            Ok(()) if self.was_failing => {
                tracing::info!("records are being written again");
                self.was_failing = false;
            }
            Ok(()) => {}
            Err(err) => {
                self.was_failing = true;
                let unwaited = batch.iter().filter(|(_, d)| d.is_none()).count();
                metrics::counter!("callgate_records_failed_total").increment(batch.len() as u64);
                tracing::error!(records = batch.len(), not_waited_for = unwaited, "records not written: {err}");
            }
        }
        for (_, done) in batch.drain(..) {
            if let Some(done) = done {
                let _ = done.send(result.clone());
            }
        }
    }
}

/// The file being appended to.
struct Segment {
    dir: PathBuf,
    path: PathBuf,
    file: File,
    /// Bytes known written whole; a failed write is cut back to this.
    len: u64,
    max_bytes: u64,
    retention: Retention,
}

impl Segment {
    /// Opens the newest record file for appending, after cutting off a torn last line; or
    /// creates the first one.
    fn open_newest(dir: &Path, max_bytes: u64, retention: Retention) -> Result<Segment, RecordError> {
        std::fs::create_dir_all(dir).map_err(|e| io_error(dir, &e))?;
        let newest = segment_files(dir).map_err(|e| io_error(dir, &e))?.pop();
        let Some(path) = newest else { return Segment::create(dir, max_bytes, retention, 0) };
        repair_torn_tail(&path).map_err(|e| io_error(dir, &e))?;
        let mut file = OpenOptions::new().append(true).open(&path).map_err(|e| io_error(dir, &e))?;
        let len = file.seek(SeekFrom::End(0)).map_err(|e| io_error(dir, &e))?;
        Ok(Segment { dir: dir.to_path_buf(), path, file, len, max_bytes, retention })
    }

    /// Creates a new file named after the current time (later than `after_ms`).
    fn create(dir: &Path, max_bytes: u64, retention: Retention, after_ms: u64) -> Result<Segment, RecordError> {
        let ms = unix_ms_now().max(after_ms + 1);
        let path = dir.join(format!("{SEGMENT_PREFIX}{ms:013}{SEGMENT_SUFFIX}"));
        let file = OpenOptions::new().create(true).append(true).open(&path).map_err(|e| io_error(dir, &e))?;
        // Make the new name itself durable, or a crash could lose the whole file.
        File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io_error(dir, &e))?;
        Ok(Segment { dir: dir.to_path_buf(), path, file, len: 0, max_bytes, retention })
    }

    fn created_ms(&self) -> u64 {
        segment_ms(&self.path).unwrap_or(0)
    }

    /// Appends whole lines, starting a new file before a line that would take this one
    /// past its size (a single line larger than that gets a file of its own). `buf` is
    /// scratch space, so a batch costs one `write` per file it touches; a line of more than
    /// `COPY_AT_MOST` bytes (a large message's record) is written from where it is, so the
    /// scratch space never holds, nor keeps the memory of, another copy of its body.
    fn append<'a>(&mut self, lines: impl Iterator<Item = &'a Line>, buf: &mut Vec<u8>) -> Result<(), RecordError> {
        /// The longest line copied into the scratch buffer.
        const COPY_AT_MOST: usize = 64 << 10;
        buf.clear();
        if buf.capacity() > 4 * MAX_BATCH * 1024 {
            // Shrink back after a batch of unusually many or long lines.
            buf.shrink_to(MAX_BATCH * 1024);
        }
        for line in lines {
            let is_full = self.len + (buf.len() + line.len()) as u64 > self.max_bytes;
            if is_full && self.len + buf.len() as u64 > 0 {
                self.write(buf)?;
                buf.clear();
                self.sync()?;
                *self = Segment::create(&self.dir, self.max_bytes, self.retention, self.created_ms())?;
                // Before the new file gets its first line, so the files never pass the limit.
                self.prune();
            }
            if line.len() > COPY_AT_MOST {
                self.write(buf)?;
                buf.clear();
                self.write_parts(&line.parts())?;
            } else {
                for part in line.parts() {
                    buf.extend_from_slice(part);
                }
            }
        }
        self.write(buf)
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), RecordError> {
        if bytes.is_empty() {
            return Ok(());
        }
        match self.file.write_all(bytes) {
            Ok(()) => {
                self.len += bytes.len() as u64;
                Ok(())
            }
            Err(e) => {
                // Cut a partial write back so the file stays whole lines.
                let _ = self.file.set_len(self.len);
                Err(io_error(&self.dir, &e))
            }
        }
    }

    /// Writes one line from its parts; on failure, cuts the file back to whole lines.
    fn write_parts(&mut self, parts: &[&[u8]]) -> Result<(), RecordError> {
        let len = self.len;
        for part in parts {
            if let Err(err) = self.write(part) {
                self.len = len;
                let _ = self.file.set_len(len);
                return Err(err);
            }
        }
        Ok(())
    }

    fn sync(&mut self) -> Result<(), RecordError> {
        self.file.sync_data().map_err(|e| io_error(&self.dir, &e))
    }

    /// Deletes the closed record files the retention no longer keeps, oldest first; never
    /// this one. The size limit counts this file as full, so that all files together stay
    /// within it while this one fills. A file that cannot be deleted is logged and tried
    /// again later.
    fn prune(&self) {
        let retention = self.retention;
        if retention.keeps_all() {
            return;
        }
        let files = match segment_files(&self.dir) {
            Ok(files) => files,
            Err(e) => return tracing::warn!(dir = %self.dir.display(), "cannot list record files to prune: {e}"),
        };
        let closed: Vec<(&PathBuf, u64)> = files
            .iter()
            .take_while(|f| **f != self.path)
            .map(|f| (f, std::fs::metadata(f).map_or(0, |m| m.len())))
            .collect();
        let mut closed_total: u64 = closed.iter().map(|(_, len)| len).sum();
        let budget = retention.max_total_bytes.map(|max| max.saturating_sub(self.max_bytes.max(self.len)));
        let now_ms = unix_ms_now();
        for (i, (file, len)) in closed.iter().enumerate() {
            // Every record of a file was written before the next file was created.
            let closed_ms = files.get(i + 1).and_then(|f| segment_ms(f)).unwrap_or(now_ms);
            let is_too_old =
                retention.max_age.is_some_and(|age| now_ms.saturating_sub(closed_ms) > age.as_millis() as u64);
            let is_over_size = budget.is_some_and(|budget| closed_total > budget);
            if !is_too_old && !is_over_size {
                break;
            }
            if let Err(e) = std::fs::remove_file(file) {
                tracing::warn!(file = %file.display(), "cannot delete a record file the retention no longer keeps: {e}");
                break;
            }
            let _ = std::fs::remove_file(torn_path(file));
            closed_total -= len;
            metrics::counter!("callgate_records_pruned_files_total").increment(1);
            let why = if is_too_old { "older than --record-max-age" } else { "over --record-max-total-bytes" };
            tracing::info!(file = %file.display(), "deleted a record file: {why}");
        }
    }
}

/// Milliseconds since the Unix epoch: the clock of record file names.
fn unix_ms_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Where the torn tail cut off a record file is kept.
fn torn_path(path: &Path) -> PathBuf {
    let mut side = path.as_os_str().to_owned();
    side.push(".torn");
    side.into()
}

/// The record files of `dir`, oldest first.
pub(crate) fn segment_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(dir)?.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| segment_ms(p).is_some()).collect();
    files.sort();
    Ok(files)
}

/// The creation time in a record file's name.
pub(crate) fn segment_ms(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    name.strip_prefix(SEGMENT_PREFIX)?.strip_suffix(SEGMENT_SUFFIX)?.parse().ok()
}

/// Cuts a last line without its newline (a write torn by a crash) off `path`, keeping the
/// cut bytes in `<path>.torn` so nothing is destroyed.
fn repair_torn_tail(path: &Path) -> std::io::Result<()> {
    let bytes = std::fs::read(path)?;
    if bytes.is_empty() || bytes.ends_with(b"\n") {
        return Ok(());
    }
    let keep = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let torn = &bytes[keep..];
    let side = torn_path(path);
    std::fs::OpenOptions::new().create(true).append(true).open(&side)?.write_all(torn)?;
    let file = OpenOptions::new().write(true).open(path)?;
    file.set_len(keep as u64)?;
    file.sync_all()?;
    tracing::warn!(file = %path.display(), bytes = torn.len(), kept_in = %side.display(), "cut off a torn last record (the process stopped mid-write)");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_lines_are_written_in_order_among_short_ones_without_growing_the_scratch_buffer() {
        let dir = tempfile::tempdir().unwrap();
        let mut segment = Segment::open_newest(dir.path(), 64 << 20, Retention::default()).unwrap();
        let long = format!("{{\"body\":\"{}\"}}\n", "x".repeat(1 << 20));
        let lines = ["{\"a\":1}\n", long.as_str(), "{\"b\":2}\n"];
        let parsed: Vec<Line> = lines.iter().map(|l| Line::whole(l.as_bytes().to_vec())).collect();
        let mut buf = Vec::new();
        segment.append(parsed.iter(), &mut buf).unwrap();
        assert!(buf.capacity() < 64 << 10, "the long line was copied into the scratch buffer");
        assert_eq!(std::fs::read_to_string(&segment.path).unwrap(), lines.concat());
    }

    #[test]
    fn a_torn_tail_is_cut_and_kept_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("records-0000000000001.jsonl");
        std::fs::write(&path, b"{\"a\":1}\n{\"b\":").unwrap();
        repair_torn_tail(&path).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"{\"a\":1}\n");
        assert_eq!(std::fs::read(dir.path().join("records-0000000000001.jsonl.torn")).unwrap(), b"{\"b\":");
    }

    /// Writes record files created `ago_ms` before now, of `size` bytes each; returns them.
    fn files(dir: &Path, ago_ms: &[u64], size: usize) -> Vec<PathBuf> {
        let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
        let line = format!("{}\n", "x".repeat(size - 1));
        ago_ms
            .iter()
            .map(|ago| {
                let path = dir.join(format!("{SEGMENT_PREFIX}{:013}{SEGMENT_SUFFIX}", now_ms - ago));
                std::fs::write(&path, &line).unwrap();
                path
            })
            .collect()
    }

    #[test]
    fn retention_by_size_deletes_the_oldest_files_until_all_fit() {
        let dir = tempfile::tempdir().unwrap();
        let f = files(dir.path(), &[30_000, 20_000, 10_000, 0], 100);
        // Files of 100 bytes, the newest being written (counted as full, 100 bytes): two
        // closed files fit in 300 bytes beside it.
        let open = |max_total_bytes| {
            Segment::open_newest(dir.path(), 100, Retention { max_age: None, max_total_bytes: Some(max_total_bytes) })
                .unwrap()
        };
        open(300).prune();
        assert_eq!(segment_files(dir.path()).unwrap(), f[1..].to_vec());
        open(250).prune();
        assert_eq!(segment_files(dir.path()).unwrap(), f[2..].to_vec());
        // The file being written is kept even when it alone is over the limit.
        open(50).prune();
        assert_eq!(segment_files(dir.path()).unwrap(), f[3..].to_vec());
    }

    #[test]
    fn retention_by_age_deletes_files_whose_newest_record_is_too_old() {
        let dir = tempfile::tempdir().unwrap();
        // Each file's newest record is older than its successor's creation.
        let f = files(dir.path(), &[60_000, 30_000, 2_000, 1_000], 10);
        std::fs::write(torn_path(&f[0]), "{\"torn").unwrap();
        let retention = Retention { max_age: Some(Duration::from_secs(10)), max_total_bytes: None };
        Segment::open_newest(dir.path(), 4096, retention).unwrap().prune();
        assert_eq!(segment_files(dir.path()).unwrap(), f[1..].to_vec(), "only the first closed over 10 s ago");
        assert!(!torn_path(&f[0]).exists(), "its torn tail goes with it");
        Segment::open_newest(dir.path(), 4096, Retention::default()).unwrap().prune();
        assert_eq!(segment_files(dir.path()).unwrap(), f[1..].to_vec(), "the default keeps every file");
    }

    #[tokio::test]
    async fn durable_records_are_on_disk_and_files_rotate() {
        let dir = tempfile::tempdir().unwrap();
        let recorder = Recorder::open(dir.path(), 100, Retention::default(), None).unwrap();
        for i in 0..10 {
            recorder
                .record_durable(Line::whole(
                    format!("{{\"n\":{i},\"pad\":\"0123456789012345678901234567890\"}}\n").into_bytes(),
                ))
                .await
                .unwrap();
        }
        recorder.stop().await;
        let files = segment_files(dir.path()).unwrap();
        assert!(files.len() >= 4, "{files:?}");
        let all: String = files.iter().map(|f| std::fs::read_to_string(f).unwrap()).collect();
        assert_eq!(all.lines().count(), 10);
        for f in &files {
            assert!(std::fs::metadata(f).unwrap().len() <= 100);
        }
        assert!(matches!(recorder.record_durable(Line::whole(b"{}\n".to_vec())).await, Err(RecordError::Stopped)));
    }
}
