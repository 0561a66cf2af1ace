//! Wire formats of the IM servers: requests decoded into [`crate::event::Event`]s, decisions
//! encoded into the bytes each server expects. No rules, no HTTP framework.

pub mod openim;
pub mod tencent;

use serde_json::Value;

/// Whether `c` is a plausible command name: letters, digits, `_` and `.`, non-empty, at
/// most `max_len` bytes. Both servers' commands fit; anything else is a bad request.
fn is_valid_command(c: &str, max_len: usize) -> bool {
    !c.is_empty() && c.len() <= max_len && c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
}

/// The JSON type of `v`, for messages.
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
