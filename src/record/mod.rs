//! Records: one JSON object a line for every callback received, in size-rotated files under
//! the data directory. Never decides anything.
//!
//! - this file: the [`Record`] line format
//! - `writer`: the [`Recorder`] — one writer thread, group commit, rotation, crash repair
//! - `query`: reading records back with filters (`callgate events`, `GET /v1/events`)
//! - `stream`: a copy of every written record to a Redis Stream, when Redis is configured

mod query;
mod stream;
mod writer;

pub use query::{Cursor, EventFilter, FilterError, RawLine, epoch_ms, query, query_after, visit};
pub use stream::{STREAM_KEY, STREAM_MAX_LEN, StreamSink};
pub use writer::{RecordError, Recorder, Retention, SEGMENT_PREFIX, SEGMENT_SUFFIX};

use std::cell::Cell;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::Serialize;

use crate::catalog::CodeFamily;
use crate::decision::{CapHit, Decision, DryRunHit, Outcome};
use crate::event::{Event, TencentMeta};

/// One record line: the serialised head (ending in `"body":`), then the body as received —
/// shared with the request, not copied, so a 16 MiB message is held once, not twice — then
/// `}` and a newline.
#[derive(Debug, Clone)]
pub struct Line {
    head: Vec<u8>,
    body: Bytes,
}

impl Line {
    /// A line that is all in `bytes` (which ends with its newline).
    pub fn whole(bytes: Vec<u8>) -> Line {
        Line { head: bytes, body: Bytes::new() }
    }

    /// The line in its three parts, to be written one after the other.
    pub fn parts(&self) -> [&[u8]; 3] {
        if self.body.is_empty() { [&self.head, &[], &[]] } else { [&self.head, &self.body, b"}\n"] }
    }

    /// Its length in bytes, newline included.
    pub fn len(&self) -> usize {
        self.parts().iter().map(|p| p.len()).sum()
    }

    /// Whether it has no bytes (never, for a line built here).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The line in one buffer.
    pub fn to_vec(&self) -> Vec<u8> {
        self.parts().concat()
    }
}

/// The fields of a record, except the body, which is spliced in as received. Written by
/// [`Head::write`]; the serde attributes (under test only) say what that writes, and a test
/// holds it to them.
#[cfg_attr(test, derive(Serialize))]
struct Head<'a> {
    time: Stamp,
    source: &'static str,
    command: &'a str,
    #[cfg_attr(test, serde(skip_serializing_if = "Option::is_none"))]
    operation_id: Option<&'a str>,
    #[cfg_attr(test, serde(flatten, skip_serializing_if = "Option::is_none"))]
    tencent: Option<&'a TencentMeta>,
    #[cfg_attr(test, serde(flatten))]
    verdict: Verdict<'a>,
    /// A callback decided item by item: each item's decision.
    #[cfg_attr(test, serde(skip_serializing_if = "<[_]>::is_empty"))]
    items: &'a [ItemRecord<'a>],
    #[cfg_attr(test, serde(skip_serializing_if = "Option::is_none"))]
    policy_version: Option<&'a str>,
    latency_us: u64,
}

