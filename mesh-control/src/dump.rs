//! `mesh-control dump`: what a proxyless node subscribing to some targets would be sent, as
//! proto3 JSON in the shape mesh's static configuration loads (`resources: [...]`), so a dump
//! can be replayed without a control plane.

use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager::RouteSpecifier,
};
use envoy_types::pb::google::protobuf::Any;
use prost::Message;

use crate::generate::NodeInfo;
use crate::server::{Snapshot, urls};

/// The full chain LDS → RDS → CDS → EDS for `targets`, in that order.
pub fn resources(snap: &Snapshot, node: &NodeInfo, targets: &[String]) -> Vec<Any> {
    let listeners = snap.resources(node, urls::LISTENER, targets);
    let rds: Vec<String> = listeners
        .iter()
        .filter_map(|a| Listener::decode(a.value.as_slice()).ok())
        .filter_map(|l| l.api_listener?.api_listener)
        .filter_map(|a| HttpConnectionManager::decode(a.value.as_slice()).ok())
        .filter_map(|h| match h.route_specifier {
            Some(RouteSpecifier::Rds(r)) => Some(r.route_config_name),
            _ => None,
        })
        .collect();
    let routes = snap.resources(node, urls::ROUTE, &rds);
    let mut clusters: Vec<String> = Vec::new();
    for r in routes
        .iter()
        .filter_map(|a| RouteConfiguration::decode(a.value.as_slice()).ok())
    {
        for vh in r.virtual_hosts {
            for route in vh.routes {
                use envoy_types::pb::envoy::config::route::v3::route::Action;
                use envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier as C;
                let Some(Action::Route(ra)) = route.action else {
                    continue;
                };
                match ra.cluster_specifier {
                    Some(C::Cluster(c)) => clusters.push(c),
                    Some(C::WeightedClusters(w)) => {
                        clusters.extend(w.clusters.into_iter().map(|c| c.name))
                    }
                    _ => {}
                }
                clusters.extend(ra.request_mirror_policies.into_iter().map(|m| m.cluster));
            }
        }
    }
    clusters.sort();
    clusters.dedup();
    let cds = snap.resources(node, urls::CLUSTER, &clusters);
    let eds = snap.resources(node, urls::ENDPOINTS, &clusters);
    listeners
        .into_iter()
        .chain(routes)
        .chain(cds)
        .chain(eds)
        .collect()
}

/// Renders resources as `{"resources": [...]}` in proto3 JSON with `@type`s.
pub fn to_json(resources: &[Any]) -> Result<serde_json::Value, mesh_core::status::DumpError> {
    let out = resources
        .iter()
        .map(|a| mesh_core::status::resource_json(&a.type_url, &a.value))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(serde_json::json!({ "resources": out }))
}
