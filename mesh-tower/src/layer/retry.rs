//! Envoy's retries: which outcomes are retried (`retry_on`), how many times (`num_retries`),
//! how long to wait between attempts (jittered exponential backoff), what admits a retry (a
//! budget), and how the request body is sent again.
//!
//! The conditions are Envoy's (and so Istio's `retryOn`): an attempt is retried when its
//! outcome matches a condition, attempts remain, the request allows it
//! (`retriable_request_headers`), the body can be replayed and the admission (a retry budget,
//! a circuit breaker's `max_retries`) lets one more retry go. Otherwise the last attempt's
//! answer is returned, flagged `URX` when the attempts ran out and `UO` when the budget said
//! no.
//!
//! The per-try timeout is not here: it belongs to each attempt, inside this layer (the mesh's
//! attempts apply the policy's `per_try_timeout`; around a plain client, put a timeout layer
//! inside this one and its elapsed error counts as a per-try timeout).
//!
//! Why not `tower::retry`: its policy must decide at once whether to retry, but a retry here
//! can only be decided once the previous attempt has handed the request body back (a large
//! upload may still be streaming when a 503 arrives), and the answer it returns must carry
//! Envoy's flags. The future below is a small state machine, named, with no box.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::{HeaderMap, HeaderValue, Method, Request, Response, Uri, Version};
use mesh_core::model::{RequestView, RetryOn, RetryPolicy};
use tokio::time::Sleep;

use crate::body::{BodySource, BoxError, ReqBody};
use crate::flags::ResponseFlags;
use crate::respond::{self, ResponseInfo, UpstreamFailure};

/// How long a retry waits for the previous attempt to hand the request body back.
const RECLAIM_WAIT: Duration = Duration::from_secs(1);

/// Retries the inner service's attempts by an Envoy retry policy.
///
/// ```
/// # async fn run() {
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicU32, Ordering};
/// use std::time::Duration;
/// use mesh_core::model::{RetryOn, RetryPolicy};
/// use mesh_tower::layer::{ReplayBody, RetryLayer};
/// use mesh_tower::{ResponseInfo, RspBody};
/// use tower::{ServiceBuilder, ServiceExt, service_fn};
///
/// // An upstream that fails twice, then answers.
/// let calls = Arc::new(AtomicU32::new(0));
/// let seen = calls.clone();
/// let flaky = service_fn(move |_req: http::Request<mesh_tower::ReqBody>| {
///     let n = seen.fetch_add(1, Ordering::Relaxed);
///     async move {
///         let status = if n < 2 { 503 } else { 200 };
///         let rsp = http::Response::builder().status(status).body(RspBody::empty()).unwrap();
///         Ok::<_, std::convert::Infallible>(rsp)
///     }
/// });
/// let policy = RetryPolicy {
///     retry_on: RetryOn::parse("5xx").unwrap(),
///     num_retries: 2,
///     backoff_base: Duration::from_millis(1),
///     backoff_max: Duration::from_millis(10),
///     ..RetryPolicy::default()
/// };
/// let svc = ServiceBuilder::new()
///     .layer(RetryLayer::new(policy))
///     .service(flaky);
/// let req = http::Request::post("http://a/").body(ReplayBody::new("order #1".to_string()));
/// let rsp = svc.oneshot(req.unwrap()).await.unwrap();
/// assert_eq!(rsp.status(), 200);
/// assert_eq!(ResponseInfo::of(&rsp).unwrap().attempts, 3);
/// # }
/// # tokio::runtime::Runtime::new().unwrap().block_on(run());
/// ```
#[derive(Clone, Debug)]
pub struct RetryLayer<A = Unlimited> {
    policy: Arc<RetryPolicy>,
    admission: A,
    attempt_count_header: bool,
}

impl RetryLayer {
    /// Retries by `policy`, every retry admitted.
    pub fn new(policy: RetryPolicy) -> Self {
        Self::from_arc(Arc::new(policy))
    }

    /// Retries by a shared `policy`.
    pub fn from_arc(policy: Arc<RetryPolicy>) -> Self {
        Self {
            policy,
            admission: Unlimited,
            attempt_count_header: false,
        }
    }
}

impl<A> RetryLayer<A> {
    /// Admits retries with `admission` (a budget, a circuit breaker's `max_retries`).
    pub fn admission<B: Admission>(self, admission: B) -> RetryLayer<B> {
        RetryLayer {
            policy: self.policy,
            admission,
            attempt_count_header: self.attempt_count_header,
        }
    }

    /// Sends `x-envoy-attempt-count` on each attempt (Envoy's
    /// `include_request_attempt_count`).
    pub fn attempt_count_header(mut self, on: bool) -> Self {
        self.attempt_count_header = on;
        self
    }
}

impl<S, A: Clone> tower::Layer<S> for RetryLayer<A> {
    type Service = Retry<S, A>;

