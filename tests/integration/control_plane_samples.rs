//! Istio's own Bookinfo task files (../shared/istio-samples), served by mesh-control to our
//! client: each must arrive without a NACK and route the way the Istio task says.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use mesh_core::TargetSnapshot;
use mesh_core::model::{
    AbortKind, Action, ClusterSpecifier, DelayKind, FilterConfig, FilterOverride, RequestView,
    Route,
};

fn samples() -> Option<PathBuf> {
    mesh_test_support::shared_dir("istio-samples")
}

/// Serves our Bookinfo services plus Istio's DestinationRules (unless the sample brings its
/// own) plus the sample, and returns the snapshot of `target` as a client sees it.
async fn snapshot_for(sample: &str, target: &str) -> Option<(Arc<TargetSnapshot>, u64)> {
    let dir = samples()?;
    mesh_test_support::trace_init();
    let tmp = tempfile::tempdir().unwrap();
    let ours = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../mesh-control/testdata/bookinfo/services.yaml");
    std::fs::copy(ours, tmp.path().join("services.yaml")).unwrap();
    let text = std::fs::read_to_string(dir.join(sample)).unwrap();
    if !text.contains("kind: DestinationRule") {
        std::fs::copy(
            dir.join("destination-rule-all.yaml"),
            tmp.path().join("destination-rules.yaml"),
        )
        .unwrap();
    }
    std::fs::write(tmp.path().join(sample), text).unwrap();
    let (cp, addr) = super::serve_control_plane(tmp.path()).await;
    let mesh = super::mesh_at(
        addr,
        serde_json::json!({"id": "productpage", "metadata": {"NAMESPACE": "default"}}),
        serde_json::json!({}),
    )
    .await;
    let snap = tokio::time::timeout(Duration::from_secs(5), mesh.target(target).ready())
        .await
        .expect("complete config");
    Some((snap, cp.ads().nack_count()))
}

fn route<'a>(snap: &'a TargetSnapshot, user: Option<&str>) -> &'a Route {
    let mut req = http::Request::get(format!("http://{}/x", snap.name));
    if let Some(u) = user {
        req = req.header("end-user", u);
    }
    let req = req.body(()).unwrap();
    snap.routes
        .find(&RequestView::from_request(&req), 0)
        .expect("a route")
        .1
}

/// (subset, weight) pairs of the route's destination(s).
fn split(r: &Route) -> Vec<(String, u32)> {
    let Action::Forward(f) = &r.action else {
        panic!("forwarding route")
    };
    let subset = |c: &str| c.split('|').nth(2).unwrap_or("").to_owned();
    match &f.cluster {
        ClusterSpecifier::Cluster(c) => vec![(subset(c), 100)],
        ClusterSpecifier::Weighted(w) => w
            .clusters
            .iter()
            .map(|c| (subset(&c.name), c.weight))
            .collect(),
        ClusterSpecifier::Header(_) => panic!("cluster_header"),
    }
}

fn fault(r: &Route) -> Option<&mesh_core::model::FaultConfig> {
    match r.filter_overrides.get("envoy.filters.http.fault") {
        Some(FilterOverride::Config(FilterConfig::Fault(f))) => Some(f),
        _ => None,
    }
}

fn v(s: &str, w: u32) -> (String, u32) {
    (s.to_owned(), w)
}

#[tokio::test]
async fn request_routing_tasks() {
    let Some((s, nacks)) = snapshot_for("virtual-service-all-v1.yaml", "reviews:9080").await else {
        return;
    };
    assert_eq!(nacks, 0);
    assert_eq!(split(route(&s, Some("jason"))), [v("v1", 100)]);
    let Some((s, _)) = snapshot_for("virtual-service-reviews-test-v2.yaml", "reviews:9080").await
    else {
        return;
    };
    assert_eq!(split(route(&s, Some("jason"))), [v("v2", 100)]);
    assert_eq!(split(route(&s, Some("bob"))), [v("v1", 100)]);
    let Some((s, _)) = snapshot_for("virtual-service-reviews-v3.yaml", "reviews:9080").await else {
        return;
    };
    assert_eq!(split(route(&s, None)), [v("v3", 100)]);
    // Endpoints follow the subset's labels.
    let v3 = s.clusters["outbound|9080|v3|reviews.default.svc.cluster.local"]
        .endpoints
        .as_ref()
        .unwrap();
    assert_eq!(
        v3.endpoints().map(|e| e.address.port()).collect::<Vec<_>>(),
        [19084]
    );
}

#[tokio::test]
async fn traffic_shifting_tasks() {
    for (file, expect) in [
        (
            "virtual-service-reviews-50-v3.yaml",
            vec![v("v1", 50), v("v3", 50)],
        ),
        (
            "virtual-service-reviews-80-20.yaml",
            vec![v("v1", 80), v("v2", 20)],
        ),
        (
            "virtual-service-reviews-90-10.yaml",
            vec![v("v1", 90), v("v2", 10)],
        ),
        (
            "virtual-service-reviews-v2-v3.yaml",
            vec![v("v2", 50), v("v3", 50)],
        ),
    ] {
        let Some((s, nacks)) = snapshot_for(file, "reviews:9080").await else {
            return;
        };
        assert_eq!(nacks, 0, "{file}");
        assert_eq!(split(route(&s, None)), expect, "{file}");
    }
}

#[tokio::test]
async fn fault_injection_tasks() {
    let Some((s, nacks)) =
        snapshot_for("virtual-service-ratings-test-delay.yaml", "ratings:9080").await
    else {
        return;
    };
    assert_eq!(nacks, 0);
    let jason = fault(route(&s, Some("jason"))).expect("jason's route injects a delay");
    let delay = jason.delay.as_ref().expect("delay");
    assert!(matches!(delay.kind, DelayKind::Fixed(d) if d == Duration::from_secs(7)));
    assert_eq!(delay.fraction, mesh_core::model::Fraction::ALWAYS);
    assert!(fault(route(&s, None)).is_none(), "others are not delayed");

    let Some((s, _)) =
        snapshot_for("virtual-service-ratings-test-abort.yaml", "ratings:9080").await
    else {
        return;
    };
    let abort = fault(route(&s, Some("jason")))
        .and_then(|f| f.abort.as_ref())
        .expect("abort for jason");
    assert!(matches!(abort.kind, AbortKind::Http(code) if code == 500));

    let Some((s, nacks)) = snapshot_for("fault-injection-details-v1.yaml", "details:9080").await
    else {
        return;
    };
    assert_eq!(nacks, 0);
    let abort = fault(route(&s, None))
        .and_then(|f| f.abort.as_ref())
        .expect("abort");
    assert!(matches!(abort.kind, AbortKind::Http(code) if code == 555));
    assert_eq!(split(route(&s, None)), [v("v1", 100)]);
}

#[tokio::test]
async fn a_subset_without_workloads_has_no_endpoints() {
    let Some((s, nacks)) = snapshot_for("virtual-service-details-v2.yaml", "details:9080").await
    else {
        return;
    };
    assert_eq!(nacks, 0);
    assert_eq!(split(route(&s, None)), [v("v2", 100)]);
    let eps = s.clusters["outbound|9080|v2|details.default.svc.cluster.local"]
        .endpoints
        .as_ref()
        .expect("an assignment");
    assert_eq!(eps.endpoints().count(), 0, "no details v2 workload runs");
}
