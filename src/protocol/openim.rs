//! OpenIM's callback wire format: a request (command from path, query or body; JSON object
//! body; `operationID` header) decoded into an [`Event`], and an answer encoded as
//! `CommonCallbackResp`.
//!
//! How each OpenIM version reads an answer (its own client code; the table is in
//! docs/openim.md): ≥ 3.7 refuses only when `actionCode == 0 && nextCode == 1`; 3.6 never
//! refuses; 3.4.2–3.5 when `actionCode != 0 || nextCode == 1`; 3.0–3.4.1 also when
//! `errCode != 0`; 2.x only when `actionCode != 0`. Every 3.x turns an errCode below 100 into a
//! generic server error. So:
//! - a refusal is `actionCode 0, nextCode 1` with the rule's errCode (≥ 100) for 3.x, and
//!   carries a non-zero `actionCode` too for 2.x ([`OpenImVersion::V2`]);
//! - an answer that must let the operation go on (input callgate could not decode) is all
//!   zeros in every version, with the reason in `errMsg` and its short name in `errDlt`.
//!
//! Every answer is a JSON object with numbers as numbers: ≥ 3.7 fails the user's operation
//! when the body is not JSON.

use bytes::Bytes;
use serde::Serialize;

use super::BodyError;

use crate::catalog;
use crate::decision::Outcome;
use crate::event::{Event, Source};

/// How OpenIM names a command.
pub const NAMING: crate::event::CommandNaming = crate::event::CommandNaming {
    body_key: "callbackCommand",
    outside: "the URL",
    how: "POST to /openim/{command} or send `callbackCommand` in the body",
};

/// Where `command` is in [`catalog::OPENIM`]; `None` for a command OpenIM does not define,
/// which metrics label `other`. Other commands are decided all the same; the catalog only
/// bounds metric labels here, so that a caller cannot grow them without limit.
pub fn command_index(command: &str) -> Option<usize> {
    catalog::openim_index(command)
}

/// The answer that lets the operation go on.
pub const ALLOW: &[u8] = br#"{"actionCode":0,"errCode":0,"errMsg":"","errDlt":"","nextCode":0}"#;

/// The OpenIM versions that read an answer differently, oldest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum OpenImVersion {
    /// 2.x: posts to the bare URL; refuses only on a non-zero `actionCode`.
    V2,
    /// 3.0–3.4.1: posts to `{url}?command=`; refuses on `actionCode != 0 || nextCode == 1 || errCode != 0`.
    V3_0,
    /// 3.4.2–3.5.x: posts to `{url}/{command}`; refuses on `actionCode != 0 || nextCode == 1`.
    V3_4_2,
    /// 3.6.x: posts to `{url}/{command}`; never refuses (a refusal is only logged).
    V3_6,
    /// 3.7 and later: posts to `{url}/{command}`; refuses only on `actionCode == 0 && nextCode == 1`.
    V3_7,
}

impl OpenImVersion {
    /// Parses a version as operators write it: `3.8.3`, `v3.5`, `2`, `3.8.3-patch.16`.
    pub fn parse(text: &str) -> Result<OpenImVersion, String> {
        let bad = || format!("`{text}` is not an OpenIM version; write it as in `3.8.3` or `2.3`");
        let core = text.trim_start_matches(['v', 'V']).split(['-', '+']).next().unwrap_or("");
        let mut parts = core.split('.').map(|p| p.parse::<u32>().map_err(|_| bad()));
        let major = parts.next().ok_or_else(bad)??;
        let minor = parts.next().transpose()?.unwrap_or(0);
        let patch = parts.next().transpose()?.unwrap_or(0);
        Ok(match (major, minor, patch) {
            (0..=2, _, _) => OpenImVersion::V2,
            (3, 0..=3, _) | (3, 4, 0..=1) => OpenImVersion::V3_0,
            (3, 4..=5, _) => OpenImVersion::V3_4_2,
            (3, 6, _) => OpenImVersion::V3_6,
            _ => OpenImVersion::V3_7,
        })
    }

    /// The version a request's URL form shows: the bare URL is 2.x, `?command=` is 3.0–3.4.1,
    /// and `/{command}` any later one (they all read a refusal the same way, but 3.6).
    pub fn from_url_form(has_path_command: bool, has_query_command: bool) -> OpenImVersion {
        match (has_path_command, has_query_command) {
            (true, _) => OpenImVersion::V3_7,
            (false, true) => OpenImVersion::V3_0,
            (false, false) => OpenImVersion::V2,
        }
    }

    /// Whether this version ever refuses an operation for a callback's answer.
    pub fn enforces_refusals(self) -> bool {
        self != OpenImVersion::V3_6
    }

    /// The range of versions, for messages.
    pub fn as_str(self) -> &'static str {
        match self {
            OpenImVersion::V2 => "2.x",
            OpenImVersion::V3_0 => "3.0-3.4.1",
            OpenImVersion::V3_4_2 => "3.4.2-3.5",
            OpenImVersion::V3_6 => "3.6",
            OpenImVersion::V3_7 => "3.7+",
        }
    }
}

