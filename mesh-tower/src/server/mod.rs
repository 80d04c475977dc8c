//! The inbound side: [`serve`] an application behind the mesh's inbound listener.
//!
//! ```text
//! TCP accept → filter chain as Envoy chooses it (reading the ClientHello when chains differ
//!  by transport, server name or ALPN; PeerAuthentication: STRICT needs mTLS, PERMISSIVE has a
//!  TLS and a plaintext chain, DISABLE is plaintext) → rustls with the workload certificate
//!  → peer identity → network RBAC → hyper (HTTP/1.1 and HTTP/2) → path checks and
//!  normalization → route (per-route filter settings) → JWT → RBAC (CUSTOM's marks, DENY,
//!  ALLOW, AUDIT) → ext_authz → local rate limit → the application
//! ```
//!
//! The inbound listener comes from the control plane under the bootstrap's
//! `server_listener_resource_name_template` (istiod and mesh-control:
//! `xds.istio.io/grpc/lds/inbound/IP:PORT`); it is watched, and a change applies to new
//! connections and, for the HTTP filters, to the next request. As gRFC A36 asks of xDS
//! servers, nothing is served until the listener has arrived, and a listener the control
//! plane does not have means not serving. Without a template (static mode, or no control
//! plane) nothing is served ([`ServeError::NoInboundPolicy`]), unless the mesh was built
//! with `MeshBuilder::dangerous().serve_without_inbound_policy()`: then the application is
//! served in plaintext with no policy at all.
//!
//! Before any filter and before the route is chosen, each request's path is checked and
//! normalized as the chain's connection manager asks ([`crate::normalize`]), so policy
//! decides on the path the application sees.
//!
//! | feature | Envoy / Istio |
//! |---|---|
//! | path checks and normalization, before routing and filters | `normalize_path`, `merge_slashes`, `path_with_escaped_slashes_action` |
//! | one `Host` (two: 400), a client's `x-forwarded-client-cert` removed | RFC 9112; `forward_client_cert_details` (`SANITIZE`) |
//! | open connections take policy updates; a changed chain drains them | Envoy's filter-chain drain |
//! | filter-chain selection (port, addresses, server name, transport, ALPN, source) | `filter_chain_match`, TLS inspector |
//! | network RBAC ahead of HTTP | `envoy.filters.network.rbac` |
//! | STRICT / PERMISSIVE / DISABLE mTLS, SPIFFE peer identity | `DownstreamTlsContext`, TLS inspector; PeerAuthentication |
//! | authorization: DENY then ALLOW, AUDIT, shadow rules | `envoy.filters.http.rbac`; AuthorizationPolicy |
//! | request authentication, JWKS inline or fetched | `envoy.filters.http.jwt_authn`; RequestAuthentication |
//! | external authorization over HTTP and gRPC | `envoy.filters.http.ext_authz`; AuthorizationPolicy CUSTOM |
//! | local rate limits, per listener or route | `envoy.filters.http.local_ratelimit` |
//! | handshake, header, idle, stream and connection-age bounds; header count and size; HTTP/2 streams and keepalive | `transport_socket_connect_timeout`, `request_headers_timeout`, `stream_idle_timeout`, `common_http_protocol_options`, `max_request_headers_kb`, `http2_protocol_options` |
//! | connections per filter chain | `envoy.filters.network.connection_limit` |
//! | an application that panics answers 500 (counted: `mesh_application_panics_total`) | — |

mod connection;
mod ext_authz;
mod filters;
mod jwks;
mod jwt;
mod limits;
mod listener;
mod metadata;
mod rate_limit;
pub mod rbac;

pub use connection::looks_like_tls;
pub use jwt::VerifiedJwt;
pub use metadata::Metadata;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use mesh_core::Mesh;
use mesh_core::identity::{PeerCertificate, SpiffeId};
use mesh_core::xds::Resource;
use tokio::net::TcpStream;

