//! Load balancing over endpoints of your own, with Envoy's policies: weighted round robin,
//! least request, random, ring hash and Maglev, over priorities with Envoy's
//! overprovisioning factor and panic threshold.
//!
//! The picker is the one [`MeshClient`](crate::MeshClient)'s clusters use: a table built once
//! over the endpoints, so a pick is arithmetic over immutable arrays (one atomic increment for
//! round robin), with no lock and no allocation. tower's `p2c::Balance` knows only
//! least-loaded choice among ready services; Envoy's policies also need weights, hashes and
//! priorities.

use std::future::{Future, Ready};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll, ready};

use futures_util::future::Either;
use http::{Request, Response, StatusCode};
use mesh_core::model::{HealthStatus, LbPolicy};
use tower::util::Oneshot;
use tower::{Service, ServiceExt};

use crate::flags::ResponseFlags;
use crate::respond::{self, LocalBody, ResponseInfo, UpstreamFailure};
use crate::rules::balance::{Balanced, HostEntry, LbTable, PickContext, TableConfig};

/// One endpoint of a [`LoadBalancer`]: a service, its key, and what an endpoint list (EDS)
/// says about it.
#[derive(Clone, Debug)]
pub struct Endpoint<S> {
    service: S,
    key: Box<str>,
    weight: u32,
    priority: u32,
    healthy: bool,
}

impl<S> Endpoint<S> {
    /// The endpoint `key` (its address, say `10.0.0.7:9080`: ring hash and Maglev place it by
    /// this text, as Envoy places a host by its address), served by `service`: weight 1,
    /// priority 0, healthy.
    pub fn new(key: impl Into<Box<str>>, service: S) -> Self {
        Self {
            service,
            key: key.into(),
            weight: 1,
            priority: 0,
            healthy: true,
        }
    }

    /// Its load balancing weight (0 counts as 1, as in Envoy).
    pub fn weight(mut self, weight: u32) -> Self {
        self.weight = weight;
        self
    }

    /// Its priority: 0 takes the load first; lower priorities (higher numbers) take what
    /// the healthy share of the ones above cannot.
    pub fn priority(mut self, priority: u32) -> Self {
        self.priority = priority;
        self
    }

    /// Marks it unhealthy (EDS `health_status`): skipped unless the balancer is in panic.
    pub fn unhealthy(mut self) -> Self {
        self.healthy = false;
        self
    }
}

/// The hash ring hash and Maglev place a request by: insert it as a request extension (Envoy
/// computes it from the route's hash policies: a header, a cookie, the source address). A
/// request without one lands on a random position.
///
/// The ring spans every 64-bit value, so the hash must too: make it with
/// [`RequestHash::of`] (xxHash64, as Envoy hashes a header's value), not from a small number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestHash(pub u64);

impl RequestHash {
    /// The hash of `key` (a header's value, a user id...) as Envoy's hash policies compute it.
    pub fn of(key: impl AsRef<[u8]>) -> Self {
        Self(crate::rules::balance::hash_key(key.as_ref()))
    }
}

/// Sends each request to one endpoint, picked by an Envoy load balancing policy.
///
/// Endpoints are driven to readiness when called (the chosen endpoint's service is cloned
/// and called with `oneshot`, as hyper's pooled client is), so the balancer itself is always
/// ready. When no endpoint can be picked it answers Envoy's 503 `no healthy upstream` (flag
/// `UH`). A balancer is a snapshot, cheap to build and to clone: build a new one when the
/// endpoints or their health change, as [`MeshClient`](crate::MeshClient) rebuilds its
/// cluster's table on an EDS update or an ejection.
///
/// ```
/// # async fn run() {
/// use mesh_core::model::LbPolicy;
/// use mesh_tower::layer::balance::{Endpoint, LoadBalancer, RequestHash};
/// use tower::{ServiceExt, service_fn};
///
/// let server = |name: &'static str| {
///     service_fn(move |_req: http::Request<()>| async move {
///         let rsp = http::Response::builder().header("x-endpoint", name);
///         Ok::<_, std::convert::Infallible>(rsp.body(http_body_util::Full::default()).unwrap())
///     })
/// };
/// let ring = LbPolicy::RingHash { min_ring_size: 1024, max_ring_size: 8192 };
/// let lb = LoadBalancer::new(ring, [
///     Endpoint::new("10.0.0.1:9080", server("a")),
///     Endpoint::new("10.0.0.2:9080", server("b")),
///     Endpoint::new("10.0.0.3:9080", server("c")).weight(2),
/// ]);
/// // The same hash (of a user id, say) always reaches the same endpoint.
/// let endpoint_for = |user: &str| {
///     let mut req = http::Request::new(());
///     req.extensions_mut().insert(RequestHash::of(user));
///     let lb = lb.clone();
///     async move { lb.oneshot(req).await.unwrap().headers()["x-endpoint"].clone() }
/// };
/// let first = endpoint_for("jason").await;
/// for _ in 0..10 {
///     assert_eq!(endpoint_for("jason").await, first);
/// }
/// # }
/// # tokio::runtime::Runtime::new().unwrap().block_on(run());
/// ```
#[derive(Debug)]
pub struct LoadBalancer<S> {
    shared: Arc<Shared<S>>,
}