/// Why an OpenIM request could not be decoded. Answered as "go on" (all zeros) with the
/// reason in `errMsg` and [`DecodeError::kind`] in `errDlt` — except a body over the size
/// limit, which is refused (see [`encode_too_large`]).
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The body as a whole: too large, unread, not a JSON object.
    #[error(transparent)]
    Body(#[from] BodyError),
    /// The command cannot be told from the URL and the body.
    #[error(transparent)]
    Command(#[from] crate::event::CommandError),
}

impl DecodeError {
    /// A short stable name, for metric labels.
    pub fn kind(&self) -> &'static str {
        match self {
            DecodeError::Body(err) => err.kind(),
            DecodeError::Command(err) => err.kind(),
        }
    }
}

/// The command named in the URL, by path (`/openim/{command}`) or query (`?command=`).
/// `None` when the URL names none. Slashes around the path command are ignored, so a
/// `webhooks.yml` url ending in `/` (OpenIM then posts to `/openim//{command}`) still works.
pub fn command_from_url<'a>(path_command: Option<&'a str>, query: &'a str) -> Option<std::borrow::Cow<'a, str>> {
    if let Some(c) = path_command.map(|c| c.trim_matches('/')).filter(|c| !c.is_empty()) {
        return Some(c.into());
    }
    form_urlencoded::parse(query.as_bytes()).find(|(k, v)| k == "command" && !v.is_empty()).map(|(_, v)| v)
}

/// Whether the query names a command (`?command=`, OpenIM 3.0–3.4.1's URL form).
pub fn has_query_command(query: &str) -> bool {
    form_urlencoded::parse(query.as_bytes()).any(|(k, v)| k == "command" && !v.is_empty())
}

/// Decodes one OpenIM callback. `url_command` is what [`command_from_url`] found.
///
/// Of the body, only `callbackCommand` and the top-level keys `keep` accepts are built into
/// the event's map (pass the policy set's `reads`): rules read a few fields, and building
/// the rest — a message's content, its @-lists — cost more than deciding. The whole body is
/// still checked to be one UTF-8 JSON object, and kept as received in `raw`.
pub fn decode(
    url_command: Option<&str>,
    operation_id: &str,
    raw: Bytes,
    keep: &dyn Fn(&str) -> bool,
) -> Result<Event, DecodeError> {
    let mut in_body = None;
    let body = super::parse_object_aside(&raw, keep, Some((NAMING.body_key, &mut in_body)))?;
    let command = crate::event::resolve_command(&NAMING, url_command, body.get(NAMING.body_key).or(in_body.as_ref()))?;
    Ok(Event { source: Source::OpenIm, command, operation_id: operation_id.to_string(), body, raw })
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Answer<'a> {
    action_code: i32,
    err_code: i32,
    err_msg: &'a str,
    err_dlt: &'a str,
    next_code: i32,
}

fn to_bytes(answer: &Answer<'_>) -> Bytes {
    // Serialising a struct of numbers and strings into a Vec cannot fail.
    Bytes::from(serde_json::to_vec(answer).unwrap_or_else(|_| ALLOW.to_vec()))
}

/// The `errCode` of callgate's own refusal of a body over the size limit.
pub const TOO_LARGE_ERR_CODE: i32 = 1003;

/// The answer for a decided callback: allow, or a refusal OpenIM passes to its client, in the
/// form `version` reads as one.
pub fn encode(outcome: &Outcome, version: OpenImVersion) -> Bytes {
    match outcome {
        // A discard reaches only Tencent messages (the loader checks): never OpenIM.
        Outcome::Allow | Outcome::Discard => Bytes::from_static(ALLOW),
        Outcome::Deny(r) => encode_refusal(r.code, &r.message, &r.detail, version),
    }
}

fn encode_refusal(code: i32, message: &str, detail: &str, version: OpenImVersion) -> Bytes {
    // 2.x looks at actionCode alone; 3.x refuses on nextCode 1 (≥ 3.7 only if actionCode is 0).
    let action_code = if version == OpenImVersion::V2 { 1 } else { 0 };
    to_bytes(&Answer { action_code, err_code: code, err_msg: message, err_dlt: detail, next_code: 1 })
}

/// The refusal of a body over the size limit. Not "go on": a body an attacker can pad must
/// never turn a refusal into an allow.
pub fn encode_too_large(limit: usize, version: OpenImVersion) -> Bytes {
    let message = format!("callback body is larger than callgate's limit of {limit} bytes (--max-body-bytes)");
    encode_refusal(TOO_LARGE_ERR_CODE, &message, "too_large", version)
}

/// The answer to a request callgate could not decode or would not serve: "go on" in every
/// OpenIM version (all codes zero), with the reason in `errMsg` and its short name in
/// `errDlt`. It is not a refusal — there is nothing to decide — and no version may read it as
/// one (3.0–3.4.1 refuse on any non-zero errCode).
pub fn encode_error(reason: &str, message: &str) -> Bytes {
    to_bytes(&Answer { action_code: 0, err_code: 0, err_msg: message, err_dlt: reason, next_code: 0 })
}

