//! Routing and traffic splitting: Envoy's router decision (virtual host by authority, first
//! matching route, one cluster of a weighted split) as a layer.
//!
//! The decision is one function, [`decide`], which [`MeshClient`](crate::MeshClient) runs
//! too: the layer answers what a route answers itself and tells the inner service where the
//! request goes; the client looks up the stack it built for that route and cluster.

use std::future::Ready;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::future::Either;
use http::header::{CONTENT_TYPE, LOCATION};
use http::{HeaderValue, Request, Response, StatusCode};
use mesh_core::model::{
    Action, ClusterSpecifier, ForwardAction, FoundRoute, PathMatch, Redirect, RedirectPath,
    RequestView, RouteTable,
};

use super::headers::mutate_response;
use crate::flags::ResponseFlags;
use crate::respond::{self, LocalBody, ResponseInfo};

/// Routes each request by an Envoy route table (a `RouteConfiguration`, as xDS or a static
/// file gives it): the virtual host by authority, the first route that matches, and for a
/// weighted split one cluster, chosen once per request.
///
/// What a route answers itself, the layer answers: a `direct_response`, a redirect, 404 with
/// flag `NR` when nothing matches (or the route does not forward), and the route's
/// `cluster_not_found_response_code` (503) with flag `NC` when a `cluster_header` is missing.
/// Every other request reaches the inner service with a [`RouteTarget`] extension naming
/// the route and the cluster: send each cluster's requests to its own client with tower's
/// `Steer` or a map, and wrap those clients in the route's other layers (retries,
/// timeouts...) as [`MeshClient`](crate::MeshClient) does.
///
/// ```
/// # async fn run() {
/// use std::sync::Arc;
/// use mesh_core::static_config::parse_typed;
/// use mesh_core::xds::{Resource, ResourceType};
/// use mesh_tower::layer::{RouteLayer, RouteTarget};
/// use tower::{Layer, ServiceExt, service_fn};
///
/// // Istio's reviews canary, as istiod sends it: 90 % to v1, 10 % to v2.
/// let config = serde_json::json!({
///     "name": "9080",
///     "virtual_hosts": [{
///         "name": "reviews", "domains": ["reviews", "reviews:9080"],
///         "routes": [{"match": {"prefix": "/"}, "route": {"weighted_clusters": {"clusters": [
///             {"name": "outbound|9080|v1|reviews", "weight": 90},
///             {"name": "outbound|9080|v2|reviews", "weight": 10}]}}}]
///     }]
/// });
/// let Ok((_, _, Resource::RouteConfiguration(table))) =
///     parse_typed(&config, Some(ResourceType::RouteConfiguration))
/// else {
///     panic!("a valid route configuration")
/// };
/// let clients = service_fn(|req: http::Request<()>| async move {
///     // One client per cluster would send it; here, say where it would go.
///     let target = req.extensions().get::<RouteTarget>().expect("set by the layer");
///     let rsp = http::Response::new(http_body_util::Full::new(target.cluster.to_string().into()));
///     Ok::<_, std::convert::Infallible>(rsp)
/// });
/// let router = RouteLayer::new(table).layer(clients);
///
/// let req = http::Request::get("http://reviews:9080/reviews/1").body(()).unwrap();
/// let rsp = router.clone().oneshot(req).await.unwrap();
/// assert_eq!(rsp.status(), 200);
/// // No virtual host for this authority: Envoy's 404 with flag `NR`.
/// let req = http::Request::get("http://ratings:9080/").body(()).unwrap();
/// assert_eq!(router.oneshot(req).await.unwrap().status(), 404);
/// # }
/// # tokio::runtime::Runtime::new().unwrap().block_on(run());
/// ```
#[derive(Clone, Debug)]
pub struct RouteLayer {
    table: Arc<RouteTable>,
}

impl RouteLayer {
    /// Routes by `table`.
    pub fn new(table: Arc<RouteTable>) -> Self {
        Self { table }
    }
}

impl<S> tower::Layer<S> for RouteLayer {
    type Service = Router<S>;

    fn layer(&self, inner: S) -> Router<S> {
        Router {
            inner,
            table: self.table.clone(),
        }
    }
}

/// The service of [`RouteLayer`].
#[derive(Clone, Debug)]
pub struct Router<S> {
    inner: S,
    table: Arc<RouteTable>,
}

