//! `Event`: the one shape every callback decodes into, whatever protocol carried it.
//!
//! Protocol decoders (`crate::protocol`) build events; the policy evaluator
//! (`crate::policy`) reads them. Neither side knows about the other.

use bytes::Bytes;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::catalog::{self, CodeFamily};

/// Which IM server sent a callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// OpenIM: a callback that callgate decides.
    OpenIm,
    /// Tencent Cloud Chat: a report of what already happened, acknowledged and recorded.
    Tencent,
}

impl Source {
    /// The lowercase name used in records, metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::OpenIm => "openim",
            Source::Tencent => "tencent",
        }
    }
}

/// One decoded callback.
#[derive(Debug, Clone)]
pub struct Event {
    /// Who sent it.
    pub source: Source,
    /// The callback command, e.g. `callbackAfterRemoveBlackCommand`.
    pub command: String,
    /// OpenIM's `operationID` header (empty when absent).
    pub operation_id: String,
    /// The parsed body, a JSON object. An OpenIM decoder keeps only `callbackCommand` and
    /// the top-level keys the policy set reads ([`crate::policy::PolicySet::reads`]); the
    /// offline tools and the Tencent decoder keep every key.
    pub body: Map<String, Value>,
    /// The body exactly as received, kept for the record.
    pub raw: Bytes,
}

impl Event {
    /// Builds an OpenIM event from an already parsed body.
    pub fn openim(command: impl Into<String>, body: Map<String, Value>) -> Event {
        Event { source: Source::OpenIm, command: command.into(), operation_id: String::new(), body, raw: Bytes::new() }
    }

    /// Builds an event as the offline tools (`check`, `test`, `explain`) do: from its
    /// command's name, OpenIM's or Tencent's (`System.Name`), and a parsed body.
    pub fn offline(command: impl Into<String>, body: Map<String, Value>) -> Event {
        let command = command.into();
        let source = if catalog::is_tencent_name(&command) { Source::Tencent } else { Source::OpenIm };
        Event { source, command, operation_id: String::new(), body, raw: Bytes::new() }
    }

    /// What the rules see of one item of a callback decided item by item: the callback's
    /// top-level fields but the item list `list`, and the item under [`ITEM_KEY`] (so
    /// `item.To_Account` names its account). The server and `replay` decide each item so.
    pub fn item(&self, list: &str, item: &Value) -> Event {
        let mut body: Map<String, Value> =
            self.body.iter().filter(|(key, _)| *key != list).map(|(k, v)| (k.clone(), v.clone())).collect();
        body.insert(ITEM_KEY.to_string(), item.clone());
        Event { body, ..Event::offline(self.command.clone(), Map::new()) }
    }

    /// Where a refusal's code for this callback must lie.
    pub fn code_family(&self) -> CodeFamily {
        code_family_of(&self.command)
    }
}

/// Where a refusal's code for the callback named `command` must lie: a Tencent
/// before-callback's family, else OpenIM's.
pub fn code_family_of(command: &str) -> CodeFamily {
    catalog::tencent_decided(command).map_or(CodeFamily::OpenIm, |d| d.family)
}

/// The bytes a command name may hold: letters, digits, `_` and `.` (a table: every callback
/// checks its command).
const COMMAND_BYTES: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric() || c == b'_' || c == b'.';
        b += 1;
    }
    table
};

/// The key under which the rules see one item of a callback decided item by item
/// (`item.To_Account`), beside the callback's top-level fields.
pub const ITEM_KEY: &str = "item";

/// Where a Tencent callback came from, from its query string (kept in its record).
#[derive(Debug, Default, Clone, Serialize)]
pub struct TencentMeta {
    /// `SdkAppid`.
    pub sdk_app_id: String,
    /// `ClientIP`.
    pub client_ip: String,
    /// `OptPlatform`, kept as the string Tencent sent.
    pub opt_platform: String,
}

/// The longest command name accepted.
pub const MAX_COMMAND_LEN: usize = 128;

/// How a sender names a callback's command: the body's key for it, and how to name it
/// otherwise (for the message when it names none).
#[derive(Debug, Clone, Copy)]
pub struct CommandNaming {
    /// The body's key: `callbackCommand` (OpenIM), `CallbackCommand` (Tencent).
    pub body_key: &'static str,
    /// Where the command may stand outside the body, as a message says it: "the URL".
    pub outside: &'static str,
    /// What to do when it is nowhere, as a message says it.
    pub how: &'static str,
}

/// Why a callback's command could not be told. One error for every place a command is
/// named from: the IM servers' requests, a policy test case, `callgate check`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// Named nowhere.
    #[error("no callback command: {how}")]
    Missing { how: &'static str },
    /// Named twice, differently.
    #[error("callback command in {outside} is `{named}` but the body's `{body_key}` is `{body}`")]
    Mismatch { outside: &'static str, body_key: &'static str, named: String, body: String },
    /// The body's command is not a string.
    #[error("`{body_key}` must be a string")]
    NotString { body_key: &'static str },
    /// Not a plausible command name.
    #[error("callback command `{0}` is not valid: use letters, digits, `_` and `.`, at most 128")]
    Invalid(String),
}

impl CommandError {
    /// A short stable name, for metric labels.
    pub fn kind(&self) -> &'static str {
        match self {
            CommandError::Missing { .. } => "no_command",
            CommandError::Mismatch { .. } => "command_mismatch",
            CommandError::NotString { .. } => "command_not_string",
            CommandError::Invalid(_) => "bad_command",
        }
    }
}

/// The command of a callback: named `outside` the body (URL, query, a test case's
/// `command:`), in the body under `naming.body_key` (its value: `in_body`), or both — then
/// they must agree — and a plausible name (letters, digits, `_` and `.`, at most
/// [`MAX_COMMAND_LEN`] bytes; both servers' commands fit).
pub fn resolve_command(
    naming: &CommandNaming,
    outside: Option<&str>,
    in_body: Option<&Value>,
) -> Result<String, CommandError> {
    let in_body = match in_body {
        None => None,
        Some(Value::String(c)) => Some(c.as_str()),
        Some(_) => return Err(CommandError::NotString { body_key: naming.body_key }),
    };
    let command = match (outside, in_body) {
        (Some(named), Some(body)) if named != body => {
            return Err(CommandError::Mismatch {
                outside: naming.outside,
                body_key: naming.body_key,
                named: named.to_string(),
                body: body.to_string(),
            });
        }
        (Some(c), _) | (None, Some(c)) => c,
        (None, None) => return Err(CommandError::Missing { how: naming.how }),
    };
    let is_valid = !command.is_empty()
        && command.len() <= MAX_COMMAND_LEN
        && command.bytes().all(|b| COMMAND_BYTES[usize::from(b)]);
    if !is_valid {
        return Err(CommandError::Invalid(command.chars().take(MAX_COMMAND_LEN).collect()));
    }
    Ok(command.to_string())
}
