//! The inbound listener, ready to serve: each filter chain with its TLS configuration and its
//! HTTP filters, and Envoy's filter-chain selection.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
use mesh_core::Mesh;
use mesh_core::identity::tls::{ClientAuth, server_config};
use mesh_core::model::{CertSource, FilterChain, JwksSource, ListenerKind, NetworkFilter};

use super::filters::{FilterContext, HttpFilters};
use super::jwks::RemoteJwks;
use super::jwt::RemoteKeys;
use crate::MeshClient;

/// One filter chain, ready to serve connections.
pub(crate) struct Chain {
    pub(crate) config: FilterChain,
    pub(crate) tls: Option<Arc<rustls::ServerConfig>>,
    /// Why TLS cannot be offered (a missing certificate provider): such chains refuse.
    pub(crate) broken: Option<String>,
    pub(crate) filters: Arc<HttpFilters>,
}

/// The inbound listener, ready to serve.
pub(crate) struct Inbound {
    pub(crate) chains: Vec<Chain>,
    pub(crate) default: Option<Chain>,
    /// Whether chains differ by transport protocol, so the first byte must be peeked.
    pub(crate) sniff: bool,
}

impl Inbound {
    /// Serves everything in plaintext with no policy (no control plane).
    pub(crate) fn plaintext() -> Self {
        Self {
            chains: Vec::new(),
            default: Some(Chain {
                config: FilterChain {
                    name: "plaintext".into(),
                    matcher: Default::default(),
                    tls: None,
                    filter: NetworkFilter::Unsupported {
                        name: "passthrough".into(),
                    },
                },
                tls: None,
                broken: None,
                filters: Arc::new(HttpFilters::none()),
            }),
            sniff: false,
        }
    }

    /// Envoy's filter-chain selection, for the fields inbound listeners use: destination port
    /// and IP, source IP and port, and transport protocol (`tls` when the first byte starts a
    /// TLS handshake record).
    pub(crate) fn select(&self, peer: SocketAddr, local: SocketAddr, tls: bool) -> Option<&Chain> {
        let transport = if tls { "tls" } else { "raw_buffer" };
        self.chains
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
            .or(self.default.as_ref())
    }

    /// A chain's current filters, by name (a connection keeps its chain across updates).
    pub(crate) fn filters_of(&self, chain: &str) -> Option<Arc<HttpFilters>> {
        self.chains
            .iter()
            .chain(self.default.iter())
            .find(|c| &*c.config.name == chain)
            .map(|c| c.filters.clone())
    }
}

/// What outlives one listener configuration: the client that reaches authorization services
/// and JWKS servers, and the fetched key sets (by URI), so an update does not refetch them.
pub(crate) struct ServerShared {
    mesh: Mesh,
    client: OnceLock<MeshClient>,
    jwks: ArcSwap<HashMap<Box<str>, Arc<RemoteJwks>>>,
}

impl ServerShared {
    pub(crate) fn new(mesh: &Mesh) -> Self {
        Self {
            mesh: mesh.clone(),
            client: OnceLock::new(),
            jwks: ArcSwap::default(),
        }
    }

    fn client(&self) -> MeshClient {
        self.client
            .get_or_init(|| MeshClient::new(&self.mesh))
            .clone()
    }

    /// Prepares a listener from the control plane.
    pub(crate) fn build(&self, l: &mesh_core::model::Listener) -> Inbound {
        let ListenerKind::Socket(s) = &l.kind else {
            tracing::error!(listener = %l.name, "an API listener cannot serve inbound traffic");
            return Inbound {
                chains: Vec::new(),
                default: None,
                sniff: false,
            };
        };
        let client = || self.client();
        let cx = FilterContext {
            client: &client,
            remote_keys: self,
        };
        let chains: Vec<Chain> = s
            .filter_chains
            .iter()
            .map(|fc| self.chain(fc, &cx))
            .collect();
        let sniff = chains
            .iter()
            .any(|c| c.config.matcher.transport_protocol.is_some());
        Inbound {
            default: s
                .default_filter_chain
                .as_ref()
                .map(|fc| self.chain(fc, &cx)),
            chains,
            sniff,
        }
    }

    fn chain(&self, fc: &FilterChain, cx: &FilterContext<'_>) -> Chain {
        let filters = match &fc.filter {
            NetworkFilter::Http(h) => HttpFilters::new(&h.http_filters, &h.routes, cx),
            _ => HttpFilters::none(),
        };
        let (tls, broken) = match &fc.tls {
            None => (None, None),
            Some(t) => match &t.identity {
                CertSource::Provider { instance, .. } => {
                    match self.mesh.certificate_provider(instance) {
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
            filters: Arc::new(filters),
        }
    }
}

impl RemoteKeys for ServerShared {
    fn remote(&self, uri: &str, source: &JwksSource) -> Result<Arc<RemoteJwks>, String> {
        let JwksSource::Remote {
            timeout,
            cache_duration,
            ..
        } = source
        else {
            return Err("not a remote key set".into());
        };
        if let Some(found) = self.jwks.load().get(uri) {
            return Ok(found.clone());
        }
        let made = RemoteJwks::new(uri, *timeout, *cache_duration, self.client())?;
        // Off the request path (configuration time): copy-on-write keeps lookups lock-free.
        self.jwks.rcu(|map| {
            let mut map = HashMap::clone(map);
            map.entry(uri.into()).or_insert_with(|| made.clone());
            map
        });
        Ok(self.jwks.load().get(uri).cloned().unwrap_or(made))
    }
}
