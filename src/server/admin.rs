//! The admin listener: health, readiness, status, reload, and the status page (`status`).
//! Bound to loopback by default.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::json;
use warp::http::StatusCode;
use warp::{Filter, Rejection, Reply};

use std::collections::HashMap;

use super::{State, status};
use crate::decision::Outcome;
use crate::protocol::{openim, tencent};
use crate::record::{self, EventFilter};

/// The admin routes.
pub fn routes(
    state: Arc<State>,
) -> impl Filter<Extract = (warp::reply::Response,), Error = std::convert::Infallible> + Clone {
    let probes = probes(state.clone());
    let token = state.admin_token.clone();
    let authorized = warp::header::optional::<String>("authorization").and_then(move |given: Option<String>| {
        let token = token.clone();
        async move {
            match (&token, given) {
                (None, _) => Ok(()),
                (Some(t), Some(g)) if is_same_token(t, &g) => Ok(()),
                _ => Err(warp::reject::custom(Unauthorized)),
            }
        }
    });
    let guarded = authorized.untuple_one().and(operator_routes(state));
    probes
        .or(guarded)
        .unify()
        .recover(|rejection: Rejection| async move {
            if rejection.find::<Unauthorized>().is_some() {
                metrics::counter!("callgate_admin_unauthorized_total").increment(1);
                let body = warp::reply::json(
                    &json!({"error": "missing or wrong bearer token; send `Authorization: Bearer <admin token>`"}),
                );
                return Ok::<_, std::convert::Infallible>(
                    warp::reply::with_status(body, StatusCode::UNAUTHORIZED).into_response(),
                );
            }
            // Every answer of the admin API is JSON, its errors too.
            let (status, error) = if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
                (StatusCode::METHOD_NOT_ALLOWED, "method not allowed here; GET / lists each endpoint with its method")
            } else if rejection.is_not_found() {
                (StatusCode::NOT_FOUND, "no such admin endpoint; GET / lists them")
            } else {
                (StatusCode::BAD_REQUEST, "bad request")
            };
            Ok(warp::reply::with_status(warp::reply::json(&json!({"error": error})), status).into_response())
        })
        .unify()
}

/// What `GET /` on the admin port lists.
const ENDPOINTS: [(&str, &str); 9] = [
    ("GET /healthz", "the process is up (no token needed)"),
    ("GET /readyz", "a policy set is loaded and callgate is not draining (no token needed)"),
    ("GET /metrics", "Prometheus metrics"),
    ("GET /v1/status", "the policy version, files, rule count and the last reload's result"),
    ("POST /v1/reload", "reload the policy directory now"),
    ("POST /v1/explain", "decide a posted callback without recording it, with the trace of rules"),
    ("GET /v1/events", "records, with the filters of `callgate events` as query parameters"),
    ("GET /v1/live", "what the status page shows: rules with their decisions, refusals, reload, health, plots"),
    ("GET /", "this list; a browser (Accept: text/html) gets the status page (no token needed: it holds no data)"),
];

#[derive(Debug)]
struct Unauthorized;
impl warp::reject::Reject for Unauthorized {}

/// Compares `Bearer <token>` in constant time.
fn is_same_token(token: &str, header: &str) -> bool {
    use subtle::ConstantTimeEq;
    let given = header.strip_prefix("Bearer ").unwrap_or("");
    bool::from(given.as_bytes().ct_eq(token.as_bytes()))
}

/// `/healthz` and `/readyz`, open to probes without a token.
fn probes(state: Arc<State>) -> impl Filter<Extract = (warp::reply::Response,), Error = Rejection> + Clone {
    let healthz =
        warp::path!("healthz").and(warp::get()).map(|| warp::reply::json(&json!({"status": "ok"})).into_response());
    // A store exists only once a set has loaded, so a running admin listener is ready — until
    // shutdown begins, when load balancers must move away while callbacks are still answered.
    let readyz = warp::path!("readyz").and(warp::get()).map(move || {
        let version = state.policies.current().version().to_string();
        if state.draining.load(std::sync::atomic::Ordering::Relaxed) {
            let body = json!({"status": "draining", "policy_version": version});
            return warp::reply::with_status(warp::reply::json(&body), StatusCode::SERVICE_UNAVAILABLE).into_response();
        }
        warp::reply::json(&json!({"status": "ready", "policy_version": version})).into_response()
    });
    // A browser gets the status page, which holds no data; any other client the index.
    let index = warp::path::end().and(warp::get()).and(warp::header::optional::<String>("accept")).map(
        |accept: Option<String>| {
            if status::wants_page(accept.as_deref()) {
                return status::page();
            }
            let endpoints: serde_json::Map<String, serde_json::Value> =
                ENDPOINTS.iter().map(|(path, what)| ((*path).to_string(), json!(what))).collect();
            warp::reply::json(&json!({"service": "callgate admin API", "endpoints": endpoints})).into_response()
        },
    );
    healthz.or(readyz).unify().or(index).unify()
}

