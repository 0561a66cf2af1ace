//! Tencent Cloud Chat's callback wire format: the query string (`SdkAppid`,
//! `CallbackCommand`, `ClientIP`, `OptPlatform`, and `Sign`/`RequestTime` when callback
//! authentication is on), the JSON body, and the `ActionStatus` answers.
//!
//! Most of Tencent's callbacks report what already happened; callgate checks that a callback
//! is genuine, then acknowledges it. Its before-callbacks (`catalog::TENCENT_DECIDED`) are
//! decided, and answered here per command: as a whole, or item by item. Checks run cheapest
//! and most telling first: app ID, then signature, then the body.

use std::borrow::Cow;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::BodyError;
use crate::catalog::{self, CodeFamily, TencentAnswer};
use crate::decision::Outcome;
use crate::event::{Event, Source, TencentMeta};

/// The acknowledgement.
pub const OK: &[u8] = br#"{"ActionStatus":"OK","ErrorCode":0,"ErrorInfo":""}"#;

/// How Tencent names a command.
const NAMING: crate::event::CommandNaming = crate::event::CommandNaming {
    body_key: "CallbackCommand",
    outside: "the query",
    how: "send `CallbackCommand` in the query or the body",
};

/// What a Tencent callback must prove.
#[derive(Debug, Clone)]
pub struct TencentAuth {
    /// The app ID callbacks must carry; `None` accepts any.
    pub app_id: Option<String>,
    /// The callback-authentication token; `None` means callbacks are not signed.
    pub token: Option<String>,
    /// How far `RequestTime` may be from now.
    pub max_skew: Duration,
}

/// Why a Tencent callback was refused.
#[derive(Debug, thiserror::Error)]
pub enum TencentError {
    /// No `SdkAppid` while an app ID is configured.
    #[error("missing SdkAppid in the query")]
    MissingAppId,
    /// `SdkAppid` is not the configured one.
    #[error("SdkAppid `{0}` is not this server's app")]
    WrongAppId(String),
    /// No `Sign` while a token is configured.
    #[error("missing Sign in the query; callback authentication is on")]
    MissingSign,
    /// No `RequestTime` while a token is configured.
    #[error("missing RequestTime in the query; callback authentication is on")]
    MissingRequestTime,
    /// `RequestTime` is not a number of seconds.
    #[error("RequestTime `{0}` is not a Unix time in seconds")]
    BadRequestTime(String),
    /// `RequestTime` is too far from now.
    #[error("RequestTime is {skew_secs} s from now; at most {max_secs} s is accepted")]
    StaleRequestTime { skew_secs: u64, max_secs: u64 },
    /// `Sign` does not match.
    #[error("Sign does not match sha256(token + RequestTime)")]
    WrongSign,
    /// The body as a whole: too large, unread, not a JSON object.
    #[error(transparent)]
    Body(#[from] BodyError),
    /// The command cannot be told from the query and the body.
    #[error(transparent)]
    Command(#[from] crate::event::CommandError),
    /// A callback decided item by item whose list of items cannot be read.
    #[error("{command}: {list} must be a list of {{\"{account}\":…}}: {message}")]
    BadItems { command: String, list: String, account: String, message: String },
    /// A blocklist callback whose `PairList` is not a list of account pairs.
    #[error("{command}: PairList must be a list of {{\"From_Account\":…,\"To_Account\":…}}: {message}")]
    BadPairList { command: String, message: String },
}

impl TencentError {
    /// The HTTP status: 401 for signature problems, 403 for another app, 413 for size, else 400.
    pub fn status(&self) -> u16 {
        match self {
            TencentError::MissingSign
            | TencentError::MissingRequestTime
            | TencentError::BadRequestTime(_)
            | TencentError::StaleRequestTime { .. }
            | TencentError::WrongSign => 401,
            TencentError::MissingAppId | TencentError::WrongAppId(_) => 403,
            TencentError::Body(BodyError::TooLarge { .. }) => 413,
            _ => 400,
        }
    }

    /// A short stable name, for metric labels.
    pub fn kind(&self) -> &'static str {
        match self {
            TencentError::MissingAppId => "missing_app_id",
            TencentError::WrongAppId(_) => "wrong_app_id",
            TencentError::MissingSign => "missing_sign",
            TencentError::MissingRequestTime => "missing_request_time",
            TencentError::BadRequestTime(_) => "bad_request_time",
            TencentError::StaleRequestTime { .. } => "stale_request_time",
            TencentError::WrongSign => "wrong_sign",
            TencentError::Body(err) => err.kind(),
            TencentError::Command(err) => err.kind(),
            TencentError::BadPairList { .. } => "bad_pair_list",
            TencentError::BadItems { .. } => "bad_items",
        }
    }
}

/// The query parameters Tencent sends, read once per callback. A parameter given twice counts
/// by its last value.
#[derive(Debug, Default)]
pub struct Query<'a> {
    sdk_app_id: Option<Cow<'a, str>>,
    command: Option<Cow<'a, str>>,
    client_ip: Cow<'a, str>,
    opt_platform: Cow<'a, str>,
    sign: Option<Cow<'a, str>>,
    request_time: Option<Cow<'a, str>>,
}

