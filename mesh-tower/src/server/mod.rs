//! The inbound side: [`serve`] an application behind the mesh's inbound listener.
//!
//! ```text
//! TCP accept → filter chain (PeerAuthentication: STRICT needs mTLS; PERMISSIVE peeks for a TLS
//!  ClientHello; DISABLE is plaintext) → rustls with the workload certificate → peer identity
//!  → hyper (HTTP/1.1 and HTTP/2) → RBAC (DENY, then ALLOW) → the application
//! ```
//!
//! The inbound listener comes from the control plane under the bootstrap's
//! `server_listener_resource_name_template` (istiod and mesh-control:
//! `xds.istio.io/grpc/lds/inbound/IP:PORT`); it is watched, and a change applies to new
//! connections and, for RBAC, to the next request. As gRFC A36 asks of xDS servers, nothing is
//! served until the listener has arrived, and a listener the control plane does not have means
//! not serving. Without a template (static mode, or no control plane), the application is
//! served in plaintext with no policy.

pub mod rbac;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_core::Mesh;
use mesh_core::identity::SpiffeId;
use mesh_core::identity::tls::{ClientAuth, server_config};
use mesh_core::model::{
    CertSource, FilterChain, FilterConfig, HttpFilter, ListenerKind, LocalRateLimit, NetworkFilter,
    RequestView,
};
use mesh_core::xds::Resource;
use tokio::net::TcpStream;

use crate::body::BoxError;

/// Who called, as the inbound side verified it. Inserted into every request's extensions.
///
/// ```
/// # fn handler(req: http::Request<()>) {
/// if let Some(peer) = req.extensions().get::<mesh_tower::server::PeerIdentity>() {
///     println!("{} from {:?}", peer.addr, peer.spiffe_id);
/// }
/// # }
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct PeerIdentity {
    /// The peer's address.
    pub addr: SocketAddr,
    /// Its SPIFFE ID, when it presented a verified certificate (mTLS).
    pub spiffe_id: Option<SpiffeId>,
    /// Whether the connection is TLS.
    pub tls: bool,
}

/// Why serving stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The address could not be bound.
    #[error("bind {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The control plane says the inbound listener does not exist.
    #[error("inbound listener {0:?} does not exist on the control plane: not serving (gRFC A36)")]
    NoListener(String),
    /// The mesh stopped.
    #[error("the mesh's xDS client stopped")]
    Stopped,
}

/// One filter chain, ready to serve connections.
struct Chain {
    config: FilterChain,
    tls: Option<Arc<rustls::ServerConfig>>,
    /// Why TLS cannot be offered (a missing certificate provider): such chains refuse.
    broken: Option<String>,
    filters: Arc<[Compiled]>,
}

/// An HTTP filter, ready for requests.
enum Compiled {
    Rbac(Arc<mesh_core::model::RbacFilter>),
    RateLimit {
        config: Arc<LocalRateLimit>,
        limiter: governor::DefaultDirectRateLimiter,
    },
    /// A security filter this server does not enforce yet: requests are denied.
    FailClosed {
        name: Arc<str>,
        kind: &'static str,
    },
}

/// Prepares a chain's HTTP filters (rate-limit buckets start full on each configuration).
fn compile(filters: &[HttpFilter]) -> Arc<[Compiled]> {
    filters
        .iter()
        .filter(|f| !f.disabled)
        .filter_map(|f| match &f.config {
            FilterConfig::Rbac(r) => Some(Compiled::Rbac(r.clone())),
            FilterConfig::LocalRateLimit(rl) => {
                let bucket = rl.bucket?;
                Some(Compiled::RateLimit {
                    limiter: governor::RateLimiter::direct(quota(&bucket)?),
                    config: rl.clone(),
                })
            }
            FilterConfig::Jwt(_) => Some(Compiled::FailClosed {
                name: f.name.clone(),
                kind: "jwt_authn",
            }),
            FilterConfig::ExtAuthz(_) => Some(Compiled::FailClosed {
                name: f.name.clone(),
                kind: "ext_authz",
            }),
            _ => None,
        })
        .collect()
}

