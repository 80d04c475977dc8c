//! Subscribe, ACK, NACK with a detail naming resource and field, last good config kept.

use mesh_core::xds::{Resource, ResourceStatus, ResourceType};
use mesh_test_support::AdsServer;
use mesh_test_support::resources::{self as r, urls};

use super::mesh_for;

#[tokio::test]
async fn subscribes_acks_with_version_and_nonce() {
    let server = AdsServer::start().await;
    server.set(r::any(r::eds_cluster("c1")));
    let mesh = mesh_for(&server, &["xds_v3"]).await;
    let client = mesh.xds_client().expect("ADS mode");
    let mut w = client.watch(ResourceType::Cluster, "c1").await.unwrap();
    let st = w.wait_for(|s| s.value.is_some()).await;
    assert_eq!(st.status, ResourceStatus::Acked);
    assert!(matches!(st.value, Some(Resource::Cluster(ref c)) if &*c.name == "c1"));

    let first = server
        .wait_request("initial CDS request", |q| q.type_url == urls::CLUSTER)
        .await;
    assert_eq!(first.resource_names, vec!["c1".to_string()]);
    assert!(
        first
            .node
            .as_ref()
            .is_some_and(|n| n.id == "test-node" && n.user_agent_name == "mesh"),
        "the first request carries the node"
    );
    assert_eq!(first.response_nonce, "", "the first request has no nonce");
    let ack = server
        .wait_request("ACK", |q| {
            q.type_url == urls::CLUSTER && !q.response_nonce.is_empty()
        })
        .await;
    assert_eq!(
        ack.version_info,
        st.version.to_string(),
        "the ACK carries the accepted version"
    );
    assert!(ack.error_detail.is_none(), "an ACK has no error");
}

#[tokio::test]
async fn nack_names_resource_and_field_and_keeps_last_good() {
    let server = AdsServer::start().await;
    server.set(r::any(r::route_to("rc", &["*"], "good")));
    let mesh = mesh_for(&server, &[]).await;
    let client = mesh.xds_client().unwrap();
    let mut w = client
        .watch(ResourceType::RouteConfiguration, "rc")
        .await
        .unwrap();
    let good = w.wait_for(|s| s.status == ResourceStatus::Acked).await;

    // An invalid regex in the second update.
    let mut bad = r::route_to("rc", &["*"], "bad");
    bad.virtual_hosts[0].routes[0].r#match =
        Some(envoy_types::pb::envoy::config::route::v3::RouteMatch {
            path_specifier: Some(
                envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier::SafeRegex(
                    envoy_types::pb::envoy::r#type::matcher::v3::RegexMatcher {
                        regex: "/(unclosed".into(),
                        ..Default::default()
                    },
                ),
            ),
            ..Default::default()
        });
    server.set(r::any(bad));
    let nack = server
        .wait_request("NACK", |q| {
            q.type_url == urls::ROUTE && q.error_detail.is_some()
        })
        .await;
    let detail = nack.error_detail.unwrap().message;
    assert!(
        detail.contains("RouteConfiguration rc"),
        "names the resource: {detail}"
    );
    assert!(
        detail.contains("virtual_hosts[0].routes[0].match.safe_regex.regex"),
        "names the field: {detail}"
    );
    assert_eq!(
        nack.version_info,
        good.version.to_string(),
        "a NACK carries the last accepted version"
    );

    let st = w.wait_for(|s| s.status == ResourceStatus::Nacked).await;
    let Some(Resource::RouteConfiguration(table)) = st.value else {
        panic!("the last good value is kept")
    };
    let mesh_core::model::Action::Forward(f) = &table.virtual_hosts[0].routes[0].action else {
        panic!()
    };
    assert!(
        matches!(&f.cluster, mesh_core::model::ClusterSpecifier::Cluster(c) if &**c == "good"),
        "still serving the good route"
    );
    assert!(
        st.error
            .as_ref()
            .is_some_and(|e| e.detail.contains("safe_regex")),
        "the error is recorded for config dumps"
    );

    // A fixed update is accepted again and clears the error.
    server.set(r::any(r::route_to("rc", &["*"], "fixed")));
    let st = w.wait_for(|s| s.status == ResourceStatus::Acked).await;
    assert!(st.error.is_none());
}

#[tokio::test]
async fn valid_resources_of_a_nacked_response_are_applied() {
    // gRFC A46: one bad cluster does not hold back the good ones in the same response.
    let server = AdsServer::start().await;
    server.set(r::any(r::eds_cluster("ok")));
    let mut bad = r::eds_cluster("bad");
    bad.lb_policy = 2; // ring hash
    bad.lb_config = Some(
        envoy_types::pb::envoy::config::cluster::v3::cluster::LbConfig::RingHashLbConfig(
            envoy_types::pb::envoy::config::cluster::v3::cluster::RingHashLbConfig {
                minimum_ring_size: Some(envoy_types::pb::google::protobuf::UInt64Value {
                    value: 10,
                }),
                maximum_ring_size: Some(envoy_types::pb::google::protobuf::UInt64Value {
                    value: 5,
                }),
                ..Default::default()
            },
        ),
    );
    server.set(r::any(bad));
    let mesh = mesh_for(&server, &[]).await;
    let client = mesh.xds_client().unwrap();
    let mut ok = client.watch(ResourceType::Cluster, "ok").await.unwrap();
    let mut badw = client.watch(ResourceType::Cluster, "bad").await.unwrap();
    ok.wait_for(|s| s.value.is_some()).await;
    let st = badw.wait_for(|s| s.status == ResourceStatus::Nacked).await;
    let e = st.error.unwrap();
    assert!(
        e.detail.contains("Cluster bad: ring_hash_lb_config"),
        "{}",
        e.detail
    );
    assert!(st.value.is_none());
}
