//! The fast reader of record lines: a scanner for the JSON the server writes, which checks
//! the line as it reads it and builds only what [`Fields`] keeps.
//!
//! It reads only a common shape: no control characters (so no whitespace but spaces), no
//! `\u` escapes, numbers that are integers of at most 18 digits, at most [`MAX_DEPTH`]
//! levels of nesting, a `body` that is an object, keys without escapes. In that shape a
//! line is valid JSON exactly when serde_json says so, and everything serde_json could
//! read otherwise (a number's type, an escaped string) is read by serde_json itself, from
//! the value's own text. A line of any other shape, valid or not, is left to the exact
//! reader (`Fields::parse_exact`), so what is accepted, what is read and every error
//! message stay serde_json's.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::{Map, Value};

use super::{Bodies, Fields, Integer, Keep};

/// Distinct body keys kept at most; a body keeping more is left to serde_json.
const MAX_KEPT: usize = 32;

/// Nesting the scanner follows inside one value; deeper lines are left to serde_json, whose
/// limit (128, counted from the line) is then never the scanner's to apply.
const MAX_DEPTH: u32 = 60;

/// The fields of `line`, with the body keys `keep` accepts; `None` when the line is not of
/// the shape this reader reads (then it may be valid or not).
/// The body is the one `bodies` kept for the command, if the line names it first (as the
/// server writes records), rewritten.
pub(super) fn fields<'a>(line: &'a str, keep: &impl Keep, bodies: &mut Bodies) -> Option<Fields<'a>> {
    let mut s = Scanner { text: line, at: 0, marks: marks(line.as_bytes())?, marks_at: 0 };
    s.eat(b'{')?;
    let mut f = Fields::default();
    if !s.is_empty_container(b'}') {
        loop {
            let key = s.key()?;
            // A key written twice counts as its last value, as in a parsed `Value`.
            match key {
                "time" => f.time = s.text()?,
                "source" => f.source = s.text()?,
                "command" => f.command = s.text()?,
                "operation_id" => f.operation_id = s.text()?,
                "decision" => f.decision = s.text()?,
                "rule" => f.rule = s.text()?,
                "error_code" => f.error_code = parse::<Integer>(s.value()?)?.0,
                "would" => f.would = parse(s.value()?)?,
                "dry_run" => f.dry_run = parse(s.value()?)?,
                "items" => {
                    s.value()?;
                    f.has_items = true;
                }
                "body" => {
                    let mut body = bodies.take(f.command.as_deref());
                    s.body(keep, &mut body)?;
                    f.body = Some(Ok(body));
                }
                _ => {
                    s.value()?;
                }
            }
            if s.is_last_member()? {
                break;
            }
        }
    }
    s.spaces();
    (s.at == line.len()).then_some(f)
}

/// `text`, a whole value the scanner has checked, read by serde_json; `None` if it disagrees.
fn parse<'a, T: Deserialize<'a>>(text: &'a str) -> Option<T> {
    serde_json::from_str(text).ok()
}

/// A position in a line. Every method returns `None` for what is not of the common shape.
///
/// The line is not checked for control characters first: outside strings any but the
/// bytes of JSON's grammar ends the scan, and the bytes of every string are in a block
/// whose marks were taken ([`marks`] refuses a block with one).
struct Scanner<'a> {
    text: &'a str,
    at: usize,
    /// The quotes and backslashes of the 64 bytes from `marks_at`, a bit each.
    marks: u64,
    marks_at: usize,
}

