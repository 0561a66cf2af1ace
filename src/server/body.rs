//! Reading a request body with a size limit, whether or not the client sent Content-Length.

use bytes::{Buf, Bytes, BytesMut};
use futures_util::{Stream, StreamExt};

use crate::protocol::BodyError;

/// Reads the whole body within `timeout`, refusing it as soon as it is known to exceed
/// `limit` bytes, so a slow or endless body cannot hold a request.
pub async fn read_limited<S, B>(
    declared_len: Option<u64>,
    stream: S,
    limit: usize,
    timeout: std::time::Duration,
) -> Result<Bytes, BodyError>
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    let read = read(declared_len, stream, limit);
    tokio::time::timeout(timeout, read).await.unwrap_or(Err(BodyError::Timeout))
}

async fn read<S, B>(declared_len: Option<u64>, stream: S, limit: usize) -> Result<Bytes, BodyError>
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    if declared_len.is_some_and(|n| n > limit as u64) {
        return Err(BodyError::TooLarge { limit });
    }
    let capacity = declared_len.map_or(0, |n| n as usize);
    let mut body = BytesMut::with_capacity(capacity);
    let mut stream = std::pin::pin!(stream);
    while let Some(chunk) = stream.next().await {
        let mut chunk = chunk.map_err(|e| BodyError::Read(e.to_string()))?;
        if body.len() + chunk.remaining() > limit {
            return Err(BodyError::TooLarge { limit });
        }
        while chunk.has_remaining() {
            let part = chunk.chunk();
            let n = part.len();
            body.extend_from_slice(part);
            chunk.advance(n);
        }
    }
    Ok(body.freeze())
}
