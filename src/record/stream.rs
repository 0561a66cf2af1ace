//! Records copied to a Redis Stream, so other systems can follow them (`XREAD`, consumer
//! groups). The files stay the durable source of truth: a line reaches the stream only
//! after it was written to disk, and a stream that falls behind or is unreachable loses
//! lines from the stream only (counted and logged), never from the files.

use crate::redis_client::RedisConn;
use tokio::sync::mpsc;

/// The stream records are added to.
pub const STREAM_KEY: &str = "callgate:records";
/// The stream is trimmed to about this many entries (`XADD MAXLEN ~`).
pub const STREAM_MAX_LEN: usize = 1_000_000;
/// Lines waiting for Redis; past this they are dropped from the stream and counted.
const QUEUE: usize = 65_536;
/// The most lines sent in one pipeline.
const BATCH: usize = 512;

/// The sending side, held by the record writer.
#[derive(Debug, Clone)]
pub struct StreamSink {
    tx: mpsc::Sender<Vec<u8>>,
}

impl StreamSink {
    /// Starts the task that copies lines to Redis over `conn` (see [`crate::redis_client`]).
    /// Must be called in a runtime.
    pub fn spawn(conn: RedisConn) -> StreamSink {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(conn, rx));
        StreamSink { tx }
    }

    /// Queues a copy of a record line, without its newline, without waiting.
    pub fn send(&self, line: &super::Line) {
        let mut line = line.to_vec();
        if line.last() == Some(&b'\n') {
            line.pop();
        }
        if self.tx.try_send(line).is_err() {
            metrics::counter!("callgate_stream_records_dropped_total").increment(1);
        }
    }
}

async fn run(mut conn: RedisConn, mut rx: mpsc::Receiver<Vec<u8>>) {
    let mut batch = Vec::with_capacity(BATCH);
    let mut was_failing = false;
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        let mut pipe = redis::pipe();
        for line in &batch {
            pipe.cmd("XADD")
                .arg(STREAM_KEY)
                .arg("MAXLEN")
                .arg("~")
                .arg(STREAM_MAX_LEN)
                .arg("*")
                .arg("record")
                .arg(line)
                .ignore();
        }
        match pipe.query_async::<()>(&mut conn).await {
            Ok(()) => {
                metrics::counter!("callgate_stream_records_total").increment(batch.len() as u64);
                if was_failing {
                    tracing::info!("records reach the redis stream again");
                    was_failing = false;
                }
            }
            Err(e) => {
                metrics::counter!("callgate_stream_records_dropped_total").increment(batch.len() as u64);
                if !was_failing {
                    tracing::error!(
                        "records cannot reach the redis stream `{STREAM_KEY}` ({e}); they are still in the files"
                    );
                    was_failing = true;
                }
            }
        }
        batch.clear();
    }
}
