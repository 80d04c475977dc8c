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
//! By job: the server's loop and its drain (`accept`), the inbound listener it follows
//! (`follow`), one connection up to HTTP (`connection`: chain selection, TLS, network filters),
//! the connection's HTTP (`http_connection`: hyper, its watchdog and drain), one request
//! (`request`), and the HTTP filters it runs (`filters`, with `ext_authz`, and the rules the
//! inbound layers share: JWT, RBAC and rate limits, in `crate::rules`).
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

mod accept;
mod connection;
mod ext_authz;
mod filters;
mod follow;
mod http_connection;
mod limits;
mod listener;
mod request;

pub use crate::rules::PeerIdentity;
pub use crate::rules::jwt::VerifiedJwt;
pub use crate::rules::metadata::Metadata;
pub use crate::rules::rbac;
pub use accept::serve_observed;
pub use connection::looks_like_tls;

use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use mesh_core::Mesh;

use crate::body::{BoxError, RspBody};
use crate::flags::ResponseFlags;
use crate::respond::{self, ResponseInfo};

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