    fn layer(&self, inner: S) -> Retry<S, A> {
        Retry {
            inner,
            policy: self.policy.clone(),
            admission: self.admission.clone(),
            attempt_count_header: self.attempt_count_header,
        }
    }
}

/// What lets a retry go out, checked when one is about to be sent.
pub trait Admission {
    /// Held while the retry is in flight (until its response headers or its failure).
    type Permit: Send + 'static;

    /// Called once for every request (a rate budget deposits here).
    fn request(&self) {}

    /// A permit for one more retry, or `None` to return the last answer instead.
    fn admit(&self) -> Option<Self::Permit>;
}

/// Admits every retry.
#[derive(Clone, Copy, Debug, Default)]
pub struct Unlimited;

impl Admission for Unlimited {
    type Permit = ();

    fn admit(&self) -> Option<()> {
        Some(())
    }
}

/// tower's budgets (`TpsBudget`): every request deposits, every retry withdraws.
impl<B: tower::retry::budget::Budget> Admission for Arc<B> {
    type Permit = ();

    fn request(&self) {
        self.deposit();
    }

    fn admit(&self) -> Option<()> {
        self.withdraw().then_some(())
    }
}

/// A request the retry layer can send more than once.
pub trait Replay {
    /// What one attempt sends.
    type Attempt;

    /// The body of the first attempt.
    fn first(&mut self) -> Self::Attempt;

    /// Polls until the last attempt has handed the body back.
    fn poll_reclaim(&mut self, cx: &mut Context<'_>) -> Poll<()>;

    /// The last attempt did not hand the body back in time: it cannot be sent again.
    fn abandon(&mut self);

    /// Whether, once reclaimed, the body can be sent again (not larger than its recording's
    /// cap, not failed).
    fn replayable(&self) -> bool;

    /// The body of a later attempt, or `None` when it cannot be sent again.
    fn again(&mut self, cx: AttemptContext<'_>) -> Option<Self::Attempt>;

    /// Whether the request may be retried at all.
    fn retriable(&self) -> bool {
        true
    }
}

/// What an attempt knows of the attempts before it.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct AttemptContext<'a> {
    /// 1 for the first attempt.
    pub number: u32,
    /// Hosts already tried, when the policy avoids them (`previous_hosts`).
    pub avoid: &'a [SocketAddr],
}

/// A request body that can be sent again: recorded as the first attempt streams it, up to a
/// cap ([`DEFAULT_REPLAY_CAP`](crate::DEFAULT_REPLAY_CAP) by default); a larger body is sent
/// once and its request is not retried.
#[derive(Debug)]
pub struct ReplayBody(BodySource);

impl ReplayBody {
    /// Records `body` up to the default cap.
    pub fn new<B>(body: B) -> Self
    where
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        Self::with_cap(body, crate::DEFAULT_REPLAY_CAP)
    }

    /// Records `body` up to `cap` bytes.
    pub fn with_cap<B>(body: B, cap: usize) -> Self
    where
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        Self(BodySource::streaming(body, cap))
    }
}

impl Replay for ReplayBody {
    type Attempt = ReqBody;

    fn first(&mut self) -> ReqBody {
        // A body taken in without reading can always be lent once.
        self.0.lend().unwrap_or_default()
    }

    fn poll_reclaim(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        self.0.poll_reclaim(cx)
    }

    fn abandon(&mut self) {
        self.0.abandon();
    }

    fn replayable(&self) -> bool {
        self.0.replayable()
    }

    fn again(&mut self, _cx: AttemptContext<'_>) -> Option<ReqBody> {
        self.0.lend()
    }
}

/// How an inner service's error counts for `retry_on`.
pub trait Classify {
    /// The failure, or `None` for an error no condition retries.
    fn failure(&self) -> Option<UpstreamFailure>;
}

impl Classify for Infallible {
    fn failure(&self) -> Option<UpstreamFailure> {
        match *self {}
    }
}

