//! Request authentication: Envoy's `jwt_authn` filter, which istiod builds from
//! RequestAuthentication, as a layer.
//!
//! A request whose tokens satisfy the requirement goes on with the verified token as a
//! [`VerifiedJwt`] extension and its principal and claims in the [`Metadata`] extension (what
//! an [`AuthorizationLayer`] below reads for `request.auth.principal` rules); one that does
//! not gets Envoy's 401 (403 for an audience the provider does not accept) with a
//! `www-authenticate` challenge. Inline key sets work on their own; fetched ones
//! (`remote_jwks`) need a fetcher ([`FetchJwks`], which [`MeshClient`] implements; see
//! [`AuthenticationLayer::with_client`]), and without one their providers refuse every token
//! (fail closed).
//!
//! The layer boxes its future: verifying may wait for a key set to be fetched.
//!
//! [`AuthorizationLayer`]: super::AuthorizationLayer
//! [`VerifiedJwt`]: crate::server::VerifiedJwt
//! [`MeshClient`]: crate::MeshClient

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use mesh_core::model::{JwksSource, JwtConfig};

use crate::flags::ResponseFlags;
use crate::respond::{self, LocalBody, ResponseInfo};
use crate::rules::jwks::{FetchJwks, RemoteJwks};
use crate::rules::jwt::{JwtFilter, RemoteKeys};
use crate::rules::metadata::Metadata;

/// Verifies requests' JWTs by a `jwt_authn` configuration.
///
/// ```
/// # async fn run() {
/// use std::sync::Arc;
/// use mesh_core::model::{JwksSource, JwtConfig, JwtProvider, JwtRequirement, RouteMatcher};
/// use mesh_tower::layer::AuthenticationLayer;
/// use mesh_tower::RspBody;
/// use tower::{Layer, ServiceExt, service_fn};
///
/// // RequestAuthentication with one issuer, and a rule that requires its token.
/// let provider = JwtProvider::new("https://issuer.example", JwksSource::Local(r#"{"keys":[]}"#.into()));
/// let config = JwtConfig {
///     providers: Box::new([("issuer".into(), Arc::new(provider))]),
///     rules: Box::new([(RouteMatcher::any(), JwtRequirement::Provider("issuer".into()))]),
///     requirement_map: Box::new([]),
/// };
/// let app = service_fn(|_req: http::Request<()>| async {
///     Ok::<_, std::convert::Infallible>(http::Response::new(RspBody::empty()))
/// });
/// let svc = AuthenticationLayer::new(Arc::new(config)).layer(app);
/// let rsp = svc.oneshot(http::Request::get("http://api/").body(()).unwrap()).await.unwrap();
/// assert_eq!(rsp.status(), 401);
/// assert_eq!(rsp.headers()["www-authenticate"], "Bearer realm=\"http://api/\"");
/// # }
/// # tokio::runtime::Runtime::new().unwrap().block_on(run());
/// ```
#[derive(Clone)]
pub struct AuthenticationLayer {
    filter: Arc<JwtFilter>,
}

impl std::fmt::Debug for AuthenticationLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthenticationLayer")
            .finish_non_exhaustive()
    }
}

/// Remote key sets fetched with a client, or none.
struct Fetcher(Option<Arc<dyn FetchJwks>>);

impl RemoteKeys for Fetcher {
    fn remote(&self, uri: &str, source: &JwksSource) -> Result<Arc<RemoteJwks>, String> {
        let (
            JwksSource::Remote {
                cluster,
                timeout,
                cache_duration,
                ..
            },
            Some(client),
        ) = (source, &self.0)
        else {
            return Err(format!(
                "the key set at {uri} must be fetched: build the layer with_client"
            ));
        };
        RemoteJwks::new(uri, cluster, *timeout, *cache_duration, client.clone())
    }
}

impl AuthenticationLayer {
    /// Verifies by `config`, with inline key sets only.
    pub fn new(config: Arc<JwtConfig>) -> Self {
        Self {
            filter: Arc::new(JwtFilter::new(config, &Fetcher(None))),
        }
    }

    /// Verifies by `config`, fetching remote key sets with `client` (from the cluster each
    /// provider names): a [`MeshClient`](crate::MeshClient), or a fetcher of your own.
    pub fn with_client(config: Arc<JwtConfig>, client: impl FetchJwks) -> Self {
        Self {
            filter: Arc::new(JwtFilter::new(config, &Fetcher(Some(Arc::new(client))))),
        }
    }
}

impl<S> tower::Layer<S> for AuthenticationLayer {
    type Service = Authenticate<S>;

    fn layer(&self, inner: S) -> Authenticate<S> {
        Authenticate {
            inner,
            filter: self.filter.clone(),
        }
    }
}

/// The service of [`AuthenticationLayer`].
#[derive(Clone)]
pub struct Authenticate<S> {
    inner: S,
    filter: Arc<JwtFilter>,
}

