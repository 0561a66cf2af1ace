//! OpenIM's callback wire format: a request (command from path, query or body; JSON object
//! body; `operationID` header) decoded into an [`Event`], and an answer encoded as
//! `CommonCallbackResp`.
//!
//! OpenIM ≥ 3.7 refuses an operation only when `actionCode == 0 && nextCode == 1`, shows
//! `errCode/errMsg/errDlt` to its client, and turns an errCode below 100 into a generic
//! server error. It never looks at the HTTP status, and fails the operation when the body
//! is not JSON. So every answer here is a JSON object with numbers as numbers.

use std::borrow::Cow;

use bytes::Bytes;
use serde::Serialize;
use serde::de::{Deserialize, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use crate::event::{Event, Source};
use crate::policy::Outcome;

/// The longest command name accepted.
const MAX_COMMAND_LEN: usize = 128;

/// Every callback command the OpenIM server defines (`pkg/callbackstruct/constant.go`,
/// main branch). Other commands are decided all the same; this list only bounds metric
/// labels, so that a caller cannot grow them without limit.
pub const COMMANDS: [&str; 52] = [
    "callbackAfterAddFriendAgreeCommand",
    "callbackAfterAddFriendCommand",
    "callbackAfterCreateGroupChatConversationsCommand",
    "callbackAfterCreateGroupCommand",
    "callbackAfterCreateSingleChatConversationsCommand",
    "callbackAfterDeleteFriendCommand",
    "callbackAfterDisMissGroupCommand",
    "callbackAfterGroupMsgReadCommand",
    "callbackAfterImportFriendsCommand",
    "callbackAfterJoinGroupCommand",
    "callbackAfterKickGroupCommand",
    "callbackAfterMsgSaveDBCommand",
    "callbackAfterQuitGroupCommand",
    "callbackAfterRemoveBlackCommand",
    "callbackAfterSendGroupMsgCommand",
    "callbackAfterSendSingleMsgCommand",
    "callbackAfterSetFriendRemarkCommand",
    "callbackAfterSetGroupInfoCommand",
    "callbackAfterSetGroupInfoExCommand",
    "callbackAfterSetGroupMemberInfoCommand",
    "callbackAfterSingleMsgReadCommand",
    "callbackAfterTransferGroupOwnerCommand",
    "callbackAfterUpdateUserInfoCommand",
    "callbackAfterUpdateUserInfoExCommand",
    "callbackAfterUserKickOffCommand",
    "callbackAfterUserOfflineCommand",
    "callbackAfterUserOnlineCommand",
    "callbackAfterUserRegisterCommand",
    "callbackBeforeAddBlackCommand",
    "callbackBeforeAddFriendAgreeCommand",
    "callbackBeforeAddFriendCommand",
    "callbackBeforeAfterMsgCommand",
    "callbackBeforeCreateGroupChatConversationsCommand",
    "callbackBeforeCreateGroupCommand",
    "callbackBeforeCreateSingleChatConversationsCommand",
    "callbackBeforeGroupOnlinePushCommand",
    "callbackBeforeImportFriendsCommand",
    "callbackBeforeInviteJoinGroupCommand",
    "callbackBeforeJoinGroupCommand",
    "callbackBeforeMembersJoinGroupCommand",
    "callbackBeforeMsgModifyCommand",
    "callbackBeforeOfflinePushCommand",
    "callbackBeforeOnlinePushCommand",
    "callbackBeforeSendGroupMsgCommand",
    "callbackBeforeSendSingleMsgCommand",
    "callbackBeforeSetFriendRemarkCommand",
    "callbackBeforeSetGroupInfoCommand",
    "callbackBeforeSetGroupInfoExCommand",
    "callbackBeforeSetGroupMemberInfoCommand",
    "callbackBeforeUpdateUserInfoCommand",
    "callbackBeforeUpdateUserInfoExCommand",
    "callbackBeforeUserRegisterCommand",
];

/// Where `command` is in [`COMMANDS`]; `None` for a command OpenIM does not define, which
/// metrics label `other`.
pub fn command_index(command: &str) -> Option<usize> {
    COMMANDS.binary_search(&command).ok()
}

/// The answer that lets the operation go on.
pub const ALLOW: &[u8] = br#"{"actionCode":0,"errCode":0,"errMsg":"","errDlt":"","nextCode":0}"#;

/// Why an OpenIM request could not be decoded. Each has its own `errCode` in the answer.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The body is not JSON.
    #[error("body is not valid JSON: {0}")]
    NotJson(String),
    /// The body is JSON but not an object.
    #[error("body must be a JSON object, got {0}")]
    NotObject(&'static str),
    /// The body is over the size limit.
    #[error("body is larger than the limit of {limit} bytes")]
    TooLarge { limit: usize },
    /// The body could not be read from the connection.
    #[error("body could not be read: {0}")]
    BodyRead(String),
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
    /// The body did not arrive within the read timeout.
    #[error("body was not received in time")]
    BodyTimeout,
}

impl DecodeError {
    /// The `errCode` of the answer; all are ≥ 100 like any OpenIM error code.
    pub fn err_code(&self) -> i32 {
        match self {
            DecodeError::NotJson(_) => 1001,
            DecodeError::NotObject(_) => 1002,
            DecodeError::TooLarge { .. } => 1003,
            DecodeError::BodyRead(_) => 1004,
            DecodeError::NoCommand => 1005,
            DecodeError::CommandMismatch { .. } => 1006,
            DecodeError::BadCommand(_) => 1007,
            DecodeError::CommandNotString => 1008,
            DecodeError::BodyTimeout => 1014,
        }
    }

    /// A short stable name, for metric labels.
    pub fn kind(&self) -> &'static str {
        match self {
            DecodeError::NotJson(_) => "not_json",
            DecodeError::NotObject(_) => "not_object",
            DecodeError::TooLarge { .. } => "too_large",
            DecodeError::BodyRead(_) => "body_read",
            DecodeError::NoCommand => "no_command",
            DecodeError::CommandMismatch { .. } => "command_mismatch",
            DecodeError::BadCommand(_) => "bad_command",
            DecodeError::CommandNotString => "command_not_string",
            DecodeError::BodyTimeout => "body_timeout",
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
    let text = std::str::from_utf8(&raw).map_err(|e| DecodeError::NotJson(format!("not UTF-8: {e}")))?;
    let mut de = serde_json::Deserializer::from_str(text);
    let body = TopLevel { keep }.deserialize(&mut de).and_then(|body| de.end().map(|()| body));
    let body = body.map_err(|e| DecodeError::NotJson(e.to_string()))?.map_err(DecodeError::NotObject)?;
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

/// A body's top level: the kept keys as a map, or the JSON type found instead of an object.
/// Values of keys not kept are checked as JSON and skipped without being built.
struct TopLevel<'k> {
    keep: &'k dyn Fn(&str) -> bool,
}

impl<'de> DeserializeSeed<'de> for TopLevel<'_> {
    type Value = Result<Map<String, Value>, &'static str>;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<Self::Value, D::Error> {
        de.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for TopLevel<'_> {
    type Value = Result<Map<String, Value>, &'static str>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut body = Map::new();
        while let Some(Key(key)) = map.next_key()? {
            if key == "callbackCommand" || (self.keep)(&key) {
                body.insert(key.into_owned(), map.next_value()?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(Ok(body))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Err("an array"))
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Err("a boolean"))
    }

    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Err("a number"))
    }

    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Err("a number"))
    }

    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Err("a number"))
    }

    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(Err("a string"))
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Err("null"))
    }
}

