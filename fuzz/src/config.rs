//! Fuzz targets for configuration input: xDS resources (decode, translate, field accounting)
//! and mesh-control's Istio YAML loader. No input may panic, and every refusal says what was
//! wrong.

use envoy_types::pb::envoy::config::cluster::v3 as cluster;
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::endpoint::v3 as endpoint;
use envoy_types::pb::envoy::config::listener::v3 as listener;
use envoy_types::pb::envoy::config::route::v3 as route;
use envoy_types::pb::envoy::extensions::filters::http as http_filters;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use envoy_types::pb::google::protobuf::Any;
use mesh_core::xds::ResourceType;
use prost::{Message, Name};

/// Where the fuzz bytes go: straight into a resource of one of the four types, or into an
/// `Any` of one supported type at a place the translator decodes it.
#[derive(Clone, Copy)]
enum Place {
    /// The bytes are a resource of this type.
    Resource(ResourceType),
    /// The bytes are an HTTP filter config of this type, on the client or the server side.
    HttpFilter(&'static str, bool),
    /// The bytes are the API listener's connection manager.
    ApiListener,
    /// The bytes are a network filter ahead of a server chain's connection manager, or its
    /// terminal filter.
    NetworkFilter(&'static str, bool),
    /// The bytes are a chain's (`true`) or a cluster's transport socket config.
    TransportSocket(&'static str, bool),
    /// The bytes are a cluster's `HttpProtocolOptions`.
    ProtocolOptions,
    /// The bytes are a load-balancing policy of this type.
    LbPolicy(&'static str),
    /// The bytes are a per-route filter config of this type.
    PerRoute(&'static str),
}

fn url(name: &str) -> String {
    format!("type.googleapis.com/{name}")
}

const PLACES: &[Place] = &[
    Place::Resource(ResourceType::Listener),
    Place::Resource(ResourceType::RouteConfiguration),
    Place::Resource(ResourceType::Cluster),
    Place::Resource(ResourceType::ClusterLoadAssignment),
    Place::ApiListener,
    Place::HttpFilter("envoy.extensions.filters.http.fault.v3.HTTPFault", false),
    Place::HttpFilter("envoy.extensions.filters.http.rbac.v3.RBAC", true),
    Place::HttpFilter(
        "envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
        true,
    ),
    Place::HttpFilter(
        "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
        true,
    ),
    Place::HttpFilter("envoy.extensions.filters.http.ext_authz.v3.ExtAuthz", true),
    Place::HttpFilter("envoy.extensions.filters.http.router.v3.Router", true),
    Place::NetworkFilter(
        "envoy.extensions.filters.network.connection_limit.v3.ConnectionLimit",
        false,
    ),
    Place::NetworkFilter("envoy.extensions.filters.network.rbac.v3.RBAC", false),
    Place::NetworkFilter(
        "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
        true,
    ),
    Place::NetworkFilter(
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        true,
    ),
    Place::TransportSocket(
        "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
        true,
    ),
    Place::TransportSocket(
        "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
        false,
    ),
    Place::TransportSocket(
        "envoy.extensions.transport_sockets.internal_upstream.v3.InternalUpstreamTransport",
        false,
    ),
    Place::ProtocolOptions,
    Place::LbPolicy("envoy.extensions.load_balancing_policies.ring_hash.v3.RingHash"),
    Place::LbPolicy("envoy.extensions.load_balancing_policies.maglev.v3.Maglev"),
    Place::LbPolicy("envoy.extensions.load_balancing_policies.least_request.v3.LeastRequest"),
    Place::LbPolicy("envoy.extensions.load_balancing_policies.wrr_locality.v3.WrrLocality"),
    Place::LbPolicy("envoy.extensions.load_balancing_policies.pick_first.v3.PickFirst"),
    Place::PerRoute("envoy.config.route.v3.FilterConfig"),
    Place::PerRoute("envoy.extensions.filters.http.rbac.v3.RBACPerRoute"),
    Place::PerRoute("envoy.extensions.filters.http.jwt_authn.v3.PerRouteConfig"),
    Place::PerRoute("envoy.extensions.filters.http.fault.v3.HTTPFault"),
    Place::PerRoute("envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit"),
];

fn router() -> hcm::HttpFilter {
    hcm::HttpFilter {
        name: "router".into(),
        config_type: Some(hcm::http_filter::ConfigType::TypedConfig(Any {
            type_url: http_filters::router::v3::Router::type_url(),
            value: vec![],
        })),
        ..Default::default()
    }
}

fn manager(filters: Vec<hcm::HttpFilter>) -> hcm::HttpConnectionManager {
    hcm::HttpConnectionManager {
        route_specifier: Some(hcm::http_connection_manager::RouteSpecifier::Rds(
            hcm::Rds {
                route_config_name: "r".into(),
                config_source: None,
            },
        )),
        http_filters: filters,
        ..Default::default()
    }
}

fn typed(name: &str, value: Vec<u8>) -> Any {
    Any {
        type_url: url(name),
        value,
    }
}

fn net_filter(any: Any) -> listener::Filter {
    listener::Filter {
        name: "f".into(),
        config_type: Some(listener::filter::ConfigType::TypedConfig(any)),
    }
}

fn server_listener(chain: listener::FilterChain) -> Any {
    envoy_types::util::pack_any(listener::Listener {
        name: "inbound".into(),
        filter_chains: vec![chain],
        ..Default::default()
    })
}

fn http_chain(filters: Vec<hcm::HttpFilter>) -> listener::FilterChain {
    listener::FilterChain {
        filters: vec![net_filter(envoy_types::util::pack_any(manager(filters)))],
        ..Default::default()
    }
}

fn eds_cluster() -> cluster::Cluster {
    cluster::Cluster {
        name: "c".into(),
        cluster_discovery_type: Some(cluster::cluster::ClusterDiscoveryType::Type(
            cluster::cluster::DiscoveryType::Eds as i32,
        )),
        ..Default::default()
    }
}

/// The resource that carries `data` at `place`.
fn resource(place: Place, data: &[u8]) -> Any {
    let bytes = data.to_vec();
    match place {
        Place::Resource(ty) => Any {
            type_url: ty.type_url().into(),
            value: bytes,
        },
        Place::ApiListener => envoy_types::util::pack_any(listener::Listener {
            name: "l".into(),
            api_listener: Some(listener::ApiListener {
                api_listener: Some(typed(
                    hcm::HttpConnectionManager::full_name().as_str(),
                    bytes,
                )),
            }),
            ..Default::default()
        }),
        Place::HttpFilter(name, server) => {
            let filter = hcm::HttpFilter {
                name: "f".into(),
                config_type: Some(hcm::http_filter::ConfigType::TypedConfig(typed(
                    name, bytes,
                ))),
                ..Default::default()
            };
            if server {
                server_listener(http_chain(vec![filter, router()]))
            } else {
                envoy_types::util::pack_any(listener::Listener {
                    name: "l".into(),
                    api_listener: Some(listener::ApiListener {
                        api_listener: Some(envoy_types::util::pack_any(manager(vec![
                            filter,
                            router(),
                        ]))),
                    }),
                    ..Default::default()
                })
            }
        }
        Place::NetworkFilter(name, terminal) => {
            let mut chain = http_chain(vec![router()]);
            let f = net_filter(typed(name, bytes));
            if terminal {
                chain.filters = vec![f];
            } else {
                chain.filters.insert(0, f);
            }
            server_listener(chain)
        }
        Place::TransportSocket(name, downstream) => {
            let socket = core::TransportSocket {
                name: "tls".into(),
                config_type: Some(core::transport_socket::ConfigType::TypedConfig(typed(
                    name, bytes,
                ))),
            };
            if downstream {
                let mut chain = http_chain(vec![router()]);
                chain.transport_socket = Some(socket);
                server_listener(chain)
            } else {
                envoy_types::util::pack_any(cluster::Cluster {
                    transport_socket: Some(socket),
                    ..eds_cluster()
                })
            }
        }
        Place::ProtocolOptions => {
            let key = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";
            envoy_types::util::pack_any(cluster::Cluster {
                typed_extension_protocol_options: [(key.to_owned(), typed(key, bytes))].into(),
                ..eds_cluster()
            })
        }
        Place::LbPolicy(name) => envoy_types::util::pack_any(cluster::Cluster {
            load_balancing_policy: Some(cluster::LoadBalancingPolicy {
                policies: vec![cluster::load_balancing_policy::Policy {
                    typed_extension_config: Some(core::TypedExtensionConfig {
                        name: "lb".into(),
                        typed_config: Some(typed(name, bytes)),
                    }),
                }],
            }),
            ..eds_cluster()
        }),
        Place::PerRoute(name) => envoy_types::util::pack_any(route::RouteConfiguration {
            name: "r".into(),
            virtual_hosts: vec![route::VirtualHost {
                name: "vh".into(),
                domains: vec!["*".into()],
                routes: vec![route::Route {
                    r#match: Some(route::RouteMatch {
                        path_specifier: Some(route::route_match::PathSpecifier::Prefix("/".into())),
                        ..Default::default()
                    }),
                    action: Some(route::route::Action::Route(route::RouteAction {
                        cluster_specifier: Some(route::route_action::ClusterSpecifier::Cluster(
                            "c".into(),
                        )),
                        ..Default::default()
                    })),
                    typed_per_filter_config: [("f".to_owned(), typed(name, bytes))].into(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }),
    }
}

/// xDS resources: the first byte picks where the rest goes (a resource of one type, or the
/// value of an `Any` of one supported type inside one). Decoding, translation and field
/// accounting never panic; a refusal says why; every unapplied field has a path; strict mode
/// refuses exactly the resources with an ignored field.
pub fn xds_resources(data: &[u8]) {
    let (settings, rest) = super::split(data);
    let place = PLACES[usize::from(settings) % PLACES.len()];
    let any = resource(place, rest);
    let translated = mesh_core::xds::translate::resource(&any);
    if let Err(e) = &translated {
        assert!(!e.to_string().is_empty());
    }
    let ty = ResourceType::from_type_url(&any.type_url).expect("one of the four");
    let unapplied = mesh_core::xds::fields::unapplied(ty, &any.value);
    for f in unapplied.iter() {
        assert!(!f.path.is_empty() && !f.note.is_empty(), "{f:?}");
    }
}

/// Seeds: a small valid resource for each place.
pub(crate) fn xds_seeds() -> Vec<Vec<u8>> {
    use http_filters::rbac::v3 as rbac;
    let with = |i: usize, m: &dyn Fn() -> Vec<u8>| {
        let mut v = vec![i as u8];
        v.extend(m());
        v
    };
    let mut out = Vec::new();
    for (i, place) in PLACES.iter().enumerate() {
        let body: Vec<u8> = match place {
            Place::Resource(ResourceType::Listener) => listener::Listener {
                name: "l".into(),
                api_listener: Some(listener::ApiListener {
                    api_listener: Some(envoy_types::util::pack_any(manager(vec![router()]))),
                }),
                ..Default::default()
            }
            .encode_to_vec(),
            Place::Resource(ResourceType::Cluster) => eds_cluster().encode_to_vec(),
            Place::Resource(ResourceType::ClusterLoadAssignment) => {
                endpoint::ClusterLoadAssignment {
                    cluster_name: "c".into(),
                    endpoints: vec![endpoint::LocalityLbEndpoints {
                        lb_endpoints: vec![endpoint::LbEndpoint::default()],
                        ..Default::default()
                    }],
                    ..Default::default()
                }
                .encode_to_vec()
            }
            Place::Resource(ResourceType::RouteConfiguration) => {
                let Any { value, .. } = resource(Place::PerRoute("x"), &[]);
                value
            }
            Place::ApiListener => manager(vec![router()]).encode_to_vec(),
            Place::HttpFilter(name, _) if name.ends_with("rbac.v3.RBAC") => rbac::Rbac {
                rules: Some(envoy_types::pb::envoy::config::rbac::v3::Rbac::default()),
                ..Default::default()
            }
            .encode_to_vec(),
            Place::NetworkFilter(name, true) if name.ends_with("HttpConnectionManager") => {
                manager(vec![router()]).encode_to_vec()
            }
            _ => Vec::new(),
        };
        out.push(with(i, &|| body.clone()));
    }
    out
}

/// mesh-control's Istio YAML: parsing, the registry, the analysis and the generated resources
/// never panic; every diagnostic has a message; what mesh-control generates for a proxyless
/// client of each service, mesh's own client accepts.
pub fn istio_yaml(data: &[u8]) {
    use mesh_control::generate::{Generator, NodeInfo, Policies};
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let config = match mesh_control::config::parse_str(text, std::path::Path::new("f.yaml")) {
        Ok(c) => c,
        Err(diagnostics) => {
            assert!(diagnostics.iter().all(|d| !d.message.is_empty()));
            return;
        }
    };
    let Ok(registry) = mesh_control::registry::Registry::build(&config) else {
        return;
    };
    let diagnostics = mesh_control::analyze::analyze(&config, &registry);
    assert!(diagnostics.iter().all(|d| !d.message.is_empty()));
    let policies = Policies::new(&config);
    let generator = Generator::new(&registry, &policies, "default");
    let node = NodeInfo {
        namespace: "default".into(),
        ..Default::default()
    };
    for any in generator.all_clusters(&node) {
        if let Err(e) = mesh_core::xds::translate::resource(&any) {
            panic!("mesh-control generated a cluster its own client refuses: {e}");
        }
    }
    for svc in registry.services() {
        for port in &svc.ports {
            let name = format!("{}:{}", svc.hostname, port.number);
            if let Some(any) = generator.listener(&node, &name)
                && let Err(e) = mesh_core::xds::translate::resource(&any)
            {
                panic!("mesh-control generated a listener its own client refuses: {e}");
            }
        }
    }
}

/// Seeds: Istio objects of the kinds mesh-control reads.
pub(crate) fn yaml_seeds() -> Vec<Vec<u8>> {
    [
        "apiVersion: v1\nkind: Service\nmetadata: { name: reviews, namespace: default }\nspec:\n  ports: [{ name: http, port: 9080 }]\n  selector: { app: reviews }\n",
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: { name: reviews }\nspec:\n  hosts: [reviews]\n  http:\n  - match: [{ headers: { end-user: { exact: jason } } }]\n    route: [{ destination: { host: reviews, subset: v2 } }]\n  - route: [{ destination: { host: reviews, subset: v1 }, weight: 90 }, { destination: { host: reviews, subset: v3 }, weight: 10 }]\n    retries: { attempts: 3, perTryTimeout: 2s }\n    timeout: 10s\n---\napiVersion: v1\nkind: Service\nmetadata: { name: reviews }\nspec: { ports: [{ name: http, port: 9080 }] }\n",
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: { name: reviews }\nspec:\n  host: reviews\n  trafficPolicy: { loadBalancer: { consistentHash: { httpHeaderName: x-user } }, outlierDetection: { consecutive5xxErrors: 3 }, tls: { mode: ISTIO_MUTUAL } }\n  subsets: [{ name: v1, labels: { version: v1 } }]\n",
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: { name: deny }\nspec:\n  action: DENY\n  rules: [{ from: [{ source: { notPrincipals: ['cluster.local/ns/default/sa/x'] } }], to: [{ operation: { paths: ['/admin*'], methods: [POST] } }] }]\n",
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: { name: default }\nspec: { mtls: { mode: STRICT } }\n",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}