/// Reads the error's chain: a timeout is a per-try timeout, a refused or unreachable
/// connection a connect failure, anything else from the transport a reset.
impl Classify for BoxError {
    fn failure(&self) -> Option<UpstreamFailure> {
        let mut e: Option<&(dyn std::error::Error + 'static)> = Some(&**self);
        while let Some(err) = e {
            if err.is::<tower::timeout::error::Elapsed>() || err.is::<tokio::time::error::Elapsed>()
            {
                return Some(UpstreamFailure::PerTryTimeout);
            }
            if let Some(io) = err.downcast_ref::<std::io::Error>() {
                use std::io::ErrorKind::*;
                return Some(match io.kind() {
                    ConnectionRefused | AddrNotAvailable | NotFound => {
                        UpstreamFailure::ConnectFailure
                    }
                    TimedOut => UpstreamFailure::PerTryTimeout,
                    _ => UpstreamFailure::Reset,
                });
            }
            e = err.source();
        }
        Some(UpstreamFailure::Reset)
    }
}

impl Classify for hyper::Error {
    fn failure(&self) -> Option<UpstreamFailure> {
        Some(UpstreamFailure::Reset)
    }
}

/// The service of [`RetryLayer`].
#[derive(Clone, Debug)]
pub struct Retry<S, A = Unlimited> {
    inner: S,
    policy: Arc<RetryPolicy>,
    admission: A,
    attempt_count_header: bool,
}

impl<S, A> Retry<S, A> {
    /// The service retried.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// What admits its retries.
    pub fn admission(&self) -> &A {
        &self.admission
    }
}

impl<S, A, R, RB> tower::Service<Request<R>> for Retry<S, A>
where
    R: Replay,
    S: tower::Service<Request<R::Attempt>, Response = Response<RB>> + Clone,
    S::Error: Classify,
    A: Admission + Clone,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = ResponseFuture<S, A, R, RB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<R>) -> Self::Future {
        self.admission.request();
        let (parts, mut body) = req.into_parts();
        let max = if body.retriable() {
            1 + self.policy.num_retries
        } else {
            1
        };
        let mut head = Head {
            method: parts.method,
            uri: parts.uri,
            version: parts.version,
            headers: parts.headers,
            grpc: false,
            attempt_count_header: self.attempt_count_header,
        };
        head.grpc = respond::is_grpc(&head.headers);
        // The service made ready is the one called; later attempts use clones of it.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let first = body.first();
        let mut request = head.request(1, max, first);
        *request.extensions_mut() = parts.extensions;
        let future = inner.call(request);
        ResponseFuture {
            attempt: Some(future),
            rest: Rest {
                inner,
                policy: self.policy.clone(),
                admission: self.admission.clone(),
                head,
                body,
                number: 1,
                max,
                tried: Vec::new(),
                phase: Phase::Running(None),
            },
        }
    }
}

/// The request line and headers every attempt sends again.
#[derive(Debug)]
struct Head {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    grpc: bool,
    attempt_count_header: bool,
}

impl Head {
    /// Attempt `n`'s request: the last one takes the headers, the others copy them.
    fn request<B>(&mut self, n: u32, max: u32, body: B) -> Request<B> {
        let mut headers = if n < max {
            self.headers.clone()
        } else {
            std::mem::take(&mut self.headers)
        };
        mark_attempt(&mut headers, n, self.grpc, self.attempt_count_header);
        let mut req = Request::new(body);
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.version_mut() = self.version;
        *req.headers_mut() = headers;
        req
    }
}

/// The headers that tell an upstream which attempt this is: `x-envoy-attempt-count` when
/// the route asks for it, and (gRFC A6) `grpc-previous-rpc-attempts` on a gRPC retry, so
/// servers (and the interop suite's `succeed-on-retry-attempt-N`) can tell retries apart.
pub(crate) fn mark_attempt(headers: &mut HeaderMap, n: u32, grpc: bool, attempt_count: bool) {
    if attempt_count {
        headers.insert("x-envoy-attempt-count", HeaderValue::from(n));
    }
    if n > 1 && grpc {
        headers.insert("grpc-previous-rpc-attempts", HeaderValue::from(n - 1));
    }
}

pin_project_lite::pin_project! {
    /// The future of [`Retry`].
    pub struct ResponseFuture<S, A, R, RB>
    where
        S: tower::Service<Request<<R as Replay>::Attempt>, Response = Response<RB>>,
        A: Admission,
        R: Replay,
    {
        #[pin]
        attempt: Option<S::Future>,
        rest: Rest<S, A, R, RB>,
    }
}

/// Everything of a retried request but the attempt in flight.
struct Rest<S, A, R, RB>
where
    S: tower::Service<Request<<R as Replay>::Attempt>, Response = Response<RB>>,
    A: Admission,
    R: Replay,
{
    inner: S,
    policy: Arc<RetryPolicy>,
    admission: A,
    head: Head,
    body: R,
    number: u32,
    max: u32,
    tried: Vec<SocketAddr>,
    phase: Phase<Result<Response<RB>, S::Error>, A::Permit>,
}

/// Where a retried request is between attempts. `last` is the previous attempt's answer,
/// returned if no retry goes out.
enum Phase<T, P> {
    /// An attempt is in flight, holding its permit when it is a retry.
    Running(Option<P>),
    /// Waiting for the last attempt to hand the body back.
    Reclaiming { last: T, wait: Pin<Box<Sleep>> },
    /// Waiting out the backoff.
    Backoff { last: T, wait: Pin<Box<Sleep>> },
    /// Waiting for the inner service to be ready for the retry.
    Ready { last: T, permit: P },
}