/// Envoy's token bucket as a GCRA quota: the same burst (`max_tokens`) and the same average
/// rate (`tokens_per_fill` per `fill_interval`), refilled smoothly rather than in steps.
fn quota(b: &mesh_core::model::TokenBucket) -> Option<governor::Quota> {
    let per_token = b.fill_interval.checked_div(b.tokens_per_fill.max(1))?;
    let burst = std::num::NonZeroU32::new(b.max_tokens.max(1))?;
    Some(governor::Quota::with_period(per_token)?.allow_burst(burst))
}

/// The inbound listener, ready to serve.
struct Inbound {
    chains: Vec<Chain>,
    default: Option<Chain>,
    sniff: bool,
}

/// Serves `app` on `addr` behind the mesh's inbound policy. Runs until an error; connections
/// are served concurrently, HTTP/1.1 and HTTP/2 alike.
pub async fn serve<S, B>(mesh: &Mesh, addr: SocketAddr, app: S) -> Result<(), ServeError>
where
    S: tower::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError> + Send,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| ServeError::Bind { addr, source })?;
    let config: Arc<ArcSwapOption<Inbound>> = Arc::default();
    match mesh.bootstrap().server_listener_name(local) {
        Some(name) => follow(mesh, name, config.clone()).await?,
        None => {
            tracing::info!(%local, "no server listener template in the bootstrap: serving plaintext without policy");
            config.store(Some(Arc::new(Inbound {
                chains: Vec::new(),
                default: Some(Chain {
                    config: plain_chain(),
                    tls: None,
                    broken: None,
                    filters: Arc::new([]),
                }),
                sniff: false,
            })));
        }
    }
    loop {
        let Ok((tcp, peer)) = listener.accept().await else {
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let Some(inbound) = config.load_full() else {
            continue;
        };
        let app = app.clone();
        let live = config.clone();
        tokio::spawn(async move {
            if let Err(e) = connection(inbound, live, tcp, peer, local, app).await {
                tracing::debug!(%peer, error = %e, "inbound connection ended");
            }
        });
    }
}

/// Waits for the inbound listener, then keeps `config` current in a task.
async fn follow(
    mesh: &Mesh,
    name: String,
    config: Arc<ArcSwapOption<Inbound>>,
) -> Result<(), ServeError> {
    let mut watch = mesh
        .watch_listener(&name)
        .await
        .map_err(|_| ServeError::Stopped)?;
    loop {
        let st = watch.current();
        if let Some(Resource::Listener(l)) = &st.value {
            config.store(Some(Arc::new(build(mesh, l))));
            break;
        }
        if st.does_not_exist() {
            return Err(ServeError::NoListener(name));
        }
        watch.changed().await;
    }
    let mesh = mesh.clone();
    tokio::spawn(async move {
        loop {
            watch.changed().await;
            match watch.current().value {
                Some(Resource::Listener(l)) => {
                    tracing::info!(listener = %name, "inbound configuration updated");
                    config.store(Some(Arc::new(build(&mesh, &l))));
                }
                _ => {
                    // A deleted listener (kept by default, gRFC A88) leaves the last one serving.
                }
            }
        }
    });
    Ok(())
}

fn plain_chain() -> FilterChain {
    FilterChain {
        name: "plaintext".into(),
        matcher: Default::default(),
        tls: None,
        filter: NetworkFilter::Unsupported {
            name: "passthrough".into(),
        },
    }
}

