//! The outbound stack of one route backend (a route, and a cluster it sends to), assembled
//! here, in Envoy's order, when the route's configuration arrives:
//!
//! ```text
//! FaultLayer              the listener's fault filters, as this route overrides them
//!  → HeaderMutationLayer  weighted cluster, route, virtual host, route configuration
//!  → RouteTimeoutLayer    route timeout, grpc-timeout, max_stream_duration
//!  → Upstream             mirrors, then attempts: retry → circuit breaker → balancer
//!                         → per-try timeout → connection
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
    Route, RouteTable, VirtualHost,
};
use tower::ServiceBuilder;

use super::circuit_breaker::RetryBudget;
use super::cluster::ClusterRuntime;
use super::policy::RoutePolicy;
use super::upstream::{Upstream, UpstreamRoute};
use crate::layer::fault::{Fault, FaultLayer};
use crate::layer::headers::{HeaderMutation, HeaderMutationLayer};
use crate::layer::timeout::{RouteTimeout, RouteTimeoutLayer, Timeout};

/// A route backend's stack.
pub(crate) type RouteStack = Fault<HeaderMutation<Timeout<Upstream>>>;

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
    pub(crate) route: &'a Route,
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
    let timeout = RouteTimeoutLayer::from_config(RouteTimeout::of_route(route.forward));
    let upstream = Upstream::new(UpstreamRoute {
        cluster: cluster.clone(),
        retry: policy.retry.clone(),
        hedge_on_per_try_timeout: policy.hedge_on_per_try_timeout,
        mirrors: policy.mirrors.clone(),
        attempt_count_header: route.host.include_attempt_count,
        retry_budget: env.retry_budget,
    });
    Backend {
        cluster: cluster.clone(),
        stack: assemble(faults, headers, timeout, upstream),
    }
}

/// The order of the route's layers, in one place.
fn assemble<S>(
    faults: FaultLayer,
    headers: HeaderMutationLayer,
    timeout: RouteTimeoutLayer,
    upstream: S,
) -> Fault<HeaderMutation<Timeout<S>>> {
    ServiceBuilder::new()
        // An injected delay is not counted against the route timeout, and an injected abort
        // never reaches the upstream, nor gets the route's response headers (as in Envoy,
        // where the fault filter runs before the router).
        .layer(faults)
        // The request headers the upstream sees, and the response headers the caller sees,
        // including on a timeout's reply.
        .layer(headers)
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
    use crate::{ResponseInfo, RspBody};
    use http::{HeaderName, HeaderValue, StatusCode};
    use mesh_core::model::{
        AbortKind, AppendAction, DelayKind, FaultAbort, FaultDelay, Fraction, HeaderAdd,
        HeaderMatch, HeaderMatcher, HeaderMutations,
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

    fn faulty() -> http::Request<()> {
        http::Request::get("/")
            .header("x-fault", "1")
            .body(())
            .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn the_fault_delay_is_outside_the_route_timeout() {
        let timeout = RouteTimeoutLayer::new(Duration::from_secs(1));
        let svc = assemble(
            fault(Some(Duration::from_secs(3)), None),
            tagging(),
            timeout,
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
        let svc = assemble(
            fault(Some(Duration::from_secs(3)), None),
            tagging(),
            RouteTimeoutLayer::new(Duration::from_secs(1)),
            upstream(Duration::from_secs(2)),
        );
        let rsp = svc.oneshot(faulty()).await.unwrap();
        assert_eq!(rsp.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(rsp.headers()["x-route-rsp"], "yes");
        assert_eq!(ResponseInfo::of(&rsp).unwrap().flags.to_string(), "UT,DI");
    }

    #[tokio::test(start_paused = true)]
    async fn an_abort_is_answered_before_the_route_headers_and_timeout() {
        let svc = assemble(
            fault(None, Some(503)),
            tagging(),
            RouteTimeoutLayer::new(Duration::from_secs(1)),
            upstream(Duration::ZERO),
        );
        let rsp = svc.clone().oneshot(faulty()).await.unwrap();
        assert_eq!(rsp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(!rsp.headers().contains_key("x-route-rsp"));
        assert_eq!(ResponseInfo::of(&rsp).unwrap().flags.to_string(), "FI");
        let plain = svc.oneshot(http::Request::new(())).await.unwrap();
        assert_eq!(plain.status(), StatusCode::OK, "no x-fault, no fault");
    }
}