impl<S: std::fmt::Debug> std::fmt::Debug for Authenticate<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticate")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, B, RB> tower::Service<Request<B>> for Authenticate<S>
where
    S: tower::Service<Request<B>, Response = Response<RB>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Send,
    B: Send + 'static,
    RB: LocalBody + Send,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<RB>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        // The service made ready is the one called.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let filter = self.filter.clone();
        Box::pin(async move {
            let mut metadata = req
                .extensions_mut()
                .remove::<Metadata>()
                .unwrap_or_default();
            match filter.authenticate(&mut req, None, &mut metadata).await {
                Ok(()) => {
                    if !metadata.is_empty() {
                        req.extensions_mut().insert(metadata);
                    }
                    inner.call(req).await
                }
                Err(e) => {
                    let refusal = e.refusal(&req);
                    let grpc = respond::is_grpc(req.headers());
                    let info = ResponseInfo {
                        flags: ResponseFlags::NONE,
                        ..ResponseInfo::default()
                    };
                    let mut rsp = respond::local(refusal.status, refusal.message, grpc, info);
                    if let Some(v) = refusal.challenge {
                        rsp.headers_mut().insert(http::header::WWW_AUTHENTICATE, v);
                    }
                    Ok(rsp)
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use mesh_core::model::{JwtProvider, JwtRequirement, Principal, RouteMatcher};
    use mesh_test_support::jwt::Issuer;
    use tower::{Layer, ServiceBuilder, ServiceExt, service_fn};

    use super::*;
    use crate::body::RspBody;
    use crate::layer::AuthorizationLayer;
    use crate::rules::jwt::VerifiedJwt;

    fn config(provider: JwtProvider, requirement: JwtRequirement) -> Arc<JwtConfig> {
        Arc::new(JwtConfig {
            providers: Box::new([("issuer".into(), Arc::new(provider))]),
            rules: Box::new([(RouteMatcher::any(), requirement)]),
            requirement_map: Box::new([]),
        })
    }

    /// The app answers 200 with the verified subject, if any, in `x-sub`.
    fn app() -> impl tower::Service<
        Request<()>,
        Response = Response<RspBody>,
        Error = Infallible,
        Future = impl Send,
    > + Clone
    + Send
    + 'static {
        service_fn(|req: Request<()>| async move {
            let mut rsp = Response::new(RspBody::empty());
            if let Some(jwt) = req.extensions().get::<VerifiedJwt>() {
                let sub = jwt.claims["sub"].as_str().unwrap_or_default();
                rsp.headers_mut().insert("x-sub", sub.parse().unwrap());
            }
            Ok::<_, Infallible>(rsp)
        })
    }

    fn get(token: Option<&str>) -> Request<()> {
        let mut b = Request::get("http://api/items");
        if let Some(t) = token {
            b = b.header("authorization", format!("Bearer {t}"));
        }
        b.body(()).unwrap()
    }

    #[tokio::test]
    async fn verified_tokens_reach_the_app_and_bad_ones_get_envoys_401() {
        let issuer = Issuer::new("https://issuer.example");
        let provider = JwtProvider::new(
            issuer.issuer.as_str(),
            JwksSource::Local(issuer.jwks().into()),
        );
        let svc =
            AuthenticationLayer::new(config(provider, JwtRequirement::AllowMissing)).layer(app());
        let ok = svc
            .clone()
            .oneshot(get(Some(&issuer.token("alice", serde_json::json!({})))))
            .await;
        assert_eq!(ok.unwrap().headers()["x-sub"], "alice");
        assert_eq!(
            svc.clone().oneshot(get(None)).await.unwrap().status(),
            200,
            "allow_missing"
        );
        let other = Issuer::new("https://issuer.example");
        let forged = other.token("alice", serde_json::json!({}));
        let refused = svc.oneshot(get(Some(&forged))).await.unwrap();
        assert_eq!(refused.status(), 401);
        assert_eq!(
            refused.headers()["www-authenticate"],
            "Bearer realm=\"http://api/items\", error=\"invalid_token\""
        );
    }

    #[tokio::test]
    async fn remote_key_sets_without_a_client_refuse_every_token() {
        let issuer = Issuer::new("https://issuer.example");
        let remote = JwksSource::Remote {
            uri: "https://issuer.example/jwks".into(),
            cluster: "outbound|443||issuer.example".into(),
            timeout: std::time::Duration::from_secs(1),
            cache_duration: std::time::Duration::from_secs(300),
        };
        let provider = JwtProvider::new(issuer.issuer.as_str(), remote);
        let svc =
            AuthenticationLayer::new(config(provider, JwtRequirement::AllowMissing)).layer(app());
        let token = issuer.token("alice", serde_json::json!({}));
        assert_eq!(svc.oneshot(get(Some(&token))).await.unwrap().status(), 401);
    }

    #[tokio::test]
    async fn authorization_below_reads_the_request_principal() {
        // RequestAuthentication + AuthorizationPolicy `requestPrincipals: ["*"]`.
        let issuer = Issuer::new("https://issuer.example");
        let provider = JwtProvider::new(
            issuer.issuer.as_str(),
            JwksSource::Local(issuer.jwks().into()),
        );
        let principal = Principal::Metadata(mesh_core::model::MetadataMatcher {
            filter: "istio_authn".into(),
            path: Box::new(["request.auth.principal".into()]),
            value: mesh_core::model::ValueMatch::Present,
            invert: false,
        });
        let rbac = mesh_core::model::RbacFilter {
            rules: Some(mesh_core::model::RbacPolicies {
                action: mesh_core::model::RbacAction::Allow,
                policies: Box::new([(
                    "signed-in".into(),
                    mesh_core::model::RbacPolicy {
                        permissions: Box::new([mesh_core::model::Permission::Any]),
                        principals: Box::new([principal]),
                    },
                )]),
            }),
            shadow_rules: None,
            stat_prefix: "".into(),
            shadow_stat_prefix: "".into(),
        };
        let svc = ServiceBuilder::new()
            .layer(AuthenticationLayer::new(config(
                provider,
                JwtRequirement::AllowMissing,
            )))
            .layer(AuthorizationLayer::new(Arc::new(rbac)))
            .service(app());
        assert_eq!(svc.clone().oneshot(get(None)).await.unwrap().status(), 403);
        let token = issuer.token("alice", serde_json::json!({}));
        assert_eq!(svc.oneshot(get(Some(&token))).await.unwrap().status(), 200);
    }
}
