//! Static mode: resources from a YAML/JSON file, no control plane.

use mesh_core::model::{ClusterSpecifier, LbPolicy};
use mesh_core::{Mesh, StaticResources};

pub(crate) const EXAMPLE: &str = r#"
static_resources:
  listeners:
  - name: reviews:9080
    api_listener:
      api_listener:
        "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
        stat_prefix: reviews
        rds: { route_config_name: reviews, config_source: { ads: {} } }
        http_filters:
        - name: envoy.filters.http.router
          typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }
  clusters:
  - name: reviews-v1
    type: EDS
    lb_policy: LEAST_REQUEST
    eds_cluster_config: { eds_config: { ads: {} } }
  - name: reviews-v2
    type: STATIC
    load_assignment:
      cluster_name: reviews-v2
      endpoints:
      - lb_endpoints:
        - endpoint: { address: { socket_address: { address: "::1", port_value: 9081 } } }
resources:
- "@type": type.googleapis.com/envoy.config.route.v3.RouteConfiguration
  name: reviews
  virtual_hosts:
  - name: reviews
    domains: ["reviews", "reviews:9080"]
    routes:
    - match: { prefix: /, headers: [{ name: end-user, string_match: { exact: jason } }] }
      route: { cluster: reviews-v2 }
    - match: { prefix: / }
      route:
        weighted_clusters:
          clusters: [{ name: reviews-v1, weight: 90 }, { name: reviews-v2, weight: 10 }]
- "@type": type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment
  cluster_name: reviews-v1
  endpoints:
  - lb_endpoints:
    - endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: 9080 } } }
"#;

#[tokio::test]
async fn static_yaml_serves_a_complete_snapshot() {
    let resources = StaticResources::from_str(EXAMPLE, "example.yaml").unwrap();
    assert_eq!(resources.len(), 5);
    let mesh = Mesh::builder()
        .static_resources(resources)
        .build()
        .await
        .unwrap();
    let snap = mesh.target("reviews:9080").ready().await;
    assert_eq!(snap.clusters.len(), 2);
    assert_eq!(
        snap.clusters["reviews-v1"].cluster.lb,
        LbPolicy::LeastRequest {
            choice_count: 2,
            active_request_bias: 1.0
        }
    );
    let v2 = snap.clusters["reviews-v2"].endpoints.as_ref().unwrap();
    assert_eq!(
        v2.endpoints().next().unwrap().address,
        "[::1]:9081".parse().unwrap()
    );
    let route = &snap.routes.virtual_hosts[0].routes[1];
    let mesh_core::model::Action::Forward(f) = &route.action else {
        panic!()
    };
    assert!(matches!(&f.cluster, ClusterSpecifier::Weighted(w) if w.total == 100));
}

#[test]
fn yaml_syntax_errors_have_line_and_column() {
    let e = StaticResources::from_str("static_resources:\n  listeners: [\n", "broken.yaml")
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("broken.yaml: "), "{e}");
    assert!(e.contains("line 3"), "{e}");
}

#[test]
fn proto_field_errors_name_the_resource_path() {
    let e = StaticResources::from_str(
        "static_resources:\n  clusters:\n  - name: c\n    type: EDS\n    connect_timeout: soon\n",
        "c.yaml",
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("c.yaml: static_resources.clusters[0].connect_timeout"),
        "{e}"
    );
}

#[tokio::test]
async fn the_readme_example_config_is_valid() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/static-route/mesh.yaml"
    );
    let mesh = Mesh::builder()
        .static_file(path)
        .unwrap()
        .build()
        .await
        .unwrap();
    let snap = mesh.target("reviews:9080").ready().await;
    assert_eq!(snap.clusters.len(), 2);
}
