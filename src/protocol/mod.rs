//! Wire formats of the IM servers: requests decoded into [`crate::event::Event`]s, decisions
//! encoded into the bytes each server expects. No rules, no HTTP framework.
//!
//! What can be wrong with a body as a whole is the same for both servers: [`BodyError`], and
//! one parser, [`parse_object`].

pub mod openim;
pub mod tencent;

use std::borrow::Cow;

use serde::de::{Deserialize, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// What is wrong with a callback body itself, whichever server sent it.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// Over the size limit (declared or actual). `is_drained`: the rest was read and dropped,
    /// so the connection can carry the next request.
    #[error("body is larger than the limit of {limit} bytes")]
    TooLarge { limit: usize, is_drained: bool },
    /// The connection failed while the body was read.
    #[error("body could not be read: {0}")]
    Read(String),
    /// The body did not arrive within the read timeout.
    #[error("body was not received in time")]
    Timeout,
    /// Not JSON (or not UTF-8).
    #[error("body is not valid JSON: {0}")]
    NotJson(String),
    /// JSON, but not an object.
    #[error("body must be a JSON object, got {0}")]
    NotObject(&'static str),
}

impl BodyError {
    /// A short stable name, for metric labels.
    pub fn kind(&self) -> &'static str {
        match self {
            BodyError::TooLarge { .. } => "too_large",
            BodyError::Read(_) => "body_read",
            BodyError::Timeout => "body_timeout",
            BodyError::NotJson(_) => "not_json",
            BodyError::NotObject(_) => "not_object",
        }
    }

    /// Whether the body was not read to its end, so the connection cannot carry another
    /// request and is closed after the answer.
    pub fn leaves_body_unread(&self) -> bool {
        matches!(self, BodyError::TooLarge { is_drained: false, .. } | BodyError::Read(_) | BodyError::Timeout)
    }
}

/// Parses a body that must be one JSON object. Only the top-level keys `keep` accepts are
/// built into the map; the values of the others are walked by [`Skip`] and dropped, so a
/// caller that reads a few fields does not pay for building the rest. What is accepted, and
/// every error message, is exactly what parsing the whole body into a `serde_json::Value`
/// gives (the same nesting limit, number range and UTF-8 checks), whatever is kept.
///
/// The body is checked as UTF-8 once, whole, and then parsed as text, so that serde_json
/// does not check each string again (an eighth of an OpenIM callback's decoding, issue 19);
/// a body that is not UTF-8 is parsed as bytes, for serde_json's own message and position.
/// Outside strings JSON is ASCII, so a body is UTF-8 exactly when every string in it is.
pub fn parse_object(raw: &[u8], keep: &dyn Fn(&str) -> bool) -> Result<Map<String, Value>, BodyError> {
    parse_object_aside(raw, keep, None)
}

/// [`parse_object`], and the value of the key `aside` names, if the body has it and `keep`
/// does not keep it, put in its slot instead of the map: a decoder that needs one key for
/// itself (the command) does not make every rule's map carry it.
pub fn parse_object_aside(
    raw: &[u8],
    keep: &dyn Fn(&str) -> bool,
    aside: Option<(&str, &mut Option<Value>)>,
) -> Result<Map<String, Value>, BodyError> {
    let top = TopLevel { keep, aside };
    let body = match std::str::from_utf8(raw) {
        Ok(text) => parse_with(&mut serde_json::Deserializer::from_str(text), top),
        Err(_) => parse_with(&mut serde_json::Deserializer::from_slice(raw), top),
    };
    body.map_err(|e| BodyError::NotJson(e.to_string()))?.map_err(BodyError::NotObject)
}

fn parse_with<'de, R: serde_json::de::Read<'de>>(
    de: &mut serde_json::Deserializer<R>,
    top: TopLevel<'_>,
) -> serde_json::Result<Result<Map<String, Value>, &'static str>> {
    let body = top.deserialize(&mut *de)?;
    de.end().map(|()| body)
}

/// A body's top level: the kept keys as a map, or the JSON type found instead of an object.
/// As a seed, it parses a body inside a larger document (a record line, for replay) the way
/// [`parse_object`] parses a request's.
pub(crate) struct TopLevel<'k> {
    pub(crate) keep: &'k dyn Fn(&str) -> bool,
    /// A key not kept whose value goes to the slot instead (see [`parse_object_aside`]).
    pub(crate) aside: Option<(&'k str, &'k mut Option<Value>)>,
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

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut body = Map::new();
        while let Some(Key(key)) = map.next_key()? {
            if (self.keep)(&key) {
                body.insert(key.into_owned(), map.next_value()?);
            } else if let Some((_, slot)) = self.aside.as_mut().filter(|(name, _)| *name == key) {
                **slot = Some(map.next_value()?);
            } else {
                map.next_value::<Skip>()?;
            }
        }
        Ok(Ok(body))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<Skip>()?.is_some() {}
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

