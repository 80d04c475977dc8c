//! The inbound HTTP filters of a filter chain, in the listener's order: what istiod and
//! mesh-control send is JWT authentication, then RBAC (CUSTOM's marking rules, DENY, ALLOW,
//! AUDIT), then ext_authz, with local rate limits wherever a listener puts them.
//!
//! A route of the chain's (inline) route table may disable a filter or replace its config
//! (`typed_per_filter_config`); a request no route matches gets Envoy's 404.
//!
//! Requests pass through without allocation when the filters do not need to write anything:
//! RBAC matching borrows the request, and dynamic metadata stays empty until a filter sets it.

use std::sync::Arc;

use http::{HeaderName, HeaderValue, Request, StatusCode};
use mesh_core::model::{
    ClientAddress, FilterConfig, FilterOverride, ForwardClientCert, HttpConnectionManager,
    JwtPerRoute, LocalRateLimit, PathNormalization, RbacFilter, RequestView, RouteSource,
    RouteTable,
};

use super::ext_authz::{Decision, ExtAuthzFilter};
use super::{Caller, Reply, rbac};
use crate::MeshClient;
use crate::flags::ResponseFlags;
use crate::hop;
use crate::normalize::normalize_request;
use crate::rules::jwt::{JwtFilter, RemoteKeys};
use crate::rules::metadata::Metadata;
use crate::rules::rate_limit::{LIMITED, RateLimiter};

/// `x-forwarded-client-cert`, as a name (a lookup by `&str` parses it on every request).
const XFCC: HeaderName = HeaderName::from_static("x-forwarded-client-cert");

/// A chain's filters, ready for requests.
pub(crate) struct HttpFilters {
    /// The connection manager's own work before any filter; `None` when requests are served
    /// without a listener (no control plane).
    manager: Option<Manager>,
    filters: Box<[Filter]>,
    /// Whether one of `filters` is RBAC (only RBAC reads the client address).
    rbac: bool,
    routes: Option<Arc<RouteTable>>,
    /// Rate limits that routes configure for themselves, by route.
    route_limits: Box<[RouteLimit]>,
}

/// What the HTTP connection manager does itself.
struct Manager {
    /// Path checks and normalization, before the route is chosen.
    paths: PathNormalization,
    /// Who the client is (RBAC's `remote_ip`).
    client_address: ClientAddress,
    /// Whether a client's `x-forwarded-client-cert` is kept.
    forward_client_cert: ForwardClientCert,
}

struct Filter {
    name: Arc<str>,
    /// Off unless a route turns it on (with a config of its own).
    disabled: bool,
    kind: Kind,
}

enum Kind {
    Rbac(Arc<RbacFilter>),
    RateLimit(RateLimiter),
    Jwt(JwtFilter),
    ExtAuthz(ExtAuthzFilter),
    /// A filter that cannot work as configured (e.g. no authorization service): fail closed.
    Broken {
        why: String,
    },
    /// An optional filter this server does not implement.
    Skip,
}

struct RouteLimit {
    /// The override's address: overrides live in `HttpFilters::routes`, which this owns, so
    /// the address names one override (a route's, or a virtual host's shared by its routes,
    /// as Envoy gives each per-route config its own bucket) for as long as this exists. It is
    /// only compared.
    config: usize,
    filter: Arc<str>,
    limiter: RateLimiter,
}

fn address(c: &Arc<LocalRateLimit>) -> usize {
    Arc::as_ptr(c) as usize
}

/// What the server needs to build filters.
pub(crate) struct FilterContext<'a> {
    pub(crate) client: &'a dyn Fn() -> MeshClient,
    pub(crate) remote_keys: &'a dyn RemoteKeys,
}

/// The outcome of running the filters.
pub(crate) enum Verdict {
    /// Hand the request to the application, adding these headers to its response.
    Continue(Vec<(HeaderName, HeaderValue, bool)>),
    /// Answer with this (boxed: a response is large, and answering here is the rare case).
    Reply(Box<Reply>),
}

