//! Configuration: command-line flags, `CALLGATE_*` environment variables and an optional
//! YAML config file, merged into one [`Config`] (flags > env > file > defaults). Every
//! default lives here.
//!
//! [`Settings`] is the one list of settings: clap reads it from flags and env, serde from the
//! file (keys are the flag names with `_` for `-`), so the three sources cannot drift apart.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use std::time::Duration;

use crate::protocol::openim::OpenImVersion;
use crate::protocol::tencent::TencentAuth;
use crate::ratecap::OnError;
use crate::record::Retention;
use crate::redis_client::TlsFiles;

/// Where OpenIM and Tencent callbacks are served by default.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Where the admin API is served by default.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9091";
/// The policy directory by default.
pub const DEFAULT_POLICIES: &str = "policies";
/// The record directory by default.
pub const DEFAULT_DATA_DIR: &str = "data";
/// The largest callback body decided by default: 16 MiB, twice the 8 MiB a stock OpenIM
/// server's gRPC limit lets a message reach. A larger body is refused, never let through.
pub const DEFAULT_MAX_BODY_BYTES: usize = 16 << 20;
/// Bytes of callback bodies held at once by default, across all requests: 256 MiB. A body
/// waits for room (within the read timeout) before it is read.
pub const DEFAULT_MAX_BODY_BYTES_IN_FLIGHT: usize = 256 << 20;
/// How far a Tencent `RequestTime` may be from now by default.
pub const DEFAULT_TENCENT_MAX_SKEW: &str = "60s";
/// The size at which a record file is rotated by default: 64 MiB.
pub const DEFAULT_RECORD_MAX_BYTES: u64 = 64 << 20;
/// How long a client may take to send headers, then a body, by default.
pub const DEFAULT_READ_TIMEOUT: &str = "10s";
/// How long, after SIGTERM, callgate keeps answering (not ready, `Connection: close`) before
/// it stops, by default: time for load balancers and Kubernetes endpoints to move away.
pub const DEFAULT_SHUTDOWN_DELAY: &str = "5s";
/// The largest request head by default: 64 KiB.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 64 << 10;
/// Callbacks handled at once by default.
pub const DEFAULT_MAX_CONCURRENT_REQUESTS: usize = 1024;
/// Connections open at once per listener by default.
pub const DEFAULT_MAX_CONNECTIONS: usize = 8192;
/// How long a Redis call may take by default.
pub const DEFAULT_REDIS_TIMEOUT: &str = "50ms";
/// How many rate-cap keys the in-memory store tracks at most by default.
pub const DEFAULT_CAP_MAX_KEYS: usize = 1_000_000;

