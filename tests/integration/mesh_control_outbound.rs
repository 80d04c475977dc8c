//! MeshClient configured by mesh-control over ADS: the Istio YAML routes real traffic through
//! our own data path exactly as it does through Envoy, and config pushes lose no request.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use mesh_control::control::ControlPlane;
use mesh_test_support::Backend;
use mesh_tower::{MeshClient, OutboundTrafficPolicy};

use super::envoy_control_plane::{POLICY, registry_yaml};
use crate::get;

struct Fixture {
    reviews: [Backend; 3],
    ratings: Backend,
    cp: Arc<ControlPlane>,
    client: MeshClient,
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
    let node = serde_json::json!({
        "id": "sidecar~127.0.0.1~productpage-v1.default~default.svc.cluster.local",
        "metadata": {"NAMESPACE": "default"}});
    let mesh = super::mesh_at(xds, node, serde_json::json!({})).await;
    let client = MeshClient::builder(&mesh)
        .outbound_traffic_policy(OutboundTrafficPolicy::RegistryOnly)
        .build();
    Fixture {
        reviews,
        ratings,
        cp,
        client,
        dir,
    }
}

#[tokio::test]
async fn mesh_client_routes_by_the_istio_yaml() {
    let f = fixture(POLICY).await;
    let c = &f.client;
    for _ in 0..20 {
        let a = get(c, "http://reviews:9080/reviews/0", &[("end-user", "jason")]).await;
        assert_eq!((a.status, a.backend()), (200, "reviews-v2"));
        assert_eq!(
            a.info.cluster.as_deref(),
            Some("outbound|9080|v2|reviews.default.svc.cluster.local")
        );
    }
    let (mut v1, mut v3) = (0, 0);
    for _ in 0..400 {
        let a = get(c, "http://reviews:9080/reviews/0", &[]).await;
        match (a.status, a.backend()) {
            (200, "reviews-v1") => v1 += 1,
            (200, "reviews-v3") => v3 += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    // 80/20 of 400: σ = 8, ±40 is five of them.
    assert!(
        (280..=360).contains(&v1) && v1 + v3 == 400,
        "v1 {v1}, v3 {v3}"
    );

    let before = f.ratings.requests();
    let a = get(c, "http://ratings:9080/ratings/0", &[("end-user", "jason")]).await;
    assert_eq!((a.status, a.info.flags.to_string().as_str()), (500, "FI"));
    assert_eq!(f.ratings.requests(), before, "aborted before the backend");
    let a = get(c, "http://ratings:9080/ratings/0", &[]).await;
    assert_eq!((a.status, a.backend()), (200, "ratings-v1"));

    let a = get(c, "http://unknown:80/", &[]).await;
    assert_eq!((a.status, a.info.flags.to_string().as_str()), (502, "NR"));
    assert!(a.body.contains("unknown:80"), "{}", a.body);
    assert_eq!(f.cp.ads().nack_count(), 0);
}

#[tokio::test]
async fn istio_default_retries_hide_a_transient_503() {
    let f = fixture(POLICY).await;
    // Warm up so the target is configured.
    assert_eq!(
        get(&f.client, "http://ratings:9080/", &[]).await.status,
        200
    );
    f.ratings.fail_next(1);
    let a = get(&f.client, "http://ratings:9080/", &[]).await;
    assert_eq!((a.status, a.info.attempts), (200, 2), "{:?}", a.info);
}

#[tokio::test]
async fn a_hundred_pushes_under_load_fail_no_request() {
    let vs = |subset: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: reviews}}\nspec:\n  hosts: [reviews]\n  http:\n  - route: [{{destination: {{host: reviews, subset: {subset}}}}}]\n"
        )
    };
    let f = fixture(&vs("v1")).await;
    assert_eq!(
        get(&f.client, "http://reviews:9080/", &[]).await.status,
        200
    );
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (stop, client) = (stop.clone(), f.client.clone());
        tokio::spawn(async move {
            let (mut ok, mut failed) = (0u32, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                let Ok(a) = tokio::time::timeout(
                    Duration::from_secs(5),
                    get(&client, "http://reviews:9080/", &[]),
                )
                .await
                else {
                    failed.push("request hung for 5 s".to_owned());
                    break;
                };
                // Local replies complete without I/O; yield so the pushes keep coming.
                tokio::task::yield_now().await;
                if a.status == 200 {
                    ok += 1;
                } else {
                    failed.push(format!("{} {} {}", a.status, a.info.flags, a.body));
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
    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = load.await.unwrap();
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
        "every subset was used"
    );
    assert_eq!(f.cp.ads().nack_count(), 0);
}

#[tokio::test]
async fn dns_service_entries_resolve_in_the_client() {
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
    let node = serde_json::json!({"id": "egress", "metadata": {"NAMESPACE": "default"}});
    let mesh = super::mesh_at(xds, node, serde_json::json!({})).await;
    let client = MeshClient::new(&mesh);
    let a = get(&client, "http://httpbin.mesh.test/get", &[]).await;
    assert_eq!(
        (a.status, a.backend()),
        (200, "httpbin-external"),
        "{:?}",
        a.info
    );
    assert_eq!(a.header("x-authority"), "httpbin.mesh.test");
    assert_eq!(cp.ads().nack_count(), 0);
}
