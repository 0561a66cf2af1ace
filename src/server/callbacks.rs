//! The callback port's routes: `/openim[/…]` to [`openim::serve`], `/tencent` to
//! [`tencent::serve`], anything else 404 in OpenIM's format. Routed by path straight from
//! hyper's request, without warp's filter chain: this is the hot path, and the chain cost
//! about a tenth of a callback's instructions (bench/instr.sh, issue 19). The admin port,
//! with many routes and few requests, keeps warp's filters.
//!
//! Paths are matched as warp's `path("openim")` and `path::tail()` matched them, so no URL
//! that OpenIM or Tencent is configured with changes meaning: the first segment, compared as
//! sent (not percent-decoded), and the rest after its `/`.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper::body::Incoming;
use tower_service::Service;
use warp::http::StatusCode;

use super::{Peer, State, openim, tencent};

/// The callback port's service for one connection, from `peer`.
#[derive(Clone)]
pub struct Callbacks {
    pub state: Arc<State>,
    pub peer: Peer,
}

impl Service<hyper::Request<Incoming>> for Callbacks {
    type Response = warp::reply::Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<warp::reply::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: hyper::Request<Incoming>) -> Self::Future {
        let state = self.state.clone();
        let peer = self.peer;
        Box::pin(async move { Ok(route(state, peer, req).await) })
    }
}

async fn route(state: Arc<State>, peer: Peer, req: hyper::Request<Incoming>) -> warp::reply::Response {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path();
    if let Some(tail) = after_segment(path, "openim") {
        return openim::serve(state, peer, &parts, tail, body).await;
    }
    if after_segment(path, "tencent") == Some("") {
        return tencent::serve(state, peer, &parts, body).await;
    }
    openim::error_reply(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such endpoint: OpenIM callbacks go to /openim/{command}",
    )
}

/// The rest of `path` after its first segment when that segment is `name`: `/openim` and
/// `/openim/` give "", `/openim/a/b` gives "a/b", `/openimx` nothing.
fn after_segment<'p>(path: &'p str, name: &str) -> Option<&'p str> {
    let rest = path.strip_prefix('/').unwrap_or(path).strip_prefix(name)?;
    if rest.is_empty() { Some(rest) } else { rest.strip_prefix('/') }
}

#[cfg(test)]
mod tests {
    use super::after_segment;

    #[test]
    fn paths_match_as_warps_path_and_tail_matched_them() {
        assert_eq!(after_segment("/openim", "openim"), Some(""));
        assert_eq!(after_segment("/openim/", "openim"), Some(""));
        assert_eq!(
            after_segment("/openim/callbackBeforeAddBlackCommand", "openim"),
            Some("callbackBeforeAddBlackCommand")
        );
        assert_eq!(after_segment("/openim/tok/cmd", "openim"), Some("tok/cmd"));
        assert_eq!(after_segment("/openim//cmd", "openim"), Some("/cmd"));
        assert_eq!(after_segment("/openimx", "openim"), None);
        assert_eq!(after_segment("/x/openim", "openim"), None);
        assert_eq!(after_segment("/%6Fpenim", "openim"), None, "segments are compared as sent");
        assert_eq!(after_segment("/tencent/", "tencent"), Some(""));
        assert_eq!(after_segment("/tencent//", "tencent"), Some("/"), "not the tencent route: more than its segment");
        assert_eq!(after_segment("*", "openim"), None);
    }
}
