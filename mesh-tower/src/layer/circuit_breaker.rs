//! Envoy's circuit breaker for requests, as a layer: at most `max_requests` in flight, the
//! next answered at once with 503 and flag `UO` (Envoy fails fast where a concurrency limit
//! would wait), and `max_retries` (or a retry budget) for a [`RetryLayer`] above.
//!
//! A request counts from admission until its response body ends or is dropped, the span for
//! which Envoy counts a request active. `max_connections` and `max_pending_requests` belong
//! to a connection pool, which a service of your own has its own way of bounding;
//! [`MeshClient`](crate::MeshClient)'s clusters apply all four.
//!
//! [`RetryLayer`]: super::RetryLayer

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, ready};

use http::{Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use mesh_core::model::CircuitBreakers;

use super::retry::Admission;
use crate::counters::{Counters, Inflight, RetrySlot};
use crate::flags::ResponseFlags;
use crate::respond::{self, LocalBody, RESET_BEFORE_HEADERS, ResponseInfo, UpstreamFailure};

/// One circuit breaker's limits and live counts, shared by every service its layer makes and
/// by its retry admission.
///
/// ```
/// # async fn run() {
/// use std::time::Duration;
/// use mesh_core::model::{CircuitBreakers, RetryOn, RetryPolicy};
/// use mesh_tower::layer::{CircuitBreaker, ReplayBody, RetryLayer};
/// use mesh_tower::{ResponseInfo, RspBody};
/// use tower::{Layer, ServiceBuilder, ServiceExt, service_fn};
///
/// let breaker = CircuitBreaker::new(CircuitBreakers {
///     max_requests: 1,
///     ..CircuitBreakers::default()
/// });
/// let app = service_fn(|_req: http::Request<()>| async {
///     Ok::<_, std::convert::Infallible>(http::Response::new(RspBody::full("hello")))
/// });
/// let svc = breaker.layer().layer(app);
/// let get = || http::Request::get("http://a/").body(()).unwrap();
/// // The first response's body is not read yet: its request is still active.
/// let first = svc.clone().oneshot(get()).await.unwrap();
/// let second = svc.clone().oneshot(get()).await.unwrap();
/// assert_eq!(second.status(), 503);
/// assert_eq!(ResponseInfo::of(&second).unwrap().flags.to_string(), "UO");
/// drop(first);
/// assert_eq!(svc.oneshot(get()).await.unwrap().status(), 200);
/// assert_eq!(breaker.stats().request_overflows, 1);
///
/// // Retries above it are admitted within its `max_retries` (3 at a time by default).
/// let failing = service_fn(|_req: http::Request<mesh_tower::ReqBody>| async {
///     let rsp = http::Response::builder().status(503).body(RspBody::empty()).unwrap();
///     Ok::<_, std::convert::Infallible>(rsp)
/// });
/// let policy = RetryPolicy {
///     retry_on: RetryOn::parse("5xx").unwrap(),
///     num_retries: 3,
///     backoff_base: Duration::from_millis(1),
///     ..RetryPolicy::default()
/// };
/// let retried = ServiceBuilder::new()
///     .layer(RetryLayer::new(policy).admission(breaker.retries()))
///     .layer(breaker.layer())
///     .service(failing);
/// let req = http::Request::get("http://a/").body(ReplayBody::new(http_body_util::Empty::<bytes::Bytes>::new()));
/// let rsp = retried.oneshot(req.unwrap()).await.unwrap();
/// assert_eq!(ResponseInfo::of(&rsp).unwrap().attempts, 4);
/// assert_eq!(breaker.stats().active_retries, 0);
/// # }
/// # tokio::runtime::Runtime::new().unwrap().block_on(run());
/// ```
#[derive(Clone, Debug)]
pub struct CircuitBreaker {
    counters: Arc<Counters>,
    limits: Arc<CircuitBreakers>,
}

impl CircuitBreaker {
    /// A breaker with `limits` and nothing in flight.
    pub fn new(limits: CircuitBreakers) -> Self {
        Self {
            counters: Arc::default(),
            limits: Arc::new(limits),
        }
    }

    /// The layer that admits requests through this breaker.
    pub fn layer(&self) -> CircuitBreakerLayer {
        CircuitBreakerLayer {
            breaker: self.clone(),
        }
    }

    /// Admits a [`RetryLayer`](super::RetryLayer)'s retries within `max_retries` (or the
    /// breaker's retry budget, as a share of the requests in flight).
    pub fn retries(&self) -> RetryAdmission {
        RetryAdmission {
            breaker: self.clone(),
        }
    }

    /// What the breaker counts now.
    pub fn stats(&self) -> CircuitBreakerStats {
        let c = &self.counters;
        CircuitBreakerStats {
            active_requests: c.active_requests.load(Ordering::Relaxed),
            active_retries: c.active_retries.load(Ordering::Relaxed),
            request_overflows: c.rq_overflow.load(Ordering::Relaxed),
            retry_overflows: c.retry_overflow.load(Ordering::Relaxed),
        }
    }
}

/// A circuit breaker's counts, as Envoy's stats name them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CircuitBreakerStats {
    /// Requests in flight (`upstream_rq_active`).
    pub active_requests: u32,
    /// Retries in flight.
    pub active_retries: u32,
    /// Requests refused (`upstream_rq_pending_overflow`).
    pub request_overflows: u64,
    /// Retries refused (`upstream_rq_retry_overflow`).
    pub retry_overflows: u64,
}

