//! Envoy's outlier detection (passive health checking) for a balancer of your own: each
//! endpoint's service records its outcomes, and while ejected it reports itself not ready,
//! which tower's `p2c::Balance` (and any balancer that polls readiness) takes as "skip it".
//!
//! The rules are Envoy's and [`MeshClient`](crate::MeshClient)'s clusters use the same ones:
//! consecutive 5xx, consecutive gateway failures (502, 503, 504) and consecutive local failures
//! (errors, with `split_external_local_origin_errors`; otherwise they count as 503s) eject at
//! once; success-rate and failure-percentage analysis, and the return of ejected endpoints,
//! happen every `interval`. Ejection time grows with each ejection (`base_ejection_time ×
//! count`, capped by `max_ejection_time`), and at most `max_ejection_percent` of the endpoints
//! are ejected at once.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::Response;
use mesh_core::model::OutlierDetection;
use tokio::time::{Instant, Sleep};

use crate::respond;
use crate::rules::outlier::{self, HostOutlier, Outcome};

/// The outlier detection of one set of endpoints.
///
/// ```
/// # async fn run() {
/// use std::time::Duration;
/// use mesh_core::model::OutlierDetection;
/// use mesh_tower::layer::OutlierDetector;
/// use mesh_tower::RspBody;
/// use tower::{Layer, Service, ServiceExt, service_fn};
///
/// let detector = OutlierDetector::new(OutlierDetection {
///     consecutive_5xx: 2,
///     base_ejection_time: Duration::from_secs(30),
///     max_ejection_percent: 50,
///     ..OutlierDetection::default()
/// });
/// let failing = service_fn(|_req: http::Request<()>| async {
///     let rsp = http::Response::builder().status(503).body(RspBody::empty()).unwrap();
///     Ok::<_, std::convert::Infallible>(rsp)
/// });
/// let healthy = service_fn(|_req: http::Request<()>| async {
///     Ok::<_, std::convert::Infallible>(http::Response::new(RspBody::empty()))
/// });
/// // One service per endpoint; give them to a balancer (tower's p2c::Balance, say).
/// let mut a = detector.layer().layer(failing);
/// let _b = detector.layer().layer(healthy);
/// for _ in 0..2 {
///     a.ready().await.unwrap().call(http::Request::new(())).await.unwrap();
/// }
/// assert_eq!(detector.ejected(), 1);
/// // `a` is not ready for 30 s: a balancer sends to `b`.
/// assert!(tokio::time::timeout(Duration::from_millis(10), a.ready()).await.is_err());
/// # }
/// # tokio::runtime::Runtime::new().unwrap().block_on(run());
/// ```
#[derive(Clone, Debug)]
pub struct OutlierDetector {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    config: OutlierDetection,
    /// The endpoints, for the ejection cap and the interval's analysis.
    endpoints: ArcSwap<Vec<Weak<HostOutlier>>>,
    clock: Instant,
    task: AtomicBool,
}

impl OutlierDetector {
    /// Detection by `config`.
    pub fn new(config: OutlierDetection) -> Self {
        Self {
            shared: Arc::new(Shared {
                config,
                endpoints: ArcSwap::default(),
                clock: Instant::now(),
                task: AtomicBool::new(false),
            }),
        }
    }

    /// A layer whose every service is one more endpoint of this set.
    pub fn layer(&self) -> OutlierDetectionLayer {
        OutlierDetectionLayer {
            shared: self.shared.clone(),
        }
    }

    /// How many endpoints are ejected now.
    pub fn ejected(&self) -> usize {
        self.shared.live().iter().filter(|h| h.is_ejected()).count()
    }
}

impl Shared {
    fn live(&self) -> Vec<Arc<HostOutlier>> {
        self.endpoints
            .load()
            .iter()
            .filter_map(Weak::upgrade)
            .collect()
    }

    fn now_ms(&self) -> u64 {
        self.clock.elapsed().as_millis() as u64 + 1
    }

