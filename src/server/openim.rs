//! `POST /openim[/{command}][?command=…]`: OpenIM callbacks, decided by the policy set.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use metrics::{Counter, Histogram};
use warp::http::{HeaderValue, Method, StatusCode};
use warp::{Filter, Rejection};

use super::body::read_limited;
use super::status::{self, Counted, Live, RuleWindow};
use super::{Peer, access};
use super::{State, closing, json_reply};
use crate::catalog;
use crate::decision::{Decision, Outcome};
use crate::event::Event;
use crate::protocol::BodyError;
use crate::protocol::openim::{self, DecodeError, OpenImVersion};
use crate::record;

/// The callback routes.
pub fn routes(state: Arc<State>) -> impl Filter<Extract = (warp::reply::Response,), Error = Rejection> + Clone {
    let query = warp::query::raw().or(warp::any().map(String::new)).unify();
    // Taken as bytes: an operationID that is not visible ASCII is still a callback to decide.
    let operation_id = warp::header::value("operationid").map(Some).or(warp::any().map(|| None)).unify();
    warp::path("openim")
        .and(warp::path::tail())
        .and(warp::method())
        .and(query)
        .and(operation_id)
        .and(warp::header::optional::<u64>("content-length"))
        .and(warp::ext::optional::<Peer>())
        .and(warp::body::stream())
        .and(warp::any().map(move || state.clone()))
        .then(
            |tail: warp::path::Tail,
             method: Method,
             query: String,
             operation_id: Option<HeaderValue>,
             len: Option<u64>,
             peer: Option<Peer>,
             body,
             state: Arc<State>| async move {
                if !access::is_source_allowed(&state.allow_sources, peer) {
                    access::note_forbidden("openim", "source", peer);
                    return error_reply(StatusCode::FORBIDDEN, "forbidden", "forbidden");
                }
                let Some(path_command) = access::strip_path_token(state.openim_path_token.as_deref(), tail.as_str())
                else {
                    access::note_forbidden("openim", "path_token", peer);
                    return error_reply(StatusCode::FORBIDDEN, "forbidden", "forbidden");
                };
                if method != Method::POST {
                    let mut reply =
                        error_reply(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "callbacks must be POSTed");
                    reply.headers_mut().insert(warp::http::header::ALLOW, HeaderValue::from_static("POST"));
                    return reply;
                }
                let Ok(_working) = state.busy.try_acquire() else {
                    metrics::counter!("callgate_busy_total", "source" => "openim").increment(1);
                    return error_reply(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "busy",
                        "callgate is busy; too many callbacks at once",
                    );
                };
                let version = state.openim_version.unwrap_or_else(|| {
                    OpenImVersion::from_url_form(
                        !path_command.trim_matches('/').is_empty(),
                        openim::has_query_command(&query),
                    )
                });
                let body = match read_limited(len, body, &state.body_limits).await {
                    Ok(body) => body,
                    Err(err) => return bad_request(&DecodeError::Body(err), version, state.is_dry_run),
                };
                let operation_id = operation_id.as_ref().map(|v| String::from_utf8_lossy(v.as_bytes()));
                // The body's room in the in-flight budget is held until the answer.
                handle(&state, path_command, &query, operation_id.as_deref().unwrap_or(""), body.bytes, version).await
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
    version: OpenImVersion,
) -> warp::reply::Response {
    let started = Instant::now();
    let url_command = openim::command_from_url(Some(path_command), query);
    let set = state.policies.current();
    let event = match openim::decode(url_command.as_deref(), operation_id, raw, &|key| set.reads(key)) {
        Ok(event) => event,
        Err(err) => return bad_request(&err, version, state.is_dry_run),
    };
    let decision = set.decide_with_caps(&event, &state.caps, state.on_error).await;
    let latency = started.elapsed();
    if let Some(recorder) = &state.recorder {
        recorder.record(record::openim_line(&event, &decision, state.is_dry_run, set.version(), latency)).await;
    }
    observe(&state.live, &event, &decision, state.is_dry_run, latency);
    let answer = if state.is_dry_run { &Outcome::Allow } else { &decision.outcome };
    json_reply(StatusCode::OK, openim::encode(answer, version))
}

/// Metrics, the status page's numbers and logs of one decision. Labels stay bounded:
/// commands OpenIM does not define count as `other`, and rule ids come from the policy set.
fn observe(live: &Live, event: &Event, decision: &Decision, is_dry_run: bool, latency: std::time::Duration) {
    let command = event.command.as_str();
    let rule = decision.rule.as_deref().unwrap_or("(default)");
    let counted = match (&decision.outcome, is_dry_run) {
        (Outcome::Allow, _) => Counted::Allow,
        (Outcome::Deny(_), false) => Counted::Deny,
        (Outcome::Deny(_), true) => Counted::WouldDeny,
    };
    HANDLES.with_borrow_mut(|handles| {
        handles.latency.record(latency.as_secs_f64());
        let of_rule = handles.rule(rule);
        of_rule.decision(openim::command_index(command), rule, counted as usize).increment(1);
        status::observe(live, of_rule.window(live, rule), event, decision, counted, latency);
        for hit in &decision.dry_run {
            let of_rule = handles.rule(&hit.rule);
            of_rule.dry_run_hit(&hit.rule, matches!(hit.outcome, Outcome::Deny(_))).increment(1);
            status::observe_dry_run(live, of_rule.window(live, &hit.rule), event, hit);
            // Records and the metric carry every hit; a log line each would flood the log.
            tracing::debug!(command, rule = %hit.rule, would = hit.outcome.as_str(), "dry-run rule held");
        }
    });
    if counted == Counted::WouldDeny {
        tracing::debug!(command, rule, "dry run: would deny");
    }
}

thread_local! {
    /// Each worker thread's handles of the decision metrics. Finding a labelled metric in the
    /// registry hashes and clones its labels, which cost as much as deciding; a handle, once
    /// found, is kept for as long as the thread. Rule ids are bounded by the policy sets
    /// loaded, as the registry's own series are.
    static HANDLES: std::cell::RefCell<Handles> = std::cell::RefCell::new(Handles::default());
}

const OUTCOMES: [&str; 3] = ["allow", "deny", "would_deny"];

struct Handles {
    /// Where each rule's handles are in `rules`: one lookup a decision.
    by_rule: HashMap<Box<str>, usize>,
    rules: Vec<RuleHandles>,
    latency: Histogram,
}

/// One rule's handles.
#[derive(Default)]
struct RuleHandles {
    /// `callgate_decisions_total` by command index and outcome.
    decisions: Vec<Option<Counter>>,
    /// `callgate_dry_run_hits_total`: would allow, would deny.
    dry_run_hits: Option<[Counter; 2]>,
    /// The status page's window of the rule, with the id of the [`Live`] it belongs to.
    live: Option<(u64, Arc<RuleWindow>)>,
}

impl Default for Handles {
    fn default() -> Handles {
        Handles {
            by_rule: HashMap::new(),
            rules: Vec::new(),
            latency: metrics::histogram!("callgate_decision_seconds"),
        }
    }
}

impl Handles {
    fn rule(&mut self, rule: &str) -> &mut RuleHandles {
        let at = match self.by_rule.get(rule) {
            Some(&at) => at,
            None => {
                self.rules.push(RuleHandles::default());
                self.by_rule.insert(rule.into(), self.rules.len() - 1);
                self.rules.len() - 1
            }
        };
        &mut self.rules[at]
    }
}

impl RuleHandles {
    fn decision(&mut self, command: Option<usize>, rule: &str, outcome: usize) -> &Counter {
        if self.decisions.is_empty() {
            self.decisions = vec![None; (catalog::OPENIM.len() + 1) * OUTCOMES.len()];
        }
        let at = command.unwrap_or(catalog::OPENIM.len()) * OUTCOMES.len() + outcome;
        self.decisions[at].get_or_insert_with(|| {
            let command = command.map_or("other", |i| catalog::OPENIM[i].name);
            metrics::counter!("callgate_decisions_total", "command" => command, "rule" => rule.to_string(), "outcome" => OUTCOMES[outcome])
        })
    }

    fn dry_run_hit(&mut self, rule: &str, would_deny: bool) -> &Counter {
        let [allow, deny] = self.dry_run_hits.get_or_insert_with(|| {
            let counter = |would: &'static str| metrics::counter!("callgate_dry_run_hits_total", "rule" => rule.to_string(), "would" => would);
            [counter("allow"), counter("deny")]
        });
        if would_deny { deny } else { allow }
    }

    /// The rule's window in `live`; the server's one in production, looked up again only
    /// when a thread serves another server (tests run several in one process).
    fn window(&mut self, live: &Live, rule: &str) -> &RuleWindow {
        if self.live.as_ref().is_none_or(|(id, _)| *id != live.id()) {
            self.live = Some((live.id(), live.rule(rule)));
        }
        let (_, window) = self.live.get_or_insert_with(|| (live.id(), live.rule(rule)));
        window
    }
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
fn error_reply(status: StatusCode, reason: &str, message: &str) -> warp::reply::Response {
    closing(json_reply(status, openim::encode_error(reason, message)))
}

/// Turns warp's own rejections (no route matched) into answers in OpenIM's format.
pub async fn recover(rejection: Rejection) -> Result<warp::reply::Response, Infallible> {
    if rejection.is_not_found() {
        return Ok(error_reply(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such endpoint: OpenIM callbacks go to /openim/{command}",
        ));
    }
    tracing::warn!("request refused: {rejection:?}");
    Ok(error_reply(StatusCode::BAD_REQUEST, "bad_request", "bad request"))
}