impl<'a> Scanner<'a> {
    /// The text from `start` to `end`, both next to one of JSON's ASCII bytes: on character
    /// boundaries.
    #[inline(always)]
    fn slice(&self, start: usize, end: usize) -> &'a str {
        self.text.split_at(end).0.split_at(start).1
    }

    #[inline(always)]
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.at).copied()
    }

    /// Skips spaces, the only whitespace in a line without control characters.
    #[inline(always)]
    fn spaces(&mut self) {
        while self.peek() == Some(b' ') {
            self.at += 1;
        }
    }

    /// The next byte that is not a space, stepping to it. Spaces between tokens are rare,
    /// so they are skipped only when met, not looked for before every token.
    #[inline(always)]
    fn next(&mut self) -> Option<u8> {
        match self.peek()? {
            b' ' => {
                self.spaces();
                self.peek()
            }
            byte => Some(byte),
        }
    }

    /// Takes `byte`, after spaces.
    #[inline(always)]
    fn eat(&mut self, byte: u8) -> Option<()> {
        (self.next()? == byte).then(|| self.at += 1)
    }

    /// After an opening bracket: takes the closing `close` if the container is empty.
    #[inline(always)]
    fn is_empty_container(&mut self, close: u8) -> bool {
        let is_empty = self.next() == Some(close);
        if is_empty {
            self.at += 1;
        }
        is_empty
    }

    /// After an object's member: `false` past a comma, `true` past the closing brace.
    #[inline(always)]
    fn is_last_member(&mut self) -> Option<bool> {
        let byte = self.next()?;
        self.at += 1;
        match byte {
            b',' => Some(false),
            b'}' => Some(true),
            _ => None,
        }
    }

    /// An object key without escapes, and the colon after it.
    #[inline(always)]
    fn key(&mut self) -> Option<&'a str> {
        self.next()?;
        let (key, has_escapes) = self.string()?;
        self.eat(b':')?;
        (!has_escapes).then_some(key)
    }

    /// The first quote or backslash from `from` on; `None` when there is none, or a
    /// control character is met.
    #[inline(always)]
    fn next_mark(&mut self, mut from: usize) -> Option<usize> {
        let bytes = self.text.as_bytes();
        loop {
            let offset = from.wrapping_sub(self.marks_at);
            if offset < 64 {
                let rest = self.marks >> offset;
                if rest != 0 {
                    return Some(from + rest.trailing_zeros() as usize);
                }
                from = self.marks_at + 64;
            }
            self.marks_at = from & !63;
            self.marks = marks(bytes.get(self.marks_at..).filter(|rest| !rest.is_empty())?)?;
        }
    }

    /// At a string's opening quote (spaces before it skipped): the text between the quotes as written, and whether it
    /// has escapes (each one checked).
    #[inline(always)]
    fn string(&mut self) -> Option<(&'a str, bool)> {
        if self.peek()? != b'"' {
            return None;
        }
        let start = self.at + 1;
        let end = self.next_mark(start)?;
        if self.text.as_bytes()[end] != b'"' {
            return self.escaped_string(start, end);
        }
        self.at = end + 1;
        Some((self.slice(start, end), false))
    }

    /// The rest of [`Scanner::string`] from its first escape, at `at`.
    #[inline(always)]
    fn escaped_string(&mut self, start: usize, mut at: usize) -> Option<(&'a str, bool)> {
        let bytes = self.text.as_bytes();
        loop {
            // `\u` is left to serde_json: it checks surrogates only where a string is read.
            match bytes.get(at + 1)? {
                b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => at += 2,
                _ => return None,
            }
            at = self.next_mark(at)?;
            if bytes[at] == b'"' {
                self.at = at + 1;
                return Some((self.slice(start, at), true));
            }
        }
    }

    /// A value read as `Value::as_str` reads it: a string, or `None` for any other value.
    #[inline(always)]
    fn text(&mut self) -> Option<Option<Cow<'a, str>>> {
        if self.next()? != b'"' {
            self.value()?;
            return Some(None);
        }
        let start = self.at;
        let (text, has_escapes) = self.string()?;
        if !has_escapes {
            return Some(Some(Cow::Borrowed(text)));
        }
        Some(Some(Cow::Owned(parse::<String>(self.slice(start, self.at))?)))
    }

    /// Integers of at most 18 digits, which serde_json reads as `u64` or `i64`; a fraction,
    /// an exponent or more digits (which may overflow a `f64`) are left to it.
    #[inline(always)]
    fn number(&mut self) -> Option<()> {
        if self.peek() == Some(b'-') {
            self.at += 1;
        }
        let start = self.at;
        match self.peek()? {
            b'0' => self.at += 1,
            b'1'..=b'9' => {
                while self.peek().is_some_and(|b| b.is_ascii_digit()) {
                    self.at += 1;
                }
            }
            _ => return None,
        }
        let is_plain = self.at - start <= 18 && !matches!(self.peek(), Some(b'.' | b'e' | b'E' | b'0'..=b'9'));
        is_plain.then_some(())
    }

    #[inline(always)]
    fn literal(&mut self, word: &[u8]) -> Option<()> {
        let bytes = self.text.as_bytes();
        bytes.get(self.at..)?.starts_with(word).then(|| self.at += word.len())
    }

    /// At a value: checks it and steps past it; its text.
    #[inline(always)]
    fn value(&mut self) -> Option<&'a str> {
        self.next()?;
        let start = self.at;
        // One bit per open container, the innermost lowest: set for an object.
        let mut open: u64 = 0;
        let mut depth = 0;
        loop {
            // At a value.
            match self.next()? {
                b'"' => {
                    self.string()?;
                }
                bracket @ (b'{' | b'[') => {
                    self.at += 1;
                    let is_object = bracket == b'{';
                    if !self.is_empty_container(if is_object { b'}' } else { b']' }) {
                        depth += 1;
                        if depth > MAX_DEPTH {
                            return None;
                        }
                        open = open << 1 | u64::from(is_object);
                        if is_object {
                            self.key()?;
                        }
                        continue;
                    }
                }
                b'n' => self.literal(b"null")?,
                b't' => self.literal(b"true")?,
                b'f' => self.literal(b"false")?,
                b'-' | b'0'..=b'9' => self.number()?,
                _ => return None,
            }
            // After a value: close what it ends, up to the next value.
            loop {
                if depth == 0 {
                    return Some(self.slice(start, self.at));
                }
                let is_object = open & 1 == 1;
                let byte = self.next()?;
                self.at += 1;
                match byte {
                    b',' if is_object => {
                        self.key()?;
                        break;
                    }
                    b',' => break,
                    b'}' if is_object => {}
                    b']' if !is_object => {}
                    _ => return None,
                }
                open >>= 1;
                depth -= 1;
            }
        }
    }

    /// The record's body, an object: its kept keys, written over `body`'s.
    #[inline(always)]
    fn body(&mut self, keep: &impl Keep, body: &mut Map<String, Value>) -> Option<()> {
        self.eat(b'{')?;
        // The kept keys met, so that those of the earlier body not met again are dropped.
        let mut met = [""; MAX_KEPT];
        let mut n = 0;
        if !self.is_empty_container(b'}') {
            loop {
                let key = self.key()?;
                if keep.keeps(key) {
                    let first = self.next()?;
                    let start = self.at;
                    match first {
                        b'"' => match self.string()? {
                            (text, false) => {
                                if let Some(Value::String(s)) = body.get_mut(key) {
                                    s.clear();
                                    s.push_str(text);
                                } else {
                                    body.insert(key.to_string(), Value::String(text.to_string()));
                                }
                            }
                            (_, true) => {
                                body.insert(key.to_string(), parse(self.slice(start, self.at))?);
                            }
                        },
                        _ => {
                            body.insert(key.to_string(), parse(self.value()?)?);
                        }
                    }
                    if !met[..n].contains(&key) {
                        *met.get_mut(n)? = key;
                        n += 1;
                    }
                } else {
                    self.value()?;
                }
                if self.is_last_member()? {
                    break;
                }
            }
        }
        // Every key met is in `body`: any other is the earlier body's.
        if body.len() != n {
            body.retain(|key, _| met[..n].contains(&key.as_str()));
        }
        Some(())
    }
}

