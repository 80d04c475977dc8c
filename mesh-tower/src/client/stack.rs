//! The outbound stack of one route backend (a route, and a cluster it sends to), assembled
//! here, in Envoy's order, when the route's configuration arrives:
//!
//! ```text
//! FaultLayer              the listener's fault filters, as this route overrides them
//!  → HeaderMutationLayer  weighted cluster, route, virtual host, route configuration
//!  → RewriteLayer         path and host rewrites
//!  → MirrorLayer          the route's mirrors (each an Upstream of its own, no retries)
//!  → RouteTimeoutLayer    route timeout, grpc-timeout, max_stream_duration
//!  → Upstream             attempts: retry → circuit breaker → balancer → per-try timeout
//!                         → connection
//! ```
//!
//! What comes before (path normalization, route matching, the weighted choice) is the
//! router's ([`router`](super::router)); it hands the request to the chosen backend's stack.
//! The stacks are built once per plan, so a request only clones a handful of `Arc`s to call
//! one; a route that picks its cluster from a header builds its stack per request.

use std::sync::Arc;
use std::sync::atomic::AtomicU32;

use mesh_core::model::{
    ClusterWeight, FaultConfig, FilterConfig, FilterOverride, FilterOverrides, ForwardAction,
    HostRewrite, RouteTable, VirtualHost,
};
use tower::ServiceBuilder;

use super::cluster::ClusterRuntime;
use super::policy::RoutePolicy;
use super::upstream::{Upstream, UpstreamRoute};
use crate::counters::RetryBudget;
use crate::layer::fault::{Fault, FaultLayer};
use crate::layer::headers::{HeaderMutation, HeaderMutationLayer};
use crate::layer::mirror::{Mirror, MirrorLayer};
use crate::layer::rewrite::{Rewrite, RewriteLayer};
use crate::layer::timeout::{RouteTimeout, RouteTimeoutLayer, Timeout};

/// A route backend's stack.
pub(crate) type RouteStack = Stack<Upstream, Upstream>;

/// The route's layers around `S`, mirroring to `M`s.
type Stack<S, M> = Fault<HeaderMutation<Rewrite<Mirror<Timeout<S>, M>>>>;

/// A route backend: the cluster, and the stack that sends to it.
#[derive(Clone, Debug)]
pub(crate) struct Backend {
    pub(crate) cluster: Arc<ClusterRuntime>,
    pub(crate) stack: RouteStack,
}

/// What every stack of a plan shares.
#[derive(Debug, Default)]
pub(crate) struct StackEnv {
    /// The listener's fault filters, in filter order.
    pub(crate) faults: Box<[FaultFilter]>,
    /// Requests with an active fault, for `max_active_faults` (one count per target).
    pub(crate) active_faults: Arc<AtomicU32>,
    /// The client's retry budget.
    pub(crate) retry_budget: Option<RetryBudget>,
}

/// A fault filter of the listener.
#[derive(Clone, Debug)]
pub(crate) struct FaultFilter {
    pub(crate) name: Arc<str>,
    pub(crate) config: Arc<FaultConfig>,
    pub(crate) disabled: bool,
}

/// The route a backend belongs to.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RouteRef<'a> {
    pub(crate) table: &'a RouteTable,
    pub(crate) host: &'a VirtualHost,
    pub(crate) route: &'a mesh_core::model::Route,
    pub(crate) forward: &'a ForwardAction,
}

