//! `openim_decode`: an arbitrary URL command and body through `openim::decode`.
//!
//! Input: byte 0's low bit says whether the URL names a command; the bytes up to the first
//! `\n` after it are that command (and are also tried as a path and a query with
//! `command_from_url`); the rest is the body. Nothing may panic; a decoded event has a valid
//! command, agreed by URL and body, and the body as received; a refusal encodes to JSON;
//! which keys are kept changes nothing but the keys in the event's map, and a body is
//! refused as not JSON exactly when `serde_json::Value` refuses it, with its message.

use bytes::Bytes;
use callgate::protocol::{BodyError, openim};
use serde_json::Value;

/// Runs the check on one input.
pub fn check(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else { return };
    let (url, body) = match rest.iter().position(|&b| b == b'\n') {
        Some(at) => (&rest[..at], &rest[at + 1..]),
        None => (rest, &[][..]),
    };
    let url = String::from_utf8_lossy(url);
    for found in [openim::command_from_url(Some(&url), ""), openim::command_from_url(None, &url)].into_iter().flatten()
    {
        assert!(!found.is_empty(), "command_from_url found an empty command in `{url}`");
    }

    let url_command = (flags & 1 == 1).then_some(&*url);
    let keep_none = openim::decode(url_command, "op", Bytes::copy_from_slice(body), &|_| false);
    let keep_all = openim::decode(url_command, "op", Bytes::copy_from_slice(body), &|_| true);
    match (&keep_none, &keep_all) {
        (Ok(some), Ok(all)) => {
            assert_eq!(some.command, all.command);
            assert!(some.body.is_empty(), "keys kept that nobody reads (the command is read aside)");
        }
        (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string(), "refusal depends on the keys kept"),
        _ => panic!("keeping keys changed the outcome: {keep_none:?} / {keep_all:?}"),
    }
    // What is valid JSON is what serde_json's Value takes, with its messages, kept keys or not.
    // (This holds only without serde_json's `raw_value` feature: with it, Value parses the
    // string under a key named `$serde_json::private::RawValue` as JSON text, at any depth —
    // a parser differential the seeds `raw-value-token-*` catch if the feature comes back.)
    if let Err(e) = serde_json::from_slice::<Value>(body) {
        let message = match &keep_none {
            Err(openim::DecodeError::Body(BodyError::NotJson(m))) => m,
            other => panic!("a body serde_json refuses ({e}) decoded as {other:?}"),
        };
        assert_eq!(*message, e.to_string());
    }
    match keep_all {
        Ok(event) => {
            let c = &event.command;
            assert!(!c.is_empty() && c.len() <= 128, "command `{c}`");
            assert!(c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.'), "command `{c}`");
            let body_command = event.body.get("callbackCommand").and_then(Value::as_str);
            assert!(url_command.or(body_command) == Some(c.as_str()), "command `{c}` came from nowhere");
            assert!(body_command.is_none_or(|b| b == c), "body names `{body_command:?}`, event `{c}`");
            let reparsed: Value = serde_json::from_slice(&event.raw).expect("raw body is the JSON decoded");
            assert_eq!(reparsed, Value::Object(event.body), "raw and parsed body differ");
            assert_eq!(event.operation_id, "op");
        }
        Err(err) => {
            assert!(!err.kind().is_empty());
            // Whatever was wrong, every OpenIM version reads the answer as "go on".
            let answer: Value = serde_json::from_slice(&openim::encode_bad_request(&err)).expect("answer");
            assert_eq!(
                (answer["actionCode"].as_i64(), answer["errCode"].as_i64(), answer["nextCode"].as_i64()),
                (Some(0), Some(0), Some(0))
            );
            assert_eq!(answer["errDlt"], err.kind());
        }
    }
}
