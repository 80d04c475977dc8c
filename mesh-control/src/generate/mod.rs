//! xDS generation from the registry and Istio policy, for one node at a time.
//!
//! Proxyless nodes (mesh's library, gRPC) get what istiod's `grpcgen` sends: per target
//! `host:port` an API listener whose routes come from RDS `outbound|port||fqdn`, clusters
//! `outbound|port|subset|fqdn`, and EDS under the cluster name. We fill in the standard Envoy
//! fields grpcgen leaves out (route timeouts, retries, fault, outlier detection) so our library
//! gets the whole policy.

mod authn;
pub(crate) mod authz;
mod cluster;
mod identity;
pub mod names;
mod route;

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::listener::v3 as listener;
use envoy_types::pb::envoy::extensions::filters::http::{fault::v3::HttpFault, router::v3::Router};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use envoy_types::pb::google::protobuf::Any;
use envoy_types::util::pack_any;

use crate::config::{Config, Spec, istio};
use crate::registry::{Registry, Service};

pub use names::{OutboundName, outbound, split_listener};

/// Who is asking: the facts about a node that change what it is sent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeInfo {
    /// Node id.
    pub id: String,
    /// Namespace (resolves short names; selects namespace-scoped policy).
    pub namespace: String,
    /// Workload labels (for `sourceLabels` matches).
    pub labels: BTreeMap<String, String>,
    /// What kind of client it is.
    pub kind: NodeKind,
    /// Where it runs (`node.locality`: region, zone, sub-zone), for locality failover.
    pub locality: Option<Locality>,
    /// For Envoy: where its outbound HTTP listener listens (metadata `MESH_OUTBOUND_ADDR`).
    pub outbound_addr: Option<std::net::SocketAddr>,
    /// For Envoy: where its inbound listener listens (metadata `MESH_INBOUND_ADDR`) ...
    pub inbound_addr: Option<std::net::SocketAddr>,
    /// ... in front of the local workload at this address (metadata `MESH_APP_ADDR`).
    pub app_addr: Option<std::net::SocketAddr>,
    /// For Envoy: a directory with `cert-chain.pem`, `key.pem` and `root-cert.pem` for mTLS
    /// (metadata `MESH_CERT_DIR`); without it, Envoy is sent SDS references.
    pub cert_dir: Option<std::path::PathBuf>,
}

/// A region, zone and sub-zone (empty when unknown), as in WorkloadEntry `locality`.
pub type Locality = (String, String, String);

/// Proxyless library or Envoy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum NodeKind {
    /// mesh or gRPC: API listeners per target, resources by name.
    #[default]
    Proxyless,
    /// Envoy: socket listeners, wildcard LDS and CDS.
    Envoy,
}

/// The route configuration of an Envoy node's outbound listener.
pub const ENVOY_OUTBOUND_ROUTES: &str = "mesh-outbound-http";

impl NodeInfo {
    /// Reads Istio's node conventions: metadata `NAMESPACE` and `LABELS`, else the namespace in
    /// an id of the form `sidecar~IP~pod.namespace~namespace.svc.cluster.local`.
    pub fn from_node(node: &core::Node) -> Self {
        use envoy_types::pb::google::protobuf::value::Kind;
        let meta = node.metadata.as_ref();
        let string = |k: &str| match meta
            .and_then(|m| m.fields.get(k))
            .and_then(|v| v.kind.as_ref())
        {
            Some(Kind::StringValue(s)) => Some(s.clone()),
            _ => None,
        };
        let labels = match meta
            .and_then(|m| m.fields.get("LABELS"))
            .and_then(|v| v.kind.as_ref())
        {
            Some(Kind::StructValue(s)) => s
                .fields
                .iter()
                .filter_map(|(k, v)| match &v.kind {
                    Some(Kind::StringValue(s)) => Some((k.clone(), s.clone())),
                    _ => None,
                })
                .collect(),
            _ => BTreeMap::new(),
        };
        let from_id = node
            .id
            .split('~')
            .nth(2)
            .and_then(|p| p.split('.').nth(1))
            .map(str::to_owned);
        Self {
            id: node.id.clone(),
            namespace: string("NAMESPACE")
                .or(from_id)
                .unwrap_or_else(|| "default".into()),
            labels,
            locality: node
                .locality
                .as_ref()
                .map(|l| (l.region.clone(), l.zone.clone(), l.sub_zone.clone()))
                .filter(|l| *l != Locality::default()),
            kind: if node.user_agent_name == "envoy" {
                NodeKind::Envoy
            } else {
                NodeKind::Proxyless
            },
            outbound_addr: string("MESH_OUTBOUND_ADDR").and_then(|a| a.parse().ok()),
            inbound_addr: string("MESH_INBOUND_ADDR").and_then(|a| a.parse().ok()),
            app_addr: string("MESH_APP_ADDR").and_then(|a| a.parse().ok()),
            cert_dir: string("MESH_CERT_DIR").map(std::path::PathBuf::from),
        }
    }
}

