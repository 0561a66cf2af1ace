//! The accept loop: HTTP/1 connections served with the limits warp's own server does not
//! set — a header read timeout (a slow client cannot hold a connection), an optional idle
//! timeout between requests, a header size limit, a cap on open connections (reached, the
//! connection idle the longest is closed to make room) and TCP keepalive — plus the drain
//! before shutdown. Each connection's service is made knowing its [`Peer`], for the source
//! allowlist (not as a request extension: inserting one costs a map per request).
//!
//! Why no idle timeout by default: OpenIM ≥ 3.7 keeps idle connections forever and does not
//! retry a POST, so a kept-alive connection closed by the server just as OpenIM sends a
//! callback down it fails that user's operation. HTTP/1 has no way to close an idle
//! connection without that race, so callgate closes one only when it must: a dead peer is
//! found by TCP keepalive, and at the connection cap the connection idle the longest goes.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::task::AtomicWaker;
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
    /// How long a connection may wait, idle, for the first byte of its next request; `None`
    /// waits as long as the client keeps it (the default: see the module doc).
    pub idle_timeout: Option<Duration>,
    /// The largest request head (request line and headers), in bytes.
    pub max_header_bytes: usize,
    /// Connections open at once; past this the connection idle the longest is closed to make
    /// room, and when none is idle the new one is closed at once.
    pub max_connections: usize,
}

/// TCP keepalive on every connection: a peer that vanished (host down, cable cut) is found
/// within about `IDLE + INTERVAL × RETRIES` (2 minutes) and its connection closed, so that
/// waiting forever for an idle client costs nothing after it is gone.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_RETRIES: u32 = 6;

/// How long a new connection waits for the room an evicted idle one leaves.
const EVICT_WAIT: Duration = Duration::from_secs(1);

/// How long shutdown waits for requests in flight before closing their connections.
const DRAIN_FOR: Duration = Duration::from_secs(10);

/// Serves the services `make` makes, one per connection from its peer, on `listener` until
/// `stop` turns true, then stops accepting, lets requests in flight finish (up to a bound)
/// and returns. While `draining` is set, every answer carries `Connection: close`, so that
/// clients leave their kept-alive connections cleanly before the server stops.
pub async fn serve<M, S>(
    listener: TcpListener,
    make: M,
    limits: ConnLimits,
    draining: Arc<AtomicBool>,
    mut stop: watch::Receiver<bool>,
) where
    M: Fn(Peer) -> S,
    S: Service<hyper::Request<Incoming>, Response = warp::reply::Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let conns = Arc::new(Connections::default());
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_RETRIES);
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
        let Some(slot) = take_slot(&slots, &conns).await else {
            metrics::counter!("callgate_connections_refused_total").increment(1);
            drop(stream);
            continue;
        };
        tune(&stream, peer, &keepalive);
        let conn = conns.open(peer);
        let mut http = http.clone();
        http.timer(HeadTimer {
            conn: conn.clone(),
            read_timeout: limits.read_timeout,
            idle_timeout: limits.idle_timeout,
        });
        let io = TokioIo::new(CountedReads { stream, conn: conn.clone() });
        let handler = handler(make(Peer(peer)), draining.clone());
        let served = graceful.watch(http.serve_connection(io, handler));
        let conns = conns.clone();
        tokio::spawn(async move {
            if let Err(e) = served.await {
                tracing::debug!(%peer, "connection ended: {e}");
            }
            conns.close(&conn);
            drop(slot);
        });
    }
    if tokio::time::timeout(DRAIN_FOR, graceful.shutdown()).await.is_err() {
        tracing::warn!("requests still in flight after {DRAIN_FOR:?}; closing their connections");
    }
}

/// Sets what every connection gets: no Nagle delay for small answers, and TCP keepalive.
fn tune(stream: &TcpStream, peer: SocketAddr, keepalive: &socket2::TcpKeepalive) {
    let _ = stream.set_nodelay(true);
    if let Err(e) = socket2::SockRef::from(stream).set_tcp_keepalive(keepalive) {
        tracing::debug!(%peer, "cannot set TCP keepalive: {e}");
    }
}