/// Builds the stack that sends `route`'s requests to `cluster` (`weight` when the route
/// splits its traffic).
pub(crate) fn backend(
    env: &StackEnv,
    route: RouteRef<'_>,
    policy: &RoutePolicy,
    cluster: &Arc<ClusterRuntime>,
    weight: Option<&ClusterWeight>,
) -> Backend {
    let none = FilterOverrides::default();
    let overrides = [
        weight.map_or(&none, |w| &w.filter_overrides),
        &route.route.filter_overrides,
        &route.host.filter_overrides,
    ];
    let faults = FaultLayer::for_cluster(
        route_faults(&env.faults, &overrides),
        Some(&cluster.name),
        env.active_faults.clone(),
    );
    let weight_headers = weight.map(|w| &w.headers);
    let headers = HeaderMutationLayer::new(
        weight_headers
            .into_iter()
            .chain([
                &route.route.headers,
                &route.host.headers,
                &route.table.headers,
            ])
            .filter(|m| !m.is_empty())
            .cloned(),
    );
    let fwd = route.forward;
    let host_rewrite = weight
        .and_then(|w| w.host_rewrite.as_ref())
        .or(fwd.host_rewrite.as_ref());
    let mut rewrite = RewriteLayer::new();
    if let Some(to) = &fwd.prefix_rewrite {
        rewrite = rewrite.prefix(route.route.matcher.path.clone(), to.clone());
    } else if let Some(r) = &fwd.regex_rewrite {
        rewrite = rewrite.regex(r.clone());
    }
    if let Some(h) = host_rewrite {
        rewrite = rewrite.host(h.clone());
    }
    let timeout = RouteTimeoutLayer::from_config(RouteTimeout::of_route(fwd));
    let upstream = Upstream::new(UpstreamRoute {
        cluster: cluster.clone(),
        retry: policy.retry.clone(),
        hedge_on_per_try_timeout: policy.hedge_on_per_try_timeout,
        auto_host: matches!(host_rewrite, Some(HostRewrite::Auto)),
        attempt_count_header: route.host.include_attempt_count,
        retry_budget: env.retry_budget,
    });
    Backend {
        cluster: cluster.clone(),
        stack: assemble(
            Route {
                faults,
                headers,
                rewrite,
                mirror: policy.mirror.clone(),
                timeout,
            },
            upstream,
        ),
    }
}

/// A route backend's layers, before they are assembled.
struct Route<M> {
    faults: FaultLayer,
    headers: HeaderMutationLayer,
    rewrite: RewriteLayer,
    mirror: MirrorLayer<M>,
    timeout: RouteTimeoutLayer,
}

/// The order of the route's layers, in one place.
fn assemble<S, M>(layers: Route<M>, upstream: S) -> Stack<S, M> {
    let Route {
        faults,
        headers,
        rewrite,
        mirror,
        timeout,
    } = layers;
    ServiceBuilder::new()
        // An injected delay is not counted against the route timeout, and an injected abort
        // never reaches the upstream, nor gets the route's response headers (as in Envoy,
        // where the fault filter runs before the router).
        .layer(faults)
        // The request headers the upstream sees, and the response headers the caller sees,
        // including on a timeout's reply.
        .layer(headers)
        // Envoy's router rewrites after the route's header mutations (a host rewrite from a
        // header reads the mutated headers), and mirrors what it would send.
        .layer(rewrite)
        .layer(mirror)
        .layer(timeout)
        .service(upstream)
}

