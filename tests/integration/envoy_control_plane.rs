//! Real Envoy 1.40 bootstraps from mesh-control over ADS, accepts every resource, and carries
//! real traffic to loopback backends exactly as the Istio YAML says.

use std::sync::Arc;
use std::time::Duration;

use super::meshed::free_port;
use mesh_control::control::ControlPlane;
use mesh_test_support::envoy::{Envoy, ads_bootstrap};
use mesh_test_support::{Backend, http};

/// Services `reviews` (v1, v2, v3) and `ratings` (v1) backed by real loopback servers.
pub(crate) fn registry_yaml(backends: &[(&str, &str, &Backend)]) -> String {
    let mut out = String::new();
    for app in ["reviews", "ratings"] {
        out.push_str(&format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {app}}}\nspec:\n  ports: [{{port: 9080, name: http}}]\n  selector: {{app: {app}}}\n---\n"
        ));
        out.push_str(&format!(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: {app}}}\nspec:\n  host: {app}\n  subsets:\n  - {{name: v1, labels: {{version: v1}}}}\n  - {{name: v2, labels: {{version: v2}}}}\n  - {{name: v3, labels: {{version: v3}}}}\n---\n"
        ));
    }
    for (app, version, b) in backends {
        out.push_str(&format!(
            "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: {app}-{version}}}\nspec: {{address: 127.0.0.1, ports: {{http: {}}}, labels: {{app: {app}, version: {version}}}}}\n---\n",
            b.addr().port()
        ));
    }
    out
}

pub(crate) const POLICY: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: reviews }
spec:
  hosts: [reviews]
  http:
  - match: [{ headers: { end-user: { exact: jason } } }]
    route: [{ destination: { host: reviews, subset: v2 } }]
  - route:
    - { destination: { host: reviews, subset: v1 }, weight: 80 }
    - { destination: { host: reviews, subset: v3 }, weight: 20 }
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: ratings }
spec:
  hosts: [ratings]
  http:
  - match: [{ headers: { end-user: { exact: jason } } }]
    fault: { abort: { httpStatus: 500, percentage: { value: 100 } } }
    route: [{ destination: { host: ratings, subset: v1 } }]
  - route: [{ destination: { host: ratings, subset: v1 } }]
"#;

/// Backends for reviews v1-v3 and ratings v1, mesh-control serving `registry_yaml` plus
/// `policy`, and an Envoy configured by it whose outbound listener already routes.
struct Fixture {
    reviews: [Backend; 3],
    ratings: Backend,
    cp: Arc<ControlPlane>,
    envoy: Envoy,
    outbound: std::net::SocketAddr,
    dir: tempfile::TempDir,
}

async fn fixture(policy: &str) -> Fixture {
    let reviews = [
        Backend::start("reviews-v1").await,
        Backend::start("reviews-v2").await,
        Backend::start("reviews-v3").await,
    ];
    let ratings = Backend::start("ratings-v1").await;
    let dir = tempfile::tempdir().unwrap();
    let list = [
        ("reviews", "v1", &reviews[0]),
        ("reviews", "v2", &reviews[1]),
        ("reviews", "v3", &reviews[2]),
        ("ratings", "v1", &ratings),
    ];
    std::fs::write(dir.path().join("registry.yaml"), registry_yaml(&list)).unwrap();
    std::fs::write(dir.path().join("policy.yaml"), policy).unwrap();
    let (cp, xds) = super::serve_control_plane(dir.path()).await;
    let outbound = free_port();
    let bootstrap = ads_bootstrap(
        xds,
        "sidecar~127.0.0.1~productpage-v1.default~default.svc.cluster.local",
        serde_json::json!({"NAMESPACE": "default", "MESH_OUTBOUND_ADDR": outbound.to_string()}),
    );
    let envoy = Envoy::start(&bootstrap).await;
    // Envoy applies LDS, then RDS, CDS, EDS: wait for the first routed answer.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !matches!(
        http::get(outbound, "/", &[("host", "reviews:9080")]).await,
        Ok((200, _))
    ) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "Envoy never routed; its log:\n{}",
            envoy.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Fixture {
        reviews,
        ratings,
        cp,
        envoy,
        outbound,
        dir,
    }
}

