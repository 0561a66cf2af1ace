//! `POST /openim[/{command}][?command=…]`: OpenIM callbacks, decided by the policy set.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use hyper::body::Incoming;
use warp::http::request::Parts;
use warp::http::{HeaderName, HeaderValue, Method, StatusCode};

use super::body::read_limited;
use super::{Peer, access, observe};
use super::{State, closing, json_reply};
use crate::decision::Outcome;
use crate::protocol::BodyError;
use crate::protocol::openim::{self, DecodeError, OpenImVersion};
use crate::record;

/// OpenIM's `operationID` header, as a name already parsed (looking one up by text parses it
/// on every request).
static OPERATION_ID: HeaderName = HeaderName::from_static("operationid");

/// Serves one request to `/openim[/…]`; `tail` is the path after `/openim/`.
pub async fn serve(state: Arc<State>, peer: Peer, parts: &Parts, tail: &str, body: Incoming) -> warp::reply::Response {
    if !access::is_source_allowed(&state.allow_sources, peer) {
        access::note_forbidden("openim", "source", peer);
        return error_reply(StatusCode::FORBIDDEN, "forbidden", "forbidden");
    }
    let Some(path_command) = access::strip_path_token(state.openim_path_token.as_deref(), tail) else {
        access::note_forbidden("openim", "path_token", peer);
        return error_reply(StatusCode::FORBIDDEN, "forbidden", "forbidden");
    };
    if parts.method != Method::POST {
        let mut reply = error_reply(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "callbacks must be POSTed");
        reply.headers_mut().insert(warp::http::header::ALLOW, HeaderValue::from_static("POST"));
        return reply;
    }
    let Ok(_working) = state.busy.try_acquire() else {
        metrics::counter!("callgate_busy_total", "source" => "openim").increment(1);
        return error_reply(StatusCode::SERVICE_UNAVAILABLE, "busy", "callgate is busy; too many callbacks at once");
    };
    let query = parts.uri.query().unwrap_or("");
    let version = state.openim_version.unwrap_or_else(|| {
        OpenImVersion::from_url_form(!path_command.trim_matches('/').is_empty(), openim::has_query_command(query))
    });
    let body = match read_limited(body, &state.body_limits).await {
        Ok(body) => body,
        Err(err) => return bad_request(&DecodeError::Body(err), version, state.is_dry_run),
    };
    // Taken as bytes: an operationID that is not visible ASCII is still a callback to decide.
    let operation_id = parts.headers.get(&OPERATION_ID).map(|v| String::from_utf8_lossy(v.as_bytes()));
    // The body's room in the in-flight budget is held until the answer.
    handle(&state, path_command, query, operation_id.as_deref().unwrap_or(""), body.bytes, version).await
}

/// Decode, decide, (record), reply.
async fn handle(
    state: &State,
    path_command: &str,
    query: &str,
    operation_id: &str,
    raw: Bytes,
    version: OpenImVersion,
) -> warp::reply::Response {
    let started = Instant::now();
    let url_command = openim::command_from_url(Some(path_command), query);
    let set = state.policies.current();
    let event = match openim::decode(url_command.as_deref(), operation_id, raw, &|key| set.reads(key)) {
        Ok(event) => event,
        Err(err) => return bad_request(&err, version, state.is_dry_run),
    };
    let decision = set.decide_with_caps(&event, &state.caps, &state.lists, state.on_error).await;
    let latency = started.elapsed();
    if let Some(recorder) = &state.recorder {
        recorder.record(record::decided_line(&event, None, &decision, state.is_dry_run, set.version(), latency)).await;
    }
    observe::decision(&state.live, &event, &decision, state.is_dry_run, latency);
    let answer = if state.is_dry_run { &Outcome::Allow } else { &decision.outcome };
    json_reply(StatusCode::OK, openim::encode(answer, version))
}

/// The answer to a request that could not be decoded: "go on" (there is nothing to decide),
/// but for a body over the size limit, which is refused: padding a message must not let it
/// past the rules. Under `--dry-run`, which refuses nothing, that too is "go on".
fn bad_request(err: &DecodeError, version: OpenImVersion, is_dry_run: bool) -> warp::reply::Response {
    metrics::counter!("callgate_bad_requests_total", "source" => "openim", "reason" => err.kind()).increment(1);
    crate::throttle::warn("bad OpenIM callbacks", err.kind(), || format!("bad OpenIM callback: {err}"));
    let reply = match err {
        DecodeError::Body(BodyError::TooLarge { limit, .. }) if !is_dry_run => {
            json_reply(StatusCode::PAYLOAD_TOO_LARGE, openim::encode_too_large(*limit, version))
        }
        DecodeError::Body(BodyError::TooLarge { .. }) => {
            json_reply(StatusCode::PAYLOAD_TOO_LARGE, openim::encode_bad_request(err))
        }
        _ => json_reply(StatusCode::BAD_REQUEST, openim::encode_bad_request(err)),
    };
    match err {
        DecodeError::Body(err) if err.leaves_body_unread() => closing(reply),
        _ => reply,
    }
}

/// An error answered before the body was read (forbidden, wrong method, busy, no route):
/// "go on", as any answer that decides nothing.
pub(super) fn error_reply(status: StatusCode, reason: &str, message: &str) -> warp::reply::Response {
    closing(json_reply(status, openim::encode_error(reason, message)))
}
