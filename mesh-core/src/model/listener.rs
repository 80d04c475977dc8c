//! Listeners: `Listener` → [`Listener`] (client API listeners and server inbound listeners).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::filter::HttpFilter;
use super::matcher::Cidr;
use super::path::PathNormalization;
use super::route::RouteTable;
use super::tls::DownstreamTls;

/// A validated `Listener`.
#[derive(Clone, Debug)]
pub struct Listener {
    /// Resource name.
    pub name: Arc<str>,
    /// API listener (client side) or socket listener (server side).
    pub kind: ListenerKind,
}

impl Listener {
    /// The RDS name this listener needs, if it is an API listener with RDS.
    pub fn rds_names(&self) -> Vec<Arc<str>> {
        let mut out = Vec::new();
        let mut push = |h: &HttpConnectionManager| {
            if let RouteSource::Rds(n) = &h.routes
                && !out.contains(n)
            {
                out.push(n.clone());
            }
        };
        match &self.kind {
            ListenerKind::Api(h) => push(h),
            ListenerKind::Socket(s) => s
                .filter_chains
                .iter()
                .chain(s.default_filter_chain.iter())
                .for_each(|fc| {
                    if let NetworkFilter::Http(h) = &fc.filter {
                        push(h)
                    }
                }),
        }
        out
    }
}

/// What kind of listener.
#[derive(Clone, Debug)]
pub enum ListenerKind {
    /// `api_listener`: configuration for a client library, no socket.
    Api(Arc<HttpConnectionManager>),
    /// A socket listener with filter chains.
    Socket(Arc<SocketListener>),
}

/// A listener that owns a socket.
#[derive(Clone, Debug)]
pub struct SocketListener {
    /// Bind address; `None` for an Envoy internal listener (reachable only inside Envoy).
    pub address: Option<SocketAddr>,
    /// Filter chains, chosen per connection by their match.
    pub filter_chains: Box<[FilterChain]>,
    /// Chain used when none matches.
    pub default_filter_chain: Option<FilterChain>,
    /// How long a connection may take to show what its chain is chosen on (its first bytes,
    /// a whole TLS ClientHello): Envoy's `listener_filters_timeout`, 15 s by default; `None`
    /// waits for ever (`0s`).
    pub inspect_timeout: Option<Duration>,
    /// On that timeout, choose the chain as for a plaintext connection instead of closing it,
    /// when no byte has been read yet (`continue_on_listener_filters_timeout`).
    pub continue_on_inspect_timeout: bool,
    /// The services the listener's workload serves, from the listener's Istio metadata
    /// (`metadata.filter_metadata.istio.services`, as istiod sets it on inbound clusters): the
    /// only values the inbound side's metrics name as `destination_service`, so a caller's
    /// `Host` header cannot add series.
    pub services: Box<[ServiceRef]>,
}

/// A service a workload serves, as Istio's `istio.services` metadata names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceRef {
    /// Its host (`reviews.default.svc.cluster.local`).
    pub host: Arc<str>,
    /// Its short name (`reviews`).
    pub name: Arc<str>,
    /// Its namespace (`default`).
    pub namespace: Arc<str>,
}

/// One filter chain.
#[derive(Clone, Debug)]
pub struct FilterChain {
    /// Name.
    pub name: Arc<str>,
    /// When it applies.
    pub matcher: FilterChainMatch,
    /// TLS termination.
    pub tls: Option<Arc<DownstreamTls>>,
    /// Network filters ahead of the terminal one, in order (network RBAC).
    pub network_filters: Box<[NetworkPolicy]>,
    /// The terminal network filter.
    pub filter: NetworkFilter,
    /// How long the TLS handshake may take once the chain is chosen
    /// (`transport_socket_connect_timeout`). Envoy waits for ever when it is unset; here an
    /// unset value is [`DEFAULT_HANDSHAKE_TIMEOUT`], so a peer that stops halfway through a
    /// handshake cannot hold a connection; `0s` waits for ever, as in Envoy.
    pub handshake_timeout: Option<Duration>,
}

/// The TLS handshake's bound when the chain sets none: 15 s, what istiod sets on the chains
/// where it sets one (outbound and gateway listeners); Envoy's default is unbounded.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);

/// A network filter that runs on each connection before its terminal filter.
#[derive(Clone, Debug)]
pub enum NetworkPolicy {
    /// `envoy.filters.network.rbac`: evaluated once per connection, before any byte reaches
    /// the terminal filter; a denial closes the connection.
    Rbac(Arc<super::authz::RbacFilter>),
    /// `envoy.filters.network.connection_limit`: at most `max_connections` open connections
    /// on the chain; one more is closed (after `delay`, when set) before any byte of it is
    /// read.
    ConnectionLimit {
        /// The chain's limit (at least 1).
        max_connections: u64,
        /// How long an overflowing connection is held before it is closed (`delay`), which
        /// slows a client that reconnects in a loop.
        delay: Option<Duration>,
    },
}

