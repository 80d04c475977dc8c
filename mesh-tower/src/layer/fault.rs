//! Fault injection (Envoy's `envoy.filters.http.fault`, Istio's `fault` on an HTTP route).
//!
//! A fault applies when the request's headers match, fewer than `max_active_faults` are
//! active, and the percentage draw hits. The delay runs first, then the abort; an aborted
//! request never reaches the inner service, so it is never retried.
//!
//! Which faults a route has is settled when its configuration arrives: the listener names the
//! fault filters, and a route (or its virtual host, or the chosen weighted cluster) may replace
//! a filter's config or disable it; a fault that names an `upstream_cluster` belongs only to
//! the stacks built for that cluster. The layer gets the result.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::{HeaderValue, Request, Response, StatusCode};
use mesh_core::model::{AbortKind, DelayKind, FaultConfig, RequestView};
use tokio::time::Sleep;

use crate::flags::ResponseFlags;
use crate::respond::{self, LocalBody, ResponseInfo};

/// Injects Envoy's faults (delays and aborts) into requests.
///
/// ```
/// # async fn run() {
/// use std::sync::Arc;
/// use mesh_core::model::{AbortKind, FaultAbort, FaultConfig, Fraction};
/// use mesh_tower::layer::FaultLayer;
/// use mesh_tower::{ResponseInfo, RspBody};
/// use tower::{ServiceBuilder, ServiceExt, service_fn};
///
/// // Istio's `fault.abort: {httpStatus: 503, percentage: {value: 100}}`.
/// let abort = FaultConfig {
///     abort: Some(FaultAbort {
///         kind: AbortKind::Http(http::StatusCode::SERVICE_UNAVAILABLE),
///         fraction: Fraction::ALWAYS,
///     }),
///     ..FaultConfig::default()
/// };
/// let svc = ServiceBuilder::new()
///     .layer(FaultLayer::new([Arc::new(abort)]))
///     .service(service_fn(|_req: http::Request<()>| async {
///         unreachable!("an aborted request never reaches the service");
///         #[allow(unreachable_code)]
///         Ok::<_, std::convert::Infallible>(http::Response::new(RspBody::empty()))
///     }));
/// let rsp = svc.oneshot(http::Request::new(())).await.unwrap();
/// assert_eq!(rsp.status(), 503);
/// assert_eq!(ResponseInfo::of(&rsp).unwrap().flags.to_string(), "FI");
/// # }
/// # tokio::runtime::Runtime::new().unwrap().block_on(run());
/// ```
#[derive(Clone, Debug, Default)]
pub struct FaultLayer {
    faults: Option<Arc<Faults>>,
}

#[derive(Debug)]
struct Faults {
    configs: Box<[Arc<FaultConfig>]>,
    /// Requests with an active fault (`max_active_faults`).
    active: Arc<AtomicU32>,
}

impl FaultLayer {
    /// The faults `configs`, in filter order. A config that names an `upstream_cluster` never
    /// applies here: use [`for_cluster`](Self::for_cluster) to say which cluster the layer
    /// fronts.
    pub fn new(configs: impl IntoIterator<Item = Arc<FaultConfig>>) -> Self {
        Self::for_cluster(configs, None, Arc::default())
    }

    /// The faults of `configs` that apply to requests sent to `cluster` (those that name no
    /// cluster, or name this one), counting active faults in `active`: layers sharing the
    /// counter share `max_active_faults`, as the routes of one Envoy filter do.
    pub fn for_cluster(
        configs: impl IntoIterator<Item = Arc<FaultConfig>>,
        cluster: Option<&str>,
        active: Arc<AtomicU32>,
    ) -> Self {
        let configs: Box<[Arc<FaultConfig>]> = configs
            .into_iter()
            .filter(|c| match c.upstream_cluster.as_deref() {
                None => true,
                Some(named) => cluster == Some(named),
            })
            .filter(|c| c.delay.is_some() || c.abort.is_some())
            .collect();
        Self {
            faults: (!configs.is_empty()).then(|| Arc::new(Faults { configs, active })),
        }
    }
}

impl<S> tower::Layer<S> for FaultLayer {
    type Service = Fault<S>;

    fn layer(&self, inner: S) -> Fault<S> {
        Fault {
            inner,
            faults: self.faults.clone(),
        }
    }
}

/// The service of [`FaultLayer`].
#[derive(Clone, Debug)]
pub struct Fault<S> {
    inner: S,
    faults: Option<Arc<Faults>>,
}

