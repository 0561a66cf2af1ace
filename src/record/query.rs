//! Reading records back: the filters of `callgate events` and `GET /v1/events`.

use std::collections::VecDeque;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde_json::Value;

use super::writer::{segment_files, segment_ms};

/// Which records to return. Every filter given must match.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    /// Only records newer than this long ago.
    pub since: Option<Duration>,
    /// Only records written before this time.
    pub until: Option<SystemTime>,
    /// Only callbacks where some ID field (a key containing `id`, `account` or `user`, in
    /// any case, at any depth, or a list under such a key) equals this.
    pub user: Option<String>,
    /// Only this command.
    pub command: Option<String>,
    /// `allow`, `deny`, `ack`, or `would_deny` (a dry run that would have refused).
    pub decision: Option<String>,
    /// `openim` or `tencent`.
    pub source: Option<String>,
    /// At most this many, the newest; 0 means no limit.
    pub limit: usize,
}

/// A filter that cannot be applied.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    /// An unknown decision word.
    #[error("unknown decision `{0}`: use allow, deny, ack or would_deny")]
    Decision(String),
    /// An unknown source.
    #[error("unknown source `{0}`: use openim or tencent")]
    Source(String),
    /// The record directory could not be read.
    #[error("cannot read records in `{dir}`: {message}")]
    Read { dir: String, message: String },
}

impl EventFilter {
    /// Checks the words of the filter.
    pub fn validate(&self) -> Result<(), FilterError> {
        if let Some(d) = &self.decision
            && !matches!(d.as_str(), "allow" | "deny" | "ack" | "would_deny")
        {
            return Err(FilterError::Decision(d.clone()));
        }
        if let Some(s) = &self.source
            && !matches!(s.as_str(), "openim" | "tencent")
        {
            return Err(FilterError::Source(s.clone()));
        }
        Ok(())
    }

    /// The oldest time `since` lets through, from now.
    pub fn cutoff(&self) -> Option<SystemTime> {
        self.since.and_then(|d| SystemTime::now().checked_sub(d))
    }

    /// Whether the filter reads nothing of a record but its `time` and `command` (no
    /// user, decision or source): then [`EventFilter::matches_time_and_command`] is
    /// [`EventFilter::matches`], without the record parsed.
    pub fn is_time_and_command_only(&self) -> bool {
        self.user.is_none() && self.decision.is_none() && self.source.is_none()
    }

    /// Whether a record of this `time` and `command` (its fields, when strings) passes the
    /// time and command filters; `cutoff` as for [`EventFilter::matches`].
    pub fn matches_time_and_command(
        &self,
        time: Option<&str>,
        command: Option<&str>,
        cutoff: Option<SystemTime>,
    ) -> bool {
        if cutoff.is_some() || self.until.is_some() {
            let time = time.and_then(|t| humantime::parse_rfc3339_weak(t).ok());
            if time.is_none_or(|t| cutoff.is_some_and(|c| t < c) || self.until.is_some_and(|u| t >= u)) {
                return false;
            }
        }
        self.command.as_deref().is_none_or(|c| command == Some(c))
    }

    /// Whether `record` passes every filter but `limit`; `cutoff` is [`EventFilter::cutoff`],
    /// taken once for a whole reading.
    pub fn matches(&self, record: &Value, cutoff: Option<SystemTime>) -> bool {
        if !self.matches_time_and_command(record["time"].as_str(), record["command"].as_str(), cutoff) {
            return false;
        }
        if self.source.as_deref().is_some_and(|s| record["source"] != s) {
            return false;
        }
        match self.decision.as_deref() {
            None => {}
            Some("would_deny") => {
                let dry_run_denies =
                    record["dry_run"].as_array().is_some_and(|hits| hits.iter().any(|h| h["would"] == "deny"));
                if record["would"]["decision"] != "deny" && !dry_run_denies {
                    return false;
                }
            }
            Some(d) if record["decision"] != d => return false,
            Some(_) => {}
        }
        if let Some(user) = &self.user
            && !has_id(&record["body"], false, user)
        {
            return false;
        }
        true
    }
}

fn is_id_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    key.contains("id") || key.contains("account") || key.contains("user")
}

/// Whether `value` holds `id` in an ID field; `under_id_key` says the value sits under one.
fn has_id(value: &Value, under_id_key: bool, id: &str) -> bool {
    match value {
        Value::String(s) => under_id_key && s == id,
        Value::Array(items) => items.iter().any(|v| has_id(v, under_id_key, id)),
        Value::Object(map) => map.iter().any(|(k, v)| has_id(v, is_id_key(k), id)),
        _ => false,
    }
}

/// The record lines matching `filter`, oldest first (the newest `limit` of them).
/// Lines that are not JSON (there should be none) are skipped.
pub fn query(dir: &Path, filter: &EventFilter) -> Result<Vec<String>, FilterError> {
    Ok(query_after(dir, filter, &Cursor::default())?.0)
}

/// Where a reader of the records stopped: a file, and the offset just past the last whole
/// line it read. The default cursor is before the first record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cursor {
    file: Option<PathBuf>,
    offset: u64,
}

