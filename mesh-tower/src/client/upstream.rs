//! The innermost service of a route's stack: what Envoy's router does once the route's
//! filters, rewrites and mirrors are done. The attempts run: retry → circuit breaker →
//! balancer → per-try timeout → connection ([`attempt`](super::attempt)).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderValue, Request, Response, StatusCode};
use mesh_core::model::RetryPolicy;

use super::attempt::{self, AttemptCtx};
use super::circuit_breaker::RetryBudget;
use super::cluster::ClusterRuntime;
use super::route;
use crate::body::{BodySource, RspBody};
use crate::flags::ResponseFlags;
use crate::layer::mirror::MirrorBody;
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
    /// Send to the chosen endpoint's address as the authority (`auto_host_rewrite`).
    pub(crate) auto_host: bool,
    /// `x-envoy-attempt-count` on upstream requests (`include_request_attempt_count`).
    pub(crate) attempt_count_header: bool,
    pub(crate) retry_budget: Option<RetryBudget>,
}

/// A request as the router hands it to a route's stack: the body, taken in for replay, with
/// what the router decided from the request as it arrived (the hash, computed before the
/// route's header mutations, as Envoy's router chooses its host).
#[derive(Debug)]
pub(crate) struct Routed {
    pub(crate) body: BodySource,
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
            hash,
            set_cookie,
            retriable,
        } = routed;
        let grpc = respond::is_grpc(&parts.headers);
        let Some(authority) = route::upstream_authority(&parts.uri, &parts.headers) else {
            let info = ResponseInfo {
                flags: ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR,
                ..ResponseInfo::default()
            };
            return respond::local(StatusCode::BAD_REQUEST, "invalid authority", grpc, info);
        };
        let ctx = AttemptCtx {
            cluster: self.cluster.clone(),
            method: parts.method,
            pq: route::path_and_query(&parts.uri),
            authority,
            auto_host: self.auto_host,
            version: parts.version,
            hedge_on_per_try_timeout: self.hedge_on_per_try_timeout,
            retry: self.retry.clone().filter(|_| retriable),
            hash,
            attempt_count_header: self.attempt_count_header,
            grpc,
            retry_budget: self.retry_budget,
        };
        let mut info = ResponseInfo::default();
        let mut rsp = attempt::run(&ctx, parts.headers, &mut body, &mut info).await;
        if let Some(cookie) = set_cookie {
            rsp.headers_mut().append(http::header::SET_COOKIE, cookie);
        }
        rsp.extensions_mut().insert(info);
        rsp
    }
}

/// A mirror's copy: the whole body (when it is known in full) and the same hash; never
/// retried, and no cookie for the caller.
impl MirrorBody for Routed {
    fn duplicate(&self) -> Option<Self> {
        Some(Self {
            body: self.body.duplicate()?,
            hash: self.hash,
            set_cookie: None,
            retriable: false,
        })
    }
}
