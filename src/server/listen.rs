//! The accept loop: HTTP/1 connections served with the limits warp's own server does not
//! set — a header read timeout (a slow client cannot hold a connection), an idle timeout
//! between requests, a header size limit, and a cap on open connections — plus graceful
//! shutdown. Each request carries its peer address as a [`Peer`] extension, for the source
//! allowlist.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tower_service::Service;

/// The address a request came from.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

/// Connection-level limits.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// How long a client may take to send a request's head, from its first byte (and, in the
    /// handlers, its body).
    pub read_timeout: Duration,
    /// How long a connection may wait, idle, for the first byte of its next request.
    pub idle_timeout: Duration,
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
    http.header_read_timeout(limits.read_timeout).max_header_size(limits.max_header_bytes).keep_alive(true);
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
        let reads = Arc::new(AtomicU64::new(0));
        let mut http = http.clone();
        http.timer(HeadTimer {
            reads: reads.clone(),
            read_timeout: limits.read_timeout,
            idle_timeout: limits.idle_timeout,
        });
        let io = TokioIo::new(CountedReads { stream, reads });
        let service = service.clone();
        let handler = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(Peer(peer));
            // warp's service is always ready and cheap to clone.
            service.clone().call(req)
        });
        let conn = graceful.watch(http.serve_connection(io, handler));
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

// Why a timer of our own. hyper's (1.12) HTTP/1 server starts its header read timeout as soon as it
// waits for a request head: when a connection opens, and again the moment it has answered a
// request (proto/h1/conn.rs `poll_read_head`, armed by `State::idle`). So a kept-alive
// connection that sits idle for the read timeout is closed, and a client that pools idle
// connections longer (Go: 90 s) may send a callback down one just as it closes. hyper has no
// separate idle timeout, and only hyper knows when a head is awaited, so the two timeouts are
// told apart where hyper asks for its one: the `Timer` of each connection. hyper's HTTP/1
// server uses its timer for the header read timeout alone (`header_read_timeout` requires
// it), so every sleep it asks for is "the wait for the next head". [`HeadWait`] makes that
// wait `idle_timeout` long while no byte has come, and `read_timeout` from the first byte
// (counted by [`CountedReads`]) on. When either ends, hyper closes the connection as it does
// on its own header timeout. Graceful shutdown is unchanged: hyper closes a connection that is
// idle (or has never read) at once. This leans on how hyper uses its timer, so the tests in
// tests/hardening.rs pin each half (an idle connection outlives the read timeout and is closed
// at the idle timeout; a started head is cut at the read timeout) against a hyper upgrade.

/// The per-connection timer hyper arms while it waits for a request head.
#[derive(Debug)]
struct HeadTimer {
    /// Reads that brought bytes on this connection, ever. Counted and checked in the
    /// connection's one task, so `Relaxed` will do; atomic only because hyper wants a
    /// `Send + Sync` timer.
    reads: Arc<AtomicU64>,
    read_timeout: Duration,
    idle_timeout: Duration,
}

impl hyper::rt::Timer for HeadTimer {
    // hyper's deadline is its wait start plus `read_timeout`; [`HeadWait`] keeps its own.
    fn sleep_until(&self, _deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(HeadWait {
            reads: self.reads.clone(),
            reads_at_start: self.reads.load(Ordering::Relaxed),
            read_timeout: self.read_timeout,
            is_receiving: false,
            sleep: Box::pin(tokio::time::sleep(self.idle_timeout)),
        })
    }

    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep_until(Instant::now() + duration)
    }
}

/// One wait for a request head: idle until a byte arrives, then the read timeout.
///
/// A head already part-buffered when the wait starts (pipelined behind the last request)
/// counts as idle until more of it comes; that holds a connection no longer than a client
/// that simply stays idle can.
struct HeadWait {
    reads: Arc<AtomicU64>,
    reads_at_start: u64,
    read_timeout: Duration,
    is_receiving: bool,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl Future for HeadWait {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // hyper polls this after each read that leaves the head incomplete, so a first byte
        // is seen here as it arrives.
        if !self.is_receiving && self.reads.load(Ordering::Relaxed) != self.reads_at_start {
            self.is_receiving = true;
            let deadline = tokio::time::Instant::now() + self.read_timeout;
            self.sleep.as_mut().reset(deadline);
        }
        self.sleep.as_mut().poll(cx)
    }
}

impl hyper::rt::Sleep for HeadWait {}

/// A TCP stream that counts the reads that brought bytes, for [`HeadWait`].
struct CountedReads {
    stream: TcpStream,
    reads: Arc<AtomicU64>,
}

impl AsyncRead for CountedReads {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.reads.fetch_add(1, Ordering::Relaxed);
        }
        polled
    }
}

impl AsyncWrite for CountedReads {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