    /// Records an outcome, ejecting the endpoint when a threshold is crossed and the cap
    /// allows it.
    fn report(&self, host: &HostOutlier, outcome: Outcome) {
        if host.record(&self.config, outcome).is_none() {
            return;
        }
        let live = self.live();
        let ejected = live.iter().filter(|h| h.is_ejected()).count();
        if outlier::may_eject(&self.config, ejected, live.len()) {
            host.eject(&self.config, self.now_ms());
        }
    }

    /// Starts the interval's analysis, once, while the detector lives.
    fn ensure_task(self: &Arc<Self>) {
        if self.task.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak = Arc::downgrade(self);
        let interval = self.config.interval.max(Duration::from_millis(1));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                let Some(shared) = weak.upgrade() else { return };
                let live = shared.live();
                outlier::analyze(&shared.config, live.iter().map(|h| &**h), shared.now_ms());
            }
        });
    }
}

/// Makes a service one endpoint of an [`OutlierDetector`]'s set.
#[derive(Clone, Debug)]
pub struct OutlierDetectionLayer {
    shared: Arc<Shared>,
}

impl<S> tower::Layer<S> for OutlierDetectionLayer {
    type Service = Ejectable<S>;

    fn layer(&self, inner: S) -> Ejectable<S> {
        let host = Arc::new(HostOutlier::default());
        crate::push_live(&self.shared.endpoints, &host);
        Ejectable {
            inner,
            host,
            shared: self.shared.clone(),
            wait: None,
        }
    }
}

/// The service of [`OutlierDetectionLayer`]: one endpoint, not ready while ejected.
#[derive(Debug)]
pub struct Ejectable<S> {
    inner: S,
    host: Arc<HostOutlier>,
    shared: Arc<Shared>,
    wait: Option<Pin<Box<Sleep>>>,
}

impl<S: Clone> Clone for Ejectable<S> {
    /// The same endpoint: clones share its record.
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            host: self.host.clone(),
            shared: self.shared.clone(),
            wait: None,
        }
    }
}

impl<S, Req, RB> tower::Service<Req> for Ejectable<S>
where
    S: tower::Service<Req, Response = Response<RB>>,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.shared.ensure_task();
        loop {
            let until = self.host.ejected_until();
            if until == 0 {
                self.wait = None;
                return self.inner.poll_ready(cx);
            }
            // Ejected: look again when the ejection should be over, and then every interval
            // until the analysis has returned it.
            let now = self.shared.now_ms();
            let after = Duration::from_millis(until.saturating_sub(now))
                .max(self.shared.config.interval.max(Duration::from_millis(1)) / 4);
            let wait = self
                .wait
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(after)));
            ready!(wait.as_mut().poll(cx));
            self.wait = None;
        }
    }

    fn call(&mut self, req: Req) -> Self::Future {
        ResponseFuture {
            inner: self.inner.call(req),
            host: self.host.clone(),
            shared: self.shared.clone(),
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of [`Ejectable`]: records the outcome.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        host: Arc<HostOutlier>,
        shared: Arc<Shared>,
    }
}