impl Head<'_> {
    /// Writes the head as serde_json writes the struct, but for its closing brace. By hand,
    /// keys being the constants they are: serde writes a struct with flattened fields as a
    /// map, every key escaped like any string and every field through its flattening, which
    /// cost a record more than half of its line building (callgrind, issue 19). Values that
    /// may need escaping, and the nested ones, still go through serde_json; those callgate
    /// makes itself with nothing to escape are copied ([`put_plain`]).
    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"time\":");
        self.time.write(out);
        out.extend_from_slice(b",\"source\":");
        put_plain(out, self.source.as_bytes());
        out.extend_from_slice(b",\"command\":");
        put(out, self.command);
        if let Some(id) = self.operation_id {
            out.extend_from_slice(b",\"operation_id\":");
            put(out, id);
        }
        if let Some(meta) = self.tencent {
            out.extend_from_slice(b",\"sdk_app_id\":");
            put(out, &meta.sdk_app_id);
            out.extend_from_slice(b",\"client_ip\":");
            put(out, &meta.client_ip);
            out.extend_from_slice(b",\"opt_platform\":");
            put(out, &meta.opt_platform);
        }
        out.push(b',');
        self.verdict.write(out);
        if !self.items.is_empty() {
            out.extend_from_slice(b",\"items\":[");
            for (i, item) in self.items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(b"{\"account\":");
                put(out, item.account);
                out.push(b',');
                item.verdict.write(out);
                out.push(b'}');
            }
            out.push(b']');
        }
        if let Some(version) = self.policy_version {
            out.extend_from_slice(b",\"policy_version\":");
            // Hex digits (a sha256), from policy::load.
            put_plain(out, version.as_bytes());
        }
        out.extend_from_slice(b",\"latency_us\":");
        put(out, &self.latency_us);
    }
}

/// Appends `value` as serde_json writes it. Writing into a `Vec` cannot fail, and the values
/// given here (strings, numbers, and structs and lists of them) have nothing serde_json
/// refuses.
fn put<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    let _ = serde_json::to_writer(&mut *out, value);
}

/// Appends `text` in quotes as it is, for strings callgate makes itself that JSON never
/// escapes (names from a fixed set, hex digests, its time stamps): as `put` writes them,
/// without looking at each byte for escapes.
fn put_plain(out: &mut Vec<u8>, text: &[u8]) {
    debug_assert!(text.iter().all(|&b| b.is_ascii_graphic() && b != b'"' && b != b'\\'), "{text:?} needs escaping");
    out.push(b'"');
    out.extend_from_slice(text);
    out.push(b'"');
}

/// What was answered and why, as a record (or one item of it) shows it. Written by
/// [`Verdict::write`], as [`Head`].
#[cfg_attr(test, derive(Serialize))]
struct Verdict<'a> {
    /// The answer sent: `allow`, `deny`, `discard`, (Tencent) `ack`, or (Tencent, item by
    /// item) `partial`.
    decision: &'static str,
    #[cfg_attr(test, serde(skip_serializing_if = "Option::is_none"))]
    rule: Option<&'a str>,
    #[cfg_attr(test, serde(skip_serializing_if = "Option::is_none"))]
    error_code: Option<i32>,
    #[cfg_attr(test, serde(skip_serializing_if = "<[_]>::is_empty"))]
    dry_run: &'a [DryRunHit],
    #[cfg_attr(test, serde(skip_serializing_if = "<[_]>::is_empty"))]
    caps: &'a [CapHit],
    /// Under `serve --dry-run`: what enforcement would have answered.
    #[cfg_attr(test, serde(skip_serializing_if = "Option::is_none"))]
    would: Option<Would<'a>>,
}