/// Everything else, behind the token when one is set.
fn operator_routes(state: Arc<State>) -> impl Filter<Extract = (warp::reply::Response,), Error = Rejection> + Clone {
    let with_state = warp::any().map(move || state.clone());
    let metrics = warp::path!("metrics").and(warp::get()).and(with_state.clone()).map(|state: Arc<State>| {
        let mut text = state.metrics.as_ref().map(|h| h.render()).unwrap_or_default();
        // The version as an info metric: one series, replaced on reload, never left behind.
        let version = state.policies.current().version().to_string();
        text.push_str("# HELP callgate_policy_info The serving policy set.\n# TYPE callgate_policy_info gauge\n");
        text.push_str(&format!("callgate_policy_info{{version=\"{version}\"}} 1\n"));
        warp::reply::with_header(text, "content-type", "text/plain; version=0.0.4").into_response()
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
    let explain = warp::path!("v1" / "explain")
        .and(warp::post())
        .and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .and(warp::body::content_length_limit(1 << 20))
        .and(warp::body::bytes())
        .and(with_state.clone())
        .then(
            |query: String, body: bytes::Bytes, state: Arc<State>| async move { explain(&query, body, &state).await },
        );
    let live = warp::path!("v1" / "live").and(warp::get()).and(with_state.clone()).then(status::live_reply);
    let events = warp::path!("v1" / "events")
        .and(warp::get())
        .and(warp::query::<EventsQuery>())
        .and(with_state)
        .then(|q: EventsQuery, state: Arc<State>| async move { events(q, &state).await });
    metrics.or(status).unify().or(live).unify().or(reload).unify().or(events).unify().or(explain).unify()
}

/// Decides a posted OpenIM or Tencent callback without recording or counting it, and says why.
async fn explain(query: &str, body: bytes::Bytes, state: &State) -> warp::reply::Response {
    let url_command = openim::command_from_url(None, query);
    let set = state.policies.current();
    let decoded = if tencent::looks_like_tencent(url_command.as_deref(), &body) {
        tencent::decode_offline(url_command.as_deref(), body).map_err(|e| e.to_string())
    } else {
        openim::decode(url_command.as_deref(), "", body, &|key| set.reads(key)).map_err(|e| e.to_string())
    };
    let event = match decoded {
        Ok(event) => event,
        Err(err) => {
            return warp::reply::with_status(warp::reply::json(&json!({"error": err})), StatusCode::BAD_REQUEST)
                .into_response();
        }
    };
    let checks = set.cap_checks_for(&event);
    let counts = match state.caps.peek(&checks).await {
        Ok(counts) => checks.iter().map(|c| c.key.clone()).zip(counts).collect(),
        Err(err) => {
            tracing::warn!("explain: cap counts unavailable: {err}");
            HashMap::new()
        }
    };
    let (decision, trace) = set.explain(&event, &counts);
    let error = match &decision.outcome {
        Outcome::Allow | Outcome::Discard => None,
        Outcome::Deny(r) => {
            Some(json!({"code": r.code_for(event.code_family()), "message": r.message, "detail": r.detail}))
        }
    };
    warp::reply::json(&json!({
        "command": event.command,
        "decision": decision.outcome.as_str(),
        "rule": decision.rule.as_deref(),
        "error": error,
        "dry_run": decision.dry_run,
        "caps": decision.caps,
        "answer_under_dry_run": state.is_dry_run.then_some("allow"),
        "trace": trace.iter().map(|t| json!({"rule": &*t.rule, "at": t.at, "step": t.step.as_str(), "cap": t.cap.map(|(count, max)| json!({"count": count, "max": max}))})).collect::<Vec<_>>(),
        "policy_version": set.version(),
    }))
    .into_response()
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
        until: None,
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
        "warnings": set.warnings().iter().map(ToString::to_string).collect::<Vec<_>>(),
        "dry_run": state.is_dry_run,
        "last_reload": {
            "attempted_at": unix_seconds(reload.last_attempt),
            "succeeded_at": unix_seconds(reload.last_success),
            "ok": reload.last_error.is_none(),
            "error": reload.last_error,
        },
    })
}
