//! What replay reads of one record line, in one pass and without building the line as a
//! `serde_json::Value`: each field is read as `Value::as_str` or `Value::as_i64` would read
//! it (anything else is absent; `would` and `dry_run`, rarely there, are parsed whole), and the
//! body is built only for the keys a policy set reads, by the parser the server decodes
//! requests with. So a record costs one scan and a few small fields, however large its body.
//!
//! Two readers give the same [`Fields`]: `scan`, fast, for lines of the shape the server
//! writes, and the exact one here (serde_json, as the request decoder parses), for every
//! line `scan` leaves.

mod scan;

#[cfg(fuzzing)]
pub(super) use scan::agreement;

use std::borrow::Cow;

use serde::Deserialize;
use serde::de::{Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use super::Answer;
use crate::protocol::{Key, TopLevel};

/// The fields of a record that replay reads.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Fields<'a> {
    time: Option<Cow<'a, str>>,
    source: Option<Cow<'a, str>>,
    command: Option<Cow<'a, str>>,
    operation_id: Option<Cow<'a, str>>,
    decision: Option<Cow<'a, str>>,
    rule: Option<Cow<'a, str>>,
    error_code: Option<i64>,
    // Parsed as `Value`s, not kept raw: serde_json's `raw_value` feature would change how
    // every `Value` is parsed, the request decoder's too (a key named
    // `$serde_json::private::RawValue` would read its string as JSON; the fuzz seeds
    // `raw-value-token-*` catch it).
    would: Option<Value>,
    dry_run: Option<Value>,
    /// Whether the record has `items` (a Tencent callback decided item by item).
    has_items: bool,
    /// The body's kept keys, or the JSON type found instead of an object.
    body: Option<Result<Map<String, Value>, &'static str>>,
}

/// Reads a record line's map into [`Fields`], keeping the body keys `keep` accepts.
struct FieldsVisitor<'k> {
    keep: &'k dyn Fn(&str) -> bool,
}

impl<'de> Visitor<'de> for FieldsVisitor<'_> {
    type Value = Fields<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a record (a JSON object)")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields<'de>, A::Error> {
        let mut f = Fields::default();
        // A key written twice counts as its last value, as in a parsed `Value`.
        while let Some(Key(key)) = map.next_key()? {
            let text = match &*key {
                "time" => &mut f.time,
                "source" => &mut f.source,
                "command" => &mut f.command,
                "operation_id" => &mut f.operation_id,
                "decision" => &mut f.decision,
                "rule" => &mut f.rule,
                "error_code" => {
                    f.error_code = map.next_value::<Integer>()?.0;
                    continue;
                }
                "would" => {
                    f.would = map.next_value()?;
                    continue;
                }
                "dry_run" => {
                    f.dry_run = map.next_value()?;
                    continue;
                }
                "items" => {
                    f.has_items = true;
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
                "body" => {
                    f.body = Some(map.next_value_seed(TopLevel { keep: self.keep, aside: None })?);
                    continue;
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
            };
            *text = map.next_value::<Text<'de>>()?.0;
        }
        Ok(f)
    }
}

/// A field read as `Value::as_str` reads it: a string (borrowed unless it had escapes), or
/// `None` for any other JSON.
struct Text<'a>(Option<Cow<'a, str>>);

/// A field read as `Value::as_i64` reads it: an integer in range, or `None` for any other
/// JSON.
struct Integer(Option<i64>);

impl<'de> Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        de.deserialize_any(Loose).map(|v| Text(if let Scalar::Text(t) = v { Some(t) } else { None }))
    }
}

impl<'de> Deserialize<'de> for Integer {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        de.deserialize_any(Loose).map(|v| Integer(if let Scalar::Integer(n) = v { Some(n) } else { None }))
    }
}

/// What [`Loose`] found.
enum Scalar<'a> {
    Text(Cow<'a, str>),
    Integer(i64),
    Other,
}

/// Takes any JSON value, keeping only a string or an integer in `i64`'s range.
struct Loose;

impl<'de> Visitor<'de> for Loose {
    type Value = Scalar<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Text(Cow::Borrowed(s)))
    }

    fn visit_str<E>(self, s: &str) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Text(Cow::Owned(s.to_string())))
    }

    fn visit_i64<E>(self, n: i64) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Integer(n))
    }

    fn visit_u64<E>(self, n: u64) -> Result<Scalar<'de>, E> {
        Ok(i64::try_from(n).map_or(Scalar::Other, Scalar::Integer))
    }

    fn visit_f64<E>(self, _: f64) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Other)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Other)
    }

    fn visit_unit<E>(self) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Other)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Scalar<'de>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Scalar::Other)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Scalar<'de>, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Scalar::Other)
    }
}