use crate::body::{BoxError, RspBody};
use crate::flags::ResponseFlags;
use crate::respond::{self, ResponseInfo};
use crate::telemetry::exchange::{Exchange, Observed};
use crate::telemetry::metrics::{Labels, Security};
use crate::telemetry::workload::Peer;
use crate::telemetry::{Side, SpanEnd, Telemetry, propagation, span_attributes, span_name};
use filters::{HttpFilters, Verdict};
use listener::{Inbound, ServerShared};
use mesh_core::model::RequestView;
use opentelemetry::KeyValue;
use std::time::Instant;

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
    /// The names in the verified certificate it presented, if any.
    pub certificate: Option<Arc<PeerCertificate>>,
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
    /// The mesh stopped.
    #[error("the mesh's xDS client stopped")]
    Stopped,
    /// The bootstrap names no inbound listener, so there is no policy to serve with.
    #[error(
        "the bootstrap has no server_listener_resource_name_template, so no inbound listener \
         (mTLS, authorization) applies to {addr}; refusing to serve without policy. Add the \
         template (istio-agent's bootstrap has it), or opt in to plaintext without policy \
         with MeshBuilder::dangerous().serve_without_inbound_policy()"
    )]
    NoInboundPolicy {
        /// The address that would have been served.
        addr: SocketAddr,
    },
}

/// What the filters know of the connection a request came on.
pub(crate) struct Caller<'a> {
    pub(crate) peer: &'a PeerIdentity,
    pub(crate) local: SocketAddr,
    pub(crate) sni: Option<&'a str>,
}

/// A local answer from a filter (a denial, a rate limit): gRPC callers get it as a gRPC
/// status, as Envoy's local replies do.
pub(crate) struct Reply(Response<RspBody>);

impl Reply {
    pub(crate) fn new(
        status: StatusCode,
        body: impl Into<Bytes>,
        grpc: bool,
        flags: ResponseFlags,
    ) -> Self {
        Self(respond::local(
            status,
            body,
            grpc,
            ResponseInfo {
                flags,
                ..ResponseInfo::default()
            },
        ))
    }

    pub(crate) fn header(&mut self, name: HeaderName, value: HeaderValue, append: bool) {
        if append {
            self.0.headers_mut().append(name, value);
        } else {
            self.0.headers_mut().insert(name, value);
        }
    }
}

/// What the inbound side serves: a Tower service of hyper requests, cloned per connection,
/// answering with a body of [`Bytes`]. Implemented for every such service; it only names
/// the bounds once.
pub trait App:
    tower::Service<
        Request<Incoming>,
        Response = Response<Self::Body>,
        Error: Into<BoxError> + Send,
        Future: Send + 'static,
    > + Clone
    + Send
    + 'static
{
    /// The response body.
    type Body: http_body::Body<Data = Bytes, Error: Into<BoxError>> + Send + 'static;
}

impl<S, B> App for S
where
    S: tower::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError> + Send,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Body = B;
}

/// Serves `app` on `addr` behind the mesh's inbound policy. Runs until an error; connections
/// are served concurrently, HTTP/1.1 and HTTP/2 alike.
pub async fn serve<S: App>(mesh: &Mesh, addr: SocketAddr, app: S) -> Result<(), ServeError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })?;
    serve_listener(mesh, listener, app).await
}

/// [`serve`] on a socket already bound: for callers that pick their ports up front (port 0,
/// a set reserved together) and must not lose them to another process between picking and
/// serving.
pub async fn serve_listener<S: App>(
    mesh: &Mesh,
    listener: tokio::net::TcpListener,
    app: S,
) -> Result<(), ServeError> {
    serve_with_shutdown(mesh, listener, app, std::future::pending()).await
}

/// [`serve_listener`] until `signal` completes, then drains: the socket is closed at once
/// (new connections are refused), every open connection is asked to finish (HTTP/2 GOAWAY,
/// HTTP/1.1 closes after its current response), and this returns when the last one has.
/// Requests already started complete.
///
/// Dropping the returned future instead is a hard stop: every connection it accepted is
/// closed. Bound a drain the same way:
///
/// ```no_run
/// # async fn run(mesh: mesh_core::Mesh, app: tower::util::BoxCloneService<http::Request<hyper::body::Incoming>, http::Response<String>, std::convert::Infallible>) -> Result<(), Box<dyn std::error::Error>> {
/// let listener = tokio::net::TcpListener::bind("0.0.0.0:9080").await?;
/// let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
/// let server = mesh_tower::serve_with_shutdown(&mesh, listener, app, async {
///     let _ = stopped.await;
/// });
/// # drop(stop);
/// // Istio's default drain: at most 5 s, then whatever is left is closed.
/// let _ = tokio::time::timeout(std::time::Duration::from_secs(5), server).await;
/// # Ok(()) }
/// ```
///
/// # Serving and not serving (gRFC A36)
/// Until the inbound listener first arrives, connections wait in the accept queue (it
/// usually takes milliseconds). While the control plane says the listener does not exist
/// (at start, or deleted when the bootstrap asks for `fail_on_data_errors`), the server is
/// *not serving*: connections are accepted and closed before a byte is sent, and those
/// already open drain as above, so clients fail fast and try another endpoint. When the
/// listener comes back, serving resumes. Both transitions are logged at `warn`.
pub async fn serve_with_shutdown<S: App>(
    mesh: &Mesh,
    listener: tokio::net::TcpListener,
    app: S,
    signal: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let (state, _) = tokio::sync::watch::channel(ServingState::Starting);
    serve_observed(mesh, listener, app, signal, state).await
}

