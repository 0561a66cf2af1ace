//! The status page of the admin port: one self-contained HTML file (`page.html`, inline CSS
//! and JS, no external asset) served at `GET /` to browsers, and the one JSON document it
//! polls, `GET /v1/live`. The page holds no data, so it is served without the admin token;
//! `/v1/live` is behind the token like the rest of the admin API.
//!
//! The numbers come from [`Live`] (kept while callbacks are decided, in fixed memory), the
//! policy store, and — for Redis and records — the same counters `/metrics` exports, read
//! only when the page asks. Routing stays in `admin`.

mod live;

pub use live::{Counted, Live, RuleWindow};

use std::path::Path;

use serde_json::{Value, json};
use warp::Reply;
use warp::http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};

use super::State;
use crate::decision::{Decision, DryRunHit};
use crate::policy::OnCommands;
use crate::ratecap::CapStore;
use crate::record::{SEGMENT_PREFIX, SEGMENT_SUFFIX};

/// The page, as shipped.
const PAGE: &str = include_str!("page.html");

/// What the page may load and reach: nothing but itself and this origin's `/v1/live`.
const CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                   connect-src 'self'; img-src data:; form-action 'none'; frame-ancestors 'none'";

/// Whether a request's `Accept` header asks for HTML (a browser): it gets the page, others
/// the JSON index of endpoints.
pub fn wants_page(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| a.split(',').any(|part| part.trim().starts_with("text/html")))
}

/// The page.
pub fn page() -> warp::reply::Response {
    let mut response = warp::reply::html(PAGE).into_response();
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert("content-security-policy", HeaderValue::from_static(CSP));
    response
}

/// `GET /v1/live`: everything the page shows, in one document. Built off the async
/// workers: it reads the record directory and renders the metrics.
pub async fn live_reply(state: std::sync::Arc<State>) -> warp::reply::Response {
    match tokio::task::spawn_blocking(move || live_json(&state)).await {
        Ok(body) => warp::reply::json(&body).into_response(),
        Err(_) => warp::reply::with_status(
            warp::reply::json(&json!({"error": "status task failed"})),
            warp::http::StatusCode::INTERNAL_SERVER_ERROR,
        )
        .into_response(),
    }
}

/// The document of `GET /v1/live`; see docs/operations.md for its fields.
pub fn live_json(state: &State) -> Value {
    let set = state.policies.current();
    let reload = state.policies.status();
    let live = &state.live;
    let counts = |id: &str| {
        let (minute, hour) = live.rule_counts(id);
        let by = |n: [u64; 3]| json!({"allow": n[0], "deny": n[1], "would_deny": n[2]});
        (by(minute), by(hour))
    };
    let mut rules: Vec<Value> = set
        .rules()
        .iter()
        .map(|rule| {
            let (minute, hour) = counts(&rule.id);
            json!({
                "id": &*rule.id,
                "at": rule.at.to_string(),
                "on": on_names(&rule.on),
                "mode": if rule.is_dry_run { "dry_run" } else { "enforce" },
                "decision": rule.outcome.as_str(),
                "error_code": rule.outcome.error_code(),
                "minute": minute,
                "hour": hour,
            })
        })
        .collect();
    let (minute, hour) = counts("(default)");
    rules.push(json!({
        "id": "(default)", "at": null, "on": null, "mode": "enforce",
        "decision": set.default_outcome().as_str(), "error_code": set.default_outcome().error_code(),
        "minute": minute, "hour": hour,
    }));
    json!({
        "now": unix_seconds(std::time::SystemTime::now()),
        "policy": {
            "version": set.version(),
            "dir": state.policies.dir(),
            "files": set.files(),
            "dry_run": state.is_dry_run,
            "warnings": set.warnings().iter().map(ToString::to_string).collect::<Vec<_>>(),
            "rules": rules,
        },
        "last_reload": {
            "attempted_at": unix_seconds(reload.last_attempt),
            "succeeded_at": unix_seconds(reload.last_success),
            "ok": reload.last_error.is_none(),
            "error": reload.last_error,
        },
        "refusals": live.refusals(),
        "refusals_unlisted": live.unlisted(),
        "series": live.series(),
        "health": health(state),
        "tencent": {"acks": live.tencent_acks().into_iter().map(|(c, n)| (c.to_string(), json!(n))).collect::<serde_json::Map<_, _>>()},
    })
}

/// `on` as written: `null` for every command.
fn on_names(on: &OnCommands) -> Option<Vec<&str>> {
    match on {
        OnCommands::Every => None,
        OnCommands::Some { exact, globs } => Some(exact.iter().chain(globs).map(|c| &**c).collect()),
    }
}