impl<'a> Query<'a> {
    /// Reads `raw` (the query string, without `?`) as `application/x-www-form-urlencoded`.
    /// A pair without `%` or `+` (all Tencent sends) is borrowed as it is; only the others are
    /// decoded, by `form_urlencoded`, so both read every query alike.
    pub fn parse(raw: &'a str) -> Query<'a> {
        let mut q = Query::default();
        for pair in raw.split('&').filter(|pair| !pair.is_empty()) {
            let (key, value) = if pair.bytes().any(|b| b == b'%' || b == b'+') {
                match form_urlencoded::parse(pair.as_bytes()).next() {
                    Some((k, v)) => (k, v),
                    None => continue,
                }
            } else {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                (Cow::Borrowed(k), Cow::Borrowed(v))
            };
            match &*key {
                "SdkAppid" | "SdkAppId" => q.sdk_app_id = Some(value),
                "CallbackCommand" => q.command = Some(value),
                "ClientIP" => q.client_ip = value,
                "OptPlatform" => q.opt_platform = value,
                "Sign" => q.sign = Some(value),
                "RequestTime" => q.request_time = Some(value),
                _ => {}
            }
        }
        q
    }

    /// Whether the command named by `CallbackCommand` is a before-callback callgate decides:
    /// what an error answer must not refuse by accident.
    pub fn names_decided_command(&self) -> bool {
        self.command.as_deref().is_some_and(|command| catalog::tencent_decided(command).is_some())
    }
}

/// `lowercase_hex(sha256(token + request_time))`, Tencent's callback signature.
pub fn sign(token: &str, request_time: &str) -> String {
    let mut h = Sha256::new();
    h.update(token.as_bytes());
    h.update(request_time.as_bytes());
    hex::encode(h.finalize())
}

fn check_auth(auth: &TencentAuth, q: &Query<'_>, now: SystemTime) -> Result<(), TencentError> {
    if let Some(app_id) = &auth.app_id {
        match &q.sdk_app_id {
            None => return Err(TencentError::MissingAppId),
            Some(got) if got != app_id => return Err(TencentError::WrongAppId(got.chars().take(64).collect())),
            Some(_) => {}
        }
    }
    let Some(token) = &auth.token else { return Ok(()) };
    let sign_given = q.sign.as_deref().ok_or(TencentError::MissingSign)?;
    let time_text = q.request_time.as_deref().ok_or(TencentError::MissingRequestTime)?;
    let time: i64 =
        time_text.parse().map_err(|_| TencentError::BadRequestTime(time_text.chars().take(32).collect()))?;
    let now_secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    let skew_secs = now_secs.abs_diff(time);
    if skew_secs > auth.max_skew.as_secs() {
        return Err(TencentError::StaleRequestTime { skew_secs, max_secs: auth.max_skew.as_secs() });
    }
    // Compared as the 32 bytes the hex digits stand for (either case), without building text.
    let mut given = [0u8; 32];
    if hex::decode_to_slice(sign_given, &mut given).is_err() {
        return Err(TencentError::WrongSign);
    }
    let expected = Sha256::new().chain_update(token.as_bytes()).chain_update(time_text.as_bytes()).finalize();
    if !bool::from(expected.as_slice().ct_eq(&given)) {
        return Err(TencentError::WrongSign);
    }
    Ok(())
}

#[derive(Deserialize)]
struct Pair {
    #[serde(rename = "From_Account")]
    _from: String,
    #[serde(rename = "To_Account")]
    _to: String,
}

/// Decodes and verifies one Tencent callback; `now` is the time `RequestTime` is checked
/// against. Of the body, the event keeps the top-level keys `keep` accepts (the ones the
/// policy set reads), the command's and the lists this module reads (`PairList`, a per-item
/// command's items); the record keeps the raw body whole.
pub fn decode(
    auth: &TencentAuth,
    q: &Query<'_>,
    raw: Bytes,
    now: SystemTime,
    keep: &dyn Fn(&str) -> bool,
) -> Result<(Event, TencentMeta), TencentError> {
    check_auth(auth, q, now)?;
    let keep = |key: &str| key == NAMING.body_key || key == "PairList" || catalog::is_item_list(key) || keep(key);
    let body = super::parse_object(&raw, &keep)?;
    let command = crate::event::resolve_command(&NAMING, q.command.as_deref(), body.get(NAMING.body_key))?;
    if matches!(command.as_str(), "Sns.CallbackBlackListAdd" | "Sns.CallbackBlackListDelete") {
        let pairs = body.get("PairList").unwrap_or(&Value::Null);
        if let Err(e) = Vec::<Pair>::deserialize(pairs) {
            return Err(TencentError::BadPairList { command, message: e.to_string() });
        }
    }
    let meta = TencentMeta {
        sdk_app_id: q.sdk_app_id.as_deref().unwrap_or_default().to_string(),
        client_ip: q.client_ip.to_string(),
        opt_platform: q.opt_platform.to_string(),
    };
    let event = Event { source: Source::Tencent, command, operation_id: String::new(), body, raw };
    Ok((event, meta))
}

/// A Tencent callback posted to `explain`: no query to verify; the command from `command`
/// (the `?command=` of the request) or the body's `CallbackCommand`, every key kept.
pub fn decode_offline(command: Option<&str>, raw: Bytes) -> Result<Event, TencentError> {
    let body = super::parse_object(&raw, &|_| true)?;
    let command = crate::event::resolve_command(&NAMING, command, body.get(NAMING.body_key))?;
    Ok(Event { source: Source::Tencent, command, operation_id: String::new(), body, raw })
}

/// Whether a body posted to `explain` is Tencent's: its command is named `System.Name`, or
/// its body names it under Tencent's key.
pub fn looks_like_tencent(command: Option<&str>, raw: &[u8]) -> bool {
    command.is_some_and(catalog::is_tencent_name)
        || super::parse_object(raw, &|key| key == NAMING.body_key).is_ok_and(|body| body.contains_key(NAMING.body_key))
}

/// The answer to a callback callgate refuses to take (bad Sign, bad body, busy, …), with
/// `ErrorCode` 1 for an after-callback (not acknowledged). A before-callback gets
/// `ErrorCode` 0 instead: there, 1 would refuse the user's action because of callgate;
/// the HTTP status (not 200) tells Tencent the callback failed, which it treats as it
/// treats a timeout (by default, the action goes on).
pub fn encode_fail(message: &str, is_before: bool) -> Bytes {
    let code = if is_before { 0 } else { 1 };
    let body = serde_json::json!({"ActionStatus": "FAIL", "ErrorCode": code, "ErrorInfo": message});
    // `json!` orders keys alphabetically, which is the order Tencent documents.
    Bytes::from(body.to_string())
}

/// `ErrorCode` 2 on a message before-callback: drop the message, tell the sender it was sent.
const DISCARD_CODE: i32 = 2;

/// The answer to a before-callback decided as a whole: allow, refuse with the rule's code
/// for `family` and its message, or (messages) discard.
pub fn encode_decision(outcome: &Outcome, family: CodeFamily) -> Bytes {
    match outcome {
        Outcome::Allow => Bytes::from_static(OK),
        Outcome::Deny(r) => answer(r.code_for(family), &r.message, None),
        Outcome::Discard => answer(DISCARD_CODE, "", None),
    }
}

/// The answer to a before-callback decided item by item, each `(account, outcome)`.
pub fn encode_items(answer_shape: TencentAnswer, items: &[(String, &Outcome)], family: CodeFamily) -> Bytes {
    match answer_shape {
        TencentAnswer::ResultItems { account, .. } => {
            let results: Vec<Value> = items
                .iter()
                .map(|(id, outcome)| {
                    let (code, info) = match outcome {
                        Outcome::Deny(r) => (r.code_for(family), r.message.as_str()),
                        Outcome::Allow | Outcome::Discard => (0, ""),
                    };
                    json!({account: id, "ResultCode": code, "ResultInfo": info})
                })
                .collect();
            answer(0, "", Some(("ResultItem", Value::Array(results))))
        }
        TencentAnswer::RefusedAccounts { refused, .. } => {
            let refusals: Vec<&Outcome> = items.iter().map(|(_, o)| *o).filter(|o| o.is_refusal()).collect();
            match refusals.first() {
                // Every one refused: the whole request, with the first item's error for the user.
                Some(first) if refusals.len() == items.len() => encode_decision(first, family),
                _ => {
                    let ids: Vec<Value> =
                        items.iter().filter(|(_, o)| o.is_refusal()).map(|(id, _)| Value::from(id.as_str())).collect();
                    answer(0, "", Some((refused, Value::Array(ids))))
                }
            }
        }
        TencentAnswer::Whole | TencentAnswer::Message => {
            encode_decision(items.first().map_or(&Outcome::Allow, |(_, o)| o), family)
        }
    }
}

fn answer(code: i32, info: &str, extra: Option<(&str, Value)>) -> Bytes {
    let mut body = json!({"ActionStatus": "OK", "ErrorCode": code, "ErrorInfo": info});
    if let (Some((key, value)), Some(map)) = (extra, body.as_object_mut()) {
        map.insert(key.to_string(), value);
    }
    Bytes::from(body.to_string())
}

/// The items of a callback decided item by item: each object of the body's `list`, with the
/// account under `account` (as a string; a number is taken as its digits).
pub fn items<'e>(event: &'e Event, list: &str, account: &str) -> Result<Vec<(String, &'e Value)>, TencentError> {
    let bad = |message: &str| TencentError::BadItems {
        command: event.command.clone(),
        list: list.to_string(),
        account: account.to_string(),
        message: message.to_string(),
    };
    let Some(Value::Array(values)) = event.body.get(list) else {
        return Err(bad("missing or not a list"));
    };
    values
        .iter()
        .map(|item| match item.get(account) {
            Some(Value::String(id)) => Ok((id.clone(), item)),
            Some(Value::Number(n)) => Ok((n.to_string(), item)),
            _ => Err(bad("an item has no account")),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_669_872_112;

    fn auth() -> TencentAuth {
        TencentAuth {
            app_id: Some("1400000000".into()),
            token: Some("xxxxyyyy".into()),
            max_skew: Duration::from_secs(60),
        }
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn body() -> Bytes {
        Bytes::from_static(
            br#"{"CallbackCommand":"Sns.CallbackBlackListDelete","PairList":[{"From_Account":"a","To_Account":"b"}]}"#,
        )
    }

    const SIGNED: &str = "SdkAppid=1400000000&CallbackCommand=Sns.CallbackBlackListDelete&contenttype=json&ClientIP=1.2.3.4&OptPlatform=iOS&RequestTime=1669872112&Sign=17773bc39a671d7b9aa835458704d2a6db81360a5940292b587d6d760d484061";

    #[test]
    fn documented_test_vector() {
        assert_eq!(sign("xxxxyyyy", "1669872112"), "17773bc39a671d7b9aa835458704d2a6db81360a5940292b587d6d760d484061");
    }

    #[test]
    fn a_signed_fresh_callback_is_accepted() {
        let (event, meta) = decode(&auth(), &Query::parse(SIGNED), body(), at(NOW + 59), &|_| true).unwrap();
        assert_eq!(event.command, "Sns.CallbackBlackListDelete");
        assert_eq!(
            (meta.sdk_app_id.as_str(), meta.client_ip.as_str(), meta.opt_platform.as_str()),
            ("1400000000", "1.2.3.4", "iOS")
        );
    }

    #[test]
    fn each_check_refuses() {
        let d = |q: &str, t: u64| {
            decode(&auth(), &Query::parse(q), body(), at(t), &|_| true).map(|_| ()).unwrap_err().kind()
        };
        assert_eq!(d(&SIGNED.replace("SdkAppid=1400000000&", ""), NOW), "missing_app_id");
        assert_eq!(d(&SIGNED.replace("SdkAppid=1400000000", "SdkAppid=1"), NOW), "wrong_app_id");
        assert_eq!(d(&SIGNED[..SIGNED.find("&Sign").unwrap()], NOW), "missing_sign");
        assert_eq!(d(&SIGNED.replace("&RequestTime=1669872112", ""), NOW), "missing_request_time");
        assert_eq!(d(&SIGNED.replace("RequestTime=1669872112", "RequestTime=soon"), NOW), "bad_request_time");
        assert_eq!(d(SIGNED, NOW + 61), "stale_request_time");
        assert_eq!(d(SIGNED, NOW - 61), "stale_request_time");
        assert_eq!(d(&SIGNED.replace("Sign=1", "Sign=2"), NOW), "wrong_sign");
        assert_eq!(
            d(&SIGNED.replace("Sns.CallbackBlackListDelete", "Sns.CallbackBlackListAdd"), NOW),
            "command_mismatch"
        );
    }

    #[test]
    fn the_query_is_read_as_form_urlencoded_reads_it() {
        let q = Query::parse(
            "&&ClientIP=1+2&OptPlatform=a%3Db&Callback%43ommand=C2C.CallbackBeforeSendMsg&Sign&=x&SdkAppid=1=2",
        );
        assert_eq!(q.client_ip, "1 2");
        assert_eq!(q.opt_platform, "a=b");
        assert_eq!(q.command.as_deref(), Some("C2C.CallbackBeforeSendMsg"));
        assert!(q.names_decided_command());
        assert_eq!(q.sign.as_deref(), Some(""), "a key without `=` has an empty value");
        assert_eq!(q.sdk_app_id.as_deref(), Some("1=2"), "the value runs from the first `=`");
        let twice = Query::parse("CallbackCommand=C2C.CallbackBeforeSendMsg&CallbackCommand=C2C.CallbackAfterSendMsg");
        assert!(!twice.names_decided_command(), "the last of a parameter given twice counts");
    }

    #[test]
    fn a_sign_in_capitals_is_the_same_sign() {
        let upper = SIGNED.replace("17773bc39a671d7b9aa8", "17773BC39A671D7B9AA8");
        assert!(decode(&auth(), &Query::parse(&upper), body(), at(NOW), &|_| true).is_ok());
        let short = &SIGNED[..SIGNED.len() - 2];
        let d = decode(&auth(), &Query::parse(short), body(), at(NOW), &|_| true);
        assert_eq!(d.map(|_| ()).unwrap_err().kind(), "wrong_sign");
    }

    #[test]
    fn both_app_id_spellings_are_accepted() {
        assert!(
            decode(&auth(), &Query::parse(&SIGNED.replace("SdkAppid=", "SdkAppId=")), body(), at(NOW), &|_| true)
                .is_ok()
        );
    }

    #[test]
    fn body_checks() {
        let open = TencentAuth { app_id: None, token: None, max_skew: Duration::from_secs(60) };
        let d = |q: &str, b: &'static str| {
            decode(&open, &Query::parse(q), Bytes::from_static(b.as_bytes()), at(NOW), &|_| true)
                .map(|_| ())
                .unwrap_err()
                .kind()
        };
        assert_eq!(d("", "nope"), "not_json");
        assert_eq!(d("", "[]"), "not_object");
        assert_eq!(d("", "{}"), "no_command");
        assert_eq!(d("CallbackCommand=a%20b", "{}"), "bad_command");
        assert_eq!(
            d("CallbackCommand=Sns.CallbackBlackListAdd", r#"{"PairList":[{"From_Account":"a"}]}"#),
            "bad_pair_list"
        );
        assert_eq!(d("CallbackCommand=Sns.CallbackBlackListAdd", "{}"), "bad_pair_list");
        assert!(
            decode(
                &open,
                &Query::parse("CallbackCommand=Group.CallbackAfterNewMemberJoin"),
                Bytes::from_static(b"{}"),
                at(NOW),
                &|_| true
            )
            .is_ok()
        );
    }
}
