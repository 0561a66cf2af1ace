//! The one Redis client every Redis user in callgate shares (rate caps, the record stream),
//! made from `--redis-url` and, for `rediss://`, `--redis-ca-file`.
//!
//! `rediss://` connects over TLS (rustls) and always verifies Redis's certificate and host
//! name: against the system's trusted CAs, or against the CAs in `--redis-ca-file` when set
//! (a private CA, as self-hosted Redis usually has). There is no switch to skip verification.

use std::path::Path;

/// Why no Redis client could be made.
#[derive(Debug, thiserror::Error)]
pub enum RedisSetupError {
    /// The URL is not a Redis URL.
    #[error("`{url}` is not a Redis URL ({reason}); write redis://host:6379/0, or rediss://… for TLS")]
    Url { url: String, reason: String },
    /// A CA file was given for a connection without TLS.
    #[error("a CA file is for TLS connections: write the URL as rediss://…, or drop the CA file")]
    CaWithoutTls,
    /// The CA file could not be used.
    #[error("CA file `{path}`: {reason}")]
    Ca { path: String, reason: String },
}

/// A client for `url`; connections are made later, by whoever uses it. The URL is never
/// printed, as it may hold a password.
pub fn client(url: &str, ca_file: Option<&Path>) -> Result<redis::Client, RedisSetupError> {
    let is_tls = url.starts_with("rediss://");
    if is_tls {
        // rustls needs a process-wide crypto provider; ring is the only one built in. A
        // second call finds it installed, which is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    let url_error = |e: redis::RedisError| RedisSetupError::Url { url: redact(url), reason: e.to_string() };
    let Some(ca_file) = ca_file else { return redis::Client::open(url).map_err(url_error) };
    if !is_tls {
        return Err(RedisSetupError::CaWithoutTls);
    }
    let ca_error = |reason: String| RedisSetupError::Ca { path: ca_file.display().to_string(), reason };
    let pem = std::fs::read(ca_file).map_err(|e| ca_error(e.to_string()))?;
    if !pem.windows(b"-----BEGIN CERTIFICATE-----".len()).any(|w| w == b"-----BEGIN CERTIFICATE-----") {
        return Err(ca_error("holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into()));
    }
    let certificates = redis::TlsCertificates { client_tls: None, root_cert: Some(pem) };
    redis::Client::build_with_tls(url, certificates).map_err(|e| match e.kind() {
        redis::ErrorKind::InvalidClientConfig => url_error(e),
        _ => ca_error(e.to_string()),
    })
}

/// Connects once, at start-up, to say in the log whether Redis is reachable and, if not,
/// why: callers connect lazily and bound each call by a short timeout, so a wrong
/// certificate or password would otherwise only ever show as timeouts. Never fails.
pub async fn probe(client: redis::Client) {
    const LIMIT: std::time::Duration = std::time::Duration::from_secs(5);
    let addr = client.get_connection_info().addr().to_string();
    match tokio::time::timeout(LIMIT, client.get_multiplexed_async_connection()).await {
        Ok(Ok(_)) => tracing::info!(redis = %addr, "redis is reachable"),
        Ok(Err(e)) => tracing::error!(redis = %addr, "cannot connect to redis: {e}"),
        Err(_) => tracing::error!(redis = %addr, "cannot connect to redis: no answer within {LIMIT:?}"),
    }
}

/// The URL without its password, for messages.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_string() };
    match rest.split_once('@') {
        Some((user_info, host)) => {
            let user = user_info.split_once(':').map_or(user_info, |(user, _password)| user);
            format!("{scheme}://{user}:***@{host}")
        }
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_not_printed() {
        assert_eq!(redact("redis://:s3cret@h:6379/0"), "redis://:***@h:6379/0");
        assert_eq!(redact("rediss://app:s3cret@h/1"), "rediss://app:***@h/1");
        assert_eq!(redact("redis://h:6379"), "redis://h:6379");
    }

    #[test]
    fn a_ca_file_needs_tls() {
        let err = client("redis://127.0.0.1:6379", Some(Path::new("/nonexistent"))).unwrap_err();
        assert!(matches!(err, RedisSetupError::CaWithoutTls), "{err}");
    }

    #[test]
    fn a_ca_file_must_hold_a_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not a certificate").unwrap();
        let err = client("rediss://127.0.0.1:6379", Some(&path)).unwrap_err().to_string();
        assert!(err.contains("holds no PEM certificate"), "{err}");
        let err = client("rediss://127.0.0.1:6379", Some(&dir.path().join("missing.pem"))).unwrap_err().to_string();
        assert!(err.contains("missing.pem") && err.contains("No such file"), "{err}");
    }

    #[test]
    fn a_bad_url_is_refused_without_its_password() {
        let err = client("http://:pw@h", None).unwrap_err().to_string();
        assert!(err.contains("http://:***@h") && !err.contains("pw"), "{err}");
    }
}
