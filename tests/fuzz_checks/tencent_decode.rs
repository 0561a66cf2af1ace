//! `tencent_decode`: an arbitrary query and body through `tencent::decode`, with app ID and
//! token set.
//!
//! Input: byte 0's low bit says to append a good `RequestTime` and `Sign` to the query; the
//! bytes up to the first `\n` after it are the query; the rest is the body. Nothing may
//! panic; with a good signature appended no refusal is about the signature; a decoded event
//! has a valid command and the body as received; a refusal has a 4xx status and encodes to
//! Tencent's JSON.

use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use callgate::protocol::tencent::{self, TencentAuth};
use serde_json::Value;

/// The clock the check runs at.
const NOW: u64 = 1_700_000_000;
/// The app ID callbacks must carry.
pub const APP_ID: &str = "1400000000";
/// The callback-authentication token.
pub const TOKEN: &str = "fuzz-token";

/// Runs the check on one input.
pub fn check(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else { return };
    let (query, body) = match rest.iter().position(|&b| b == b'\n') {
        Some(at) => (&rest[..at], &rest[at + 1..]),
        None => (rest, &[][..]),
    };
    let mut query = String::from_utf8_lossy(query).into_owned();
    let is_signed = flags & 1 == 1;
    if is_signed {
        // Later pairs win, so these override any the input gave.
        let time = (NOW - 5).to_string();
        query.push_str(&format!("&RequestTime={time}&Sign={}", tencent::sign(TOKEN, &time)));
    }
    let auth =
        TencentAuth { app_id: Some(APP_ID.into()), token: Some(TOKEN.into()), max_skew: Duration::from_secs(300) };
    let parsed = tencent::Query::parse(&query);
    // The query reader agrees with form_urlencoded's (which it defers to for encoded pairs).
    let last = |name: &str| {
        form_urlencoded::parse(query.as_bytes()).filter(|(key, _)| key == name).last().map(|(_, v)| v.into_owned())
    };
    let command = last("CallbackCommand");
    assert_eq!(
        parsed.names_decided_command(),
        command.as_deref().is_some_and(|c| callgate::catalog::tencent_decided(c).is_some()),
        "query `{query}`"
    );
    match tencent::decode(&auth, &parsed, Bytes::copy_from_slice(body), UNIX_EPOCH + Duration::from_secs(NOW), &|_| {
        true
    }) {
        Ok((event, meta)) => {
            let c = &event.command;
            assert!(!c.is_empty() && c.len() <= 128, "command `{c}`");
            assert!(c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.'), "command `{c}`");
            assert_eq!(meta.sdk_app_id, APP_ID);
            assert_eq!(meta.client_ip, last("ClientIP").unwrap_or_default(), "query `{query}`");
            assert_eq!(meta.opt_platform, last("OptPlatform").unwrap_or_default(), "query `{query}`");
            let reparsed: Value = serde_json::from_slice(&event.raw).expect("raw body is the JSON decoded");
            assert_eq!(reparsed, Value::Object(event.body), "raw and parsed body differ");
        }
        Err(err) => {
            let status = err.status();
            assert!(matches!(status, 400 | 401 | 403 | 413), "status {status} for {err}");
            assert!(!(is_signed && status == 401), "a good signature was refused: {err} (query `{query}`)");
            assert!(!err.kind().is_empty());
            let is_before = parsed.names_decided_command();
            let answer: Value =
                serde_json::from_slice(&tencent::encode_fail(&err.to_string(), is_before)).expect("answer");
            assert_eq!(answer["ActionStatus"], "FAIL");
            // A before-callback callgate cannot take must never be refused because of it.
            assert!(!is_before || answer["ErrorCode"] == 0, "{answer}");
        }
    }
}
