//! One attempt of a routed request, in Envoy's order: circuit breaker (`max_requests`) →
//! pick a host (skipping ejected and, on retries, previously tried ones) → per-try timeout →
//! connection pool (`max_connections`, `max_pending_requests`) → send. Every outcome feeds
//! outlier detection. The retries around it are [`RetryLayer`](crate::layer::RetryLayer)'s.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::{self, HOST};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;

use super::cluster::ClusterRuntime;
use super::host::{Protocol, SendError};
use super::route;
use crate::body::{ReqBody, RspBody};
use crate::counters::{Inflight, RetryBudget, RetrySlot};
use crate::flags::ResponseFlags;
use crate::hop;
use crate::layer::retry::Admission;
use crate::respond::{self, RESET_BEFORE_HEADERS, ResponseInfo, UpstreamFailure};
use crate::rules::balance::PickContext;
use crate::rules::outlier;

/// How a route's attempts reach its cluster.
#[derive(Debug)]
pub(crate) struct AttemptRoute {
    pub(crate) cluster: Arc<ClusterRuntime>,
    /// Rewrite the host to the chosen endpoint's address (`auto_host_rewrite`).
    pub(crate) auto_host: bool,
    /// The retry policy's per-try timeout.
    pub(crate) per_try_timeout: Option<Duration>,
    /// How many picks may be made to avoid hosts already tried.
    pub(crate) host_selection_max_attempts: u32,
    /// The `:scheme` of HTTP/2 requests (`https` for the passthrough's TLS destinations).
    pub(crate) scheme: Scheme,
}

/// One attempt's request body, with what the router and the retries decided for it.
#[derive(Debug)]
pub(crate) struct Try {
    /// `None` when the caller's body could not be read.
    pub(crate) body: Option<ReqBody>,
    /// The request's hash, from the route's hash policies.
    pub(crate) hash: Option<u64>,
    /// Hosts the balancer should avoid (tried before).
    pub(crate) avoid: Vec<SocketAddr>,
}

/// Sends attempts to a route's cluster: the service inside the route's retries.
#[derive(Clone, Debug)]
pub(crate) struct Attempts {
    route: Arc<AttemptRoute>,
}

impl Attempts {
    pub(crate) fn new(route: AttemptRoute) -> Self {
        Self {
            route: Arc::new(route),
        }
    }

    pub(crate) fn route(&self) -> &Arc<AttemptRoute> {
        &self.route
    }
}

impl tower::Service<Request<Try>> for Attempts {
    type Response = Response<RspBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<RspBody>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Try>) -> Self::Future {
        // The one box of the request path: the connection's send future is large, and the
        // retry future holds this across its states.
        let route = self.route.clone();
        Box::pin(async move {
            let grpc = respond::is_grpc(req.headers());
            Ok(one(&route, req, true).await.into_response(grpc))
        })
    }
}

/// What admits a retry to a cluster: its circuit breaker's `max_retries` (or its retry
/// budget), and the client's budget.
#[derive(Clone, Debug)]
pub(crate) struct ClusterAdmission {
    pub(crate) cluster: Arc<ClusterRuntime>,
    pub(crate) client: Option<RetryBudget>,
}

impl Admission for ClusterAdmission {
    type Permit = RetrySlot;

    fn admit(&self) -> Option<RetrySlot> {
        let state = self.cluster.state();
        self.cluster
            .counters
            .try_retry(&state.config.circuit_breakers, self.client.as_ref())
    }
}

/// Why an attempt got no upstream response.
#[derive(Debug)]
pub(super) enum Failure {
    /// The request has no authority to send upstream.
    NoAuthority,
    /// The caller's body could not be read.
    NoBody,
    Overflow,
    NoHealthyUpstream,
    PerTryTimeout,
    Send(SendError),
}

pub(super) struct Attempt {
    pub(super) host: Option<SocketAddr>,
    pub(super) result: Result<(Response<Incoming>, Inflight), Failure>,
}

impl Attempt {
    /// How the attempt failed, as the retry conditions see it (`None` for an answer).
    pub(super) fn failure(&self) -> Option<UpstreamFailure> {
        let Err(failure) = &self.result else {
            return None;
        };
        Some(match failure {
            Failure::PerTryTimeout => UpstreamFailure::PerTryTimeout,
            Failure::Send(SendError::Connect(_)) => UpstreamFailure::ConnectFailure,
            Failure::Send(SendError::Reset { refused: true, .. }) => UpstreamFailure::RefusedStream,
            Failure::Send(
                SendError::Reset { .. }
                | SendError::ConnectionTerminated(_)
                | SendError::Protocol(_),
            ) => UpstreamFailure::Reset,
            Failure::Overflow | Failure::Send(SendError::Overflow) => UpstreamFailure::Overflow,
            Failure::NoHealthyUpstream => UpstreamFailure::NoHealthyUpstream,
            Failure::NoAuthority | Failure::NoBody | Failure::Send(SendError::Body(_)) => {
                UpstreamFailure::NotSent
            }
        })
    }

