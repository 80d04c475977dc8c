//! The router's inner loop: attempts, each through the circuit breaker, the balancer and a
//! connection, retried by the route's policy within the retry budget.
//!
//! Per attempt, in Envoy's order: circuit breaker (`max_requests`) → pick a host (skipping
//! ejected and, on retries, previously tried ones) → per-try timeout → connection pool
//! (`max_connections`, `max_pending_requests`) → send. Every outcome feeds outlier detection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HOST};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use mesh_core::model::RetryPolicy;

use super::balance::PickContext;
use super::circuit_breaker::{Inflight, RetryBudget, RetrySlot};
use super::cluster::ClusterRuntime;
use super::host::{Protocol, SendError};
use super::outlier;
use super::retry::{self, Outcome};
use crate::body::{BodySource, ReqBody, RspBody};
use crate::flags::ResponseFlags;
use crate::respond::{self, RESET_BEFORE_HEADERS, ResponseInfo};

/// How long a retry waits for the previous attempt to hand the request body back.
const RECLAIM_WAIT: Duration = Duration::from_secs(1);

/// Everything an attempt needs, owned so that mirrors can run it in a task of their own.
#[derive(Clone, Debug)]
pub(crate) struct AttemptCtx {
    pub(crate) cluster: Arc<ClusterRuntime>,
    pub(crate) method: Method,
    pub(crate) pq: PathAndQuery,
    pub(crate) authority: Authority,
    /// Rewrite the host to the chosen endpoint's address (`auto_host_rewrite`).
    pub(crate) auto_host: bool,
    pub(crate) version: Version,
    pub(crate) retry: Option<Arc<RetryPolicy>>,
    /// Send another attempt when the per-try timeout fires, keeping the first in flight.
    pub(crate) hedge_on_per_try_timeout: bool,
    pub(crate) hash: Option<u64>,
    pub(crate) attempt_count_header: bool,
    pub(crate) grpc: bool,
    pub(crate) retry_budget: Option<RetryBudget>,
}

/// Why an attempt got no upstream response.
#[derive(Debug)]
pub(super) enum Failure {
    Overflow,
    NoHealthyUpstream,
    PerTryTimeout,
    Send(SendError),
}

pub(super) struct Attempt {
    pub(super) host: Option<(u32, SocketAddr)>,
    pub(super) result: Result<(Response<Incoming>, Inflight), Failure>,
}

impl Attempt {
    pub(super) fn retry_outcome(&self) -> Option<Outcome<'_>> {
        Some(match &self.result {
            Ok((rsp, _)) => Outcome::Response {
                status: rsp.status().as_u16(),
                headers: rsp.headers(),
            },
            Err(Failure::PerTryTimeout) => Outcome::PerTryTimeout,
            Err(Failure::Send(SendError::Connect(_))) => Outcome::ConnectFailure,
            Err(Failure::Send(SendError::Reset { refused: true, .. })) => Outcome::RefusedStream,
            Err(Failure::Send(
                SendError::Reset { .. }
                | SendError::ConnectionTerminated(_)
                | SendError::Protocol(_),
            )) => Outcome::Reset,
            Err(
                Failure::Overflow
                | Failure::NoHealthyUpstream
                | Failure::Send(SendError::Overflow | SendError::Body(_)),
            ) => return None,
        })
    }

    pub(super) fn into_response(
        self,
        ctx: &AttemptCtx,
        info: &mut ResponseInfo,
    ) -> Response<RspBody> {
        let (status, flag, why): (StatusCode, ResponseFlags, String) = match self.result {
            Ok((rsp, inflight)) => {
                return rsp.map(|b| RspBody::upstream(b, Some(inflight)));
            }
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
        respond::local(status, why, ctx.grpc, info.clone())
    }
}