fn answer(r: Reply) -> Verdict {
    Verdict::Reply(Box::new(r))
}

impl HttpFilters {
    /// No filters and no routes: every request goes straight to the application.
    pub(crate) fn none() -> Self {
        Self {
            manager: None,
            filters: Box::new([]),
            rbac: false,
            routes: None,
            route_limits: Box::new([]),
        }
    }

    /// Prepares a chain's connection manager and filters (rate-limit buckets start full on
    /// each configuration).
    pub(crate) fn new(hcm: &HttpConnectionManager, cx: &FilterContext<'_>) -> Self {
        let filters: Box<[Filter]> = hcm
            .http_filters
            .iter()
            .map(|f| Filter {
                name: f.name.clone(),
                disabled: f.disabled,
                kind: kind(&f.config, cx),
            })
            .collect();
        let routes = match &hcm.routes {
            RouteSource::Inline(t) => Some(t.clone()),
            // The translator refuses RDS on server chains (routes inline only).
            RouteSource::Rds(_) => None,
        };
        let mut route_limits = Vec::new();
        for vh in routes.iter().flat_map(|t| t.virtual_hosts.iter()) {
            let overrides = std::iter::once(&vh.filter_overrides)
                .chain(vh.routes.iter().map(|r| &r.filter_overrides));
            for (name, o) in overrides.flat_map(|o| o.0.iter()) {
                if let FilterOverride::Config(FilterConfig::LocalRateLimit(rl)) = o {
                    route_limits.push(RouteLimit {
                        config: address(rl),
                        filter: name.clone(),
                        limiter: RateLimiter::new(rl.clone()),
                    });
                }
            }
        }
        Self {
            manager: Some(Manager {
                paths: hcm.path_normalization,
                client_address: hcm.client_address,
                forward_client_cert: hcm.forward_client_cert,
            }),
            rbac: filters.iter().any(|f| matches!(f.kind, Kind::Rbac(_))),
            filters,
            routes,
            route_limits: route_limits.into(),
        }
    }

    /// Whether requests skip the connection manager entirely (no listener).
    pub(crate) fn is_empty(&self) -> bool {
        self.manager.is_none()
    }

