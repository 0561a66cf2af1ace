//! `POST /tencent`: Tencent Cloud Chat callbacks, verified, recorded durably, then acknowledged.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use warp::http::{Method, StatusCode};
use warp::{Filter, Rejection};

use super::body::read_limited;
use super::{Peer, State, access, closing, json_reply};
use crate::protocol::tencent::{self, TencentError};
use crate::record;

/// The Tencent callback route.
pub fn routes(state: Arc<State>) -> impl Filter<Extract = (warp::reply::Response,), Error = Rejection> + Clone {
    let query = warp::query::raw().or(warp::any().map(String::new)).unify();
    warp::path!("tencent")
        .and(warp::method())
        .and(query)
        .and(warp::header::optional::<u64>("content-length"))
        .and(warp::ext::optional::<Peer>())
        .and(warp::body::stream())
        .and(warp::any().map(move || state.clone()))
        .then(
            |method: Method, query: String, len: Option<u64>, peer: Option<Peer>, body, state: Arc<State>| async move {
                let started = Instant::now();
                if !access::is_source_allowed(&state.allow_sources, peer) {
                    access::note_forbidden("tencent", "source", peer);
                    return closing(json_reply(StatusCode::FORBIDDEN, tencent::encode_fail("forbidden")));
                }
                if method != Method::POST {
                    let mut reply = closing(json_reply(
                        StatusCode::METHOD_NOT_ALLOWED,
                        tencent::encode_fail("callbacks must be POSTed"),
                    ));
                    reply.headers_mut().insert(warp::http::header::ALLOW, warp::http::HeaderValue::from_static("POST"));
                    return reply;
                }
                let Ok(_working) = state.busy.try_acquire() else {
                    metrics::counter!("callgate_busy_total", "source" => "tencent").increment(1);
                    return closing(json_reply(
                        StatusCode::SERVICE_UNAVAILABLE,
                        tencent::encode_fail("callgate is busy; retry"),
                    ));
                };
                let body = match read_limited(len, body, &state.body_limits).await {
                    Ok(body) => body,
                    Err(err) => return fail(&TencentError::Body(err)),
                };
                // The body's room in the in-flight budget is held until the answer.
                handle(&state, &query, body.bytes, started).await
            },
        )
}

/// Decode and verify, record (durably), acknowledge.
async fn handle(state: &State, query: &str, raw: Bytes, started: Instant) -> warp::reply::Response {
    let (event, meta) = match tencent::decode(&state.tencent, query, raw, SystemTime::now()) {
        Ok(decoded) => decoded,
        Err(err) => return fail(&err),
    };
    if let Some(recorder) = &state.recorder {
        let line = record::tencent_line(&event, &meta, started.elapsed());
        if let Err(err) = recorder.record_durable(line).await {
            // Not acknowledged: Tencent must not believe an unrecorded event was kept.
            tracing::error!(command = %event.command, "Tencent callback not acknowledged: {err}");
            metrics::counter!("callgate_tencent_unrecorded_total").increment(1);
            return json_reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                tencent::encode_fail(&format!("cannot record the callback: {err}")),
            );
        }
    }
    metrics::counter!("callgate_tencent_callbacks_total").increment(1);
    state.live.acked(&event.command);
    json_reply(StatusCode::OK, Bytes::from_static(tencent::OK))
}

fn fail(err: &TencentError) -> warp::reply::Response {
    metrics::counter!("callgate_bad_requests_total", "source" => "tencent", "reason" => err.kind()).increment(1);
    crate::throttle::warn("refused Tencent callbacks", err.kind(), || format!("Tencent callback refused: {err}"));
    let status = StatusCode::from_u16(err.status()).unwrap_or(StatusCode::BAD_REQUEST);
    let reply = json_reply(status, tencent::encode_fail(&err.to_string()));
    match err {
        TencentError::Body(err) if err.leaves_body_unread() => closing(reply),
        _ => reply,
    }
}