/// The quotes and backslashes of the first 64 bytes of `bytes` (a line's end padded with
/// spaces), a bit each, found eight bytes at a time; `None` if they hold a control character.
fn marks(bytes: &[u8]) -> Option<u64> {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const LOWS: u64 = u64::from_ne_bytes([0x7f; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    /// The high bit of each byte of `x` that is zero.
    fn zero_bytes(x: u64) -> u64 {
        !(((x & LOWS) + LOWS) | x) & HIGHS
    }
    let mut padded = [b' '; 64];
    let block = match bytes.first_chunk::<64>() {
        Some(block) => block,
        None => {
            padded[..bytes.len()].copy_from_slice(bytes);
            &padded
        }
    };
    let (mut marks, mut control) = (0, 0);
    for (i, word) in block.as_chunks::<8>().0.iter().enumerate() {
        let word = u64::from_le_bytes(*word);
        // Some byte is below 0x20 exactly when this has a high bit set.
        control |= word.wrapping_sub(ONES * 0x20) & !word;
        let found = zero_bytes(word ^ (ONES * u64::from(b'"'))) | zero_bytes(word ^ (ONES * u64::from(b'\\')));
        // The high bit of byte `k` to bit `k`, then to the word's place in the block.
        marks |= ((found >> 7).wrapping_mul(0x0102_0408_1020_4080) >> 56) << (8 * i);
    }
    (control & HIGHS == 0).then_some(marks)
}

/// The scanner against the exact reader, for the tests below and the `record_read` fuzz
/// target (`cargo fuzz` builds with `cfg(fuzzing)`).
#[cfg(any(test, fuzzing))]
pub(in crate::replay) mod agreement {
    use serde_json::Value;

    use super::super::{Bodies, Fields};
    use super::fields;

    /// The body keys kept: some of the samples', and some no record has.
    pub(super) fn keep(key: &str) -> bool {
        matches!(key, "sendID" | "recvID" | "blackUserID" | "n" | "z" | "From_Account")
    }

    /// Panics unless the scanner reads `line` as the exact reader does, or leaves it to it,
    /// and the same whether it writes the body over nothing or over an earlier one. Whether
    /// the scanner read it.
    pub fn check(line: &str) -> bool {
        let Some(fast) = fields(line, &keep, &mut Bodies::default()) else { return false };
        assert_eq!(Ok(&fast), Fields::parse_exact(line, &keep).as_ref(), "{line}");
        let Value::Object(earlier) = serde_json::json!({"sendID": "s", "recvID": 1, "z": [1], "a": "b"}) else {
            unreachable!()
        };
        let mut bodies = Bodies::default();
        for command in ["c", "callbackBeforeAddBlackCommand", "callbackBeforeSendSingleMsgCommand"] {
            bodies.keep(command, earlier.clone());
        }
        assert_eq!(fields(line, &keep, &mut bodies).as_ref(), Some(&fast), "over an earlier body: {line}");
        true
    }
}

#[cfg(test)]
mod tests {
    use super::super::Bodies;
    use super::agreement::{self, keep};
    use super::fields;

    /// Record lines as the server writes them, and odder ones of the shape the scanner reads.
    const LINES: [&str; 6] = [
        r#"{"time":"2026-12-01T00:00:00.000Z","source":"openim","command":"callbackBeforeAddBlackCommand","operation_id":"op-0","decision":"allow","policy_version":"ce0c","latency_us":40,"body":{"blackUserID":"u_551517","callbackCommand":"callbackBeforeAddBlackCommand","ownerUserID":"u_995165"}}"#,
        r#"{"time":"2026-12-01T00:00:00.002Z","source":"openim","command":"callbackBeforeSendSingleMsgCommand","decision":"deny","rule":"r1","error_code":20001,"body":{"atUserList":null,"content":"{\"content\":\"Hi \\ Bob\/\b\f\n\r\t\"}","contentType":101,"ex":"","recvID":"u_525944","sendID":"u_819661","seq":0,"status":-1,"z":[true,false,{"a":[[]],"b":{}}]}}"#,
        r#"{"time":"t","source":"openim","command":"c","decision":"allow","would":{"decision":"deny","rule":"w","error_code":151},"dry_run":[{"rule":"a","would":"deny"},{"rule":"b","would":"allow"}],"body":{"sendID":"a\"b","recvID":["x","y"],"n":-0,"m":0}}"#,
        r#"{"time":"t","source":"tencent","command":"C2C.CallbackBeforeSendMsg","decision":"allow","items":[{"i":0}],"body":{"From_Account":"é😀","To_Account":"b"}}"#,
        r#" { "time" : "t" , "source":"openim" ,"body" : { "sendID" : "x" , "recvID" : [ 1 , "y" ] } , "rule" : null } "#,
        r#"{"body":{},"command":"a","command":"b","body":{"sendID":"1","sendID":"2"},"error_code":-999999999999999999}"#,
    ];

    #[test]
    fn reads_the_lines_of_its_shape_as_serde_json_does() {
        for line in LINES {
            assert!(agreement::check(line), "left to the exact reader: {line}");
        }
    }

    #[test]
    fn leaves_what_it_does_not_read() {
        for line in [
            r#"{"time":"\u0074"}"#,
            r#"{"body":{"sendID":"\ud800"}}"#,
            r#"{"body":{"x":1.5}}"#,
            r#"{"body":{"x":1e400}}"#,
            r#"{"body":{"x":1234567890123456789012}}"#,
            "{\"body\":{\"x\":\t1}}",
            "{\"time\":\"a\u{1}b\"}",
            r#"{"body":[1]}"#,
            r#"{"bo\u0064y":{}}"#,
            r#"{"body":{"x":01}}"#,
            r#"{"body":{"x":[1,]}}"#,
            r#"{"body":{}} x"#,
            r#"{"body":{}"#,
            "",
        ] {
            assert!(fields(line, &keep, &mut Bodies::default()).is_none(), "{line}");
        }
        let body = |n: usize| (0..n).map(|i| format!(r#""k{i}":{i}"#)).collect::<Vec<_>>().join(",");
        let all = |_: &str| true;
        assert!(
            fields(&format!(r#"{{"body":{{{}}}}}"#, body(33)), &all, &mut Bodies::default()).is_none(),
            "33 keys kept"
        );
        assert!(fields(&format!(r#"{{"body":{{{},"k0":1}}}}"#, body(32)), &all, &mut Bodies::default()).is_some());
        let deep = format!(r#"{{"body":{{"x":{}{}}}}}"#, "[".repeat(62), "]".repeat(62));
        assert!(fields(&deep, &keep, &mut Bodies::default()).is_none());
        let deep_enough = format!(r#"{{"body":{{"x":{}{}}}}}"#, "[".repeat(61), "]".repeat(61));
        assert!(agreement::check(&deep_enough));
    }

    /// Every line one edit away from [`LINES`] (a byte deleted, or one of JSON's own bytes
    /// put in or over one), and the bodies the fuzzers kept, as records.
    #[test]
    fn agrees_with_serde_json_one_edit_away_and_on_the_fuzz_seeds() {
        const BYTES: &[u8] = b"\"\\{}[],: 0-1.eEnultrfx/\t";
        let mut read = 0;
        for line in LINES {
            let line = line.as_bytes();
            for at in 0..line.len() {
                let mut edits = vec![[&line[..at], &line[at + 1..]].concat()];
                for &b in BYTES {
                    edits.push([&line[..at], &[b], &line[at..]].concat());
                    edits.push([&line[..at], &[b], &line[at + 1..]].concat());
                }
                for edit in edits {
                    if let Ok(edit) = std::str::from_utf8(&edit) {
                        read += usize::from(agreement::check(edit));
                    }
                }
            }
        }
        let seeds = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz_seeds/openim_decode");
        for seed in std::fs::read_dir(seeds).unwrap() {
            let body = std::fs::read(seed.unwrap().path()).unwrap();
            if let Ok(body) = std::str::from_utf8(&body) {
                read += usize::from(agreement::check(&format!(r#"{{"time":"t","body":{body}}}"#)));
            }
        }
        assert!(read > 10_000, "only {read} lines read by the scanner");
    }
}
