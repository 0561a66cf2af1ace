#![allow(clippy::unwrap_used, clippy::expect_used, reason = "soak harness")]
//! Soak driver for a running `callgate serve` (issue 6): a fixed request rate for a long time,
//! a mix of valid, invalid and hostile callbacks, every answer checked byte for byte against
//! what this driver knows it must be, the policy directory rewritten every second, and the
//! server's resident memory sampled. Run it through `bench/soak.sh`, which builds, writes the
//! policy set with `soak write-policies DIR`, starts the server on 127.0.0.1 and passes its
//! addresses and pid to `soak run`.
//!
//! Expected answers never come from callgate's own decision code: the policy set is written
//! here, and `decide` / `expect_openim` / `expect_tencent` below restate the README's rules
//! (wire formats, error codes, the order of the checks). JSON parse error texts come from
//! serde_json, the parser the server uses.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use reqwest::Method;
use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The server's default body limit (`--max-body-bytes`), which the soak leaves as it is.
const MAX_BODY: usize = 1 << 20;
/// A request not answered in this time counts as a hang.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// IDs in the `vip` list: `vip_000` … `vip_199`.
const VIP_COUNT: u32 = 200;
/// Rules in the set (10-rules.yaml has 7, 20-extra.yaml 1).
const RULE_COUNT: u64 = 8;
/// How many wrong answers (and transport errors) are kept as examples.
const EXAMPLES: usize = 8;

// ---- the policy set ---------------------------------------------------------------------

const RULES_YAML: &str = r#"# Soak policy set, written by examples/soak.rs, which knows every answer it gives.
lists:
  vip: { file: lists/vip.txt }

rules:
  - id: vip-allow                        # in_list allow, ahead of every deny
    when:
      ownerUserID: { in_list: vip }
    decision: allow

  - id: banned-sender                    # equals deny
    when:
      sendID: { equals: u_banned }
    decision: deny
    error: { code: 20010, message: "sender is banned", detail: "contact support" }

  - id: frozen-group                     # equals a number, matched by its text
    when:
      groupID: { equals: 999000111 }
    decision: deny
    error: { code: 20014, message: "group \"999000111\" is frozen" }

  - id: system-accounts-stay-blocked     # regex deny, on a glob of commands
    on: ["callback*Black*"]
    when:
      blackUserID: { regex: '^(sys|bot)_[0-9]+$' }
    decision: deny
    error: { code: 20011, message: "système: accounts stay blocked ✓ <&>", detail: "tab\there" }

  - id: trial-guests                     # dry run: recorded, never answers
    when:
      fromUserID: { regex: '^guest_' }
    decision: deny
    error: { code: 20012, message: "guests may not do this yet" }
    mode: dry_run

  - id: friend-request-cap               # a cap the driver drives past on purpose
    on: [callbackBeforeAddFriendCommand]
    when:
      fromUserID: { regex: '^capt_' }
    rate_cap: { key: [fromUserID], max: 3, per: 1h }
    decision: deny
    error: { code: 20013, message: "too many friend requests, try later" }

  - id: global-cap                       # a cap on every callback, never reached
    rate_cap: { key: [sendID], max: 100000000, per: 10s }
    decision: deny
    error: { code: 20015, message: "global cap" }
"#;

/// The file that alternates on every rewrite: a rule no callback of the driver reaches.
fn extra_yaml(rev: u8) -> String {
    format!(
        "# Revision {rev}: this rule is never reached by the soak's callbacks.\nrules:\n  - id: unused-{rev}\n    on: [callbackSoakNeverSentCommand]\n    decision: deny\n    error: {{ code: {}, message: \"unused revision {rev}\" }}\n",
        29000 + u32::from(rev)
    )
}

/// The list file, with a comment that alternates (same IDs, new version).
fn vip_list(rev: u8) -> String {
    let mut text = format!("# vip list, revision {rev}\n");
    for i in 0..VIP_COUNT {
        text.push_str(&format!("vip_{i:03}\n"));
    }
    text
}

fn write_and_rename(dir: &Path, rel: &str, text: &str) -> std::io::Result<()> {
    let path = dir.join(rel);
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("x");
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    std::fs::write(&tmp, text)?;
    std::fs::rename(tmp, path)
}

/// Writes revision `rev` of the changing files, by write-and-rename.
fn write_revision(dir: &Path, rev: u8) -> std::io::Result<()> {
    write_and_rename(dir, "lists/vip.txt", &vip_list(rev))?;
    write_and_rename(dir, "20-extra.yaml", &extra_yaml(rev))
}

/// Writes the whole set, revision 0.
fn write_policies(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir.join("lists"))?;
    std::fs::write(dir.join("10-rules.yaml"), RULES_YAML)?;
    write_revision(dir, 0)
}

// ---- expected answers -------------------------------------------------------------------

const ALLOW: &[u8] = br#"{"actionCode":0,"errCode":0,"errMsg":"","errDlt":"","nextCode":0}"#;
const TENCENT_OK: &[u8] = br#"{"ActionStatus":"OK","ErrorCode":0,"ErrorInfo":""}"#;
const CAPPED: (i64, &str, &str) = (20013, "too many friend requests, try later", "");