impl<S, A, R, RB> Future for ResponseFuture<S, A, R, RB>
where
    R: Replay,
    S: tower::Service<Request<R::Attempt>, Response = Response<RB>> + Clone,
    S::Error: Classify,
    A: Admission,
{
    type Output = Result<Response<RB>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let rest = this.rest;
        loop {
            match &mut rest.phase {
                Phase::Running(_) => {
                    let fut = this
                        .attempt
                        .as_mut()
                        .as_pin_mut()
                        .expect("an attempt is in flight while running");
                    let result = ready!(fut.poll(cx));
                    this.attempt.set(None);
                    // The retry's permit is released with its answer.
                    rest.phase = Phase::Running(None);
                    if let Some(last) = rest.after_attempt(result) {
                        return Poll::Ready(last);
                    }
                }
                Phase::Reclaiming { wait, .. } => {
                    if rest.body.poll_reclaim(cx).is_pending() {
                        ready!(wait.as_mut().poll(cx));
                        rest.body.abandon();
                    }
                    let Phase::Reclaiming { last, mut wait } =
                        std::mem::replace(&mut rest.phase, Phase::Running(None))
                    else {
                        unreachable!("matched above")
                    };
                    if !rest.body.replayable() {
                        // Too large to record, or it failed: the last answer stands.
                        return Poll::Ready(last);
                    }
                    let backoff = backoff(&rest.policy, rest.number);
                    wait.as_mut().reset(tokio::time::Instant::now() + backoff);
                    rest.phase = Phase::Backoff { last, wait };
                }
                Phase::Backoff { wait, .. } => {
                    ready!(wait.as_mut().poll(cx));
                    let Phase::Backoff { last, .. } =
                        std::mem::replace(&mut rest.phase, Phase::Running(None))
                    else {
                        unreachable!("matched above")
                    };
                    // The budget counts retries on the wire: a request sleeping in backoff is
                    // no load on the upstream. If the budget says no, the caller gets the
                    // upstream's last answer.
                    match rest.admission.admit() {
                        Some(permit) => rest.phase = Phase::Ready { last, permit },
                        None => {
                            let n = rest.number;
                            return Poll::Ready(flagged(last, ResponseFlags::UPSTREAM_OVERFLOW, n));
                        }
                    }
                }
                Phase::Ready { .. } => {
                    if let Err(e) = ready!(rest.inner.poll_ready(cx)) {
                        return Poll::Ready(Err(e));
                    }
                    let Phase::Ready { last, permit } =
                        std::mem::replace(&mut rest.phase, Phase::Running(None))
                    else {
                        unreachable!("matched above")
                    };
                    rest.number += 1;
                    let n = rest.number;
                    let Some(body) = rest.body.again(AttemptContext {
                        number: n,
                        avoid: &rest.tried,
                    }) else {
                        // Too large to record, or it failed: the last answer stands.
                        return Poll::Ready(last);
                    };
                    drop(last);
                    let req = rest.head.request(n, rest.max, body);
                    this.attempt.set(Some(rest.inner.call(req)));
                    rest.phase = Phase::Running(Some(permit));
                }
            }
        }
    }
}

impl<S, A, R, RB> Rest<S, A, R, RB>
where
    R: Replay,
    S: tower::Service<Request<R::Attempt>, Response = Response<RB>>,
    S::Error: Classify,
    A: Admission,
{
    /// Decides what follows an attempt's answer: `Some` to return it, `None` when a retry is
    /// on its way (the phase is then set).
    fn after_attempt(
        &mut self,
        mut result: Result<Response<RB>, S::Error>,
    ) -> Option<Result<Response<RB>, S::Error>> {
        let n = self.number;
        if n > 1
            && let Ok(rsp) = &mut result
        {
            ResponseInfo::of_mut(rsp).attempts = n;
        }
        if self.max == 1 {
            return Some(result);
        }
        let retriable = match &result {
            Ok(rsp) => {
                let failure = ResponseInfo::of(rsp).and_then(|i| i.failure);
                match failure {
                    Some(f) => failure_retriable(&self.policy, f),
                    None => status_retriable(&self.policy, rsp.status().as_u16(), rsp.headers()),
                }
            }
            Err(e) => e
                .failure()
                .is_some_and(|f| failure_retriable(&self.policy, f)),
        };
        if !retriable {
            return Some(result);
        }
        if n >= self.max {
            return Some(flagged(
                result,
                ResponseFlags::UPSTREAM_RETRY_LIMIT_EXCEEDED,
                n,
            ));
        }
        if self.policy.avoid_previous_hosts
            && let Ok(rsp) = &result
            && let Some(addr) = ResponseInfo::of(rsp).and_then(|i| i.upstream)
        {
            self.tried.push(addr);
        }
        self.phase = Phase::Reclaiming {
            last: result,
            wait: Box::pin(tokio::time::sleep(RECLAIM_WAIT)),
        };
        None
    }
}