impl<'a> Verdict<'a> {
    /// Writes the verdict's fields, from `"decision":`, as serde_json writes them flattened
    /// into a head or an item (see [`Head::write`]).
    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"\"decision\":");
        put_plain(out, self.decision.as_bytes());
        if let Some(rule) = self.rule {
            out.extend_from_slice(b",\"rule\":");
            put(out, rule);
        }
        if let Some(code) = self.error_code {
            out.extend_from_slice(b",\"error_code\":");
            put(out, &code);
        }
        if !self.dry_run.is_empty() {
            out.extend_from_slice(b",\"dry_run\":");
            put(out, self.dry_run);
        }
        if !self.caps.is_empty() {
            out.extend_from_slice(b",\"caps\":");
            put(out, self.caps);
        }
        if let Some(would) = &self.would {
            out.extend_from_slice(b",\"would\":");
            put(out, would);
        }
    }

    /// A decision's verdict; under `serve --dry-run` the answer was allow and `would` says
    /// what enforcement would have answered. Codes are those `family` is sent.
    fn of(decision: &'a Decision, is_dry_run: bool, family: CodeFamily) -> Verdict<'a> {
        let answered = if is_dry_run { &Outcome::Allow } else { &decision.outcome };
        Verdict {
            decision: answered.as_str(),
            rule: if is_dry_run { None } else { decision.rule.as_deref() },
            error_code: answered.error_code_for(family),
            dry_run: &decision.dry_run,
            caps: &decision.caps,
            would: is_dry_run.then(|| Would {
                decision: decision.outcome.as_str(),
                rule: decision.rule.as_deref(),
                error_code: decision.outcome.error_code_for(family),
            }),
        }
    }

    /// An answer that no rule gave (`ack`, `partial`).
    fn bare(decision: &'static str) -> Verdict<'a> {
        Verdict { decision, rule: None, error_code: None, dry_run: &[], caps: &[], would: None }
    }
}

#[derive(Serialize)]
struct Would<'a> {
    decision: &'static str,
    rule: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error_code: Option<i32>,
}

/// The record line of a decided callback: OpenIM's, or a Tencent before-callback decided as
/// a whole (with its query's `tencent` meta). `is_dry_run` is the server's `--dry-run`: the
/// answer was allow and `would` shows what enforcement would have answered.
pub fn decided_line(
    event: &Event,
    tencent: Option<&TencentMeta>,
    decision: &Decision,
    is_dry_run: bool,
    policy_version: &str,
    latency: Duration,
) -> Line {
    let head = Head {
        time: now_rfc3339(),
        source: event.source.as_str(),
        command: &event.command,
        operation_id: tencent.is_none().then_some(event.operation_id.as_str()),
        tencent,
        verdict: Verdict::of(decision, is_dry_run, event.code_family()),
        items: &[],
        policy_version: Some(policy_version),
        latency_us: micros(latency),
    };
    line(&head, event)
}

/// One item of a callback decided item by item, as its record shows it (written by
/// [`Head::write`]).
#[cfg_attr(test, derive(Serialize))]
struct ItemRecord<'a> {
    /// The item's account.
    account: &'a str,
    #[cfg_attr(test, serde(flatten))]
    verdict: Verdict<'a>,
}

/// The record line of a Tencent before-callback decided item by item (`items`: each
/// item's account and decision). Its `decision` is what was answered for the whole:
/// `allow` (no item refused), `deny` (every one) or `partial`.
pub fn items_line(
    event: &Event,
    tencent: &TencentMeta,
    items: &[(String, Decision)],
    is_dry_run: bool,
    policy_version: &str,
    latency: Duration,
) -> Line {
    let family = event.code_family();
    let records: Vec<ItemRecord<'_>> = items
        .iter()
        .map(|(account, decision)| ItemRecord { account, verdict: Verdict::of(decision, is_dry_run, family) })
        .collect();
    let refused = records.iter().filter(|r| r.verdict.decision != "allow").count();
    let decision = match refused {
        0 => "allow",
        n if n == records.len() => "deny",
        _ => "partial",
    };
    let head = Head {
        time: now_rfc3339(),
        source: event.source.as_str(),
        command: &event.command,
        operation_id: None,
        tencent: Some(tencent),
        verdict: Verdict::bare(decision),
        items: &records,
        policy_version: Some(policy_version),
        latency_us: micros(latency),
    };
    line(&head, event)
}

/// The record line of an acknowledged Tencent callback.
pub fn tencent_line(event: &Event, meta: &TencentMeta, latency: Duration) -> Line {
    let head = Head {
        time: now_rfc3339(),
        source: event.source.as_str(),
        command: &event.command,
        operation_id: None,
        tencent: Some(meta),
        verdict: Verdict::bare("ack"),
        items: &[],
        policy_version: None,
        latency_us: micros(latency),
    };
    line(&head, event)
}

