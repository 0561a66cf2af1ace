//! What was decided for one callback, and why: the [`Decision`] the policy set makes, the
//! protocol encodes into an answer and the record writes down. It belongs to no layer, so
//! that none of those three imports another to name it.
//!
//! The parts a record and the admin API both show (dry-run hits, rate caps) serialise
//! themselves here, once, so the two cannot tell the same decision differently.

use std::sync::Arc;

use serde::Serialize;
use serde::ser::SerializeStruct;

use crate::catalog::CodeFamily;

/// What a rule or the default decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Let the operation go on.
    Allow,
    /// Refuse it with this error.
    Deny(Arc<Refusal>),
    /// Drop the message silently: the sender is told it was sent, nobody receives it.
    /// Only Tencent's message before-callbacks can answer so (the loader checks).
    Discard,
}

impl Outcome {
    /// `"allow"`, `"deny"` or `"discard"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::Allow => "allow",
            Outcome::Deny(_) => "deny",
            Outcome::Discard => "discard",
        }
    }

    /// The refusal's code as OpenIM gets it; `None` for allow and discard.
    pub fn error_code(&self) -> Option<i32> {
        self.error_code_for(CodeFamily::OpenIm)
    }

    /// The refusal's code as `family` gets it; `None` for allow and discard.
    pub fn error_code_for(&self, family: CodeFamily) -> Option<i32> {
        match self {
            Outcome::Allow | Outcome::Discard => None,
            Outcome::Deny(r) => Some(r.code_for(family)),
        }
    }

    /// Whether the action does not happen (deny or discard).
    pub fn is_refusal(&self) -> bool {
        !matches!(self, Outcome::Allow)
    }
}

/// The error the IM server passes to its client when a callback is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The code: OpenIM's `errCode` (100 or more), or a Tencent `ErrorCode` in its range.
    pub code: i32,
    /// `errMsg` / `ErrorInfo`.
    pub message: String,
    /// `errDlt` (OpenIM only).
    pub detail: String,
    /// Codes stated per family (`code: { openim: N, group: M }`), for a rule that reaches
    /// more than one family's range; empty when `code` fits all it reaches.
    pub codes: Vec<(CodeFamily, i32)>,
}

impl Refusal {
    /// A refusal with one code for every family.
    pub fn new(code: i32, message: impl Into<String>, detail: impl Into<String>) -> Refusal {
        Refusal { code, message: message.into(), detail: detail.into(), codes: Vec::new() }
    }

    /// The code `family` is answered with.
    pub fn code_for(&self, family: CodeFamily) -> i32 {
        self.codes.iter().find(|(f, _)| *f == family).map_or(self.code, |&(_, code)| code)
    }
}

/// What the policy set decided for one callback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Allow, or deny with a refusal: what enforcement answers.
    pub outcome: Outcome,
    /// The rule that decided; `None` when the default decided.
    pub rule: Option<Arc<str>>,
    /// Dry-run rules that held on the way, with what each would have decided.
    pub dry_run: Vec<DryRunHit>,
    /// Rate caps checked on the way, with their counts.
    pub caps: Vec<CapHit>,
}

/// A rule in `mode: dry_run` that held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DryRunHit {
    /// The rule's id.
    pub rule: Arc<str>,
    /// What it would have decided.
    pub outcome: Outcome,
}

/// `{"rule": …, "would": "allow"|"deny", "error_code": N}` (no `error_code` for allow).
impl Serialize for DryRunHit {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let code = self.outcome.error_code();
        let mut s = serializer.serialize_struct("DryRunHit", 2 + usize::from(code.is_some()))?;
        s.serialize_field("rule", &*self.rule)?;
        s.serialize_field("would", self.outcome.as_str())?;
        if let Some(code) = code {
            s.serialize_field("error_code", &code)?;
        }
        s.end()
    }
}

/// A rate cap checked for a callback.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CapHit {
    /// The rule's id.
    pub rule: Arc<str>,
    /// Allowed callbacks in the window before this one.
    pub count: u64,
    /// The cap.
    pub max: u64,
    /// Whether allowing this callback would have exceeded the cap.
    #[serde(rename = "exceeded")]
    pub is_exceeded: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hits_serialise_as_records_and_the_admin_api_show_them() {
        let deny = Outcome::Deny(Arc::new(Refusal::new(150, "m", "")));
        let hit = |outcome| serde_json::to_value(DryRunHit { rule: "d".into(), outcome }).unwrap();
        assert_eq!(hit(deny), serde_json::json!({"rule": "d", "would": "deny", "error_code": 150}));
        assert_eq!(hit(Outcome::Allow), serde_json::json!({"rule": "d", "would": "allow"}));
        let cap = CapHit { rule: "c".into(), count: 3, max: 10, is_exceeded: false };
        assert_eq!(
            serde_json::to_value(cap).unwrap(),
            serde_json::json!({"rule": "c", "count": 3, "max": 10, "exceeded": false})
        );
    }
}
