//! The innermost service of a route's stack: what Envoy's router does once the route's
//! filters, rewrites and mirrors are done. Its own stack, in order:
//!
//! ```text
//! RetryLayer     the route's retry policy, admitted by the cluster's max_retries and the
//!                client's budget (or hedging on per-try timeout, when the route asks)
//!  → Attempts    circuit breaker → balancer → per-try timeout → connection
//! ```

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::{HeaderValue, Request, Response};
use mesh_core::model::RetryPolicy;
use tower::{Layer, Service};

use super::attempt::{AttemptRoute, Attempts, ClusterAdmission, Try};
use super::cluster::ClusterRuntime;
use super::hedge;
use crate::body::{BodySource, RspBody};
use crate::counters::RetryBudget;
use crate::layer::mirror::MirrorBody;
use crate::layer::retry::{self, AttemptContext, Replay, Retry, RetryLayer};

/// Sends a route's requests to one cluster.
#[derive(Clone, Debug)]
pub(crate) struct Upstream {
    retry: Retry<Attempts, ClusterAdmission>,
    /// Set when the route hedges on per-try timeout.
    hedge: Option<Arc<RetryPolicy>>,
    attempt_count_header: bool,
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
        let policy = route.retry.clone().unwrap_or_else(|| {
            Arc::new(RetryPolicy {
                num_retries: 0,
                ..RetryPolicy::default()
            })
        });
        let attempts = Attempts::new(AttemptRoute {
            cluster: route.cluster.clone(),
            auto_host: route.auto_host,
            per_try_timeout: policy.per_try_timeout,
            host_selection_max_attempts: policy.host_selection_max_attempts,
            scheme: http::uri::Scheme::HTTP,
        });
        let hedge = route.retry.filter(|p| {
            route.hedge_on_per_try_timeout && p.num_retries > 0 && p.per_try_timeout.is_some()
        });
        let admission = ClusterAdmission {
            cluster: route.cluster,
            client: route.retry_budget,
        };
        let retry = RetryLayer::from_arc(policy)
            .admission(admission)
            .attempt_count_header(route.attempt_count_header)
            .layer(attempts);
        Self {
            retry,
            hedge,
            attempt_count_header: route.attempt_count_header,
        }
    }
}

impl Service<Request<Routed>> for Upstream {
    type Response = Response<RspBody>;
    type Error = Infallible;
    type Future = UpstreamFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<Routed>) -> UpstreamFuture {
        let set_cookie = req.body_mut().set_cookie.take();
        // Concurrent hedged attempts each need the whole body: hedging applies to requests
        // whose body is known in full, others are retried one attempt after another.
        if let Some(policy) = &self.hedge
            && req.body().retriable
            && let Some(copies) = hedge::Copies::new(&req.body().body)
        {
            let policy = policy.clone();
            let route = self.retry.get_ref().route().clone();
            let admission = self.retry.admission().clone();
            let attempt_count_header = self.attempt_count_header;
            let (head, routed) = req.into_parts();
            let hedged = Box::pin(async move {
                let hedged = hedge::Hedged {
                    route: &route,
                    policy: &policy,
                    admission: &admission,
                    attempt_count_header,
                };
                hedge::run(hedged, head, copies, routed.hash).await
            });
            return UpstreamFuture {
                inner: Inner::Hedged { future: hedged },
                set_cookie,
            };
        }
        UpstreamFuture {
            inner: Inner::Retried {
                future: self.retry.call(req),
            },
            set_cookie,
        }
    }
}

type RetryFuture = retry::ResponseFuture<Attempts, ClusterAdmission, Routed, RspBody>;

pin_project_lite::pin_project! {
    /// The future of [`Upstream`].
    pub(crate) struct UpstreamFuture {
        #[pin]
        inner: Inner,
        set_cookie: Option<HeaderValue>,
    }
}

pin_project_lite::pin_project! {
    #[project = InnerProj]
    enum Inner {
        Retried { #[pin] future: RetryFuture },
        Hedged { future: Pin<Box<dyn Future<Output = Response<RspBody>> + Send>> },
    }
}

impl Future for UpstreamFuture {
    type Output = Result<Response<RspBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut rsp = match this.inner.project() {
            InnerProj::Retried { future } => ready!(future.poll(cx))?,
            InnerProj::Hedged { future } => ready!(future.as_mut().poll(cx)),
        };
        if let Some(cookie) = this.set_cookie.take() {
            rsp.headers_mut().append(http::header::SET_COOKIE, cookie);
        }
        Poll::Ready(Ok(rsp))
    }
}

/// The router's request, sent again by the route's retries: the body replayed, the hash kept,
/// the hosts tried before avoided.
impl Replay for Routed {
    type Attempt = Try;

    fn first(&mut self) -> Try {
        Try {
            body: self.body.lend(),
            hash: self.hash,
            avoid: Vec::new(),
        }
    }

    fn poll_reclaim(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        self.body.poll_reclaim(cx)
    }

    fn abandon(&mut self) {
        self.body.abandon();
    }

    fn replayable(&self) -> bool {
        self.body.replayable()
    }

    fn again(&mut self, cx: AttemptContext<'_>) -> Option<Try> {
        Some(Try {
            body: Some(self.body.lend()?),
            hash: self.hash,
            avoid: cx.avoid.to_vec(),
        })
    }

    fn retriable(&self) -> bool {
        self.retriable
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