    /// The attempt's answer: the upstream's response, or Envoy's local reply for its failure,
    /// with the host and flags in its [`ResponseInfo`].
    pub(super) fn into_response(self, grpc: bool) -> Response<RspBody> {
        let failure = self.failure();
        let mut info = ResponseInfo {
            upstream: self.host,
            attempts: 1,
            failure,
            ..ResponseInfo::default()
        };
        let (status, flag, why): (StatusCode, ResponseFlags, String) = match self.result {
            Ok((rsp, inflight)) => {
                let mut rsp = rsp.map(|b| RspBody::upstream(b, Some(inflight)));
                rsp.extensions_mut().insert(info);
                return rsp;
            }
            Err(Failure::NoAuthority) => (
                StatusCode::BAD_REQUEST,
                ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR,
                "invalid authority".into(),
            ),
            Err(Failure::NoBody) => (
                StatusCode::BAD_REQUEST,
                ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR,
                "request body could not be read".into(),
            ),
            Err(Failure::Overflow | Failure::Send(SendError::Overflow)) => (
                StatusCode::SERVICE_UNAVAILABLE,
                ResponseFlags::UPSTREAM_OVERFLOW,
                format!("{RESET_BEFORE_HEADERS}overflow"),
            ),
            Err(Failure::NoHealthyUpstream) => (
                StatusCode::SERVICE_UNAVAILABLE,
                ResponseFlags::NO_HEALTHY_UPSTREAM,
                "no healthy upstream".into(),
            ),
            Err(Failure::PerTryTimeout) => (
                StatusCode::GATEWAY_TIMEOUT,
                ResponseFlags::UPSTREAM_REQUEST_TIMEOUT,
                "upstream request timeout".into(),
            ),
            Err(Failure::Send(e)) => {
                let flag = match &e {
                    SendError::Connect(_) => ResponseFlags::UPSTREAM_CONNECTION_FAILURE,
                    SendError::ConnectionTerminated(_) => {
                        ResponseFlags::UPSTREAM_CONNECTION_TERMINATION
                    }
                    SendError::Reset { .. } => ResponseFlags::UPSTREAM_REMOTE_RESET,
                    SendError::Protocol(_) => ResponseFlags::UPSTREAM_PROTOCOL_ERROR,
                    SendError::Body(_) => ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR,
                    SendError::Overflow => unreachable!("matched above"),
                };
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    flag,
                    format!("{RESET_BEFORE_HEADERS}{e}"),
                )
            }
        };
        info.flags |= flag;
        respond::local(status, why, grpc, info)
    }
}

/// One attempt; `per_try` applies the per-try timeout (hedging times attempts itself).
pub(super) async fn one(route: &AttemptRoute, req: Request<Try>, per_try: bool) -> Attempt {
    let (parts, attempt) = req.into_parts();
    let fail = |f| Attempt {
        host: None,
        result: Err(f),
    };
    let Some(authority) = route::upstream_authority(&parts.uri, &parts.headers) else {
        return fail(Failure::NoAuthority);
    };
    let Some(body) = attempt.body else {
        return fail(Failure::NoBody);
    };
    let cluster = &route.cluster;
    let state = cluster.state();
    let limits = &state.config.circuit_breakers;
    if !cluster.counters.try_request(limits) {
        return fail(Failure::Overflow);
    }
    let mut inflight = Inflight::new(cluster.counters.clone());
    let avoid: Vec<u32> = if attempt.avoid.is_empty() {
        Vec::new()
    } else {
        (0..state.entries.len() as u32)
            .filter(|&i| attempt.avoid.contains(&state.entries[i as usize].host.addr))
            .collect()
    };
    let pick = PickContext {
        hash: attempt.hash,
        avoid: &avoid,
        max_attempts: route.host_selection_max_attempts,
    };
    let Some(index) = state.lb.pick(&state.entries, &state.config.lb, pick) else {
        return fail(Failure::NoHealthyUpstream);
    };
    let host = state.entries[index as usize].host.clone();
    inflight.on_host(host.clone());
    let protocol = state.protocol(parts.version);
    let grpc = respond::is_grpc(&parts.headers);
    let authority = if route.auto_host {
        host.addr_text.parse().unwrap_or(authority)
    } else {
        authority
    };
    let target = UpstreamTarget {
        method: parts.method,
        pq: route::path_and_query(&parts.uri),
        authority,
        scheme: route.scheme.clone(),
    };
    let req = upstream_request(target, parts.headers, body, protocol);
    let send = host.send(req, protocol, &state.settings, &cluster.counters, limits);
    let result = match route.per_try_timeout.filter(|_| per_try) {
        Some(t) => match tokio::time::timeout(t, send).await {
            Ok(r) => r.map_err(Failure::Send),
            Err(_) => Err(Failure::PerTryTimeout),
        },
        None => send.await.map_err(Failure::Send),
    };
    if let Err(Failure::Send(e)) = &result {
        tracing::debug!(
            cluster = %cluster.name,
            host = %host.addr,
            error = %e,
            cause = ?std::error::Error::source(e),
            "attempt failed"
        );
    }
    let outcome = match &result {
        Ok(rsp) => Some(outlier::Outcome::Status(outlier_status(grpc, rsp))),
        Err(Failure::Send(SendError::Overflow | SendError::Body(_))) => None,
        Err(_) => Some(outlier::Outcome::LocalFailure),
    };
    if let Some(o) = outcome {
        cluster.report(&state, &host, o);
    }
    Attempt {
        host: Some(host.addr),
        result: result.map(|rsp| (rsp, inflight)),
    }
}