/// Where a proxyless server's inbound listener names start (istiod's grpcgen convention).
pub const INBOUND_PREFIX: &str = "xds.istio.io/grpc/lds/inbound/";

/// Istio's root namespace: policy there applies mesh-wide.
pub const ROOT_NAMESPACE: &str = "istio-system";

/// Policy indexed for generation.
#[derive(Clone, Debug, Default)]
pub struct Policies {
    virtual_services: Vec<(String, String, istio::VirtualService)>,
    destination_rules: Vec<(String, istio::DestinationRule)>,
    peer_authentications: Vec<(String, String, istio::PeerAuthentication)>,
    authorization_policies: Vec<(String, String, istio::AuthorizationPolicy)>,
    request_authentications: Vec<(String, istio::RequestAuthentication)>,
    extension_providers: Vec<istio::MeshExtensionProvider>,
    path_normalization: istio::PathNormalizationMode,
    /// The labels a policy's `targetRef` to a Service or a ServiceEntry selects, by
    /// (namespace, group/kind, name).
    target_selectors: BTreeMap<(String, String, String), BTreeMap<String, String>>,
}

/// Inbound mTLS mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MtlsMode {
    /// mTLS only.
    Strict,
    /// mTLS and plaintext on the same port.
    Permissive,
    /// Plaintext only.
    Disable,
}

fn selects(selector: Option<&istio::WorkloadSelector>, labels: &BTreeMap<String, String>) -> bool {
    selector.is_none_or(|s| s.labels.iter().all(|(k, v)| labels.get(k) == Some(v)))
}

impl Policies {
    /// The mTLS mode for a workload's port: a workload-selecting PeerAuthentication (its
    /// port-level setting first), else the namespace's, else the mesh's, else PERMISSIVE.
    pub fn mtls_mode(&self, node: &NodeInfo, port: u16) -> MtlsMode {
        let parse = |m: Option<&istio::MtlsSetting>| match m.and_then(|m| m.mode.as_deref()) {
            Some("STRICT") => Some(MtlsMode::Strict),
            Some("PERMISSIVE") => Some(MtlsMode::Permissive),
            Some("DISABLE") => Some(MtlsMode::Disable),
            _ => None,
        };
        fn in_ns<'a>(
            list: &'a [(String, String, istio::PeerAuthentication)],
            ns: &'a str,
        ) -> impl Iterator<Item = &'a (String, String, istio::PeerAuthentication)> {
            list.iter().filter(move |(n, _, _)| n == ns)
        }
        let list = self.peer_authentications.as_slice();
        let workload = in_ns(list, &node.namespace)
            .find(|(_, _, pa)| pa.selector.is_some() && selects(pa.selector.as_ref(), &node.labels))
            .and_then(|(_, _, pa)| {
                parse(pa.port_level_mtls.get(&u32::from(port))).or_else(|| parse(pa.mtls.as_ref()))
            });
        let namespace = || {
            in_ns(list, &node.namespace)
                .find(|(_, _, pa)| pa.selector.is_none())
                .and_then(|(_, _, pa)| parse(pa.mtls.as_ref()))
        };
        let mesh = || {
            in_ns(list, ROOT_NAMESPACE)
                .find(|(_, _, pa)| pa.selector.is_none())
                .and_then(|(_, _, pa)| parse(pa.mtls.as_ref()))
        };
        workload
            .or_else(namespace)
            .or_else(mesh)
            .unwrap_or(MtlsMode::Permissive)
    }

    /// The RequestAuthentications that apply to a workload (same scoping as authorization).
    fn request_authentication_for(&self, node: &NodeInfo) -> Vec<&istio::RequestAuthentication> {
        self.request_authentications
            .iter()
            .filter(|(ns, p)| {
                self.attaches(ns, node, p.selector.as_ref(), &p.target_ref, &p.target_refs)
            })
            .map(|(_, p)| p)
            .collect()
    }

    /// The AuthorizationPolicies that apply to a workload: its namespace's and the mesh-wide
    /// ones in the root namespace, by selector or by target reference.
    fn authorization_for(&self, node: &NodeInfo) -> Vec<(&str, &str, &istio::AuthorizationPolicy)> {
        self.authorization_policies
            .iter()
            .filter(|(ns, _, p)| {
                self.attaches(ns, node, p.selector.as_ref(), &p.target_ref, &p.target_refs)
            })
            .map(|(ns, name, p)| (ns.as_str(), name.as_str(), p))
            .collect()
    }

    /// Whether a policy in `ns` attaches to `node`. Without target references: a policy of
    /// the node's namespace or the root namespace whose selector (if any) matches its labels.
    /// With them (never widened to the namespace): a Service or ServiceEntry of the policy's
    /// namespace whose selector matches the node's labels, as a waypoint in front of that
    /// service would apply it; a Gateway or GatewayClass attaches to no workload (mesh-control
    /// serves no gateways), as istiod does for sidecars.
    fn attaches(
        &self,
        ns: &str,
        node: &NodeInfo,
        selector: Option<&istio::WorkloadSelector>,
        target_ref: &Option<istio::PolicyTargetReference>,
        target_refs: &[istio::PolicyTargetReference],
    ) -> bool {
        let mut targets = istio::target_refs(target_ref, target_refs).peekable();
        if targets.peek().is_none() {
            return (ns == node.namespace || ns == ROOT_NAMESPACE)
                && selects(selector, &node.labels);
        }
        // A selector beside target references is refused by `validate`.
        selector.is_none()
            && ns == node.namespace
            && targets.any(|t| {
                t.namespace.is_empty()
                    && self
                        .target_selectors
                        .get(&(ns.to_owned(), t.group_kind(), t.name.clone()))
                        .is_some_and(|labels| {
                            !labels.is_empty()
                                && labels.iter().all(|(k, v)| node.labels.get(k) == Some(v))
                        })
            })
    }
}

