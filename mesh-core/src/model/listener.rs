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
}

/// A network filter that runs on each connection before its terminal filter.
#[derive(Clone, Debug)]
pub enum NetworkPolicy {
    /// `envoy.filters.network.rbac`: evaluated once per connection, before any byte reaches
    /// the terminal filter; a denial closes the connection.
    Rbac(Arc<super::authz::RbacFilter>),
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
    /// Max stream duration for every stream.
    pub max_stream_duration: Option<Duration>,
    /// Stream idle timeout (Envoy's default 5 min).
    pub stream_idle_timeout: Option<Duration>,
    /// How request paths are normalized before any filter and before routing.
    pub path_normalization: PathNormalization,
    /// Who the client is, for `remote_ip` rules and `x-forwarded-for`.
    pub client_address: ClientAddress,
    /// What becomes of a client's `x-forwarded-client-cert` header.
    pub forward_client_cert: ForwardClientCert,
}

/// `forward_client_cert_details`: whether a client's own `x-forwarded-client-cert` header
/// reaches the application (it would otherwise let any caller claim a certificate).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ForwardClientCert {
    /// Removed (Envoy's default, `SANITIZE`; and `SANITIZE_SET`, whose setting of the
    /// header with the verified peer's details is not done here).
    #[default]
    Sanitize,
    /// Kept on mTLS connections, removed otherwise (`FORWARD_ONLY`, `APPEND_FORWARD`; the
    /// appending is not done here).
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