/// Every setting of `callgate serve`, each optional so sources can be merged.
#[derive(Debug, Clone, Default, clap::Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Address for OpenIM and Tencent callbacks [default: 127.0.0.1:8080]
    #[arg(long, env = "CALLGATE_LISTEN", value_name = "ADDR")]
    pub listen: Option<String>,

    /// Address for the admin API: metrics, health, status, reload [default: 127.0.0.1:9091]
    #[arg(long, env = "CALLGATE_ADMIN_LISTEN", value_name = "ADDR")]
    pub admin_listen: Option<String>,

    /// Bearer token the admin API requires (all but /healthz and /readyz); required when
    /// --admin-listen is not a loopback address
    #[arg(long, env = "CALLGATE_ADMIN_TOKEN", value_name = "TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// Policy directory: every *.yaml / *.yml directly in it [default: ./policies]
    #[arg(long, env = "CALLGATE_POLICIES", value_name = "DIR")]
    pub policies: Option<PathBuf>,

    /// Directory for records [default: ./data]
    #[arg(long, env = "CALLGATE_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// Answer allow to every callback; record what the rules would have answered
    #[arg(long, env = "CALLGATE_DRY_RUN", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub dry_run: Option<bool>,

    /// Log format: text or json [default: text]
    #[arg(long, env = "CALLGATE_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,

    /// Largest callback body decided, in bytes; a larger one is refused [default: 16777216]
    #[arg(long, env = "CALLGATE_MAX_BODY_BYTES", value_name = "BYTES")]
    pub max_body_bytes: Option<usize>,

    /// Bytes of callback bodies held in memory at once, all requests together; a body waits
    /// for room within the read timeout [default: 268435456]
    #[arg(long, env = "CALLGATE_MAX_BODY_BYTES_IN_FLIGHT", value_name = "BYTES")]
    pub max_body_bytes_in_flight: Option<usize>,

    /// The OpenIM server version (e.g. 3.8.3, 3.5, 2.3), where a proxy rewrites callback URLs
    /// so the URL form no longer tells it [default: inferred from each request's URL form]
    #[arg(long, env = "CALLGATE_OPENIM_VERSION", value_name = "VERSION")]
    pub openim_version: Option<String>,

    /// Tencent SdkAppid that callbacks must carry [default: accept any, with a warning]
    #[arg(long, env = "CALLGATE_TENCENT_APP_ID", value_name = "ID")]
    pub tencent_app_id: Option<String>,

    /// Tencent callback-authentication token; when set, Sign and RequestTime are required
    #[arg(long, env = "CALLGATE_TENCENT_TOKEN", value_name = "TOKEN", hide_env_values = true)]
    pub tencent_token: Option<String>,

    /// How far a Tencent RequestTime may be from now [default: 60s]
    #[arg(long, env = "CALLGATE_TENCENT_MAX_SKEW", value_name = "DURATION")]
    pub tencent_max_skew: Option<String>,

    /// Write records of every callback [default: true]
    #[arg(long, env = "CALLGATE_RECORDS", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub records: Option<bool>,

    /// Size at which a record file is closed and a new one started [default: 67108864]
    #[arg(long, env = "CALLGATE_RECORD_MAX_BYTES", value_name = "BYTES")]
    pub record_max_bytes: Option<u64>,

    /// Delete a record file once its newest record is older than this (e.g. 30d)
    /// [default: keep every file]
    #[arg(long, env = "CALLGATE_RECORD_MAX_AGE", value_name = "DURATION")]
    pub record_max_age: Option<String>,

    /// Delete the oldest record files while all of them take more bytes than this (the file
    /// being written is always kept) [default: no limit]
    #[arg(long, env = "CALLGATE_RECORD_MAX_TOTAL_BYTES", value_name = "BYTES")]
    pub record_max_total_bytes: Option<u64>,

    /// Redis for rate caps shared by several instances, as redis://host:6379/0 [default: caps in memory]
    #[arg(long, env = "CALLGATE_REDIS_URL", value_name = "URL", hide_env_values = true)]
    pub redis_url: Option<String>,

    /// --redis-url is a node of a Redis Cluster: find the others from it [default: false]
    #[arg(long, env = "CALLGATE_REDIS_CLUSTER", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub redis_cluster: Option<bool>,

    /// How long a Redis call may take before the caps and lists it asks answer per --on-error
    /// [default: 50ms]
    #[arg(long, env = "CALLGATE_REDIS_TIMEOUT", value_name = "DURATION")]
    pub redis_timeout: Option<String>,

    /// PEM file of the CA(s) that signed Redis's certificate, for a rediss:// URL whose
    /// certificate the system does not trust [default: the system's trusted CAs]
    #[arg(long, env = "CALLGATE_REDIS_CA_FILE", value_name = "FILE")]
    pub redis_ca_file: Option<PathBuf>,

    /// PEM certificate callgate shows a rediss:// Redis that asks clients for one
    /// (tls-auth-clients); with --redis-client-key [default: none]
    #[arg(long, env = "CALLGATE_REDIS_CLIENT_CERT", value_name = "FILE")]
    pub redis_client_cert: Option<PathBuf>,

    /// PEM private key of --redis-client-cert [default: none]
    #[arg(long, env = "CALLGATE_REDIS_CLIENT_KEY", value_name = "FILE")]
    pub redis_client_key: Option<PathBuf>,

    /// What a rate cap, or a test on a list held in Redis, answers when its store cannot: allow
    /// (fail open; the list reads as empty) or deny (it holds every ID) [default: allow]
    #[arg(long, env = "CALLGATE_ON_ERROR", value_name = "ANSWER")]
    pub on_error: Option<OnError>,

    /// Secret path segment OpenIM must post under: /openim/<TOKEN>/<command> [default: none]
    #[arg(long, env = "CALLGATE_OPENIM_PATH_TOKEN", value_name = "TOKEN", hide_env_values = true)]
    pub openim_path_token: Option<String>,

    /// Accept callbacks only from these sources (CIDR or IP; repeat, or comma-separate in env)
    /// [default: any]
    #[arg(long, env = "CALLGATE_ALLOW_SOURCE", value_name = "CIDR", value_delimiter = ',')]
    pub allow_source: Option<Vec<String>>,

    /// How long a client may take to send a request's headers, from their first byte, and then
    /// its body [default: 10s]
    #[arg(long, env = "CALLGATE_READ_TIMEOUT", value_name = "DURATION")]
    pub read_timeout: Option<String>,

    /// Close a connection idle this long between requests (racing a client that sends a
    /// callback down it just then), or `none`; the read timeout applies from a request's first
    /// byte [default: none: idle connections are kept while the client keeps them]
    #[arg(long, env = "CALLGATE_IDLE_TIMEOUT", value_name = "DURATION")]
    pub idle_timeout: Option<String>,

    /// After SIGTERM, keep answering callbacks this long (with `Connection: close`, /readyz
    /// not ready) before stopping; SIGINT stops at once [default: 5s]
    #[arg(long, env = "CALLGATE_SHUTDOWN_DELAY", value_name = "DURATION")]
    pub shutdown_delay: Option<String>,

    /// Largest request head (request line and headers) in bytes [default: 65536]
    #[arg(long, env = "CALLGATE_MAX_HEADER_BYTES", value_name = "BYTES")]
    pub max_header_bytes: Option<usize>,

    /// Callbacks handled at once; past this a callback is answered 503 [default: 1024]
    #[arg(long, env = "CALLGATE_MAX_CONCURRENT_REQUESTS", value_name = "N")]
    pub max_concurrent_requests: Option<usize>,

    /// Connections open at once per listener; past this new ones are closed [default: 8192]
    #[arg(long, env = "CALLGATE_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<usize>,

    /// Most rate-cap keys tracked in memory; past it new keys answer per --on-error [default: 1000000]
    #[arg(long, env = "CALLGATE_CAP_MAX_KEYS", value_name = "N")]
    pub cap_max_keys: Option<usize>,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object a line.
    Json,
}

