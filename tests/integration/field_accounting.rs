//! No silent drops: a field the client does not apply is reported by name (the resource's
//! state, `/config_dump`, the admin metrics) and, in strict mode, refused: NACKed with the
//! field's path over ADS, a start-up error for a static file.

use envoy_types::pb::envoy::config::core::v3::HealthCheck;
use mesh_core::xds::{FieldClass, ResourceStatus, ResourceType};
use mesh_core::{Mesh, StaticResources};
use mesh_test_support::AdsServer;
use mesh_test_support::resources as r;

use super::mesh_for;

/// A cluster with active health checking (ignored: Envoy would probe and skip failing hosts)
/// and a statistics name (inert).
fn health_checked_cluster() -> envoy_types::pb::envoy::config::cluster::v3::Cluster {
    let mut c = r::eds_cluster("checked");
    c.alt_stat_name = "checked_stats".into();
    c.health_checks = vec![HealthCheck::default()];
    c
}

const STATIC: &str = r#"
static_resources:
  clusters:
  - name: checked
    type: EDS
    alt_stat_name: checked_stats
    health_checks: [{ timeout: 1s, interval: 5s, http_health_check: { path: /healthz } }]
"#;

#[tokio::test]
async fn ads_reports_unapplied_fields_and_strict_mode_nacks_them() {
    let server = AdsServer::start().await;
    server.set(r::any(health_checked_cluster()));

    // Default: accepted, with both fields listed by path and class.
    let mesh = mesh_for(&server, &[]).await;
    let mut w = mesh
        .xds_client()
        .unwrap()
        .watch(ResourceType::Cluster, "checked")
        .await
        .unwrap();
    let st = w.wait_for(|s| s.status == ResourceStatus::Acked).await;
    let mut listed: Vec<(&str, FieldClass)> =
        st.unapplied.iter().map(|f| (&*f.path, f.class)).collect();
    listed.sort();
    assert_eq!(
        listed,
        [
            ("alt_stat_name", FieldClass::Inert),
            ("health_checks", FieldClass::Ignored)
        ]
    );

    // Strict (the server asks for it in the bootstrap): NACKed, naming the field; the
    // control plane sees the detail in the NACK.
    let strict = mesh_for(&server, &[mesh_core::xds::fields::STRICT_FEATURE]).await;
    let mut w = strict
        .xds_client()
        .unwrap()
        .watch(ResourceType::Cluster, "checked")
        .await
        .unwrap();
    let st = w.wait_for(|s| s.status == ResourceStatus::Nacked).await;
    assert!(st.value.is_none(), "nothing served in its place");
    let detail = &st.error.as_ref().unwrap().detail;
    assert!(
        detail.contains("Cluster checked: health_checks: is not applied by this client"),
        "{detail}"
    );
    let nack = server
        .wait_request("a NACK naming the field", |req| {
            req.error_detail
                .as_ref()
                .is_some_and(|e| e.message.contains("health_checks"))
        })
        .await;
    assert_eq!(nack.type_url, ResourceType::Cluster.type_url());

    // Once the control plane drops the field, strict mode accepts the resource.
    server.set(r::any(r::eds_cluster("checked")));
    let st = w.wait_for(|s| s.status == ResourceStatus::Acked).await;
    assert!(st.unapplied.is_empty(), "{:?}", st.unapplied);
}

#[tokio::test]
async fn a_static_file_reports_them_in_config_dump_and_metrics() {
    let resources = StaticResources::from_str(STATIC, "mesh.yaml").unwrap();
    let mesh = Mesh::builder()
        .static_resources(resources)
        .build()
        .await
        .unwrap();
    let addr = super::start_admin(&mesh).await;
    // Static resources are dumped too.
    let cluster = super::dumped_resource(addr, "checked").await;
    let fields = cluster["unapplied_fields"].as_array().unwrap();
    let ignored = fields
        .iter()
        .find(|f| f["field"] == "health_checks")
        .unwrap_or_else(|| panic!("{cluster}"));
    assert_eq!(ignored["class"], "ignored");
    assert!(!ignored["note"].as_str().unwrap().is_empty());
    assert_eq!(cluster["resource"]["alt_stat_name"], "checked_stats");

    let (_, metrics) = mesh_test_support::http::get(addr, "/stats/prometheus", &[])
        .await
        .unwrap();
    for line in [
        "mesh_xds_unapplied_fields{type=\"Cluster\",class=\"ignored\"} 1",
        "mesh_xds_unapplied_fields{type=\"Cluster\",class=\"inert\"} 1",
        "mesh_xds_unapplied_fields{type=\"Listener\",class=\"ignored\"} 0",
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
}

#[tokio::test]
async fn strict_mode_refuses_a_static_file_naming_file_and_field() {
    let resources = StaticResources::from_str(STATIC, "mesh.yaml").unwrap();
    let e = Mesh::builder()
        .static_resources(resources)
        .strict_fields()
        .build()
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("mesh.yaml: static_resources.clusters[0].health_checks (ignored"),
        "{e}"
    );
    assert!(!e.contains("alt_stat_name"), "inert fields pass: {e}");
}

/// HTTP/2 options reach a cluster's connections from either place Envoy reads them; the
/// stream limit, which the client does not apply to its single connection per host, is
/// reported for clusters although servers apply it.
#[test]
fn cluster_http2_options_are_applied_or_reported() {
    use mesh_core::model::Http2Limits;
    use mesh_core::xds::Resource;
    let yaml = r#"
static_resources:
  clusters:
  - name: h2
    type: EDS
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config:
          http2_protocol_options:
            initial_stream_window_size: 1048576
            connection_keepalive: { interval: 10s, timeout: 2s }
            max_concurrent_streams: 7
  - name: legacy
    type: EDS
    http2_protocol_options: { initial_connection_window_size: 2097152 }
"#;
    let r = StaticResources::from_str(yaml, "h2.yaml").unwrap();
    let Some(Resource::Cluster(c)) = r.get(ResourceType::Cluster, "h2") else {
        panic!()
    };
    assert_eq!(
        c.http2,
        Http2Limits {
            max_concurrent_streams: Some(7),
            keepalive_interval: Some(std::time::Duration::from_secs(10)),
            keepalive_timeout: Some(std::time::Duration::from_secs(2)),
            initial_stream_window_size: Some(1 << 20),
            initial_connection_window_size: None,
        }
    );
    let unapplied = r.unapplied(ResourceType::Cluster, "h2");
    let paths: Vec<&str> = unapplied.iter().map(|f| &*f.path).collect();
    assert_eq!(
        paths,
        [
            "typed_extension_protocol_options[\"envoy.extensions.upstreams.http.v3.HttpProtocolOptions\"].explicit_http_config.http2_protocol_options.max_concurrent_streams"
        ]
    );
    assert_eq!(unapplied[0].class, FieldClass::Ignored);
    let Some(Resource::Cluster(c)) = r.get(ResourceType::Cluster, "legacy") else {
        panic!()
    };
    assert_eq!(c.http2.initial_connection_window_size, Some(2 << 20));
}