/// Which body keys a reader builds.
pub(super) trait Keep {
    /// Whether the body key `key` is built.
    fn keeps(&self, key: &str) -> bool;
}

impl<F: Fn(&str) -> bool> Keep for F {
    #[inline(always)]
    fn keeps(&self, key: &str) -> bool {
        self(key)
    }
}

/// Bodies built before, one per command, each rewritten in place by the next record of its
/// command: a replay builds a body for every record, and records of one command mostly keep
/// the same keys, so their strings and nodes are reused. (With serde_json's
/// `preserve_order`, a body's keys would then keep the earlier body's order: a caller that
/// shows bodies passes new `Bodies` each time.)
#[derive(Default)]
pub(super) struct Bodies(Vec<(String, Map<String, Value>)>);

impl Bodies {
    /// Commands whose bodies are kept at most.
    const MAX: usize = 16;

    /// The body kept for `command`, taken out; an empty one if none is.
    fn take(&mut self, command: Option<&str>) -> Map<String, Value> {
        let kept = self.0.iter_mut().find(|(c, _)| Some(c.as_str()) == command);
        kept.map(|(_, body)| std::mem::take(body)).unwrap_or_default()
    }

    /// Keeps `body`, of a record of `command`, for the next record of that command.
    pub(super) fn keep(&mut self, command: &str, body: Map<String, Value>) {
        if let Some((_, kept)) = self.0.iter_mut().find(|(c, _)| c == command) {
            *kept = body;
        } else if self.0.len() < Self::MAX {
            self.0.push((command.to_string(), body));
        }
    }
}

impl<'a> Fields<'a> {
    /// The verdict of one item of a record decided item by item (`items`: its `decision`,
    /// `rule`, `error_code`, `dry_run`, `would`), read as a record's are.
    pub(super) fn of_item(item: &'a Map<String, Value>) -> Fields<'a> {
        let text = |key: &str| item.get(key).and_then(Value::as_str).map(Cow::Borrowed);
        Fields {
            decision: text("decision"),
            rule: text("rule"),
            error_code: item.get("error_code").and_then(Value::as_i64),
            would: item.get("would").cloned(),
            dry_run: item.get("dry_run").cloned(),
            ..Fields::default()
        }
    }

    /// The fields of one record line, with the body keys `keep` accepts; `Err` when it is
    /// not a JSON object. The body may be one of `bodies` rewritten in place.
    pub(super) fn parse(line: &'a str, keep: &impl Keep, bodies: &mut Bodies) -> Result<Fields<'a>, String> {
        scan::fields(line, keep, bodies).map_or_else(|| Fields::parse_exact(line, &|key| keep.keeps(key)), Ok)
    }

    /// [`Fields::parse`] by serde_json alone: what a line may hold, and every message, are
    /// decided here.
    fn parse_exact(line: &'a str, keep: &dyn Fn(&str) -> bool) -> Result<Fields<'a>, String> {
        let mut de = serde_json::Deserializer::from_str(line);
        let fields = de.deserialize_map(FieldsVisitor { keep }).and_then(|f| de.end().map(|()| f));
        fields.map_err(|e| format!("not JSON: {e}"))
    }

    pub(super) fn time(&self) -> Option<Cow<'a, str>> {
        self.time.clone()
    }

    pub(super) fn source(&self) -> Option<Cow<'a, str>> {
        self.source.clone()
    }

    pub(super) fn command(&self) -> Option<Cow<'a, str>> {
        self.command.clone()
    }