fn build(mesh: &Mesh, l: &mesh_core::model::Listener) -> Inbound {
    let ListenerKind::Socket(s) = &l.kind else {
        tracing::error!(listener = %l.name, "an API listener cannot serve inbound traffic");
        return Inbound {
            chains: Vec::new(),
            default: None,
            sniff: false,
        };
    };
    let chain = |fc: &FilterChain| {
        let filters = match &fc.filter {
            NetworkFilter::Http(h) => compile(&h.http_filters),
            _ => Arc::new([]),
        };
        let (tls, broken) = match &fc.tls {
            None => (None, None),
            Some(t) => match &t.identity {
                CertSource::Provider { instance, .. } => {
                    match mesh.certificate_provider(instance) {
                        Some(p) => {
                            let auth = if t.require_client_certificate {
                                ClientAuth::Required
                            } else {
                                ClientAuth::Optional
                            };
                            // HTTP's, plus what Istio clients offer (Envoy and our ISTIO_MUTUAL
                            // clusters send `istio-peer-exchange` and `istio`): rustls refuses a
                            // handshake with no protocol in common. hyper tells h1 from h2 itself.
                            let mut alpn: Vec<Vec<u8>> =
                                t.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
                            for p in ["h2", "http/1.1", "istio-peer-exchange", "istio"] {
                                if !alpn.iter().any(|x| x == p.as_bytes()) {
                                    alpn.push(p.as_bytes().to_vec());
                                }
                            }
                            (Some(Arc::new(server_config(p, auth, alpn))), None)
                        }
                        None => (
                            None,
                            Some(format!(
                                "certificate provider {instance:?} is not in the bootstrap"
                            )),
                        ),
                    }
                }
                other => (
                    None,
                    Some(format!("certificate source {other:?} is not supported")),
                ),
            },
        };
        if let Some(why) = &broken {
            tracing::error!(chain = %fc.name, %why, "TLS chain cannot serve; its connections are refused");
        }
        Chain {
            config: fc.clone(),
            tls,
            broken,
            filters,
        }
    };
    let chains: Vec<Chain> = s.filter_chains.iter().map(chain).collect();
    let sniff = chains
        .iter()
        .any(|c| c.config.matcher.transport_protocol.is_some());
    Inbound {
        default: s.default_filter_chain.as_ref().map(chain),
        chains,
        sniff,
    }
}

/// Envoy's filter-chain selection, for the fields inbound listeners use: destination port and
/// IP, source IP and port, and transport protocol (`tls` when the first byte starts a TLS
/// handshake record).
fn select(inbound: &Inbound, peer: SocketAddr, local: SocketAddr, tls: bool) -> Option<&Chain> {
    let transport = if tls { "tls" } else { "raw_buffer" };
    inbound
        .chains
        .iter()
        .find(|c| {
            let m = &c.config.matcher;
            m.destination_port.is_none_or(|p| p == local.port())
                && (m.prefix_ranges.is_empty()
                    || m.prefix_ranges.iter().any(|r| r.contains(local.ip())))
                && (m.source_prefix_ranges.is_empty()
                    || m.source_prefix_ranges.iter().any(|r| r.contains(peer.ip())))
                && (m.source_ports.is_empty() || m.source_ports.contains(&peer.port()))
                && m.transport_protocol
                    .as_deref()
                    .is_none_or(|t| t == transport)
        })
        .or(inbound.default.as_ref())
}

async fn connection<S, B>(
    inbound: Arc<Inbound>,
    live: Arc<ArcSwapOption<Inbound>>,
    tcp: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    app: S,
) -> Result<(), BoxError>
where
    S: tower::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError> + Send,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let looks_tls = if inbound.sniff {
        let mut first = [0u8; 1];
        // A TLS handshake record starts with 0x16.
        tcp.peek(&mut first).await? == 1 && first[0] == 0x16
    } else {
        false
    };
    let Some(chain) = select(&inbound, peer, local, looks_tls) else {
        return Err("no filter chain matches the connection".into());
    };
    if let Some(why) = &chain.broken {
        return Err(why.clone().into());
    }
    let filters = LiveFilters {
        live,
        chain: chain.config.name.clone(),
        at_accept: chain.filters.clone(),
    };
    match &chain.tls {
        None => {
            let identity = PeerIdentity {
                addr: peer,
                spiffe_id: None,
                tls: false,
            };
            serve_http(TokioIo::new(tcp), identity, local, None, filters, app).await
        }
        Some(config) => {
            let tls = tokio_rustls::TlsAcceptor::from(config.clone())
                .accept(tcp)
                .await?;
            let (_, session) = tls.get_ref();
            let identity = PeerIdentity {
                addr: peer,
                spiffe_id: session
                    .peer_certificates()
                    .and_then(mesh_core::identity::tls::peer_spiffe_id),
                tls: true,
            };
            let sni: Option<Arc<str>> = session.server_name().map(Arc::from);
            serve_http(TokioIo::new(tls), identity, local, sni, filters, app).await
        }
    }
}