/// A latency in whole µs, as records give it.
fn micros(latency: Duration) -> u64 {
    latency.as_micros().try_into().unwrap_or(u64::MAX)
}

/// Serialises `head`, then `"body":` with the body as received, and a newline. The raw body
/// was checked to be one JSON object when it was decoded. A record must be one line: in valid
/// JSON a line break can only be whitespace between tokens (inside a string it must be
/// escaped), so a body with line breaks is copied with each made a space; any other body is
/// shared, not copied. An event built without a raw body (by the offline tools) has its parsed
/// body written instead.
fn line(head: &Head<'_>, event: &Event) -> Line {
    let raw = event.raw.trim_ascii();
    // memchr looks at a word or a vector at a time; a byte-by-byte scan of the body cost a
    // record more than the rest of its line building (callgrind, issue 19).
    let is_one_line = memchr::memchr2(b'\n', b'\r', raw).is_none();
    // Room for the head (with a dry-run hit and a cap, about 400 bytes), and the body when it
    // is copied.
    let mut out = Vec::with_capacity(512 + if is_one_line { 0 } else { raw.len() });
    head.write(&mut out);
    out.extend_from_slice(b",\"body\":");
    if raw.is_empty() {
        put(&mut out, &event.body);
    } else if is_one_line {
        return Line { head: out, body: event.raw.slice_ref(raw) };
    } else {
        let at = out.len();
        out.extend_from_slice(raw);
        for b in &mut out[at..] {
            if *b == b'\n' || *b == b'\r' {
                *b = b' ';
            }
        }
    }
    out.extend_from_slice(b"}\n");
    Line::whole(out)
}

/// A record's `time`: RFC 3339 in UTC with milliseconds, `2026-12-03T17:50:24.123Z`, as
/// humantime writes it.
enum Stamp {
    /// The common case, kept on the stack rather than in a `String` of its own.
    Millis([u8; 24]),
    /// A time humantime formats in some other way: none from 1970 to 9999 (the times
    /// [`stamp`] writes), but a stamp stays right if humantime's format changes.
    Other(String),
}

impl Stamp {
    fn write(&self, out: &mut Vec<u8>) {
        match self {
            // Only ASCII digits and separators are ever put in it (see `stamp`).
            Stamp::Millis(bytes) => put_plain(out, bytes),
            Stamp::Other(text) => put(out, text),
        }
    }
}

/// As [`Stamp::write`] writes it, for the test that holds a head to serde's bytes.
#[cfg(test)]
impl Serialize for Stamp {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            // Only ASCII digits and separators are ever put in it (see `stamp`).
            Stamp::Millis(bytes) => serializer.serialize_str(std::str::from_utf8(bytes).unwrap_or_default()),
            Stamp::Other(text) => serializer.serialize_str(text),
        }
    }
}

thread_local! {
    /// The second last stamped on this thread, and its `YYYY-MM-DDTHH:MM:SS.`: callbacks come
    /// many a second, and formatting the date cost a record more than the rest of its time
    /// (callgrind, issue 19).
    static SECOND: Cell<(u64, [u8; 20])> = const { Cell::new((u64::MAX, [0; 20])) };
}

fn now_rfc3339() -> Stamp {
    stamp(SystemTime::now())
}

/// The last millisecond RFC 3339's four-digit year can write: 9999-12-31T23:59:59.999Z.
const LATEST_STAMP: Duration = Duration::from_millis(253_402_300_799_999);

