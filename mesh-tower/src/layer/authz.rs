//! Authorization: Envoy's RBAC filter, which istiod builds from AuthorizationPolicy (DENY,
//! then ALLOW; AUDIT as a LOG filter), as a layer.
//!
//! The rules read the request and its connection. Served by the mesh, the connection is the
//! one the request came on; around a service of your own, the layer reads the
//! [`PeerIdentity`] request extension (insert it where you terminate TLS; without it the
//! peer is unauthenticated, so rules that name principals do not match and an ALLOW policy
//! refuses) and the [`Metadata`] extension that [`AuthenticationLayer`] leaves (request
//! principals and claims). The client address is the peer's: deciding it from
//! `x-forwarded-for` is the connection manager's job, which a plain service does not have.
//!
//! Rules the layer cannot evaluate fail closed, never open: a request is refused when the
//! rules read the peer's address and no [`PeerIdentity`] says it, read the local address and
//! none was configured ([`AuthorizationLayer::local_addr`]), or read the TLS server name,
//! which a layer never sees. (An unknown address would otherwise miss every DENY rule.)
//!
//! [`AuthenticationLayer`]: super::AuthenticationLayer

use std::future::Ready;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::Either;
use http::{Request, Response, StatusCode};
use mesh_core::model::{Permission, Principal, RbacFilter, RequestView};

use crate::flags::ResponseFlags;
use crate::respond::{self, LocalBody, ResponseInfo};
use crate::rules::PeerIdentity;
use crate::rules::metadata::Metadata;
use crate::rules::rbac::{self, Connection};

/// Answers 403 `RBAC: access denied` to requests the RBAC filter's rules refuse; lets the
/// others through.
///
/// ```
/// # async fn run() {
/// use std::sync::Arc;
/// use mesh_core::model::{
///     Permission, Principal, RbacAction, RbacFilter, RbacPolicies, RbacPolicy, StringMatch,
///     StringMatcher,
/// };
/// use mesh_tower::layer::AuthorizationLayer;
/// use mesh_tower::RspBody;
/// use tower::{ServiceBuilder, ServiceExt, service_fn};
///
/// // AuthorizationPolicy: ALLOW GET on /api/* from anyone.
/// let policy = RbacPolicy {
///     permissions: Box::new([Permission::UrlPath(StringMatcher {
///         kind: StringMatch::Prefix("/api/".into()),
///         ignore_case: false,
///     })]),
///     principals: Box::new([Principal::Any]),
/// };
/// let filter = RbacFilter {
///     rules: Some(RbacPolicies {
///         action: RbacAction::Allow,
///         policies: Box::new([("api".into(), policy)]),
///     }),
///     shadow_rules: None,
///     stat_prefix: "".into(),
///     shadow_stat_prefix: "".into(),
/// };
/// let app = service_fn(|_req: http::Request<()>| async {
///     Ok::<_, std::convert::Infallible>(http::Response::new(RspBody::empty()))
/// });
/// let svc = ServiceBuilder::new()
///     .layer(AuthorizationLayer::new(Arc::new(filter)))
///     .service(app);
/// let denied = svc.clone().oneshot(http::Request::get("/admin").body(()).unwrap()).await;
/// assert_eq!(denied.unwrap().status(), 403);
/// let allowed = svc.oneshot(http::Request::get("/api/items").body(()).unwrap()).await;
/// assert_eq!(allowed.unwrap().status(), 200);
/// # }
/// # tokio::runtime::Runtime::new().unwrap().block_on(run());
/// ```
#[derive(Clone, Debug)]
pub struct AuthorizationLayer {
    filter: Arc<RbacFilter>,
    local: Option<SocketAddr>,
    reads: Reads,
}

/// What a filter's rules read of the connection besides the peer's certificate.
#[derive(Clone, Copy, Debug, Default)]
struct Reads {
    peer_address: bool,
    local_address: bool,
    server_name: bool,
}