/// The HTTP status outlier detection counts for an answer: a gRPC error answered in its
/// headers (trailers-only) counts as its HTTP equivalent, as in Envoy's router, so
/// `consecutive_5xx` sees UNKNOWN, INTERNAL and UNAVAILABLE. Envoy also defers the report of
/// a 200 with a body to its trailers' `grpc-status`; here such an answer counts as a
/// success (not done yet: errors after a message are rare, and the body would have to
/// report back to the host).
fn outlier_status<B>(grpc: bool, rsp: &Response<B>) -> u16 {
    let status = rsp.status().as_u16();
    if grpc
        && status == 200
        && let Some(code) = respond::grpc_status(rsp.headers())
    {
        return respond::http_status_for_grpc(code);
    }
    status
}

/// Where an upstream request goes, as its request line and `Host` say it.
pub(super) struct UpstreamTarget {
    pub(super) method: Method,
    pub(super) pq: PathAndQuery,
    pub(super) authority: Authority,
    /// The scheme of an HTTP/2 request's `:scheme`.
    pub(super) scheme: Scheme,
}

/// An upstream request as every path out of the client sends it (routed attempts, mirrors
/// and the passthrough): hop-by-hop headers removed (and `TE` but for `trailers`), then
/// origin-form URI and `Host` for HTTP/1.1, or an absolute URI (so `:authority` is the
/// service's name, not the endpoint's) and no `Host` for HTTP/2.
pub(super) fn upstream_request(
    target: UpstreamTarget,
    mut headers: HeaderMap,
    body: ReqBody,
    protocol: Protocol,
) -> Request<ReqBody> {
    // One pass over the few names a request has, instead of six lookups: most requests
    // carry none of these.
    if headers
        .keys()
        .any(|k| k == header::TE || hop::STANDARD.contains(k))
    {
        // Headers the `Connection` header nominates are hop-by-hop too (in process there is
        // no one to refuse the request to: they are only removed).
        let nominated = hop::nominated(&headers).names;
        for h in nominated.iter().chain(&hop::STANDARD) {
            headers.remove(h);
        }
        // Every value, not the first: a second `te: gzip` behind `te: trailers` must not pass.
        if headers
            .get_all(header::TE)
            .iter()
            .any(|v| !v.as_bytes().eq_ignore_ascii_case(b"trailers"))
        {
            headers.remove(header::TE);
        }
    }
    let (uri, version) = match protocol {
        Protocol::Http1 => {
            if let Ok(v) = HeaderValue::from_str(target.authority.as_str()) {
                headers.insert(HOST, v);
            }
            (Uri::from(target.pq), Version::HTTP_11)
        }
        Protocol::Http2 => {
            headers.remove(HOST);
            let uri = Uri::builder()
                .scheme(target.scheme)
                .authority(target.authority)
                .path_and_query(target.pq)
                .build()
                .expect("scheme, authority and path are valid parts");
            (uri, Version::HTTP_2)
        }
    };
    let mut req = Request::new(body);
    *req.method_mut() = target.method;
    *req.uri_mut() = uri;
    *req.version_mut() = version;
    *req.headers_mut() = headers;
    req
}
