//! The inbound listener, ready to serve: each filter chain with its TLS configuration, its
//! network filters and its HTTP filters, and Envoy's filter-chain selection
//! ([`mesh_core::model::select`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
use mesh_core::Mesh;
use mesh_core::identity::tls::{ClientAuth, ClientValidation, server_config_with};
use mesh_core::model::{
    CertSource, ConnectionFacts, FilterChain, FilterChainMatch, JwksSource, ListenerKind,
    NetworkFilter, ServiceRef,
};

use super::filters::{FilterContext, HttpFilters};
use super::limits::Limits;
use crate::MeshClient;
use crate::rules::jwks::RemoteJwks;
use crate::rules::jwt::RemoteKeys;

/// One filter chain, ready to serve connections.
pub(crate) struct Chain {
    pub(crate) config: FilterChain,
    pub(crate) tls: Option<Arc<rustls::ServerConfig>>,
    /// Why connections to this chain are closed unserved: TLS it cannot offer (a missing
    /// certificate provider), or a terminal filter that is not the HTTP connection manager.
    /// Never served without the chain's policy.
    pub(crate) refuse: Option<String>,
    pub(crate) filters: Arc<HttpFilters>,
    /// A hash of everything about the chain but its HTTP filters: a connection accepted on
    /// it may take a new listener's filters only while this is unchanged.
    pub(crate) fingerprint: u64,
    /// What bounds its connections (its connection manager's limits and timeouts).
    pub(crate) limits: Limits,
    /// Its open connections, for each `envoy.filters.network.connection_limit` (by the
    /// filter's position among the network filters).
    pub(crate) connections: Box<[Arc<OpenConnections>]>,
}

/// The connections open on a chain.
#[derive(Debug, Default)]
pub(crate) struct OpenConnections(AtomicU64);

impl OpenConnections {
    /// A place for one more connection, unless `max` are open.
    pub(crate) fn try_open(self: &Arc<Self>, max: u64) -> Option<ConnectionSlot> {
        self.0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| ConnectionSlot(self.clone()))
    }
}

/// One connection's place under its chain's limit.
#[derive(Debug)]
pub(crate) struct ConnectionSlot(Arc<OpenConnections>);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The inbound listener, ready to serve.
pub(crate) struct Inbound {
    pub(crate) chains: Vec<Chain>,
    pub(crate) default: Option<Chain>,
    /// Whether chains differ by transport protocol, server name or ALPN, so a connection's
    /// first bytes (a TLS ClientHello) must be read before its chain is chosen.
    pub(crate) inspect: bool,
    /// How long that may take (`listener_filters_timeout`); `None`: for ever.
    pub(crate) inspect_timeout: Option<std::time::Duration>,
    /// On that timeout, with no byte read, take the connection as plaintext.
    pub(crate) continue_on_inspect_timeout: bool,
    /// The services the workload serves (the listener's Istio metadata), which name the
    /// inbound metrics' `destination_service`.
    pub(crate) services: Arc<[ServiceRef]>,
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
                    network_filters: Box::new([]),
                    filter: NetworkFilter::Unsupported {
                        name: "passthrough".into(),
                    },
                    handshake_timeout: None,
                },
                tls: None,
                refuse: None,
                filters: Arc::new(HttpFilters::none()),
                fingerprint: 0,
                limits: Limits::default(),
                connections: Box::new([]),
            }),
            inspect: false,
            inspect_timeout: None,
            continue_on_inspect_timeout: false,
            services: Arc::new([]),
        }
    }

    /// Envoy's filter-chain selection: a chain, else the default chain, else none (the
    /// connection is closed).
    pub(crate) fn select(&self, facts: &ConnectionFacts<'_>) -> Option<&Chain> {
        let matches: Vec<&FilterChainMatch> =
            self.chains.iter().map(|c| &c.config.matcher).collect();
        match mesh_core::model::select(&matches, facts) {
            Some(i) => self.chains.get(i),
            None => self.default.as_ref(),
        }
    }

    /// The chain with this fingerprint: the same chain (match, TLS, network filters, whether
    /// it serves) in this listener, whatever its HTTP filters are now.
    pub(crate) fn chain_like(&self, fingerprint: u64) -> Option<&Chain> {
        self.chains
            .iter()
            .chain(self.default.iter())
            .find(|c| c.fingerprint == fingerprint)
    }
}

/// A fetched key set's identity: its URI and the cluster it is fetched through.
type JwksKey = (Box<str>, Arc<str>);

/// What outlives one listener configuration: the client that reaches authorization services
/// and JWKS servers, and the fetched key sets (by URI and cluster), so an update does not
/// refetch them.
pub(crate) struct ServerShared {
    mesh: Mesh,
    client: OnceLock<MeshClient>,
    jwks: ArcSwap<HashMap<JwksKey, Arc<RemoteJwks>>>,
    /// Each chain's open connections, by fingerprint and network filter (configuration time
    /// only).
    connections: ArcSwap<HashMap<(u64, usize), std::sync::Weak<OpenConnections>>>,
}

