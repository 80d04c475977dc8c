//! Istio's metrics pushed over OTLP to a real receiver (Python, grpcio + opentelemetry-proto),
//! with Istio's labels as attributes; a receiver that is not there is counted, not felt.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use mesh_test_support::python::OtlpReceiver;
use mesh_tower::MeshClient;
use mesh_tower::telemetry::{MetricsExport, Telemetry};

use super::meshed::{TestMesh, Workload, eventually, free_port, service};

const CLIENT: Workload<'static> = Workload::new("productpage", "default", "bookinfo-productpage");
const SERVER: Workload<'static> = Workload::new("ratings", "default", "bookinfo-ratings");

async fn app(
    _: http::Request<hyper::body::Incoming>,
) -> Result<http::Response<Full<Bytes>>, Infallible> {
    Ok(http::Response::new(Full::new(Bytes::from_static(
        b"{\"ratings\":{}}",
    ))))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_reach_an_otlp_receiver_with_istio_labels() {
    let receiver = OtlpReceiver::start();
    let addr = free_port();
    let mesh = TestMesh::start(&service(SERVER, 9080, addr)).await;
    mesh.serve(SERVER, addr, tower::service_fn(app)).await;
    let client_mesh = mesh.mesh(CLIENT).await;
    MetricsExport::otlp(format!("http://127.0.0.1:{}", receiver.port))
        .interval(Duration::from_millis(200))
        .install(&client_mesh)
        .expect("export");
    let client = MeshClient::new(&client_mesh);
    let get = || async {
        super::get(&client, "http://ratings:9080/ratings/0", &[])
            .await
            .status
    };
    eventually("ratings up", get, |s| *s == 200).await;
    for _ in 0..5 {
        assert_eq!(get().await, 200);
    }
    let point = |name: &'static str| {
        let receiver = &receiver;
        move || async move {
            receiver.metrics().into_iter().rev().find(|m| {
                m["name"] == name
                    && m["attributes"]["response_code"] == "200"
                    && m["attributes"]["reporter"] == "source"
            })
        }
    };
    let requests = eventually("six requests pushed", point("istio_requests_total"), |p| {
        p.as_ref().is_some_and(|p| p["value"].as_i64() >= Some(6))
    })
    .await
    .unwrap();
    let a = &requests["attributes"];
    assert_eq!(
        a["destination_service"],
        "ratings.default.svc.cluster.local"
    );
    assert_eq!(a["source_workload"], "productpage-v1");
    assert_eq!(
        a["source_principal"],
        "spiffe://cluster.local/ns/default/sa/bookinfo-productpage"
    );
    assert_eq!(requests["service"], "productpage.default");
    let sizes = point("istio_response_bytes")()
        .await
        .expect("a size histogram");
    assert!(sizes["count"].as_u64() >= Some(6), "{sizes}");
    assert_eq!(
        sizes["sum"].as_f64().unwrap() / sizes["count"].as_f64().unwrap(),
        14.0
    );
    assert_eq!(Telemetry::of(&client_mesh).failed_metric_pushes(), 0);
}

#[tokio::test]
async fn an_absent_receiver_is_counted() {
    let mesh = mesh_core::Mesh::builder()
        .static_resources(mesh_core::StaticResources::default())
        .build()
        .await
        .unwrap();
    MetricsExport::otlp(format!("http://{}", free_port()))
        .interval(Duration::from_millis(50))
        .install(&mesh)
        .expect("export");
    let telemetry = Telemetry::of(&mesh);
    eventually(
        "a failed push",
        || async { telemetry.failed_metric_pushes() },
        |n| *n > 0,
    )
    .await;
}
