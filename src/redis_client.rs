//! The one way callgate reaches Redis, shared by rate caps and the record stream: a
//! [`RedisTarget`] made from `--redis-url` (one server, or with `--redis-cluster` a Redis
//! Cluster found from one of its nodes) and, for `rediss://`, the TLS files; and the
//! lazily made [`RedisConn`] both users send their commands on.
//!
//! `rediss://` connects over TLS (rustls) and always verifies Redis's certificate and host
//! name: against the system's trusted CAs, or against the CAs in `--redis-ca-file` when set
//! (a private CA, as self-hosted Redis usually has). There is no switch to skip verification.

use std::path::{Path, PathBuf};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterClientBuilder, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

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
    /// The Redis client refused the connection's settings.
    #[error("cannot set up the connection to Redis: {reason}")]
    Connection { reason: String },
}

/// Where Redis is.
#[derive(Clone)]
#[expect(clippy::large_enum_variant, reason = "made once at start-up; its size costs nothing")]
pub enum RedisTarget {
    /// One Redis server.
    Single(redis::Client),
    /// A Redis Cluster, its nodes and slots found from the one in the URL.
    Cluster(ClusterClient),
}

impl std::fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The connection info holds the password: never printed.
        f.write_str(match self {
            RedisTarget::Single(_) => "RedisTarget::Single",
            RedisTarget::Cluster(_) => "RedisTarget::Cluster",
        })
    }
}

impl RedisTarget {
    /// The Redis at `url`, with `tls` files for `rediss://`; `is_cluster` when `url` is a
    /// node of a Redis Cluster. Nothing is connected yet. The URL is never printed, as it may
    /// hold a password.
    pub fn new(url: &str, tls: &TlsFiles, is_cluster: bool) -> Result<RedisTarget, RedisSetupError> {
        let is_tls = url.starts_with("rediss://");
        if is_tls {
            // rustls needs a process-wide crypto provider; ring is the only one built in. A
            // second call finds it installed, which is fine.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let url_error = |e: redis::RedisError| RedisSetupError::Url { url: redact(url), reason: e.to_string() };
        let certificates = certificates(tls, is_tls)?;
        let client = match &certificates {
            None => redis::Client::open(url),
            Some(certificates) => redis::Client::build_with_tls(url, certificates.clone()),
        }
        .map_err(|e| match e.kind() {
            redis::ErrorKind::InvalidClientConfig => url_error(e),
            _ => RedisSetupError::File { what: "TLS files", path: describe(tls), reason: e.to_string() },
        })?;
        if let redis::ConnectionAddr::TcpTls { insecure: true, .. } = client.get_connection_info().addr() {
            return Err(RedisSetupError::Insecure);
        }
        if !is_cluster {
            return Ok(RedisTarget::Single(client));
        }
        let mut cluster = ClusterClientBuilder::new(vec![url]);
        if let Some(certificates) = certificates {
            cluster = cluster.certs(certificates);
        }
        cluster.build().map(RedisTarget::Cluster).map_err(url_error)
    }

    /// A connection that connects on first use, reconnects by itself after a failure, and is
    /// cheap to clone. `timeout` bounds each command.
    pub fn connect_lazily(&self, timeout: Duration) -> Result<RedisConn, RedisSetupError> {
        let connect_timeout = timeout.max(Duration::from_millis(250));
        match self {
            RedisTarget::Single(client) => {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(connect_timeout))
                    .set_response_timeout(Some(timeout))
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_millis(500));
                ConnectionManager::new_lazy_with_config(client.clone(), config)
                    .map(RedisConn::Single)
                    .map_err(|e| RedisSetupError::Connection { reason: e.to_string() })
            }
            RedisTarget::Cluster(client) => {
                let config = ClusterConfig::new().set_connection_timeout(connect_timeout).set_response_timeout(timeout);
                Ok(RedisConn::Cluster(client.get_pending_async_connection_with_config(config)))
            }
        }
    }

    /// Connects once, at start-up, to say in the log whether Redis is reachable and, if not,
    /// why: callers connect lazily and bound each call by a short timeout, so a wrong
    /// certificate or password would otherwise only ever show as timeouts. When it is
    /// reachable, first makes sure each of `warm` (the connections callbacks use) is
    /// connected, so that the first callbacks do not spend their short timeout connecting;
    /// then logs. Never fails.
    pub async fn probe(self, warm: Vec<RedisConn>) {
        const LIMIT: Duration = Duration::from_secs(5);
        let (kind, result) = match &self {
            RedisTarget::Single(client) => (
                "redis",
                tokio::time::timeout(LIMIT, client.get_multiplexed_async_connection()).await.map(|r| r.map(drop)),
            ),
            RedisTarget::Cluster(client) => {
                ("redis cluster", tokio::time::timeout(LIMIT, client.get_async_connection()).await.map(|r| r.map(drop)))
            }
        };
        match result {
            Ok(Ok(())) => {
                let until = tokio::time::Instant::now() + LIMIT;
                let mut is_warm = true;
                for conn in warm {
                    is_warm &= warm_up(conn, until).await;
                }
                if is_warm {
                    tracing::info!("{kind} is reachable");
                } else {
                    tracing::warn!(
                        "{kind} is reachable, but the connections callbacks use did not answer within {LIMIT:?}"
                    );
                }
            }
            Ok(Err(e)) => tracing::error!("cannot connect to {kind}: {e}"),
            Err(_) => tracing::error!("cannot connect to {kind}: no answer within {LIMIT:?}"),
        }
    }
}

