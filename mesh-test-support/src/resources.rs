//! Builders for the xDS resources tests need, packed as `Any`.

use envoy_types::pb::envoy::config::cluster::v3 as cluster;
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::endpoint::v3 as endpoint;
use envoy_types::pb::envoy::config::listener::v3 as listener;
use envoy_types::pb::envoy::config::route::v3 as route;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use envoy_types::pb::google::protobuf::Any;
use envoy_types::util::pack_any;
use prost::{Message, Name};

/// Type URLs: the same as `mesh_core::xds::type_urls` (this crate cannot depend on mesh-core,
/// whose tests use it; a test there checks that they agree).
pub mod urls {
    /// LDS.
    pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
    /// RDS.
    pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
    /// CDS.
    pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
    /// EDS.
    pub const ENDPOINTS: &str =
        "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
}

/// The resource name inside an `Any` of one of the four types.
pub fn name_of(any: &Any) -> String {
    let v = any.value.as_slice();
    match any.type_url.as_str() {
        urls::LISTENER => listener::Listener::decode(v).expect("listener").name,
        urls::ROUTE => route::RouteConfiguration::decode(v).expect("route").name,
        urls::CLUSTER => cluster::Cluster::decode(v).expect("cluster").name,
        urls::ENDPOINTS => {
            endpoint::ClusterLoadAssignment::decode(v)
                .expect("cla")
                .cluster_name
        }
        other => panic!("not an xDS resource: {other}"),
    }
}

/// The router filter.
pub fn router_filter() -> hcm::HttpFilter {
    hcm::HttpFilter {
        name: "envoy.filters.http.router".into(),
        config_type: Some(hcm::http_filter::ConfigType::TypedConfig(pack_any(
            Router::default(),
        ))),
        ..Default::default()
    }
}

/// An HTTP connection manager using RDS `rds` and the given filters (router appended).
pub fn hcm_rds(rds: &str, mut filters: Vec<hcm::HttpFilter>) -> hcm::HttpConnectionManager {
    filters.push(router_filter());
    hcm::HttpConnectionManager {
        stat_prefix: "test".into(),
        route_specifier: Some(hcm::http_connection_manager::RouteSpecifier::Rds(
            hcm::Rds {
                route_config_name: rds.into(),
                config_source: Some(ads_config_source()),
            },
        )),
        http_filters: filters,
        ..Default::default()
    }
}

/// A `ConfigSource` pointing at ADS.
pub fn ads_config_source() -> core::ConfigSource {
    core::ConfigSource {
        config_source_specifier: Some(core::config_source::ConfigSourceSpecifier::Ads(
            Default::default(),
        )),
        resource_api_version: core::ApiVersion::V3 as i32,
        ..Default::default()
    }
}

/// A client API listener named `name` whose routes come from RDS `rds`.
pub fn api_listener(name: &str, rds: &str) -> listener::Listener {
    listener::Listener {
        name: name.into(),
        api_listener: Some(listener::ApiListener {
            api_listener: Some(pack_any(hcm_rds(rds, vec![]))),
        }),
        ..Default::default()
    }
}

/// A route configuration with one virtual host (`domains`) sending everything to `cluster`.
pub fn route_to(name: &str, domains: &[&str], cluster: &str) -> route::RouteConfiguration {
    route::RouteConfiguration {
        name: name.into(),
        virtual_hosts: vec![route::VirtualHost {
            name: format!("{name}-vh"),
            domains: domains.iter().map(|d| d.to_string()).collect(),
            routes: vec![route::Route {
                r#match: Some(prefix_match("/")),
                action: Some(route::route::Action::Route(route::RouteAction {
                    cluster_specifier: Some(route::route_action::ClusterSpecifier::Cluster(
                        cluster.into(),
                    )),
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// A prefix route match.
pub fn prefix_match(prefix: &str) -> route::RouteMatch {
    route::RouteMatch {
        path_specifier: Some(route::route_match::PathSpecifier::Prefix(prefix.into())),
        ..Default::default()
    }
}

/// An EDS cluster fed by ADS.
pub fn eds_cluster(name: &str) -> cluster::Cluster {
    cluster::Cluster {
        name: name.into(),
        cluster_discovery_type: Some(cluster::cluster::ClusterDiscoveryType::Type(
            cluster::cluster::DiscoveryType::Eds as i32,
        )),
        eds_cluster_config: Some(cluster::cluster::EdsClusterConfig {
            eds_config: Some(ads_config_source()),
            service_name: String::new(),
        }),
        ..Default::default()
    }
}

/// A socket address.
pub fn address(addr: std::net::SocketAddr) -> core::Address {
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

/// An assignment with the given endpoints in one locality at priority 0.
pub fn endpoints(cluster: &str, addrs: &[std::net::SocketAddr]) -> endpoint::ClusterLoadAssignment {
    endpoint::ClusterLoadAssignment {
        cluster_name: cluster.into(),
        endpoints: vec![endpoint::LocalityLbEndpoints {
            locality: Some(core::Locality {
                region: "r1".into(),
                zone: "z1".into(),
                sub_zone: String::new(),
            }),
            lb_endpoints: addrs
                .iter()
                .map(|a| endpoint::LbEndpoint {
                    host_identifier: Some(endpoint::lb_endpoint::HostIdentifier::Endpoint(
                        endpoint::Endpoint {
                            address: Some(address(*a)),
                            ..Default::default()
                        },
                    )),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// Packs any message.
pub fn any<T: Message + Name>(m: T) -> Any {
    pack_any(m)
}
