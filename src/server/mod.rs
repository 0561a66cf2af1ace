//! The HTTP listeners: callbacks on one address, the admin API on another. The only module
//! that knows warp.
//!
//! A callback handler reads as four steps: decode (`protocol`), decide (`policy`), record,
//! reply (`protocol`).

mod access;
mod admin;
mod body;
mod callbacks;
mod listen;
mod observe;
mod openim;
mod state;
mod status;
mod tencent;

pub use body::BodyLimits;
pub use listen::{ConnLimits, Peer};
pub use state::{StartError, State, warn_about};

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use warp::http::{StatusCode, header};

use tokio::net::TcpListener;

use crate::config::Config;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::ratecap::CapStore;

/// How the server is asked to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Drain for the shutdown delay first (SIGTERM).
    Drain,
    /// Stop accepting at once, finishing requests in flight (SIGINT).
    Now,
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A listener could not be bound.
    #[error("cannot listen on {addr}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    /// The policy directory could not be watched.
    #[error("cannot watch the policy directory: {0}")]
    Watch(#[from] notify::Error),
}

/// The bound listeners, before serving starts.
pub struct Bound {
    callbacks: TcpListener,
    admin: TcpListener,
    /// The callback address actually bound (the port is known even when 0 was asked).
    pub callbacks_addr: SocketAddr,
    /// The admin address actually bound.
    pub admin_addr: SocketAddr,
}

/// Binds both listeners, so that a port in use is an error before anything else starts.
pub async fn bind(config: &Config) -> Result<Bound, ServeError> {
    let bind = |addr: SocketAddr| async move {
        TcpListener::bind(addr).await.map_err(|source| ServeError::Bind { addr, source })
    };
    let callbacks = bind(config.listen).await?;
    let admin = bind(config.admin_listen).await?;
    let local = |l: &TcpListener, asked: SocketAddr| l.local_addr().unwrap_or(asked);
    Ok(Bound {
        callbacks_addr: local(&callbacks, config.listen),
        admin_addr: local(&admin, config.admin_listen),
        callbacks,
        admin,
    })
}

/// Serves until `shutdown` completes, then drains: `/readyz` answers 503 at once, and callbacks
/// are still answered for `shutdown_delay`, each with `Connection: close`, so that load
/// balancers and clients move away without a failed call; then it stops accepting and finishes
/// requests in flight. Watches the policy directory for the whole time.
pub async fn serve(
    bound: Bound,
    state: Arc<State>,
    shutdown: impl Future<Output = Stop> + Send + 'static,
) -> Result<(), ServeError> {
    let _watch = crate::policy::watch(state.policies.clone())?;
    if let Some(handle) = state.metrics.clone() {
        tokio::spawn(async move {
            // Histograms are drained into the exporter's buckets on upkeep.
            let mut every = tokio::time::interval(std::time::Duration::from_secs(5));
            loop {
                every.tick().await;
                handle.run_upkeep();
            }
        });
    }
    tokio::spawn(async {
        // Summaries of log lines held back under a flood, once their second is over.
        let mut every = tokio::time::interval(crate::throttle::WINDOW);
        loop {
            every.tick().await;
            crate::throttle::flush();
        }
    });
    tokio::spawn(state.live.clone().keep_time());
    if let CapStore::Memory(_) = &*state.caps {
        let caps = state.caps.clone();
        tokio::spawn(async move {
            // Reclaim keys whose windows have emptied, so memory follows live keys only.
            let mut every = tokio::time::interval(std::time::Duration::from_secs(1));
            loop {
                every.tick().await;
                if let CapStore::Memory(m) = &*caps {
                    m.sweep();
                    metrics::gauge!("callgate_ratecap_keys").set(m.key_count() as f64);
                }
            }
        });
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);

    let recorder = state.recorder.clone();
    let limits = state.conn_limits;
    let draining = state.draining.clone();
    let delay = state.shutdown_delay;
    let admin = warp::service(admin::routes(state.clone()));
    let callbacks = move |peer| callbacks::Callbacks { state: state.clone(), peer };
    let callbacks = tokio::spawn(listen::serve(bound.callbacks, callbacks, limits, draining.clone(), stop_rx.clone()));
    let admin = tokio::spawn(listen::serve(bound.admin, move |_| admin.clone(), limits, draining.clone(), stop_rx));

    let stop = shutdown.await;
    draining.store(true, std::sync::atomic::Ordering::Relaxed);
    if stop == Stop::Drain && !delay.is_zero() {
        tracing::info!("draining for {delay:?}: /readyz answers 503, callbacks are answered with Connection: close");
        tokio::time::sleep(delay).await;
    }
    tracing::info!("shutting down: no new connections; finishing requests in flight");
    let _ = stop_tx.send(true);
    let _ = callbacks.await;
    let _ = admin.await;
    if let Some(recorder) = recorder {
        recorder.stop().await;
        tracing::info!("records flushed");
    }
    Ok(())
}

