//! "Is my config applied?": after a NACK, the admin endpoint's `/config_dump` and a CSDS
//! client (gRPC, on the same port) both show the rejected resource, why and which version
//! was refused, and the version still served.

use envoy_types::pb::envoy::admin::v3::ClientResourceStatus;
use envoy_types::pb::envoy::service::status::v3::ClientStatusRequest;
use envoy_types::pb::envoy::service::status::v3::client_status_discovery_service_client::ClientStatusDiscoveryServiceClient;
use mesh_core::xds::{ResourceStatus, ResourceType};
use mesh_test_support::AdsServer;
use mesh_test_support::resources as r;

use super::mesh_for;

/// A route whose path regex does not compile.
fn broken_route() -> envoy_types::pb::envoy::config::route::v3::RouteConfiguration {
    use envoy_types::pb::envoy::config::route::v3 as route;
    let mut bad = r::route_to("rc", &["*"], "bad");
    bad.virtual_hosts[0].routes[0].r#match = Some(route::RouteMatch {
        path_specifier: Some(route::route_match::PathSpecifier::SafeRegex(
            envoy_types::pb::envoy::r#type::matcher::v3::RegexMatcher {
                regex: "/(unclosed".into(),
                ..Default::default()
            },
        )),
        ..Default::default()
    });
    bad
}

#[tokio::test]
async fn a_nack_shows_in_config_dump_and_csds() {
    let server = AdsServer::start().await;
    server.set(r::any(r::route_to("rc", &["*"], "good")));
    let mesh = mesh_for(&server, &[]).await;
    let mut w = mesh
        .xds_client()
        .unwrap()
        .watch(ResourceType::RouteConfiguration, "rc")
        .await
        .unwrap();
    let good = w.wait_for(|s| s.status == ResourceStatus::Acked).await;
    server.set(r::any(broken_route()));
    let nacked = w.wait_for(|s| s.status == ResourceStatus::Nacked).await;
    let refused = nacked.error.as_ref().expect("an error").version.to_string();
    assert_ne!(refused, *good.version);

    let addr = super::start_admin(&mesh).await;
    let rc = super::dumped_resource(addr, "rc").await;
    assert_eq!(rc["type"], "RouteConfiguration");
    assert_eq!(rc["status"], "NACKED");
    assert_eq!(rc["version"], *good.version, "the version still served");
    assert_eq!(rc["error"]["version"], refused);
    let detail = rc["error"]["detail"].as_str().unwrap();
    assert!(detail.contains("safe_regex"), "names the field: {detail}");
    assert_eq!(
        rc["resource"]["virtual_hosts"][0]["routes"][0]["route"]["cluster"], "good",
        "the good resource, as JSON: {rc}"
    );

    let mut csds = ClientStatusDiscoveryServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("CSDS connects");
    let rsp = csds
        .fetch_client_status(ClientStatusRequest::default())
        .await
        .expect("CSDS answers")
        .into_inner();
    let config = &rsp.config[0];
    assert_eq!(config.node.as_ref().unwrap().id, "test-node");
    let rc = config
        .generic_xds_configs
        .iter()
        .find(|c| c.name == "rc")
        .expect("the route in CSDS");
    assert_eq!(rc.client_status, ClientResourceStatus::Nacked as i32);
    assert_eq!(rc.version_info, *good.version);
    let error = rc.error_state.as_ref().expect("error state");
    assert_eq!(error.version_info, refused);
    assert!(error.details.contains("safe_regex"), "{}", error.details);
    assert!(rc.xds_config.is_some(), "the served resource");
}