fn quote(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

fn refusal(code: i64, message: &str, detail: &str) -> Vec<u8> {
    format!(
        r#"{{"actionCode":0,"errCode":{code},"errMsg":{},"errDlt":{},"nextCode":1}}"#,
        quote(message),
        quote(detail)
    )
    .into_bytes()
}

/// A request callgate could not decode: `actionCode` 1, never a refusal.
fn openim_error(code: i64, message: &str) -> Vec<u8> {
    format!(r#"{{"actionCode":1,"errCode":{code},"errMsg":{},"errDlt":"","nextCode":0}}"#, quote(message)).into_bytes()
}

fn tencent_fail(message: &str) -> Vec<u8> {
    format!(r#"{{"ActionStatus":"FAIL","ErrorCode":1,"ErrorInfo":{}}}"#, quote(message)).into_bytes()
}

static VIP: LazyLock<BTreeSet<String>> = LazyLock::new(|| (0..VIP_COUNT).map(|i| format!("vip_{i:03}")).collect());

/// A field's text as rules compare it: strings as they are, numbers as serde_json prints them.
fn text(v: Option<&Value>) -> Option<String> {
    match v {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    }
}

/// `^(sys|bot)_[0-9]+$`, by hand.
fn is_system_account(t: &str) -> bool {
    let rest = t.strip_prefix("sys_").or_else(|| t.strip_prefix("bot_"));
    rest.is_some_and(|r| !r.is_empty() && r.bytes().all(|b| b.is_ascii_digit()))
}

/// The glob `callback*Black*`.
fn is_black_command(c: &str) -> bool {
    c.strip_prefix("callback").is_some_and(|rest| rest.contains("Black"))
}

/// The answer of the soak policy set to a decoded OpenIM callback. `None` for the capped
/// friend requests, whose answer depends on how many came before (the cap task knows).
fn decide(command: &str, body: &Map<String, Value>) -> Option<Vec<u8>> {
    if text(body.get("ownerUserID")).is_some_and(|t| VIP.contains(&t)) {
        return Some(ALLOW.to_vec());
    }
    if text(body.get("sendID")).as_deref() == Some("u_banned") {
        return Some(refusal(20010, "sender is banned", "contact support"));
    }
    if text(body.get("groupID")).as_deref() == Some("999000111") {
        return Some(refusal(20014, "group \"999000111\" is frozen", ""));
    }
    if is_black_command(command) && text(body.get("blackUserID")).is_some_and(|t| is_system_account(&t)) {
        return Some(refusal(20011, "système: accounts stay blocked ✓ <&>", "tab\there"));
    }
    if command == "callbackBeforeAddFriendCommand"
        && text(body.get("fromUserID")).is_some_and(|t| t.starts_with("capt_"))
    {
        return None;
    }
    Some(ALLOW.to_vec())
}

fn is_valid_command(c: &str) -> bool {
    !c.is_empty() && c.len() <= 128 && c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// What callgate must answer.
#[derive(Debug, Clone)]
enum Expect {
    /// One of these exact (status, body) answers.
    Exact(Vec<(u16, Vec<u8>)>),
    /// One of these statuses, any body: answers of the HTTP layer (hyper), not of callgate.
    Status(Vec<u16>),
    /// One of these statuses with a JSON object body.
    JsonStatus(Vec<u16>),
}

impl Expect {
    fn one(status: u16, body: Vec<u8>) -> Expect {
        Expect::Exact(vec![(status, body)])
    }

    fn matches(&self, status: u16, body: &[u8]) -> bool {
        match self {
            Expect::Exact(answers) => answers.iter().any(|(s, b)| *s == status && b == body),
            Expect::Status(statuses) => statuses.contains(&status),
            Expect::JsonStatus(statuses) => {
                statuses.contains(&status) && matches!(serde_json::from_slice::<Value>(body), Ok(Value::Object(_)))
            }
        }
    }

    fn describe(&self) -> String {
        match self {
            Expect::Exact(answers) => {
                answers.iter().map(|(s, b)| format!("{s} {}", clip(b, 300))).collect::<Vec<_>>().join("  OR  ")
            }
            Expect::Status(s) => format!("status in {s:?}, any body"),
            Expect::JsonStatus(s) => format!("status in {s:?}, a JSON object body"),
        }
    }
}

/// The answer to an OpenIM request: `path` without query, raw as sent.
fn expect_openim(method: &str, path: &str, query: &str, body: &[u8]) -> Expect {
    let Some(tail) = path.strip_prefix("/openim").filter(|t| t.is_empty() || t.starts_with('/')) else {
        return Expect::one(404, openim_error(1010, "no such endpoint: OpenIM callbacks go to /openim/{command}"));
    };
    if method != "POST" {
        return Expect::one(405, openim_error(1009, "callbacks must be POSTed"));
    }
    if body.len() > MAX_BODY {
        return Expect::one(400, openim_error(1003, &format!("body is larger than the limit of {MAX_BODY} bytes")));
    }
    let tail = tail.trim_matches('/');
    let url_command: Option<String> = if tail.is_empty() {
        form_urlencoded::parse(query.as_bytes()).find(|(k, v)| k == "command" && !v.is_empty()).map(|(_, v)| v.into())
    } else {
        Some(tail.to_string())
    };
    let value: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return Expect::one(400, openim_error(1001, &format!("body is not valid JSON: {e}"))),
    };
    let Value::Object(map) = value else {
        return Expect::one(400, openim_error(1002, &format!("body must be a JSON object, got {}", json_type(&value))));
    };
    let body_command = match map.get("callbackCommand") {
        None => None,
        Some(Value::String(c)) => Some(c.clone()),
        Some(_) => return Expect::one(400, openim_error(1008, "`callbackCommand` must be a string")),
    };
    let command = match (url_command, body_command) {
        (Some(url), Some(body)) if url != body => {
            return Expect::one(
                400,
                openim_error(
                    1006,
                    &format!("callback command in the URL is `{url}` but the body's `callbackCommand` is `{body}`"),
                ),
            );
        }
        (Some(c), _) | (None, Some(c)) => c,
        (None, None) => {
            return Expect::one(
                400,
                openim_error(
                    1005,
                    "no callback command: POST to /openim/{command} or send `callbackCommand` in the body",
                ),
            );
        }
    };
    if !is_valid_command(&command) {
        let shown: String = command.chars().take(128).collect();
        return Expect::one(
            400,
            openim_error(
                1007,
                &format!("callback command `{shown}` is not valid: use letters, digits, `_` and `.`, at most 128"),
            ),
        );
    }
    match decide(&command, &map) {
        Some(answer) => Expect::one(200, answer),
        None => Expect::Exact(vec![(200, ALLOW.to_vec()), (200, refusal(CAPPED.0, CAPPED.1, CAPPED.2))]),
    }
}

/// The shape the server requires of a blocklist callback's `PairList`.
#[derive(Deserialize)]
struct Pair {
    #[serde(rename = "From_Account")]
    _from: String,
    #[serde(rename = "To_Account")]
    _to: String,
}

fn tencent_sign(token: &str, time: &str) -> String {
    hex::encode(Sha256::digest(format!("{token}{time}").as_bytes()))
}

/// The answer to `POST /tencent?{query}` at driver time `now` (Unix seconds); the server
/// reads its clock a moment later, so a stale time's skew may be a second or two more.
fn expect_tencent(app_id: &str, token: &str, query: &str, body: &[u8], now: i64) -> Expect {
    let fail = |status: u16, message: &str| Expect::one(status, tencent_fail(message));
    if body.len() > MAX_BODY {
        return fail(413, &format!("body is larger than the limit of {MAX_BODY} bytes"));
    }
    let (mut sdk, mut command, mut sign, mut time) = (None, None, None, None);
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        let v = v.into_owned();
        match &*k {
            "SdkAppid" | "SdkAppId" => sdk = Some(v),
            "CallbackCommand" => command = Some(v),
            "Sign" => sign = Some(v),
            "RequestTime" => time = Some(v),
            _ => {}
        }
    }
    match &sdk {
        None => return fail(403, "missing SdkAppid in the query"),
        Some(got) if got != app_id => {
            let shown: String = got.chars().take(64).collect();
            return fail(403, &format!("SdkAppid `{shown}` is not this server's app"));
        }
        Some(_) => {}
    }
    let Some(sign) = sign else { return fail(401, "missing Sign in the query; callback authentication is on") };
    let Some(time_text) = time else {
        return fail(401, "missing RequestTime in the query; callback authentication is on");
    };
    let Ok(t) = time_text.parse::<i64>() else {
        let shown: String = time_text.chars().take(32).collect();
        return fail(401, &format!("RequestTime `{shown}` is not a Unix time in seconds"));
    };
    let skew = now.abs_diff(t);
    if skew > 55 {
        // Far enough from 60 s that the server's later clock reading cannot change the verdict.
        assert!(skew > 65, "the driver only sends fresh times or times far off");
        return Expect::Exact(
            (skew.saturating_sub(2)..=skew + 2)
                .map(|s| (401, tencent_fail(&format!("RequestTime is {s} s from now; at most 60 s is accepted"))))
                .collect(),
        );
    }
    if sign.to_ascii_lowercase() != tencent_sign(token, &time_text) {
        return fail(401, "Sign does not match sha256(token + RequestTime)");
    }
    let value: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return fail(400, &format!("body is not valid JSON: {e}")),
    };
    let Value::Object(map) = value else {
        return fail(400, &format!("body must be a JSON object, got {}", json_type(&value)));
    };
    let body_command = map.get("CallbackCommand").and_then(Value::as_str).map(str::to_string);
    let command = match (command, body_command) {
        (Some(q), Some(b)) if q != b => {
            return fail(400, &format!("CallbackCommand in the query is `{q}` but the body's is `{b}`"));
        }
        (Some(c), _) | (None, Some(c)) => c,
        (None, None) => return fail(400, "no CallbackCommand in the query or the body"),
    };
    if !is_valid_command(&command) {
        let shown: String = command.chars().take(128).collect();
        return fail(
            400,
            &format!("CallbackCommand `{shown}` is not valid: use letters, digits, `_` and `.`, at most 128"),
        );
    }
    if command == "Sns.CallbackBlackListAdd" || command == "Sns.CallbackBlackListDelete" {
        let pairs = map.get("PairList").unwrap_or(&Value::Null);
        if let Err(e) = Vec::<Pair>::deserialize(pairs) {
            return fail(
                400,
                &format!("{command}: PairList must be a list of {{\"From_Account\":…,\"To_Account\":…}}: {e}"),
            );
        }
    }
    Expect::one(200, TENCENT_OK.to_vec())
}

// ---- requests ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Valid,
    Invalid,
    Hostile,
}

const CLASSES: [Class; 3] = [Class::Valid, Class::Invalid, Class::Hostile];

impl Class {
    fn name(self) -> &'static str {
        match self {
            Class::Valid => "valid",
            Class::Invalid => "invalid",
            Class::Hostile => "hostile",
        }
    }
}

