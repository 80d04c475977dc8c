//! mesh-control serves Istio YAML over ADS to our own client: routes as the YAML says, no NACK,
//! and changes to the files reach the client.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use mesh_control::control::ControlPlane;
use mesh_core::Mesh;
use mesh_core::model::{Action, ClusterSpecifier, RequestView};
use mesh_core::xds::ResourceStatus;

fn bookinfo_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../mesh-control/testdata/bookinfo")
}

/// Copies the Bookinfo config to a temp dir (so a test may edit it) and serves it.
async fn start() -> (Arc<ControlPlane>, std::net::SocketAddr, tempfile::TempDir) {
    mesh_test_support::trace_init();
    let dir = tempfile::tempdir().unwrap();
    for f in std::fs::read_dir(bookinfo_dir()).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, dir.path().join(f.file_name().unwrap())).unwrap();
    }
    let (cp, addr) = super::serve_control_plane(dir.path()).await;
    tokio::spawn(cp.clone().watch(Duration::from_millis(20)));
    (cp, addr, dir)
}

async fn mesh(addr: std::net::SocketAddr) -> Mesh {
    let node = serde_json::json!({"id": "sidecar~127.0.0.1~productpage-v1.default~default.svc.cluster.local", "metadata": {"NAMESPACE": "default"}});
    super::mesh_at(addr, node, serde_json::json!({})).await
}

fn cluster_for(snap: &mesh_core::TargetSnapshot, user: Option<&str>) -> String {
    let mut req = http::Request::get("http://reviews:9080/reviews/0");
    if let Some(u) = user {
        req = req.header("end-user", u);
    }
    let req = req.body(()).unwrap();
    let (_, route) = snap
        .routes
        .find(&RequestView::from_request(&req), 0)
        .expect("a route");
    let Action::Forward(f) = &route.action else {
        panic!("forwarding route")
    };
    match &f.cluster {
        ClusterSpecifier::Cluster(c) => c.to_string(),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn bookinfo_routes_reach_our_client_without_nacks() {
    let (cp, addr, _dir) = start().await;
    let mesh = mesh(addr).await;
    let snap = tokio::time::timeout(Duration::from_secs(5), mesh.target("reviews:9080").ready())
        .await
        .expect("complete config");

    assert_eq!(
        cluster_for(&snap, Some("jason")),
        "outbound|9080|v2|reviews.default.svc.cluster.local"
    );
    assert_eq!(
        cluster_for(&snap, None),
        "outbound|9080|v3|reviews.default.svc.cluster.local"
    );
    let v2 = snap.clusters["outbound|9080|v2|reviews.default.svc.cluster.local"]
        .endpoints
        .as_ref()
        .expect("endpoints");
    assert_eq!(
        v2.endpoints()
            .map(|e| e.address.to_string())
            .collect::<Vec<_>>(),
        ["127.0.0.1:19083"],
        "only the v2 workload"
    );
    let route = &snap.routes.virtual_hosts[0].routes[0];
    let Action::Forward(f) = &route.action else {
        panic!()
    };
    let retry = f.retry.as_ref().expect("Istio's default retry policy");
    assert_eq!(retry.num_retries, 2);
    assert_eq!(
        f.timeout, None,
        "Istio routes have no timeout unless the VirtualService sets one"
    );

    for d in mesh.dump().await.unwrap() {
        assert_eq!(
            d.state.status,
            ResourceStatus::Acked,
            "{} {} is ACKed",
            d.resource_type,
            d.name
        );
    }
    assert_eq!(cp.ads().nack_count(), 0);
}

#[tokio::test]
async fn a_changed_virtual_service_reaches_the_client_and_a_bad_one_is_held_back() {
    let (cp, addr, dir) = start().await;
    let mesh = mesh(addr).await;
    let target = mesh.target("reviews:9080");
    let snap = tokio::time::timeout(Duration::from_secs(5), target.ready())
        .await
        .unwrap();
    assert_eq!(
        cluster_for(&snap, None),
        "outbound|9080|v3|reviews.default.svc.cluster.local"
    );

    let vs = dir.path().join("virtual-service-reviews-jason-v2-v3.yaml");
    std::fs::write(&vs, "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews}\nspec:\n  hosts: [reviews]\n  http:\n  - route: [{destination: {host: reviews, subset: v1}}]\n").unwrap();
    let snap = tokio::time::timeout(
        Duration::from_secs(5),
        target.changed_since(snap.generation),
    )
    .await
    .expect("pushed");
    assert_eq!(
        cluster_for(&snap, Some("jason")),
        "outbound|9080|v1|reviews.default.svc.cluster.local"
    );

    // A broken file is rejected; the last good configuration keeps being served.
    let version = cp.current().version;
    std::fs::write(&vs, "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews}\nspec:\n  hosts: [reviews]\n  http:\n  - timeout: whenever\n").unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        cp.current().version,
        version,
        "the bad file was not applied"
    );
    assert!(
        cp.reload().unwrap_err()[0]
            .to_string()
            .contains("spec.http[0].timeout")
    );
    assert_eq!(
        cluster_for(&target.snapshot().unwrap(), None),
        "outbound|9080|v1|reviews.default.svc.cluster.local"
    );
}

#[tokio::test]
async fn a_dump_replays_in_static_mode() {
    let snap = mesh_control::control::load(&bookinfo_dir(), 1).unwrap_or_else(|e| panic!("{e:?}"));
    let node = mesh_control::generate::NodeInfo {
        id: "dump".into(),
        namespace: "default".into(),
        labels: Default::default(),
        ..Default::default()
    };
    let resources = mesh_control::dump::resources(&snap, &node, &["reviews:9080".to_owned()]);
    assert_eq!(
        resources.len(),
        1 + 1 + 2 + 2,
        "listener, routes, two subset clusters and their endpoints"
    );
    let json = mesh_control::dump::to_json(&resources).unwrap();
    let statics = mesh_core::StaticResources::from_value(&json, "dump.json")
        .unwrap_or_else(|e| panic!("{e}"));
    let mesh = Mesh::builder()
        .static_resources(statics)
        .build()
        .await
        .unwrap();
    let target = mesh.target("reviews:9080").ready().await;
    assert_eq!(
        cluster_for(&target, Some("jason")),
        "outbound|9080|v2|reviews.default.svc.cluster.local"
    );
}

#[tokio::test]
async fn serves_over_a_unix_socket() {
    mesh_test_support::trace_init();
    let tmp = tempfile::tempdir().unwrap();
    let sock = tmp.path().join("xds.sock");
    let cp = Arc::new(ControlPlane::new(bookinfo_dir()).unwrap_or_else(|e| panic!("{e:?}")));
    let addr: mesh_control::control::ListenAddr =
        format!("unix://{}", sock.display()).parse().unwrap();
    tokio::spawn(cp.clone().serve(addr));
    let json = serde_json::json!({
        "xds_servers": [{"server_uri": format!("unix://{}", sock.display()), "channel_creds": [{"type": "insecure"}]}],
        "node": {"id": "productpage", "metadata": {"NAMESPACE": "default"}},
    });
    let mesh = super::mesh_from_json(json).await;
    let snap = tokio::time::timeout(Duration::from_secs(5), mesh.target("reviews:9080").ready())
        .await
        .expect("config over a Unix socket");
    assert_eq!(
        cluster_for(&snap, Some("jason")),
        "outbound|9080|v2|reviews.default.svc.cluster.local"
    );
}
