//! A bare warp server: the baseline `bench/load.sh` compares callgate against.
//!
//! Answers `POST /openim/{anything}` with OpenIM's fixed allow body and nothing else: no
//! policy, no JSON parsing, no metrics. It reads the request body (as callgate must) and
//! runs on the same tokio multi-threaded runtime, so the difference between the two is
//! what callgate's decoding, deciding and bookkeeping cost.
//!
//! Usage: `bare_warp [ADDR] [EXTRA_NS]` (default `127.0.0.1:18081`; `127.0.0.1:0` picks a
//! free port). Prints `bare_warp listening on http://ADDR` once bound.
//!
//! `EXTRA_NS` (default 0) makes each request busy-wait that many nanoseconds of CPU before
//! answering: a stand-in for "a server that does this much more work per request". The
//! load script runs such servers beside the real ones, which shows what ratio a given
//! extra cost per request can reach on the machine at hand.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use bytes::Bytes;
use warp::Filter;
use warp::http::header;

/// The same bytes callgate answers with when it allows.
const ALLOW: &[u8] = br#"{"actionCode":0,"errCode":0,"errMsg":"","errDlt":"","nextCode":0}"#;
const DEFAULT_ADDR: &str = "127.0.0.1:18081";
/// callgate's default body limit, so both refuse the same sizes.
const MAX_BODY_BYTES: u64 = 1 << 20;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let arg = args.next();
    let text = arg.as_deref().unwrap_or(DEFAULT_ADDR);
    let addr: SocketAddr = match text.parse() {
        Ok(addr) => addr,
        Err(_) => {
            eprintln!("bare_warp: `{text}` is not an address; write IP:PORT, as in `{DEFAULT_ADDR}`");
            return ExitCode::FAILURE;
        }
    };
    let extra = match args.next().map(|n| n.parse::<u64>()) {
        None => Duration::ZERO,
        Some(Ok(ns)) => Duration::from_nanos(ns),
        Some(Err(_)) => {
            eprintln!("bare_warp: EXTRA_NS must be a whole number of nanoseconds");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bare_warp: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(serve(addr, extra))
}

async fn serve(addr: SocketAddr, extra: Duration) -> ExitCode {
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("bare_warp: cannot listen on {addr}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let bound = listener.local_addr().unwrap_or(addr);
    let routes = warp::post()
        .and(warp::path("openim"))
        .and(warp::path::tail())
        .and(warp::body::content_length_limit(MAX_BODY_BYTES))
        .and(warp::body::bytes())
        .map(move |_tail: warp::path::Tail, _body: Bytes| {
            if !extra.is_zero() {
                let started = Instant::now();
                while started.elapsed() < extra {
                    std::hint::spin_loop();
                }
            }
            let mut response = warp::reply::Response::new(Bytes::from_static(ALLOW).into());
            response.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
            response
        });
    println!("bare_warp listening on http://{bound}");
    warp::serve(routes).incoming(listener).run().await;
    ExitCode::SUCCESS
}
