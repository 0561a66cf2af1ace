//! The one Redis client every Redis user in callgate shares (rate caps, the record stream),
//! made from `--redis-url` and, for `rediss://`, `--redis-ca-file`.
//!
//! `rediss://` connects over TLS (rustls) and always verifies Redis's certificate and host
//! name: against the system's trusted CAs, or against the CAs in `--redis-ca-file` when set
//! (a private CA, as self-hosted Redis usually has). There is no switch to skip verification.

use std::path::{Path, PathBuf};

/// Files for a `rediss://` connection, each optional.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM CAs to verify Redis's certificate with, instead of the system's.
    pub ca: Option<PathBuf>,
    /// PEM certificate (chain) callgate shows Redis, for a Redis that asks clients for one
    /// (`tls-auth-clients yes`, Redis's own default). Goes with `client_key`.
    pub client_cert: Option<PathBuf>,
    /// PEM private key of `client_cert`.
    pub client_key: Option<PathBuf>,
}

/// Why no Redis client could be made.
#[derive(Debug, thiserror::Error)]
pub enum RedisSetupError {
    /// The URL is not a Redis URL.
    #[error("`{url}` is not a Redis URL ({reason}); write redis://host:6379/0, or rediss://… for TLS")]
    Url { url: String, reason: String },
    /// TLS files were given for a connection without TLS.
    #[error("CA and client certificate files are for TLS connections: write the URL as rediss://…, or drop the files")]
    FilesWithoutTls,
    /// Only one of the client certificate and its key was given.
    #[error("a client certificate needs its key, and a key its certificate: give both, or neither")]
    HalfClientPair,
    /// The URL asks to skip certificate verification.
    #[error(
        "callgate always verifies Redis's certificate: drop `#insecure` from the URL (a private CA goes in --redis-ca-file)"
    )]
    Insecure,
    /// A file could not be used.
    #[error("{what} `{path}`: {reason}")]
    File { what: &'static str, path: String, reason: String },
}

/// A client for `url`; connections are made later, by whoever uses it. The URL is never
/// printed, as it may hold a password.
pub fn client(url: &str, tls: &TlsFiles) -> Result<redis::Client, RedisSetupError> {
    let client = build(url, tls)?;
    if let redis::ConnectionAddr::TcpTls { insecure: true, .. } = client.get_connection_info().addr() {
        return Err(RedisSetupError::Insecure);
    }
    Ok(client)
}

fn build(url: &str, tls: &TlsFiles) -> Result<redis::Client, RedisSetupError> {
    let is_tls = url.starts_with("rediss://");
    if is_tls {
        // rustls needs a process-wide crypto provider; ring is the only one built in. A
        // second call finds it installed, which is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    let url_error = |e: redis::RedisError| RedisSetupError::Url { url: redact(url), reason: e.to_string() };
    if *tls == TlsFiles::default() {
        return redis::Client::open(url).map_err(url_error);
    }
    if !is_tls {
        return Err(RedisSetupError::FilesWithoutTls);
    }
    let client_tls = match (&tls.client_cert, &tls.client_key) {
        (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
            client_cert: read_pem("client certificate", cert, "CERTIFICATE-----")?,
            client_key: read_pem("client key", key, "PRIVATE KEY-----")?,
        }),
        (None, None) => None,
        _ => return Err(RedisSetupError::HalfClientPair),
    };
    let root_cert = tls.ca.as_deref().map(|ca| read_pem("CA file", ca, "CERTIFICATE-----")).transpose()?;
    redis::Client::build_with_tls(url, redis::TlsCertificates { client_tls, root_cert }).map_err(|e| match e.kind() {
        redis::ErrorKind::InvalidClientConfig => url_error(e),
        _ => RedisSetupError::File { what: "TLS files", path: describe(tls), reason: e.to_string() },
    })
}

/// Reads a PEM file that must hold a block whose header ends with `marker`.
fn read_pem(what: &'static str, path: &Path, marker: &str) -> Result<Vec<u8>, RedisSetupError> {
    let error = |reason: String| RedisSetupError::File { what, path: path.display().to_string(), reason };
    let pem = std::fs::read(path).map_err(|e| error(e.to_string()))?;
    let has_block = String::from_utf8_lossy(&pem).lines().any(|l| l.starts_with("-----BEGIN ") && l.ends_with(marker));
    if !has_block {
        return Err(error(format!("holds no PEM block -----BEGIN …{marker}")));
    }
    Ok(pem)
}

fn describe(tls: &TlsFiles) -> String {
    [&tls.ca, &tls.client_cert, &tls.client_key]
        .into_iter()
        .flatten()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
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

    fn files(ca: Option<&Path>, cert: Option<&Path>, key: Option<&Path>) -> TlsFiles {
        TlsFiles { ca: ca.map(Into::into), client_cert: cert.map(Into::into), client_key: key.map(Into::into) }
    }

    #[test]
    fn verification_cannot_be_skipped() {
        let err = client("rediss://127.0.0.1:6380/#insecure", &TlsFiles::default()).unwrap_err();
        assert!(matches!(err, RedisSetupError::Insecure), "{err}");
        assert!(client("rediss://127.0.0.1:6380/0", &TlsFiles::default()).is_ok());
    }

    #[test]
    fn tls_files_need_tls() {
        let err = client("redis://127.0.0.1:6379", &files(Some(Path::new("/nonexistent")), None, None)).unwrap_err();
        assert!(matches!(err, RedisSetupError::FilesWithoutTls), "{err}");
    }

    #[test]
    fn a_client_certificate_needs_its_key() {
        let cert = Path::new("/c.pem");
        let err = client("rediss://127.0.0.1:6379", &files(None, Some(cert), None)).unwrap_err();
        assert!(matches!(err, RedisSetupError::HalfClientPair), "{err}");
        let err = client("rediss://127.0.0.1:6379", &files(None, None, Some(cert))).unwrap_err();
        assert!(matches!(err, RedisSetupError::HalfClientPair), "{err}");
    }

    #[test]
    fn each_file_must_hold_what_it_is_for() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate").unwrap();
        let url = "rediss://127.0.0.1:6379";
        let err = client(url, &files(Some(&junk), None, None)).unwrap_err().to_string();
        assert!(err.starts_with("CA file `") && err.contains("holds no PEM block"), "{err}");
        let err = client(url, &files(None, Some(&junk), Some(&junk))).unwrap_err().to_string();
        assert!(err.starts_with("client certificate `"), "{err}");
        let missing = dir.path().join("missing.pem");
        let err = client(url, &files(Some(&missing), None, None)).unwrap_err().to_string();
        assert!(err.contains("missing.pem") && err.contains("No such file"), "{err}");
    }

    #[test]
    fn a_bad_url_is_refused_without_its_password() {
        let err = client("http://:pw@h", &TlsFiles::default()).unwrap_err().to_string();
        assert!(err.contains("http://:***@h") && !err.contains("pw"), "{err}");
    }
}
