//! `POST /openim[/{command}][?command=…]`: OpenIM callbacks, decided by the policy set.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use warp::http::{Method, StatusCode};
use warp::{Filter, Rejection};

use super::body::{BodyError, read_limited};
use super::{Peer, access};
use super::{State, closing, json_reply};
use crate::policy::{Decision, Outcome};
use crate::protocol::openim::{self, DecodeError};
use crate::record;

/// The callback routes.
pub fn routes(state: Arc<State>) -> impl Filter<Extract = (warp::reply::Response,), Error = Rejection> + Clone {
    let query = warp::query::raw().or(warp::any().map(String::new)).unify();
    warp::path("openim")
        .and(warp::path::tail())
        .and(warp::method())
        .and(query)
        .and(warp::header::optional::<String>("operationid"))
        .and(warp::header::optional::<u64>("content-length"))
        .and(warp::ext::optional::<Peer>())
        .and(warp::body::stream())
        .and(warp::any().map(move || state.clone()))
        .then(
            |tail: warp::path::Tail,
             method: Method,
             query: String,
             operation_id: Option<String>,
             len: Option<u64>,
             peer: Option<Peer>,
             body,
             state: Arc<State>| async move {
                if !access::is_source_allowed(&state.allow_sources, peer) {
                    access::note_forbidden("openim", "source", peer);
                    return error_reply(StatusCode::FORBIDDEN, 1012, "forbidden");
                }
                let Some(path_command) = access::strip_path_token(state.openim_path_token.as_deref(), tail.as_str())
                else {
                    access::note_forbidden("openim", "path_token", peer);
                    return error_reply(StatusCode::FORBIDDEN, 1012, "forbidden");
                };
                if method != Method::POST {
                    let mut reply = error_reply(StatusCode::METHOD_NOT_ALLOWED, 1009, "callbacks must be POSTed");
                    reply.headers_mut().insert(warp::http::header::ALLOW, warp::http::HeaderValue::from_static("POST"));
                    return reply;
                }
                let Ok(_working) = state.busy.try_acquire() else {
                    metrics::counter!("callgate_busy_total", "source" => "openim").increment(1);
                    return error_reply(
                        StatusCode::SERVICE_UNAVAILABLE,
                        1013,
                        "callgate is busy; too many callbacks at once",
                    );
                };
                let raw = match read_limited(len, body, state.max_body_bytes, state.read_timeout).await {
                    Ok(raw) => raw,
                    Err(BodyError::TooLarge) => {
                        return bad_request(&DecodeError::TooLarge { limit: state.max_body_bytes });
                    }
                    Err(BodyError::Read(e)) => return bad_request(&DecodeError::BodyRead(e)),
                    Err(BodyError::Timeout) => return bad_request(&DecodeError::BodyTimeout),
                };
                handle(&state, path_command, &query, operation_id.as_deref().unwrap_or(""), raw).await
            },
        )
}

/// Decode, decide, (record), reply.
async fn handle(
    state: &State,
    path_command: &str,
    query: &str,
    operation_id: &str,
    raw: Bytes,
) -> warp::reply::Response {
    let started = Instant::now();
    let url_command = openim::command_from_url(Some(path_command), query);
    let event = match openim::decode(url_command.as_deref(), operation_id, raw) {
        Ok(event) => event,
        Err(err) => return bad_request(&err),
    };
    let set = state.policies.current();
    let decision = set.decide_with_caps(&event, &state.caps, state.on_error).await;
    let latency = started.elapsed();
    if let Some(recorder) = &state.recorder {
        recorder.record(record::openim_line(&event, &decision, state.is_dry_run, set.version(), latency)).await;
    }
    observe(&event.command, &decision, state.is_dry_run, latency);
    let answer = if state.is_dry_run { &Outcome::Allow } else { &decision.outcome };
    json_reply(StatusCode::OK, openim::encode(answer))
}

/// Metrics and logs of one decision. Labels stay bounded: commands OpenIM does not define
/// count as `other`, and rule ids come from the policy set.
fn observe(command: &str, decision: &Decision, is_dry_run: bool, latency: std::time::Duration) {
    let rule = decision.rule.as_deref().unwrap_or("(default)");
    let outcome = match (&decision.outcome, is_dry_run) {
        (Outcome::Deny(_), true) => "would_deny",
        (outcome, _) => outcome.as_str(),
    };
    let command_label = openim::command_label(command);
    metrics::counter!("callgate_decisions_total", "command" => command_label, "rule" => rule.to_string(), "outcome" => outcome)
        .increment(1);
    metrics::histogram!("callgate_decision_seconds").record(latency.as_secs_f64());
    for hit in &decision.dry_run {
        metrics::counter!("callgate_dry_run_hits_total", "rule" => hit.rule.to_string(), "would" => hit.outcome.as_str())
            .increment(1);
        // Records and the metric carry every hit; a log line each would flood the log.
        tracing::debug!(command, rule = %hit.rule, would = hit.outcome.as_str(), "dry-run rule held");
    }
    if outcome == "would_deny" {
        tracing::debug!(command, rule, "dry run: would deny");
    }
}

fn bad_request(err: &DecodeError) -> warp::reply::Response {
    metrics::counter!("callgate_bad_requests_total", "source" => "openim", "reason" => err.kind()).increment(1);
    tracing::warn!(reason = err.kind(), "bad OpenIM callback: {err}");
    let reply = json_reply(StatusCode::BAD_REQUEST, openim::encode_bad_request(err));
    match err {
        DecodeError::TooLarge { .. } | DecodeError::BodyRead(_) | DecodeError::BodyTimeout => closing(reply),
        _ => reply,
    }
}

/// An error answered before the body was read (forbidden, wrong method, busy, no route).
fn error_reply(status: StatusCode, code: i32, message: &str) -> warp::reply::Response {
    closing(json_reply(status, openim::encode_error(code, message)))
}

/// Turns warp's own rejections (no route matched) into answers in OpenIM's format.
pub async fn recover(rejection: Rejection) -> Result<warp::reply::Response, Infallible> {
    if rejection.is_not_found() {
        return Ok(error_reply(
            StatusCode::NOT_FOUND,
            1010,
            "no such endpoint: OpenIM callbacks go to /openim/{command}",
        ));
    }
    tracing::warn!("request refused: {rejection:?}");
    Ok(error_reply(StatusCode::BAD_REQUEST, 1011, "bad request"))
}