/// Where [`RouteLayer`] sends a request: an extension of every request it forwards.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteTarget {
    /// The route's name, when it has one.
    pub route: Option<Arc<str>>,
    /// The cluster: the route's, the one its weighted split picked, or the one its
    /// `cluster_header` names.
    pub cluster: Arc<str>,
    /// The virtual host's position in the table's `virtual_hosts`.
    pub host_index: usize,
    /// The route's position in its virtual host's `routes`.
    pub route_index: usize,
}

impl<S, B, RB> tower::Service<Request<B>> for Router<S>
where
    S: tower::Service<Request<B>, Response = Response<RB>>,
    RB: LocalBody,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = Either<Ready<Result<Response<RB>, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let grpc = respond::is_grpc(req.headers());
        let view = RequestView::from_request(&req);
        let target = match decide(&self.table, &view, grpc) {
            Ok(to) => RouteTarget {
                route: (!to.found.route.name.is_empty()).then(|| to.found.route.name.clone()),
                cluster: match to.cluster {
                    Pick::Named { name, .. } => name.clone(),
                    Pick::Header(name) => Arc::from(name),
                },
                host_index: to.found.host_index,
                route_index: to.found.route_index,
            },
            Err(answer) => return Either::Left(std::future::ready(Ok(*answer))),
        };
        req.extensions_mut().insert(target);
        Either::Right(self.inner.call(req))
    }
}

/// A request the route table forwards: the route, and the cluster it picked.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Forward<'a> {
    pub(crate) found: FoundRoute<'a>,
    pub(crate) action: &'a ForwardAction,
    pub(crate) cluster: Pick<'a>,
}

/// The cluster of a forwarded request.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Pick<'a> {
    /// The route's cluster (`index` 0) or the `index`th of its weighted split.
    Named { index: usize, name: &'a Arc<str> },
    /// The cluster a `cluster_header` names, known only per request.
    Header(&'a str),
}

/// Envoy's router decision for one request: where it goes, or the answer the route gives
/// itself (direct response, redirect, no route, no cluster header), with the route's and
/// virtual host's response headers and a [`ResponseInfo`] naming the route. The answer is
/// boxed: it is rare, and a large `Result` would be copied on every forwarded request.
pub(crate) fn decide<'a, B: LocalBody>(
    table: &'a RouteTable,
    view: &RequestView<'a>,
    grpc: bool,
) -> Result<Forward<'a>, Box<Response<B>>> {
    let Some(found) = table.find_indexed(view, fastrand::u32(0..1_000_000)) else {
        return Err(no_route(None, grpc));
    };
    let (vh, route) = (found.host, found.route);
    let route_name = || (!route.name.is_empty()).then(|| route.name.clone());
    let mut answer = match &route.action {
        Action::Forward(action) => {
            let cluster = match &action.cluster {
                ClusterSpecifier::Cluster(name) => Pick::Named { index: 0, name },
                ClusterSpecifier::Weighted(w) => {
                    let index = w.pick_index(fastrand::u32(0..w.total));
                    Pick::Named {
                        index,
                        name: &w.clusters[index].name,
                    }
                }
                ClusterSpecifier::Header(h) => {
                    match view.headers.get(h).and_then(|v| v.to_str().ok()) {
                        Some(name) => Pick::Header(name),
                        None => {
                            let info = ResponseInfo {
                                route: route_name(),
                                flags: ResponseFlags::NO_CLUSTER_FOUND,
                                ..ResponseInfo::default()
                            };
                            let status = action.cluster_not_found_status;
                            return Err(Box::new(respond::local(status, "", grpc, info)));
                        }
                    }
                }
            };
            return Ok(Forward {
                found,
                action,
                cluster,
            });
        }
        Action::DirectResponse { status, body } => direct(*status, body),
        Action::Redirect(r) => redirect(r, view, &route.matcher.path),
        Action::NonForwarding => return Err(no_route(route_name(), grpc)),
    };
    mutate_response(
        answer.headers_mut(),
        [&route.headers, &vh.headers, &table.headers],
    );
    answer.extensions_mut().insert(ResponseInfo {
        route: route_name(),
        ..ResponseInfo::default()
    });
    Err(Box::new(answer))
}

/// Envoy's 404 with flag `NR`.
fn no_route<B: LocalBody>(route: Option<Arc<str>>, grpc: bool) -> Box<Response<B>> {
    let info = ResponseInfo {
        route,
        flags: ResponseFlags::NO_ROUTE_FOUND,
        ..ResponseInfo::default()
    };
    Box::new(respond::local(StatusCode::NOT_FOUND, "", grpc, info))
}