/// [`encode_error`] for a decode error.
pub fn encode_bad_request(err: &DecodeError) -> Bytes {
    encode_error(err.kind(), &err.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decision::Refusal;
    use crate::event::CommandError;
    use serde_json::Value;
    use std::sync::Arc;

    #[test]
    fn refusal_bytes() {
        let r = Refusal::new(20001, "no \"way\"", "d");
        let deny = Outcome::Deny(Arc::new(r));
        assert_eq!(
            &encode(&deny, OpenImVersion::V3_7)[..],
            br#"{"actionCode":0,"errCode":20001,"errMsg":"no \"way\"","errDlt":"d","nextCode":1}"#
        );
        assert_eq!(
            &encode(&deny, OpenImVersion::V2)[..],
            br#"{"actionCode":1,"errCode":20001,"errMsg":"no \"way\"","errDlt":"d","nextCode":1}"#
        );
    }

    #[test]
    fn an_undecodable_request_is_answered_go_on_in_every_version() {
        let answer: Value = serde_json::from_slice(&encode_bad_request(&DecodeError::Command(CommandError::Missing {
            how: NAMING.how,
        })))
        .unwrap();
        assert_eq!(answer["actionCode"], 0);
        assert_eq!(answer["errCode"], 0);
        assert_eq!(answer["nextCode"], 0);
        assert_eq!(answer["errDlt"], "no_command");
        assert!(answer["errMsg"].as_str().unwrap().starts_with("no callback command"));
    }

    #[test]
    fn versions() {
        use OpenImVersion::*;
        for (text, v) in [
            ("2.3.3", V2),
            ("v3.0", V3_0),
            ("3.4.0", V3_0),
            ("3.4.2", V3_4_2),
            ("3.5.1", V3_4_2),
            ("3.6.0", V3_6),
            ("3.7", V3_7),
            ("3.8.3-patch.16", V3_7),
            ("4", V3_7),
        ] {
            assert_eq!(OpenImVersion::parse(text), Ok(v), "{text}");
        }
        for bad in ["", "x", "3.x", "-1"] {
            assert!(OpenImVersion::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(OpenImVersion::from_url_form(true, true), V3_7);
        assert_eq!(OpenImVersion::from_url_form(false, true), V3_0);
        assert_eq!(OpenImVersion::from_url_form(false, false), V2);
    }

    #[test]
    fn command_sources() {
        assert_eq!(command_from_url(Some("a"), "command=b").as_deref(), Some("a"));
        assert_eq!(command_from_url(None, "contenttype=json&command=b").as_deref(), Some("b"));
        assert_eq!(command_from_url(Some(""), "contenttype=json").as_deref(), None);
        assert_eq!(command_from_url(Some("/a/"), "").as_deref(), Some("a"));
        assert_eq!(command_from_url(Some(""), "command=").as_deref(), None);
    }

    #[test]
    fn decode_errors() {
        let d = |url: Option<&str>, body: &'static str| decode(url, "", Bytes::from_static(body.as_bytes()), &|_| true);
        assert!(matches!(d(None, "nope"), Err(DecodeError::Body(BodyError::NotJson(_)))));
        assert!(matches!(d(None, "[1]"), Err(DecodeError::Body(BodyError::NotObject("an array")))));
        assert!(matches!(d(None, "{}"), Err(DecodeError::Command(CommandError::Missing { .. }))));
        assert!(matches!(
            d(Some("a"), r#"{"callbackCommand":"b"}"#),
            Err(DecodeError::Command(CommandError::Mismatch { .. }))
        ));
        assert!(matches!(
            d(None, r#"{"callbackCommand":7}"#),
            Err(DecodeError::Command(CommandError::NotString { .. }))
        ));
        assert!(matches!(d(Some("a b"), "{}"), Err(DecodeError::Command(CommandError::Invalid(_)))));
        let ok = d(Some("x"), r#"{"callbackCommand":"x","a":1}"#).unwrap();
        assert_eq!(ok.command, "x");
    }

    #[test]
    fn the_command_is_read_from_the_body_but_kept_in_it_only_when_a_rule_reads_it() {
        let body = Bytes::from_static(br#"{"callbackCommand":"x","a":1,"b":2}"#);
        let event = decode(None, "", body.clone(), &|k| k == "a").unwrap();
        assert_eq!(event.command, "x");
        assert_eq!(Value::Object(event.body), serde_json::json!({"a":1}));
        let event = decode(None, "", body.clone(), &|k| k == "callbackCommand").unwrap();
        assert_eq!(Value::Object(event.body), serde_json::json!({"callbackCommand":"x"}));
        let mismatch = decode(Some("y"), "", body, &|k| k == "a").unwrap_err();
        assert_eq!(mismatch.kind(), "command_mismatch");
        let not_string = decode(None, "", Bytes::from_static(br#"{"callbackCommand":1}"#), &|_| false).unwrap_err();
        assert_eq!(not_string.kind(), "command_not_string");
    }
}
