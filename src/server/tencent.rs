//! `POST /tencent`: Tencent Cloud Chat callbacks, verified; before-callbacks decided by the
//! policy set, every other callback recorded durably, then acknowledged.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use futures_util::StreamExt;
use hyper::body::Incoming;
use warp::http::request::Parts;
use warp::http::{Method, StatusCode};

use super::body::read_limited;
use super::{Peer, State, access, closing, json_reply, observe};
use crate::catalog::{self, Decided, TencentAnswer};
use crate::decision::{Decision, Outcome};
use crate::event::{Event, TencentMeta};
use crate::policy::PolicySet;
use crate::protocol::tencent::{self, TencentError};
use crate::record;

/// Items of one per-item callback decided at once.
const ITEMS_AT_ONCE: usize = 32;

/// Serves one request to `/tencent`.
pub async fn serve(state: Arc<State>, peer: Peer, parts: &Parts, body: Incoming) -> warp::reply::Response {
    let started = Instant::now();
    let query = tencent::Query::parse(parts.uri.query().unwrap_or(""));
    let is_before = query.names_decided_command();
    if !access::is_source_allowed(&state.allow_sources, peer) {
        access::note_forbidden("tencent", "source", peer);
        return closing(json_reply(StatusCode::FORBIDDEN, tencent::encode_fail("forbidden", is_before)));
    }
    if parts.method != Method::POST {
        let mut reply = closing(json_reply(
            StatusCode::METHOD_NOT_ALLOWED,
            tencent::encode_fail("callbacks must be POSTed", is_before),
        ));
        reply.headers_mut().insert(warp::http::header::ALLOW, warp::http::HeaderValue::from_static("POST"));
        return reply;
    }
    let Ok(_working) = state.busy.try_acquire() else {
        metrics::counter!("callgate_busy_total", "source" => "tencent").increment(1);
        return closing(json_reply(
            StatusCode::SERVICE_UNAVAILABLE,
            tencent::encode_fail("callgate is busy; retry", is_before),
        ));
    };
    let body = match read_limited(body, &state.body_limits).await {
        Ok(body) => body,
        Err(err) => return fail(&TencentError::Body(err), is_before),
    };
    // The body's room in the in-flight budget is held until the answer.
    handle(&state, &query, body.bytes, started, is_before).await
}

/// Decode and verify; then decide a before-callback, or record (durably) and acknowledge
/// a report of what happened.
async fn handle(
    state: &State,
    query: &tencent::Query<'_>,
    raw: Bytes,
    started: Instant,
    is_before: bool,
) -> warp::reply::Response {
    let set = state.policies.current();
    let (event, meta) = match tencent::decode(&state.tencent, query, raw, SystemTime::now(), &|key| set.reads(key)) {
        Ok(decoded) => decoded,
        Err(err) => return fail(&err, is_before),
    };
    match catalog::tencent_decided(&event.command) {
        Some(decided) => decide(state, &set, &event, &meta, decided, started).await,
        None => acknowledge(state, &event, &meta, started).await,
    }
}

/// Decides a before-callback, as a whole or item by item, records the decision (without
/// waiting for fsync: Tencent gives a callback 2 s, and it sits on the message path) and
/// answers it.
async fn decide(
    state: &State,
    set: &PolicySet,
    event: &Event,
    meta: &TencentMeta,
    decided: &Decided,
    started: Instant,
) -> warp::reply::Response {
    let answer = match decided.answer {
        TencentAnswer::Whole | TencentAnswer::Message => {
            let decision = set.decide_with_caps(event, &state.caps, &state.lists, state.on_error).await;
            let latency = started.elapsed();
            if let Some(recorder) = &state.recorder {
                let line = record::decided_line(event, Some(meta), &decision, state.is_dry_run, set.version(), latency);
                recorder.record(line).await;
            }
            observe::decision(&state.live, event, &decision, state.is_dry_run, latency);
            let answered = if state.is_dry_run { &Outcome::Allow } else { &decision.outcome };
            tencent::encode_decision(answered, decided.family)
        }
        TencentAnswer::ResultItems { list, account } | TencentAnswer::RefusedAccounts { list, account, .. } => {
            let items = match tencent::items(event, list, account) {
                Ok(items) => items,
                Err(err) => return fail(&err, true),
            };
            // Each item is its own decision, so they are decided concurrently: a Redis round
            // trip each, at once, not one after another. Caps stay exact (each check is atomic
            // in its store), but items competing for a cap's last room may not get it in list
            // order. At most ITEMS_AT_ONCE at a time, as each holds a copy of the body's fields.
            let pending: Vec<_> = items
                .into_iter()
                .map(|(id, item)| async move {
                    let item_event = event.item(list, item);
                    (id, set.decide_with_caps(&item_event, &state.caps, &state.lists, state.on_error).await)
                })
                .collect();
            let decisions: Vec<(String, Decision)> =
                futures_util::stream::iter(pending).buffered(ITEMS_AT_ONCE).collect().await;
            let latency = started.elapsed();
            if let Some(recorder) = &state.recorder {
                let line = record::items_line(event, meta, &decisions, state.is_dry_run, set.version(), latency);
                recorder.record(line).await;
            }
            for (_, decision) in &decisions {
                observe::decision(&state.live, event, decision, state.is_dry_run, latency);
            }
            let answered: Vec<(String, &Outcome)> = decisions
                .iter()
                .map(|(id, d)| (id.clone(), if state.is_dry_run { &Outcome::Allow } else { &d.outcome }))
                .collect();
            tencent::encode_items(decided.answer, &answered, decided.family)
        }
    };
    metrics::counter!("callgate_tencent_callbacks_total").increment(1);
    json_reply(StatusCode::OK, answer)
}

/// Records durably, then acknowledges, a report of what happened.
async fn acknowledge(state: &State, event: &Event, meta: &TencentMeta, started: Instant) -> warp::reply::Response {
    if let Some(recorder) = &state.recorder {
        let line = record::tencent_line(event, meta, started.elapsed());
        if let Err(err) = recorder.record_durable(line).await {
            // Not acknowledged: Tencent must not believe an unrecorded event was kept.
            tracing::error!(command = %event.command, "Tencent callback not acknowledged: {err}");
            metrics::counter!("callgate_tencent_unrecorded_total").increment(1);
            return json_reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                tencent::encode_fail(&format!("cannot record the callback: {err}"), false),
            );
        }
    }
    metrics::counter!("callgate_tencent_callbacks_total").increment(1);
    state.live.acked(&event.command);
    json_reply(StatusCode::OK, Bytes::from_static(tencent::OK))
}

/// The answer to a callback that cannot be taken. On a before-callback it never refuses
/// the user's action (see [`tencent::encode_fail`]).
fn fail(err: &TencentError, is_before: bool) -> warp::reply::Response {
    metrics::counter!("callgate_bad_requests_total", "source" => "tencent", "reason" => err.kind()).increment(1);
    crate::throttle::warn("refused Tencent callbacks", err.kind(), || format!("Tencent callback refused: {err}"));
    let status = StatusCode::from_u16(err.status()).unwrap_or(StatusCode::BAD_REQUEST);
    let reply = json_reply(status, tencent::encode_fail(&err.to_string(), is_before));
    match err {
        TencentError::Body(err) if err.leaves_body_unread() => closing(reply),
        _ => reply,
    }
}
