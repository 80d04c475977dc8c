//! Envoy's HTTP policies as Tower layers, one concern each, usable around any
//! `tower::Service<http::Request<B>>`: a user who only wants Envoy-style fault injection or a
//! route timeout on their own client can have it without the rest of the mesh.
//!
//! [`MeshClient`](crate::MeshClient) assembles the same layers for each route, when the route's
//! configuration arrives, in Envoy's order (see `client/stack.rs`):
//!
//! ```text
//! RouteLayer            virtual host, route, one cluster of a weighted split; direct
//!                       responses and redirects; then the stack built for that route:
//!  → FaultLayer          delay, then abort (an aborted request never reaches the upstream)
//!  → HeaderMutationLayer request headers on the way in, response headers on the way out
//!  → RewriteLayer        the path and host the upstream sees
//!  → MirrorLayer         copies to shadow services, fire and forget
//!  → RouteTimeoutLayer   one deadline over every attempt (route timeout, grpc-timeout)
//!  → RetryLayer          Envoy's retry policy, with a budget and body replay
//!  → the cluster's attempts: circuit breaker, balancer (skipping ejected hosts), per-try
//!    timeout, connection, outcome to outlier detection
//! ```
//!
//! The attempts apply the cluster's circuit breaker, balancer and outlier detection with the
//! same counters, picker and rules as [`CircuitBreakerLayer`], [`LoadBalancer`] and
//! [`OutlierDetectionLayer`], which offer them around clients of your own (the cluster's
//! limits follow CDS, and its balancer table is rebuilt on EDS updates and ejections rather
//! than polling readiness).
//!
//! The inbound policies are layers too, for a service served some other way than
//! [`serve`](crate::serve) (which runs the same checks in the listener's filter order):
//!
//! ```text
//! AuthenticationLayer   JWT (RequestAuthentication): 401 for a bad token, claims to metadata
//!  → AuthorizationLayer RBAC (AuthorizationPolicy): 403 unless the rules allow
//!  → RateLimitLayer     local token bucket: 429
//! ```
//!
//! A layer that answers for the service it wraps (a timeout, an injected abort) writes the
//! answer Envoy would, gRPC-shaped for gRPC requests, into a body of the inner service's type,
//! which must implement [`LocalBody`]; and it records its [`ResponseFlags`] in the response's
//! [`ResponseInfo`](crate::ResponseInfo). None of them boxes a future but
//! [`AuthenticationLayer`], whose verification may wait for a key set to be fetched.
//!
//! Two of them around a plain hyper client:
//!
//! ```
//! # async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! use std::time::Duration;
//! use http_body_util::{BodyExt, Empty, combinators::BoxBody};
//! use hyper_util::client::legacy::Client;
//! use hyper_util::rt::TokioExecutor;
//! use mesh_core::model::{AppendAction, HeaderAdd, HeaderMutations};
//! use mesh_tower::layer::{HeaderMutationLayer, RouteTimeoutLayer};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! let hyper = Client::builder(TokioExecutor::new()).build_http::<Empty<bytes::Bytes>>();
//! let tag = HeaderMutations {
//!     request_add: Box::new([HeaderAdd {
//!         name: http::HeaderName::from_static("x-team"),
//!         value: http::HeaderValue::from_static("checkout"),
//!         append: AppendAction::OverwriteIfExistsOrAdd,
//!     }]),
//!     ..HeaderMutations::default()
//! };
//! let client = ServiceBuilder::new()
//!     .layer(HeaderMutationLayer::new([tag]))
//!     .layer(RouteTimeoutLayer::new(Duration::from_secs(2)))
//!     // The layers answer in the inner service's body type: box hyper's `Incoming`.
//!     .map_response(|rsp: http::Response<hyper::body::Incoming>| rsp.map(|b| b.boxed()))
//!     .service(hyper);
//! let req = http::Request::get("http://127.0.0.1:1/").body(Empty::new())?;
//! // Nothing listens on port 1: the client's error comes back as is. A server slower than
//! // two seconds would get a 504 `upstream request timeout` instead, with flag `UT`.
//! let answer: Result<http::Response<BoxBody<_, _>>, _> = client.oneshot(req).await;
//! assert!(answer.is_err());
//! # Ok(()) }
//! # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
//! ```
//!
//! [`ResponseFlags`]: crate::ResponseFlags

pub mod authn;
pub mod authz;
pub mod balance;
pub mod circuit_breaker;
pub mod fault;
pub mod headers;
pub mod mirror;
pub mod outlier;
pub mod rate_limit;
pub mod retry;
pub mod rewrite;
pub mod route;
pub mod timeout;

pub use crate::respond::LocalBody;
pub use crate::rules::FetchJwks;
pub use authn::{Authenticate, AuthenticationLayer};
pub use authz::{AuthorizationLayer, Authorize};
pub use balance::{Endpoint, LoadBalancer, RequestHash};
pub use circuit_breaker::{
    CircuitBreak, CircuitBreaker, CircuitBreakerLayer, CircuitBreakerStats, Counted,
    RetryAdmission, RetryPermit,
};
pub use fault::{Fault, FaultLayer};
pub use headers::{HeaderMutation, HeaderMutationLayer};
pub use mirror::{Mirror, MirrorBody, MirrorLayer, MirrorTarget};
pub use outlier::{Ejectable, OutlierDetectionLayer, OutlierDetector};
pub use rate_limit::{RateLimit, RateLimitLayer};
pub use retry::{Admission, Classify, Replay, ReplayBody, Retry, RetryLayer, Unlimited};
pub use rewrite::{Rewrite, RewriteLayer};
pub use route::{RouteLayer, RouteTarget, Router};
pub use timeout::{RouteTimeout, RouteTimeoutLayer};