/// PINGs `conn` until it answers (it connects on the way), or until `until`; says whether
/// it answered.
async fn warm_up(mut conn: RedisConn, until: tokio::time::Instant) -> bool {
    while tokio::time::Instant::now() < until {
        if redis::cmd("PING").query_async::<()>(&mut conn).await.is_ok() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// A connection to a [`RedisTarget`]; commands go to the node that holds their keys.
#[derive(Clone)]
pub enum RedisConn {
    /// To one server.
    Single(ConnectionManager),
    /// To a cluster's nodes.
    Cluster(ClusterConnection),
}

impl redis::aio::ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConn::Single(c) => c.req_packed_command(cmd),
            RedisConn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            RedisConn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Single(c) => c.get_db(),
            RedisConn::Cluster(c) => c.get_db(),
        }
    }
}

/// The certificates of the TLS files, read and checked; `None` when none are given.
fn certificates(tls: &TlsFiles, is_tls: bool) -> Result<Option<redis::TlsCertificates>, RedisSetupError> {
    if *tls == TlsFiles::default() {
        return Ok(None);
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
    Ok(Some(redis::TlsCertificates { client_tls, root_cert }))
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

    fn single(url: &str, tls: &TlsFiles) -> Result<RedisTarget, RedisSetupError> {
        RedisTarget::new(url, tls, false)
    }

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
        let err = single("rediss://127.0.0.1:6380/#insecure", &TlsFiles::default()).unwrap_err();
        assert!(matches!(err, RedisSetupError::Insecure), "{err}");
        assert!(single("rediss://127.0.0.1:6380/0", &TlsFiles::default()).is_ok());
    }

    #[test]
    fn tls_files_need_tls() {
        let err = single("redis://127.0.0.1:6379", &files(Some(Path::new("/nonexistent")), None, None)).unwrap_err();
        assert!(matches!(err, RedisSetupError::FilesWithoutTls), "{err}");
    }

    #[test]
    fn a_client_certificate_needs_its_key() {
        let cert = Path::new("/c.pem");
        let err = single("rediss://127.0.0.1:6379", &files(None, Some(cert), None)).unwrap_err();
        assert!(matches!(err, RedisSetupError::HalfClientPair), "{err}");
        let err = single("rediss://127.0.0.1:6379", &files(None, None, Some(cert))).unwrap_err();
        assert!(matches!(err, RedisSetupError::HalfClientPair), "{err}");
    }

    #[test]
    fn each_file_must_hold_what_it_is_for() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate").unwrap();
        let url = "rediss://127.0.0.1:6379";
        let err = single(url, &files(Some(&junk), None, None)).unwrap_err().to_string();
        assert!(err.starts_with("CA file `") && err.contains("holds no PEM block"), "{err}");
        let err = single(url, &files(None, Some(&junk), Some(&junk))).unwrap_err().to_string();
        assert!(err.starts_with("client certificate `"), "{err}");
        let missing = dir.path().join("missing.pem");
        let err = single(url, &files(Some(&missing), None, None)).unwrap_err().to_string();
        assert!(err.contains("missing.pem") && err.contains("No such file"), "{err}");
    }

    #[test]
    fn a_bad_url_is_refused_without_its_password() {
        let err = single("http://:pw@h", &TlsFiles::default()).unwrap_err().to_string();
        assert!(err.contains("http://:***@h") && !err.contains("pw"), "{err}");
    }
}