/// The resolved configuration of a running server.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address for callbacks.
    pub listen: SocketAddr,
    /// Address for the admin API.
    pub admin_listen: SocketAddr,
    /// Bearer token for the admin API.
    pub admin_token: Option<String>,
    /// Policy directory.
    pub policies: PathBuf,
    /// Record directory.
    pub data_dir: PathBuf,
    /// Whether every answer is allow (rules only reported).
    pub is_dry_run: bool,
    /// Log format.
    pub log_format: LogFormat,
    /// Largest callback body decided.
    pub max_body_bytes: usize,
    /// Bytes of callback bodies held at once.
    pub max_body_bytes_in_flight: usize,
    /// The OpenIM version set by the operator; `None` infers it from each URL.
    pub openim_version: Option<OpenImVersion>,
    /// What Tencent callbacks must prove.
    pub tencent: TencentAuth,
    /// Whether records are written.
    pub is_recording: bool,
    /// Size at which a record file is rotated.
    pub record_max_bytes: u64,
    /// Which closed record files are kept.
    pub record_retention: Retention,
    /// Redis URL for shared rate caps; `None` keeps caps in memory.
    pub redis_url: Option<String>,
    /// Whether `redis_url` is a node of a Redis Cluster.
    pub is_redis_cluster: bool,
    /// Timeout of each Redis call.
    pub redis_timeout: Duration,
    /// Certificate files of a `rediss://` connection.
    pub redis_tls: TlsFiles,
    /// What a cap answers when its store cannot.
    pub on_error: OnError,
    /// Most keys the in-memory cap store tracks.
    pub cap_max_keys: usize,
    /// Secret path segment for OpenIM callbacks.
    pub openim_path_token: Option<String>,
    /// Sources callbacks are accepted from; empty means any.
    pub allow_sources: Vec<Cidr>,
    /// Header (and body) read timeout.
    pub read_timeout: Duration,
    /// How long a connection may wait idle for its next request; `None` for as long as the
    /// client keeps it.
    pub idle_timeout: Option<Duration>,
    /// How long callbacks are still answered after SIGTERM.
    pub shutdown_delay: Duration,
    /// Largest request head.
    pub max_header_bytes: usize,
    /// Callbacks handled at once.
    pub max_concurrent_requests: usize,
    /// Connections open at once per listener.
    pub max_connections: usize,
}