impl<F, RB, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<RB>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        let outcome = match &result {
            Ok(rsp) => {
                // A gRPC error in the headers counts as its HTTP equivalent, as in Envoy.
                let status = rsp.status().as_u16();
                let status = match respond::grpc_status(rsp.headers()) {
                    Some(code) if status == 200 => respond::http_status_for_grpc(code),
                    _ => status,
                };
                Outcome::Status(status)
            }
            Err(_) => Outcome::LocalFailure,
        };
        this.shared.report(this.host, outcome);
        Poll::Ready(result)
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::atomic::AtomicU16;

    use tower::{Layer, Service, ServiceExt, service_fn};

    use super::*;
    use crate::body::{BoxError, RspBody};

    fn config() -> OutlierDetection {
        OutlierDetection {
            consecutive_5xx: 3,
            interval: Duration::from_secs(10),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_percent: 50,
            ..OutlierDetection::default()
        }
    }

    /// An endpoint answering `status` (changeable).
    fn endpoint(
        status: Arc<AtomicU16>,
    ) -> impl tower::Service<
        http::Request<()>,
        Response = Response<RspBody>,
        Error = Infallible,
        Future = impl Send,
    > + Clone {
        service_fn(move |_req: http::Request<()>| {
            let s = status.load(Ordering::Relaxed);
            async move {
                Ok(Response::builder()
                    .status(s)
                    .body(RspBody::empty())
                    .unwrap())
            }
        })
    }

    async fn send<S>(svc: &mut S) -> u16
    where
        S: tower::Service<http::Request<()>, Response = Response<RspBody>>,
        S::Error: std::fmt::Debug,
    {
        let rsp = svc
            .ready()
            .await
            .unwrap()
            .call(http::Request::new(()))
            .await
            .unwrap();
        rsp.status().as_u16()
    }

    #[tokio::test(start_paused = true)]
    async fn consecutive_5xx_eject_until_the_interval_after_the_ejection_time() {
        let d = OutlierDetector::new(config());
        let status = Arc::new(AtomicU16::new(503));
        let mut a = d.layer().layer(endpoint(status.clone()));
        let _b = d.layer().layer(endpoint(Arc::new(AtomicU16::new(200))));
        for _ in 0..2 {
            send(&mut a).await;
        }
        assert_eq!(d.ejected(), 0, "two of three");
        send(&mut a).await;
        assert_eq!(d.ejected(), 1);
        status.store(200, Ordering::Relaxed);
        let started = Instant::now();
        assert_eq!(send(&mut a).await, 200, "ready again once returned");
        let waited = started.elapsed();
        // Returned by the first analysis at or after 30 s: the one at 30 s.
        assert!(
            waited >= Duration::from_secs(29) && waited <= Duration::from_secs(41),
            "{waited:?}"
        );
        assert_eq!(d.ejected(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn at_most_max_ejection_percent_are_ejected() {
        let d = OutlierDetector::new(config());
        let failing = Arc::new(AtomicU16::new(500));
        let mut a = d.layer().layer(endpoint(failing.clone()));
        let mut b = d.layer().layer(endpoint(failing));
        for _ in 0..3 {
            send(&mut a).await;
            send(&mut b).await;
        }
        assert_eq!(d.ejected(), 1, "half of two");
    }

    #[tokio::test(start_paused = true)]
    async fn errors_and_grpc_errors_count_and_successes_reset() {
        let d = OutlierDetector::new(config());
        let mut erring = d.layer().layer(service_fn(|_req: http::Request<()>| async {
            Err::<Response<RspBody>, BoxError>("connection refused".into())
        }));
        let _other = d.layer().layer(endpoint(Arc::new(AtomicU16::new(200))));
        for _ in 0..3 {
            let _ = erring
                .ready()
                .await
                .unwrap()
                .call(http::Request::new(()))
                .await;
        }
        assert_eq!(d.ejected(), 1, "local failures count as 503s");

        let d = OutlierDetector::new(config());
        let n = Arc::new(AtomicU16::new(0));
        let seen = n.clone();
        let mut grpc = d.layer().layer(service_fn(move |_req: http::Request<()>| {
            let i = seen.fetch_add(1, Ordering::Relaxed);
            async move {
                // UNAVAILABLE, UNAVAILABLE, OK, then UNAVAILABLE twice: never three in a row.
                let code = if i == 2 { "0" } else { "14" };
                let rsp = Response::builder()
                    .header("grpc-status", code)
                    .body(RspBody::empty())
                    .unwrap();
                Ok::<_, Infallible>(rsp)
            }
        }));
        let _other = d.layer().layer(endpoint(Arc::new(AtomicU16::new(200))));
        for _ in 0..5 {
            send(&mut grpc).await;
        }
        assert_eq!(d.ejected(), 0);
        send(&mut grpc).await;
        assert_eq!(d.ejected(), 1, "the third UNAVAILABLE in a row");
    }
}