    pub(super) fn operation_id(&self) -> Option<Cow<'a, str>> {
        self.operation_id.clone()
    }

    /// Whether the record is of a Tencent callback decided item by item.
    pub(super) fn has_items(&self) -> bool {
        self.has_items
    }

    /// The answer the record says was sent (`ack` for a Tencent report).
    pub(super) fn decision(&self) -> Option<&str> {
        self.decision.as_deref()
    }

    /// What was answered then: the record's `would` under `serve --dry-run`, else its
    /// decision.
    pub(super) fn old_answer(&self) -> Result<Answer, String> {
        let owned = |v: Option<&Value>| v.and_then(Value::as_str).map(|s| Cow::Owned(s.to_string()));
        let (decision, rule, error_code) = match self.would.as_ref().and_then(Value::as_object) {
            Some(would) => (
                owned(would.get("decision")),
                owned(would.get("rule")),
                would.get("error_code").and_then(Value::as_i64),
            ),
            None => (self.decision.clone(), self.rule.clone(), self.error_code),
        };
        let decision = match decision.as_deref() {
            Some("allow") => "allow",
            Some("deny") => "deny",
            Some("discard") => "discard",
            other => return Err(format!("decision {other:?} is not allow, deny or discard")),
        };
        Ok(Answer { decision, rule: rule.map(Cow::into_owned), error_code })
    }

    /// The dry-run rules that would have refused the record's callback then.
    pub(super) fn would_denies(&self) -> Vec<Cow<'a, str>> {
        let Some(hits) = self.dry_run.as_ref().and_then(Value::as_array) else {
            return Vec::new();
        };
        hits.iter()
            .filter_map(Value::as_object)
            .filter(|h| h.get("would").and_then(Value::as_str) == Some("deny"))
            .filter_map(|h| h.get("rule").and_then(Value::as_str).map(|r| Cow::Owned(r.to_string())))
            .collect()
    }

    /// The body's kept keys; `Err` when it is not a JSON object. Taken once.
    pub(super) fn take_body(&mut self) -> Result<Map<String, Value>, String> {
        match self.body.take() {
            Some(Ok(body)) => Ok(body),
            _ => Err("`body` is not a JSON object".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A line's fields, with every body key.
    fn parse(line: &str) -> Result<Fields<'_>, String> {
        Fields::parse(line, &|_: &str| true, &mut Bodies::default())
    }

    #[test]
    fn fields_read_as_a_parsed_value_reads_them() {
        let line = r#"{"time":"t\u0031","source":"openim","command":5,"decision":"deny","rule":null,"error_code":150.0,
            "dry_run":[{"rule":"a","would":"deny"},7,{"rule":"b","would":"allow"}],"body":{"x":1,"y":[2]}}"#;
        let mut f = Fields::parse(line, &|k: &str| k == "y", &mut Bodies::default()).unwrap();
        assert_eq!(f.time().as_deref(), Some("t1"));
        assert_eq!(f.command(), None, "not a string");
        assert_eq!(f.operation_id(), None);
        assert_eq!(f.old_answer().unwrap(), Answer { decision: "deny", rule: None, error_code: None });
        assert_eq!(f.would_denies(), ["a"]);
        assert_eq!(f.take_body().unwrap(), serde_json::json!({"y": [2]}).as_object().unwrap().clone());
        assert!(parse(r#"{"body":[1]}"#).unwrap().take_body().is_err());
        assert!(parse(r#"{}"#).unwrap().take_body().is_err());
        assert!(parse("[1]").is_err());
        assert!(parse(r#"{"body":{}} x"#).is_err(), "trailing characters");
        let odd = parse(r#"{"source":["openim"],"decision":"deny","rule":{"r":1},"error_code":18446744073709551615}"#)
            .unwrap();
        assert_eq!(odd.source(), None);
        assert_eq!(odd.old_answer().unwrap(), Answer { decision: "deny", rule: None, error_code: None });
        let twice = parse(r#"{"command":"a","command":"b"}"#).unwrap();
        assert_eq!(twice.command().as_deref(), Some("b"), "the last, as in a parsed Value");
    }

    #[test]
    fn the_old_answer_is_the_would_under_server_dry_run() {
        let live = parse(r#"{"decision": "deny", "rule": "r", "error_code": 150}"#).unwrap();
        assert_eq!(
            live.old_answer().unwrap(),
            Answer { decision: "deny", rule: Some("r".into()), error_code: Some(150) }
        );
        let dry =
            parse(r#"{"decision": "allow", "would": {"decision": "deny", "rule": "w", "error_code": 151}}"#).unwrap();
        assert_eq!(
            dry.old_answer().unwrap(),
            Answer { decision: "deny", rule: Some("w".into()), error_code: Some(151) }
        );
        assert!(parse(r#"{"decision": "ack"}"#).unwrap().old_answer().is_err());
    }
}