/// The fault configs in force for a route: each filter's config as the most specific override
/// (weighted cluster, route, virtual host) replaces or disables it.
fn route_faults<'a>(
    filters: &'a [FaultFilter],
    overrides: &'a [&'a FilterOverrides],
) -> impl Iterator<Item = Arc<FaultConfig>> + 'a {
    filters
        .iter()
        .filter_map(|f| match overrides.iter().find_map(|o| o.get(&f.name)) {
            Some(FilterOverride::Disabled) => None,
            Some(FilterOverride::Config(FilterConfig::Fault(c))) => Some(c.clone()),
            Some(FilterOverride::Config(_)) => None,
            None if f.disabled => None,
            None => Some(f.config.clone()),
        })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::layer::mirror::MirrorTarget;
    use crate::{ResponseInfo, RspBody};
    use http::{HeaderName, HeaderValue, StatusCode};
    use mesh_core::model::{
        AbortKind, AppendAction, DelayKind, FaultAbort, FaultDelay, Fraction, HeaderAdd,
        HeaderMatch, HeaderMatcher, HeaderMutations, PathMatch,
    };
    use tower::{ServiceExt, service_fn};

    fn filter(status: u16, disabled: bool) -> FaultFilter {
        FaultFilter {
            name: "envoy.filters.http.fault".into(),
            config: Arc::new(abort(status)),
            disabled,
        }
    }

    fn abort(status: u16) -> FaultConfig {
        FaultConfig {
            abort: Some(FaultAbort {
                kind: AbortKind::Http(http::StatusCode::from_u16(status).unwrap()),
                fraction: Fraction::ALWAYS,
            }),
            ..FaultConfig::default()
        }
    }

    fn statuses(filters: &[FaultFilter], overrides: &[&FilterOverrides]) -> Vec<u16> {
        route_faults(filters, overrides)
            .map(|c| match c.abort.as_ref().unwrap().kind {
                AbortKind::Http(s) => s.as_u16(),
                _ => unreachable!(),
            })
            .collect()
    }

    #[test]
    fn route_overrides_replace_or_disable_the_filter() {
        assert!(
            statuses(&[filter(503, true)], &[]).is_empty(),
            "disabled without an override"
        );
        let replace = FilterOverrides(Box::new([(
            "envoy.filters.http.fault".into(),
            FilterOverride::Config(FilterConfig::Fault(Arc::new(abort(500)))),
        )]));
        assert_eq!(statuses(&[filter(503, true)], &[&replace]), [500]);
        let off = FilterOverrides(Box::new([(
            "envoy.filters.http.fault".into(),
            FilterOverride::Disabled,
        )]));
        assert!(statuses(&[filter(503, false)], &[&off]).is_empty());
        assert_eq!(
            statuses(&[filter(503, false)], &[&replace, &off]),
            [500],
            "the most specific level wins"
        );
    }

    fn tagging() -> HeaderMutationLayer {
        let add = |name: &'static str| {
            Box::new([HeaderAdd {
                name: HeaderName::from_static(name),
                value: HeaderValue::from_static("yes"),
                append: AppendAction::OverwriteIfExistsOrAdd,
            }]) as Box<[_]>
        };
        HeaderMutationLayer::new([HeaderMutations {
            request_add: add("x-route"),
            request_remove: Box::new([HeaderName::from_static("x-fault")]),
            response_add: add("x-route-rsp"),
            ..HeaderMutations::default()
        }])
    }

    /// An upstream that answers after `after`, echoing whether it saw the route's header.
    fn upstream(
        after: Duration,
    ) -> impl tower::Service<
        http::Request<()>,
        Response = http::Response<RspBody>,
        Error = std::convert::Infallible,
        Future = impl Send,
    > + Clone {
        service_fn(move |req: http::Request<()>| async move {
            tokio::time::sleep(after).await;
            let saw =
                req.headers().contains_key("x-route") && !req.headers().contains_key("x-fault");
            let mut rsp = http::Response::new(RspBody::empty());
            rsp.headers_mut()
                .insert("x-saw-route", HeaderValue::from(u16::from(saw)));
            Ok(rsp)
        })
    }

    /// A fault that applies only to requests carrying `x-fault`, a header the route removes.
    fn fault(delay: Option<Duration>, abort: Option<u16>) -> FaultLayer {
        let config = FaultConfig {
            delay: delay.map(|d| FaultDelay {
                kind: DelayKind::Fixed(d),
                fraction: Fraction::ALWAYS,
            }),
            abort: abort.map(|s| FaultAbort {
                kind: AbortKind::Http(StatusCode::from_u16(s).unwrap()),
                fraction: Fraction::ALWAYS,
            }),
            headers: Box::new([HeaderMatcher {
                name: "x-fault".into(),
                kind: HeaderMatch::Present(true),
                invert: false,
                treat_missing_as_empty: false,
            }]),
            ..FaultConfig::default()
        };
        FaultLayer::new([Arc::new(config)])
    }

    /// The stack of a route with `faults`, [`tagging`] headers, `timeout`, and `mirror`.
    fn stack<S: Clone>(
        faults: FaultLayer,
        timeout: RouteTimeoutLayer,
        mirror: MirrorLayer<S>,
        upstream: S,
    ) -> Stack<S, S> {
        let rewrite = RewriteLayer::new().prefix(PathMatch::Prefix("/v1/".into()), "/api/");
        assemble(
            Route {
                faults,
                headers: tagging(),
                rewrite,
                mirror,
                timeout,
            },
            upstream,
        )
    }

    fn faulty() -> http::Request<()> {
        http::Request::get("/")
            .header("x-fault", "1")
            .body(())
            .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn the_fault_delay_is_outside_the_route_timeout() {
        let timeout = RouteTimeoutLayer::new(Duration::from_secs(1));
        let svc = stack(
            fault(Some(Duration::from_secs(3)), None),
            timeout,
            MirrorLayer::default(),
            upstream(Duration::from_millis(500)),
        );
        let rsp = svc.oneshot(faulty()).await.unwrap();
        assert_eq!(
            rsp.status(),
            StatusCode::OK,
            "3 s delay + 0.5 s answer, 1 s timeout"
        );
        assert_eq!(
            rsp.headers()["x-saw-route"],
            "1",
            "matched before the route's mutations"
        );
        assert_eq!(rsp.headers()["x-route-rsp"], "yes");
        assert_eq!(ResponseInfo::of(&rsp).unwrap().flags.to_string(), "DI");
    }

    #[tokio::test(start_paused = true)]
    async fn the_timeout_reply_gets_the_route_response_headers() {
        let svc = stack(
            fault(Some(Duration::from_secs(3)), None),
            RouteTimeoutLayer::new(Duration::from_secs(1)),
            MirrorLayer::default(),
            upstream(Duration::from_secs(2)),
        );
        let rsp = svc.oneshot(faulty()).await.unwrap();
        assert_eq!(rsp.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(rsp.headers()["x-route-rsp"], "yes");
        assert_eq!(ResponseInfo::of(&rsp).unwrap().flags.to_string(), "UT,DI");
    }

    #[tokio::test(start_paused = true)]
    async fn an_abort_is_answered_before_the_route_headers_and_timeout() {
        let svc = stack(
            fault(None, Some(503)),
            RouteTimeoutLayer::new(Duration::from_secs(1)),
            MirrorLayer::default(),
            upstream(Duration::ZERO),
        );
        let rsp = svc.clone().oneshot(faulty()).await.unwrap();
        assert_eq!(rsp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(!rsp.headers().contains_key("x-route-rsp"));
        assert_eq!(ResponseInfo::of(&rsp).unwrap().flags.to_string(), "FI");
        let plain = svc.oneshot(http::Request::new(())).await.unwrap();
        assert_eq!(plain.status(), StatusCode::OK, "no x-fault, no fault");
    }

    /// Mirrors copy what the upstream would get (the route's headers, the rewritten path, a
    /// `-shadow` host), outside the route timeout, and never what a fault aborted.
    #[tokio::test(start_paused = true)]
    async fn mirrors_copy_the_mutated_rewritten_request_outside_the_timeout() {
        let (tx, mut copies) = tokio::sync::mpsc::unbounded_channel::<http::Request<()>>();
        let shadow = service_fn(move |req: http::Request<()>| {
            let tx = tx.clone();
            async move {
                // Slower than the route timeout: a copy is not timed by it.
                tokio::time::sleep(Duration::from_secs(5)).await;
                let _ = tx.send(req);
                Ok::<_, std::convert::Infallible>(http::Response::new(RspBody::empty()))
            }
        });
        let to_shadow = |service| {
            MirrorLayer::new([MirrorTarget {
                service,
                fraction: Fraction::ALWAYS,
                shadow_host_suffix: true,
            }])
        };
        let main = service_fn(|req: http::Request<()>| async move {
            assert_eq!(
                req.uri().path(),
                "/api/items",
                "the upstream sees the rewrite"
            );
            Ok::<_, std::convert::Infallible>(http::Response::new(RspBody::empty()))
        });
        type Svc = tower::util::BoxCloneSyncService<
            http::Request<()>,
            http::Response<RspBody>,
            std::convert::Infallible,
        >;
        let svc = stack::<Svc>(
            fault(None, Some(503)),
            RouteTimeoutLayer::new(Duration::from_secs(1)),
            to_shadow(Svc::new(shadow)),
            Svc::new(main),
        );
        let req = http::Request::get("http://reviews:9080/v1/items")
            .body(())
            .unwrap();
        let rsp = svc.clone().oneshot(req).await.unwrap();
        assert_eq!(rsp.status(), StatusCode::OK);
        let copy = copies.recv().await.expect("a copy");
        assert_eq!(copy.uri(), "http://reviews-shadow:9080/api/items");
        assert_eq!(copy.headers()["x-route"], "yes");
        svc.oneshot(faulty()).await.unwrap();
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(
            copies.try_recv().is_err(),
            "an aborted request is not mirrored"
        );
    }
}