/// The terminal network filter of a chain.
#[derive(Clone, Debug)]
pub enum NetworkFilter {
    /// HTTP.
    Http(Arc<HttpConnectionManager>),
    /// Plain TCP proxying to a cluster.
    TcpProxy {
        /// Cluster.
        cluster: Arc<str>,
    },
    /// A terminal filter this library does not serve with: connections to the chain are
    /// closed (an application is never served without the chain's policy).
    Unsupported {
        /// Filter name or type URL.
        name: Arc<str>,
    },
}

/// `FilterChainMatch`. Empty fields match anything.
#[derive(Clone, Debug, Default)]
pub struct FilterChainMatch {
    /// Destination port.
    pub destination_port: Option<u16>,
    /// Destination IP ranges.
    pub prefix_ranges: Box<[Cidr]>,
    /// Direct source IP ranges (the peer itself).
    pub direct_source_prefix_ranges: Box<[Cidr]>,
    /// Local or external sources.
    pub source_type: SourceType,
    /// Source IP ranges.
    pub source_prefix_ranges: Box<[Cidr]>,
    /// Source ports.
    pub source_ports: Box<[u16]>,
    /// SNI values (`*.` wildcards allowed).
    pub server_names: Box<[Box<str>]>,
    /// `tls` or `raw_buffer`.
    pub transport_protocol: Option<Box<str>>,
    /// ALPN values (Istio: `istio-peer-exchange`, `istio`, `h2`, `http/1.1`).
    pub application_protocols: Box<[Box<str>]>,
}

/// `FilterChainMatch.source_type`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SourceType {
    /// Any source.
    #[default]
    Any,
    /// The peer is this host (same IP, or loopback).
    SameIpOrLoopback,
    /// The peer is another host.
    External,
}

/// `HttpConnectionManager`.
#[derive(Clone, Debug)]
pub struct HttpConnectionManager {
    /// Where the routes come from.
    pub routes: RouteSource,
    /// Filters in order, ending with the router.
    pub http_filters: Box<[HttpFilter]>,
    /// Max stream duration for every stream
    /// (`common_http_protocol_options.max_stream_duration`; unset or `0s`: none).
    pub max_stream_duration: Option<Duration>,
    /// How long a stream may see no activity (`stream_idle_timeout`; Envoy's default 5 min;
    /// `0s`: none).
    pub stream_idle_timeout: Option<Duration>,
    /// The connection limits and timeouts of the inbound side.
    pub limits: ConnectionLimits,
    /// How request paths are normalized before any filter and before routing.
    pub path_normalization: PathNormalization,
    /// Who the client is, for `remote_ip` rules and `x-forwarded-for`.
    pub client_address: ClientAddress,
    /// What becomes of a client's `x-forwarded-client-cert` header.
    pub forward_client_cert: ForwardClientCert,
}

/// What a downstream connection may take, from the HTTP connection manager, with Envoy's
/// defaults. The inbound side applies them; a client API listener has no connections to
/// apply them to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// How long a request's headers may take from their first byte
    /// (`request_headers_timeout`). Envoy has none by default; here an unset value is
    /// [`DEFAULT_REQUEST_HEADERS_TIMEOUT`], so a slow client cannot hold a connection with
    /// half a request; `0s` means none, as in Envoy.
    pub request_headers_timeout: Option<Duration>,
    /// How long a connection with no stream stays open
    /// (`common_http_protocol_options.idle_timeout`; Envoy's default 1 h; `0s`: for ever).
    pub idle_timeout: Option<Duration>,
    /// How long a connection may live before it is drained
    /// (`common_http_protocol_options.max_connection_duration`; none by default).
    pub max_connection_duration: Option<Duration>,
    /// Headers a request may carry (`common_http_protocol_options.max_headers_count`;
    /// Envoy's default 100); more answer 431.
    pub max_headers_count: u32,
    /// The size of a request's headers in KiB (`max_request_headers_kb`; Envoy's default 60);
    /// more answer 431.
    pub max_request_headers_kb: u32,
    /// HTTP/2 settings (`http2_protocol_options`).
    pub http2: Http2Limits,
    /// How long a draining connection with no stream left may wait for its peer to finish
    /// the drain before it is closed (`drain_timeout`; Envoy's default 5 s).
    pub drain_timeout: Duration,
}