impl<S> Clone for LoadBalancer<S> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

#[derive(Debug)]
struct Shared<S> {
    policy: LbPolicy,
    entries: Box<[HostEntry<Member<S>>]>,
    table: LbTable,
}

/// An endpoint as the table sees it.
#[derive(Debug)]
struct Member<S> {
    service: S,
    key: Box<str>,
    /// Requests in flight, for least request.
    active: Arc<AtomicU32>,
}

impl<S> Balanced for Member<S> {
    fn ring_key(&self) -> &str {
        &self.key
    }

    fn active_requests(&self) -> u32 {
        self.active.load(Ordering::Relaxed)
    }

    fn is_ejected(&self) -> bool {
        false
    }
}

/// Envoy's defaults (`overprovisioning_factor`, `healthy_panic_threshold`).
const OVERPROVISIONING: u32 = 140;
const PANIC_THRESHOLD_PERCENT: f64 = 50.0;

impl<S> LoadBalancer<S> {
    /// Balances over `endpoints` by `policy`.
    pub fn new(policy: LbPolicy, endpoints: impl IntoIterator<Item = Endpoint<S>>) -> Self {
        let entries: Box<[HostEntry<Member<S>>]> = endpoints
            .into_iter()
            .map(|e| HostEntry {
                host: Member {
                    service: e.service,
                    key: e.key,
                    active: Arc::default(),
                },
                weight: e.weight,
                health: if e.healthy {
                    HealthStatus::Healthy
                } else {
                    HealthStatus::Unhealthy
                },
                priority: e.priority,
                locality: 0,
                locality_weight: None,
            })
            .collect();
        let table = LbTable::build(
            &entries,
            TableConfig {
                policy: &policy,
                overprovisioning_factor: OVERPROVISIONING,
                panic_threshold_percent: PANIC_THRESHOLD_PERCENT,
                locality_weighted: false,
            },
        );
        Self {
            shared: Arc::new(Shared {
                policy,
                entries,
                table,
            }),
        }
    }

    /// Whether too few endpoints are healthy, so that every endpoint is used (Envoy's panic
    /// mode).
    pub fn in_panic(&self) -> bool {
        self.shared.table.in_panic()
    }
}

impl<S, B, RB> Service<Request<B>> for LoadBalancer<S>
where
    S: Service<Request<B>, Response = Response<RB>> + Clone,
    RB: LocalBody,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = Either<Ready<Result<Response<RB>, S::Error>>, Active<Oneshot<S, Request<B>>>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let shared = &*self.shared;
        let pick = PickContext {
            hash: req.extensions().get::<RequestHash>().map(|h| h.0),
            ..PickContext::default()
        };
        let Some(i) = shared.table.pick(&shared.entries, &shared.policy, pick) else {
            let grpc = respond::is_grpc(req.headers());
            let info = ResponseInfo {
                flags: ResponseFlags::NO_HEALTHY_UPSTREAM,
                failure: Some(UpstreamFailure::NoHealthyUpstream),
                ..ResponseInfo::default()
            };
            let rsp = respond::local(
                StatusCode::SERVICE_UNAVAILABLE,
                "no healthy upstream",
                grpc,
                info,
            );
            return Either::Left(std::future::ready(Ok(rsp)));
        };
        let member = &shared.entries[i as usize].host;
        member.active.fetch_add(1, Ordering::Relaxed);
        Either::Right(Active {
            inner: member.service.clone().oneshot(req),
            active: Some(member.active.clone()),
        })
    }
}