/// One line met by [`visit`]: where it is, and its text.
#[derive(Debug)]
pub struct RawLine<'a> {
    /// The record file.
    pub file: &'a Path,
    /// Its 1-based line number; `None` when reading began after the file's start (a cursor),
    /// where earlier lines were not counted.
    pub line: Option<usize>,
    /// The line without its newline; `Err` when it is not UTF-8.
    pub text: Result<&'a str, std::str::Utf8Error>,
    /// Whether the line has no newline yet: the file's end, written in part. Still being
    /// written in the newest file; torn by a crash in an older one.
    pub is_unfinished: bool,
}

/// Reads the record files of `dir` in order, oldest first, from `after`, handing every line
/// to `each`: one pass, one buffer of lines in memory at a time, whatever the files' size. Files
/// holding only records older than `since_ms` (ms since the epoch; judged by the next
/// file's creation) are passed over. Returns where reading stopped, just past the last whole
/// line: an unfinished line is handed over but not passed. A file deleted meanwhile
/// (retention) is passed over.
///
/// The one reader of records: [`query_after`] and `callgate replay` both read through it.
pub fn visit(
    dir: &Path,
    after: &Cursor,
    since_ms: Option<u64>,
    mut each: impl FnMut(RawLine<'_>),
) -> Result<Cursor, FilterError> {
    let read_err = |e: std::io::Error| FilterError::Read { dir: dir.display().to_string(), message: e.to_string() };
    let files = match segment_files(dir) {
        Ok(files) => files,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(read_err(e)),
    };
    let mut cursor = after.clone();
    let mut lines = Lines::default();
    for (i, file) in files.iter().enumerate() {
        let start = match &after.file {
            Some(read) if file < read => continue,
            Some(read) if file == read => after.offset,
            _ => 0,
        };
        // A file whose successor was created before the cutoff holds only older records.
        let next_created = files.get(i + 1).and_then(|f| segment_ms(f));
        if let (Some(since_ms), Some(next)) = (since_ms, next_created)
            && next < since_ms
        {
            continue;
        }
        let mut reader = match std::fs::File::open(file) {
            Ok(f) => f,
            // Deleted by the retention since it was listed: its records are gone.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(read_err(e)),
        };
        reader.seek(SeekFrom::Start(start)).map_err(read_err)?;
        lines.start(reader);
        let mut offset = start;
        let mut number = (start == 0).then_some(0);
        while let Some((line, is_unfinished)) = lines.next().map_err(read_err)? {
            number = number.map(|k| k + 1);
            each(RawLine { file, line: number, text: std::str::from_utf8(line), is_unfinished });
            if is_unfinished {
                break;
            }
            offset += line.len() as u64 + 1;
        }
        cursor = Cursor { file: Some(file.clone()), offset };
    }
    Ok(cursor)
}

/// Lines of one file, read in large blocks and handed out from the block, not copied.
#[derive(Default)]
struct Lines {
    file: Option<std::fs::File>,
    /// Read bytes; `buf[at..end]` are not handed out yet.
    buf: Vec<u8>,
    at: usize,
    end: usize,
    is_at_end: bool,
}

impl Lines {
    /// Bytes read at a time; a longer line grows the buffer to hold it.
    const BLOCK: usize = 256 << 10;

    /// Reads `file` from where it stands, keeping the buffer.
    fn start(&mut self, file: std::fs::File) {
        *self = Lines { file: Some(file), buf: std::mem::take(&mut self.buf), ..Lines::default() };
    }

    /// The next line without its newline, and whether it has none (the file ends in it);
    /// `None` past the end.
    fn next(&mut self) -> std::io::Result<Option<(&[u8], bool)>> {
        let mut searched = 0;
        loop {
            if let Some(n) = memchr::memchr(b'\n', &self.buf[self.at + searched..self.end]) {
                let line = self.at..self.at + searched + n;
                self.at = line.end + 1;
                return Ok(Some((&self.buf[line], false)));
            }
            searched = self.end - self.at;
            if self.is_at_end {
                let line = self.at..self.end;
                self.at = self.end;
                return Ok((!line.is_empty()).then(|| (&self.buf[line], true)));
            }
            self.fill()?;
        }
    }

    /// Reads more after what is not handed out yet, moved to the buffer's start.
    fn fill(&mut self) -> std::io::Result<()> {
        self.buf.copy_within(self.at..self.end, 0);
        self.end -= self.at;
        self.at = 0;
        if self.buf.len() < self.end + Self::BLOCK / 2 {
            self.buf.resize((self.end + Self::BLOCK / 2).max(Self::BLOCK), 0);
        }
        let Some(file) = &mut self.file else {
            self.is_at_end = true;
            return Ok(());
        };
        let n = loop {
            match file.read(&mut self.buf[self.end..]) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                read => break read?,
            }
        };
        self.end += n;
        self.is_at_end = n == 0;
        Ok(())
    }
}