impl Policies {
    /// Indexes the policy objects of `config`.
    pub fn new(config: &Config) -> Self {
        let mut p = Self::default();
        for o in &config.objects {
            let ns = o.metadata.namespace().to_owned();
            match &o.spec {
                Spec::VirtualService(vs) => {
                    p.virtual_services
                        .push((ns, o.metadata.name.clone(), (**vs).clone()))
                }
                Spec::DestinationRule(dr) => p.destination_rules.push((ns, (**dr).clone())),
                Spec::MeshConfig(m) => {
                    p.extension_providers
                        .extend(m.extension_providers.iter().cloned());
                    if let Some(n) = m.path_normalization {
                        p.path_normalization = n.normalization;
                    }
                }
                Spec::PeerAuthentication(pa) => {
                    p.peer_authentications
                        .push((ns, o.metadata.name.clone(), (**pa).clone()))
                }
                Spec::AuthorizationPolicy(ap) => {
                    p.authorization_policies
                        .push((ns, o.metadata.name.clone(), (**ap).clone()))
                }
                Spec::RequestAuthentication(ra) => {
                    p.request_authentications.push((ns, (**ra).clone()))
                }
                Spec::Service(svc) => {
                    p.target_selectors.insert(
                        (ns, "core/Service".into(), o.metadata.name.clone()),
                        svc.selector.clone(),
                    );
                }
                Spec::ServiceEntry(se) => {
                    p.target_selectors.insert(
                        (
                            ns,
                            "networking.istio.io/ServiceEntry".into(),
                            o.metadata.name.clone(),
                        ),
                        se.workload_selector
                            .as_ref()
                            .map(|w| w.labels.clone())
                            .unwrap_or_default(),
                    );
                }
                _ => {}
            }
        }
        p
    }
}

/// Generates resources for one configuration snapshot.
pub struct Generator<'a> {
    registry: &'a Registry,
    policies: &'a Policies,
    /// The namespace of the node being served: it decides which policy is visible
    /// (`exportTo`) and which DestinationRule wins.
    client_namespace: &'a str,
}

impl<'a> Generator<'a> {
    /// A generator over a registry and its policies.
    pub fn new(registry: &'a Registry, policies: &'a Policies, client_namespace: &'a str) -> Self {
        Self {
            registry,
            policies,
            client_namespace,
        }
    }

    /// `manager` with the mesh's path normalization, as istiod sets it on every HTTP
    /// connection manager (MeshConfig `pathNormalization`; `BASE` by default).
    fn normalizing(&self, mut manager: hcm::HttpConnectionManager) -> hcm::HttpConnectionManager {
        use hcm::http_connection_manager::PathWithEscapedSlashesAction as Slashes;
        use istio::PathNormalizationMode as Mode;
        let mode = self.policies.path_normalization;
        manager.normalize_path = Some(envoy_types::pb::google::protobuf::BoolValue {
            value: mode != Mode::None,
        });
        manager.merge_slashes = matches!(mode, Mode::MergeSlashes | Mode::DecodeAndMergeSlashes);
        manager.path_with_escaped_slashes_action = if mode == Mode::DecodeAndMergeSlashes {
            Slashes::UnescapeAndForward
        } else {
            Slashes::KeepUnchanged
        } as i32;
        manager
    }

