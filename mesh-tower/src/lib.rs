//! # mesh-tower
//!
//! The data path of mesh, an in-process service mesh: what an Envoy sidecar does to a
//! service's traffic, done by Tower services inside the process.
//!
//! [`MeshClient`] is the outbound side: a `tower::Service<http::Request<B>>` that routes each
//! request by its authority through the mesh's configuration (xDS from istiod or
//! mesh-control, or static resources).
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use tower::ServiceExt;
//! let mesh = mesh_core::Mesh::builder().static_file("mesh.yaml")?.build().await?;
//! let client = mesh_tower::MeshClient::new(&mesh);
//! let req = http::Request::get("http://reviews:9080/reviews/0")
//!     .header("end-user", "jason")
//!     .body(http_body_util::Empty::<bytes::Bytes>::new())?;
//! let rsp = client.oneshot(req).await?;
//! # Ok(()) }
//! ```
//!
//! | feature | Envoy / Istio field |
//! |---|---|
//! | virtual hosts, route matching, weighted clusters, `cluster_header` | `RouteConfiguration`; VirtualService `http.match`, `route.weight` |
//! | rewrites, redirects, direct responses, header mutations | `prefix_rewrite`, `regex_rewrite`, `host_rewrite_*`, `redirect`, `direct_response`, `request_headers_to_add` … |
//! | fault injection (delay, abort, gRPC abort, header-controlled, `max_active_faults`) | `envoy.filters.http.fault`; VirtualService `fault` |
//! | route timeout, per-try timeout, `grpc-timeout`, `max_stream_duration` | `RouteAction.timeout`, `RetryPolicy.per_try_timeout` |
//! | retries (`retry_on` incl. gRPC codes, backoff, previous hosts, budget, body replay) | `RetryPolicy`; VirtualService `retries` |
//! | circuit breakers (connections, pending, requests, retries) | `Cluster.circuit_breakers`; DestinationRule `connectionPool` |
//! | outlier detection (consecutive 5xx / gateway / local, success rate, failure percentage) | `Cluster.outlier_detection`; DestinationRule `outlierDetection` |
//! | load balancing (round robin, least request, random, ring hash, Maglev), priorities, localities, panic | `Cluster.lb_policy`, `load_balancing_policy`, `ClusterLoadAssignment` |
//! | mirroring | `request_mirror_policies`; VirtualService `mirror` |
//! | HTTP/1.1 and HTTP/2 upstreams, pooled per endpoint | `http2_protocol_options`, `HttpProtocolOptions` |
//! | unknown hosts | Istio `outboundTrafficPolicy` (`ALLOW_ANY`, `REGISTRY_ONLY`) |
//! | path normalization before routing (when the listener asks; also inbound, and as [`normalize::NormalizePathLayer`]) | `normalize_path`, `merge_slashes`, `path_with_escaped_slashes_action`; Istio `pathNormalization` |
//!
//! Route policies are also public Tower layers, one concern each, usable around any
//! `tower::Service` (see [`layer`], which wraps a plain hyper client in two of them):
//! [`layer::RouteLayer`], [`layer::FaultLayer`], [`layer::HeaderMutationLayer`],
//! [`layer::RewriteLayer`], [`layer::MirrorLayer`], [`layer::RouteTimeoutLayer`],
//! [`layer::RetryLayer`], [`layer::CircuitBreakerLayer`], [`layer::OutlierDetectionLayer`],
//! [`layer::LoadBalancer`]; and on the inbound side [`layer::AuthenticationLayer`],
//! [`layer::AuthorizationLayer`], [`layer::RateLimitLayer`]. `MeshClient` runs the route
//! layer's decision, then the stack of them it built for that route and cluster when the
//! configuration arrived.
#![forbid(unsafe_code)]

pub mod admin;
mod body;
pub mod client;
mod counters;
mod error;
mod flags;
mod hop;
pub mod layer;
pub mod normalize;
mod respond;
mod rules;
pub mod server;
pub mod telemetry;

pub use body::{BoxError, DEFAULT_REPLAY_CAP, ReqBody, RspBody};

/// The hash map of lookups on the request path (targets by authority, label sets, metric
/// series). std's SipHash cost about 2,000 instructions a request there (callgrind, mesh-min);
/// foldhash, seeded per process, costs a fraction, and the keys are the mesh's own or capped.
pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// Adds `item` to a list that holds its members weakly (the clients of `/clusters`, the
/// endpoints of an outlier detector), dropping the members that are gone. Copy-on-write: the
/// list is read lock-free, and written only when a member is made.
pub(crate) fn push_live<T>(
    list: &arc_swap::ArcSwap<Vec<std::sync::Weak<T>>>,
    item: &std::sync::Arc<T>,
) {
    let weak = std::sync::Arc::downgrade(item);
    list.rcu(|members| {
        let mut members: Vec<_> = members
            .iter()
            .filter(|w| w.strong_count() > 0)
            .cloned()
            .collect();
        members.push(weak.clone());
        members
    });
}
pub use client::{MeshClient, MeshClientBuilder, OutboundTrafficPolicy, RetryBudget};
pub use error::Error;
pub use flags::ResponseFlags;
pub use respond::{LocalBody, ResponseInfo, UpstreamFailure};
pub use server::{serve, serve_listener, serve_with_shutdown};
