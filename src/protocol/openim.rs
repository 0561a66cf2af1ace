//! OpenIM's callback wire format: a request (command from path, query or body; JSON object
//! body; `operationID` header) decoded into an [`Event`], and an answer encoded as
//! `CommonCallbackResp`.
//!
//! OpenIM ≥ 3.7 refuses an operation only when `actionCode == 0 && nextCode == 1`, shows
//! `errCode/errMsg/errDlt` to its client, and turns an errCode below 100 into a generic
//! server error. It never looks at the HTTP status, and fails the operation when the body
//! is not JSON. So every answer here is a JSON object with numbers as numbers.

use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;

use super::BodyError;

use crate::catalog;
use crate::event::{Event, Source};
use crate::policy::Outcome;

/// The longest command name accepted.
const MAX_COMMAND_LEN: usize = 128;

/// Where `command` is in [`catalog::OPENIM`]; `None` for a command OpenIM does not define,
/// which metrics label `other`. Other commands are decided all the same; the catalog only
/// bounds metric labels here, so that a caller cannot grow them without limit.
pub fn command_index(command: &str) -> Option<usize> {
    catalog::openim_index(command)
}

/// The answer that lets the operation go on.
pub const ALLOW: &[u8] = br#"{"actionCode":0,"errCode":0,"errMsg":"","errDlt":"","nextCode":0}"#;

/// Why an OpenIM request could not be decoded. Each has its own `errCode` in the answer.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The body as a whole: too large, unread, not a JSON object.
    #[error(transparent)]
    Body(#[from] BodyError),
    /// Neither the URL nor the body names a command.
    #[error("no callback command: POST to /openim/{{command}} or send `callbackCommand` in the body")]
    NoCommand,
    /// The URL and the body name different commands.
    #[error("callback command in the URL is `{url}` but the body's `callbackCommand` is `{body}`")]
    CommandMismatch { url: String, body: String },
    /// The command is not a plausible command name.
    #[error("callback command `{0}` is not valid: use letters, digits, `_` and `.`, at most 128")]
    BadCommand(String),
    /// `callbackCommand` is present but not a string.
    #[error("`callbackCommand` must be a string")]
    CommandNotString,
}

impl DecodeError {
    /// The `errCode` of the answer; all are ≥ 100 like any OpenIM error code.
    pub fn err_code(&self) -> i32 {
        match self {
            DecodeError::Body(BodyError::NotJson(_)) => 1001,
            DecodeError::Body(BodyError::NotObject(_)) => 1002,
            DecodeError::Body(BodyError::TooLarge { .. }) => 1003,
            DecodeError::Body(BodyError::Read(_)) => 1004,
            DecodeError::Body(BodyError::Timeout) => 1014,
            DecodeError::NoCommand => 1005,
            DecodeError::CommandMismatch { .. } => 1006,
            DecodeError::BadCommand(_) => 1007,
            DecodeError::CommandNotString => 1008,
        }
    }

    /// A short stable name, for metric labels.
    pub fn kind(&self) -> &'static str {
        match self {
            DecodeError::Body(err) => err.kind(),
            DecodeError::NoCommand => "no_command",
            DecodeError::CommandMismatch { .. } => "command_mismatch",
            DecodeError::BadCommand(_) => "bad_command",
            DecodeError::CommandNotString => "command_not_string",
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
    let body = super::parse_object(&raw, &|key| key == "callbackCommand" || keep(key))?;
    let body_command = match body.get("callbackCommand") {
        None => None,
        Some(Value::String(c)) => Some(c.as_str()),
        Some(_) => return Err(DecodeError::CommandNotString),
    };
    let command = match (url_command, body_command) {
        (Some(url), Some(body)) if url != body => {
            return Err(DecodeError::CommandMismatch { url: url.to_string(), body: body.to_string() });
        }
        (Some(c), _) | (None, Some(c)) => c,
        (None, None) => return Err(DecodeError::NoCommand),
    };
    if !super::is_valid_command(command, MAX_COMMAND_LEN) {
        return Err(DecodeError::BadCommand(command.chars().take(MAX_COMMAND_LEN).collect()));
    }
    Ok(Event {
        source: Source::OpenIm,
        command: command.to_string(),
        operation_id: operation_id.to_string(),
        body,
        raw,
    })
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

/// The answer for a decided callback: allow, or a refusal OpenIM passes to its client.
pub fn encode(outcome: &Outcome) -> Bytes {
    match outcome {
        Outcome::Allow => Bytes::from_static(ALLOW),
        Outcome::Deny(r) => to_bytes(&Answer {
            action_code: 0,
            err_code: r.code,
            err_msg: &r.message,
            err_dlt: &r.detail,
            next_code: 1,
        }),
    }
}

/// The answer for a request that could not be decoded. `actionCode` 1 tells OpenIM this is
/// not a refusal; the errCode and message say what was wrong.
pub fn encode_bad_request(err: &DecodeError) -> Bytes {
    encode_error(err.err_code(), &err.to_string())
}

/// An error answer (`actionCode` 1, not a refusal) with any code and message, for requests
/// refused before decoding (unknown route, wrong method).
pub fn encode_error(code: i32, message: &str) -> Bytes {
    to_bytes(&Answer { action_code: 1, err_code: code, err_msg: message, err_dlt: "", next_code: 0 })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Refusal;
    use std::sync::Arc;

    #[test]
    fn refusal_bytes() {
        let r = Refusal { code: 20001, message: "no \"way\"".into(), detail: "d".into() };
        assert_eq!(
            &encode(&Outcome::Deny(Arc::new(r)))[..],
            br#"{"actionCode":0,"errCode":20001,"errMsg":"no \"way\"","errDlt":"d","nextCode":1}"#
        );
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
        assert!(matches!(d(None, "{}"), Err(DecodeError::NoCommand)));
        assert!(matches!(d(Some("a"), r#"{"callbackCommand":"b"}"#), Err(DecodeError::CommandMismatch { .. })));
        assert!(matches!(d(None, r#"{"callbackCommand":7}"#), Err(DecodeError::CommandNotString)));
        assert!(matches!(d(Some("a b"), "{}"), Err(DecodeError::BadCommand(_))));
        let ok = d(Some("x"), r#"{"callbackCommand":"x","a":1}"#).unwrap();
        assert_eq!(ok.command, "x");
    }

    #[test]
    fn the_command_is_kept_whatever_else_is_dropped() {
        let body = Bytes::from_static(br#"{"callbackCommand":"x","a":1,"b":2}"#);
        let event = decode(None, "", body, &|k| k == "a").unwrap();
        assert_eq!(Value::Object(event.body), serde_json::json!({"callbackCommand":"x","a":1}));
    }
}