    /// The API listener for target `name` (`reviews:9080`), if such a service port exists.
    pub fn listener(&self, node: &NodeInfo, name: &str) -> Option<Any> {
        let (host, port) = split_listener(name)?;
        let svc = self.registry.resolve(host, &node.namespace)?;
        let p = svc.ports.iter().find(|p| p.number == port && p.is_http())?;
        let manager = self.normalizing(hcm::HttpConnectionManager {
            stat_prefix: name.to_owned(),
            route_specifier: Some(hcm::http_connection_manager::RouteSpecifier::Rds(
                hcm::Rds {
                    config_source: Some(ads()),
                    route_config_name: outbound(p.number, "", &svc.hostname),
                },
            )),
            http_filters: vec![
                http_filter("envoy.filters.http.fault", pack_any(HttpFault::default())),
                http_filter("envoy.filters.http.router", pack_any(Router::default())),
            ],
            ..Default::default()
        });
        Some(pack_any(listener::Listener {
            name: name.to_owned(),
            api_listener: Some(listener::ApiListener {
                api_listener: Some(pack_any(manager)),
            }),
            ..Default::default()
        }))
    }

    /// The route configuration `outbound|port||fqdn`.
    pub fn route_configuration(&self, node: &NodeInfo, name: &str) -> Option<Any> {
        let n = OutboundName::parse(name)?;
        let svc = self.registry.resolve(n.host, &node.namespace)?;
        svc.ports.iter().find(|p| p.number == n.port)?;
        Some(pack_any(route::route_configuration(
            self, node, name, svc, n.port,
        )))
    }

    /// The cluster `outbound|port|subset|fqdn`.
    pub fn cluster(&self, node: &NodeInfo, name: &str) -> Option<Any> {
        let n = OutboundName::parse(name)?;
        let Some(svc) = self.registry.resolve(n.host, &node.namespace) else {
            return self
                .external_jwks_clusters(node)
                .into_iter()
                .find(|c| c.name == name)
                .map(pack_any);
        };
        let port = svc.ports.iter().find(|p| p.number == n.port)?;
        if !n.subset.is_empty() && self.subset(svc, n.subset).is_none() {
            return None;
        }
        Some(pack_any(cluster::cluster(
            self, node, name, svc, port, n.subset,
        )))
    }

    /// The endpoints of cluster `outbound|port|subset|fqdn`.
    pub fn endpoints(&self, node: &NodeInfo, name: &str) -> Option<Any> {
        let n = OutboundName::parse(name)?;
        let svc = self.registry.resolve(n.host, &node.namespace)?;
        if svc.dns.is_some() {
            // DNS clusters carry their hosts inline; there is no EDS resource.
            return None;
        }
        let port = svc.ports.iter().find(|p| p.number == n.port)?;
        let labels = if n.subset.is_empty() {
            None
        } else {
            Some(&self.subset(svc, n.subset)?.labels)
        };
        Some(pack_any(cluster::endpoints(
            self, node, name, svc, port, n.subset, labels,
        )))
    }

    /// A proxyless server's inbound listener (`xds.istio.io/grpc/lds/inbound/IP:PORT`): filter
    /// chains by the PeerAuthentication mode, and RBAC filters from AuthorizationPolicy.
    pub fn inbound_listener(&self, node: &NodeInfo, name: &str) -> Option<Any> {
        use envoy_types::pb::envoy::config::route::v3 as route_pb;
        let addr: std::net::SocketAddr = name.strip_prefix(INBOUND_PREFIX)?.parse().ok()?;
        let filters = self.inbound_http_filters(node);
        // Proxyless servers match the route, then hand the request to the application.
        let routes = inbound_routes(
            addr.port(),
            route_pb::route::Action::NonForwardingAction(Default::default()),
        );
        let manager = self.normalizing(hcm::HttpConnectionManager {
            stat_prefix: format!("inbound_{}", addr.port()),
            route_specifier: Some(hcm::http_connection_manager::RouteSpecifier::RouteConfig(
                routes,
            )),
            http_filters: filters,
            ..Default::default()
        });
        let identity = identity::CertSource::for_node(node);
        let mtls = || identity.inbound_mtls();
        let chain = |name: &str, transport: Option<&str>, socket: Option<core::TransportSocket>| {
            listener::FilterChain {
                name: name.into(),
                filter_chain_match: transport.map(|t| listener::FilterChainMatch {
                    transport_protocol: t.into(),
                    ..Default::default()
                }),
                transport_socket: socket,
                filters: vec![listener::Filter {
                    name: "envoy.filters.network.http_connection_manager".into(),
                    config_type: Some(listener::filter::ConfigType::TypedConfig(pack_any(
                        manager.clone(),
                    ))),
                }],
                ..Default::default()
            }
        };
        let filter_chains = match self.policies.mtls_mode(node, addr.port()) {
            MtlsMode::Strict => vec![chain("mtls", None, Some(mtls()))],
            MtlsMode::Permissive => vec![
                chain("mtls", Some("tls"), Some(mtls())),
                chain("plaintext", Some("raw_buffer"), None),
            ],
            MtlsMode::Disable => vec![chain("plaintext", None, None)],
        };
        let address = socket_address(addr);
        Some(pack_any(listener::Listener {
            name: name.to_owned(),
            address: Some(address),
            filter_chains,
            metadata: Some(self.served_services(node, addr)),
            ..Default::default()
        }))
    }