/// Admits retries within a [`CircuitBreaker`]'s `max_retries`.
#[derive(Clone, Debug)]
pub struct RetryAdmission {
    breaker: CircuitBreaker,
}

/// One retry admitted by a [`CircuitBreaker`], counted until dropped.
#[derive(Debug)]
pub struct RetryPermit(#[allow(dead_code)] RetrySlot);

impl Admission for RetryAdmission {
    type Permit = RetryPermit;

    fn admit(&self) -> Option<RetryPermit> {
        let b = &self.breaker;
        b.counters.try_retry(&b.limits, None).map(RetryPermit)
    }
}

/// Applies a [`CircuitBreaker`] to a service.
#[derive(Clone, Debug)]
pub struct CircuitBreakerLayer {
    breaker: CircuitBreaker,
}

impl<S> tower::Layer<S> for CircuitBreakerLayer {
    type Service = CircuitBreak<S>;

    fn layer(&self, inner: S) -> CircuitBreak<S> {
        CircuitBreak {
            inner,
            breaker: self.breaker.clone(),
        }
    }
}

/// The service of [`CircuitBreakerLayer`].
#[derive(Clone, Debug)]
pub struct CircuitBreak<S> {
    inner: S,
    breaker: CircuitBreaker,
}

impl<S, B, RB> tower::Service<Request<B>> for CircuitBreak<S>
where
    S: tower::Service<Request<B>, Response = Response<RB>>,
    RB: LocalBody,
{
    type Response = Response<Counted<RB>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, RB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let b = &self.breaker;
        if !b.counters.try_request(&b.limits) {
            let info = ResponseInfo {
                flags: ResponseFlags::UPSTREAM_OVERFLOW,
                failure: Some(UpstreamFailure::Overflow),
                ..ResponseInfo::default()
            };
            let grpc = respond::is_grpc(req.headers());
            let why = format!("{RESET_BEFORE_HEADERS}overflow");
            let rsp = respond::local(StatusCode::SERVICE_UNAVAILABLE, why, grpc, info);
            return ResponseFuture {
                state: State::Refused {
                    response: Some(rsp),
                },
            };
        }
        ResponseFuture {
            state: State::Admitted {
                inner: self.inner.call(req),
                inflight: Some(Inflight::new(b.counters.clone())),
            },
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of [`CircuitBreak`].
    pub struct ResponseFuture<F, RB> {
        #[pin]
        state: State<F, RB>,
    }
}

pin_project_lite::pin_project! {
    #[project = StateProj]
    enum State<F, RB> {
        // Admitted: counted until the response body ends.
        Admitted { #[pin] inner: F, inflight: Option<Inflight> },
        // Refused at once.
        Refused { response: Option<Response<Counted<RB>>> },
    }
}

impl<F, RB, E> Future for ResponseFuture<F, RB>
where
    F: Future<Output = Result<Response<RB>, E>>,
{
    type Output = Result<Response<Counted<RB>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Admitted { inner, inflight } => {
                let rsp = ready!(inner.poll(cx))?;
                let inflight = inflight.take();
                Poll::Ready(Ok(rsp.map(|inner| Counted { inner, inflight })))
            }
            StateProj::Refused { response } => {
                Poll::Ready(Ok(response.take().expect("polled after completion")))
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its request counted by a circuit breaker until it ends.
    #[derive(Debug)]
    pub struct Counted<B> {
        #[pin]
        inner: B,
        inflight: Option<Inflight>,
    }
}

impl<B> Counted<B> {
    /// The body counted.
    pub fn into_inner(self) -> B {
        self.inner
    }
}

impl<B: Body> Body for Counted<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        if !matches!(frame, Some(Ok(_))) {
            // Ended (or failed): the request is no longer active.
            this.inflight.take();
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B: LocalBody> LocalBody for Counted<B> {
    fn local(text: bytes::Bytes) -> Self {
        Self {
            inner: B::local(text),
            inflight: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::time::Duration;

    use http_body_util::{BodyExt, Empty};
    use mesh_core::model::{RetryOn, RetryPolicy};
    use tower::{Layer, ServiceBuilder, ServiceExt, service_fn};

    use super::*;
    use crate::body::{BoxError, ReqBody, RspBody};
    use crate::layer::{ReplayBody, RetryLayer};

    fn breaker(max_requests: u32, max_retries: u32) -> CircuitBreaker {
        CircuitBreaker::new(CircuitBreakers {
            max_requests,
            max_retries,
            ..CircuitBreakers::default()
        })
    }

    fn ok() -> impl tower::Service<
        Request<()>,
        Response = Response<RspBody>,
        Error = Infallible,
        Future = impl Send,
    > + Clone {
        service_fn(|_req: Request<()>| async {
            Ok::<_, Infallible>(Response::new(RspBody::full("hello")))
        })
    }

    fn get() -> Request<()> {
        Request::get("http://a/").body(()).unwrap()
    }

    #[tokio::test]
    async fn a_request_counts_until_its_body_ends() {
        let b = breaker(2, 3);
        let svc = b.layer().layer(ok());
        let first = svc.clone().oneshot(get()).await.unwrap();
        let second = svc.clone().oneshot(get()).await.unwrap();
        assert_eq!(b.stats().active_requests, 2);
        let refused = svc.clone().oneshot(get()).await.unwrap();
        assert_eq!(refused.status(), 503);
        let info = ResponseInfo::of(&refused).unwrap();
        assert_eq!(info.failure, Some(UpstreamFailure::Overflow));
        assert_eq!(b.stats().request_overflows, 1);
        // Read to its end: no longer active, though the response still exists.
        let (_parts, body) = second.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        assert_eq!(body, "hello");
        assert_eq!(b.stats().active_requests, 1);
        drop(first);
        assert_eq!(b.stats().active_requests, 0);
        assert_eq!(svc.oneshot(get()).await.unwrap().status(), 200);
    }

    #[tokio::test]
    async fn an_inner_error_frees_its_count() {
        let b = breaker(1, 3);
        let failing = service_fn(|_req: Request<()>| async {
            Err::<Response<RspBody>, BoxError>("connection reset".into())
        });
        let svc = b.layer().layer(failing);
        assert!(svc.clone().oneshot(get()).await.is_err());
        assert_eq!(b.stats().active_requests, 0);
        assert!(svc.oneshot(get()).await.is_err(), "admitted again");
    }

    #[tokio::test(start_paused = true)]
    async fn retries_are_admitted_within_max_retries_and_overflow_is_never_retried() {
        let b = breaker(1, 1);
        let failing = service_fn(|_req: Request<ReqBody>| async {
            let rsp = Response::builder()
                .status(503)
                .body(RspBody::empty())
                .unwrap();
            Ok::<_, Infallible>(rsp)
        });
        let policy = RetryPolicy {
            retry_on: RetryOn::parse("5xx").unwrap(),
            num_retries: 2,
            backoff_base: Duration::from_millis(1),
            ..RetryPolicy::default()
        };
        let svc = ServiceBuilder::new()
            .layer(RetryLayer::new(policy).admission(b.retries()))
            .layer(b.layer())
            .service(failing);
        let post = || {
            Request::post("http://a/")
                .body(ReplayBody::new(Empty::<bytes::Bytes>::new()))
                .unwrap()
        };
        // Another request's retry holds the only slot: this one gets its first answer.
        let held = b.retries().admit().expect("one retry slot");
        let rsp = svc.clone().oneshot(post()).await.unwrap();
        let info = ResponseInfo::of(&rsp).unwrap();
        assert_eq!((info.attempts, info.flags.to_string().as_str()), (1, "UO"));
        assert_eq!(b.stats().retry_overflows, 1);
        // Its response, until dropped, holds the only request slot.
        drop((held, rsp));
        let rsp = svc.clone().oneshot(post()).await.unwrap();
        let info = ResponseInfo::of(&rsp).unwrap();
        assert_eq!((info.attempts, info.flags.to_string().as_str()), (3, "URX"));
        assert_eq!(b.stats().active_retries, 0);
        drop(rsp);
        // The only request slot taken: the breaker's 503 comes back unretried.
        let _busy = b.layer().layer(ok()).oneshot(get()).await.unwrap();
        let rsp = svc.oneshot(post()).await.unwrap();
        let info = ResponseInfo::of(&rsp).unwrap();
        assert_eq!(info.failure, Some(UpstreamFailure::Overflow));
        assert_eq!(info.attempts, 0, "the breaker's own answer");
    }
}