fn unix_seconds(t: std::time::SystemTime) -> f64 {
    t.duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// Redis and records, from the counters `/metrics` exports (`null` where there are none:
/// in library use no recorder is installed).
fn health(state: &State) -> Value {
    let text = state.metrics.as_ref().map(|h| h.render());
    // Every one is a count: shown as an integer.
    let metric = |name: &str| text.as_deref().map(|t| metric_sum(t, name).round() as u64);
    let redis = match &*state.caps {
        CapStore::Redis(_) => {
            let open = metric("callgate_redis_circuit_open").map(|n| n > 0);
            json!({
                "configured": true,
                "reachable": open.map(|open| !open),
                "circuit_open": open,
                "errors": {
                    "timeout": metric("callgate_redis_errors_total{reason=\"timeout\"}"),
                    "redis": metric("callgate_redis_errors_total{reason=\"redis\"}"),
                },
            })
        }
        CapStore::Memory(_) => json!({"configured": false}),
    };
    let records = match &state.recorder {
        Some(_) => json!({
            "on": true,
            "written": metric("callgate_records_written_total"),
            "failed": metric("callgate_records_failed_total"),
            "bytes": segment_bytes(&state.data_dir),
            "pruned_files": metric("callgate_records_pruned_files_total"),
            "streamed": metric("callgate_stream_records_total"),
            "stream_dropped": metric("callgate_stream_records_dropped_total"),
        }),
        None => json!({"on": false}),
    };
    json!({
        "redis": redis,
        "records": records,
        "bad_requests": metric("callgate_bad_requests_total"),
        "forbidden": metric("callgate_forbidden_total"),
        "busy": metric("callgate_busy_total"),
    })
}

/// The sum of every sample whose series starts with `series`: a name alone sums all its
/// label sets; a name with `{label="…"` only those.
fn metric_sum(text: &str, series: &str) -> f64 {
    let open = series.strip_suffix('}').unwrap_or(series);
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let rest = line.strip_prefix(open)?;
            // The name, or the label, must end here: `x_total` is not `x_total_more`.
            let rest = if open.contains('{') {
                if !rest.starts_with(['}', ',']) {
                    return None;
                }
                rest.split_once('}')?.1
            } else if let Some(labels) = rest.strip_prefix('{') {
                labels.split_once('}')?.1
            } else {
                rest
            };
            rest.strip_prefix(' ')?.trim().parse::<f64>().ok()
        })
        .fold(0.0, |sum, n| sum + n)
}

/// The bytes of record segments in `dir`; `null` if it cannot be read.
fn segment_bytes(dir: &Path) -> Option<u64> {
    let entries = std::fs::read_dir(dir).ok()?;
    let segments = entries.filter_map(Result::ok).filter(|e| {
        let name = e.file_name();
        let name = name.to_string_lossy();
        name.starts_with(SEGMENT_PREFIX) && name.ends_with(SEGMENT_SUFFIX)
    });
    Some(segments.filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum())
}

/// Counts a decided OpenIM callback: its rule's outcome, its latency, and, for a refusal or
/// a would-deny, its place in the ring. Dry-run hits are counted on their own rules.
pub fn observe(
    live: &Live,
    window: &RuleWindow,
    event: &crate::event::Event,
    decision: &Decision,
    counted: Counted,
    latency: std::time::Duration,
) {
    live.count(window, counted);
    live.decided(latency);
    if decision.outcome.is_refusal() {
        let kind = if counted == Counted::Deny { "" } else { "would_" };
        live.refused(event, decision.rule.as_ref(), &decision.outcome, kind);
    }
}

/// Counts a dry-run rule that held on the way: would allow, or would refuse (deny or
/// discard; then also kept in the ring).
pub fn observe_dry_run(live: &Live, window: &RuleWindow, event: &crate::event::Event, hit: &DryRunHit) {
    if hit.outcome.is_refusal() {
        live.count(window, Counted::WouldDeny);
        live.refused(event, Some(&hit.rule), &hit.outcome, "would_");
    } else {
        live.count(window, Counted::Allow);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_sums_match_whole_names_and_label_prefixes() {
        let text = "# TYPE a_total counter\na_total{reason=\"x\"} 2\na_total{reason=\"y\"} 3\na_total_more 9\nb 1.5\n";
        assert_eq!(metric_sum(text, "a_total"), 5.0);
        assert_eq!(metric_sum(text, "a_total{reason=\"y\"}"), 3.0);
        assert_eq!(metric_sum(text, "b"), 1.5);
        assert_eq!(metric_sum(text, "c"), 0.0);
        assert_eq!(metric_sum(text, "a_total{reason=\"\"}"), 0.0);
    }

    #[test]
    fn browsers_get_the_page_and_other_clients_the_index() {
        assert!(wants_page(Some("text/html,application/xhtml+xml,*/*;q=0.8")));
        assert!(!wants_page(Some("application/json")));
        assert!(!wants_page(Some("*/*")));
        assert!(!wants_page(None));
    }
}