/// An object key, borrowed from the body unless it had escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string key")
            }

            fn visit_borrowed_str<E>(self, key: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(key)))
            }

            fn visit_str<E>(self, key: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(key.to_string())))
            }
        }
        de.deserialize_str(KeyVisitor)
    }
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
    fn commands_are_sorted_for_binary_search() {
        assert!(COMMANDS.is_sorted());
        assert_eq!(
            command_index("callbackAfterRemoveBlackCommand").map(|i| COMMANDS[i]),
            Some("callbackAfterRemoveBlackCommand")
        );
        assert_eq!(command_index("callbackNope"), None);
    }

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
        assert!(matches!(d(None, "nope"), Err(DecodeError::NotJson(_))));
        assert!(matches!(d(None, "[1]"), Err(DecodeError::NotObject("an array"))));
        assert!(matches!(d(None, "{}"), Err(DecodeError::NoCommand)));
        assert!(matches!(d(Some("a"), r#"{"callbackCommand":"b"}"#), Err(DecodeError::CommandMismatch { .. })));
        assert!(matches!(d(None, r#"{"callbackCommand":7}"#), Err(DecodeError::CommandNotString)));
        assert!(matches!(d(Some("a b"), "{}"), Err(DecodeError::BadCommand(_))));
        assert!(matches!(d(None, "null"), Err(DecodeError::NotObject("null"))));
        assert!(matches!(d(None, r#""s""#), Err(DecodeError::NotObject("a string"))));
        assert!(matches!(d(None, "{} x"), Err(DecodeError::NotJson(_))));
        let ok = d(Some("x"), r#"{"callbackCommand":"x","a":1}"#).unwrap();
        assert_eq!(ok.command, "x");
    }

    #[test]
    fn only_kept_keys_are_built_but_the_whole_body_is_checked() {
        let keep_a = |k: &str| k == "a" || k == "a/b";
        let d = |body: &'static [u8]| decode(Some("x"), "", Bytes::from_static(body), &keep_a);
        let event = d(br#"{"a":[1,{"b":2}],"b":{"deep":[true]},"a\/b":"e","callbackCommand":"x"}"#).unwrap();
        assert_eq!(Value::Object(event.body), serde_json::json!({"a":[1,{"b":2}],"a/b":"e","callbackCommand":"x"}));
        // Skipped values must still be JSON, and strings UTF-8.
        assert!(matches!(d(br#"{"a":1,"b":[1,}"#), Err(DecodeError::NotJson(_))));
        assert!(matches!(d(b"{\"a\":1,\"b\":\"\xff\"}"), Err(DecodeError::NotJson(_))));
        assert!(matches!(d(br#"{"b":"\x"}"#), Err(DecodeError::NotJson(_))));
    }
}
