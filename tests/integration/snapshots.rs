//! Per-target snapshots are published only when the LDS→RDS→CDS→EDS chain is complete (A74),
//! and follow changes.

use std::time::Duration;

use mesh_test_support::AdsServer;
use mesh_test_support::resources as r;

use super::mesh_for;

#[tokio::test]
async fn snapshot_waits_for_the_whole_chain() {
    let server = AdsServer::start().await;
    server.set(r::any(r::api_listener("reviews:9080", "reviews-routes")));
    server.set(r::any(r::route_to(
        "reviews-routes",
        &["reviews", "reviews:9080"],
        "outbound|9080||reviews",
    )));
    server.set(r::any(r::eds_cluster("outbound|9080||reviews")));
    let mesh = super::mesh_with_long_timer(&server).await;
    let target = mesh.target("reviews:9080");

    // Endpoints are missing: no snapshot (the does-not-exist timer is 30 s here, so it cannot
    // declare them absent while we look).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        target.snapshot().is_none(),
        "a snapshot without endpoints would be torn"
    );

    let backend: std::net::SocketAddr = "127.0.0.1:9080".parse().unwrap();
    server.set(r::any(r::endpoints("outbound|9080||reviews", &[backend])));
    let snap = tokio::time::timeout(Duration::from_secs(5), target.ready())
        .await
        .expect("complete snapshot");
    let entry = &snap.clusters["outbound|9080||reviews"];
    let eps = entry.endpoints.as_ref().expect("endpoints");
    assert_eq!(
        eps.endpoints().map(|e| e.address).collect::<Vec<_>>(),
        vec![backend]
    );
    assert_eq!(snap.generation, 1);

    // A route change to a new cluster publishes only once that cluster is complete too.
    server.set(r::any(r::route_to(
        "reviews-routes",
        &["reviews:9080"],
        "outbound|9080|v2|reviews",
    )));
    server.set(r::any(r::eds_cluster("outbound|9080|v2|reviews")));
    server.set(r::any(r::endpoints(
        "outbound|9080|v2|reviews",
        &["127.0.0.1:9081".parse().unwrap()],
    )));
    let snap2 = tokio::time::timeout(
        Duration::from_secs(5),
        target.changed_since(snap.generation),
    )
    .await
    .expect("update");
    assert!(snap2.clusters.contains_key("outbound|9080|v2|reviews"));
    assert!(
        !snap2.clusters.contains_key("outbound|9080||reviews"),
        "unreferenced clusters leave the snapshot"
    );
    assert!(
        snap2.clusters["outbound|9080|v2|reviews"]
            .endpoints
            .is_some()
    );
    // The old snapshot is untouched: requests in flight keep a consistent view.
    assert!(snap.clusters.contains_key("outbound|9080||reviews"));
}

#[tokio::test]
async fn missing_listener_is_reported() {
    let server = AdsServer::start().await;
    server.set(r::any(r::eds_cluster("unrelated")));
    let mesh = mesh_for(&server, &[]).await;
    let target = mesh.target("nobody:80");
    let mut rx = target.status_receiver();
    let status = tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|s| s.error.is_some()))
        .await
        .unwrap()
        .unwrap()
        .clone();
    assert!(
        status
            .error
            .unwrap()
            .contains("listener \"nobody:80\" does not exist")
    );
    assert!(target.snapshot().is_none());
}

#[tokio::test]
async fn same_target_is_shared() {
    let server = AdsServer::start().await;
    let mesh = mesh_for(&server, &[]).await;
    let a = mesh.target("x:1");
    let b = mesh.target("x:1");
    assert_eq!(a.name(), b.name());
}
