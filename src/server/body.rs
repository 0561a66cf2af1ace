//! Reading a request body with a size limit, whether or not the client sent Content-Length,
//! within a budget of body bytes held by all requests together.

use std::future::Future;
use std::task::Poll;

use bytes::{Bytes, BytesMut};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::protocol::BodyError;

/// The limits a body is read within.
#[derive(Debug)]
pub struct BodyLimits {
    /// The largest body, in bytes.
    pub max_bytes: usize,
    /// How long the whole body may take to arrive (room in the budget included).
    pub timeout: std::time::Duration,
    /// Body bytes that all requests may hold at once, as semaphore permits: one per byte.
    pub in_flight: std::sync::Arc<Semaphore>,
}

/// A body, and its share of the in-flight budget, given back when both are dropped.
pub struct Body {
    pub bytes: Bytes,
    _room: Option<OwnedSemaphorePermit>,
}

/// Reads the whole body within the timeout, taking its bytes from the in-flight budget first,
/// so that many large bodies at once wait for room instead of growing memory without bound.
/// The length declared (Content-Length) is taken as hyper knows it, from the body's size
/// hint. A body over the limit is read on to its end (within the same timeout) and dropped
/// as it comes, so that a client still sending it reads the refusal rather than a reset
/// connection; it is [`BodyError::TooLarge`] either way.
pub async fn read_limited<B>(mut body: B, limits: &BodyLimits) -> Result<Body, BodyError>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let deadline = tokio::time::Instant::now() + limits.timeout;
    let read = {
        let mut reading = std::pin::pin!(read(&mut body, limits));
        // Most bodies came with their head: one read, no timer armed (arming and dropping a
        // timer cost about 1,000 of a callback's 36,000 instructions; issue 19). The rest wait
        // within the timeout.
        match std::future::poll_fn(|cx| Poll::Ready(reading.as_mut().poll(cx))).await {
            Poll::Ready(read) => Some(read),
            Poll::Pending => tokio::time::timeout_at(deadline, reading).await.ok(),
        }
    };
    match read {
        Some(Err(BodyError::TooLarge { limit, .. })) => {
            let is_drained = tokio::time::timeout_at(deadline, drain(&mut body)).await.unwrap_or(false);
            Err(BodyError::TooLarge { limit, is_drained })
        }
        Some(read) => read,
        None => Err(BodyError::Timeout),
    }
}

async fn read<B>(body: &mut B, limits: &BodyLimits) -> Result<Body, BodyError>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let limit = limits.max_bytes;
    let too_large = BodyError::TooLarge { limit, is_drained: false };
    let declared_len = body.size_hint().exact();
    if declared_len.is_some_and(|n| n > limit as u64) {
        return Err(too_large);
    }
    let declared = declared_len.map_or(0, |n| n as usize);
    let mut room = Room::default();
    room.grow_to(&limits.in_flight, declared).await?;
    let mut collected = Collected::Empty;
    while let Some(data) = next_data(body).await {
        let data = data?;
        let len = collected.len() + data.len();
        if len > limit {
            return Err(too_large);
        }
        // No length was declared, or more came than it said.
        room.grow_to(&limits.in_flight, len).await?;
        collected.push(data, declared);
    }
    Ok(Body { bytes: collected.into_bytes(), _room: room.permit })
}

/// The next data of `body` (trailers are passed over), or `None` at its end.
async fn next_data<B>(body: &mut B) -> Option<Result<Bytes, BodyError>>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    loop {
        match std::future::poll_fn(|cx| std::pin::Pin::new(&mut *body).poll_frame(cx)).await? {
            Err(e) => return Some(Err(BodyError::Read(e.to_string()))),
            Ok(frame) => {
                if let Ok(data) = frame.into_data() {
                    return Some(Ok(data));
                }
            }
        }
    }
}

/// A body as it arrives. Most arrive in one piece, which is kept as it came, uncopied.
enum Collected {
    Empty,
    One(Bytes),
    Many(BytesMut),
}

impl Collected {
    fn len(&self) -> usize {
        match self {
            Collected::Empty => 0,
            Collected::One(bytes) => bytes.len(),
            Collected::Many(bytes) => bytes.len(),
        }
    }

    /// Appends `data`; `declared` is the length the whole is expected to have.
    fn push(&mut self, data: Bytes, declared: usize) {
        *self = match std::mem::replace(self, Collected::Empty) {
            Collected::Empty => Collected::One(data),
            Collected::One(first) => {
                let mut all = BytesMut::with_capacity(declared.max(first.len() + data.len()));
                all.extend_from_slice(&first);
                all.extend_from_slice(&data);
                Collected::Many(all)
            }
            Collected::Many(mut all) => {
                all.extend_from_slice(&data);
                Collected::Many(all)
            }
        }
    }

    fn into_bytes(self) -> Bytes {
        match self {
            Collected::Empty => Bytes::new(),
            Collected::One(bytes) => bytes,
            Collected::Many(bytes) => bytes.freeze(),
        }
    }
}

/// The in-flight bytes one body holds.
#[derive(Default)]
struct Room {
    bytes: usize,
    permit: Option<OwnedSemaphorePermit>,
}

impl Room {
    /// Waits until the budget has room for `bytes` in all.
    async fn grow_to(&mut self, budget: &std::sync::Arc<Semaphore>, bytes: usize) -> Result<(), BodyError> {
        if bytes <= self.bytes {
            return Ok(());
        }
        // The limit keeps a body far below u32::MAX bytes.
        let more =
            u32::try_from(bytes - self.bytes).map_err(|_| BodyError::TooLarge { limit: bytes, is_drained: false })?;
        let permit =
            budget.clone().acquire_many_owned(more).await.map_err(|_| BodyError::Read("server stopping".into()))?;
        match &mut self.permit {
            Some(held) => held.merge(permit),
            None => self.permit = Some(permit),
        }
        self.bytes = bytes;
        Ok(())
    }
}

/// Reads and drops the rest of a body; whether it reached its end.
async fn drain<B>(body: &mut B) -> bool
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    while let Some(data) = next_data(body).await {
        if data.is_err() {
            return false;
        }
    }
    true
}