/// A JSON value parsed the way `serde_json::Value` parses it (through `deserialize_any`, so
/// with its nesting limit, number range and UTF-8 checks) but built into nothing. serde's
/// `IgnoredAny` is cheaper still, but serde_json skips it without those checks, so what a
/// body may hold would depend on which keys a policy set reads.
struct Skip;

impl<'de> Deserialize<'de> for Skip {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Skip, D::Error> {
        de.deserialize_any(Skip)
    }
}

impl<'de> Visitor<'de> for Skip {
    type Value = Skip;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Skip, A::Error> {
        while map.next_key::<Skip>()?.is_some() {
            map.next_value::<Skip>()?;
        }
        Ok(Skip)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Skip, A::Error> {
        while seq.next_element::<Skip>()?.is_some() {}
        Ok(Skip)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Skip, E> {
        Ok(Skip)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Skip, E> {
        Ok(Skip)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Skip, E> {
        Ok(Skip)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Skip, E> {
        Ok(Skip)
    }

    fn visit_str<E>(self, _: &str) -> Result<Skip, E> {
        Ok(Skip)
    }

    fn visit_unit<E>(self) -> Result<Skip, E> {
        Ok(Skip)
    }
}

/// An object key, borrowed from the body unless it had escapes.
pub(crate) struct Key<'de>(pub(crate) Cow<'de, str>);

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_kept_keys_are_built_but_the_whole_body_is_checked() {
        let keep_a = |k: &str| k == "a" || k == "a/b";
        let parse = |body: &[u8]| parse_object(body, &keep_a);
        let body = parse(br#"{"a":[1,{"b":2}],"b":{"deep":[true]},"a\/b":"e"}"#).unwrap();
        assert_eq!(Value::Object(body), serde_json::json!({"a":[1,{"b":2}],"a/b":"e"}));
        // Skipped values must still be JSON, and strings UTF-8.
        assert!(matches!(parse(br#"{"a":1,"b":[1,}"#), Err(BodyError::NotJson(_))));
        assert!(matches!(parse(b"{\"a\":1,\"b\":\"\xff\"}"), Err(BodyError::NotJson(_))));
        assert!(matches!(parse(br#"{"b":"\x"}"#), Err(BodyError::NotJson(_))));
        assert!(matches!(parse(b"{} x"), Err(BodyError::NotJson(_))));
    }

    #[test]
    fn skipped_values_are_held_to_what_a_full_parse_accepts_with_the_same_messages() {
        let deep = format!("{{\"b\":{}{}}}", "[".repeat(200), "]".repeat(200));
        let bodies: [&[u8]; 9] = [
            deep.as_bytes(),
            br#"{"b":1e999}"#,
            br#"{"b":-1e400,"a":1}"#,
            b"{\"b\":\"u_\xff\"}",
            b"\xff{}",
            br#"{"b":"\ud800"}"#,
            br#"{"b":{"c":[1,2,{"d":"\u00e9"}]},"a":[true,null]}"#,
            br#"[1e999]"#,
            br#"{"b":1,}"#,
        ];
        for body in bodies {
            let full = serde_json::from_slice::<Value>(body);
            let some = parse_object(body, &|k| k == "a");
            match (full, some) {
                (Err(full), Err(BodyError::NotJson(some))) => assert_eq!(some, full.to_string()),
                (Ok(Value::Object(full)), Ok(some)) => {
                    assert_eq!(some.get("a"), full.get("a"));
                    assert!(some.get("b").is_none());
                }
                (Ok(Value::Array(_)), Err(BodyError::NotObject("an array"))) => {}
                (full, some) => {
                    panic!("{}: full parse {full:?}, skipping parse {some:?}", String::from_utf8_lossy(body))
                }
            }
        }
    }

    #[test]
    fn what_is_not_an_object_is_named() {
        for (body, got) in [("[1,{}]", "an array"), ("null", "null"), ("1.5", "a number"), ("-1", "a number")] {
            assert!(
                matches!(parse_object(body.as_bytes(), &|_| true), Err(BodyError::NotObject(g)) if g == got),
                "{body}"
            );
        }
        assert!(matches!(parse_object(br#""s""#, &|_| true), Err(BodyError::NotObject("a string"))));
        assert!(matches!(parse_object(b"true", &|_| true), Err(BodyError::NotObject("a boolean"))));
    }
}
