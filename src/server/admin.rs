//! The admin listener: health, readiness, status and reload. Bound to loopback by default.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::json;
use warp::http::StatusCode;
use warp::{Filter, Rejection, Reply};

use super::State;
use crate::record::{self, EventFilter};

/// The admin routes.
pub fn routes(state: Arc<State>) -> impl Filter<Extract = (warp::reply::Response,), Error = Rejection> + Clone {
    let with_state = warp::any().map(move || state.clone());
    let healthz =
        warp::path!("healthz").and(warp::get()).map(|| warp::reply::json(&json!({"status": "ok"})).into_response());
    // A store exists only once a set has loaded, so a running admin listener is ready.
    let readyz = warp::path!("readyz").and(warp::get()).and(with_state.clone()).map(|state: Arc<State>| {
        warp::reply::json(&json!({"status": "ready", "policy_version": state.policies.current().version()}))
            .into_response()
    });
    let status = warp::path!("v1" / "status")
        .and(warp::get())
        .and(with_state.clone())
        .map(|state: Arc<State>| warp::reply::json(&status_json(&state)).into_response());
    let reload =
        warp::path!("v1" / "reload").and(warp::post()).and(with_state.clone()).then(|state: Arc<State>| async move {
            let store = state.policies.clone();
            let result = tokio::task::spawn_blocking(move || store.reload()).await;
            match result {
                Ok(Ok(outcome)) => warp::reply::json(
                    &json!({"result": format!("{outcome:?}").to_lowercase(), "status": status_json(&state)}),
                )
                .into_response(),
                Ok(Err(errors)) => {
                    let errors: Vec<String> = errors.0.iter().map(ToString::to_string).collect();
                    warp::reply::with_status(
                        warp::reply::json(&json!({"result": "error", "errors": errors, "status": status_json(&state)})),
                        StatusCode::UNPROCESSABLE_ENTITY,
                    )
                    .into_response()
                }
                Err(_) => {
                    warp::reply::with_status("reload task failed", StatusCode::INTERNAL_SERVER_ERROR).into_response()
                }
            }
        });
    let events = warp::path!("v1" / "events")
        .and(warp::get())
        .and(warp::query::<EventsQuery>())
        .and(with_state)
        .then(|q: EventsQuery, state: Arc<State>| async move { events(q, &state).await });
    healthz.or(readyz).unify().or(status).unify().or(reload).unify().or(events).unify()
}

/// The filters of `GET /v1/events`, as for `callgate events`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    since: Option<String>,
    user: Option<String>,
    command: Option<String>,
    decision: Option<String>,
    source: Option<String>,
    /// Default 1000; 0 means no limit.
    limit: Option<usize>,
}

/// The records matching the filters: `{"events":[…]}`, oldest first.
async fn events(q: EventsQuery, state: &State) -> warp::reply::Response {
    let bad = |message: String| {
        warp::reply::with_status(warp::reply::json(&json!({"error": message})), StatusCode::BAD_REQUEST).into_response()
    };
    let since = match q.since.as_deref().map(crate::duration::parse).transpose() {
        Ok(since) => since,
        Err(message) => return bad(format!("since: {message}")),
    };
    let filter = EventFilter {
        since,
        user: q.user,
        command: q.command,
        decision: q.decision,
        source: q.source,
        limit: q.limit.unwrap_or(1000),
    };
    if let Err(e) = filter.validate() {
        return bad(e.to_string());
    }
    let dir = state.data_dir.clone();
    match tokio::task::spawn_blocking(move || record::query(&dir, &filter)).await {
        Ok(Ok(lines)) => {
            // Each line is already a JSON object; join them without parsing again.
            let mut body = String::from("{\"events\":[");
            body.push_str(&lines.join(","));
            body.push_str("]}");
            super::json_reply(StatusCode::OK, body.into())
        }
        Ok(Err(e)) => warp::reply::with_status(
            warp::reply::json(&json!({"error": e.to_string()})),
            StatusCode::INTERNAL_SERVER_ERROR,
        )
        .into_response(),
        Err(_) => warp::reply::with_status("query task failed", StatusCode::INTERNAL_SERVER_ERROR).into_response(),
    }
}

fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

fn status_json(state: &State) -> serde_json::Value {
    let set = state.policies.current();
    let reload = state.policies.status();
    json!({
        "policy_version": set.version(),
        "policy_dir": state.policies.dir(),
        "files": set.files(),
        "rules": set.rule_count(),
        "dry_run": state.is_dry_run,
        "last_reload": {
            "attempted_at": unix_seconds(reload.last_attempt),
            "succeeded_at": unix_seconds(reload.last_success),
            "ok": reload.last_error.is_none(),
            "error": reload.last_error,
        },
    })
}