/// `time` as humantime's `format_rfc3339_millis` writes it: the date and second from
/// humantime (once a second per thread), the milliseconds (truncated, as there) here. A clock
/// set before 1970 or past the year 9999, which humantime panics on, is written as the nearest
/// time it can write: a wrong clock must not fail the callback.
fn stamp(time: SystemTime) -> Stamp {
    let since_epoch = time.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).min(LATEST_STAMP);
    let time = UNIX_EPOCH + since_epoch;
    let other = || Stamp::Other(humantime::format_rfc3339_millis(time).to_string());
    let secs = since_epoch.as_secs();
    let prefix = SECOND.with(|second| {
        let (cached, prefix) = second.get();
        if cached == secs {
            return Some(prefix);
        }
        let text = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string();
        // `YYYY-MM-DDTHH:MM:SSZ`; anything else is left to humantime whole.
        let date: [u8; 19] = text.as_bytes().get(..19)?.try_into().ok()?;
        if text.len() != 20 || !text.is_ascii() {
            return None;
        }
        let mut prefix = [b'.'; 20];
        prefix[..19].copy_from_slice(&date);
        second.set((secs, prefix));
        Some(prefix)
    });
    let Some(prefix) = prefix else { return other() };
    let ms = since_epoch.subsec_millis();
    let mut bytes = [b'Z'; 24];
    bytes[..20].copy_from_slice(&prefix);
    bytes[20] = b'0' + (ms / 100) as u8;
    bytes[21] = b'0' + (ms / 10 % 10) as u8;
    bytes[22] = b'0' + (ms % 10) as u8;
    Stamp::Millis(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decision::Refusal;
    use bytes::Bytes;
    use serde_json::Value;
    use std::sync::Arc;

    fn event(raw: &'static str) -> Event {
        let mut e = Event::openim("cmd", serde_json::from_str(raw).unwrap());
        e.raw = Bytes::from_static(raw.as_bytes());
        e.operation_id = "op1".into();
        e
    }

    #[test]
    fn decided_line_is_one_json_object_with_the_body_as_received() {
        let refusal = Outcome::Deny(Arc::new(Refusal::new(20001, "m", "")));
        let decision = Decision {
            outcome: refusal.clone(),
            rule: Some("r".into()),
            dry_run: vec![DryRunHit { rule: "d".into(), outcome: refusal }],
            caps: vec![CapHit { rule: "c".into(), count: 3, max: 10, is_exceeded: false }],
        };
        let line =
            decided_line(&event("{\"a\": 1, \"b\":\"x\"}\n"), None, &decision, false, "v1", Duration::from_micros(7))
                .to_vec();
        assert_eq!(line.last(), Some(&b'\n'));
        assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
        let text = std::str::from_utf8(&line).unwrap();
        assert!(text.ends_with(",\"body\":{\"a\": 1, \"b\":\"x\"}}\n"), "{text}");
        let v: Value = serde_json::from_str(text).unwrap();
        assert_eq!(v["decision"], "deny");
        assert_eq!(v["rule"], "r");
        assert_eq!(v["error_code"], 20001);
        assert_eq!(v["dry_run"][0]["rule"], "d");
        assert_eq!(v["caps"][0], serde_json::json!({"rule":"c","count":3,"max":10,"exceeded":false}));
        assert_eq!(v["operation_id"], "op1");
        assert_eq!(v["policy_version"], "v1");
        assert_eq!(v["latency_us"], 7);
    }

    #[test]
    fn record_heads_keep_their_field_order() {
        // Lines are read by people and by tools that may not parse JSON; the order is part of
        // the format (docs/records.md): head fields, the verdict's, then the body.
        let refusal = Outcome::Deny(Arc::new(Refusal::new(120001, "m", "")));
        let decision = Decision {
            outcome: refusal.clone(),
            rule: Some("r".into()),
            dry_run: vec![DryRunHit { rule: "d".into(), outcome: refusal }],
            caps: vec![CapHit { rule: "c".into(), count: 3, max: 10, is_exceeded: false }],
        };
        let meta = TencentMeta { sdk_app_id: "1400".into(), client_ip: "1.2.3.4".into(), opt_platform: "iOS".into() };
        let mut e = event("{\"a\":1}");
        e.command = "C2C.CallbackBeforeSendMsg".into();
        e.source = crate::event::Source::Tencent;
        let strip_time = |line: Line| {
            let text = String::from_utf8(line.to_vec()).unwrap();
            let at = text.find("\"source\"").unwrap();
            text[at..].to_string()
        };
        assert_eq!(
            strip_time(decided_line(&e, Some(&meta), &decision, true, "v1", Duration::from_micros(7))),
            "\"source\":\"tencent\",\"command\":\"C2C.CallbackBeforeSendMsg\",\"sdk_app_id\":\"1400\",\"client_ip\":\"1.2.3.4\",\"opt_platform\":\"iOS\",\"decision\":\"allow\",\"dry_run\":[{\"rule\":\"d\",\"would\":\"deny\",\"error_code\":120001}],\"caps\":[{\"rule\":\"c\",\"count\":3,\"max\":10,\"exceeded\":false}],\"would\":{\"decision\":\"deny\",\"rule\":\"r\",\"error_code\":120001},\"policy_version\":\"v1\",\"latency_us\":7,\"body\":{\"a\":1}}\n"
        );
        let items = vec![
            ("u1".to_string(), decision.clone()),
            ("u2".to_string(), Decision { outcome: Outcome::Allow, rule: None, dry_run: vec![], caps: vec![] }),
        ];
        assert_eq!(
            strip_time(items_line(&e, &meta, &items, false, "v1", Duration::from_micros(7))),
            "\"source\":\"tencent\",\"command\":\"C2C.CallbackBeforeSendMsg\",\"sdk_app_id\":\"1400\",\"client_ip\":\"1.2.3.4\",\"opt_platform\":\"iOS\",\"decision\":\"partial\",\"items\":[{\"account\":\"u1\",\"decision\":\"deny\",\"rule\":\"r\",\"error_code\":120001,\"dry_run\":[{\"rule\":\"d\",\"would\":\"deny\",\"error_code\":120001}],\"caps\":[{\"rule\":\"c\",\"count\":3,\"max\":10,\"exceeded\":false}]},{\"account\":\"u2\",\"decision\":\"allow\"}],\"policy_version\":\"v1\",\"latency_us\":7,\"body\":{\"a\":1}}\n"
        );
        let openim = decided_line(&event("{}"), None, &decision, false, "v1", Duration::ZERO);
        assert!(strip_time(openim).starts_with("\"source\":\"openim\",\"command\":\"cmd\",\"operation_id\":\"op1\",\"decision\":\"deny\",\"rule\":\"r\",\"error_code\":120001,"));
    }

    #[test]
    fn heads_are_written_as_serde_writes_them() {
        let refusal = Outcome::Deny(Arc::new(Refusal::new(120001, "m", "")));
        let hit = DryRunHit { rule: "d\"\\\u{1}é".into(), outcome: refusal.clone() };
        let cap = CapHit { rule: "c".into(), count: 3, max: 10, is_exceeded: true };
        let decisions = [
            Decision { outcome: Outcome::Allow, rule: None, dry_run: vec![], caps: vec![] },
            Decision { outcome: Outcome::Discard, rule: Some("r\n".into()), dry_run: vec![], caps: vec![cap.clone()] },
            Decision { outcome: refusal, rule: Some("r".into()), dry_run: vec![hit.clone(), hit], caps: vec![cap] },
        ];
        let meta = TencentMeta { sdk_app_id: "1400".into(), client_ip: "1.2.3.4".into(), opt_platform: "i\"OS".into() };
        let items: Vec<ItemRecord<'_>> = decisions
            .iter()
            .map(|d| ItemRecord { account: "u\t1", verdict: Verdict::of(d, false, CodeFamily::OpenIm) })
            .collect();
        for decision in &decisions {
            for is_dry_run in [false, true] {
                for (tencent, operation_id) in [(None, Some("op\"1")), (Some(&meta), None)] {
                    for items in [&[][..], &items[..1], &items[..]] {
                        for policy_version in [None, Some("v1")] {
                            let head = Head {
                                time: stamp(UNIX_EPOCH + Duration::from_millis(1_796_320_224_123)),
                                source: "openim",
                                command: "c\u{7f}md",
                                operation_id,
                                tencent,
                                verdict: Verdict::of(decision, is_dry_run, CodeFamily::C2c),
                                items,
                                policy_version,
                                latency_us: u64::MAX,
                            };
                            let mut written = Vec::new();
                            head.write(&mut written);
                            written.push(b'}');
                            assert_eq!(String::from_utf8(written).unwrap(), serde_json::to_string(&head).unwrap());
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn stamps_are_written_as_humantime_writes_them() {
        let day = 86_400;
        // Around the epoch, a leap day, a year's end, today, and ms on both sides of seconds.
        for secs in [0, 1, 59, day - 1, 951_782_400, 951_868_799, 1_767_225_599, 1_767_225_600, 1_796_320_224] {
            for ms in [0, 1, 9, 10, 99, 100, 123, 999] {
                for ns in [0, 999_999] {
                    let time = UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_nanos(ms * 1_000_000 + ns);
                    let want = humantime::format_rfc3339_millis(time).to_string();
                    // Twice: formatted, then from this thread's cached second.
                    for _ in 0..2 {
                        assert_eq!(serde_json::to_string(&stamp(time)).unwrap(), format!("\"{want}\""));
                    }
                }
            }
        }
    }

    #[test]
    fn a_clock_humantime_cannot_write_is_written_as_the_nearest_time_it_can() {
        let before_1970 = UNIX_EPOCH - Duration::from_secs(86_400);
        assert_eq!(serde_json::to_string(&stamp(before_1970)).unwrap(), "\"1970-01-01T00:00:00.000Z\"");
        let past_9999 = UNIX_EPOCH + Duration::from_secs(300_000_000_000);
        assert_eq!(serde_json::to_string(&stamp(past_9999)).unwrap(), "\"9999-12-31T23:59:59.999Z\"");
        let last = UNIX_EPOCH + LATEST_STAMP;
        assert_eq!(serde_json::to_string(&stamp(last)).unwrap(), "\"9999-12-31T23:59:59.999Z\"");
    }

    #[test]
    fn server_dry_run_records_the_allow_and_what_would_have_been() {
        let refusal = Outcome::Deny(Arc::new(Refusal::new(150, "m", "")));
        let decision = Decision { outcome: refusal, rule: Some("r".into()), dry_run: vec![], caps: vec![] };
        let line = decided_line(&event("{}"), None, &decision, true, "v", Duration::ZERO).to_vec();
        let v: Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["decision"], "allow");
        assert_eq!(v["would"]["decision"], "deny");
        assert_eq!(v["would"]["rule"], "r");
        assert_eq!(v["would"]["error_code"], 150);
    }

    #[test]
    fn a_one_line_body_is_shared_with_the_request_not_copied() {
        let decision = Decision { outcome: Outcome::Allow, rule: None, dry_run: vec![], caps: vec![] };
        let e = event("{\"a\":1}\n");
        let line = decided_line(&e, None, &decision, false, "v", Duration::ZERO);
        assert_eq!(line.parts()[1].as_ptr(), e.raw.as_ptr(), "the body was copied");
        assert!(line.to_vec().ends_with(b",\"body\":{\"a\":1}}\n"));
    }

    #[test]
    fn a_multi_line_body_is_written_on_one_line() {
        let decision = Decision { outcome: Outcome::Allow, rule: None, dry_run: vec![], caps: vec![] };
        let line =
            decided_line(&event("{\n  \"a\": [1,\n 2]\n}\n"), None, &decision, false, "v", Duration::ZERO).to_vec();
        assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
        let v: Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["body"]["a"][1], 2);
    }
}
