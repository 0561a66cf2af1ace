//! The admin listener: health, readiness, status and reload. Bound to loopback by default.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::json;
use warp::http::StatusCode;
use warp::{Filter, Rejection, Reply};

use super::State;

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
    let reload = warp::path!("v1" / "reload").and(warp::post()).and(with_state).then(|state: Arc<State>| async move {
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
            Err(_) => warp::reply::with_status("reload task failed", StatusCode::INTERNAL_SERVER_ERROR).into_response(),
        }
    });
    healthz.or(readyz).unify().or(status).unify().or(reload).unify()
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