/// An IP network, `10.0.0.0/8` or a single address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `ADDR/PREFIX` or `ADDR`.
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let bad = || format!("`{text}` is not a network; write an address or ADDR/PREFIX, as in `10.0.0.0/8`");
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p.parse::<u8>().map_err(|_| bad())?)),
            None => (text, None),
        };
        let net: IpAddr = addr.trim().parse().map_err(|_| bad())?;
        let bits = if net.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(bits);
        if prefix > bits {
            return Err(bad());
        }
        Ok(Cidr { net, prefix })
    }

    /// Whether `ip` is in the network (an IPv4 address seen as `::ffff:a.b.c.d` counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// Why a configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file `{}`", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    /// The config file is not valid.
    #[error("config file `{}`: {message}", path.display())]
    File { path: PathBuf, message: String },
    /// A setting has a bad value.
    #[error("`{key}`: {message}")]
    Value { key: &'static str, message: String },
}

impl Settings {
    /// Reads a YAML config file.
    pub fn from_file(path: &Path) -> Result<Settings, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        let settings: Option<Settings> = serde_yaml_ng::from_str(&text)
            .map_err(|e| ConfigError::File { path: path.to_path_buf(), message: e.to_string() })?;
        Ok(settings.unwrap_or_default())
    }

    /// Fills every setting this one lacks from `lower`.
    pub fn or(self, lower: Settings) -> Settings {
        Settings {
            listen: self.listen.or(lower.listen),
            admin_listen: self.admin_listen.or(lower.admin_listen),
            admin_token: self.admin_token.or(lower.admin_token),
            policies: self.policies.or(lower.policies),
            data_dir: self.data_dir.or(lower.data_dir),
            dry_run: self.dry_run.or(lower.dry_run),
            log_format: self.log_format.or(lower.log_format),
            max_body_bytes: self.max_body_bytes.or(lower.max_body_bytes),
            max_body_bytes_in_flight: self.max_body_bytes_in_flight.or(lower.max_body_bytes_in_flight),
            openim_version: self.openim_version.or(lower.openim_version),
            tencent_app_id: self.tencent_app_id.or(lower.tencent_app_id),
            tencent_token: self.tencent_token.or(lower.tencent_token),
            tencent_max_skew: self.tencent_max_skew.or(lower.tencent_max_skew),
            records: self.records.or(lower.records),
            record_max_bytes: self.record_max_bytes.or(lower.record_max_bytes),
            record_max_age: self.record_max_age.or(lower.record_max_age),
            record_max_total_bytes: self.record_max_total_bytes.or(lower.record_max_total_bytes),
            redis_url: self.redis_url.or(lower.redis_url),
            redis_timeout: self.redis_timeout.or(lower.redis_timeout),
            redis_cluster: self.redis_cluster.or(lower.redis_cluster),
            redis_ca_file: self.redis_ca_file.or(lower.redis_ca_file),
            redis_client_cert: self.redis_client_cert.or(lower.redis_client_cert),
            redis_client_key: self.redis_client_key.or(lower.redis_client_key),
            on_error: self.on_error.or(lower.on_error),
            cap_max_keys: self.cap_max_keys.or(lower.cap_max_keys),
            openim_path_token: self.openim_path_token.or(lower.openim_path_token),
            allow_source: self.allow_source.or(lower.allow_source),
            read_timeout: self.read_timeout.or(lower.read_timeout),
            idle_timeout: self.idle_timeout.or(lower.idle_timeout),
            shutdown_delay: self.shutdown_delay.or(lower.shutdown_delay),
            max_header_bytes: self.max_header_bytes.or(lower.max_header_bytes),
            max_concurrent_requests: self.max_concurrent_requests.or(lower.max_concurrent_requests),
            max_connections: self.max_connections.or(lower.max_connections),
        }
    }

    /// Applies the defaults and checks every value.
    pub fn resolve(self) -> Result<Config, ConfigError> {
        let (max_body_bytes, max_body_bytes_in_flight) =
            body_limits(self.max_body_bytes, self.max_body_bytes_in_flight)?;
        let (record_max_bytes, record_retention) =
            record_limits(self.record_max_bytes, self.record_max_age, self.record_max_total_bytes)?;
        let admin_listen = address("admin_listen", self.admin_listen, DEFAULT_ADMIN_LISTEN)?;
        let admin_token = non_empty(self.admin_token);
        if !admin_listen.ip().is_loopback() && admin_token.is_none() {
            return Err(ConfigError::Value {
                key: "admin_listen",
                message: format!(
                    "`{admin_listen}` is not a loopback address, so the admin API needs a token: set --admin-token (or CALLGATE_ADMIN_TOKEN)"
                ),
            });
        }
        Ok(Config {
            tencent: TencentAuth {
                app_id: non_empty(self.tencent_app_id),
                token: non_empty(self.tencent_token),
                max_skew: duration("tencent_max_skew", self.tencent_max_skew, DEFAULT_TENCENT_MAX_SKEW)?,
            },
            is_recording: self.records.unwrap_or(true),
            redis_url: non_empty(self.redis_url),
            redis_timeout: duration("redis_timeout", self.redis_timeout, DEFAULT_REDIS_TIMEOUT)?,
            is_redis_cluster: self.redis_cluster.unwrap_or(false),
            redis_tls: TlsFiles {
                ca: self.redis_ca_file,
                client_cert: self.redis_client_cert,
                client_key: self.redis_client_key,
            },
            on_error: self.on_error.unwrap_or_default(),
            cap_max_keys: at_least("cap_max_keys", self.cap_max_keys.unwrap_or(DEFAULT_CAP_MAX_KEYS), 1)?,
            record_max_bytes,
            record_retention,
            listen: address("listen", self.listen, DEFAULT_LISTEN)?,
            admin_listen,
            admin_token,
            openim_path_token: non_empty(self.openim_path_token),
            allow_sources: cidrs(self.allow_source)?,
            read_timeout: duration("read_timeout", self.read_timeout, DEFAULT_READ_TIMEOUT)?,
            // `none` (the default): no idle timeout.
            idle_timeout: match self.idle_timeout.as_deref().map(str::trim) {
                None | Some("" | "none" | "0") => None,
                Some(_) => Some(duration("idle_timeout", self.idle_timeout, "")?),
            },
            // Zero is allowed here: stop at once on SIGTERM too.
            shutdown_delay: match self.shutdown_delay.as_deref().map(str::trim) {
                Some("0" | "0s") => Duration::ZERO,
                _ => duration("shutdown_delay", self.shutdown_delay, DEFAULT_SHUTDOWN_DELAY)?,
            },
            max_header_bytes: at_least(
                "max_header_bytes",
                self.max_header_bytes.unwrap_or(DEFAULT_MAX_HEADER_BYTES),
                1024,
            )?,
            max_concurrent_requests: at_least(
                "max_concurrent_requests",
                self.max_concurrent_requests.unwrap_or(DEFAULT_MAX_CONCURRENT_REQUESTS),
                1,
            )?,
            max_connections: at_least("max_connections", self.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS), 1)?,
            policies: self.policies.unwrap_or_else(|| DEFAULT_POLICIES.into()),
            data_dir: self.data_dir.unwrap_or_else(|| DEFAULT_DATA_DIR.into()),
            is_dry_run: self.dry_run.unwrap_or(false),
            log_format: self.log_format.unwrap_or_default(),
            max_body_bytes,
            max_body_bytes_in_flight,
            openim_version: self
                .openim_version
                .filter(|v| !v.trim().is_empty())
                .map(|v| OpenImVersion::parse(v.trim()))
                .transpose()
                .map_err(|message| ConfigError::Value { key: "openim_version", message })?,
        })
    }
}

