//! Who may call: the source allowlist (both endpoints) and OpenIM's secret path token.
//! Refusals are answered 403 by the routes, counted and logged without the token.

use subtle::ConstantTimeEq;

use super::listen::Peer;
use crate::config::Cidr;

/// Whether a request from `peer` may be served. An empty list allows every source.
pub fn is_source_allowed(allowed: &[Cidr], Peer(peer): Peer) -> bool {
    allowed.is_empty() || allowed.iter().any(|net| net.contains(peer.ip()))
}

/// The rest of the path after the secret token (`<token>/<command>` → `<command>`), or
/// `None` when the token is missing or wrong. Without a configured token the path is
/// returned as it is. The comparison takes the same time wherever the token differs.
pub fn strip_path_token<'a>(token: Option<&str>, tail: &'a str) -> Option<&'a str> {
    let Some(token) = token else { return Some(tail) };
    let tail = tail.trim_start_matches('/');
    let (given, rest) = tail.split_once('/').unwrap_or((tail, ""));
    bool::from(given.as_bytes().ct_eq(token.as_bytes())).then_some(rest)
}

/// Counts and logs a refusal; the path, which may hold a token, is never logged.
pub fn note_forbidden(source: &'static str, reason: &'static str, Peer(peer): Peer) {
    metrics::counter!("callgate_forbidden_total", "source" => source, "reason" => reason).increment(1);
    crate::throttle::warn("forbidden callbacks", reason, || {
        format!("callback refused: forbidden (source {source}, peer {peer})")
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_tokens() {
        assert_eq!(strip_path_token(None, "cmd"), Some("cmd"));
        assert_eq!(strip_path_token(Some("s3"), "s3/cmd"), Some("cmd"));
        assert_eq!(strip_path_token(Some("s3"), "s3"), Some(""));
        assert_eq!(strip_path_token(Some("s3"), "/s3//cmd"), Some("/cmd"));
        assert_eq!(strip_path_token(Some("s3"), "cmd"), None);
        assert_eq!(strip_path_token(Some("s3"), "s33/cmd"), None);
        assert_eq!(strip_path_token(Some("s3"), ""), None);
    }

    #[test]
    fn sources() {
        let peer = |ip: &str| Peer(format!("{ip}:1234").parse().unwrap());
        let nets = [Cidr::parse("10.0.0.0/8").unwrap()];
        assert!(is_source_allowed(&[], peer("127.0.0.1")));
        assert!(is_source_allowed(&nets, peer("10.9.9.9")));
        assert!(!is_source_allowed(&nets, peer("127.0.0.1")));
    }
}
