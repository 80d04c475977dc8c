//! Listeners: `Listener` → [`Listener`] (client API listeners and server inbound listeners).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::filter::HttpFilter;
use super::matcher::Cidr;
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
    /// The listener also carries a `filter_chain_matcher` (the matcher API, which istiod uses
    /// for sidecar listeners). It is not evaluated: chains are chosen by their
    /// `filter_chain_match`, which is what proxyless inbound listeners use.
    pub has_filter_chain_matcher: bool,
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
    /// The terminal network filter.
    pub filter: NetworkFilter,
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
    /// A terminal filter this library does not implement (connections are closed).
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
}

/// Inline routes or RDS.
#[derive(Clone, Debug)]
pub enum RouteSource {
    /// `rds.route_config_name`.
    Rds(Arc<str>),
    /// `route_config`.
    Inline(Arc<RouteTable>),
}
