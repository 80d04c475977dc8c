//! Real grpcio 1.85 (gRPC's proxyless xDS client) gets its configuration from mesh-control over
//! an `xds:///` target and a bootstrap, with no NACK, and routes as the YAML says.

use mesh_test_support::python::{grpc_client, grpc_server};

const POLICY: &str = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: { name: echo }
spec:
  host: echo
  subsets: [{ name: v1, labels: { version: v1 } }, { name: v2, labels: { version: v2 } }]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: echo }
spec:
  hosts: [echo]
  http:
  - match: [{ headers: { end-user: { exact: jason } } }]
    route: [{ destination: { host: echo, subset: v2 } }]
  - match: [{ headers: { end-user: { exact: faulty } } }]
    fault: { abort: { grpcStatus: UNAVAILABLE, percentage: { value: 100 } } }
    route: [{ destination: { host: echo, subset: v1 } }]
  - route:
    - { destination: { host: echo, subset: v1 }, weight: 75 }
    - { destination: { host: echo, subset: v2 }, weight: 25 }
"#;

#[tokio::test]
async fn grpcio_routes_by_the_istio_yaml() {
    mesh_test_support::trace_init();
    let (_v1, p1) = grpc_server("echo-v1");
    let (_v2, p2) = grpc_server("echo-v2");
    let dir = tempfile::tempdir().unwrap();
    let registry = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: echo}}\nspec:\n  ports: [{{port: 50051, name: grpc}}]\n  selector: {{app: echo}}\n---\n\
         apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: echo-v1}}\nspec: {{address: 127.0.0.1, ports: {{grpc: {p1}}}, labels: {{app: echo, version: v1}}}}\n---\n\
         apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: echo-v2}}\nspec: {{address: 127.0.0.1, ports: {{grpc: {p2}}}, labels: {{app: echo, version: v2}}}}\n"
    );
    std::fs::write(dir.path().join("registry.yaml"), registry).unwrap();
    std::fs::write(dir.path().join("policy.yaml"), POLICY).unwrap();
    let (cp, xds) = super::serve_control_plane(dir.path()).await;
    let bootstrap = serde_json::json!({
        "xds_servers": [{"server_uri": xds.to_string(), "channel_creds": [{"type": "insecure"}], "server_features": ["xds_v3"]}],
        "node": {"id": "sidecar~127.0.0.1~client.default~default.svc.cluster.local", "metadata": {"NAMESPACE": "default", "GENERATOR": "grpc"}},
    })
    .to_string();

    let results = grpc_client(&bootstrap, "xds:///echo:50051", 10, &["end-user=jason"]).await;
    assert!(
        results.iter().all(|r| r["ok"] == "echo-v2"),
        "jason reaches v2: {results:?}"
    );

    let results = grpc_client(&bootstrap, "xds:///echo:50051", 200, &[]).await;
    let v1 = results.iter().filter(|r| r["ok"] == "echo-v1").count();
    let v2 = results.iter().filter(|r| r["ok"] == "echo-v2").count();
    // 75/25 of 200: the standard deviation is about 6, so ±30 is five of them.
    assert!(
        v1 + v2 == 200 && (120..=180).contains(&v1),
        "v1 {v1}, v2 {v2}: {:?}",
        &results[..5]
    );

    let results = grpc_client(&bootstrap, "xds:///echo:50051", 5, &["end-user=faulty"]).await;
    assert!(
        results.iter().all(|r| r["code"] == "UNAVAILABLE"),
        "injected abort: {results:?}"
    );

    assert_eq!(
        cp.ads().nack_count(),
        0,
        "grpcio NACKed a resource (see the test log)"
    );
}