impl AuthorizationLayer {
    /// Enforces `filter`.
    pub fn new(filter: Arc<RbacFilter>) -> Self {
        let mut reads = Reads::default();
        for (_, p) in filter.rules.iter().flat_map(|r| r.policies.iter()) {
            p.permissions
                .iter()
                .for_each(|x| permission_reads(x, &mut reads));
            p.principals
                .iter()
                .for_each(|x| principal_reads(x, &mut reads));
        }
        Self {
            filter,
            local: None,
            reads,
        }
    }

    /// The address the service is served on, which `destination_ip` and `destination_port`
    /// rules read (Istio's `to.operation.ports`). Unset, requests such rules would judge are
    /// refused.
    pub fn local_addr(mut self, addr: SocketAddr) -> Self {
        self.local = Some(addr);
        self
    }
}

fn permission_reads(p: &Permission, reads: &mut Reads) {
    match p {
        Permission::And(all) | Permission::Or(all) => {
            all.iter().for_each(|x| permission_reads(x, reads))
        }
        Permission::Not(inner) => permission_reads(inner, reads),
        Permission::DestinationIp(_)
        | Permission::DestinationPort(_)
        | Permission::DestinationPortRange(..) => reads.local_address = true,
        Permission::RequestedServerName(_) => reads.server_name = true,
        Permission::Any
        | Permission::Header(_)
        | Permission::UrlPath(_)
        | Permission::Metadata(_) => {}
    }
}

fn principal_reads(p: &Principal, reads: &mut Reads) {
    match p {
        Principal::And(all) | Principal::Or(all) => {
            all.iter().for_each(|x| principal_reads(x, reads))
        }
        Principal::Not(inner) => principal_reads(inner, reads),
        Principal::SourceIp(_) | Principal::DirectRemoteIp(_) | Principal::RemoteIp(_) => {
            reads.peer_address = true
        }
        Principal::Any
        | Principal::Authenticated(_)
        | Principal::Header(_)
        | Principal::UrlPath(_)
        | Principal::Metadata(_)
        | Principal::FilterState { .. } => {}
    }
}

impl<S> tower::Layer<S> for AuthorizationLayer {
    type Service = Authorize<S>;

    fn layer(&self, inner: S) -> Authorize<S> {
        Authorize {
            inner,
            filter: self.filter.clone(),
            local: self.local,
            reads: self.reads,
        }
    }
}

/// The service of [`AuthorizationLayer`].
#[derive(Clone, Debug)]
pub struct Authorize<S> {
    inner: S,
    filter: Arc<RbacFilter>,
    local: Option<SocketAddr>,
    reads: Reads,
}

impl<S, B, RB> tower::Service<Request<B>> for Authorize<S>
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
        let told = req.extensions().get::<PeerIdentity>().is_some();
        if (self.reads.peer_address && !told)
            || (self.reads.local_address && self.local.is_none())
            || self.reads.server_name
        {
            tracing::debug!(
                path = req.uri().path(),
                "RBAC rules read what this layer is not told; denied"
            );
            return Either::Left(std::future::ready(Ok(denied(&req))));
        }
        let unknown;
        let peer = match req.extensions().get::<PeerIdentity>() {
            Some(p) => p,
            None => {
                // No connection told: an unauthenticated peer nobody knows.
                unknown = PeerIdentity::new((Ipv4Addr::UNSPECIFIED, 0).into());
                &unknown
            }
        };
        let none = Metadata::default();
        let metadata = req.extensions().get::<Metadata>().unwrap_or(&none);
        let conn = Connection {
            peer: peer.addr,
            client: peer.addr.ip(),
            local: self.local.unwrap_or((Ipv4Addr::UNSPECIFIED, 0).into()),
            spiffe_id: peer.spiffe_id.as_ref(),
            certificate: peer.certificate.as_deref(),
            sni: None,
            metadata,
        };
        let rbac::Decision { verdict, shadow } =
            rbac::decide(&self.filter, &RequestView::from_request(&req), &conn);
        let allowed = verdict == rbac::Verdict::Allow;
        if let Some(shadow) = shadow {
            let metadata = req.extensions_mut().get_or_insert_default::<Metadata>();
            shadow.publish(&self.filter, metadata);
        }
        if allowed {
            return Either::Right(self.inner.call(req));
        }
        Either::Left(std::future::ready(Ok(denied(&req))))
    }
}