    /// Runs the connection manager's checks and the filters over a request.
    pub(crate) async fn run<B>(&self, req: &mut Request<B>, caller: &Caller<'_>) -> Verdict {
        let grpc = crate::respond::is_grpc(req.headers());
        // Before the route and every filter, as Envoy: policy decides on the request the
        // application will see.
        let client = match &self.manager {
            Some(m) => {
                if let Err(reply) = m.check(req, caller, grpc) {
                    return Verdict::Reply(reply);
                }
                // Decided once, before any filter can change x-forwarded-for, and only when an
                // RBAC filter can ask (it costs a header lookup).
                if self.rbac {
                    m.client_address
                        .client(req.headers(), caller.peer.addr.ip())
                } else {
                    caller.peer.addr.ip()
                }
            }
            None => caller.peer.addr.ip(),
        };
        let route = match &self.routes {
            None => None,
            Some(table) => {
                let view = RequestView::from_request(req);
                match table.find(&view, fastrand::u32(0..1_000_000)) {
                    Some(found) => Some(found),
                    None => {
                        return answer(Reply::new(
                            StatusCode::NOT_FOUND,
                            "",
                            grpc,
                            ResponseFlags::NO_ROUTE_FOUND,
                        ));
                    }
                }
            }
        };
        let override_of = |name: &str| {
            route.and_then(|(vh, r)| {
                r.filter_overrides
                    .get(name)
                    .or_else(|| vh.filter_overrides.get(name))
            })
        };
        let mut metadata = Metadata::default();
        let mut response_headers = Vec::new();
        for f in self.filters.iter() {
            let o = override_of(&f.name);
            let replaced = match o {
                Some(FilterOverride::Disabled) => continue,
                Some(FilterOverride::Config(c)) => Some(c),
                None if f.disabled => continue,
                None => None,
            };
            match &f.kind {
                Kind::Rbac(listener_level) => {
                    let config = match replaced {
                        Some(FilterConfig::Rbac(r)) => r,
                        _ => listener_level,
                    };
                    if let Some(reply) =
                        enforce_rbac(config, req, caller, client, &mut metadata, grpc)
                    {
                        return answer(reply);
                    }
                }
                Kind::RateLimit(listener_level) => {
                    let limiter = match replaced {
                        Some(FilterConfig::LocalRateLimit(rl)) => self
                            .route_limits
                            .iter()
                            .find(|l| l.config == address(rl) && l.filter == f.name)
                            .map_or(listener_level, |l| &l.limiter),
                        _ => listener_level,
                    };
                    if limiter.limited() {
                        return answer(rate_limited(limiter, grpc));
                    }
                }
                Kind::Jwt(jwt) => {
                    let per_route = match replaced {
                        Some(FilterConfig::JwtPerRoute(p)) => Some(&**p),
                        _ => None::<&JwtPerRoute>,
                    };
                    // Boxed, as is the ext_authz check below: both can wait on a MeshClient
                    // call, whose future would otherwise be part of every request's future,
                    // copied whole into each HTTP/2 stream's task (perf showed the copies).
                    let verified = Box::pin(jwt.authenticate(req, per_route, &mut metadata));
                    if let Err(e) = verified.await {
                        tracing::debug!(
                            reason = e.message(),
                            path = req.uri().path(),
                            "JWT refused"
                        );
                        let refusal = e.refusal(req);
                        let mut reply =
                            Reply::new(refusal.status, refusal.message, grpc, ResponseFlags::NONE);
                        if let Some(v) = refusal.challenge {
                            reply.header(http::header::WWW_AUTHENTICATE, v, false);
                        }
                        return answer(reply);
                    }
                }
                Kind::ExtAuthz(authz) => {
                    match Box::pin(authz.check(req, caller, &metadata, grpc)).await {
                        Decision::Deny(reply) => return answer(reply),
                        Decision::Continue(changes) => {
                            for name in changes.remove {
                                req.headers_mut().remove(name);
                            }
                            for (name, value, append) in changes.upstream {
                                if append {
                                    req.headers_mut().append(name, value);
                                } else {
                                    req.headers_mut().insert(name, value);
                                }
                            }
                            response_headers.extend(changes.downstream);
                        }
                    }
                }
                Kind::Broken { why } => {
                    tracing::error!(filter = %f.name, %why, "filter cannot work; denying");
                    return answer(Reply::new(
                        StatusCode::FORBIDDEN,
                        rbac::DENIED,
                        grpc,
                        ResponseFlags::NONE,
                    ));
                }
                Kind::Skip => {}
            }
        }
        Verdict::Continue(response_headers)
    }
}