#[derive(Debug, Clone)]
enum Target {
    /// Through reqwest: method, path with query, extra headers, body.
    Http { method: Method, path: String, headers: Vec<(&'static str, String)>, body: Bytes },
    /// Bytes written as they are on a new connection (`Connection: close`): for what a URL
    /// library would normalise away (`..`, invalid UTF-8, chunked bodies, huge heads).
    Raw(Bytes),
}

#[derive(Debug, Clone)]
struct Req {
    class: Class,
    kind: &'static str,
    target: Target,
    expect: Expect,
    /// A reset connection is an acceptable answer too: the server may close a connection
    /// whose body or head it refused before reading it all.
    is_reset_ok: bool,
}

impl Req {
    fn describe(&self) -> String {
        match &self.target {
            Target::Http { method, path, headers, body } => {
                let hs: Vec<String> = headers.iter().map(|(k, v)| format!("{k}: {}", clip(v.as_bytes(), 60))).collect();
                format!(
                    "{method} {} [{}] body({} B) {}",
                    clip(path.as_bytes(), 160),
                    hs.join("; "),
                    body.len(),
                    clip(body, 240)
                )
            }
            Target::Raw(bytes) => format!("raw({} B) {}", bytes.len(), clip(bytes, 400)),
        }
    }
}

fn clip(b: &[u8], n: usize) -> String {
    let s = String::from_utf8_lossy(&b[..b.len().min(n)]).into_owned();
    let s = s.replace('\r', "\\r").replace('\n', "\\n");
    if b.len() > n { format!("{s}…") } else { s }
}

fn openim_req(
    class: Class,
    kind: &'static str,
    method: Method,
    path_and_query: String,
    body: Vec<u8>,
    op_id: String,
) -> Req {
    let (path, query) = path_and_query.split_once('?').unwrap_or((&path_and_query, ""));
    let expect = expect_openim(method.as_str(), path, query, &body);
    let headers = vec![("content-type", "application/json; charset=utf-8".to_string()), ("operationID", op_id)];
    Req {
        class,
        kind,
        target: Target::Http { method, path: path_and_query, headers, body: Bytes::from(body) },
        expect,
        is_reset_ok: false,
    }
}

/// A raw POST; the caller gives the expectation.
fn raw_post(target: &[u8], extra_headers: &[u8], body: &[u8]) -> Bytes {
    let mut r = Vec::with_capacity(body.len() + 256);
    r.extend_from_slice(b"POST ");
    r.extend_from_slice(target);
    r.extend_from_slice(b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    r.extend_from_slice(b"Content-Type: application/json; charset=utf-8\r\noperationID: raw\r\n");
    r.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    r.extend_from_slice(extra_headers);
    r.extend_from_slice(b"\r\n");
    r.extend_from_slice(body);
    Bytes::from(r)
}

// ---- samples ----------------------------------------------------------------------------

struct Sample {
    command: String,
    /// The body as OpenIM sends it: one line, keys in Go's order, a final newline.
    wire: Vec<u8>,
    body: Map<String, Value>,
}

/// Strips whitespace outside strings, keeping key order.
fn minify(json: &[u8]) -> Vec<u8> {
    let (mut out, mut in_string, mut escaped) = (Vec::with_capacity(json.len()), false, false);
    for &b in json {
        if in_string {
            out.push(b);
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else if !b.is_ascii_whitespace() {
            out.push(b);
            in_string = b == b'"';
        }
    }
    out
}

fn load_samples(dir: &Path) -> Vec<Sample> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("samples {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    paths.sort();
    paths
        .iter()
        .map(|p| {
            let raw = std::fs::read(p).unwrap();
            let mut wire = minify(&raw);
            let Value::Object(body) = serde_json::from_slice(&wire).unwrap() else { panic!("{}", p.display()) };
            wire.push(b'\n');
            let command = p.file_stem().unwrap().to_string_lossy().into_owned();
            Sample { command, wire, body }
        })
        .collect()
}

// ---- random -----------------------------------------------------------------------------

/// SplitMix64: small, fast, reproducible from a seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn chance(&mut self, p: f64) -> bool {
        ((self.next() >> 11) as f64 / (1u64 << 53) as f64) < p
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    fn pick_copy<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }

    fn weighted<T: Copy>(&mut self, table: &[(u32, T)]) -> T {
        let total: u32 = table.iter().map(|(w, _)| w).sum();
        let mut x = self.below(total as usize) as u32;
        for (w, t) in table {
            if x < *w {
                return *t;
            }
            x -= w;
        }
        table[0].1
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }

    fn alnum(&mut self, n: usize) -> String {
        const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
        (0..n).map(|_| CHARS[self.below(CHARS.len())] as char).collect()
    }
}

// ---- the mix ----------------------------------------------------------------------------

/// What every generator needs.
struct Mix {
    openim: Vec<Sample>,
    tencent: Vec<Sample>,
    app_id: String,
    token: String,
    /// `127.0.0.1:PORT` of the callback listener, for absolute-form request targets.
    authority: String,
}

fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

impl Mix {
    fn generate(&self, rng: &mut Rng, n: u64) -> Req {
        match rng.weighted(&[(80, Class::Valid), (10, Class::Invalid), (10, Class::Hostile)]) {
            Class::Valid => self.valid(rng, n),
            Class::Invalid => self.invalid(rng, n),
            Class::Hostile => self.hostile(rng, n),
        }
    }

    /// A URL for `command`, in one of the forms OpenIM versions use.
    fn url_for(rng: &mut Rng, command: &str) -> String {
        match rng.below(7) {
            0 | 1 => format!("/openim/{command}"),
            2 => format!("/openim//{command}/"),
            3 => format!("/openim?command={command}"),
            4 => format!("/openim?contenttype=json&command={command}"),
            5 => format!("/openim/{command}?contenttype=json&key=eyJzZW5kSUQiOiJ1XzEwMDEifQ%3D%3D"),
            _ => "/openim".to_string(),
        }
    }

    fn valid(&self, rng: &mut Rng, n: u64) -> Req {
        let op = format!("op-{n}");
        if rng.chance(0.375) {
            let s = rng.pick(&self.openim);
            let url = Self::url_for(rng, &s.command);
            return openim_req(Class::Valid, "sample", Method::POST, url, s.wire.clone(), op);
        }
        // Crafted: a sample with fields set so that each rule holds, or nearly holds.
        let black: Vec<&Sample> = self.openim.iter().filter(|s| is_black_command(&s.command)).collect();
        let s = if rng.chance(0.3) { rng.pick_copy(&black) } else { rng.pick(&self.openim) };
        let mut body = s.body.clone();
        let mutations = 1 + rng.below(3);
        for _ in 0..mutations {
            match rng.below(6) {
                0 => {
                    let v = rng
                        .pick(&[
                            Value::from("u_banned"),
                            Value::from("u_banned"),
                            Value::from("u_banned "),
                            Value::from("U_BANNED"),
                            Value::from("u_bann"),
                            Value::from("u_1001"),
                            Value::from(12345),
                        ])
                        .clone();
                    body.insert("sendID".into(), v);
                }
                1 => {
                    let v = match rng.below(6) {
                        0..=2 => Value::from(format!("vip_{:03}", rng.below(VIP_COUNT as usize))),
                        3 => Value::from(rng.pick(&["vip_200", "vip_1", "VIP_001", " vip_001", "u_1001"]).to_string()),
                        4 => Value::from(7),
                        _ => Value::Null,
                    };
                    body.insert("ownerUserID".into(), v);
                }
                2 => {
                    let v = rng.pick(&[
                        "sys_1",
                        "bot_42",
                        "sys_00123",
                        "sys_",
                        "sys_12a",
                        "xsys_1",
                        "SYS_1",
                        "bot_9\n",
                        "u_1005",
                    ]);
                    body.insert("blackUserID".into(), Value::from(*v));
                }
                3 => {
                    let v = rng
                        .pick(&[
                            Value::from("999000111"),
                            Value::from(999_000_111),
                            Value::from(999_000_111.0),
                            Value::from("0999000111"),
                            Value::from(" 999000111"),
                            Value::from("3259018725"),
                        ])
                        .clone();
                    body.insert("groupID".into(), v);
                }
                4 => {
                    let v = rng.pick(&["guest_7", "guest_", "u_1001", "Guest_1"]);
                    body.insert("fromUserID".into(), Value::from(*v));
                }
                _ => {
                    body.remove("callbackCommand");
                }
            }
        }
        let mut wire = serde_json::to_vec(&body).unwrap();
        wire.push(b'\n');
        let url = if body.contains_key("callbackCommand") {
            Self::url_for(rng, &s.command)
        } else {
            format!("/openim/{}", s.command)
        };
        openim_req(Class::Valid, "crafted", Method::POST, url, wire, op)
    }

    fn invalid(&self, rng: &mut Rng, n: u64) -> Req {
        let op = format!("op-{n}");
        let s = rng.pick(&self.openim);
        let c = s.command.as_str();
        let kind = rng.weighted(&[
            (150, "not-json"),
            (100, "empty"),
            (150, "not-object"),
            (150, "command-mismatch"),
            (100, "no-command"),
            (100, "command-not-string"),
            (100, "bad-command"),
            (100, "wrong-method"),
            (50, "unknown-path"),
            (5, "oversize"),
            (3, "oversize-chunked"),
            (1, "at-limit"),
            (10, "tencent-wrong-method"),
        ]);
        let post =
            |url: String, body: &[u8]| openim_req(Class::Invalid, kind, Method::POST, url, body.to_vec(), op.clone());
        match kind {
            "not-json" => {
                let b: &[u8] = rng.pick_copy(&[
                    &b"hello"[..],
                    b"{",
                    b"{\"a\":}",
                    b"{'callbackCommand':'x'}",
                    b"{\"callbackCommand\":\"x\",}",
                    b"nul",
                    "\u{feff}{}".as_bytes(),
                    b"{\"a\":1}{\"b\":2}",
                ]);
                post(format!("/openim/{c}"), b)
            }
            "empty" => post(Self::url_for(rng, c), b""),
            "not-object" => {
                let b: &[u8] = rng.pick_copy(&[
                    &b"[]"[..],
                    b"[{\"callbackCommand\":\"x\"}]",
                    b"42",
                    b"\"str\"",
                    b"null",
                    b"true\n",
                ]);
                post(format!("/openim/{c}"), b)
            }
            "command-mismatch" => {
                let other = &rng.pick(&self.openim).command;
                let other = if other == c { "callbackSomethingElse" } else { other.as_str() };
                let url = if rng.chance(0.5) { format!("/openim/{other}") } else { format!("/openim?command={other}") };
                post(url, &s.wire)
            }
            "no-command" => {
                let url =
                    rng.pick(&["/openim", "/openim/", "/openim?command=", "/openim?contenttype=json"]).to_string();
                post(url, br#"{"ownerUserID":"u_1001","blackUserID":"sys_1"}"#)
            }
            "command-not-string" => {
                let v = rng.pick(&["5", "null", "{}", "[\"x\"]", "true"]);
                let body = format!(r#"{{"callbackCommand":{v},"sendID":"u_banned"}}"#);
                post(Self::url_for(rng, c), body.as_bytes())
            }
            "bad-command" => {
                let url = match rng.below(5) {
                    0 => "/openim/callback-Foo".to_string(),
                    1 => "/openim/callback%20Foo".to_string(),
                    2 => "/openim?command=a+b".to_string(),
                    3 => format!("/openim/{}", "c".repeat(129 + rng.below(200))),
                    _ => "/openim/a/b".to_string(),
                };
                post(url, br#"{"sendID":"u_banned"}"#)
            }
            "wrong-method" => {
                let m = rng.pick(&[Method::GET, Method::PUT, Method::DELETE, Method::PATCH, Method::OPTIONS]).clone();
                let body = if m == Method::GET { Vec::new() } else { s.wire.clone() };
                openim_req(Class::Invalid, kind, m, format!("/openim/{c}"), body, op)
            }
            "unknown-path" => {
                let url = rng.pick(&["/foo", "/", "/openimx/x", "/OPENIM/x", "/v1/status", "/tencent/x", "/open/im"]);
                post(url.to_string(), &s.wire)
            }
            "oversize" => {
                let mut body = Vec::with_capacity(MAX_BODY + 2048);
                body.extend_from_slice(br#"{"callbackCommand":"x","pad":""#);
                body.resize(MAX_BODY + 1 + rng.below(1024), b'a');
                let mut req = post(format!("/openim/{c}"), &body);
                req.is_reset_ok = true;
                req
            }
            "oversize-chunked" => {
                let mut r = Vec::with_capacity(MAX_BODY + 4096);
                r.extend_from_slice(
                    format!("POST /openim/{c} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n").as_bytes(),
                );
                r.extend_from_slice(b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n");
                let chunk = vec![b'a'; 1 << 16];
                for _ in 0..(MAX_BODY / chunk.len() + 1) {
                    r.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                    r.extend_from_slice(&chunk);
                    r.extend_from_slice(b"\r\n");
                }
                r.extend_from_slice(b"0\r\n\r\n");
                Req {
                    class: Class::Invalid,
                    kind,
                    target: Target::Raw(Bytes::from(r)),
                    expect: Expect::one(
                        400,
                        openim_error(1003, &format!("body is larger than the limit of {MAX_BODY} bytes")),
                    ),
                    is_reset_ok: true,
                }
            }
            "at-limit" => {
                // Exactly the limit: accepted and decided.
                let head = br#"{"callbackCommand":"callbackBeforeSendSingleMsgCommand","sendID":"u_banned","pad":""#;
                let mut body = head.to_vec();
                body.resize(MAX_BODY - 2, b'b');
                body.extend_from_slice(b"\"}");
                post("/openim/callbackBeforeSendSingleMsgCommand".into(), &body)
            }
            _ => {
                // GET /tencent: no route takes it; answered 4xx with a JSON body.
                Req {
                    class: Class::Invalid,
                    kind,
                    target: Target::Http {
                        method: Method::GET,
                        path: format!("/tencent?SdkAppid={}", self.app_id),
                        headers: Vec::new(),
                        body: Bytes::new(),
                    },
                    expect: Expect::JsonStatus(vec![400, 405]),
                    is_reset_ok: false,
                }
            }
        }
    }

    fn hostile(&self, rng: &mut Rng, n: u64) -> Req {
        let op = format!("op-{n}");
        let s = rng.pick(&self.openim);
        let c = s.command.as_str();
        let kind = rng.weighted(&[
            (100, "random-bytes"),
            (80, "invalid-utf8"),
            (60, "deep-nesting"),
            (80, "huge-numbers"),
            (10, "long-strings"),
            (140, "weird-unicode"),
            (80, "path-traversal"),
            (60, "long-query"),
            (5, "head-too-large"),
            (40, "odd-headers"),
            (120, "tencent-signed"),
            (180, "tencent-bad"),
        ]);
        let post = |url: String, body: Vec<u8>| openim_req(Class::Hostile, kind, Method::POST, url, body, op.clone());
        match kind {
            "random-bytes" => {
                let len = rng.below(2048);
                let mut body = rng.bytes(len);
                if rng.chance(0.3) && !body.is_empty() {
                    body[0] = b'{';
                }
                post(Self::url_for(rng, c), body)
            }
            "invalid-utf8" => {
                let bad: &[u8] = rng.pick_copy(&[&b"\xff\xfe"[..], b"\xc0\xaf", b"\xe2\x82", b"\xed\xa0\x80", b"\x80"]);
                let mut body = format!(r#"{{"callbackCommand":"{c}","sendID":"u_"#).into_bytes();
                body.extend_from_slice(bad);
                body.extend_from_slice(br#"","ownerUserID":"vip_001"}"#);
                if rng.chance(0.3) {
                    body = [&br#"{""#[..], bad, br#"":1}"#].concat();
                }
                post(format!("/openim/{c}"), body)
            }
            "deep-nesting" => {
                let depth = 10_000;
                let body = match rng.below(4) {
                    0 => "[".repeat(depth),
                    1 => format!(r#"{{"callbackCommand":"{c}","a":{}"#, "[".repeat(depth)),
                    2 => format!("{}1{}", r#"{"a":"#.repeat(depth), "}".repeat(depth)),
                    // Deep but within serde_json's limit of 128: a valid callback.
                    _ => format!(
                        r#"{{"callbackCommand":"{c}","sendID":"u_banned","a":{}{}}}"#,
                        "[".repeat(100),
                        "]".repeat(100)
                    ),
                };
                post(format!("/openim/{c}"), body.into_bytes())
            }
            "huge-numbers" => {
                let v = rng.pick(&[
                    "1e400",
                    "-1e400",
                    "1e-400",
                    "123456789012345678901234567890123",
                    "18446744073709551616",
                    "-9223372036854775809",
                    "-0",
                    "999000111",
                    "999000111e0",
                    "9.99000111E8",
                    "999000111.000",
                ]);
                let digits = "9".repeat(400);
                let field = rng.pick(&["sendID", "groupID", "ownerUserID", "seq"]);
                let v = if rng.chance(0.1) { digits.as_str() } else { v };
                post(format!("/openim/{c}"), format!(r#"{{"callbackCommand":"{c}","{field}":{v}}}"#).into_bytes())
            }
            "long-strings" => {
                let len = 100_000;
                let (cmd, field, value) = match rng.below(5) {
                    0 => ("callbackBeforeAddBlackCommand", "blackUserID", format!("sys_{}", "7".repeat(len))),
                    1 => ("callbackAfterRemoveBlackCommand", "blackUserID", format!("bot_{}x", "7".repeat(len))),
                    2 => (c, "sendID", format!("u_banned{}", "a".repeat(len))),
                    3 => (c, "ownerUserID", "ü".repeat(len / 2)),
                    _ => (c, "content", "\\\"".repeat(len / 2)),
                };
                let body = format!(r#"{{"callbackCommand":"{cmd}","{field}":"{value}","note":"{}"}}"#, "z".repeat(len));
                post(format!("/openim/{cmd}"), body.into_bytes())
            }
            "weird-unicode" => {
                // JSON string literals as they appear between the quotes.
                let id = rng.pick(&[
                    r"u_banned\u0000",
                    r"\u202eu_banned",
                    "u_bаnned",
                    r"\u0075\u005fbanned",
                    r"vip\u005f007",
                    "sys_١٢٣",
                    "ｓｙｓ_1",
                    "sys_1\u{301}",
                    "😀",
                    r"\ud83d\ude00",
                    r"\ud800",
                    r"\udc00x",
                    r"u_\u200bbanned",
                    "\u{200f}vip_001",
                    r"\u0000",
                    "\u{fffd}",
                    "u_banned\u{feff}",
                    r"sys\u005f42",
                ]);
                let field = rng.pick(&["sendID", "ownerUserID", "blackUserID", "groupID", "fromUserID"]);
                let cmd = if rng.chance(0.4) { "callbackBeforeAddBlackCommand" } else { c };
                let body = format!(r#"{{"callbackCommand":"{cmd}","{field}":"{id}","ownerUserID{id}":"{id}"}}"#);
                post(Self::url_for(rng, cmd), body.into_bytes())
            }
            "path-traversal" => self.path_traversal(rng, c, kind),
            "long-query" => {
                let len = 1000 + rng.below(50_000);
                let pad = rng.alnum(len);
                let url = if rng.chance(0.5) {
                    format!("/openim/{c}?contenttype=json&pad={pad}")
                } else {
                    format!("/openim?pad={pad}&command={c}&x=%ZZ%00")
                };
                post(url, s.wire.clone())
            }
            "head-too-large" => {
                let target = format!("/openim/{c}?pad={}", "q".repeat(70_000 + rng.below(30_000)));
                Req {
                    class: Class::Hostile,
                    kind,
                    target: Target::Raw(raw_post(target.as_bytes(), b"", &s.wire)),
                    expect: Expect::Status(vec![431]),
                    is_reset_ok: true,
                }
            }
            "odd-headers" => {
                let (method, url) = (Method::POST, format!("/openim/{c}"));
                let mut req = openim_req(Class::Hostile, kind, method, url, s.wire.clone(), String::new());
                if let Target::Http { headers, .. } = &mut req.target {
                    headers.clear();
                    match rng.below(4) {
                        0 => headers.push(("operationID", rng.alnum(8000))),
                        1 => headers.push(("content-type", "text/plain".into())),
                        2 => headers.push(("operationID", "\"'<>{}%00 ;".into())),
                        _ => {}
                    }
                }
                req
            }
            "tencent-signed" => self.tencent(rng, kind, true),
            _ => self.tencent(rng, kind, false),
        }
    }

    /// Traversal and odd bytes in the request target, sent raw.
    fn path_traversal(&self, rng: &mut Rng, c: &str, kind: &'static str) -> Req {
        let targets: [&[u8]; 14] = [
            b"/openim/../../etc/passwd",
            b"/openim/..%2F..%2Fetc%2Fpasswd",
            b"/openim/%2e%2e/%2e%2e/etc/passwd",
            b"/openim/./callbackBeforeAddBlackCommand",
            b"/openim/..\\..\\windows\\win.ini",
            b"/openim/callbackBeforeAddBlackCommand/../../admin",
            b"/openim/caf\xc3\xa9",
            b"/openim/%00",
            b"/openim/%ff%fe",
            b"/%2e%2e/openim/x",
            b"/openim?command=..%2F..%2Fx",
            b"/openim/\xff\xfe",
            b"/openim/x\xc3",
            b"ABSOLUTE",
        ];
        let t = rng.pick_copy(&targets);
        let body: Vec<u8> = if rng.chance(0.5) {
            format!(r#"{{"callbackCommand":"{c}","sendID":"u_banned"}}"#).into_bytes()
        } else {
            br#"{"sendID":"u_banned"}"#.to_vec()
        };
        let (target, path): (Vec<u8>, Vec<u8>) = if t == b"ABSOLUTE" {
            let p = format!("/openim/{c}");
            (format!("http://{}{p}", self.authority).into_bytes(), p.into_bytes())
        } else {
            (t.to_vec(), t.to_vec())
        };
        let expect = match std::str::from_utf8(&path) {
            Ok(p) => {
                let (path, query) = p.split_once('?').unwrap_or((p, ""));
                expect_openim("POST", path, query, &body)
            }
            // The HTTP layer refuses a target that is not UTF-8, before callgate sees it.
            Err(_) => Expect::Status(vec![400]),
        };
        Req {
            class: Class::Hostile,
            kind,
            target: Target::Raw(raw_post(&target, b"", &body)),
            expect,
            is_reset_ok: false,
        }
    }

    fn tencent(&self, rng: &mut Rng, kind: &'static str, is_signed_ok: bool) -> Req {
        let s = rng.pick(&self.tencent);
        let now = unix_now();
        let fresh = now + rng.below(41) as i64 - 20;
        let platform = rng.pick(&["RESTAPI", "Web", "Android", "iOS", "IOS", "Windows", "Mac", "iPad", "Unknown"]);
        let mut app_key = "SdkAppid";
        let mut app = self.app_id.clone();
        let mut time = fresh.to_string();
        let mut sign = Some(tencent_sign(&self.token, &time));
        let mut command = s.command.clone();
        let mut body = s.wire.clone();
        let mut with_time = true;
        if is_signed_ok {
            match rng.below(4) {
                0 => sign = sign.map(|s| s.to_ascii_uppercase()),
                1 => app_key = "SdkAppId",
                _ => {}
            }
        } else {
            match rng.below(14) {
                0 => {
                    let mut b = sign.take().unwrap().into_bytes();
                    b[0] = if b[0] == b'0' { b'1' } else { b'0' };
                    sign = Some(String::from_utf8(b).unwrap());
                }
                1 => sign = Some(tencent_sign(&self.token, &(fresh + 1).to_string())),
                2 => {
                    time = (now - 3600).to_string();
                    sign = Some(tencent_sign(&self.token, &time));
                }
                3 => {
                    time = (now + 86_400).to_string();
                    sign = Some(tencent_sign(&self.token, &time));
                }
                4 => sign = None,
                5 => with_time = false,
                6 => time = rng.pick(&["soon", "", "1e9", "99999999999999999999"]).to_string(),
                7 => app = "1400000002".into(),
                8 => app_key = "AppId",
                9 => {
                    let len = rng.below(512);
                    body = rng.bytes(len);
                }
                10 => body = b"[1,2]".to_vec(),
                11 => command = "Sns.CallbackFriendAdd".into(),
                12 => {
                    command = "Sns.CallbackBlackListAdd".into();
                    body = rng
                        .pick(&[
                            &br#"{"CallbackCommand":"Sns.CallbackBlackListAdd","PairList":[{"From_Account":"a"}]}"#[..],
                            br#"{"CallbackCommand":"Sns.CallbackBlackListAdd","PairList":"x"}"#,
                            br#"{"CallbackCommand":"Sns.CallbackBlackListAdd"}"#,
                            br#"{"CallbackCommand":"Sns.CallbackBlackListAdd","PairList":[{"From_Account":1,"To_Account":"b"}]}"#,
                        ])
                        .to_vec();
                }
                _ => {
                    command = rng.pick(&["Sns.Callback-X", "", "a/../b"]).to_string();
                    body = br#"{"PairList":[]}"#.to_vec();
                }
            }
        }
        let mut query: Vec<(String, String)> = vec![
            (app_key.into(), app),
            ("CallbackCommand".into(), command),
            ("contenttype".into(), "json".into()),
            ("ClientIP".into(), format!("203.0.113.{}", rng.below(255))),
            ("OptPlatform".into(), (*platform).into()),
        ];
        if with_time {
            query.push(("RequestTime".into(), time));
        }
        if let Some(sign) = sign {
            query.push(("Sign".into(), sign));
        }
        let query: String = form_urlencoded::Serializer::new(String::new()).extend_pairs(query).finish();
        let expect = expect_tencent(&self.app_id, &self.token, &query, &body, now);
        Req {
            class: Class::Hostile,
            kind,
            target: Target::Http {
                method: Method::POST,
                path: format!("/tencent?{query}"),
                headers: vec![("content-type", "application/json".into())],
                body: Bytes::from(body),
            },
            expect,
            is_reset_ok: false,
        }
    }
}

// ---- sending and checking ---------------------------------------------------------------

enum SendError {
    Timeout,
    Transport(String),
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Sends a request on a fresh connection and reads the answer (the server closes it).
async fn send_raw(addr: SocketAddr, bytes: &[u8]) -> Result<(u16, Vec<u8>), SendError> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        // The server may answer and close before it has read everything: read what came.
        let wrote = stream.write_all(bytes).await;
        let mut out = Vec::new();
        let read = stream.read_to_end(&mut out).await;
        if out.is_empty() {
            return Err(match (wrote, read) {
                (Err(w), _) => format!("write: {w}"),
                (_, Err(r)) => format!("read: {r}"),
                _ => "connection closed without an answer".to_string(),
            });
        }
        parse_response(&out)
    };
    match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
        Err(_) => Err(SendError::Timeout),
        Ok(r) => r.map_err(SendError::Transport),
    }
}

fn parse_response(raw: &[u8]) -> Result<(u16, Vec<u8>), String> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or("no end of head in the answer")?;
    let head = String::from_utf8_lossy(&raw[..end]);
    let status: u16 = head.split(' ').nth(1).and_then(|s| s.parse().ok()).ok_or("no status in the answer")?;
    let body = &raw[end + 4..];
    let len = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("content-length").then(|| v.trim().parse::<usize>().ok()).flatten()
    });
    match len {
        Some(n) if n <= body.len() => Ok((status, body[..n].to_vec())),
        Some(n) => Err(format!("answer body cut short: {} of {n} bytes", body.len())),
        None => Ok((status, body.to_vec())),
    }
}

async fn send(ctx: &Ctx, target: &Target) -> Result<(u16, Vec<u8>), SendError> {
    match target {
        Target::Raw(bytes) => send_raw(ctx.addr, bytes).await,
        Target::Http { method, path, headers, body } => {
            // callgate answers a body over the limit before reading it, then closes the
            // connection without saying so (no `Connection: close`): a pooled connection
            // would fail the next request sent on it. Such bodies get a connection of their own.
            let client = if body.len() > MAX_BODY { &ctx.unpooled } else { &ctx.client };
            let mut rb = client.request(method.clone(), format!("{}{path}", ctx.base));
            for (k, v) in headers {
                rb = rb.header(*k, v.as_str());
            }
            if !body.is_empty() || *method != Method::GET {
                rb = rb.body(body.clone());
            }
            let resp = rb
                .send()
                .await
                .map_err(|e| if e.is_timeout() { SendError::Timeout } else { SendError::Transport(error_chain(&e)) })?;
            let status = resp.status().as_u16();
            let body = resp
                .bytes()
                .await
                .map_err(|e| if e.is_timeout() { SendError::Timeout } else { SendError::Transport(error_chain(&e)) })?;
            Ok((status, body.to_vec()))
        }
    }
}

#[derive(Default, Clone, Copy)]
struct KindCount {
    sent: u64,
    ok: u64,
    wrong: u64,
    transport: u64,
    reset_ok: u64,
}

/// Latency histogram: bucket i holds answers in [2^i, 2^(i+1)) µs.
struct Histogram([AtomicU64; 40]);

impl Default for Histogram {
    fn default() -> Histogram {
        Histogram(std::array::from_fn(|_| AtomicU64::new(0)))
    }
}

#[derive(Default)]
struct Stats {
    sent: [AtomicU64; 3],
    checked: [AtomicU64; 3],
    wrong: [AtomicU64; 3],
    server_errors: AtomicU64,
    transport: AtomicU64,
    timeouts: AtomicU64,
    resets_ok: AtomicU64,
    kinds: Mutex<BTreeMap<(&'static str, &'static str), KindCount>>,
    statuses: Mutex<BTreeMap<u16, u64>>,
    wrong_examples: Mutex<Vec<String>>,
    transport_examples: Mutex<Vec<String>>,
    latency: Histogram,
}

impl Stats {
    fn total_sent(&self) -> u64 {
        self.sent.iter().map(|a| a.load(Ordering::Relaxed)).sum()
    }

    fn total(&self, a: &[AtomicU64; 3]) -> u64 {
        a.iter().map(|a| a.load(Ordering::Relaxed)).sum()
    }

    fn kind(&self, req: &Req, f: impl FnOnce(&mut KindCount)) {
        let mut kinds = self.kinds.lock().unwrap();
        f(kinds.entry((req.class.name(), req.kind)).or_default());
    }

    fn example(list: &Mutex<Vec<String>>, text: String) {
        let mut l = list.lock().unwrap();
        if l.len() < EXAMPLES {
            l.push(text);
        }
    }

    fn percentile(&self, p: f64) -> String {
        let counts: Vec<u64> = self.latency.0.iter().map(|a| a.load(Ordering::Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return "-".into();
        }
        let want = (total as f64 * p).ceil() as u64;
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= want {
                let upper = 1u64 << (i + 1);
                return if upper >= 1000 {
                    format!("<{:.1} ms", upper as f64 / 1000.0)
                } else {
                    format!("<{upper} µs")
                };
            }
        }
        "-".into()
    }
}

struct Ctx {
    client: reqwest::Client,
    /// A client that never reuses a connection.
    unpooled: reqwest::Client,
    base: String,
    admin: String,
    addr: SocketAddr,
    stats: Stats,
    stop: AtomicBool,
}

/// Sends one request, checks its answer, counts. Returns the answer's body when it was right.
async fn run_one(ctx: &Ctx, req: &Req) -> Option<Vec<u8>> {
    let class = req.class as usize;
    ctx.stats.sent[class].fetch_add(1, Ordering::Relaxed);
    let started = Instant::now();
    let result = send(ctx, &req.target).await;
    let us = started.elapsed().as_micros().max(1) as u64;
    ctx.stats.latency.0[(63 - us.leading_zeros() as usize).min(39)].fetch_add(1, Ordering::Relaxed);
    match result {
        Ok((status, body)) => {
            *ctx.stats.statuses.lock().unwrap().entry(status).or_default() += 1;
            if status >= 500 {
                ctx.stats.server_errors.fetch_add(1, Ordering::Relaxed);
            }
            ctx.stats.checked[class].fetch_add(1, Ordering::Relaxed);
            if req.expect.matches(status, &body) {
                ctx.stats.kind(req, |k| {
                    k.sent += 1;
                    k.ok += 1;
                });
                Some(body)
            } else {
                ctx.stats.wrong[class].fetch_add(1, Ordering::Relaxed);
                ctx.stats.kind(req, |k| {
                    k.sent += 1;
                    k.wrong += 1;
                });
                Stats::example(
                    &ctx.stats.wrong_examples,
                    format!(
                        "[{} {}] request: {}\n      expected: {}\n      actual:   {status} {}",
                        req.class.name(),
                        req.kind,
                        req.describe(),
                        req.expect.describe(),
                        clip(&body, 400)
                    ),
                );
                None
            }
        }
        Err(SendError::Transport(_)) if req.is_reset_ok => {
            ctx.stats.resets_ok.fetch_add(1, Ordering::Relaxed);
            ctx.stats.kind(req, |k| {
                k.sent += 1;
                k.reset_ok += 1;
            });
            None
        }
        Err(e) => {
            let (counter, what) = match e {
                SendError::Timeout => (&ctx.stats.timeouts, format!("no answer within {REQUEST_TIMEOUT:?}")),
                SendError::Transport(t) => (&ctx.stats.transport, t),
            };
            counter.fetch_add(1, Ordering::Relaxed);
            ctx.stats.kind(req, |k| {
                k.sent += 1;
                k.transport += 1;
            });
            Stats::example(
                &ctx.stats.transport_examples,
                format!("[{} {}] {what}; request: {}", req.class.name(), req.kind, req.describe()),
            );
            None
        }
    }
}

// ---- background tasks -------------------------------------------------------------------

fn rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    if status.lines().any(|l| l.starts_with("State:") && l.contains("zombie")) {
        return None;
    }
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.split_whitespace().next()?.parse().ok())
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

fn thread_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, Iterator::count)
}

struct RssSample {
    at_s: f64,
    label: String,
    kb: u64,
    fds: usize,
    threads: usize,
}

#[derive(Default)]
struct ReloadStats {
    writes: u64,
    live_in_time: u64,
    late: u64,
    write_errors: u64,
    status_errors: u64,
    not_ok: u64,
    wrong_rule_count: u64,
    versions: BTreeSet<String>,
    latencies_ms: Vec<u64>,
    first_problem: Option<String>,
}

async fn status(ctx: &Ctx) -> Result<Value, String> {
    let resp = ctx.client.get(format!("{}/v1/status", ctx.admin)).send().await.map_err(|e| error_chain(&e))?;
    if !resp.status().is_success() {
        return Err(format!("status {}", resp.status()));
    }
    resp.json().await.map_err(|e| error_chain(&e))
}

/// Every second: writes the other revision (list file, then rule file, each by
/// write-and-rename) and polls `/v1/status` until the new version is live.
async fn reload_loop(ctx: Arc<Ctx>, dir: PathBuf, stats: Arc<Mutex<ReloadStats>>) {
    let initial = match status(&ctx).await {
        Ok(s) => s["policy_version"].as_str().unwrap_or("").to_string(),
        Err(e) => {
            stats.lock().unwrap().first_problem = Some(format!("status at start: {e}"));
            return;
        }
    };
    stats.lock().unwrap().versions.insert(initial.clone());
    let mut known: [Option<String>; 2] = [Some(initial), None];
    let mut rev = 0u8;
    let mut every = tokio::time::interval(Duration::from_secs(1));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    every.tick().await;
    while !ctx.stop.load(Ordering::Relaxed) {
        every.tick().await;
        if ctx.stop.load(Ordering::Relaxed) {
            break;
        }
        rev ^= 1;
        let written = Instant::now();
        let write = write_revision(&dir, rev);
        let mut s = ReloadStats { writes: 1, ..ReloadStats::default() };
        if let Err(e) = write {
            s.write_errors = 1;
            s.first_problem = Some(format!("write revision {rev}: {e}"));
        }
        let mut live_after = None;
        let mut last_seen = String::new();
        while written.elapsed() < Duration::from_millis(950) {
            tokio::time::sleep(Duration::from_millis(50)).await;
            match status(&ctx).await {
                Ok(st) => {
                    let version = st["policy_version"].as_str().unwrap_or("").to_string();
                    if st["last_reload"]["ok"] != Value::Bool(true) {
                        s.not_ok += 1;
                        s.first_problem.get_or_insert_with(|| format!("reload not ok: {}", st["last_reload"]));
                    }
                    if st["rules"].as_u64() != Some(RULE_COUNT) {
                        s.wrong_rule_count += 1;
                        s.first_problem.get_or_insert_with(|| format!("rules in status: {}", st["rules"]));
                    }
                    s.versions.insert(version.clone());
                    let other = known[usize::from(rev ^ 1)].as_deref();
                    let is_live = match &known[usize::from(rev)] {
                        Some(v) => *v == version,
                        // Learn a revision's version once it is stable (two polls alike) and
                        // not the other revision's.
                        None => {
                            written.elapsed() > Duration::from_millis(600)
                                && version == last_seen
                                && Some(version.as_str()) != other
                        }
                    };
                    if is_live {
                        known[usize::from(rev)].get_or_insert(version.clone());
                        live_after = Some(written.elapsed());
                        break;
                    }
                    last_seen = version;
                }
                Err(e) => {
                    s.status_errors += 1;
                    s.first_problem.get_or_insert_with(|| format!("GET /v1/status: {e}"));
                }
            }
        }
        match live_after {
            Some(t) => {
                s.live_in_time = 1;
                s.latencies_ms.push(t.as_millis() as u64);
            }
            None => s.late = 1,
        }
        let mut all = stats.lock().unwrap();
        all.writes += s.writes;
        all.live_in_time += s.live_in_time;
        all.late += s.late;
        all.write_errors += s.write_errors;
        all.status_errors += s.status_errors;
        all.not_ok += s.not_ok;
        all.wrong_rule_count += s.wrong_rule_count;
        all.versions.extend(s.versions);
        all.latencies_ms.extend(s.latencies_ms);
        if all.first_problem.is_none() {
            all.first_problem = s.first_problem;
        }
    }
}

/// The record files in `dir` and their bytes together. The server keeps them within
/// `--record-max-total-bytes` itself; the soak checks that it does.
fn record_files(dir: &Path) -> (u64, u64) {
    let Ok(entries) = std::fs::read_dir(dir) else { return (0, 0) };
    entries
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("records-"))
        .filter_map(|e| e.metadata().ok())
        .fold((0, 0), |(n, bytes), m| (n + 1, bytes + m.len()))
}

/// Friend requests past the cap, with known answers: each new key gets three allows, then
/// refusals. Half the keys are driven one request at a time, half with six at once (then
/// exactly three of the six may be allowed, whichever they are).
async fn cap_loop(ctx: Arc<Ctx>, sample: Arc<Map<String, Value>>, nonce: u64) {
    let capped = refusal(CAPPED.0, CAPPED.1, CAPPED.2);
    let request = |key: &str, i: usize| {
        let mut body = (*sample).clone();
        body.insert("fromUserID".into(), Value::from(key));
        let mut wire = serde_json::to_vec(&body).unwrap();
        wire.push(b'\n');
        let mut req = openim_req(
            Class::Valid,
            "cap",
            Method::POST,
            "/openim/callbackBeforeAddFriendCommand".into(),
            wire,
            format!("cap-{key}-{i}"),
        );
        req.expect = Expect::one(200, if i < 3 { ALLOW.to_vec() } else { capped.clone() });
        req
    };
    let mut k = 0u64;
    let mut every = tokio::time::interval(Duration::from_millis(250));
    while !ctx.stop.load(Ordering::Relaxed) {
        every.tick().await;
        k += 1;
        let key = format!("capt_{nonce}_{k}");
        if k.is_multiple_of(2) {
            for i in 0..5 {
                run_one(&ctx, &request(&key, i)).await;
            }
        } else {
            let mut set = tokio::task::JoinSet::new();
            for i in 0..6 {
                let mut req = request(&key, i);
                req.kind = "cap-concurrent";
                req.expect = Expect::Exact(vec![(200, ALLOW.to_vec()), (200, capped.clone())]);
                let ctx = ctx.clone();
                set.spawn(async move { run_one(&ctx, &req).await });
            }
            let answers: Vec<Option<Vec<u8>>> = set.join_all().await;
            let allowed = answers.iter().filter(|a| a.as_deref() == Some(ALLOW)).count();
            let answered = answers.iter().filter(|a| a.is_some()).count();
            if answered == 6 && allowed != 3 {
                ctx.stats.wrong[0].fetch_add(1, Ordering::Relaxed);
                Stats::example(
                    &ctx.stats.wrong_examples,
                    format!(
                        "[valid cap-concurrent] key {key}: {allowed} of 6 concurrent friend requests allowed, expected exactly 3 (max: 3)"
                    ),
                );
            }
        }
    }
}

// ---- the run ----------------------------------------------------------------------------

struct Args {
    values: BTreeMap<String, String>,
}

impl Args {
    fn parse(args: &[String]) -> Args {
        let mut values = BTreeMap::new();
        let mut it = args.iter();
        while let Some(k) = it.next() {
            let key = k.strip_prefix("--").unwrap_or_else(|| panic!("unexpected argument `{k}`"));
            let v = it.next().unwrap_or_else(|| panic!("--{key} needs a value"));
            values.insert(key.to_string(), v.clone());
        }
        Args { values }
    }

    fn get(&self, k: &str) -> String {
        self.values.get(k).cloned().unwrap_or_else(|| panic!("--{k} is required"))
    }

    fn num<T: std::str::FromStr>(&self, k: &str, default: T) -> T {
        self.values.get(k).map_or(default, |v| v.parse().unwrap_or_else(|_| panic!("--{k}: not a number: {v}")))
    }
}

fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("write-policies") if args.len() == 2 => {
            write_policies(Path::new(&args[1])).expect("write the policy set");
        }
        Some("run") => {
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
            let passed = runtime.block_on(run(Args::parse(&args[1..])));
            std::process::exit(if passed { 0 } else { 1 });
        }
        _ => {
            eprintln!(
                "usage: soak write-policies DIR\n       soak run --base URL --admin URL --pid PID --policies DIR --data-dir DIR \\\n                --tencent-app-id ID --tencent-token TOKEN [--seconds 600] [--calibrate-seconds 10] \\\n                [--fraction 0.7] [--workers 64] [--max-requests 20000000] [--samples DIR] \\\n                [--pool-idle-seconds 5] [--record-max-total-bytes N]"
            );
            std::process::exit(2);
        }
    }
}

async fn run(args: Args) -> bool {
    let base = args.get("base");
    let admin = args.get("admin");
    let pid: u32 = args.num("pid", 0);
    let policies = PathBuf::from(args.get("policies"));
    let data_dir = PathBuf::from(args.get("data-dir"));
    let seconds: u64 = args.num("seconds", 600);
    let calibrate_seconds: u64 = args.num("calibrate-seconds", 10);
    let fraction: f64 = args.num("fraction", 0.7);
    let workers: usize = args.num("workers", 64);
    let max_requests: u64 = args.num("max-requests", 20_000_000);
    let record_limit: u64 = args.num("record-max-total-bytes", u64::MAX);
    let samples = PathBuf::from(args.values.get("samples").cloned().unwrap_or_else(|| {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/samples").to_string_lossy().into_owned()
    }));
    let authority = base.strip_prefix("http://").unwrap_or(&base).to_string();
    let addr: SocketAddr = authority.parse().expect("--base is http://IP:PORT");
    assert!(addr.ip().is_loopback(), "the soak only targets loopback, not {addr}");
    assert!(admin.starts_with("http://127.0.0.1:"), "the soak only targets loopback, not {admin}");
    assert_eq!(
        tencent_sign("xxxxyyyy", "1669872112"),
        "17773bc39a671d7b9aa835458704d2a6db81360a5940292b587d6d760d484061",
        "Tencent's documented test vector"
    );

    let mix = Arc::new(Mix {
        openim: load_samples(&samples.join("openim")),
        tencent: load_samples(&samples.join("tencent")),
        app_id: args.get("tencent-app-id"),
        token: args.get("tencent-token"),
        authority,
    });
    let add_friend = Arc::new(
        mix.openim
            .iter()
            .find(|s| s.command == "callbackBeforeAddFriendCommand")
            .expect("AddFriend sample")
            .body
            .clone(),
    );
    // callgate closes a kept-alive connection once it has been idle for --idle-timeout
    // (120 s), without notice. Pooling idle connections for less than that rules out reusing
    // one just as it closes, so that a transport error means a real failure; a pool time
    // above the server's idle timeout exercises that case too.
    let pool_idle = Duration::from_secs_f64(args.num("pool-idle-seconds", 5.0));
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_idle_timeout(pool_idle)
        .timeout(REQUEST_TIMEOUT)
        .connect_timeout(Duration::from_secs(5))
        .pool_max_idle_per_host(256)
        .tcp_nodelay(true)
        .build()
        .unwrap();
    let unpooled =
        reqwest::Client::builder().no_proxy().timeout(REQUEST_TIMEOUT).pool_max_idle_per_host(0).build().unwrap();
    let ctx =
        Arc::new(Ctx { client, unpooled, base, admin, addr, stats: Stats::default(), stop: AtomicBool::new(false) });
    let t0 = Instant::now();
    let mut rss: Vec<RssSample> = Vec::new();
    let sample_rss = |rss: &mut Vec<RssSample>, label: &str| {
        let kb = rss_kb(pid);
        if let Some(kb) = kb {
            rss.push(RssSample {
                at_s: t0.elapsed().as_secs_f64(),
                label: label.into(),
                kb,
                fds: fd_count(pid),
                threads: thread_count(pid),
            });
        }
        kb.is_some()
    };
    let mut is_alive = sample_rss(&mut rss, "start");
    println!(
        "[soak] server pid {pid}: {:.1} MB resident at start; {} OpenIM and {} Tencent samples; client keeps idle connections {pool_idle:?}",
        mb(rss.last().map_or(0, |r| r.kb)),
        mix.openim.len(),
        mix.tencent.len()
    );

    // 1. Maximum throughput: closed loop, every answer checked all the same.
    let cal_workers = 32;
    let cal_end = Instant::now() + Duration::from_secs(calibrate_seconds);
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..cal_workers {
        let (ctx, mix) = (ctx.clone(), mix.clone());
        tasks.spawn(async move {
            let mut rng = Rng(0xC0FFEE ^ ((w as u64) << 32));
            let mut n = 0u64;
            while Instant::now() < cal_end {
                n += 1;
                let req = mix.generate(&mut rng, ((w as u64) << 40) | n);
                run_one(&ctx, &req).await;
            }
        });
    }
    let cal_started = Instant::now();
    tasks.join_all().await;
    let cal_secs = cal_started.elapsed().as_secs_f64();
    let cal_sent = ctx.stats.total_sent();
    let max_rate = cal_sent as f64 / cal_secs;
    let target = (max_rate * fraction).max(10.0);
    is_alive &= sample_rss(&mut rss, "after calibration");
    println!(
        "[soak] calibration: {cal_sent} requests in {cal_secs:.1} s with {cal_workers} closed-loop workers = {max_rate:.0} req/s; load at {:.0}% = {target:.0} req/s over {workers} workers for {seconds} s",
        fraction * 100.0
    );

    // 2. The soak: fixed rate, reloads, cap track, record pruning, memory samples.
    let load_start = Instant::now();
    let load_end = load_start + Duration::from_secs(seconds);
    let sent_before = ctx.stats.total_sent();
    let reload_stats = Arc::new(Mutex::new(ReloadStats::default()));
    let reloads = tokio::spawn(reload_loop(ctx.clone(), policies.clone(), reload_stats.clone()));
    let nonce = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let caps = tokio::spawn(cap_loop(ctx.clone(), add_friend, nonce));
    let period = Duration::from_secs_f64(workers as f64 / target);
    let mut load = tokio::task::JoinSet::new();
    for w in 0..workers {
        let (ctx, mix) = (ctx.clone(), mix.clone());
        let first = tokio::time::Instant::now() + period.mul_f64(w as f64 / workers as f64);
        load.spawn(async move {
            let mut rng = Rng(0x50A4 ^ ((w as u64) << 32));
            let mut every = tokio::time::interval_at(first, period);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut n = 0u64;
            loop {
                every.tick().await;
                if Instant::now() >= load_end
                    || ctx.stop.load(Ordering::Relaxed)
                    || ctx.stats.total_sent() >= max_requests
                {
                    break;
                }
                n += 1;
                let req = mix.generate(&mut rng, ((w as u64 + 1000) << 40) | n);
                run_one(&ctx, &req).await;
            }
        });
    }

    let (mut most_files, mut most_bytes) = (0u64, 0u64);
    let mut next_rss = load_start + Duration::from_secs(30);
    let mut last_sent = ctx.stats.total_sent();
    let mut last_at = Instant::now();
    let mut baseline: Option<u64> = None;
    while Instant::now() < load_end && ctx.stats.total_sent() < max_requests {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (files, bytes) = record_files(&data_dir);
        if bytes > most_bytes {
            (most_files, most_bytes) = (files, bytes);
        }
        if rss_kb(pid).is_none() {
            is_alive = false;
            println!("[soak] the server (pid {pid}) is gone after {:.0} s of load", load_start.elapsed().as_secs_f64());
            ctx.stop.store(true, Ordering::Relaxed);
            break;
        }
        if Instant::now() >= next_rss {
            next_rss += Duration::from_secs(30);
            let at = load_start.elapsed().as_secs();
            sample_rss(&mut rss, &format!("load +{at}s"));
            if at >= 60 && baseline.is_none() {
                baseline = rss.last().map(|r| r.kb);
            }
            let sent = ctx.stats.total_sent();
            let r = reload_stats.lock().unwrap();
            println!(
                "[soak] +{at:>4}s  {:>6.0} req/s  sent {sent}  wrong {}  5xx {}  transport {}  timeouts {}  reloads live {}/{}  RSS {:.1} MB  fds {}",
                (sent - last_sent) as f64 / last_at.elapsed().as_secs_f64(),
                ctx.stats.total(&ctx.stats.wrong),
                ctx.stats.server_errors.load(Ordering::Relaxed),
                ctx.stats.transport.load(Ordering::Relaxed),
                ctx.stats.timeouts.load(Ordering::Relaxed),
                r.live_in_time,
                r.writes,
                mb(rss.last().map_or(0, |s| s.kb)),
                rss.last().map_or(0, |s| s.fds),
            );
            drop(r);
            (last_sent, last_at) = (sent, Instant::now());
        }
    }
    ctx.stop.store(true, Ordering::Relaxed);
    load.join_all().await;
    let load_secs = load_start.elapsed().as_secs_f64();
    let _ = caps.await;
    let _ = reloads.await;
    let load_sent = ctx.stats.total_sent() - sent_before;

    // 3. After the load: the server still answers, the last revision is live, memory.
    tokio::time::sleep(Duration::from_secs(2)).await;
    is_alive &= sample_rss(&mut rss, "end (2 s after load)");
    let health =
        ctx.client.get(format!("{}/healthz", ctx.admin)).send().await.ok().map(|r| r.status().as_u16()).unwrap_or(0);
    let probe = run_one(
        &ctx,
        &openim_req(
            Class::Valid,
            "final-probe",
            Method::POST,
            "/openim/callbackBeforeSendSingleMsgCommand".into(),
            br#"{"callbackCommand":"callbackBeforeSendSingleMsgCommand","sendID":"u_banned"}"#.to_vec(),
            "final".into(),
        ),
    )
    .await
    .is_some();
    let final_status = status(&ctx).await.ok();
    let would_deny = ctx.client.get(format!("{}/v1/events?decision=would_deny&limit=3", ctx.admin)).send().await.ok();
    let would_deny = match would_deny {
        Some(r) => r.json::<Value>().await.ok().and_then(|v| v["events"].as_array().map(Vec::len)),
        None => None,
    };

    // ---- report ----
    let s = &ctx.stats;
    let r = reload_stats.lock().unwrap();
    let wrong = s.total(&s.wrong);
    let server_errors = s.server_errors.load(Ordering::Relaxed);
    let transport = s.transport.load(Ordering::Relaxed);
    let timeouts = s.timeouts.load(Ordering::Relaxed);
    println!();
    println!("==================== callgate soak summary ====================");
    println!(
        "load: {load_sent} requests in {load_secs:.0} s = {:.0} req/s (target {target:.0}, {:.0}% of the calibrated {max_rate:.0}); calibration {cal_sent} requests",
        load_sent as f64 / load_secs,
        fraction * 100.0
    );
    println!("requests sent, answers checked, wrong, by class (calibration included):");
    for c in CLASSES {
        let i = c as usize;
        println!(
            "  {:<8} sent {:>9}  checked {:>9}  wrong {:>5}",
            c.name(),
            s.sent[i].load(Ordering::Relaxed),
            s.checked[i].load(Ordering::Relaxed),
            s.wrong[i].load(Ordering::Relaxed)
        );
    }
    println!("  total    sent {:>9}  checked {:>9}  wrong {:>5}", s.total_sent(), s.total(&s.checked), wrong);
    println!("by kind (sent / right / wrong / transport error / reset where allowed):");
    for ((class, kind), k) in s.kinds.lock().unwrap().iter() {
        println!(
            "  {class:<8} {kind:<22} {:>9} {:>9} {:>5} {:>5} {:>5}",
            k.sent, k.ok, k.wrong, k.transport, k.reset_ok
        );
    }
    let statuses: Vec<String> = s.statuses.lock().unwrap().iter().map(|(k, v)| format!("{k}: {v}")).collect();
    println!("statuses: {}", statuses.join(", "));
    println!(
        "latency (all answers): p50 {}  p99 {}  p99.9 {}  max {}",
        s.percentile(0.50),
        s.percentile(0.99),
        s.percentile(0.999),
        s.percentile(1.0)
    );
    println!("wrong answers: {wrong}");
    for e in s.wrong_examples.lock().unwrap().iter() {
        println!("  - {e}");
    }
    println!("5xx answers: {server_errors}");
    println!(
        "transport errors: {transport} (plus {} resets where the server may close early: over-size bodies, heads over the limit); timeouts (no answer in {REQUEST_TIMEOUT:?}): {timeouts}",
        s.resets_ok.load(Ordering::Relaxed)
    );
    for e in s.transport_examples.lock().unwrap().iter() {
        println!("  - {e}");
    }
    let mut lat = r.latencies_ms.clone();
    lat.sort_unstable();
    println!(
        "reloads: {} rewrites (write-and-rename of lists/vip.txt and 20-extra.yaml, alternating 2 revisions), live within 950 ms: {}, late: {}, write errors: {}, reload not ok in status: {}, status errors: {}, wrong rule count: {}",
        r.writes, r.live_in_time, r.late, r.write_errors, r.not_ok, r.status_errors, r.wrong_rule_count
    );
    println!(
        "  write->live: median {} ms, max {} ms; distinct versions seen: {}",
        lat.get(lat.len() / 2).copied().unwrap_or(0),
        lat.last().copied().unwrap_or(0),
        r.versions.len()
    );
    if let Some(p) = &r.first_problem {
        println!("  first reload problem: {p}");
    }
    println!(
        "records: at most {:.1} MB in {most_files} files seen (callgate's retention limit {:.1} MB); dry-run records found by /v1/events?decision=would_deny: {}",
        most_bytes as f64 / 1e6,
        record_limit as f64 / 1e6,
        would_deny.map_or("query failed".into(), |n| n.to_string())
    );
    println!("server RSS (VmRSS), open fds, threads:");
    for x in &rss {
        println!(
            "  {:>7.1} s  {:<22} {:>7.1} MB  fds {:>4}  threads {:>3}",
            x.at_s,
            x.label,
            mb(x.kb),
            x.fds,
            x.threads
        );
    }
    let end_kb = rss.last().map_or(0, |x| x.kb);
    let base_kb = baseline.or_else(|| rss.get(1).map(|x| x.kb)).unwrap_or(end_kb);
    let allowed_kb = (base_kb as f64 * 0.2).max(30.0 * 1024.0) as u64;
    let is_flat = end_kb <= base_kb + allowed_kb;
    println!(
        "RSS flat means: end <= post-warm-up (60 s into the load) + max(20%, 30 MB): end {:.1} MB vs post-warm-up {:.1} MB, allowed up to {:.1} MB -> {}",
        mb(end_kb),
        mb(base_kb),
        mb(base_kb + allowed_kb),
        if is_flat { "flat" } else { "GROWING" }
    );
    println!(
        "after the load: process alive {is_alive}, /healthz {health}, final probe answered right {probe}, policy version {}",
        final_status.as_ref().and_then(|v| v["policy_version"].as_str()).unwrap_or("?")
    );
    let mut failures = Vec::new();
    if wrong > 0 {
        failures.push(format!("{wrong} wrong answers"));
    }
    if server_errors > 0 {
        failures.push(format!("{server_errors} 5xx"));
    }
    if transport > 0 {
        failures.push(format!("{transport} transport errors"));
    }
    if timeouts > 0 {
        failures.push(format!("{timeouts} hangs (timeouts)"));
    }
    if !is_alive || health != 200 || !probe {
        failures.push("server not healthy after the load".into());
    }
    if !is_flat {
        failures.push("RSS growing".into());
    }
    if most_bytes > record_limit {
        failures.push("record files over --record-max-total-bytes".into());
    }
    if r.not_ok > 0 || r.write_errors > 0 || r.live_in_time == 0 || r.wrong_rule_count > 0 {
        failures.push("reloads failing".into());
    }
    let verdict = if failures.is_empty() {
        format!(
            "PASS: 0 wrong answers in {} checked, 0 5xx, 0 transport errors, 0 hangs, {} reloads live, RSS flat ({:.1} -> {:.1} MB)",
            s.total(&s.checked),
            r.live_in_time,
            mb(base_kb),
            mb(end_kb)
        )
    } else {
        format!("FAIL: {}", failures.join(", "))
    };
    println!("VERDICT: {verdict}");
    println!("================================================================");
    failures.is_empty()
}