/// A `direct_response`.
fn direct<B: LocalBody>(status: StatusCode, body: &Bytes) -> Response<B> {
    let mut rsp = Response::new(B::local(body.clone()));
    *rsp.status_mut() = status;
    if !body.is_empty() {
        rsp.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    }
    rsp
}

/// The redirect a route answers with; `matcher` is the route's path match (a prefix
/// redirect replaces what it matched).
fn redirect<B: LocalBody>(
    r: &Redirect,
    view: &RequestView<'_>,
    matcher: &PathMatch,
) -> Response<B> {
    let scheme = view.scheme;
    let new_scheme = r.scheme.as_deref().unwrap_or(scheme);
    let (host, port) = split_port(view.authority);
    let host = r.host.as_deref().unwrap_or(host);
    // A scheme change drops the old port unless a new one is given (Envoy's rule).
    let port = match r.port {
        Some(p) => Some(p.to_string()),
        None if new_scheme != scheme => None,
        None => port.map(str::to_owned),
    };
    let default_port = matches!(
        (new_scheme, port.as_deref()),
        ("http", Some("80")) | ("https", Some("443"))
    );
    let path = if view.path.is_empty() { "/" } else { view.path };
    let path: std::borrow::Cow<'_, str> = match &r.path {
        None => path.into(),
        Some(RedirectPath::Path(p)) => p.as_ref().into(),
        Some(RedirectPath::Prefix(p)) => {
            let matched = match matcher {
                PathMatch::Prefix(m) | PathMatch::SeparatedPrefix(m) => m.len(),
                _ => 0,
            };
            format!("{p}{}", &path[matched.min(path.len())..]).into()
        }
        Some(RedirectPath::Regex(re)) => re.pattern.replace_all(path, &*re.substitution),
    };
    let mut location = format!("{new_scheme}://{host}");
    if let Some(p) = port.filter(|_| !default_port) {
        location.push(':');
        location.push_str(&p);
    }
    location.push_str(&path);
    if !r.strip_query
        && let Some(q) = view.query
    {
        location.push('?');
        location.push_str(q);
    }
    let mut rsp = Response::new(B::local(Bytes::new()));
    *rsp.status_mut() = r.status;
    if let Ok(v) = HeaderValue::from_str(&location) {
        rsp.headers_mut().insert(LOCATION, v);
    }
    rsp
}