    /// The services a workload serves at `addr` (those with an endpoint there, in the
    /// workload's namespace), as istiod writes them in an inbound cluster's metadata
    /// (`istio.services`): the workload's metrics name them as `destination_service`.
    fn served_services(&self, node: &NodeInfo, addr: std::net::SocketAddr) -> core::Metadata {
        use envoy_types::pb::google::protobuf::{ListValue, Struct, Value, value::Kind};
        let text = |s: &str| Value {
            kind: Some(Kind::StringValue(s.into())),
        };
        let services = self
            .registry
            .services()
            .filter(|svc| {
                svc.endpoints.iter().any(|e| {
                    e.namespace == node.namespace
                        && (addr.ip().is_unspecified() || e.address == addr.ip())
                        && svc.ports.iter().any(|p| {
                            e.ports.get(&p.number).copied().unwrap_or(p.target_port) == addr.port()
                        })
                })
            })
            // The host alone (the name and namespace are its first labels): protobuf maps
            // are encoded in hash order, so a struct of one field is the only one encoded the
            // same way each time, and an unchanged listener must not look changed (it would be
            // pushed with every snapshot).
            .map(|svc| Value {
                kind: Some(Kind::StructValue(Struct {
                    fields: [("host".to_owned(), text(&svc.hostname))].into(),
                })),
            })
            .collect();
        let istio = Struct {
            fields: [(
                "services".to_owned(),
                Value {
                    kind: Some(Kind::ListValue(ListValue { values: services })),
                },
            )]
            .into(),
        };
        core::Metadata {
            filter_metadata: [("istio".to_owned(), istio)].into(),
            ..Default::default()
        }
    }

    /// The HTTP filters in front of a workload: JWT first (RBAC reads the principal and claims
    /// it publishes), then RBAC (DENY, ALLOW, AUDIT), then the router.
    fn inbound_http_filters(&self, node: &NodeInfo) -> Vec<hcm::HttpFilter> {
        let mut filters: Vec<hcm::HttpFilter> =
            authn::filter(&self.policies.request_authentication_for(node))
                .map(|j| http_filter("envoy.filters.http.jwt_authn", pack_any(j)))
                .into_iter()
                .collect();
        let provider = |name: &str| {
            let p = self
                .policies
                .extension_providers
                .iter()
                .find(|p| p.name == name)?;
            let (service, port) = match (&p.envoy_ext_authz_http, &p.envoy_ext_authz_grpc) {
                (Some(h), _) => (&h.service, h.port),
                (_, Some(g)) => (&g.service, g.port),
                _ => return None,
            };
            let svc = self.registry.resolve(service, &node.namespace)?;
            Some((p, names::outbound(port as u16, "", &svc.hostname)))
        };
        filters.extend(
            authz::filters(&self.policies.authorization_for(node), provider)
                .into_iter()
                .map(|(n, config)| http_filter(&n, config)),
        );
        filters.push(http_filter(
            "envoy.filters.http.router",
            pack_any(Router::default()),
        ));
        filters
    }