impl<S, B, RB> tower::Service<Request<B>> for Fault<S>
where
    S: tower::Service<Request<B>, Response = Response<RB>> + Clone,
    RB: LocalBody,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = ResponseFuture<S, B, RB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let injection = match &self.faults {
            None => Injection::default(),
            Some(f) => evaluate(&f.configs, &RequestView::from_request(&req), &f.active),
        };
        let state = match injection {
            Injection {
                delay: None,
                abort: None,
                ..
            } => State::Inner {
                fut: self.inner.call(req),
                delay: None,
            },
            Injection {
                delay: None,
                abort: Some(abort),
                ..
            } => State::Aborted {
                rsp: Some(abort_reply(abort, respond::is_grpc(req.headers()), None)),
            },
            Injection {
                delay: Some(delay),
                abort,
                _active,
            } => {
                // The inner service was made ready for this request: keep that one and
                // leave a clone in its place (tower's idiom for calling later).
                let clone = self.inner.clone();
                State::Delayed {
                    delayed: Box::pin(Delayed {
                        sleep: tokio::time::sleep(delay),
                        svc: Some(std::mem::replace(&mut self.inner, clone)),
                        grpc: respond::is_grpc(req.headers()),
                        req: Some(req),
                        abort,
                        delay,
                        _active,
                    }),
                }
            }
        };
        ResponseFuture { state }
    }
}

pin_project_lite::pin_project! {
    /// The future of [`Fault`].
    pub struct ResponseFuture<S, B, RB>
    where
        S: tower::Service<Request<B>>,
    {
        #[pin]
        state: State<S, B, RB>,
    }
}

pin_project_lite::pin_project! {
    #[project = StateProj]
    enum State<S, B, RB>
    where
        S: tower::Service<Request<B>>,
    {
        Inner { #[pin] fut: S::Future, delay: Option<Duration> },
        // Boxed: only a delayed request pays for the room its request takes, not every
        // request's future.
        Delayed { delayed: Pin<Box<Delayed<S, B>>> },
        Aborted { rsp: Option<Response<RB>> },
    }
}

pin_project_lite::pin_project! {
    /// A request held back by an injected delay.
    struct Delayed<S, B> {
        #[pin]
        sleep: Sleep,
        svc: Option<S>,
        req: Option<Request<B>>,
        abort: Option<Abort>,
        delay: Duration,
        grpc: bool,
        // Counts against `max_active_faults` while the request is delayed.
        _active: Option<ActiveFault>,
    }
}

impl<S, B, RB> Future for ResponseFuture<S, B, RB>
where
    S: tower::Service<Request<B>, Response = Response<RB>>,
    RB: LocalBody,
{
    type Output = Result<Response<RB>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            let next = match this.state.as_mut().project() {
                StateProj::Inner { fut, delay } => {
                    let mut rsp = ready!(fut.poll(cx))?;
                    if let Some(d) = *delay {
                        let info = ResponseInfo::of_mut(&mut rsp);
                        info.flags |= ResponseFlags::DELAY_INJECTED;
                        info.fault_delay = Some(d);
                    }
                    return Poll::Ready(Ok(rsp));
                }
                StateProj::Aborted { rsp } => {
                    return Poll::Ready(Ok(rsp.take().expect("polled after completion")));
                }
                StateProj::Delayed { delayed } => {
                    let d = delayed.as_mut().project();
                    ready!(d.sleep.poll(cx));
                    if let Some(a) = d.abort.take() {
                        return Poll::Ready(Ok(abort_reply(a, *d.grpc, Some(*d.delay))));
                    }
                    let mut svc = d.svc.take().expect("polled after completion");
                    let req = d.req.take().expect("polled after completion");
                    State::Inner {
                        fut: svc.call(req),
                        delay: Some(*d.delay),
                    }
                }
            };
            this.state.set(next);
        }
    }
}

/// Envoy's answer to an aborted request.
fn abort_reply<RB: LocalBody>(abort: Abort, grpc: bool, delay: Option<Duration>) -> Response<RB> {
    let mut info = ResponseInfo {
        flags: ResponseFlags::FAULT_INJECTED,
        fault_delay: delay,
        ..ResponseInfo::default()
    };
    if delay.is_some() {
        info.flags |= ResponseFlags::DELAY_INJECTED;
    }
    match abort {
        Abort::Http(status) => respond::local(status, "fault filter abort", grpc, info),
        Abort::Grpc(code) => {
            let mut rsp = respond::local(StatusCode::OK, "fault filter abort", true, info);
            rsp.headers_mut()
                .insert("grpc-status", HeaderValue::from(code));
            rsp
        }
    }
}