/// The request-headers bound when the connection manager sets none: 60 s, Istio's value in its
/// edge connection settings; Envoy's default is unbounded.
pub const DEFAULT_REQUEST_HEADERS_TIMEOUT: Duration = Duration::from_secs(60);

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            request_headers_timeout: Some(DEFAULT_REQUEST_HEADERS_TIMEOUT),
            idle_timeout: Some(Duration::from_secs(3600)),
            max_connection_duration: None,
            max_headers_count: 100,
            max_request_headers_kb: 60,
            http2: Http2Limits::default(),
            drain_timeout: Duration::from_secs(5),
        }
    }
}

/// `Http2ProtocolOptions`, as far as a server applies them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Http2Limits {
    /// `max_concurrent_streams`; unset: 1024, Envoy's default since 1.36.
    pub max_concurrent_streams: Option<u32>,
    /// `connection_keepalive.interval`: how often a PING is sent (none when unset).
    pub keepalive_interval: Option<Duration>,
    /// `connection_keepalive.timeout` (required with the settings): how long a PING's answer
    /// may take before the connection is closed.
    pub keepalive_timeout: Option<Duration>,
    /// `initial_stream_window_size`; unset: hyper's.
    pub initial_stream_window_size: Option<u32>,
    /// `initial_connection_window_size`; unset: hyper's.
    pub initial_connection_window_size: Option<u32>,
}

/// `forward_client_cert_details`: whether a client's own `x-forwarded-client-cert` header
/// reaches the application (it would otherwise let any caller claim a certificate).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ForwardClientCert {
    /// Removed (Envoy's default, `SANITIZE`; and `SANITIZE_SET` and `APPEND_FORWARD`, whose
    /// adding of the verified peer's details is not done here: forwarding the caller's header
    /// alone would hand the application a peer the caller chose).
    #[default]
    Sanitize,
    /// Kept on mTLS connections, removed otherwise (`FORWARD_ONLY`).
    ForwardOnMtls,
    /// Always kept (`ALWAYS_FORWARD_ONLY`).
    Always,
}

/// How the HTTP connection manager finds the downstream client's address (Envoy's
/// `use_remote_address` and `xff_num_trusted_hops`), which RBAC's `remote_ip` matches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientAddress {
    /// `use_remote_address`: the client is the connection's peer (or, with trusted hops, an
    /// address that many entries from the right of `x-forwarded-for`). Otherwise the client is
    /// the `x-forwarded-for` entry `xff_num_trusted_hops` from the right, as a sidecar behind
    /// another proxy would see it.
    pub use_remote_address: bool,
    /// `xff_num_trusted_hops`.
    pub xff_num_trusted_hops: u32,
}

impl ClientAddress {
    /// The client's address: `peer` unless `x-forwarded-for` says otherwise, as Envoy's
    /// connection manager decides it (a missing or unparsable entry means the peer).
    ///
    /// ```
    /// use mesh_core::model::ClientAddress;
    /// let mut h = http::HeaderMap::new();
    /// h.append("x-forwarded-for", "203.0.113.7, 10.0.0.9".parse().unwrap());
    /// let peer = "10.0.0.1".parse().unwrap();
    /// assert_eq!(ClientAddress::default().client(&h, peer), "10.0.0.9".parse::<std::net::IpAddr>().unwrap());
    /// let trusted = ClientAddress { use_remote_address: true, xff_num_trusted_hops: 0 };
    /// assert_eq!(trusted.client(&h, peer), peer);
    /// ```
    pub fn client(&self, headers: &http::HeaderMap, peer: std::net::IpAddr) -> std::net::IpAddr {
        let skip = match (self.use_remote_address, self.xff_num_trusted_hops) {
            (true, 0) => return peer,
            (true, n) => n - 1,
            (false, n) => n,
        };
        last_forwarded_for(headers, skip as usize).unwrap_or(peer)
    }
}

/// Envoy's `getLastAddressFromXFF`: the entry `skip` places from the right of every
/// `x-forwarded-for` value joined, if it parses as an IP address.
fn last_forwarded_for(headers: &http::HeaderMap, skip: usize) -> Option<std::net::IpAddr> {
    let mut entries = Vec::new();
    for value in headers.get_all("x-forwarded-for") {
        entries.extend(value.as_bytes().split(|b| *b == b','));
    }
    let entry = entries.iter().rev().nth(skip)?;
    std::str::from_utf8(entry).ok()?.trim().parse().ok()
}

/// Inline routes or RDS.
#[derive(Clone, Debug)]
pub enum RouteSource {
    /// `rds.route_config_name`.
    Rds(Arc<str>),
    /// `route_config`.
    Inline(Arc<RouteTable>),
}
