//! Reading a request body with a size limit, whether or not the client sent Content-Length,
//! within a budget of body bytes held by all requests together.

use bytes::{Buf, Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
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

/// Reads the whole body within the timeout into one buffer (the only copy held), taking its
/// bytes from the in-flight budget first, so that many large bodies at once wait for room
/// instead of growing memory without bound. A body over the limit is read on to its end
/// (within the same timeout) and dropped as it comes, so that a client still sending it reads
/// the refusal rather than a reset connection; it is [`BodyError::TooLarge`] either way.
pub async fn read_limited<S, B>(declared_len: Option<u64>, stream: S, limits: &BodyLimits) -> Result<Body, BodyError>
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    let deadline = tokio::time::Instant::now() + limits.timeout;
    let mut stream = std::pin::pin!(stream);
    match tokio::time::timeout_at(deadline, read(declared_len, stream.as_mut(), limits)).await {
        Ok(Err(BodyError::TooLarge { limit, .. })) => {
            let is_drained = tokio::time::timeout_at(deadline, drain(stream)).await.unwrap_or(false);
            Err(BodyError::TooLarge { limit, is_drained })
        }
        Ok(read) => read,
        Err(_elapsed) => Err(BodyError::Timeout),
    }
}

async fn read<S, B>(
    declared_len: Option<u64>,
    mut stream: std::pin::Pin<&mut S>,
    limits: &BodyLimits,
) -> Result<Body, BodyError>
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    let limit = limits.max_bytes;
    let too_large = BodyError::TooLarge { limit, is_drained: false };
    if declared_len.is_some_and(|n| n > limit as u64) {
        return Err(too_large);
    }
    let declared = declared_len.map_or(0, |n| n as usize);
    let mut room = Room::default();
    room.grow_to(&limits.in_flight, declared).await?;
    let mut body = BytesMut::with_capacity(declared);
    while let Some(chunk) = stream.next().await {
        let mut chunk = chunk.map_err(|e| BodyError::Read(e.to_string()))?;
        let len = body.len() + chunk.remaining();
        if len > limit {
            return Err(too_large);
        }
        // No length was declared, or more came than it said.
        room.grow_to(&limits.in_flight, len).await?;
        while chunk.has_remaining() {
            let part = chunk.chunk();
            let n = part.len();
            body.extend_from_slice(part);
            chunk.advance(n);
        }
    }
    Ok(Body { bytes: body.freeze(), _room: room.permit })
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
async fn drain<S, B>(mut stream: std::pin::Pin<&mut S>) -> bool
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    while let Some(chunk) = stream.next().await {
        if chunk.is_err() {
            return false;
        }
    }
    true
}