pin_project_lite::pin_project! {
    /// The future of [`LoadBalancer`]: the request counts as active on its endpoint until
    /// the response (or error) comes back, or the caller gives up.
    pub struct Active<F> {
        #[pin]
        inner: F,
        active: Option<Arc<AtomicU32>>,
    }

    impl<F> PinnedDrop for Active<F> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(active) = this.project().active.take() {
                active.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}

impl<F: Future> Future for Active<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let out = ready!(this.inner.poll(cx));
        if let Some(active) = this.active.take() {
            active.fetch_sub(1, Ordering::Relaxed);
        }
        Poll::Ready(out)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::convert::Infallible;

    use tokio::sync::Notify;
    use tower::service_fn;

    use super::*;
    use crate::body::RspBody;

    type Svc = tower::util::BoxCloneService<Request<()>, Response<RspBody>, Infallible>;

    /// An endpoint that answers with its name.
    fn named(name: &'static str) -> Svc {
        tower::util::BoxCloneService::new(service_fn(move |_req: Request<()>| async move {
            Ok(Response::new(RspBody::full(name)))
        }))
    }

    async fn name_of(rsp: Response<RspBody>) -> String {
        use http_body_util::BodyExt;
        let b = rsp.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(b.to_vec()).unwrap()
    }

    async fn tally(lb: &LoadBalancer<Svc>, n: usize) -> HashMap<String, usize> {
        let mut out = HashMap::new();
        for _ in 0..n {
            let rsp = lb.clone().oneshot(Request::new(())).await.unwrap();
            *out.entry(name_of(rsp).await).or_default() += 1;
        }
        out
    }

    #[tokio::test]
    async fn weighted_round_robin_gives_each_endpoint_its_weight() {
        let lb = LoadBalancer::new(
            LbPolicy::RoundRobin,
            [
                Endpoint::new("a:1", named("a")),
                Endpoint::new("b:1", named("b")).weight(3),
            ],
        );
        let t = tally(&lb, 400).await;
        assert_eq!((t["a"], t["b"]), (100, 300));
    }

    #[tokio::test]
    async fn priorities_and_health_as_envoy_spreads_them() {
        // Priority 0 has one healthy endpoint of two: health 50 % × 1.4 = 70 % of the load;
        // priority 1 takes the other 30 %. The unhealthy endpoint gets nothing.
        let lb = LoadBalancer::new(
            LbPolicy::Random,
            [
                Endpoint::new("a:1", named("a")),
                Endpoint::new("sick:1", named("sick")).unhealthy(),
                Endpoint::new("backup:1", named("backup")).priority(1),
            ],
        );
        assert!(!lb.in_panic());
        let t = tally(&lb, 2000).await;
        assert!(!t.contains_key("sick"), "{t:?}");
        let backup = t["backup"] as f64 / 2000.0;
        assert!((0.25..0.35).contains(&backup), "backup share {backup}");

        // Every endpoint unhealthy: panic, and every one is used.
        let lb = LoadBalancer::new(
            LbPolicy::RoundRobin,
            [
                Endpoint::new("a:1", named("a")).unhealthy(),
                Endpoint::new("b:1", named("b")).unhealthy(),
            ],
        );
        assert!(lb.in_panic());
        assert_eq!(tally(&lb, 10).await.len(), 2);
    }

    #[tokio::test]
    async fn ring_hash_and_maglev_keep_a_hash_on_one_endpoint() {
        for policy in [
            LbPolicy::RingHash {
                min_ring_size: 1024,
                max_ring_size: 8192,
            },
            LbPolicy::Maglev { table_size: 65537 },
        ] {
            let lb = LoadBalancer::new(
                policy.clone(),
                ["a", "b", "c", "d"].map(|n| Endpoint::new(format!("10.0.0.{n}:80"), named(n))),
            );
            let mut seen = std::collections::HashSet::new();
            for user in 0..64u64 {
                let send = || {
                    let mut req = Request::new(());
                    req.extensions_mut()
                        .insert(RequestHash::of(user.to_le_bytes()));
                    lb.clone().oneshot(req)
                };
                let first = name_of(send().await.unwrap()).await;
                for _ in 0..3 {
                    assert_eq!(name_of(send().await.unwrap()).await, first, "{policy:?}");
                }
                seen.insert(first);
            }
            assert_eq!(
                seen.len(),
                4,
                "64 hashes spread over every endpoint: {policy:?}"
            );
        }
    }

    #[tokio::test]
    async fn least_request_avoids_the_endpoint_with_requests_in_flight() {
        fastrand::seed(11);
        let release = Arc::new(Notify::new());
        let slow = {
            let release = release.clone();
            tower::util::BoxCloneService::new(service_fn(move |_req: Request<()>| {
                let release = release.clone();
                async move {
                    release.notified().await;
                    Ok(Response::new(RspBody::full("slow")))
                }
            }))
        };
        let lb = LoadBalancer::new(
            LbPolicy::LeastRequest {
                choice_count: 2,
                active_request_bias: 1.0,
            },
            [
                Endpoint::new("slow:1", slow),
                Endpoint::new("fast:1", named("fast")),
            ],
        );
        // A call still pending after one poll is parked on the slow endpoint.
        let mut parked = Vec::new();
        let send = |parked: &mut Vec<_>| {
            let mut call = Box::pin(lb.clone().oneshot(Request::new(())));
            let mut cx = Context::from_waker(std::task::Waker::noop());
            let pending = call.as_mut().poll(&mut cx).is_pending();
            if pending {
                parked.push(call);
            }
            !pending
        };
        while lb.shared.entries[0].host.active_requests() < 3 {
            send(&mut parked);
        }
        let fast = (0..200).filter(|_| send(&mut parked)).count();
        // Both samples on the busy endpoint: a quarter of the time (150 expected).
        assert!(fast >= 130, "{fast} of 200 to the idle endpoint");
        assert_eq!(
            lb.shared.entries[0].host.active_requests() as usize,
            parked.len()
        );
        // A request the caller gives up no longer counts.
        drop(parked);
        assert_eq!(lb.shared.entries[0].host.active_requests(), 0);
    }

    #[tokio::test]
    async fn no_endpoint_is_envoys_no_healthy_upstream() {
        let lb = LoadBalancer::<Svc>::new(LbPolicy::RoundRobin, []);
        let rsp = lb.oneshot(Request::new(())).await.unwrap();
        assert_eq!(rsp.status(), 503);
        let info = ResponseInfo::of(&rsp).unwrap();
        assert_eq!(info.flags.to_string(), "UH");
        assert_eq!(info.failure, Some(UpstreamFailure::NoHealthyUpstream));
    }
}