    /// An Envoy node's inbound listener, in front of its workload: filter chains by the
    /// PeerAuthentication mode of the workload's port, as for proxyless servers.
    fn envoy_inbound_listener(&self, node: &NodeInfo) -> Option<Any> {
        use envoy_types::pb::envoy::config::route::v3 as route_pb;
        let (addr, app) = (node.inbound_addr?, node.app_addr?);
        let routes = inbound_routes(
            app.port(),
            route_pb::route::Action::Route(route_pb::RouteAction {
                cluster_specifier: Some(route_pb::route_action::ClusterSpecifier::Cluster(
                    inbound_cluster_name(app),
                )),
                timeout: Some(pb_duration(std::time::Duration::ZERO)),
                ..Default::default()
            }),
        );
        let manager = self.normalizing(hcm::HttpConnectionManager {
            codec_type: hcm::http_connection_manager::CodecType::Auto as i32,
            stat_prefix: "inbound_http".into(),
            route_specifier: Some(hcm::http_connection_manager::RouteSpecifier::RouteConfig(
                routes,
            )),
            http_filters: self.inbound_http_filters(node),
            ..Default::default()
        });
        let identity = identity::CertSource::for_node(node);
        let chain = |name: &str, transport: Option<&str>, tls: bool| listener::FilterChain {
            name: name.into(),
            filter_chain_match: transport.map(|t| listener::FilterChainMatch {
                transport_protocol: t.into(),
                ..Default::default()
            }),
            transport_socket: tls.then(|| identity.inbound_mtls()),
            filters: vec![hcm_filter(manager.clone())],
            ..Default::default()
        };
        let mut mode = self.policies.mtls_mode(node, app.port());
        if mode == MtlsMode::Permissive && matches!(identity, identity::CertSource::Sds) {
            // Without certificate files, the mTLS half of PERMISSIVE would wait for secrets
            // mesh-control does not issue and hold the whole listener back; plaintext, which
            // PERMISSIVE accepts anyway, keeps serving.
            mode = MtlsMode::Disable;
        }
        let filter_chains = match mode {
            MtlsMode::Strict => vec![chain("mtls", None, true)],
            MtlsMode::Permissive => vec![
                chain("mtls", Some("tls"), true),
                chain("plaintext", Some("raw_buffer"), false),
            ],
            MtlsMode::Disable => vec![chain("plaintext", None, false)],
        };
        // Telling TLS from plaintext on one port needs the TLS inspector.
        let listener_filters = if mode == MtlsMode::Permissive {
            vec![listener::ListenerFilter {
                name: "envoy.filters.listener.tls_inspector".into(),
                config_type: Some(listener::listener_filter::ConfigType::TypedConfig(pack_any(
                    envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector::default(),
                ))),
                ..Default::default()
            }]
        } else {
            Vec::new()
        };
        Some(pack_any(listener::Listener {
            name: "mesh_inbound_http".into(),
            address: Some(socket_address(addr)),
            filter_chains,
            listener_filters,
            ..Default::default()
        }))
    }

