//! [`State`]: what every handler shares, and how a [`Config`] becomes one — the policy store,
//! the rate-cap store (memory or Redis), the recorder and its Redis stream, the limits — so
//! that the binary only parses flags and the tests can start a server in-process.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;

use super::{BodyLimits, ConnLimits};
use crate::config::{Cidr, Config};
use crate::lists::ListStore;
use crate::policy::PolicyStore;
use crate::protocol::tencent::TencentAuth;
use crate::ratecap::{CapStore, MemoryCaps, OnError, RedisCaps};
use crate::record::{RecordError, Recorder, StreamSink};
use crate::redis_client::{RedisSetupError, RedisTarget};
use crate::redis_health::RedisHealth;

/// What every handler shares.
#[derive(Debug)]
pub struct State {
    /// The live policy set.
    pub policies: Arc<PolicyStore>,
    /// Whether every answer is allow.
    pub is_dry_run: bool,
    /// How callback bodies are read: size, time, bytes held at once.
    pub body_limits: BodyLimits,
    /// The OpenIM version set by the operator; `None` infers it from each request's URL.
    pub openim_version: Option<crate::protocol::openim::OpenImVersion>,
    /// What Tencent callbacks must prove.
    pub tencent: TencentAuth,
    /// Where records go; `None` when recording is off.
    pub recorder: Option<Arc<Recorder>>,
    /// The record directory, for queries.
    pub data_dir: PathBuf,
    /// Where rate caps are counted.
    pub caps: Arc<CapStore>,
    /// Where lists held in Redis are asked.
    pub lists: Arc<ListStore>,
    /// What a cap answers when its store cannot.
    pub on_error: OnError,
    /// Renders `/metrics`; `None` when no recorder is installed (as in library use).
    pub metrics: Option<PrometheusHandle>,
    /// Bearer token the admin API requires, when set.
    pub admin_token: Option<String>,
    /// Secret path segment OpenIM callbacks must carry, when set.
    pub openim_path_token: Option<String>,
    /// Sources callbacks are accepted from; empty means any.
    pub allow_sources: Vec<Cidr>,
    /// Callbacks handled at once; a callback that finds none free is answered 503.
    pub busy: tokio::sync::Semaphore,
    /// Limits of the accept loops.
    pub conn_limits: ConnLimits,
    /// How long, after a stop signal, callbacks are still answered (each with
    /// `Connection: close`) while `/readyz` says not ready, before the server stops.
    pub shutdown_delay: std::time::Duration,
    /// Set when that drain begins.
    pub draining: Arc<std::sync::atomic::AtomicBool>,
    /// The status page's numbers, kept as callbacks are decided.
    pub live: Arc<super::status::Live>,
}

/// Why a server's state could not be built.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Redis is misconfigured (not unreachable: that is only logged, and caps and lists held
    /// in Redis answer per `--on-error` until it answers).
    #[error("--redis-url")]
    Redis(#[source] RedisSetupError),
    /// The record directory cannot be opened or is in use.
    #[error(transparent)]
    Records(#[from] RecordError),
}

impl State {
    /// Wires a server's parts from `config` around a loaded policy store. Must be called in
    /// the runtime that will serve: the Redis clients bind to it. With Redis configured, a
    /// probe is spawned that warms the connections callbacks use and logs whether Redis
    /// answers.
    pub fn from_config(
        config: &Config,
        policies: PolicyStore,
        metrics: Option<PrometheusHandle>,
    ) -> Result<State, StartError> {
        let redis = match &config.redis_url {
            Some(url) => {
                Some(RedisTarget::new(url, &config.redis_tls, config.is_redis_cluster).map_err(StartError::Redis)?)
            }
            None => None,
        };
        // The connections callbacks use, warmed by the probe.
        let mut warm = Vec::new();
        // Caps and lists send on one connection and share one breaker: a Redis that fails
        // one fails the other.
        let (caps, lists) = match &redis {
            Some(target) => {
                let conn = target.connect_lazily(config.redis_timeout).map_err(StartError::Redis)?;
                warm.push(conn.clone());
                let health = Arc::new(RedisHealth::new());
                (
                    CapStore::Redis(RedisCaps::new(conn.clone(), config.redis_timeout, health.clone())),
                    ListStore::new(Some((conn, health)), config.redis_timeout),
                )
            }
            None => {
                (CapStore::Memory(MemoryCaps::new(config.cap_max_keys)), ListStore::new(None, config.redis_timeout))
            }
        };
        let recorder = if config.is_recording {
            // Stream copies are not in a hurry: a longer timeout than the caps'.
            let stream = match &redis {
                Some(target) => {
                    let conn = target
                        .connect_lazily(config.redis_timeout.max(Duration::from_secs(1)))
                        .map_err(StartError::Redis)?;
                    warm.push(conn.clone());
                    Some(StreamSink::spawn(conn))
                }
                None => None,
            };
            Some(Arc::new(Recorder::open(&config.data_dir, config.record_max_bytes, config.record_retention, stream)?))
        } else {
            tracing::warn!("records are off: callbacks are decided and acknowledged but not recorded");
            None
        };
        if let Some(target) = redis {
            tokio::spawn(target.probe(warm));
        }
        Ok(State {
            policies: Arc::new(policies),
            is_dry_run: config.is_dry_run,
            body_limits: BodyLimits {
                max_bytes: config.max_body_bytes,
                timeout: config.read_timeout,
                in_flight: Arc::new(tokio::sync::Semaphore::new(config.max_body_bytes_in_flight)),
            },
            openim_version: config.openim_version,
            tencent: config.tencent.clone(),
            recorder,
            data_dir: config.data_dir.clone(),
            caps: Arc::new(caps),
            lists: Arc::new(lists),
            on_error: config.on_error,
            metrics,
            admin_token: config.admin_token.clone(),
            openim_path_token: config.openim_path_token.clone(),
            allow_sources: config.allow_sources.clone(),
            busy: tokio::sync::Semaphore::new(config.max_concurrent_requests),
            conn_limits: ConnLimits {
                read_timeout: config.read_timeout,
                idle_timeout: config.idle_timeout,
                max_header_bytes: config.max_header_bytes,
                max_connections: config.max_connections,
            },
            shutdown_delay: config.shutdown_delay,
            draining: Arc::default(),
            live: Arc::default(),
        })
    }
}

/// Warnings about a configuration an operator may not have meant, logged at start.
pub fn warn_about(config: &Config) {
    if config.is_dry_run {
        tracing::warn!("dry run: every callback is answered allow; records show what the rules would have answered");
    }
    if let Some(version) = config.openim_version {
        tracing::info!("OpenIM version set to {}: answers take its form whatever the URL", version.as_str());
        if !version.enforces_refusals() {
            tracing::warn!(
                "OpenIM 3.6 never enforces a callback's refusal (it only logs it): rules that deny are recorded, but the operations go on; upgrade OpenIM to 3.7 or later"
            );
        }
    }
    if config.tencent.app_id.is_none() {
        tracing::warn!(
            "no Tencent app ID configured: Tencent callbacks from any SdkAppid are accepted; set --tencent-app-id"
        );
    }
}