async fn serve_http<I, S, B>(
    io: I,
    identity: PeerIdentity,
    local: SocketAddr,
    sni: Option<Arc<str>>,
    filters: LiveFilters,
    app: S,
) -> Result<(), BoxError>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: tower::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError> + Send,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let identity = Arc::new(identity);
    let filters = Arc::new(filters);
    let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        // Policy is read per request: an AuthorizationPolicy change applies to open
        // connections too.
        let current = filters.current();
        let (identity, sni) = (identity.clone(), sni.clone());
        let mut app = app.clone();
        async move {
            if let Some(denied) = authorize(&current, &req, &identity, local, sni.as_deref()) {
                return Ok::<_, Infallible>(denied);
            }
            req.extensions_mut().insert(PeerIdentity::clone(&identity));
            let rsp = match tower::ServiceExt::ready(&mut app).await {
                Ok(app) => app.call(req).await,
                Err(e) => Err(e),
            };
            Ok(match rsp {
                Ok(rsp) => rsp.map(|b| b.map_err(Into::into).boxed_unsync()),
                Err(e) => {
                    let e: BoxError = e.into();
                    tracing::warn!(error = %e, "application error");
                    local_reply(StatusCode::INTERNAL_SERVER_ERROR, "application error")
                }
            })
        }
    });
    hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
        .serve_connection(io, svc)
        .await
}

/// A connection's HTTP filters, looked up in the current listener by chain name.
struct LiveFilters {
    live: Arc<ArcSwapOption<Inbound>>,
    chain: Arc<str>,
    /// Used if the chain has since disappeared from the listener.
    at_accept: Arc<[Compiled]>,
}

impl LiveFilters {
    fn current(&self) -> Arc<[Compiled]> {
        let Some(inbound) = self.live.load_full() else {
            return self.at_accept.clone();
        };
        inbound
            .chains
            .iter()
            .chain(inbound.default.iter())
            .find(|c| c.config.name == self.chain)
            .map_or_else(|| self.at_accept.clone(), |c| c.filters.clone())
    }
}

type ReplyBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

fn local_reply(status: StatusCode, body: &'static str) -> Response<ReplyBody> {
    let mut rsp = Response::new(
        Full::new(Bytes::from_static(body.as_bytes()))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *rsp.status_mut() = status;
    rsp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain"),
    );
    rsp
}

/// Runs the listener's filters in order; the answer when one refuses the request.
fn authorize(
    filters: &[Compiled],
    req: &Request<Incoming>,
    identity: &PeerIdentity,
    local: SocketAddr,
    sni: Option<&str>,
) -> Option<Response<ReplyBody>> {
    if filters.is_empty() {
        return None;
    }
    let view = RequestView::from_request(req);
    let conn = rbac::Connection {
        peer: identity.addr,
        local,
        spiffe_id: identity.spiffe_id.as_ref(),
        sni,
    };
    for f in filters.iter() {
        match f {
            Compiled::Rbac(r) => {
                if let rbac::Verdict::Deny(policy) = rbac::evaluate(r, &view, &conn) {
                    tracing::debug!(?policy, peer = ?identity.spiffe_id, path = view.path, "RBAC denied");
                    return Some(local_reply(StatusCode::FORBIDDEN, "RBAC: access denied"));
                }
            }
            Compiled::RateLimit { config, limiter } => {
                let sample = || fastrand::u32(0..1_000_000);
                if config.enabled.hit(sample())
                    && limiter.check().is_err()
                    && config.enforced.hit(sample())
                {
                    let mut rsp = local_reply(config.status, "local_rate_limited");
                    for (k, v) in config.response_headers.iter() {
                        rsp.headers_mut().append(k.clone(), v.clone());
                    }
                    return Some(rsp);
                }
            }
            // Security filters this server does not enforce yet fail closed rather than let
            // unauthenticated requests through.
            Compiled::FailClosed { name, kind } => {
                tracing::error!(filter = %name, kind, "filter not enforced by this server yet; denying");
                return Some(local_reply(
                    StatusCode::FORBIDDEN,
                    "RBAC: access denied (authentication filter not supported)",
                ));
            }
        }
    }
    None
}