/// Whether a server serves, as gRFC A36 defines it; [`serve_observed`] publishes it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServingState {
    /// Waiting for the control plane's first answer about the inbound listener.
    Starting,
    /// Serving: with the inbound listener, or (no template in the bootstrap, and the mesh
    /// asked for it) in plaintext without policy.
    Serving,
    /// Not serving, and why (for people: the wording may change).
    NotServing(String),
    /// The shutdown signal came: open connections are finishing, new ones are refused.
    Draining,
}

/// [`serve_with_shutdown`], publishing each change of its [`ServingState`] on `state`: the
/// serving-state callback gRFC A36 asks xDS servers to offer.
///
/// ```no_run
/// # async fn run(mesh: mesh_core::Mesh, app: tower::util::BoxCloneService<http::Request<hyper::body::Incoming>, http::Response<String>, std::convert::Infallible>) -> Result<(), Box<dyn std::error::Error>> {
/// use mesh_tower::server::ServingState;
/// let (state, mut watch) = tokio::sync::watch::channel(ServingState::Starting);
/// tokio::spawn(async move {
///     while watch.changed().await.is_ok() {
///         if let ServingState::NotServing(why) = &*watch.borrow() {
///             eprintln!("not serving: {why}");
///         }
///     }
/// });
/// let listener = tokio::net::TcpListener::bind("0.0.0.0:9080").await?;
/// mesh_tower::server::serve_observed(&mesh, listener, app, std::future::pending(), state).await?;
/// # Ok(()) }
/// ```
pub async fn serve_observed<S: App>(
    mesh: &Mesh,
    listener: tokio::net::TcpListener,
    app: S,
    signal: impl Future<Output = ()>,
    state: tokio::sync::watch::Sender<ServingState>,
) -> Result<(), ServeError> {
    let local = listener.local_addr().map_err(|source| ServeError::Bind {
        addr: SocketAddr::from(([0, 0, 0, 0], 0)),
        source,
    })?;
    let config: Arc<ArcSwapOption<Inbound>> = Arc::default();
    let telemetry = Telemetry::of(mesh);
    let mut follow = match mesh.bootstrap().server_listener_name(local) {
        Some(name) => {
            let mut f = Follow::start(mesh, name).await?;
            let next = f.next_state();
            state.send_replace(f.serving_state(next.is_some()));
            config.store(next);
            Some(f)
        }
        None if !mesh.serves_without_inbound_policy() => {
            return Err(ServeError::NoInboundPolicy { addr: local });
        }
        None => {
            tracing::warn!(%local, "no server listener template in the bootstrap: serving plaintext without policy, as asked");
            config.store(Some(Arc::new(Inbound::plaintext())));
            state.send_replace(ServingState::Serving);
            None
        }
    };
    // Bumped to make every open connection drain: on shutdown, and on going not-serving.
    let (drain, _) = tokio::sync::watch::channel(0u64);
    // Owned here, so dropping this future closes every connection it accepted.
    let mut connections = tokio::task::JoinSet::new();
    let mut signal = std::pin::pin!(signal);
    let mut accept_backoff = ACCEPT_BACKOFF_MIN;
    loop {
        tokio::select! {
            biased;
            () = &mut signal => break,
            () = changed(&mut follow) => {
                let Some(f) = follow.as_mut() else { continue };
                let next = f.next_state();
                if next.is_none() && config.load().is_some() {
                    drain.send_modify(|n| *n += 1);
                }
                let now = f.serving_state(next.is_some());
                config.store(next);
                state.send_if_modified(|s| {
                    let changed = *s != now;
                    *s = now;
                    changed
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => {
                let (tcp, peer) = match accepted {
                    Ok(a) => {
                        accept_backoff = ACCEPT_BACKOFF_MIN;
                        a
                    }
                    Err(e) if connection_error(&e) => {
                        tracing::debug!(%local, error = %e, "accept failed for one connection");
                        continue;
                    }
                    Err(e) => {
                        // Out of file descriptors or memory: accepting again at once would
                        // spin. Wait (doubling, up to a second), serving open connections.
                        tracing::warn!(%local, error = %e, backoff = ?accept_backoff, "accept failed; backing off");
                        let pause = tokio::time::sleep(accept_backoff);
                        tokio::pin!(pause);
                        loop {
                            tokio::select! {
                                () = &mut pause => break,
                                Some(_) = connections.join_next(), if !connections.is_empty() => {}
                            }
                        }
                        accept_backoff = (accept_backoff * 2).min(ACCEPT_BACKOFF_MAX);
                        continue;
                    }
                };
                // Not serving: closed before anything is sent (gRFC A36).
                let Some(inbound) = config.load_full() else { continue };
                let _ = tcp.set_nodelay(true);
                let accepted = Accepted {
                    inbound,
                    live: config.clone(),
                    telemetry: telemetry.clone(),
                    peer,
                    local,
                    drained: drain.subscribe(),
                };
                connections.spawn(connection(accepted, tcp, app.clone()));
            }
        }
    }
    drop(listener);
    drain.send_modify(|n| *n += 1);
    state.send_replace(ServingState::Draining);
    tracing::info!(%local, connections = connections.len(), "draining");
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// The first wait after an `accept` that failed for want of resources.
const ACCEPT_BACKOFF_MIN: std::time::Duration = std::time::Duration::from_millis(5);
/// The longest.
const ACCEPT_BACKOFF_MAX: std::time::Duration = std::time::Duration::from_secs(1);

/// Whether an `accept` error concerns only the connection being accepted (it went away
/// first), not the listener: then the next one is accepted at once.
fn connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind as K;
    matches!(
        e.kind(),
        K::ConnectionAborted | K::ConnectionReset | K::ConnectionRefused | K::Interrupted
    )
}

/// Waits for the watched listener to change; never, without one.
async fn changed(follow: &mut Option<Follow>) {
    match follow {
        Some(f) => f.watch.changed().await,
        None => std::future::pending().await,
    }
}

/// The watched inbound listener, and what serving state it implies.
struct Follow {
    name: String,
    watch: mesh_core::xds::ResourceWatch,
    shared: Arc<ServerShared>,
    serving: bool,
}

impl Follow {
    /// Subscribes to `name` and waits until the control plane has answered (a listener or
    /// its absence).
    async fn start(mesh: &Mesh, name: String) -> Result<Self, ServeError> {
        let mut watch = mesh
            .watch_listener(&name)
            .await
            .map_err(|_| ServeError::Stopped)?;
        watch
            .wait_for(|st| st.value.is_some() || st.does_not_exist())
            .await;
        Ok(Self {
            name,
            watch,
            shared: Arc::new(ServerShared::new(mesh)),
            serving: true,
        })
    }

    /// The configuration to serve with now; `None` means not serving. An update that is
    /// neither (a NACK with a cached value) keeps the last one, so it is built again only
    /// from the value the state carries.
    fn next_state(&mut self) -> Option<Arc<Inbound>> {
        let st = self.watch.current();
        let next = match &st.value {
            Some(Resource::Listener(l)) => Some(Arc::new(self.shared.build(l))),
            _ => None,
        };
        match (self.serving, next.is_some()) {
            (true, false) => {
                tracing::warn!(listener = %self.name, "inbound listener does not exist on the control plane: not serving (gRFC A36)")
            }
            (false, true) => {
                tracing::warn!(listener = %self.name, "inbound listener is back: serving")
            }
            (true, true) => tracing::info!(listener = %self.name, "inbound configuration updated"),
            (false, false) => {}
        }
        self.serving = next.is_some();
        next
    }

    fn serving_state(&self, serving: bool) -> ServingState {
        if serving {
            ServingState::Serving
        } else {
            ServingState::NotServing(format!(
                "inbound listener {:?} does not exist on the control plane",
                self.name
            ))
        }
    }
}

/// A connection just accepted, and what it is served with.
struct Accepted {
    inbound: Arc<Inbound>,
    live: Arc<ArcSwapOption<Inbound>>,
    telemetry: Arc<Telemetry>,
    peer: SocketAddr,
    local: SocketAddr,
    drained: tokio::sync::watch::Receiver<u64>,
}

async fn connection<S: App>(accepted: Accepted, tcp: TcpStream, app: S) {
    let peer = accepted.peer;
    if let Err(e) = serve_connection(accepted, tcp, app).await {
        tracing::debug!(%peer, error = %e, "inbound connection ended");
    }
}

async fn serve_connection<S: App>(
    accepted: Accepted,
    tcp: TcpStream,
    app: S,
) -> Result<(), BoxError> {
    let Accepted {
        inbound,
        live,
        telemetry,
        peer,
        local,
        drained,
    } = accepted;
    // The connection's own destination: with a wildcard bind (0.0.0.0), the listener's
    // address says nothing of it, and chains and `destination_ip` rules need it.
    let local = tcp.local_addr().unwrap_or(local);
    let opened = connection::open(&inbound, tcp, peer, local).await?;
    let filters = LiveFilters {
        live,
        fingerprint: opened.chain.fingerprint,
        last: arc_swap::ArcSwap::new(opened.chain.filters.clone()),
        closing: Arc::new(tokio::sync::Notify::new()),
    };
    let conn = Connection {
        local,
        filters,
        telemetry,
        services: inbound.services.clone(),
        labels: ArcSwapOption::empty(),
    };
    let (identity, sni, _slots) = (opened.identity, opened.sni, opened.slots);
    let limits = opened.chain.limits.clone();
    match opened.io {
        connection::Io::Plain(tcp) => {
            let activity = limits::Activity::new(false);
            let io = TokioIo::new(limits::Watched::new(tcp, activity.clone()));
            serve_http(io, identity, sni, conn, app, drained, (limits, activity)).await
        }
        connection::Io::Tls(tls) => {
            let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
            let activity = limits::Activity::new(h2);
            let io = TokioIo::new(limits::Watched::new(*tls, activity.clone()));
            serve_http(io, identity, sni, conn, app, drained, (limits, activity)).await
        }
    }
}

type ServerBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// A response body that ends its stream (for the connection's idle and stream timers) when
/// it is done or dropped, and fails (resetting the stream) when its own timers pass.
struct StreamBody {
    body: ServerBody,
    timers: Option<limits::BodyTimers>,
    _stream: limits::StreamGuard,
}

impl StreamBody {
    fn new(
        body: ServerBody,
        stream: limits::StreamGuard,
        limits: &limits::Limits,
        started: Instant,
    ) -> Self {
        Self {
            body,
            timers: limits::BodyTimers::new(limits, tokio::time::Instant::from_std(started)),
            _stream: stream,
        }
    }
}

impl http_body::Body for StreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        use std::task::Poll;
        let this = &mut *self;
        match std::pin::Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(t) = &mut this.timers {
                    t.frame_sent();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Pending => match this.timers.as_mut().map(|t| t.poll_expired(cx)) {
                Some(Poll::Ready(why)) => {
                    tracing::debug!(?why, "response stream timed out; resetting it");
                    Poll::Ready(Some(Err(limits::BodyTimedOut(why).into())))
                }
                _ => Poll::Pending,
            },
            done => done,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// What a connection's requests share.
struct Connection {
    local: SocketAddr,
    filters: LiveFilters,
    telemetry: Arc<Telemetry>,
    /// The services the workload serves, as its listener names them (metric labels).
    services: Arc<[mesh_core::model::ServiceRef]>,
    /// The metric labels of the authority this connection's requests used last (a
    /// connection almost always serves one).
    labels: ArcSwapOption<(Box<str>, Arc<Labels>)>,
}

impl Connection {
    fn labels(&self, identity: &PeerIdentity, authority: &str) -> Arc<Labels> {
        if let Some(cached) = &*self.labels.load()
            && &*cached.0 == authority
        {
            return cached.1.clone();
        }
        let caller = identity
            .spiffe_id
            .as_ref()
            .map_or_else(Peer::unknown, Peer::from_principal);
        let labels = self
            .telemetry
            .inbound_labels(caller, &self.services, authority);
        self.labels
            .store(Some(Arc::new((authority.into(), labels.clone()))));
        labels
    }
}

async fn serve_http<I, S: App>(
    io: I,
    identity: PeerIdentity,
    sni: Option<Arc<str>>,
    conn: Connection,
    app: S,
    mut drained: tokio::sync::watch::Receiver<u64>,
    (limits, activity): (limits::Limits, Arc<limits::Activity>),
) -> Result<(), BoxError>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let security = if identity.spiffe_id.is_some() {
        Security::MutualTls
    } else {
        Security::None
    };
    let identity = Arc::new(identity);
    let closing = conn.filters.closing.clone();
    let conn = Arc::new(conn);
    let http = limits.http_builder();
    let mut watchdog = limits::Watchdog::new(activity.clone(), &limits);
    let limits = Arc::new(limits);
    let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        let start = Instant::now();
        let stream = activity.stream_started();
        // Policy is read per request: an AuthorizationPolicy change applies to open
        // connections too (unless the chain itself changed: then the connection drains).
        let current = conn.filters.current();
        let (identity, sni, conn) = (identity.clone(), sni.clone(), conn.clone());
        let (activity, limits) = (activity.clone(), limits.clone());
        let mut app = app.clone();
        async move {
            let too_many = req.version() == http::Version::HTTP_2
                && limits::too_many_headers(req.headers(), &limits);
            if too_many || limits::small_headers_exceeded(&req, &limits) {
                // hyper answers HTTP/1 with 431 itself (but for bounds under its 8 KiB
                // floor); Envoy resets an HTTP/2 stream, which a service cannot ask hyper
                // for, so it gets the same 431.
                let rsp = Reply::new(
                    StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    if too_many {
                        "too many request headers"
                    } else {
                        "request headers too large"
                    },
                    respond::is_grpc(req.headers()),
                    ResponseFlags::NONE,
                )
                .0;
                return Ok(rsp.map(|b| {
                    StreamBody::new(b.map_err(Into::into).boxed_unsync(), stream, &limits, start)
                }));
            }
            let labels = conn.labels(&identity, RequestView::from_request(&req).authority);
            let grpc = respond::is_grpc(req.headers());
            let size = http_body::Body::size_hint(req.body());
            let mut span = conn.telemetry.tracer.load().as_ref().and_then(|t| {
                propagation::ensure_request_id(req.headers_mut());
                t.start(Side::Server, &mut req, |req| {
                    let mut attributes = span_attributes(req, &conn.telemetry);
                    attributes.push(KeyValue::new("peer.address", identity.addr.to_string()));
                    if let Some(id) = &identity.spiffe_id {
                        attributes.push(KeyValue::new("downstream_principal", id.to_string()));
                    }
                    (span_name(req), attributes)
                })
            });
            let mut log = conn.telemetry.log_entry(&req, false, || {
                Some(
                    identity
                        .spiffe_id
                        .as_ref()
                        .map_or_else(|| identity.addr.to_string(), |id| id.to_string()),
                )
            });
            let mut observe = |status, headers: &http::HeaderMap, flags| {
                Exchange::new(
                    conn.telemetry.clone(),
                    labels.clone(),
                    start,
                    status,
                    headers,
                    grpc,
                    flags,
                    security,
                    size.exact().unwrap_or(size.lower()),
                )
                .with_span(span.take(), SpanEnd::default())
                .with_log(log.take())
            };
            let mut extra = Vec::new();
            if !current.is_empty() {
                let caller = Caller {
                    peer: &identity,
                    local: conn.local,
                    sni: sni.as_deref(),
                };
                match current.run(&mut req, &caller).await {
                    Verdict::Reply(reply) => {
                        let mut rsp = reply.0;
                        let flags = ResponseInfo::of(&rsp).map_or(ResponseFlags::NONE, |i| i.flags);
                        let x = observe(rsp.status(), rsp.headers(), flags);
                        rsp.body_mut().observe(x);
                        return Ok::<_, Infallible>(rsp.map(|b| {
                            let body = b.map_err(Into::into).boxed_unsync();
                            StreamBody::new(body, stream, &limits, start)
                        }));
                    }
                    Verdict::Continue(headers) => extra = headers,
                }
            }
            req.extensions_mut().insert(PeerIdentity::clone(&identity));
            // 408 while the request may still be arriving, 504 once it has (Envoy decides on
            // whether the request has ended; a request without a body has at its start).
            let timeout_status = if http_body::Body::is_end_stream(req.body()) {
                StatusCode::GATEWAY_TIMEOUT
            } else {
                StatusCode::REQUEST_TIMEOUT
            };
            let answer = async {
                match tower::ServiceExt::ready(&mut app).await {
                    Ok(app) => app.call(req).await,
                    Err(e) => Err(e),
                }
            };
            // A panic in the application answers 500 and is counted, as a reset would tell
            // the caller nothing (and, on HTTP/1, lose the connection).
            let answer =
                futures_util::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(answer));
            let mut local = |status, body: &'static str, flags| {
                let mut rsp = Reply::new(status, body, grpc, flags).0;
                let x = observe(rsp.status(), rsp.headers(), flags);
                rsp.body_mut().observe(x);
                rsp.map(|b| b.map_err(Into::into).boxed_unsync())
            };
            let mut rsp: Response<ServerBody> = match limits::bounded(
                answer,
                &activity,
                &limits,
                tokio::time::Instant::from_std(start),
            )
            .await
            {
                Ok(Ok(Ok(rsp))) => {
                    let x = observe(rsp.status(), rsp.headers(), ResponseFlags::NONE);
                    rsp.map(|b| Observed::new(b.map_err(Into::into), Some(x)).boxed_unsync())
                }
                Ok(Ok(Err(e))) => {
                    let e: BoxError = e.into();
                    tracing::warn!(error = %e, "application error");
                    local(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "application error",
                        ResponseFlags::NONE,
                    )
                }
                Ok(Err(_panic)) => {
                    tracing::error!("the application panicked; answered 500");
                    conn.telemetry.metrics.application_panicked();
                    local(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "application panicked",
                        ResponseFlags::NONE,
                    )
                }
                Err(limits::StreamTimeout::Idle) => local(
                    timeout_status,
                    "stream timeout",
                    ResponseFlags::STREAM_IDLE_TIMEOUT,
                ),
                Err(limits::StreamTimeout::Duration) => local(
                    timeout_status,
                    "downstream duration timeout",
                    ResponseFlags::DURATION_TIMEOUT,
                ),
            };
            for (name, value, append) in extra {
                if append {
                    rsp.headers_mut().append(name, value);
                } else {
                    rsp.headers_mut().insert(name, value);
                }
            }
            Ok(rsp.map(|body| StreamBody::new(body, stream, &limits, start)))
        }
    });
    let served = http.serve_connection(io, svc);
    let mut served = std::pin::pin!(served);
    let mut draining = false;
    loop {
        let drain = tokio::select! {
            // In this order: the watchdog reads what the connection's I/O just did.
            biased;
            done = served.as_mut() => return done,
            // Also when the server is gone: a connection does not outlive its server's drain.
            _ = drained.changed(), if !draining => "the server drains",
            // Its filter chain changed or went away: finish what was started, then close, as
            // Envoy drains the connections of a chain it replaces.
            () = closing.notified(), if !draining => "its filter chain changed",
            expired = std::future::poll_fn(|cx| watchdog.poll_expired(cx)) => match expired {
                limits::Expired::Drain(why) => why,
                limits::Expired::Close(why) => return Err(BoxError::from(why)),
            },
        };
        if !draining {
            tracing::debug!(why = drain, "connection draining");
            draining = true;
            watchdog.draining();
            served.as_mut().graceful_shutdown();
        }
    }
}