impl Manager {
    /// What Envoy's codec and connection manager check and change before routing: one
    /// `Host` (more is a 400, as Envoy answers; a policy would read one, the application maybe
    /// another), the headers `Connection` nominates (removed), the path (normalized), and a
    /// client's `x-forwarded-client-cert` (removed unless kept by
    /// `forward_client_cert_details`).
    fn check<B>(
        &self,
        req: &mut Request<B>,
        caller: &Caller<'_>,
        grpc: bool,
    ) -> Result<(), Box<Reply>> {
        if req
            .headers()
            .get_all(http::header::HOST)
            .iter()
            .nth(1)
            .is_some()
        {
            return Err(Box::new(Reply::new(
                StatusCode::BAD_REQUEST,
                "",
                grpc,
                ResponseFlags::NONE,
            )));
        }
        // Headers the `Connection` header nominates are hop-by-hop: removed before policy
        // and the application see the request, as Envoy's HTTP/1 codec removes them (a DENY
        // rule on a header the client nominated then sees it absent, in Envoy as here). What
        // Envoy refuses, this refuses.
        if req.headers().contains_key(http::header::CONNECTION) && !hop::is_upgrade(req.headers()) {
            let nominated = hop::nominated(req.headers());
            if nominated.refused {
                return Err(Box::new(Reply::new(
                    StatusCode::BAD_REQUEST,
                    "",
                    grpc,
                    ResponseFlags::NONE,
                )));
            }
            for name in &nominated.names {
                req.headers_mut().remove(name);
            }
        }
        if let Err(rejection) = normalize_request(&self.paths, req) {
            let mut reply = Reply::new(rejection.status(grpc), "", grpc, ResponseFlags::NONE);
            if let Some(location) = rejection.location().filter(|_| !grpc) {
                reply.header(http::header::LOCATION, location, false);
            }
            return Err(Box::new(reply));
        }
        let keep = match self.forward_client_cert {
            ForwardClientCert::Sanitize => false,
            ForwardClientCert::ForwardOnMtls => caller.peer.certificate.is_some(),
            ForwardClientCert::Always => true,
        };
        if !keep {
            req.headers_mut().remove(XFCC);
        }
        Ok(())
    }
}

fn kind(config: &FilterConfig, cx: &FilterContext<'_>) -> Kind {
    match config {
        FilterConfig::Rbac(r) => Kind::Rbac(r.clone()),
        FilterConfig::LocalRateLimit(rl) => Kind::RateLimit(RateLimiter::new(rl.clone())),
        FilterConfig::Jwt(j) => Kind::Jwt(JwtFilter::new(j.clone(), cx.remote_keys)),
        FilterConfig::ExtAuthz(e) => match ExtAuthzFilter::new(e.clone(), (cx.client)()) {
            Ok(f) => Kind::ExtAuthz(f),
            Err(why) => {
                tracing::error!(%why, "ext_authz filter unusable; the requests it checks are denied");
                Kind::Broken { why }
            }
        },
        // The router ends the chain; faults and per-route-only configs do nothing here.
        FilterConfig::Router
        | FilterConfig::Fault(_)
        | FilterConfig::JwtPerRoute(_)
        | FilterConfig::Unsupported { .. } => Kind::Skip,
    }
}

/// Envoy's answer to a request over a local rate limit: 429 `local_rate_limited` (or the
/// configured status), flag `RL`, with the filter's response headers.
fn rate_limited(limiter: &RateLimiter, grpc: bool) -> Reply {
    let c = limiter.config();
    let mut reply = Reply::new(c.status, LIMITED, grpc, ResponseFlags::RATE_LIMITED);
    for (k, v) in c.response_headers.iter() {
        reply.header(k.clone(), v.clone(), true);
    }
    reply
}

/// Enforces one RBAC filter, publishing what its shadow rules would have done.
fn enforce_rbac<B>(
    filter: &RbacFilter,
    req: &Request<B>,
    caller: &Caller<'_>,
    client: std::net::IpAddr,
    metadata: &mut Metadata,
    grpc: bool,
) -> Option<Reply> {
    let view = RequestView::from_request(req);
    let conn = rbac::Connection {
        peer: caller.peer.addr,
        client,
        local: caller.local,
        spiffe_id: caller.peer.spiffe_id.as_ref(),
        certificate: caller.peer.certificate.as_deref(),
        sni: caller.sni,
        metadata: &*metadata,
    };
    let rbac::Decision { verdict, shadow } = rbac::decide(filter, &view, &conn);
    if let Some(shadow) = shadow {
        shadow.publish(filter, metadata);
    }
    match verdict {
        rbac::Verdict::Allow => None,
        rbac::Verdict::Deny(_) => Some(Reply::new(
            StatusCode::FORBIDDEN,
            rbac::DENIED,
            grpc,
            ResponseFlags::NONE,
        )),
    }
}