/// Installs the process-wide Prometheus recorder; every `metrics::` call from then on is
/// exported at the admin `/metrics`. The counters an operator alerts on are exported at 0
/// from the start (see [`zero_counters`]).
pub fn install_metrics() -> Result<PrometheusHandle, metrics_exporter_prometheus::BuildError> {
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    // Decisions take microseconds; the buckets reach OpenIM's 5 s timeout.
    let buckets =
        [0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1.0, 5.0];
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full("callgate_decision_seconds".into()), &buckets)?
        .install_recorder()?;
    zero_counters();
    Ok(handle)
}

/// Exports the counters of trouble at 0. A counter that first appears at 1 looks, to
/// Prometheus's `increase()` and `rate()`, like one that did not move, so an alert on the
/// first failure would never fire. Each label value listed here is one the code uses;
/// `tests/deploy.rs` checks that every counter `deploy/prometheus-rules.yaml` alerts on is
/// exported by a server that has done nothing yet.
fn zero_counters() {
    for name in [
        "callgate_records_written_total",
        "callgate_records_failed_total",
        "callgate_records_pruned_files_total",
        "callgate_stream_records_total",
        "callgate_stream_records_dropped_total",
        "callgate_tencent_callbacks_total",
        "callgate_tencent_unrecorded_total",
        "callgate_connections_refused_total",
        "callgate_admin_unauthorized_total",
    ] {
        metrics::counter!(name).increment(0);
    }
    for source in ["openim", "tencent"] {
        metrics::counter!("callgate_busy_total", "source" => source).increment(0);
    }
    for (source, reason) in [("openim", "source"), ("openim", "path_token"), ("tencent", "source")] {
        metrics::counter!("callgate_forbidden_total", "source" => source, "reason" => reason).increment(0);
    }
    for result in ["ok", "error", "unchanged"] {
        metrics::counter!("callgate_policy_reloads_total", "result" => result).increment(0);
    }
    for reason in ["timeout", "redis", "circuit_open", "full"] {
        metrics::counter!("callgate_ratecap_errors_total", "reason" => reason).increment(0);
    }
    for reason in ["timeout", "redis", "circuit_open", "no_redis"] {
        metrics::counter!("callgate_list_errors_total", "reason" => reason).increment(0);
    }
    for reason in ["timeout", "redis"] {
        metrics::counter!("callgate_redis_errors_total", "reason" => reason).increment(0);
    }
}

/// Marks an answer sent before the request body was read: the connection is closed after
/// it, and says so, so that a keep-alive client does not send its next request down a
/// connection that is about to close.
fn closing(mut response: warp::reply::Response) -> warp::reply::Response {
    response.headers_mut().insert(header::CONNECTION, header::HeaderValue::from_static("close"));
    response
}

/// A JSON answer with a status.
fn json_reply(status: StatusCode, body: Bytes) -> warp::reply::Response {
    let mut response = warp::reply::Response::new(body.into());
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
    response
}