    /// The static cluster an Envoy node's inbound listener forwards to.
    fn envoy_inbound_cluster(&self, node: &NodeInfo) -> Option<Any> {
        use envoy_types::pb::envoy::config::cluster::v3 as cluster_pb;
        use envoy_types::pb::envoy::config::endpoint::v3 as endpoint_pb;
        let app = node.app_addr?;
        let name = inbound_cluster_name(app);
        Some(pack_any(cluster_pb::Cluster {
            name: name.clone(),
            cluster_discovery_type: Some(cluster_pb::cluster::ClusterDiscoveryType::Type(
                cluster_pb::cluster::DiscoveryType::Static as i32,
            )),
            connect_timeout: Some(pb_duration(std::time::Duration::from_secs(10))),
            load_assignment: Some(endpoint_pb::ClusterLoadAssignment {
                cluster_name: name,
                endpoints: vec![endpoint_pb::LocalityLbEndpoints {
                    lb_endpoints: vec![endpoint_pb::LbEndpoint {
                        host_identifier: Some(endpoint_pb::lb_endpoint::HostIdentifier::Endpoint(
                            endpoint_pb::Endpoint {
                                address: Some(socket_address(app)),
                                ..Default::default()
                            },
                        )),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        }))
    }

    /// Every listener of an Envoy node: the outbound HTTP listener, when its address is known.
    pub fn envoy_listeners(&self, node: &NodeInfo) -> Vec<Any> {
        let inbound = self.envoy_inbound_listener(node);
        let Some(addr) = node.outbound_addr else {
            return inbound.into_iter().collect();
        };
        let manager = self.normalizing(hcm::HttpConnectionManager {
            codec_type: hcm::http_connection_manager::CodecType::Auto as i32,
            stat_prefix: "outbound_http".into(),
            route_specifier: Some(hcm::http_connection_manager::RouteSpecifier::Rds(
                hcm::Rds {
                    config_source: Some(ads()),
                    route_config_name: ENVOY_OUTBOUND_ROUTES.into(),
                },
            )),
            http_filters: vec![
                http_filter("envoy.filters.http.fault", pack_any(HttpFault::default())),
                http_filter("envoy.filters.http.router", pack_any(Router::default())),
            ],
            ..Default::default()
        });
        let address = socket_address(addr);
        vec![pack_any(listener::Listener {
            name: "mesh_outbound_http".into(),
            address: Some(address),
            filter_chains: vec![listener::FilterChain {
                filters: vec![hcm_filter(manager)],
                ..Default::default()
            }],
            ..Default::default()
        })]
        .into_iter()
        .chain(inbound)
        .collect()
    }

    /// The routes of an Envoy node's outbound listener: one virtual host per HTTP service port,
    /// chosen by the request's Host, and Istio's REGISTRY_ONLY answer (502) for anything else.
    pub fn envoy_outbound_routes(&self, node: &NodeInfo) -> Any {
        use envoy_types::pb::envoy::config::route::v3 as route_pb;
        let mut used = std::collections::HashSet::new();
        let mut virtual_hosts = Vec::new();
        for svc in self.registry.services() {
            for port in svc.ports.iter().filter(|p| p.is_http()) {
                let rc = route::route_configuration(self, node, "", svc, port.number);
                for mut vh in rc.virtual_hosts {
                    // A service with several ports lists its bare names once.
                    vh.domains.retain(|d| used.insert(d.clone()));
                    if !vh.domains.is_empty() {
                        virtual_hosts.push(vh);
                    }
                }
            }
        }
        virtual_hosts.push(route_pb::VirtualHost {
            name: "block_all".into(),
            domains: vec!["*".into()],
            routes: vec![route_pb::Route {
                r#match: Some(route_pb::RouteMatch {
                    path_specifier: Some(route_pb::route_match::PathSpecifier::Prefix("/".into())),
                    ..Default::default()
                }),
                action: Some(route_pb::route::Action::DirectResponse(
                    route_pb::DirectResponseAction {
                        status: 502,
                        ..Default::default()
                    },
                )),
                ..Default::default()
            }],
            ..Default::default()
        });
        pack_any(route_pb::RouteConfiguration {
            name: ENVOY_OUTBOUND_ROUTES.into(),
            virtual_hosts,
            ..Default::default()
        })
    }

    /// The clusters that reach JWKS hosts outside the registry, for the RequestAuthentications
    /// of every workload (any of them may fetch keys through one).
    fn external_jwks_clusters(
        &self,
        node: &NodeInfo,
    ) -> Vec<envoy_types::pb::envoy::config::cluster::v3::Cluster> {
        authn::external_jwks_clusters(
            self.policies.request_authentications.iter().map(|(_, p)| p),
            self.registry,
            &node.namespace,
        )
    }

    /// Every cluster (whole services, DestinationRule subsets, and JWKS hosts outside the
    /// registry), for wildcard CDS.
    pub fn all_clusters(&self, node: &NodeInfo) -> Vec<Any> {
        let mut out: Vec<Any> = self.envoy_inbound_cluster(node).into_iter().collect();
        out.extend(self.external_jwks_clusters(node).into_iter().map(pack_any));
        for svc in self.registry.services() {
            let subsets: Vec<&str> = self
                .destination_rule(svc)
                .map(|dr| dr.subsets.iter().map(|s| s.name.as_str()).collect())
                .unwrap_or_default();
            for port in &svc.ports {
                for subset in std::iter::once("").chain(subsets.iter().copied()) {
                    if let Some(c) =
                        self.cluster(node, &outbound(port.number, subset, &svc.hostname))
                    {
                        out.push(c);
                    }
                }
            }
        }
        out
    }

    /// The VirtualService for a service as the client sees it: among those visible to its
    /// namespace (`exportTo`) and bound to the mesh, one in the client's namespace first, else
    /// the first in file order. Short hosts resolve in the VirtualService's own namespace.
    fn virtual_service(&self, svc: &Service) -> Option<(&str, &istio::VirtualService)> {
        let candidates = self.policies.virtual_services.iter().filter(|(ns, _, vs)| {
            let mesh_bound = vs.gateways.is_empty() || vs.gateways.iter().any(|g| g == "mesh");
            mesh_bound
                && visible(&vs.export_to, ns, self.client_namespace)
                && vs.hosts.iter().any(|h| {
                    self.registry
                        .resolve(h, ns)
                        .is_some_and(|s| s.hostname == svc.hostname)
                })
        });
        let (local, other): (Vec<_>, Vec<_>) =
            candidates.partition(|(ns, _, _)| ns == self.client_namespace);
        local
            .into_iter()
            .chain(other)
            .next()
            .map(|(_, name, vs)| (name.as_str(), vs))
    }

    /// The DestinationRule for a service, looked up as Istio does: in the client's namespace,
    /// then the service's, then the root namespace; each only if visible (`exportTo`). Within
    /// a namespace the most specific host wins: the service's own name, then the longest
    /// wildcard (`*.default.svc.cluster.local` before `*.cluster.local` before `*`).
    fn destination_rule(&self, svc: &Service) -> Option<&istio::DestinationRule> {
        [
            self.client_namespace,
            svc.namespace.as_str(),
            ROOT_NAMESPACE,
        ]
        .into_iter()
        .find_map(|wanted| {
            self.policies
                .destination_rules
                .iter()
                .filter(|(ns, dr)| {
                    ns == wanted && visible(&dr.export_to, ns, self.client_namespace)
                })
                .filter_map(|(ns, dr)| Some((self.host_match(&dr.host, ns, svc)?, dr)))
                // The first of equally specific rules, as before.
                .fold(None, |best: Option<(usize, _)>, next| match best {
                    Some(b) if b.0 >= next.0 => Some(b),
                    _ => Some(next),
                })
                .map(|(_, dr)| dr)
        })
    }

    /// How specifically a rule's `host` (short, FQDN or wildcard) names `svc`: `None` when
    /// it does not, `usize::MAX` for its own name, else the wildcard's length.
    fn host_match(&self, host: &str, ns: &str, svc: &Service) -> Option<usize> {
        match host.strip_prefix('*') {
            Some(suffix) => svc.hostname.ends_with(suffix).then_some(suffix.len()),
            None => self
                .registry
                .resolve(host, ns)
                .is_some_and(|s| s.hostname == svc.hostname)
                .then_some(usize::MAX),
        }
    }

    fn subset(&self, svc: &Service, name: &str) -> Option<&istio::Subset> {
        self.destination_rule(svc)?
            .subsets
            .iter()
            .find(|s| s.name == name)
    }
}

/// Whether a resource in `resource_ns` with this `exportTo` is visible to `client_ns`
/// (empty: everywhere; `*`: everywhere; `.`: its own namespace; `~`: nowhere).
fn visible(export_to: &[String], resource_ns: &str, client_ns: &str) -> bool {
    export_to.is_empty()
        || export_to
            .iter()
            .any(|e| e == "*" || e == client_ns || (e == "." && resource_ns == client_ns))
}

/// An inbound route configuration: every request on the port takes `action`.
fn inbound_routes(
    port: u16,
    action: envoy_types::pb::envoy::config::route::v3::route::Action,
) -> envoy_types::pb::envoy::config::route::v3::RouteConfiguration {
    use envoy_types::pb::envoy::config::route::v3 as route_pb;
    route_pb::RouteConfiguration {
        name: format!("inbound|{port}"),
        virtual_hosts: vec![route_pb::VirtualHost {
            name: "inbound".into(),
            domains: vec!["*".into()],
            routes: vec![route_pb::Route {
                r#match: Some(route_pb::RouteMatch {
                    path_specifier: Some(route_pb::route_match::PathSpecifier::Prefix("/".into())),
                    ..Default::default()
                }),
                action: Some(action),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// The network filter that runs an HTTP connection manager.
fn hcm_filter(manager: hcm::HttpConnectionManager) -> listener::Filter {
    listener::Filter {
        name: "envoy.filters.network.http_connection_manager".into(),
        config_type: Some(listener::filter::ConfigType::TypedConfig(pack_any(manager))),
    }
}

/// `inbound|PORT||`, istiod's name for the cluster to the local workload.
fn inbound_cluster_name(app: std::net::SocketAddr) -> String {
    format!("inbound|{}||", app.port())
}

fn socket_address(addr: std::net::SocketAddr) -> core::Address {
    core::Address {
        address: Some(core::address::Address::SocketAddress(core::SocketAddress {
            address: addr.ip().to_string(),
            port_specifier: Some(core::socket_address::PortSpecifier::PortValue(u32::from(
                addr.port(),
            ))),
            ..Default::default()
        })),
    }
}

fn ads() -> core::ConfigSource {
    core::ConfigSource {
        config_source_specifier: Some(core::config_source::ConfigSourceSpecifier::Ads(
            Default::default(),
        )),
        resource_api_version: core::ApiVersion::V3 as i32,
        ..Default::default()
    }
}

fn http_filter(name: &str, config: Any) -> hcm::HttpFilter {
    hcm::HttpFilter {
        name: name.to_owned(),
        config_type: Some(hcm::http_filter::ConfigType::TypedConfig(config)),
        ..Default::default()
    }
}

/// Protobuf duration.
/// A protobuf map field's value that encodes the same way for the same entries in the same
/// order. prost writes a map in its `HashMap`'s iteration order, which depends on the map's
/// hasher, random per map: every map built here shares one hasher instead, so an unchanged
/// resource keeps its bytes, and its digest (it is not pushed again with every snapshot).
pub(crate) fn stable_map<K: std::hash::Hash + Eq, V>(
    entries: impl IntoIterator<Item = (K, V)>,
) -> std::collections::HashMap<K, V> {
    static HASHER: std::sync::LazyLock<std::hash::RandomState> =
        std::sync::LazyLock::new(std::hash::RandomState::new);
    let mut map = std::collections::HashMap::with_hasher(HASHER.clone());
    map.extend(entries);
    map
}

pub(crate) fn pb_duration(d: std::time::Duration) -> envoy_types::pb::google::protobuf::Duration {
    envoy_types::pb::google::protobuf::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

/// Istio `Percent` (0-100) as Envoy's `FractionalPercent` per million.
pub(crate) fn fraction(p: f64) -> envoy_types::pb::envoy::r#type::v3::FractionalPercent {
    envoy_types::pb::envoy::r#type::v3::FractionalPercent {
        numerator: (p.clamp(0.0, 100.0) * 10_000.0).round() as u32,
        denominator:
            envoy_types::pb::envoy::r#type::v3::fractional_percent::DenominatorType::Million as i32,
    }
}