/// What to inject into one request.
#[derive(Debug, Default)]
struct Injection {
    delay: Option<Duration>,
    abort: Option<Abort>,
    _active: Option<ActiveFault>,
}

/// The answer to an aborted request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Abort {
    Http(StatusCode),
    Grpc(u32),
}

/// Counts one request with an active fault.
#[derive(Debug)]
struct ActiveFault(Arc<AtomicU32>);

impl Drop for ActiveFault {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Decides the faults for a request.
fn evaluate(
    configs: &[Arc<FaultConfig>],
    req: &RequestView<'_>,
    active: &Arc<AtomicU32>,
) -> Injection {
    let mut out = Injection::default();
    for config in configs {
        if !config.headers.iter().all(|m| m.matches(req)) {
            continue;
        }
        let delay = config.delay.as_ref().and_then(|d| {
            d.fraction.hit(sample()).then_some(())?;
            match d.kind {
                DelayKind::Fixed(t) => Some(t),
                DelayKind::Header => {
                    header_u64(req, "x-envoy-fault-delay-request").map(Duration::from_millis)
                }
            }
        });
        let abort = config.abort.as_ref().and_then(|a| {
            a.fraction.hit(sample()).then_some(())?;
            match a.kind {
                AbortKind::Http(s) => Some(Abort::Http(s)),
                AbortKind::Grpc(c) => Some(Abort::Grpc(c)),
                AbortKind::Header => header_u64(req, "x-envoy-fault-abort-request")
                    .and_then(|c| StatusCode::from_u16(c as u16).ok())
                    .filter(|s| (200..600).contains(&s.as_u16()))
                    .map(Abort::Http)
                    .or_else(|| {
                        header_u64(req, "x-envoy-fault-abort-grpc-request")
                            .map(|c| Abort::Grpc(c as u32))
                    }),
            }
        });
        if delay.is_none() && abort.is_none() {
            continue;
        }
        if out._active.is_none() {
            let max = config.max_active_faults.unwrap_or(u32::MAX);
            if active
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n < max).then(|| n + 1)
                })
                .is_err()
            {
                continue;
            }
            out._active = Some(ActiveFault(active.clone()));
        }
        out.delay = out.delay.or(delay);
        out.abort = out.abort.or(abort);
    }
    out
}

fn sample() -> u32 {
    fastrand::u32(0..1_000_000)
}