/// The largest body and the bytes of bodies held at once, checked against each other.
fn body_limits(max: Option<usize>, in_flight: Option<usize>) -> Result<(usize, usize), ConfigError> {
    let max = at_least("max_body_bytes", max.unwrap_or(DEFAULT_MAX_BODY_BYTES), 1)?;
    let in_flight = in_flight.unwrap_or(DEFAULT_MAX_BODY_BYTES_IN_FLIGHT);
    if in_flight < max {
        return Err(ConfigError::Value {
            key: "max_body_bytes_in_flight",
            message: format!("must be at least max_body_bytes ({max}), or no body that large could be read"),
        });
    }
    Ok((max, in_flight))
}

/// The size a record file is rotated at, and which closed files are kept.
fn record_limits(
    max_bytes: Option<u64>,
    max_age: Option<String>,
    max_total_bytes: Option<u64>,
) -> Result<(u64, Retention), ConfigError> {
    let max_bytes = max_bytes.unwrap_or(DEFAULT_RECORD_MAX_BYTES);
    if max_bytes < 4096 {
        return Err(ConfigError::Value { key: "record_max_bytes", message: "must be at least 4096".into() });
    }
    let max_age = max_age
        .map(|text| crate::duration::parse(&text))
        .transpose()
        .map_err(|message| ConfigError::Value { key: "record_max_age", message })?;
    if let Some(total) = max_total_bytes
        && total < max_bytes
    {
        return Err(ConfigError::Value {
            key: "record_max_total_bytes",
            message: format!("must be at least record_max_bytes ({max_bytes}): the file being written is always kept"),
        });
    }
    Ok((max_bytes, Retention { max_age, max_total_bytes }))
}