/// Runs the attempts of one request: the first, then retries while the policy, the attempts
/// left, the body and the budget allow.
pub(crate) async fn run(
    ctx: &AttemptCtx,
    mut headers: HeaderMap,
    body: &mut BodySource,
    info: &mut ResponseInfo,
) -> Response<RspBody> {
    let max = 1 + ctx.retry.as_ref().map_or(0, |p| p.num_retries);
    if ctx.hedge_on_per_try_timeout
        && max > 1
        && ctx
            .retry
            .as_ref()
            .is_some_and(|p| p.per_try_timeout.is_some())
        && let Some(copies) = super::hedge::Copies::new(body)
    {
        return super::hedge::run(ctx, headers, copies, info).await;
    }
    let mut tried: Vec<u32> = Vec::new();
    let mut slot: Option<RetrySlot> = None;
    let mut n = 0u32;
    loop {
        n += 1;
        let Some(req_body) = body.lend() else {
            info.flags |= ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR;
            return respond::local(
                StatusCode::BAD_REQUEST,
                "request body could not be read",
                ctx.grpc,
                info.clone(),
            );
        };
        let attempt_headers = if n < max {
            headers.clone()
        } else {
            std::mem::take(&mut headers)
        };
        let attempt = one(ctx, n, attempt_headers, req_body, &tried, slot.take(), true).await;
        info.attempts = n;
        if let Some((index, addr)) = attempt.host {
            info.upstream = Some(addr);
            // Only a later attempt reads it; the common single attempt allocates nothing.
            if n < max {
                tried.push(index);
            }
        }
        let Some(policy) = ctx.retry.as_deref() else {
            return attempt.into_response(ctx, info);
        };
        if !attempt
            .retry_outcome()
            .is_some_and(|o| retry::retriable(policy, o))
        {
            return attempt.into_response(ctx, info);
        }
        if n >= max {
            info.flags |= ResponseFlags::UPSTREAM_RETRY_LIMIT_EXCEEDED;
            return attempt.into_response(ctx, info);
        }
        body.reclaim(RECLAIM_WAIT).await;
        if !body.replayable() {
            return attempt.into_response(ctx, info);
        }
        tokio::time::sleep(retry::backoff(policy, n)).await;
        // The budget counts retries on the wire: a request sleeping in backoff is no load on
        // the upstream. (Envoy holds the slot through the backoff too, so at high rates its
        // default of 3 concurrent retries denies most of them.) If the budget says no, the
        // caller gets the upstream's last answer.
        let state = ctx.cluster.state();
        match ctx
            .cluster
            .counters
            .try_retry(&state.config.circuit_breakers, ctx.retry_budget.as_ref())
        {
            Some(s) => slot = Some(s),
            None => {
                info.flags |= ResponseFlags::UPSTREAM_OVERFLOW;
                return attempt.into_response(ctx, info);
            }
        }
        drop(attempt);
    }
}

/// One attempt; `per_try` applies the policy's per-try timeout (hedging times attempts
/// itself).
pub(super) async fn one(
    ctx: &AttemptCtx,
    n: u32,
    headers: HeaderMap,
    body: ReqBody,
    tried: &[u32],
    retry: Option<RetrySlot>,
    per_try: bool,
) -> Attempt {
    let cluster = &ctx.cluster;
    let state = cluster.state();
    let limits = &state.config.circuit_breakers;
    if !cluster.counters.try_request(limits) {
        // The retry slot, if any, is released here with `retry`.
        return Attempt {
            host: None,
            result: Err(Failure::Overflow),
        };
    }
    let mut inflight = Inflight::new(cluster.counters.clone(), retry);
    let policy = ctx.retry.as_deref();
    let pick = PickContext {
        hash: ctx.hash,
        avoid: if policy.is_some_and(|p| p.avoid_previous_hosts) {
            tried
        } else {
            &[]
        },
        max_attempts: policy.map_or(0, |p| p.host_selection_max_attempts),
    };
    let Some(index) = state.lb.pick(&state.entries, &state.config.lb, pick) else {
        return Attempt {
            host: None,
            result: Err(Failure::NoHealthyUpstream),
        };
    };
    let host = state.entries[index as usize].host.clone();
    inflight.on_host(host.clone());
    let protocol = state.protocol(ctx.version);
    let req = build(ctx, n, headers, body, protocol, &host.addr_text);
    let send = host.send(req, protocol, &state.settings, &cluster.counters, limits);
    let result = match policy.and_then(|p| p.per_try_timeout).filter(|_| per_try) {
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
        Ok(rsp) => Some(outlier::Outcome::Status(outlier_status(ctx.grpc, rsp))),
        Err(Failure::Send(SendError::Overflow | SendError::Body(_))) => None,
        Err(_) => Some(outlier::Outcome::LocalFailure),
    };
    if let Some(o) = outcome {
        cluster.report(&state, &host, o);
    }
    Attempt {
        host: Some((index, host.addr)),
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

/// Hop-by-hop headers, which never travel upstream (and which HTTP/2 forbids).
const HOP_BY_HOP: [&str; 5] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
];

/// The upstream request of one attempt: the attempt's own headers, then
/// [`upstream_request`].
fn build(
    ctx: &AttemptCtx,
    n: u32,
    mut headers: HeaderMap,
    body: ReqBody,
    protocol: Protocol,
    host_addr: &str,
) -> Request<ReqBody> {
    let authority = if ctx.auto_host {
        host_addr.parse().unwrap_or_else(|_| ctx.authority.clone())
    } else {
        ctx.authority.clone()
    };
    if ctx.attempt_count_header {
        headers.insert("x-envoy-attempt-count", HeaderValue::from(n));
    }
    // gRFC A6: a gRPC retry tells the server how many attempts went before it, so servers
    // (and the interop suite's `succeed-on-retry-attempt-N`) can tell retries apart.
    if n > 1 && ctx.grpc {
        headers.insert("grpc-previous-rpc-attempts", HeaderValue::from(n - 1));
    }
    let target = UpstreamTarget {
        method: ctx.method.clone(),
        pq: ctx.pq.clone(),
        authority,
        scheme: Scheme::HTTP,
    };
    upstream_request(target, headers, body, protocol)
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
    for h in HOP_BY_HOP {
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