fn header_u64(req: &RequestView<'_>, name: &str) -> Option<u64> {
    req.headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_core::model::{FaultAbort, FaultDelay, Fraction};
    use tower::{Layer, ServiceExt, service_fn};

    use crate::RspBody;

    fn abort(code: u16, fraction: Fraction) -> FaultConfig {
        FaultConfig {
            abort: Some(FaultAbort {
                kind: AbortKind::Http(StatusCode::from_u16(code).unwrap()),
                fraction,
            }),
            ..FaultConfig::default()
        }
    }

    fn delay(d: Duration) -> FaultConfig {
        FaultConfig {
            delay: Some(FaultDelay {
                kind: DelayKind::Fixed(d),
                fraction: Fraction::ALWAYS,
            }),
            ..FaultConfig::default()
        }
    }

    fn run(configs: &[FaultConfig], req: &http::Request<()>) -> Injection {
        let configs: Vec<_> = configs.iter().cloned().map(Arc::new).collect();
        evaluate(&configs, &RequestView::from_request(req), &Arc::default())
    }

    #[test]
    fn aborts_and_delays_apply_at_their_percentage() {
        let req = http::Request::get("http://a/").body(()).unwrap();
        assert_eq!(
            run(&[abort(503, Fraction::ALWAYS)], &req).abort,
            Some(Abort::Http(StatusCode::SERVICE_UNAVAILABLE))
        );
        assert_eq!(
            run(&[abort(503, Fraction { per_million: 0 })], &req).abort,
            None
        );
        fastrand::seed(5);
        let half = [abort(503, Fraction::from_percent(50.0))];
        let hits = (0..2000)
            .filter(|_| run(&half, &req).abort.is_some())
            .count();
        assert!((900..1100).contains(&hits), "{hits}");
        let seven = delay(Duration::from_secs(7));
        assert_eq!(run(&[seven], &req).delay, Some(Duration::from_secs(7)));
    }

    #[test]
    fn header_controlled_faults_read_envoy_headers() {
        let req = http::Request::get("http://a/")
            .header("x-envoy-fault-abort-request", "429")
            .header("x-envoy-fault-delay-request", "20")
            .body(())
            .unwrap();
        let f = FaultConfig {
            abort: Some(FaultAbort {
                kind: AbortKind::Header,
                fraction: Fraction::ALWAYS,
            }),
            delay: Some(FaultDelay {
                kind: DelayKind::Header,
                fraction: Fraction::ALWAYS,
            }),
            ..FaultConfig::default()
        };
        let i = run(&[f], &req);
        assert_eq!(i.abort, Some(Abort::Http(StatusCode::TOO_MANY_REQUESTS)));
        assert_eq!(i.delay, Some(Duration::from_millis(20)));
    }

    #[test]
    fn max_active_faults_caps_concurrent_faults() {
        let req = http::Request::get("http://a/").body(()).unwrap();
        let f = [Arc::new(FaultConfig {
            max_active_faults: Some(1),
            ..abort(503, Fraction::ALWAYS)
        })];
        let active = Arc::new(AtomicU32::new(0));
        let view = RequestView::from_request(&req);
        let first = evaluate(&f, &view, &active);
        assert!(first.abort.is_some());
        assert!(evaluate(&f, &view, &active).abort.is_none());
        drop(first);
        assert!(evaluate(&f, &view, &active).abort.is_some());
    }

    #[test]
    fn a_fault_naming_a_cluster_applies_only_to_that_cluster() {
        let named = Arc::new(FaultConfig {
            upstream_cluster: Some("reviews".into()),
            ..abort(503, Fraction::ALWAYS)
        });
        assert!(FaultLayer::new([named.clone()]).faults.is_none());
        let other = FaultLayer::for_cluster([named.clone()], Some("ratings"), Arc::default());
        assert!(other.faults.is_none());
        let same = FaultLayer::for_cluster([named], Some("reviews"), Arc::default());
        assert!(same.faults.is_some());
    }

    /// An upstream that answers 200 and counts its calls.
    fn upstream(
        calls: Arc<AtomicU32>,
    ) -> impl tower::Service<
        http::Request<()>,
        Response = Response<RspBody>,
        Error = std::convert::Infallible,
        Future = impl Send,
    > + Clone {
        service_fn(move |_req: http::Request<()>| {
            calls.fetch_add(1, Ordering::Relaxed);
            async { Ok(Response::new(RspBody::empty())) }
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_delay_holds_the_request_then_sends_it_and_says_so() {
        let calls = Arc::new(AtomicU32::new(0));
        let svc = FaultLayer::new([Arc::new(delay(Duration::from_secs(3)))])
            .layer(upstream(calls.clone()));
        let start = tokio::time::Instant::now();
        let rsp = svc.oneshot(http::Request::new(())).await.unwrap();
        assert_eq!(start.elapsed(), Duration::from_secs(3));
        assert_eq!(
            (rsp.status(), calls.load(Ordering::Relaxed)),
            (StatusCode::OK, 1)
        );
        let info = ResponseInfo::of(&rsp).unwrap();
        assert_eq!(info.flags.to_string(), "DI");
        assert_eq!(info.fault_delay, Some(Duration::from_secs(3)));
    }

    #[tokio::test(start_paused = true)]
    async fn an_abort_after_a_delay_never_reaches_the_service() {
        let calls = Arc::new(AtomicU32::new(0));
        let both = FaultConfig {
            abort: abort(418, Fraction::ALWAYS).abort,
            ..delay(Duration::from_millis(50))
        };
        let svc = FaultLayer::new([Arc::new(both)]).layer(upstream(calls.clone()));
        let rsp = svc.oneshot(http::Request::new(())).await.unwrap();
        assert_eq!(rsp.status(), StatusCode::IM_A_TEAPOT);
        assert_eq!(calls.load(Ordering::Relaxed), 0);
        assert_eq!(ResponseInfo::of(&rsp).unwrap().flags.to_string(), "DI,FI");
    }

    #[tokio::test]
    async fn grpc_aborts_are_trailers_only() {
        let grpc = FaultConfig {
            abort: Some(FaultAbort {
                kind: AbortKind::Grpc(14),
                fraction: Fraction::ALWAYS,
            }),
            ..FaultConfig::default()
        };
        let calls = Arc::new(AtomicU32::new(0));
        let svc = FaultLayer::new([Arc::new(grpc)]).layer(upstream(calls));
        let req = http::Request::post("/pkg.Svc/Call")
            .header("content-type", "application/grpc")
            .body(())
            .unwrap();
        let rsp = svc.oneshot(req).await.unwrap();
        assert_eq!(rsp.status(), StatusCode::OK);
        assert_eq!(rsp.headers()["grpc-status"], "14");
    }
}