impl ServerShared {
    pub(crate) fn new(mesh: &Mesh) -> Self {
        Self {
            mesh: mesh.clone(),
            client: OnceLock::new(),
            jwks: ArcSwap::default(),
            connections: Default::default(),
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
                inspect: false,
                inspect_timeout: None,
                continue_on_inspect_timeout: false,
                services: Arc::new([]),
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
            .map(|fc| self.chain(fc, &cx, false))
            .collect();
        let inspect = chains.iter().any(|c| {
            let m = &c.config.matcher;
            m.transport_protocol.is_some()
                || !m.server_names.is_empty()
                || !m.application_protocols.is_empty()
        });
        Inbound {
            default: s
                .default_filter_chain
                .as_ref()
                .map(|fc| self.chain(fc, &cx, true)),
            chains,
            inspect,
            inspect_timeout: s.inspect_timeout,
            continue_on_inspect_timeout: s.continue_on_inspect_timeout,
            services: s.services.iter().cloned().collect(),
        }
    }

    fn chain(&self, fc: &FilterChain, cx: &FilterContext<'_>, default: bool) -> Chain {
        let (filters, not_http) = match &fc.filter {
            NetworkFilter::Http(h) => (HttpFilters::new(h, cx), None),
            NetworkFilter::TcpProxy { cluster } => (
                HttpFilters::none(),
                Some(format!(
                    "the chain proxies TCP to {cluster}, which an in-process server does not do"
                )),
            ),
            NetworkFilter::Unsupported { name } => (
                HttpFilters::none(),
                Some(format!(
                    "the chain ends in {name}, not the HTTP connection manager"
                )),
            ),
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
                            match self.client_validation(t, p).and_then(|clients| {
                                server_config_with(p, &clients, auth, alpn, &t.params)
                                    .map_err(|why| format!("tls_params: {why}"))
                            }) {
                                Ok(c) => (Some(Arc::new(c)), None),
                                Err(why) => (None, Some(why)),
                            }
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
        let refuse = broken.or(not_http);
        if let Some(why) = &refuse {
            tracing::error!(chain = %fc.name, %why, "filter chain cannot serve; its connections are closed");
        }
        let limits = match &fc.filter {
            NetworkFilter::Http(h) => Limits {
                connection: h.limits.clone(),
                stream_idle_timeout: h.stream_idle_timeout,
                max_stream_duration: h.max_stream_duration,
            },
            _ => Limits::default(),
        };
        // Made once per listener update, compared per request. The limits are in it: they
        // were set when a connection opened, so a change drains it (as Envoy drains the
        // connections of a changed chain) and its client reconnects under the new ones.
        let fingerprint = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            // Overlapping matches are refused, so within a listener this tells chains apart
            // (the default chain by its flag).
            format!(
                "{default}|{:?}|{:?}|{:?}|{:?}|{:?}",
                fc.matcher, fc.tls, fc.network_filters, refuse, limits
            )
            .hash(&mut h);
            h.finish()
        };
        Chain {
            config: fc.clone(),
            tls,
            refuse,
            filters: Arc::new(filters),
            fingerprint,
            limits,
            connections: (0..fc.network_filters.len())
                .map(|i| self.open_connections(fingerprint, i))
                .collect(),
        }
    }

    /// How the chain verifies client certificates: its `validation_context`'s CA (a
    /// certificate provider of the bootstrap; without a context, the serving provider's
    /// roots) and SAN matchers. A CA this server cannot use refuses the chain rather than
    /// verify clients against other roots.
    fn client_validation(
        &self,
        t: &mesh_core::model::DownstreamTls,
        serving: &mesh_core::identity::CertificateProvider,
    ) -> Result<ClientValidation, String> {
        let Some(v) = &t.validation else {
            return Ok(ClientValidation {
                roots: serving.clone(),
                sans: Arc::new([]),
            });
        };
        let roots = match &v.ca {
            CertSource::Provider { instance, .. } => self
                .mesh
                .certificate_provider(instance)
                .cloned()
                .ok_or_else(|| {
                    format!("validation_context: certificate provider {instance:?} is not in the bootstrap")
                })?,
            other => {
                return Err(format!(
                    "validation_context: client certificates verified by {other:?} are not supported (use a certificate provider instance)"
                ));
            }
        };
        Ok(ClientValidation {
            roots,
            sans: v.san_matchers.clone().into(),
        })
    }

    /// The open-connection count of the chain with this fingerprint, kept across listener
    /// updates: connections still open on the chain as it was count against it as it is.
    fn open_connections(&self, fingerprint: u64, filter: usize) -> Arc<OpenConnections> {
        let key = (fingerprint, filter);
        if let Some(c) = self
            .connections
            .load()
            .get(&key)
            .and_then(std::sync::Weak::upgrade)
        {
            return c;
        }
        let made = Arc::new(OpenConnections::default());
        self.connections.rcu(|counts| {
            let mut counts = HashMap::clone(counts);
            counts.retain(|_, c| c.strong_count() > 0);
            counts.insert(key, Arc::downgrade(&made));
            counts
        });
        made
    }
}

impl RemoteKeys for ServerShared {
    fn remote(&self, uri: &str, source: &JwksSource) -> Result<Arc<RemoteJwks>, String> {
        let JwksSource::Remote {
            cluster,
            timeout,
            cache_duration,
            ..
        } = source
        else {
            return Err("not a remote key set".into());
        };
        let key = (Box::<str>::from(uri), cluster.clone());
        if let Some(found) = self.jwks.load().get(&key) {
            return Ok(found.clone());
        }
        let made = RemoteJwks::new(
            uri,
            cluster,
            *timeout,
            *cache_duration,
            Arc::new(self.client()),
        )?;
        // Off the request path (configuration time): copy-on-write keeps lookups lock-free.
        self.jwks.rcu(|map| {
            let mut map = HashMap::clone(map);
            map.entry(key.clone()).or_insert_with(|| made.clone());
            map
        });
        Ok(self.jwks.load().get(&key).cloned().unwrap_or(made))
    }
}