/// Like [`query`], but only the lines written after `after`; also returns where reading
/// stopped, so that calling again with it yields only the records written since
/// (`callgate events --follow`). A line still being written is left for the next call.
/// Lines that are not JSON are skipped.
pub fn query_after(dir: &Path, filter: &EventFilter, after: &Cursor) -> Result<(Vec<String>, Cursor), FilterError> {
    filter.validate()?;
    let cutoff = filter.cutoff();
    let mut out = VecDeque::new();
    let cursor = visit(dir, after, cutoff.map(epoch_ms), |raw| {
        let (Ok(text), false) = (raw.text, raw.is_unfinished) else { return };
        let Ok(record) = serde_json::from_str::<Value>(text) else { return };
        if filter.matches(&record, cutoff) {
            out.push_back(text.to_string());
            if filter.limit > 0 && out.len() > filter.limit {
                out.pop_front();
            }
        }
    })?;
    Ok((out.into(), cursor))
}

/// Milliseconds since the epoch (0 before it).
pub fn epoch_ms(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reading_after_a_cursor_yields_only_newer_whole_lines_across_files() {
        let dir = tempfile::tempdir().unwrap();
        let rec = |n: u32| format!("{{\"time\":\"2026-01-01T00:00:00Z\",\"n\":{n}}}\n");
        let a = dir.path().join("records-0000000000001.jsonl");
        std::fs::write(&a, format!("{}{}", rec(1), rec(2))).unwrap();
        let all = EventFilter::default();
        let (lines, cursor) = query_after(dir.path(), &all, &Cursor::default()).unwrap();
        assert_eq!(lines.len(), 2);
        // A line being written is not read until whole; a new file is read from its start.
        let mut file = std::fs::OpenOptions::new().append(true).open(&a).unwrap();
        std::io::Write::write_all(&mut file, b"{\"time\":\"2026").unwrap();
        let (lines, cursor) = query_after(dir.path(), &all, &cursor).unwrap();
        assert!(lines.is_empty());
        std::io::Write::write_all(&mut file, b"-01-01T00:00:00Z\",\"n\":3}\n").unwrap();
        std::fs::write(dir.path().join("records-0000000000002.jsonl"), rec(4)).unwrap();
        let (lines, cursor) = query_after(dir.path(), &all, &cursor).unwrap();
        let ns: Vec<Value> = lines.iter().map(|l| serde_json::from_str::<Value>(l).unwrap()["n"].clone()).collect();
        assert_eq!(ns, [json!(3), json!(4)]);
        // The file read last deleted (retention): later files are still found.
        std::fs::remove_file(dir.path().join("records-0000000000002.jsonl")).unwrap();
        std::fs::write(dir.path().join("records-0000000000003.jsonl"), rec(5)).unwrap();
        let (lines, _) = query_after(dir.path(), &all, &cursor).unwrap();
        assert_eq!(lines, [rec(5).trim_end()]);
    }

    #[test]
    fn user_matches_id_fields_at_any_depth_only() {
        let body = json!({"ownerUserID":"u1","PairList":[{"From_Account":"u2","To_Account":"u3"}],"userIDList":["u4"],"content":"u5"});
        for id in ["u1", "u2", "u3", "u4"] {
            assert!(has_id(&body, false, id), "{id}");
        }
        assert!(!has_id(&body, false, "u5"), "content is not an ID field");
    }

    #[test]
    fn decision_filters() {
        let f = |d: &str| EventFilter { decision: Some(d.into()), ..EventFilter::default() };
        let dry = json!({"decision":"allow","would":{"decision":"deny"}});
        let hit = json!({"decision":"allow","dry_run":[{"rule":"r","would":"deny"}]});
        let deny = json!({"decision":"deny"});
        assert!(f("would_deny").matches(&dry, None));
        assert!(f("would_deny").matches(&hit, None));
        assert!(!f("would_deny").matches(&deny, None));
        assert!(f("deny").matches(&deny, None));
        assert!(!f("deny").matches(&dry, None));
        assert!(f("nope").validate().is_err());
    }

    #[test]
    fn lines_are_whole_across_blocks_and_longer_than_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("records");
        // Lines ending just before, at and after a block's end, one over two blocks long,
        // empty ones, and a last line without its newline.
        let lengths = [Lines::BLOCK - 1, 0, Lines::BLOCK - 2, 1, 2 * Lines::BLOCK + 3, 0, 5];
        let lines: Vec<Vec<u8>> = lengths.iter().enumerate().map(|(i, &n)| vec![b'a' + i as u8; n]).collect();
        let mut text = lines.join(&b'\n');
        std::fs::write(&path, &text).unwrap();
        let mut read = Lines::default();
        read.start(std::fs::File::open(&path).unwrap());
        for (i, line) in lines.iter().enumerate() {
            let is_last = i == lines.len() - 1;
            assert_eq!(read.next().unwrap(), Some((&line[..], is_last)), "line {i}");
        }
        assert_eq!(read.next().unwrap(), None);
        // Ending in a newline: no last, empty line.
        text.push(b'\n');
        std::fs::write(&path, &text).unwrap();
        read.start(std::fs::File::open(&path).unwrap());
        let count =
            std::iter::from_fn(|| read.next().unwrap().map(|(_, is_unfinished)| assert!(!is_unfinished))).count();
        assert_eq!(count, lines.len());
    }
}
