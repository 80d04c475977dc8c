//! The outbound router: one request from the caller to its route's stack, in Envoy's order
//! (DESIGN §4):
//!
//! ```text
//! path normalization (when the listener asks for it)
//!  → route and split ([`RouteLayer`](crate::layer::RouteLayer)'s decision: virtual host by
//!    authority, first matching route, one weighted cluster; retries stay in it), and the
//!    route's policy as the plan resolved it (see [`policy`](super::policy))
//!  → what the router decides from the request as it came: the hash, whether the request may
//!    be retried; the body taken in for replay
//!  → the backend's stack (see [`stack`](super::stack)): fault → header mutations → rewrites
//!    → mirrors → route timeout → retry → [per attempt] circuit breaker → balance → per-try
//!    timeout → connection
//! ```
//!
//! Direct responses, redirects and routing failures are answered by the route decision.

use std::sync::Arc;

use http::{HeaderValue, Request, Response, StatusCode};
use http_body::Body;
use mesh_core::model::RequestView;
use tower::Service;

use super::Outbound;
use super::stack::{self, Backend, RouteRef};
use super::target::RoutePlan;
use super::upstream::Routed;
use crate::body::{BodySource, BoxError, RspBody};
use crate::flags::ResponseFlags;
use crate::layer::route::Pick;
use crate::respond::{self, ResponseInfo};
use crate::rules::balance::RequestHasher;

/// Forwards `req` by `plan`.
pub(crate) async fn forward<B>(
    ob: &Outbound,
    plan: &RoutePlan,
    mut req: Request<B>,
) -> Response<RspBody>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let grpc = respond::is_grpc(req.headers());
    let mut info = ResponseInfo::default();
    let table = &plan.snapshot.routes;

    // Path normalization, when the listener's connection manager asks for it (as istiod's
    // do for sidecars): the route is chosen on, and the upstream sees, the normalized path.
    let paths = &plan.snapshot.http.path_normalization;
    if !paths.is_noop()
        && let Err(rejection) = crate::normalize::normalize_request(paths, &mut req)
    {
        let mut rsp = respond::local(rejection.status(grpc), "", grpc, info);
        if let Some(location) = rejection.location().filter(|_| !grpc) {
            rsp.headers_mut().insert(http::header::LOCATION, location);
        }
        return rsp;
    }

    // Route and split (the route layer's decision): the virtual host by authority, the
    // first route that matches, and one cluster of a weighted split, chosen once per
    // request (retries stay in it). What the route answers itself is answered there.
    let view = RequestView::from_request(&req);
    let to = match crate::layer::route::decide(table, &view, grpc) {
        Ok(to) => to,
        Err(answer) => return *answer,
    };
    let (vh, route, fwd) = (to.found.host, to.found.route, to.action);
    let policy = plan.policies.get(to.found.host_index, to.found.route_index);
    let route_name = (!route.name.is_empty()).then(|| route.name.clone());
    info.route = route_name.clone();

    // Named clusters' stacks were built with the plan; only `cluster_header` is looked up
    // per request.
    let header_backend;
    let resolved: Result<&Backend, Arc<str>> = match to.cluster {
        Pick::Named { index, name } => resolved_or(&policy.backends, index, name),
        Pick::Header(name) => match plan.clusters.get(name) {
            Some(c) => {
                let at = RouteRef {
                    table,
                    host: vh,
                    route,
                    forward: fwd,
                };
                header_backend = stack::backend(&plan.env, at, policy, c, None);
                Ok(&header_backend)
            }
            None => Err(name.into()),
        },
    };
    let backend = match resolved {
        Ok(b) => b,
        Err(name) => {
            info.cluster = Some(name);
            info.flags |= ResponseFlags::NO_CLUSTER_FOUND;
            return respond::local(fwd.cluster_not_found_status, "", grpc, info);
        }
    };
    let cluster = &backend.cluster;
    if req.extensions().get::<super::RequireTls>().is_some() && cluster.state().config.tls.is_none()
    {
        // The mesh's own `https` fetch (a JWKS) must not go out in plaintext.
        info.cluster = Some(cluster.name.clone());
        info.flags |= ResponseFlags::UPSTREAM_CONNECTION_FAILURE;
        return respond::local(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "an https request was routed to cluster {}, which has no TLS",
                cluster.name
            ),
            grpc,
            info,
        );
    }

    let hasher = if fwd.hash_policies.is_empty() {
        RequestHasher::default()
    } else {
        RequestHasher::compute(&fwd.hash_policies, &view, ob.config.source_ip)
    };
    let retriable = policy
        .retry
        .as_ref()
        .is_some_and(|p| crate::layer::retry::request_allows(p, &view));
    let set_cookie = hasher
        .set_cookie
        .as_deref()
        .and_then(|c| HeaderValue::from_str(c).ok());

    // The body: recorded for replay only when a retry or a mirror may need it.
    let cap = if retriable || !policy.mirror.is_empty() {
        ob.config.replay_cap
    } else {
        0
    };
    let (parts, body) = req.into_parts();
    let routed = Routed {
        body: BodySource::new(body, cap).await,
        hash: hasher.hash(),
        set_cookie,
        retriable,
    };

    // The route's own stack (see [`stack`](super::stack)) does the rest.
    let mut stack = backend.stack.clone();
    let Ok(mut rsp) = stack.call(Request::from_parts(parts, routed)).await;
    let info = ResponseInfo::of_mut(&mut rsp);
    info.route = route_name;
    info.cluster = Some(backend.cluster.name.clone());
    rsp
}

/// The backend the plan built for the `i`th cluster a route names, or that cluster's name
/// when it does not exist.
fn resolved_or<'a>(
    resolved: &'a [Option<Backend>],
    i: usize,
    name: &Arc<str>,
) -> Result<&'a Backend, Arc<str>> {
    resolved
        .get(i)
        .and_then(Option::as_ref)
        .ok_or_else(|| name.clone())
}