#[tokio::test]
async fn envoy_routes_by_the_istio_yaml() {
    let f = fixture(POLICY).await;
    let outbound = f.outbound;
    let call = |host: &'static str, user: Option<&'static str>| async move {
        let mut headers = vec![("host", host)];
        if let Some(u) = user {
            headers.push(("end-user", u));
        }
        http::get(outbound, "/", &headers).await
    };

    // Header match: jason always reaches v2.
    for _ in 0..20 {
        assert_eq!(
            call("reviews:9080", Some("jason")).await.unwrap(),
            (200, "reviews-v2".to_owned())
        );
    }
    // Weighted split 80/20 (v1/v3): 400 requests; the binomial standard deviation is 8, so ±40
    // is five of them.
    let (mut v1, mut v3) = (0, 0);
    for _ in 0..400 {
        match call("reviews:9080", None).await.unwrap() {
            (200, b) if b == "reviews-v1" => v1 += 1,
            (200, b) if b == "reviews-v3" => v3 += 1,
            other => panic!("unexpected answer {other:?}"),
        }
    }
    assert!(
        (280..=360).contains(&v1) && v1 + v3 == 400,
        "v1 {v1}, v3 {v3}"
    );
    // Fault abort for jason on ratings; others pass.
    assert_eq!(
        call("ratings:9080", Some("jason")).await.unwrap().0,
        500,
        "fault abort"
    );
    assert_eq!(
        call("ratings:9080", None).await.unwrap(),
        (200, "ratings-v1".to_owned())
    );
    let before = f.ratings.requests();
    call("ratings:9080", Some("jason")).await.unwrap();
    assert_eq!(
        f.ratings.requests(),
        before,
        "an aborted request never reaches the backend"
    );
    // Unknown hosts get Istio's REGISTRY_ONLY answer.
    assert_eq!(call("unknown:80", None).await.unwrap().0, 502);

    assert_eq!(
        f.cp.ads().nack_count(),
        0,
        "Envoy NACKed something; its log:\n{}",
        f.envoy.log()
    );
    let stats = f
        .envoy
        .admin_get("/stats?filter=update_rejected")
        .await
        .unwrap();
    assert!(
        stats.lines().all(|l| l.ends_with(": 0")),
        "Envoy rejected updates:\n{stats}"
    );
}

#[tokio::test]
async fn a_hundred_pushes_under_load_fail_no_request() {
    let vs = |subset: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: reviews}}\nspec:\n  hosts: [reviews]\n  http:\n  - route: [{{destination: {{host: reviews, subset: {subset}}}}}]\n"
        )
    };
    let f = fixture(&vs("v1")).await;
    let outbound = f.outbound;

    // A client sends continuously while the VirtualService flips between subsets 100 times.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let client = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let (mut ok, mut failed) = (0u32, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match http::get(outbound, "/", &[("host", "reviews:9080")]).await {
                    Ok((200, _)) => ok += 1,
                    other => failed.push(format!("{other:?}")),
                }
            }
            (ok, failed)
        })
    };
    for i in 0..100 {
        std::fs::write(
            f.dir.path().join("policy.yaml"),
            vs(["v2", "v3", "v1"][i % 3]),
        )
        .unwrap();
        f.cp.reload().unwrap_or_else(|e| panic!("{e:?}"));
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = client.await.unwrap();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed during pushes: {:?}",
        failed.len(),
        ok as usize + failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(ok > 100, "the client kept sending ({ok} requests)");
    assert!(
        f.reviews.iter().all(|b| b.requests() > 0),
        "every subset was routed to at some point"
    );
    assert_eq!(f.cp.ads().nack_count(), 0);
    assert_eq!(f.cp.current().version, 101);
}

#[tokio::test]
async fn dns_service_entries_are_resolved_by_the_client() {
    let external = Backend::start("httpbin-external").await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("egress.yaml"),
        format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: httpbin-ext}}\nspec:\n  hosts: [httpbin.mesh.test]\n  location: MESH_EXTERNAL\n  resolution: DNS\n  ports: [{{number: 80, name: http, protocol: HTTP}}]\n  endpoints: [{{address: localhost, ports: {{http: {}}}}}]\n",
            external.addr().port()
        ),
    )
    .unwrap();
    let (cp, xds) = super::serve_control_plane(dir.path()).await;

    // Envoy resolves the name itself (STRICT_DNS) and reaches the external service.
    let outbound = free_port();
    let bootstrap = ads_bootstrap(
        xds,
        "sidecar~127.0.0.1~egress.default~default.svc.cluster.local",
        serde_json::json!({"NAMESPACE": "default", "MESH_OUTBOUND_ADDR": outbound.to_string()}),
    );
    let envoy = Envoy::start(&bootstrap).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match http::get(outbound, "/get", &[("host", "httpbin.mesh.test")]).await {
            Ok((200, body)) => {
                assert_eq!(body, "httpbin-external");
                break;
            }
            other => assert!(
                tokio::time::Instant::now() < deadline,
                "{other:?}; Envoy log:\n{}",
                envoy.log()
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(cp.ads().nack_count(), 0);

    // A proxyless client gets the logical form, which our translator reads as a DNS cluster.
    let node = mesh_control::generate::NodeInfo {
        id: "p".into(),
        namespace: "default".into(),
        ..Default::default()
    };
    let resources =
        mesh_control::dump::resources(&cp.current(), &node, &["httpbin.mesh.test:80".to_owned()]);
    let cluster = resources
        .iter()
        .map(|a| {
            mesh_core::xds::translate::resource(a)
                .unwrap_or_else(|e| panic!("{e}"))
                .2
        })
        .find_map(|r| match r {
            mesh_core::xds::Resource::Cluster(c) => Some(c),
            _ => None,
        })
        .expect("a cluster");
    let mesh_core::model::Discovery::Dns { hosts, logical, .. } = &cluster.discovery else {
        panic!("{:?}", cluster.discovery)
    };
    assert!(*logical);
    assert_eq!(&**hosts, &[("localhost".into(), external.addr().port())]);
}
