//! Tracing to a real OTLP receiver (Python, grpcio + opentelemetry-proto): a two-hop call
//! ingress → productpage → details, where productpage copies the trace headers onto its own
//! call as Bookinfo's services do, gives one trace with each side's span parented on the
//! one before it; W3C and B3 callers are both continued; a receiver that is not there costs
//! requests nothing and its spans are counted as dropped.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use mesh_test_support::python::OtlpReceiver;
use mesh_tower::MeshClient;
use mesh_tower::telemetry::{Telemetry, Tracing};

use super::meshed::{DETAILS, PRODUCTPAGE, TestMesh, Workload, eventually, free_port, service};

const INGRESS: Workload<'static> = Workload {
    app: "ingress",
    namespace: "default",
    service_account: "ingress",
};

async fn productpage(
    client: MeshClient,
    req: http::Request<hyper::body::Incoming>,
) -> Result<http::Response<Full<Bytes>>, Infallible> {
    // What Bookinfo's services copy from their request onto their own calls.
    let mut call = http::Request::get("http://details:9080/details/0")
        .body(Full::<Bytes>::default())
        .unwrap();
    *call.headers_mut() = mesh_bookinfo::web::propagated(req.headers());
    let rsp = client.send(call).await;
    let body = match rsp {
        Ok(r) => r
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default(),
        Err(_) => Bytes::from_static(b"details failed"),
    };
    Ok(http::Response::new(Full::new(body)))
}

async fn details(
    req: http::Request<hyper::body::Incoming>,
) -> Result<http::Response<Full<Bytes>>, Infallible> {
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("none")
        .to_owned();
    Ok(http::Response::new(Full::new(Bytes::from(id))))
}

fn tracing(receiver: u16) -> Tracing {
    Tracing::otlp(format!("http://127.0.0.1:{receiver}"))
        .sampling(1.0)
        .batch_delay(Duration::from_millis(100))
}

/// The spans of one trace, by kind (2 = SERVER, 3 = CLIENT) and service.
fn find<'a>(spans: &'a [serde_json::Value], kind: u64, service: &str) -> &'a serde_json::Value {
    spans
        .iter()
        .find(|s| s["kind"] == kind && s["service"] == service)
        .unwrap_or_else(|| panic!("no kind {kind} span of {service} in {spans:#?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_hop_call_is_one_trace_for_w3c_and_b3_callers() {
    let receiver = OtlpReceiver::start();
    let (pp, dt) = (free_port(), free_port());
    let mesh = TestMesh::start(&format!(
        "{}{}",
        service(PRODUCTPAGE, 9080, pp),
        service(DETAILS, 9080, dt)
    ))
    .await;
    let details_mesh = mesh.serve(DETAILS, dt, tower::service_fn(details)).await;
    let pp_mesh = mesh.mesh(PRODUCTPAGE).await;
    let ingress_mesh = mesh.mesh(INGRESS).await;
    for m in [&details_mesh, &pp_mesh, &ingress_mesh] {
        tracing(receiver.port).install(m).expect("tracing");
    }
    let client = MeshClient::new(&pp_mesh);
    let svc = tower::service_fn(move |req| productpage(client.clone(), req));
    let serving = pp_mesh.clone();
    tokio::spawn(async move {
        mesh_tower::serve(&serving, pp, svc)
            .await
            .expect("productpage")
    });
    let ingress = MeshClient::new(&ingress_mesh);
    eventually(
        "the page",
        || async {
            super::get(&ingress, "http://productpage:9080/", &[])
                .await
                .status
        },
        |s| *s == 200,
    )
    .await;

    let cases: [(&str, &[(&str, &str)]); 2] = [
        (
            "0af7651916cd43dd8448eb211c80319c",
            &[(
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            )],
        ),
        (
            "0000000000000000463ac35c9f6413ad",
            &[
                ("x-b3-traceid", "463ac35c9f6413ad"),
                ("x-b3-spanid", "a2fb4a1d1a96d312"),
                ("x-b3-sampled", "1"),
            ],
        ),
    ];
    for (trace, headers) in cases {
        let a = super::get(&ingress, "http://productpage:9080/", headers).await;
        assert_eq!(a.status, 200);
        assert_eq!(
            a.body.len(),
            36,
            "details saw the request id ingress made: {:?}",
            a.body
        );
        let spans = eventually(
            "four spans of the trace",
            || async {
                receiver
                    .spans()
                    .into_iter()
                    .filter(|s| s["trace_id"] == trace)
                    .collect::<Vec<_>>()
            },
            |spans| spans.len() >= 4,
        )
        .await;
        let caller = headers
            .iter()
            .find_map(|(k, v)| match *k {
                "traceparent" => v.split('-').nth(2),
                "x-b3-spanid" => Some(*v),
                _ => None,
            })
            .unwrap();
        let ingress_client = find(&spans, 3, "ingress.default");
        let pp_server = find(&spans, 2, "productpage.default");
        let pp_client = find(&spans, 3, "productpage.default");
        let details_server = find(&spans, 2, "details.default");
        assert_eq!(
            ingress_client["parent_span_id"], caller,
            "continues the caller's span"
        );
        assert_eq!(pp_server["parent_span_id"], ingress_client["span_id"]);
        assert_eq!(pp_client["parent_span_id"], pp_server["span_id"]);
        assert_eq!(details_server["parent_span_id"], pp_client["span_id"]);
        assert_eq!(
            pp_client["attributes"]["upstream_cluster"],
            "outbound|9080||details.default.svc.cluster.local"
        );
        assert_eq!(details_server["attributes"]["http.status_code"], 200);
        assert_eq!(details_server["attributes"]["guid:x-request-id"], a.body);
    }
    assert_eq!(Telemetry::of(&ingress_mesh).dropped_spans(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_receiver_drops_spans_and_hurts_no_request() {
    let dt = free_port();
    let mesh = TestMesh::start(&service(DETAILS, 9080, dt)).await;
    mesh.serve(DETAILS, dt, tower::service_fn(details)).await;
    let ingress_mesh = mesh.mesh(INGRESS).await;
    tracing(free_port().port())
        .export_timeout(Duration::from_millis(300))
        .install(&ingress_mesh)
        .expect("tracing");
    let ingress = MeshClient::new(&ingress_mesh);
    eventually(
        "details up",
        || async {
            super::get(&ingress, "http://details:9080/", &[])
                .await
                .status
        },
        |s| *s == 200,
    )
    .await;
    for _ in 0..20 {
        assert_eq!(
            super::get(&ingress, "http://details:9080/", &[])
                .await
                .status,
            200
        );
    }
    let telemetry = Telemetry::of(&ingress_mesh);
    eventually(
        "spans counted as dropped",
        || async { telemetry.dropped_spans() },
        |n| *n > 0,
    )
    .await;
}