/// `result` with `flag` recorded, when it is a response, after `attempts`.
fn flagged<RB, E>(
    mut result: Result<Response<RB>, E>,
    flag: ResponseFlags,
    attempts: u32,
) -> Result<Response<RB>, E> {
    if let Ok(rsp) = &mut result {
        let info = ResponseInfo::of_mut(rsp);
        info.flags |= flag;
        info.attempts = attempts;
    }
    result
}

/// Whether a failure without a response is retriable under `policy`. Envoy retries any reset
/// (and per-try timeout) under `5xx`, `gateway-error` and `reset`.
pub(crate) fn failure_retriable(policy: &RetryPolicy, failure: UpstreamFailure) -> bool {
    let on = policy.retry_on;
    let has = |c: RetryOn| on.contains(c);
    let any_reset = has(RetryOn::FIVE_XX) || has(RetryOn::GATEWAY_ERROR) || has(RetryOn::RESET);
    match failure {
        UpstreamFailure::ConnectFailure => any_reset || has(RetryOn::CONNECT_FAILURE),
        UpstreamFailure::Reset | UpstreamFailure::PerTryTimeout => any_reset,
        UpstreamFailure::RefusedStream => any_reset || has(RetryOn::REFUSED_STREAM),
        // Refused before reaching an upstream: another attempt would meet the same.
        UpstreamFailure::Overflow
        | UpstreamFailure::NoHealthyUpstream
        | UpstreamFailure::NotSent => false,
    }
}

/// Whether an upstream's answer is retriable under `policy`.
pub(crate) fn status_retriable(policy: &RetryPolicy, status: u16, headers: &HeaderMap) -> bool {
    let on = policy.retry_on;
    let has = |c: RetryOn| on.contains(c);
    (has(RetryOn::FIVE_XX) && status >= 500)
        || (has(RetryOn::GATEWAY_ERROR) && matches!(status, 502..=504))
        || (has(RetryOn::RETRIABLE_4XX) && status == 409)
        || (has(RetryOn::RETRIABLE_STATUS_CODES) && policy.retriable_status_codes.contains(&status))
        || (has(RetryOn::RETRIABLE_HEADERS) && retriable_headers(policy, headers))
        || grpc_retriable(on, headers)
}

fn retriable_headers(policy: &RetryPolicy, headers: &HeaderMap) -> bool {
    if policy.retriable_headers.is_empty() {
        return false;
    }
    let view = RequestView::of_headers(headers);
    policy.retriable_headers.iter().any(|m| m.matches(&view))
}

/// gRPC conditions read `grpc-status` from the response headers, where a trailers-only
/// response (the usual shape of a gRPC error) carries it.
fn grpc_retriable(on: RetryOn, headers: &HeaderMap) -> bool {
    let Some(code) = respond::grpc_status(headers) else {
        return false;
    };
    let cond = match code {
        1 => RetryOn::GRPC_CANCELLED,
        4 => RetryOn::GRPC_DEADLINE_EXCEEDED,
        8 => RetryOn::GRPC_RESOURCE_EXHAUSTED,
        13 => RetryOn::GRPC_INTERNAL,
        14 => RetryOn::GRPC_UNAVAILABLE,
        _ => return false,
    };
    on.contains(cond)
}

/// Whether the request may be retried at all (`retriable_request_headers`).
pub(crate) fn request_allows(policy: &RetryPolicy, req: &RequestView<'_>) -> bool {
    policy.retriable_request_headers.is_empty()
        || policy
            .retriable_request_headers
            .iter()
            .any(|m| m.matches(req))
}

/// Envoy's jittered exponential backoff before retry `n` (1 for the first retry): a uniform
/// wait in `[0, min(base × 2^(n-1), max))`.
pub(crate) fn backoff(policy: &RetryPolicy, n: u32) -> Duration {
    let base = policy.backoff_base.as_millis().max(1) as u64;
    let max = policy.backoff_max.as_millis().max(1) as u64;
    let ceiling = base
        .saturating_mul(1u64 << (n.saturating_sub(1)).min(32))
        .min(max);
    Duration::from_millis(fastrand::u64(0..ceiling.max(1)))
}

