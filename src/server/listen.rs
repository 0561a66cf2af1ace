//! The accept loop: HTTP/1 connections served with the limits warp's own server does not
//! set — a header read timeout (a slow client cannot hold a connection), a header size
//! limit, and a cap on open connections — plus graceful shutdown. Each request carries its
//! peer address as a [`Peer`] extension, for the source allowlist.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use std::convert::Infallible;

use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tower_service::Service;

/// The address a request came from.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

/// Connection-level limits.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// How long a client may take to send a request's headers (and, in the handlers, its body).
    pub read_timeout: Duration,
    /// The largest request head (request line and headers), in bytes.
    pub max_header_bytes: usize,
    /// Connections open at once; past this a new connection is closed at once.
    pub max_connections: usize,
}

/// How long shutdown waits for requests in flight before closing their connections.
const DRAIN_FOR: Duration = Duration::from_secs(10);

/// Serves `service` (a `warp::service(filter)`) on `listener` until `stop` turns true, then
/// stops accepting, lets requests in flight finish (up to a bound) and returns.
pub async fn serve<S>(listener: TcpListener, service: S, limits: ConnLimits, mut stop: watch::Receiver<bool>)
where
    S: Service<hyper::Request<Incoming>, Response = warp::reply::Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.read_timeout)
        .max_header_size(limits.max_header_bytes)
        .keep_alive(true);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: pause rather than spin.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = async { let _ = stop.wait_for(|s| *s).await; } => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics::counter!("callgate_connections_refused_total").increment(1);
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = service.clone();
        let handler = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(Peer(peer));
            // warp's service is always ready and cheap to clone.
            service.clone().call(req)
        });
        let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), handler));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, "connection ended: {e}");
            }
            drop(slot);
        });
    }
    if tokio::time::timeout(DRAIN_FOR, graceful.shutdown()).await.is_err() {
        tracing::warn!("requests still in flight after {DRAIN_FOR:?}; closing their connections");
    }
}