/// A connection's HTTP filters, looked up in the current listener.
struct LiveFilters {
    live: Arc<ArcSwapOption<Inbound>>,
    /// What the chain was when the connection was accepted (its match, TLS, network filters
    /// and whether it serves): a policy update keeps it, a different chain does not.
    fingerprint: u64,
    /// The filters the connection served its last request with: kept while it drains, so
    /// a drain never goes back to an older, weaker policy.
    last: arc_swap::ArcSwap<HttpFilters>,
    /// Asks the connection to drain.
    closing: Arc<tokio::sync::Notify>,
}

impl LiveFilters {
    /// The chain's filters now: a policy update applies to open connections. When the
    /// listener no longer has the same chain (it went, or its match, TLS or network filters
    /// changed, or it no longer serves), the connection keeps the filters it last had for
    /// what is in flight, and drains, as Envoy drains the connections of a chain it replaces.
    fn current(&self) -> Arc<HttpFilters> {
        let live = self.live.load();
        match live.as_ref().and_then(|i| i.chain_like(self.fingerprint)) {
            Some(c) => {
                if !Arc::ptr_eq(&self.last.load(), &c.filters) {
                    self.last.store(c.filters.clone());
                }
                c.filters.clone()
            }
            None => {
                self.closing.notify_one();
                self.last.load_full()
            }
        }
    }
}