/// The service of one connection: while `draining` is set each answer says `Connection: close`.
fn handler<S>(
    service: S,
    draining: Arc<AtomicBool>,
) -> impl hyper::service::Service<
    hyper::Request<Incoming>,
    Response = warp::reply::Response,
    Error = Infallible,
    Future = impl Future<Output = Result<warp::reply::Response, Infallible>> + Send + 'static,
> + Send
+ 'static
where
    S: Service<hyper::Request<Incoming>, Response = warp::reply::Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let is_closing = draining.load(Ordering::Relaxed);
        // warp's service is always ready and cheap to clone.
        let answer = service.clone().call(req);
        async move {
            let mut response = answer.await?;
            if is_closing {
                // hyper closes the connection after an answer that says so.
                response
                    .headers_mut()
                    .insert(hyper::header::CONNECTION, hyper::header::HeaderValue::from_static("close"));
            }
            Ok::<_, Infallible>(response)
        }
    })
}

/// A connection slot: free at once, or made by closing the connection idle the longest.
/// `None` when every open connection is busy.
async fn take_slot(slots: &Arc<Semaphore>, conns: &Connections) -> Option<tokio::sync::OwnedSemaphorePermit> {
    if let Ok(slot) = slots.clone().try_acquire_owned() {
        return Some(slot);
    }
    if !conns.evict_longest_idle() {
        return None;
    }
    tokio::time::timeout(EVICT_WAIT, slots.clone().acquire_owned()).await.ok()?.ok()
}

/// The open connections of one listener, so that the one idle the longest can be found.
#[derive(Debug, Default)]
struct Connections {
    next_id: AtomicU64,
    open: Mutex<HashMap<u64, Arc<Connection>>>,
}

impl Connections {
    fn open(&self, peer: SocketAddr) -> Arc<Connection> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Connection { id, peer: Some(peer), ..Connection::default() });
        if let Ok(mut open) = self.open.lock() {
            open.insert(conn.id, conn.clone());
        }
        conn
    }

    fn close(&self, conn: &Connection) {
        if let Ok(mut open) = self.open.lock() {
            open.remove(&conn.id);
        }
    }

    /// Asks the connection idle the longest to close; false when none is idle.
    fn evict_longest_idle(&self) -> bool {
        let Ok(open) = self.open.lock() else { return false };
        let longest =
            open.values().filter_map(|c| c.idle_since().map(|since| (since, c))).min_by_key(|(since, _)| *since);
        match longest {
            Some((_, conn)) => {
                metrics::counter!("callgate_connections_evicted_total").increment(1);
                tracing::debug!(peer = ?conn.peer, "at the connection cap: closing the connection idle the longest");
                conn.is_evicted.store(true, Ordering::Relaxed);
                conn.waker.wake();
                true
            }
            None => false,
        }
    }
}

/// What the accept loop and hyper's timer share about one connection.
#[derive(Debug, Default)]
struct Connection {
    id: u64,
    peer: Option<SocketAddr>,
    /// Reads that brought bytes, ever. Written in the connection's one task; read there and,
    /// for eviction, by the accept loop, where a stale value only misjudges one candidate.
    reads: AtomicU64,
    /// While hyper waits for a request head: when the wait began (ns since [`epoch`], plus 1),
    /// and the reads at that time. 0 while a request is being served.
    waiting_since: AtomicU64,
    reads_at_wait: AtomicU64,
    /// Set by the accept loop to close this connection, if it is still idle.
    is_evicted: AtomicBool,
    waker: AtomicWaker,
}

impl Connection {
    /// When this connection became idle (waiting for a request that has not begun).
    fn idle_since(&self) -> Option<u64> {
        let since = self.waiting_since.load(Ordering::Relaxed);
        (since != 0 && self.reads.load(Ordering::Relaxed) == self.reads_at_wait.load(Ordering::Relaxed))
            .then_some(since)
    }
}

/// The instant idle times are counted from.
fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

