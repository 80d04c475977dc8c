//! Does-not-exist timers, deletion (gRFC A53/A88) and unsubscription.

use std::time::{Duration, Instant};

use mesh_core::xds::{ResourceStatus, ResourceType};
use mesh_test_support::AdsServer;
use mesh_test_support::resources::{self as r, urls};

use super::mesh_for;

#[tokio::test]
async fn does_not_exist_timer_fires_for_a_missing_route() {
    // RDS is not "all resources required": absence in a response proves nothing, so only the
    // timer (500 ms in tests, 15 s by default) declares it missing.
    let server = AdsServer::start().await;
    let mesh = mesh_for(&server, &[]).await;
    let started = Instant::now();
    let mut w = mesh
        .xds_client()
        .unwrap()
        .watch(ResourceType::RouteConfiguration, "nope")
        .await
        .unwrap();
    let st = w.wait_for(|s| s.status != ResourceStatus::Requested).await;
    assert!(st.does_not_exist());
    assert!(
        started.elapsed() >= Duration::from_millis(450),
        "not before the timer: {:?}",
        started.elapsed()
    );

    // If it appears later, it is used.
    server.set(r::any(r::route_to("nope", &["*"], "c")));
    w.wait_for(|s| s.value.is_some()).await;
}

#[tokio::test]
async fn a_missing_listener_is_known_at_once_from_an_lds_response() {
    // An unknown host must be answered quickly (Istio's outbound traffic policy), so a
    // listener absent from the answer to our latest LDS request does not exist.
    let server = AdsServer::start().await;
    server.set(r::any(r::api_listener("other:80", "rc")));
    let mesh = super::mesh_with_long_timer(&server).await;
    let started = Instant::now();
    let mut w = mesh
        .xds_client()
        .unwrap()
        .watch(ResourceType::Listener, "absent:80")
        .await
        .unwrap();
    let st = w.wait_for(|s| s.status != ResourceStatus::Requested).await;
    assert!(st.does_not_exist());
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "LDS answers carry every listener: no need to wait for the 30 s timer"
    );
}

#[tokio::test]
async fn a_push_crossing_a_new_subscription_does_not_make_its_listener_absent() {
    // The server pushed what we named before just as it read our request for one more
    // listener: that push lacks it, yet arrives after our request. Its absence proves nothing
    // until the server's answer (300 ms later here), which has it.
    let server = AdsServer::start().await;
    server.set(r::any(r::api_listener("other:80", "rc")));
    server.set(r::any(r::api_listener("new:80", "rc")));
    let mesh = super::mesh_with_long_timer(&server).await;
    let client = mesh.xds_client().unwrap();
    let mut other = client
        .watch(ResourceType::Listener, "other:80")
        .await
        .unwrap();
    other.wait_for(|s| s.value.is_some()).await;
    server.cross_pushes(Some(Duration::from_millis(300)));
    let mut new = client
        .watch(ResourceType::Listener, "new:80")
        .await
        .unwrap();
    let st = new
        .wait_for(|s| s.status != ResourceStatus::Requested)
        .await;
    assert!(st.value.is_some(), "served, never absent: {:?}", st.status);

    // A listener the answer lacks too is absent, without waiting for the timer.
    let started = Instant::now();
    let mut absent = client
        .watch(ResourceType::Listener, "absent:80")
        .await
        .unwrap();
    let st = absent
        .wait_for(|s| s.status != ResourceStatus::Requested)
        .await;
    assert!(st.does_not_exist());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_missing_cluster_waits_for_the_timer() {
    // Routes name new clusters while pushes are in flight; an answer crossing our request
    // lacks them without meaning they do not exist (gRPC's client reasons the same way).
    let server = AdsServer::start().await;
    server.set(r::any(r::eds_cluster("other")));
    let mesh = mesh_for(&server, &[]).await;
    let started = Instant::now();
    let mut w = mesh
        .xds_client()
        .unwrap()
        .watch(ResourceType::Cluster, "absent")
        .await
        .unwrap();
    let st = w.wait_for(|s| s.status != ResourceStatus::Requested).await;
    assert!(st.does_not_exist());
    assert!(
        started.elapsed() >= Duration::from_millis(450),
        "not before the 500 ms timer: {:?}",
        started.elapsed()
    );
}

/// Serves a listener, deletes it on the server, and returns what the client then holds.
async fn state_after_listener_deletion(features: &[&str]) -> mesh_core::xds::ResourceState {
    let server = AdsServer::start().await;
    server.set(r::any(r::api_listener("svc:80", "rc")));
    let mesh = mesh_for(&server, features).await;
    let mut w = mesh
        .xds_client()
        .unwrap()
        .watch(ResourceType::Listener, "svc:80")
        .await
        .unwrap();
    w.wait_for(|s| s.value.is_some()).await;
    server.remove(urls::LISTENER, "svc:80");
    w.wait_for(|s| s.status == ResourceStatus::DoesNotExist)
        .await
}

#[tokio::test]
async fn deleted_listener_keeps_serving_by_default() {
    let st = state_after_listener_deletion(&[]).await;
    assert!(
        st.value.is_some(),
        "gRFC A88: a deletion is a data error; the cached listener keeps serving"
    );
}

#[tokio::test]
async fn deleted_listener_is_dropped_with_fail_on_data_errors() {
    let st = state_after_listener_deletion(&["fail_on_data_errors"]).await;
    assert!(
        st.value.is_none(),
        "with fail_on_data_errors the deleted listener is dropped"
    );
}

#[tokio::test]
async fn dropping_every_watch_unsubscribes() {
    let server = AdsServer::start().await;
    server.set(r::any(r::eds_cluster("a")));
    server.set(r::any(r::eds_cluster("b")));
    let mesh = mesh_for(&server, &[]).await;
    let client = mesh.xds_client().unwrap();
    let mut a = client.watch(ResourceType::Cluster, "a").await.unwrap();
    let b = client.watch(ResourceType::Cluster, "b").await.unwrap();
    a.wait_for(|s| s.value.is_some()).await;
    server
        .wait_request("both subscribed", |q| {
            q.type_url == urls::CLUSTER && q.resource_names.len() == 2
        })
        .await;
    drop(b);
    let q = server
        .wait_request("b unsubscribed", |q| {
            q.type_url == urls::CLUSTER && q.resource_names == ["a"]
        })
        .await;
    assert!(q.resource_names == ["a"]);
    assert!(a.current().value.is_some());
}