/// Envoy's answer to a request RBAC refuses.
fn denied<B, RB: LocalBody>(req: &Request<B>) -> Response<RB> {
    let grpc = respond::is_grpc(req.headers());
    let info = ResponseInfo {
        flags: ResponseFlags::NONE,
        ..ResponseInfo::default()
    };
    respond::local(StatusCode::FORBIDDEN, rbac::DENIED, grpc, info)
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use mesh_core::identity::PeerCertificate;
    use mesh_core::model::{
        MetadataMatcher, Permission, Principal, RbacAction, RbacPolicies, RbacPolicy,
        StringMatcher, ValueMatch,
    };
    use tower::{Layer, ServiceExt, service_fn};

    use super::*;
    use crate::body::RspBody;

    const ADMIN: &str = "spiffe://cluster.local/ns/ops/sa/admin";

    fn filter(action: RbacAction, principals: Principal, ports: Option<u16>) -> RbacFilter {
        let permission = ports.map_or(Permission::Any, Permission::DestinationPort);
        RbacFilter {
            rules: Some(RbacPolicies {
                action,
                policies: Box::new([(
                    "p".into(),
                    RbacPolicy {
                        permissions: Box::new([permission]),
                        principals: Box::new([principals]),
                    },
                )]),
            }),
            shadow_rules: None,
            stat_prefix: "".into(),
            shadow_stat_prefix: "".into(),
        }
    }

    /// The app answers 200, telling what metadata reached it.
    async fn status(layer: AuthorizationLayer, req: Request<()>) -> (u16, Option<Metadata>) {
        let app = service_fn(|req: Request<()>| async move {
            let md = req.extensions().get::<Metadata>().cloned();
            let mut rsp = Response::new(RspBody::empty());
            rsp.extensions_mut().insert(md);
            Ok::<_, Infallible>(rsp)
        });
        let rsp = layer.layer(app).oneshot(req).await.unwrap();
        let md = rsp
            .extensions()
            .get::<Option<Metadata>>()
            .cloned()
            .flatten();
        (rsp.status().as_u16(), md)
    }

    fn from(peer: Option<&str>) -> Request<()> {
        let mut req = Request::get("http://svc/x").body(()).unwrap();
        let addr = "10.1.2.3:40000".parse().unwrap();
        let identity = match peer {
            Some(id) => PeerIdentity::verified(
                addr,
                Arc::new(PeerCertificate {
                    uri_sans: Box::new([id.into()]),
                    ..PeerCertificate::default()
                }),
            ),
            None => PeerIdentity::new(addr),
        };
        req.extensions_mut().insert(identity);
        req
    }

    #[tokio::test]
    async fn principals_come_from_the_peer_identity_extension() {
        let only_admin = Arc::new(filter(
            RbacAction::Allow,
            Principal::Authenticated(Some(StringMatcher::exact(ADMIN))),
            None,
        ));
        let layer = AuthorizationLayer::new(only_admin);
        assert_eq!(status(layer.clone(), from(Some(ADMIN))).await.0, 200);
        let other = "spiffe://cluster.local/ns/ops/sa/intern";
        assert_eq!(status(layer.clone(), from(Some(other))).await.0, 403);
        assert_eq!(status(layer.clone(), from(None)).await.0, 403, "plaintext");
        let bare = Request::get("http://svc/x").body(()).unwrap();
        assert_eq!(
            status(layer, bare).await.0,
            403,
            "no identity told: unknown"
        );
    }

    #[tokio::test]
    async fn destination_ports_read_the_configured_local_address() {
        let f = Arc::new(filter(RbacAction::Deny, Principal::Any, Some(9080)));
        let served =
            AuthorizationLayer::new(f.clone()).local_addr("10.0.0.9:9080".parse().unwrap());
        assert_eq!(status(served, from(None)).await.0, 403);
        let other = AuthorizationLayer::new(f.clone()).local_addr("10.0.0.9:8000".parse().unwrap());
        assert_eq!(status(other, from(None)).await.0, 200);
        // Unset, the DENY cannot be judged: refused rather than let through.
        let unset = AuthorizationLayer::new(f);
        assert_eq!(status(unset, from(None)).await.0, 403);
    }

    #[tokio::test]
    async fn rules_on_what_the_layer_is_not_told_fail_closed() {
        // DENY from 10.0.0.0/8: a request whose peer nobody told is not let through as if it
        // came from elsewhere.
        let ten = Principal::SourceIp(mesh_core::model::Cidr {
            addr: "10.0.0.0".parse().unwrap(),
            prefix_len: 8,
        });
        let deny = AuthorizationLayer::new(Arc::new(filter(RbacAction::Deny, ten, None)));
        let bare = Request::get("http://svc/x").body(()).unwrap();
        assert_eq!(status(deny.clone(), bare).await.0, 403);
        assert_eq!(
            status(deny.clone(), from(None)).await.0,
            403,
            "10.1.2.3 is denied"
        );
        let mut outside = Request::get("http://svc/x").body(()).unwrap();
        outside
            .extensions_mut()
            .insert(PeerIdentity::new("192.0.2.1:4000".parse().unwrap()));
        assert_eq!(status(deny, outside).await.0, 200);
        // A server-name rule, nested under NOT: never seen here, so always refused.
        let sni = Permission::Not(Box::new(Permission::RequestedServerName(
            StringMatcher::exact("api.example"),
        )));
        let mut f = filter(RbacAction::Deny, Principal::Any, None);
        if let Some(r) = &mut f.rules {
            r.policies[0].1.permissions = Box::new([sni]);
        }
        let layer = AuthorizationLayer::new(Arc::new(f)).local_addr("10.0.0.9:80".parse().unwrap());
        assert_eq!(status(layer, from(None)).await.0, 403);
    }

    #[tokio::test]
    async fn request_principals_come_from_the_metadata_extension_and_shadow_rules_publish() {
        let principal = Principal::Metadata(MetadataMatcher {
            filter: "istio_authn".into(),
            path: Box::new(["request.auth.principal".into()]),
            value: ValueMatch::String(StringMatcher::exact("issuer/alice")),
            invert: false,
        });
        let mut f = filter(RbacAction::Allow, principal, None);
        f.shadow_rules = Some(RbacPolicies {
            action: RbacAction::Deny,
            policies: Box::new([]),
        });
        f.shadow_stat_prefix = "istio_dry_run_allow_".into();
        let layer = AuthorizationLayer::new(Arc::new(f));
        assert_eq!(status(layer.clone(), from(None)).await.0, 403);
        let mut req = from(None);
        let mut md = Metadata::default();
        md.set(
            "istio_authn",
            "request.auth.principal",
            "issuer/alice".into(),
        );
        req.extensions_mut().insert(md);
        let (code, md) = status(layer, req).await;
        assert_eq!(code, 200);
        let result = md.unwrap();
        let result = result.get(
            "envoy.filters.http.rbac",
            &["istio_dry_run_allow_shadow_engine_result"],
        );
        assert_eq!(result, Some(&"allowed".into()));
    }

    #[tokio::test]
    async fn grpc_requests_are_denied_as_grpc() {
        let f = Arc::new(filter(RbacAction::Deny, Principal::Any, None));
        let app = service_fn(|_req: Request<()>| async {
            Ok::<_, Infallible>(Response::new(RspBody::empty()))
        });
        let req = Request::post("http://svc/pkg.Svc/Call")
            .header("content-type", "application/grpc")
            .body(())
            .unwrap();
        let rsp = AuthorizationLayer::new(f)
            .layer(app)
            .oneshot(req)
            .await
            .unwrap();
        assert_eq!(rsp.status(), 200);
        assert_eq!(rsp.headers()["grpc-status"], "7", "PERMISSION_DENIED");
    }
}