fn split_port(authority: &str) -> (&str, Option<&str>) {
    match authority.rsplit_once(':') {
        Some((h, p)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => (h, Some(p)),
        _ => (authority, None),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::convert::Infallible;

    use mesh_core::static_config::parse_typed;
    use mesh_core::xds::{Resource, ResourceType};
    use serde_json::json;
    use tower::{Layer, ServiceExt, service_fn};

    use super::*;
    use crate::body::RspBody;

    /// A route table from Envoy's JSON (for the client's tests too).
    pub(crate) fn table(doc: serde_json::Value) -> Arc<RouteTable> {
        match parse_typed(&doc, Some(ResourceType::RouteConfiguration)) {
            Ok((_, _, Resource::RouteConfiguration(t))) => t,
            other => panic!("a route configuration: {other:?}"),
        }
    }

    /// An inner service that answers with where the layer sent the request.
    fn echo_target() -> impl tower::Service<
        Request<()>,
        Response = Response<RspBody>,
        Error = Infallible,
        Future = impl Send,
    > + Clone {
        service_fn(|req: Request<()>| async move {
            let t = req.extensions().get::<RouteTarget>().expect("a target");
            let text = format!(
                "{} {} {}/{}",
                t.route.as_deref().unwrap_or("-"),
                t.cluster,
                t.host_index,
                t.route_index
            );
            Ok(Response::new(RspBody::full(text)))
        })
    }

    async fn text(rsp: Response<RspBody>) -> String {
        use http_body_util::BodyExt;
        let bytes = rsp.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    fn get(uri: &str) -> Request<()> {
        Request::get(uri).body(()).unwrap()
    }

    #[tokio::test]
    async fn the_most_specific_domain_then_the_first_matching_route() {
        let router = RouteLayer::new(table(json!({
            "name": "r",
            "virtual_hosts": [
                {"name": "any", "domains": ["*"],
                 "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "fallback"}}]},
                {"name": "shop", "domains": ["shop.example", "*.shop.example"],
                 "routes": [
                    {"name": "api", "match": {"prefix": "/api/"}, "route": {"cluster": "api"}},
                    {"match": {"prefix": "/"}, "route": {"cluster": "web"}}]}
            ]
        })))
        .layer(echo_target());
        let cases = [
            ("http://shop.example/api/items", "api api 1/0"),
            ("http://shop.example/", "- web 1/1"),
            ("http://eu.shop.example/api/", "api api 1/0"),
            // The authority with its port matches `*` first, as in Envoy (the port is only
            // stripped when no domain matches).
            ("http://eu.shop.example:8080/api/", "- fallback 0/0"),
            ("http://other/", "- fallback 0/0"),
        ];
        for (uri, want) in cases {
            let rsp = router.clone().oneshot(get(uri)).await.unwrap();
            assert_eq!(text(rsp).await, want, "{uri}");
        }
    }

    #[tokio::test]
    async fn a_weighted_split_sends_each_cluster_its_share() {
        let router = RouteLayer::new(table(json!({
            "name": "r",
            "virtual_hosts": [{"name": "v", "domains": ["*"],
                "routes": [{"match": {"prefix": "/"}, "route": {"weighted_clusters": {
                    "clusters": [{"name": "v1", "weight": 75}, {"name": "v2", "weight": 25}]}}}]}]
        })))
        .layer(echo_target());
        let mut v2 = 0;
        for _ in 0..4000 {
            let rsp = router
                .clone()
                .oneshot(get("http://reviews/"))
                .await
                .unwrap();
            if text(rsp).await.contains(" v2 ") {
                v2 += 1;
            }
        }
        // 1000 expected; five standard deviations (27 each) either side.
        assert!((865..=1135).contains(&v2), "{v2} of 4000 went to v2");
    }

    #[tokio::test]
    async fn what_the_route_answers_itself() {
        let router = RouteLayer::new(table(json!({
            "name": "r",
            "response_headers_to_add": [{"header": {"key": "x-table", "value": "1"}}],
            "virtual_hosts": [{"name": "v", "domains": ["shop"], "routes": [
                {"name": "ok", "match": {"path": "/healthz"},
                 "direct_response": {"status": 200, "body": {"inline_string": "fine"}}},
                {"match": {"prefix": "/old/"},
                 "redirect": {"prefix_rewrite": "/new/", "https_redirect": true}},
                {"match": {"prefix": "/by-header"},
                 "route": {"cluster_header": "x-cluster"}},
                {"match": {"prefix": "/internal"}, "non_forwarding_action": {}}
            ]}]
        })))
        .layer(echo_target());

        let rsp = router
            .clone()
            .oneshot(get("http://shop/healthz"))
            .await
            .unwrap();
        assert_eq!(rsp.status(), 200);
        assert_eq!(
            rsp.headers()["x-table"],
            "1",
            "the table's response headers"
        );
        assert_eq!(ResponseInfo::of(&rsp).unwrap().route.as_deref(), Some("ok"));
        assert_eq!(text(rsp).await, "fine");

        let rsp = router
            .clone()
            .oneshot(get("http://shop:8080/old/a?b=1"))
            .await
            .unwrap();
        assert_eq!(rsp.status(), 301);
        assert_eq!(
            rsp.headers()[LOCATION],
            "https://shop/new/a?b=1",
            "a scheme change drops the port"
        );

        let mut req = get("http://shop/by-header");
        req.headers_mut()
            .insert("x-cluster", HeaderValue::from_static("picked"));
        let rsp = router.clone().oneshot(req).await.unwrap();
        assert_eq!(text(rsp).await, "- picked 0/2");
        let rsp = router
            .clone()
            .oneshot(get("http://shop/by-header"))
            .await
            .unwrap();
        assert_eq!(rsp.status(), 503, "no cluster header");
        assert_eq!(ResponseInfo::of(&rsp).unwrap().flags.to_string(), "NC");

        for uri in ["http://shop/internal", "http://elsewhere/"] {
            let rsp = router.clone().oneshot(get(uri)).await.unwrap();
            assert_eq!(rsp.status(), 404, "{uri}");
            assert_eq!(ResponseInfo::of(&rsp).unwrap().flags.to_string(), "NR");
        }
        let grpc = Request::post("http://elsewhere/pkg.Svc/Call")
            .header("content-type", "application/grpc")
            .body(())
            .unwrap();
        let rsp = router.oneshot(grpc).await.unwrap();
        assert_eq!(rsp.status(), 200, "gRPC answers are trailers-only");
        assert_eq!(
            rsp.headers()["grpc-status"],
            "12",
            "UNIMPLEMENTED, as Envoy maps 404"
        );
    }
}
