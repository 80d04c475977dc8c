//! Reconnect with resubscription after a server restart; fallback to the next server (A71).

use mesh_core::xds::{ResourceStatus, ResourceType};
use mesh_test_support::resources::{self as r, urls};
use mesh_test_support::{AdsServer, assert_eventually};

use super::mesh_for;

#[tokio::test]
async fn server_restart_reconnects_and_resubscribes() {
    let mut server = AdsServer::start().await;
    server.set(r::any(r::eds_cluster("c1")));
    let mesh = mesh_for(&server, &[]).await;
    let client = mesh.xds_client().unwrap();
    let mut w = client.watch(ResourceType::Cluster, "c1").await.unwrap();
    w.wait_for(|s| s.value.is_some()).await;
    assert_eq!(server.streams_opened(), 1);

    server.stop().await;
    // While the server is down, the cache keeps serving.
    assert!(
        w.current().value.is_some(),
        "last good config survives a lost stream"
    );
    let before = server.requests().len();
    server.restart().await;
    assert_eventually!(server.streams_opened() >= 2, "the client reconnects");
    let resub = server
        .wait_request("resubscription", |q| {
            q.type_url == urls::CLUSTER && q.response_nonce.is_empty() && q.resource_names == ["c1"]
        })
        .await;
    assert!(resub.node.is_some(), "a new stream starts with the node");
    assert!(server.requests().len() > before);

    // Updates flow again on the new stream.
    let mut c = r::eds_cluster("c1");
    c.connect_timeout = Some(envoy_types::pb::google::protobuf::Duration {
        seconds: 7,
        nanos: 0,
    });
    server.set(r::any(c));
    let st = w
        .wait_for(|s| matches!(&s.value, Some(mesh_core::xds::Resource::Cluster(c)) if c.connect_timeout.as_secs() == 7))
        .await;
    assert_eq!(st.status, ResourceStatus::Acked);
}

#[tokio::test]
async fn falls_back_when_primary_is_unreachable_and_returns_to_it() {
    mesh_test_support::trace_init();
    // A port with nothing listening.
    let dead = mesh_test_support::unused_port();
    let fallback = AdsServer::start().await;
    fallback.set(r::any(r::eds_cluster("c1")));
    let json = serde_json::json!({
        "xds_servers": [
            {"server_uri": dead.to_string(), "channel_creds": [{"type": "insecure"}]},
            {"server_uri": fallback.addr().to_string(), "channel_creds": [{"type": "insecure"}]},
        ],
        "node": {"id": "n"},
    });
    let mesh = super::mesh_from_json(json).await;
    let mut w = mesh
        .xds_client()
        .unwrap()
        .watch(ResourceType::Cluster, "c1")
        .await
        .unwrap();
    let st = w.wait_for(|s| s.value.is_some()).await;
    assert_eq!(
        st.status,
        ResourceStatus::Acked,
        "config came from the fallback"
    );

    // The primary comes up: the client moves back to it.
    let primary = AdsServer::start_on(dead).await;
    let mut c = r::eds_cluster("c1");
    c.connect_timeout = Some(envoy_types::pb::google::protobuf::Duration {
        seconds: 9,
        nanos: 0,
    });
    primary.set(r::any(c));
    w.wait_for(|s| matches!(&s.value, Some(mesh_core::xds::Resource::Cluster(c)) if c.connect_timeout.as_secs() == 9))
        .await;
    assert!(primary.streams_opened() >= 1);
}

/// A control plane that answers and then drops every stream (crashing in a loop) is dialled
/// with a growing backoff, not every `routine_reconnect_delay`: the reconnect rate stays
/// bounded, and the client still gets its configuration.
#[tokio::test]
async fn a_flapping_server_is_not_stormed() {
    let server = AdsServer::start().await;
    server.set(r::any(r::eds_cluster("c1")));
    server.flap(true);
    let mut config = super::fast_config();
    config.backoff_max = std::time::Duration::from_millis(400);
    let mesh = super::mesh_with(&server, &[], config).await;
    let client = mesh.xds_client().unwrap();
    let mut w = client.watch(ResourceType::Cluster, "c1").await.unwrap();
    w.wait_for(|s| s.value.is_some()).await;
    let start = server.streams_opened();
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let streams = server.streams_opened() - start;
    // 50 ms growing ×1.6 to 400 ms: about 10 in 3 s. Reset after every response, the
    // 10 ms routine delay would open well over a hundred.
    assert!(
        (2..=20).contains(&streams),
        "{streams} streams in 3 s from a flapping server"
    );
    assert!(w.current().value.is_some(), "the configuration is kept");
}
