//! The access log: one JSON line per request on each side, with Envoy's default fields.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::Full;
use mesh_tower::MeshClient;
use mesh_tower::telemetry::AccessLog;

use super::meshed::{TestMesh, Workload, eventually, free_port, service};

const CLIENT: Workload<'static> = Workload::new("sleep", "default", "sleep");
const SERVER: Workload<'static> = Workload::new("details", "default", "bookinfo-details");

async fn app(
    _: http::Request<hyper::body::Incoming>,
) -> Result<http::Response<Full<Bytes>>, Infallible> {
    Ok(http::Response::new(Full::new(Bytes::from_static(
        b"twelve bytes",
    ))))
}

fn lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_side_writes_one_line_per_request() {
    let addr = free_port();
    let mesh = TestMesh::start(&service(SERVER, 9080, addr)).await;
    let logs = tempfile::tempdir().unwrap();
    let (client_log, server_log) = (
        logs.path().join("client.log"),
        logs.path().join("server.log"),
    );
    let server = mesh.serve(SERVER, addr, tower::service_fn(app)).await;
    AccessLog::to(std::fs::File::create(&server_log).unwrap()).install(&server);
    let client_mesh = mesh.mesh(CLIENT).await;
    AccessLog::to(std::fs::File::create(&client_log).unwrap()).install(&client_mesh);
    let client = MeshClient::new(&client_mesh);
    let call = || async {
        super::get(
            &client,
            "http://details:9080/details/0?x=1",
            &[("user-agent", "curl/8"), ("x-request-id", "rid-1")],
        )
        .await
        .status
    };
    eventually("details up", call, |s| *s == 200).await;

    let out = eventually(
        "a client line",
        || async { lines(&client_log) },
        |l| !l.is_empty(),
    )
    .await;
    let line = out.last().unwrap();
    for (k, v) in [
        ("direction", serde_json::json!("outbound")),
        ("method", "GET".into()),
        ("path", "/details/0?x=1".into()),
        ("protocol", "HTTP/1.1".into()),
        ("response_code", 200.into()),
        ("response_flags", "-".into()),
        ("bytes_sent", 12.into()),
        ("user_agent", "curl/8".into()),
        ("request_id", "rid-1".into()),
        ("authority", "details:9080".into()),
        (
            "upstream_cluster",
            "outbound|9080||details.default.svc.cluster.local".into(),
        ),
        ("upstream_host", addr.to_string().into()),
    ] {
        assert_eq!(line[k], v, "{k} in {line}");
    }
    assert!(line["start_time"].as_str().unwrap().ends_with('Z'));
    let inbound = eventually(
        "a server line",
        || async { lines(&server_log) },
        |l| !l.is_empty(),
    )
    .await;
    let line = inbound.last().unwrap();
    assert_eq!(line["direction"], "inbound");
    assert_eq!(line["path"], "/details/0?x=1");
    assert_eq!(line["request_id"], "rid-1");
    assert_eq!(line["response_code"], 200);
}