// Why a timer of our own. hyper's (1.12) HTTP/1 server starts its header read timeout as soon as it
// waits for a request head: when a connection opens, and again the moment it has answered a
// request (proto/h1/conn.rs `poll_read_head`, armed by `State::idle`), and drops it once the
// head is read. So a kept-alive connection that sits idle for the read timeout is closed, and
// a client that pools idle connections longer (Go: 90 s; OpenIM ≥ 3.7: forever) may send a
// callback down one just as it closes. hyper has no separate idle timeout, and only hyper
// knows when a head is awaited, so the two timeouts are told apart where hyper asks for its
// one: the `Timer` of each connection. hyper's HTTP/1 server uses its timer for the header
// read timeout alone (`header_read_timeout` requires it), so every sleep it asks for is "the
// wait for the next head". [`HeadWait`] waits `idle_timeout` (by default, forever) while no
// byte has come, and `read_timeout` from the first byte (counted by [`CountedReads`]) on; it
// also ends when the accept loop evicts the connection to make room. When it ends, hyper
// closes the connection as it does on its own header timeout. Graceful shutdown is unchanged:
// hyper closes a connection that is idle (or has never read) at once. This leans on how hyper
// uses its timer, so the tests in tests/hardening.rs pin each half (an idle connection outlives
// every timeout; a started head is cut at the read timeout; at the cap the longest idle
// connection goes) against a hyper upgrade.

/// The per-connection timer hyper arms while it waits for a request head.
#[derive(Debug)]
struct HeadTimer {
    conn: Arc<Connection>,
    read_timeout: Duration,
    idle_timeout: Option<Duration>,
}

impl hyper::rt::Timer for HeadTimer {
    // hyper's deadline is its wait start plus `read_timeout`; [`HeadWait`] keeps its own.
    fn sleep_until(&self, _deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        let reads = self.conn.reads.load(Ordering::Relaxed);
        self.conn.reads_at_wait.store(reads, Ordering::Relaxed);
        let since = u64::try_from(epoch().elapsed().as_nanos()).unwrap_or(u64::MAX - 1) + 1;
        self.conn.waiting_since.store(since, Ordering::Relaxed);
        Box::pin(HeadWait {
            conn: self.conn.clone(),
            since,
            reads_at_start: reads,
            read_timeout: self.read_timeout,
            is_receiving: false,
            sleep: self.idle_timeout.map(|idle| Box::pin(tokio::time::sleep(idle))),
        })
    }

    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep_until(Instant::now() + duration)
    }
}

/// One wait for a request head: idle until a byte arrives (for `idle_timeout`, or until
/// evicted), then the read timeout.
///
/// A head already part-buffered when the wait starts (pipelined behind the last request)
/// counts as idle until more of it comes; that holds a connection no longer than a client
/// that simply stays idle can.
struct HeadWait {
    conn: Arc<Connection>,
    /// This wait's `waiting_since`.
    since: u64,
    reads_at_start: u64,
    read_timeout: Duration,
    is_receiving: bool,
    /// `None` while idle with no idle timeout.
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Future for HeadWait {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // hyper polls this after each read that leaves the head incomplete, so a first byte
        // is seen here as it arrives.
        if !self.is_receiving && self.conn.reads.load(Ordering::Relaxed) != self.reads_at_start {
            self.is_receiving = true;
            // Too late to evict: a request has begun.
            self.conn.is_evicted.store(false, Ordering::Relaxed);
            self.sleep = Some(Box::pin(tokio::time::sleep(self.read_timeout)));
        }
        if !self.is_receiving {
            self.conn.waker.register(cx.waker());
            if self.conn.is_evicted.load(Ordering::Relaxed) {
                return Poll::Ready(());
            }
        }
        match &mut self.sleep {
            Some(sleep) => sleep.as_mut().poll(cx),
            None => Poll::Pending,
        }
    }
}

impl Drop for HeadWait {
    fn drop(&mut self) {
        // The head has come (or the connection is closing): no longer idle, unless a newer
        // wait has begun already.
        let _ = self.conn.waiting_since.compare_exchange(self.since, 0, Ordering::Relaxed, Ordering::Relaxed);
    }
}

impl hyper::rt::Sleep for HeadWait {}

/// A TCP stream that counts the reads that brought bytes, for [`HeadWait`].
struct CountedReads {
    stream: TcpStream,
    conn: Arc<Connection>,
}

impl AsyncRead for CountedReads {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.conn.reads.fetch_add(1, Ordering::Relaxed);
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