#[cfg(test)]
// The tests' upstreams record what they saw; no data path here.
#[allow(clippy::disallowed_types)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU32, Ordering};

    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use tower::{Layer, ServiceBuilder, ServiceExt, service_fn};

    use super::*;
    use crate::body::RspBody;

    fn policy(on: &str) -> RetryPolicy {
        RetryPolicy {
            retry_on: RetryOn::parse(on).unwrap(),
            num_retries: 2,
            retriable_status_codes: Box::new([418]),
            backoff_base: Duration::from_millis(25),
            backoff_max: Duration::from_millis(250),
            ..RetryPolicy::default()
        }
    }

    #[test]
    fn envoy_conditions() {
        let h = HeaderMap::new();
        let status = |p: &str, s: u16| status_retriable(&policy(p), s, &h);
        let failure = |p: &str, f| failure_retriable(&policy(p), f);
        assert!(status("5xx", 500));
        assert!(failure("5xx", UpstreamFailure::ConnectFailure));
        assert!(failure("5xx", UpstreamFailure::PerTryTimeout));
        assert!(!status("5xx", 404));
        assert!(status("gateway-error", 503));
        assert!(!status("gateway-error", 500));
        assert!(failure("connect-failure", UpstreamFailure::ConnectFailure));
        assert!(!failure("connect-failure", UpstreamFailure::Reset));
        assert!(!status("connect-failure", 503));
        assert!(failure("reset", UpstreamFailure::Reset));
        assert!(failure("refused-stream", UpstreamFailure::RefusedStream));
        assert!(!failure("refused-stream", UpstreamFailure::Reset));
        assert!(status("retriable-4xx", 409));
        assert!(status("retriable-status-codes", 418));
        assert!(!status("retriable-status-codes", 503));
    }

    #[test]
    fn grpc_conditions_read_grpc_status() {
        let mut h = HeaderMap::new();
        h.insert("grpc-status", "14".parse().unwrap());
        assert!(status_retriable(&policy("unavailable"), 200, &h));
        assert!(!status_retriable(&policy("cancelled"), 200, &h));
        h.insert("grpc-status", "1".parse().unwrap());
        assert!(status_retriable(&policy("cancelled"), 200, &h));
    }

    #[test]
    fn backoff_is_jittered_and_capped() {
        let p = policy("5xx");
        for n in 1..10 {
            let ceiling = (25u64 << (n - 1)).min(250);
            for _ in 0..50 {
                assert!(backoff(&p, n) < Duration::from_millis(ceiling));
            }
        }
    }

    /// What the upstream saw of each attempt.
    #[derive(Debug, Default)]
    struct Seen {
        bodies: Vec<Bytes>,
        headers: Vec<HeaderMap>,
    }

    /// An upstream that reads each attempt's body and answers with `statuses` in turn (the
    /// last one repeated).
    fn upstream(
        statuses: &'static [u16],
        seen: Arc<Mutex<Seen>>,
    ) -> impl tower::Service<
        Request<ReqBody>,
        Response = Response<RspBody>,
        Error = Infallible,
        Future = impl Send,
    > + Clone {
        let n = Arc::new(AtomicU32::new(0));
        service_fn(move |req: Request<ReqBody>| {
            let i = n.fetch_add(1, Ordering::Relaxed) as usize;
            let seen = seen.clone();
            async move {
                let (parts, body) = req.into_parts();
                let bytes = body.collect().await.unwrap().to_bytes();
                let mut s = seen.lock().unwrap();
                s.bodies.push(bytes);
                s.headers.push(parts.headers);
                let status = statuses[i.min(statuses.len() - 1)];
                let rsp = Response::builder().status(status).body(RspBody::empty());
                Ok(rsp.unwrap())
            }
        })
    }

    fn post(body: &'static str) -> Request<ReplayBody> {
        Request::post("http://a/")
            .body(ReplayBody::new(Full::new(Bytes::from_static(
                body.as_bytes(),
            ))))
            .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn retries_until_an_answer_is_not_retriable_replaying_the_body() {
        let seen = Arc::default();
        let svc = RetryLayer::new(policy("5xx"))
            .attempt_count_header(true)
            .layer(upstream(&[503, 502, 200], Arc::clone(&seen)));
        let rsp = svc.oneshot(post("order")).await.unwrap();
        assert_eq!(rsp.status(), 200);
        let info = ResponseInfo::of(&rsp).unwrap();
        assert_eq!(info.attempts, 3);
        assert!(info.flags.is_empty(), "{}", info.flags);
        let seen = seen.lock().unwrap();
        assert_eq!(
            seen.bodies, ["order"; 3],
            "every attempt sends the whole body"
        );
        let counts: Vec<_> = seen
            .headers
            .iter()
            .map(|h| h["x-envoy-attempt-count"].to_str().unwrap().to_owned())
            .collect();
        assert_eq!(counts, ["1", "2", "3"]);
    }

    #[tokio::test(start_paused = true)]
    async fn attempts_run_out_with_urx_and_the_last_answer() {
        let seen = Arc::default();
        let svc = RetryLayer::new(policy("5xx")).layer(upstream(&[503], Arc::clone(&seen)));
        let rsp = svc.oneshot(post("x")).await.unwrap();
        assert_eq!(rsp.status(), 503);
        let info = ResponseInfo::of(&rsp).unwrap();
        assert_eq!((info.attempts, info.flags.to_string().as_str()), (3, "URX"));
        assert_eq!(seen.lock().unwrap().bodies.len(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_no_condition_names_is_returned_at_once() {
        let seen = Arc::default();
        let svc =
            RetryLayer::new(policy("gateway-error")).layer(upstream(&[500], Arc::clone(&seen)));
        let rsp = svc.oneshot(post("x")).await.unwrap();
        assert_eq!(rsp.status(), 500);
        assert!(
            ResponseInfo::of(&rsp).is_none(),
            "one attempt, nothing to report"
        );
        assert_eq!(seen.lock().unwrap().bodies.len(), 1);
    }

    /// Admits `left` retries.
    #[derive(Clone)]
    struct Admit(Arc<AtomicU32>);

    impl Admission for Admit {
        type Permit = ();
        fn admit(&self) -> Option<()> {
            self.0
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
                .ok()
                .map(drop)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_retry_returns_the_last_answer_flagged_uo() {
        let seen = Arc::default();
        let svc = RetryLayer::new(policy("5xx"))
            .admission(Admit(Arc::new(AtomicU32::new(1))))
            .layer(upstream(&[503], Arc::clone(&seen)));
        let rsp = svc.oneshot(post("x")).await.unwrap();
        assert_eq!(rsp.status(), 503);
        let info = ResponseInfo::of(&rsp).unwrap();
        assert_eq!((info.attempts, info.flags.to_string().as_str()), (2, "UO"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_larger_than_the_cap_is_sent_once() {
        let seen = Arc::default();
        let svc = RetryLayer::new(policy("5xx")).layer(upstream(&[503, 200], Arc::clone(&seen)));
        let big = Request::post("http://a/")
            .body(ReplayBody::with_cap(
                Full::new(Bytes::from(vec![7u8; 100])),
                10,
            ))
            .unwrap();
        let rsp = svc.oneshot(big).await.unwrap();
        assert_eq!(rsp.status(), 503, "the only attempt's answer");
        assert_eq!(seen.lock().unwrap().bodies[0].len(), 100);
        assert_eq!(seen.lock().unwrap().bodies.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_never_handed_back_is_not_sent_again() {
        // The upstream answers at once and keeps the request body (a large upload still
        // streaming): after a second's wait the retry gives up and the answer stands.
        let kept = Arc::new(Mutex::new(Vec::new()));
        let keeper = kept.clone();
        let calls = Arc::new(AtomicU32::new(0));
        let counted = calls.clone();
        let svc = RetryLayer::new(policy("5xx")).layer(service_fn(move |req: Request<ReqBody>| {
            keeper.lock().unwrap().push(req.into_body());
            counted.fetch_add(1, Ordering::Relaxed);
            async {
                Ok::<_, Infallible>(
                    Response::builder()
                        .status(503)
                        .body(RspBody::empty())
                        .unwrap(),
                )
            }
        }));
        let started = tokio::time::Instant::now();
        let rsp = svc.oneshot(post("x")).await.unwrap();
        assert_eq!(rsp.status(), 503);
        assert_eq!(calls.load(Ordering::Relaxed), 1);
        assert_eq!(started.elapsed(), RECLAIM_WAIT);
    }

    #[tokio::test(start_paused = true)]
    async fn errors_are_classified_for_retry_on() {
        let calls = Arc::new(AtomicU32::new(0));
        let counted = calls.clone();
        let refused = service_fn(move |_req: Request<ReqBody>| {
            counted.fetch_add(1, Ordering::Relaxed);
            async {
                let e = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
                Err::<Response<RspBody>, BoxError>(e.into())
            }
        });
        let svc = ServiceBuilder::new()
            .layer(RetryLayer::new(policy("connect-failure")))
            .service(refused.clone());
        assert!(svc.oneshot(post("x")).await.is_err());
        assert_eq!(
            calls.load(Ordering::Relaxed),
            3,
            "connect failures are retried"
        );
        calls.store(0, Ordering::Relaxed);
        let svc =
            RetryLayer::new(policy("reset")).layer(service_fn(|_req: Request<ReqBody>| async {
                Err::<Response<RspBody>, BoxError>("bad request line".into())
            }));
        assert!(svc.oneshot(post("x")).await.is_err());
        let svc = RetryLayer::new(policy("retriable-4xx")).layer(refused);
        assert!(svc.oneshot(post("x")).await.is_err());
        assert_eq!(calls.load(Ordering::Relaxed), 1, "409s only");
    }

    #[tokio::test(start_paused = true)]
    async fn local_replies_are_retried_by_their_failure() {
        // The mesh's own attempts answer a failure with a local reply that names it.
        let calls = Arc::new(AtomicU32::new(0));
        let counted = calls.clone();
        let attempts = service_fn(move |_req: Request<ReqBody>| {
            let n = counted.fetch_add(1, Ordering::Relaxed);
            async move {
                let mut rsp = Response::builder()
                    .status(503)
                    .body(RspBody::empty())
                    .unwrap();
                if n == 0 {
                    ResponseInfo::of_mut(&mut rsp).failure = Some(UpstreamFailure::RefusedStream);
                }
                Ok::<_, Infallible>(rsp)
            }
        });
        let svc = RetryLayer::new(policy("refused-stream")).layer(attempts);
        let rsp = svc.oneshot(post("x")).await.unwrap();
        assert_eq!(ResponseInfo::of(&rsp).unwrap().attempts, 2);
        assert_eq!(
            calls.load(Ordering::Relaxed),
            2,
            "a plain 503 is not a refused stream"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_circuit_breakers_503_is_not_an_upstreams_503() {
        // Istio's default policy retries upstream 503s; Envoy never retries its own overflow
        // or a missing host, which would only meet the same limit again.
        for failure in [
            UpstreamFailure::Overflow,
            UpstreamFailure::NoHealthyUpstream,
        ] {
            let calls = Arc::new(AtomicU32::new(0));
            let counted = calls.clone();
            let attempts = service_fn(move |_req: Request<ReqBody>| {
                counted.fetch_add(1, Ordering::Relaxed);
                async move {
                    let mut rsp = Response::builder()
                        .status(503)
                        .body(RspBody::empty())
                        .unwrap();
                    ResponseInfo::of_mut(&mut rsp).failure = Some(failure);
                    Ok::<_, Infallible>(rsp)
                }
            });
            let p = RetryPolicy {
                retriable_status_codes: Box::new([503]),
                ..policy("5xx,retriable-status-codes,reset,connect-failure")
            };
            let rsp = RetryLayer::new(p)
                .layer(attempts)
                .oneshot(post("x"))
                .await
                .unwrap();
            assert_eq!(rsp.status(), 503);
            assert_eq!(calls.load(Ordering::Relaxed), 1, "{failure:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn grpc_retries_count_previous_attempts() {
        let seen = Arc::default();
        let svc = RetryLayer::new(policy("5xx")).layer(upstream(&[503, 200], Arc::clone(&seen)));
        let req = Request::post("http://a/pkg.Svc/Call")
            .header("content-type", "application/grpc")
            .body(ReplayBody::new(Full::new(Bytes::from_static(b"m"))))
            .unwrap();
        svc.oneshot(req).await.unwrap();
        let seen = seen.lock().unwrap();
        assert!(!seen.headers[0].contains_key("grpc-previous-rpc-attempts"));
        assert_eq!(seen.headers[1]["grpc-previous-rpc-attempts"], "1");
    }

    /// A request that records which hosts each attempt was told to avoid.
    struct Tracked(Arc<Mutex<Vec<Vec<SocketAddr>>>>, bool);

    impl Replay for Tracked {
        type Attempt = ();
        fn first(&mut self) {
            self.0.lock().unwrap().push(Vec::new());
        }
        fn poll_reclaim(&mut self, _cx: &mut Context<'_>) -> Poll<()> {
            Poll::Ready(())
        }
        fn abandon(&mut self) {}
        fn replayable(&self) -> bool {
            true
        }
        fn again(&mut self, cx: AttemptContext<'_>) -> Option<()> {
            self.0.lock().unwrap().push(cx.avoid.to_vec());
            Some(())
        }
        fn retriable(&self) -> bool {
            self.1
        }
    }

    #[tokio::test(start_paused = true)]
    async fn previous_hosts_are_passed_on_and_a_request_may_opt_out() {
        let hosts = Arc::new(AtomicU32::new(0));
        let attempts = service_fn(move |_req: Request<()>| {
            let port = 1 + hosts.fetch_add(1, Ordering::Relaxed) as u16;
            async move {
                let mut rsp = Response::builder()
                    .status(503)
                    .body(RspBody::empty())
                    .unwrap();
                ResponseInfo::of_mut(&mut rsp).upstream = Some(([10, 0, 0, 1], port).into());
                Ok::<_, Infallible>(rsp)
            }
        });
        let p = RetryPolicy {
            avoid_previous_hosts: true,
            ..policy("5xx")
        };
        let avoided = Arc::new(Mutex::new(Vec::new()));
        let req = Request::new(Tracked(avoided.clone(), true));
        RetryLayer::new(p.clone())
            .layer(attempts.clone())
            .oneshot(req)
            .await
            .unwrap();
        let a: SocketAddr = ([10, 0, 0, 1], 1).into();
        let b: SocketAddr = ([10, 0, 0, 1], 2).into();
        assert_eq!(*avoided.lock().unwrap(), [vec![], vec![a], vec![a, b]]);
        avoided.lock().unwrap().clear();
        let req = Request::new(Tracked(avoided.clone(), false));
        RetryLayer::new(p)
            .layer(attempts)
            .oneshot(req)
            .await
            .unwrap();
        assert_eq!(
            avoided.lock().unwrap().len(),
            1,
            "not retriable: one attempt"
        );
    }
}
