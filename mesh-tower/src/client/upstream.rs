//! The innermost service of a route's stack: what Envoy's router does once the route's
//! filters have run. Mirrors get their copies, then the attempts run: retry → circuit
//! breaker → balancer → per-try timeout → connection ([`attempt`](super::attempt)).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::uri::{Authority, PathAndQuery};
use http::{HeaderValue, Request, Response};
use mesh_core::model::RetryPolicy;

use super::attempt::{self, AttemptCtx};
use super::circuit_breaker::RetryBudget;
use super::cluster::ClusterRuntime;
use super::policy::Mirror;
use super::route;
use crate::body::{BodySource, RspBody};
use crate::respond::{self, ResponseInfo};

/// Sends a route's requests to one cluster.
#[derive(Clone, Debug)]
pub(crate) struct Upstream {
    route: Arc<UpstreamRoute>,
}

/// What a route backend's upstream sends with.
#[derive(Debug)]
pub(crate) struct UpstreamRoute {
    pub(crate) cluster: Arc<ClusterRuntime>,
    /// The route's retry policy, `None` when it allows no retry.
    pub(crate) retry: Option<Arc<RetryPolicy>>,
    pub(crate) hedge_on_per_try_timeout: bool,
    pub(crate) mirrors: Arc<[Mirror]>,
    /// `x-envoy-attempt-count` on upstream requests (`include_request_attempt_count`).
    pub(crate) attempt_count_header: bool,
    pub(crate) retry_budget: Option<RetryBudget>,
}

/// A request as the router hands it to a route's stack: the body, taken in for replay, with
/// what the router decided about the upstream request. The route's layers see the request's
/// own URI and headers; the upstream request gets the rewritten path and authority.
#[derive(Debug)]
pub(crate) struct Routed {
    pub(crate) body: BodySource,
    pub(crate) authority: Authority,
    /// Rewrite the authority to the chosen endpoint's address (`auto_host_rewrite`).
    pub(crate) auto_host: bool,
    pub(crate) pq: PathAndQuery,
    pub(crate) hash: Option<u64>,
    /// A cookie a hash policy made, set on the response.
    pub(crate) set_cookie: Option<HeaderValue>,
    /// Whether the route's retry policy admits this request (`retriable_request_headers`).
    pub(crate) retriable: bool,
}

impl Upstream {
    pub(crate) fn new(route: UpstreamRoute) -> Self {
        Self {
            route: Arc::new(route),
        }
    }
}

impl tower::Service<Request<Routed>> for Upstream {
    type Response = Response<RspBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<RspBody>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Routed>) -> Self::Future {
        let route = self.route.clone();
        Box::pin(async move { Ok(route.send(req).await) })
    }
}

impl UpstreamRoute {
    async fn send(&self, req: Request<Routed>) -> Response<RspBody> {
        let (parts, routed) = req.into_parts();
        let Routed {
            mut body,
            authority,
            auto_host,
            pq,
            hash,
            set_cookie,
            retriable,
        } = routed;
        let ctx = AttemptCtx {
            cluster: self.cluster.clone(),
            method: parts.method,
            pq,
            authority,
            auto_host,
            version: parts.version,
            hedge_on_per_try_timeout: self.hedge_on_per_try_timeout,
            retry: self.retry.clone().filter(|_| retriable),
            hash,
            attempt_count_header: self.attempt_count_header,
            grpc: respond::is_grpc(&parts.headers),
            retry_budget: self.retry_budget,
        };
        self.mirror(&ctx, &parts.headers, &body);
        let mut info = ResponseInfo::default();
        let mut rsp = attempt::run(&ctx, parts.headers, &mut body, &mut info).await;
        if let Some(cookie) = set_cookie {
            rsp.headers_mut().append(http::header::SET_COOKIE, cookie);
        }
        rsp.extensions_mut().insert(info);
        rsp
    }

    /// Sends the shadow copies: each on its own, never affecting this request's answer.
    fn mirror(&self, ctx: &AttemptCtx, headers: &http::HeaderMap, body: &BodySource) {
        for m in self.mirrors.iter() {
            if !m.policy.fraction.hit(fastrand::u32(0..1_000_000)) {
                continue;
            }
            let (Some(target), Some(copy)) = (&m.cluster, body.duplicate()) else {
                continue;
            };
            let authority = if m.policy.disable_shadow_host_suffix {
                ctx.authority.clone()
            } else {
                match route::shadow_authority(ctx.authority.as_str()).parse() {
                    Ok(a) => a,
                    Err(_) => continue,
                }
            };
            let shadow = AttemptCtx {
                cluster: target.clone(),
                authority,
                retry: None,
                ..ctx.clone()
            };
            let headers = headers.clone();
            tokio::spawn(async move {
                let mut info = ResponseInfo::default();
                let mut src = copy;
                let rsp = attempt::run(&shadow, headers, &mut src, &mut info).await;
                // Read the answer so the connection can be reused, then drop it.
                let _ = http_body_util::BodyExt::collect(rsp.into_body()).await;
            });
        }
    }
}
