//! Istio's standard metrics, scraped by a real Prometheus: a meshed client and a meshed
//! server (each with its own admin endpoint) exchange a known mix of requests over Istio
//! mTLS, and Prometheus's HTTP API reports `istio_requests_total` with Istio's labels and
//! the right counts from both reporters. The admin endpoint's other pages are checked on the
//! way.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::Full;
use mesh_test_support::prometheus::Prometheus;
use mesh_tower::MeshClient;

use super::meshed::{DETAILS, PRODUCTPAGE, TestMesh, eventually, free_port, service};

/// `/fail` answers 500; everything else 200 with a 12-byte body.
async fn details(
    req: http::Request<hyper::body::Incoming>,
) -> Result<http::Response<Full<Bytes>>, Infallible> {
    let mut rsp = http::Response::new(Full::new(Bytes::from_static(b"book details")));
    if req.uri().path() == "/fail" {
        *rsp.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
    }
    Ok(rsp)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_istio_standard_metrics_from_both_sides() {
    let addr = free_port();
    let mesh = TestMesh::start(&format!(
        "{}apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: details}}\nspec: {{host: details, trafficPolicy: {{tls: {{mode: ISTIO_MUTUAL}}}}}}\n",
        service(DETAILS, 9080, addr)
    ))
    .await;
    let server = mesh.serve(DETAILS, addr, tower::service_fn(details)).await;
    let client_mesh = mesh.mesh(PRODUCTPAGE).await;
    let client = MeshClient::new(&client_mesh);
    let (client_admin, server_admin) = (
        super::start_admin(&client_mesh).await,
        super::start_admin(&server).await,
    );

    let get = |path: &'static str| {
        let client = client.clone();
        async move {
            super::get(&client, &format!("http://details:9080{path}"), &[])
                .await
                .status
        }
    };
    eventually("details up", || get("/warmup"), |s| *s == 200).await;
    // The known mix (the warm-up added at least one 200 on each side).
    for _ in 0..7 {
        assert_eq!(get("/details/0").await, 200);
    }
    for _ in 0..3 {
        assert_eq!(get("/fail").await, 500);
    }

    let prometheus = Prometheus::start(&[client_admin, server_admin], "/stats/prometheus").await;
    let count = |reporter: &'static str, code: &'static str| {
        let prometheus = &prometheus;
        async move {
            prometheus
                .query(&format!(
                    "sum(istio_requests_total{{reporter=\"{reporter}\",response_code=\"{code}\",destination_service_name=\"details\"}})"
                ))
                .await
                .first()
                .map_or(0.0, |(_, v)| *v)
        }
    };
    eventually(
        "source 500s scraped",
        || count("source", "500"),
        |v| *v == 3.0,
    )
    .await;
    eventually(
        "destination 500s scraped",
        || count("destination", "500"),
        |v| *v == 3.0,
    )
    .await;
    assert!(count("source", "200").await >= 8.0);
    assert!(count("destination", "200").await >= 8.0);

    // The labels, as Istio's dashboards and Kiali read them.
    let series = prometheus
        .query("istio_requests_total{response_code=\"500\"}")
        .await;
    let find = |reporter: &str| {
        series
            .iter()
            .find(|(l, _)| l["reporter"] == reporter)
            .map(|(l, _)| l.clone())
            .unwrap_or_else(|| panic!("no {reporter} series in {series:?}"))
    };
    let source = find("source");
    for (k, v) in [
        ("source_workload", "productpage-v1"),
        ("source_workload_namespace", "default"),
        ("source_app", "productpage"),
        (
            "source_principal",
            "spiffe://cluster.local/ns/default/sa/bookinfo-productpage",
        ),
        ("destination_service", "details.default.svc.cluster.local"),
        ("destination_service_namespace", "default"),
        ("request_protocol", "http"),
        ("response_flags", "-"),
    ] {
        assert_eq!(source[k], v, "source label {k}: {source:?}");
    }
    let destination = find("destination");
    for (k, v) in [
        ("destination_workload", "details-v1"),
        ("destination_app", "details"),
        (
            "destination_principal",
            "spiffe://cluster.local/ns/default/sa/bookinfo-details",
        ),
        (
            "source_principal",
            "spiffe://cluster.local/ns/default/sa/bookinfo-productpage",
        ),
        ("source_workload_namespace", "default"),
        ("destination_service", "details.default.svc.cluster.local"),
        ("connection_security_policy", "mutual_tls"),
    ] {
        assert_eq!(destination[k], v, "destination label {k}: {destination:?}");
    }
    // Durations and sizes are histograms: 3 failed requests of 12 response bytes each.
    let bytes = prometheus
        .query("sum(istio_response_bytes_sum{reporter=\"destination\",response_code=\"500\"})")
        .await;
    assert_eq!(bytes.first().map(|(_, v)| *v), Some(36.0), "{bytes:?}");
    let le = prometheus
        .query("sum(istio_request_duration_milliseconds_bucket{reporter=\"source\",response_code=\"500\",le=\"+Inf\"})")
        .await;
    assert_eq!(le.first().map(|(_, v)| *v), Some(3.0));

    // The other admin pages.
    let (status, clusters) = mesh_test_support::http::get(client_admin, "/clusters", &[])
        .await
        .unwrap();
    assert_eq!(status, 200);
    let clusters: serde_json::Value = serde_json::from_str(&clusters).unwrap();
    let details_cluster = clusters["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "outbound|9080||details.default.svc.cluster.local")
        .unwrap_or_else(|| panic!("{clusters}"));
    assert_eq!(details_cluster["hosts"][0]["address"], addr.to_string());
    assert_eq!(details_cluster["hosts"][0]["ejected"], false);
    assert_eq!(
        mesh_test_support::http::get(client_admin, "/ready", &[])
            .await
            .unwrap(),
        (200, "LIVE\n".into())
    );
    assert_eq!(
        mesh_test_support::http::get(server_admin, "/healthz", &[])
            .await
            .unwrap()
            .0,
        200
    );
}

/// The destination service of the server's series comes from configuration (the services its
/// listener says the workload serves), never from the caller's `Host`: requests naming the
/// service in each of its spellings, and a flood of invented hosts, all count for the one
/// service, so a caller cannot add series.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_destination_service_comes_from_configuration_not_the_host_header() {
    let addr = free_port();
    let mesh = TestMesh::start(&service(DETAILS, 9080, addr)).await;
    let server = mesh.serve(DETAILS, addr, tower::service_fn(details)).await;
    let get = |host: String| async move {
        mesh_test_support::http::get(addr, "/", &[("host", &host)])
            .await
            .map(|(s, _)| s)
    };
    let _ = eventually("serving", || get("details:9080".into()), |s| *s == Ok(200)).await;
    let mut hosts: Vec<String> = [
        "details",
        "details.default",
        "details.default.svc",
        "details.default.svc.cluster.local:9080",
    ]
    .map(String::from)
    .into();
    hosts.extend((0..200).map(|i| format!("invented-{i}.example:{i}")));
    for host in hosts {
        assert_eq!(get(host.clone()).await, Ok(200), "{host}");
    }
    let text = mesh_tower::telemetry::Telemetry::of(&server).prometheus();
    let mut services: Vec<&str> = text
        .lines()
        .filter(|l| {
            l.starts_with("istio_requests_total{") && l.contains("reporter=\"destination\"")
        })
        .filter_map(|l| l.split("destination_service=\"").nth(1)?.split('"').next())
        .collect();
    services.sort();
    services.dedup();
    assert_eq!(services, ["details.default.svc.cluster.local"], "{text}");
}