/// An address setting: its value, or `default` when unset.
fn address(key: &'static str, value: Option<String>, default: &str) -> Result<SocketAddr, ConfigError> {
    let text = value.unwrap_or_else(|| default.to_string());
    text.parse().map_err(|_| ConfigError::Value {
        key,
        message: format!("`{text}` is not an address; write IP:PORT, as in `{default}`"),
    })
}

/// The networks of `allow_source`, blanks skipped.
fn cidrs(values: Option<Vec<String>>) -> Result<Vec<Cidr>, ConfigError> {
    values
        .unwrap_or_default()
        .iter()
        .filter(|s| !s.trim().is_empty())
        .map(|s| Cidr::parse(s.trim()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|message| ConfigError::Value { key: "allow_source", message })
}

/// A count that must be at least `min`.
fn at_least<T: PartialOrd + std::fmt::Display>(key: &'static str, value: T, min: T) -> Result<T, ConfigError> {
    if value < min { Err(ConfigError::Value { key, message: format!("must be at least {min}") }) } else { Ok(value) }
}

/// A string setting, `None` when empty.
fn non_empty(value: Option<String>) -> Option<String> {
    value.filter(|s| !s.is_empty())
}

/// A duration setting: its value, or `default` when unset.
fn duration(key: &'static str, value: Option<String>, default: &str) -> Result<Duration, ConfigError> {
    let text = value.unwrap_or_else(|| default.to_string());
    crate::duration::parse(&text).map_err(|message| ConfigError::Value { key, message })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn higher_source_wins_per_key() {
        let flags = Settings { listen: Some("127.0.0.1:1".into()), ..Settings::default() };
        let file = Settings { listen: Some("127.0.0.1:2".into()), dry_run: Some(true), ..Settings::default() };
        let config = flags.or(file).resolve().unwrap();
        assert_eq!(config.listen.port(), 1);
        assert!(config.is_dry_run);
        assert_eq!(config.admin_listen.to_string(), DEFAULT_ADMIN_LISTEN);
    }

    #[test]
    fn admin_off_loopback_needs_a_token() {
        let open = Settings { admin_listen: Some("0.0.0.0:9091".into()), ..Settings::default() };
        let err = open.clone().resolve().unwrap_err();
        assert!(err.to_string().contains("needs a token"), "{err}");
        let with_token = Settings { admin_token: Some("t".into()), ..open };
        assert_eq!(with_token.resolve().unwrap().admin_token.as_deref(), Some("t"));
    }

    #[test]
    fn cidrs() {
        let net = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(net.contains("10.1.200.3".parse().unwrap()));
        assert!(!net.contains("10.2.0.1".parse().unwrap()));
        assert!(net.contains("::ffff:10.1.0.9".parse().unwrap()));
        assert!(Cidr::parse("127.0.0.1").unwrap().contains("127.0.0.1".parse().unwrap()));
        assert!(!Cidr::parse("127.0.0.1").unwrap().contains("127.0.0.2".parse().unwrap()));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains("8.8.8.8".parse().unwrap()));
        assert!(Cidr::parse("fd00::/8").unwrap().contains("fd12::1".parse().unwrap()));
        for bad in ["10.0.0.0/33", "nope", "10.0.0.0/x", "::/129"] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bad_address_names_the_key() {
        let err = Settings { listen: Some("nowhere".into()), ..Settings::default() }.resolve().unwrap_err();
        assert!(err.to_string().starts_with("`listen`: `nowhere` is not an address"), "{err}");
    }
}
