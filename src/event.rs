//! `Event`: the one shape every callback decodes into, whatever protocol carried it.
//!
//! Protocol decoders (`crate::protocol`) build events; the policy evaluator
//! (`crate::policy`) reads them. Neither side knows about the other.

use bytes::Bytes;
use serde::Serialize;
use serde_json::{Map, Value};

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
    /// Builds an OpenIM event from an already parsed body, as the offline tools do.
    pub fn openim(command: impl Into<String>, body: Map<String, Value>) -> Event {
        Event { source: Source::OpenIm, command: command.into(), operation_id: String::new(), body, raw: Bytes::new() }
    }
}

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
