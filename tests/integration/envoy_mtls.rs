//! A stock Envoy sidecar pair carrying mTLS exactly as Istio YAML asks: DestinationRule
//! `ISTIO_MUTUAL` on the client's side, PeerAuthentication `STRICT` on the server's, SPIFFE
//! certificates from one CA, the server's identity checked against the service account.

use mesh_test_support::envoy::{Envoy, ads_bootstrap};
use mesh_test_support::{Backend, TestCa, http};
use std::time::Duration;

fn free_port() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn registry(details_port: u16, service_account: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: details}}\nspec:\n  ports: [{{port: 9080, name: http}}]\n  selector: {{app: details}}\n---\n\
         apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: details-v1}}\nspec: {{address: 127.0.0.1, ports: {{http: {details_port}}}, labels: {{app: details}}, serviceAccount: {service_account}}}\n---\n\
         apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: details}}\nspec:\n  host: details\n  trafficPolicy: {{tls: {{mode: ISTIO_MUTUAL}}}}\n---\n\
         apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: default, namespace: istio-system}}\nspec: {{mtls: {{mode: STRICT}}}}\n"
    )
}

async fn routed(
    outbound: std::net::SocketAddr,
    envoy: &Envoy,
    server: &Envoy,
) -> Result<(u16, String), String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let got = http::get(outbound, "/details/0", &[("host", "details:9080")]).await;
        if matches!(got, Ok((200, _))) || tokio::time::Instant::now() >= deadline {
            if tokio::time::Instant::now() >= deadline {
                eprintln!(
                    "client log:\n{}\nserver log:\n{}",
                    envoy.log(),
                    server.log()
                );
            }
            return got;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn an_envoy_pair_speaks_istio_mutual_tls() {
    let app = Backend::start("details-v1").await;
    let ca = TestCa::new("mesh root");
    let certs = tempfile::tempdir().unwrap();
    let client_dir = certs.path().join("productpage");
    let server_dir = certs.path().join("details");
    ca.write_istio_files(
        &ca.workload("spiffe://cluster.local/ns/default/sa/bookinfo-productpage"),
        &client_dir,
    );
    ca.write_istio_files(
        &ca.workload("spiffe://cluster.local/ns/default/sa/bookinfo-details"),
        &server_dir,
    );

    let inbound = free_port();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("mesh.yaml"),
        registry(inbound.port(), "bookinfo-details"),
    )
    .unwrap();
    let (cp, xds) = super::serve_control_plane(dir.path()).await;

    let server = Envoy::start(&ads_bootstrap(
        xds,
        "sidecar~127.0.0.1~details-v1.default~default.svc.cluster.local",
        serde_json::json!({"NAMESPACE": "default", "LABELS": {"app": "details"},
            "MESH_INBOUND_ADDR": inbound.to_string(), "MESH_APP_ADDR": app.addr().to_string(),
            "MESH_CERT_DIR": server_dir.to_string_lossy()}),
    ))
    .await;
    let outbound = free_port();
    let client = Envoy::start(&ads_bootstrap(
        xds,
        "sidecar~127.0.0.1~productpage-v1.default~default.svc.cluster.local",
        serde_json::json!({"NAMESPACE": "default", "LABELS": {"app": "productpage"},
            "MESH_OUTBOUND_ADDR": outbound.to_string(),
            "MESH_CERT_DIR": client_dir.to_string_lossy()}),
    ))
    .await;

    assert_eq!(
        routed(outbound, &client, &server).await.unwrap(),
        (200, "details-v1".to_owned())
    );
    assert_eq!(cp.ads().nack_count(), 0);
    // The server side accepts mTLS only: a plaintext client is refused at the TLS layer.
    assert!(
        http::get(inbound, "/details/0", &[("host", "details:9080")])
            .await
            .is_err(),
        "STRICT refuses plaintext"
    );
    let handshakes = server
        .admin_get("/stats?filter=listener.*ssl.handshake")
        .await
        .unwrap();
    // PERMISSIVE: plaintext and mTLS on the same port.
    std::fs::write(
        dir.path().join("mesh.yaml"),
        registry(inbound.port(), "bookinfo-details").replace("mode: STRICT", "mode: PERMISSIVE"),
    )
    .unwrap();
    cp.reload().unwrap_or_else(|e| panic!("{e:?}"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !matches!(
        http::get(inbound, "/details/0", &[("host", "details:9080")]).await,
        Ok((200, _))
    ) {
        assert!(tokio::time::Instant::now() < deadline, "{}", server.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        routed(outbound, &client, &server).await.unwrap().0,
        200,
        "mTLS still works"
    );
    let completed: u64 = handshakes
        .lines()
        .filter_map(|l| l.split_once(".ssl.handshake: "))
        .filter_map(|(_, n)| n.trim().parse::<u64>().ok())
        .sum();
    assert!(
        completed > 0,
        "the inbound listener completed TLS handshakes:\n{handshakes}"
    );
}

#[tokio::test]
async fn a_server_with_the_wrong_identity_is_refused() {
    let app = Backend::start("details-v1").await;
    let ca = TestCa::new("mesh root");
    let certs = tempfile::tempdir().unwrap();
    let client_dir = certs.path().join("productpage");
    let server_dir = certs.path().join("details");
    ca.write_istio_files(
        &ca.workload("spiffe://cluster.local/ns/default/sa/bookinfo-productpage"),
        &client_dir,
    );
    // The server presents another workload's identity than the registry says.
    ca.write_istio_files(
        &ca.workload("spiffe://cluster.local/ns/default/sa/impostor"),
        &server_dir,
    );
    let inbound = free_port();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("mesh.yaml"),
        registry(inbound.port(), "bookinfo-details"),
    )
    .unwrap();
    let (_cp, xds) = super::serve_control_plane(dir.path()).await;
    let _server = Envoy::start(&ads_bootstrap(
        xds,
        "sidecar~127.0.0.1~details-v1.default~default.svc.cluster.local",
        serde_json::json!({"NAMESPACE": "default", "LABELS": {"app": "details"},
            "MESH_INBOUND_ADDR": inbound.to_string(), "MESH_APP_ADDR": app.addr().to_string(),
            "MESH_CERT_DIR": server_dir.to_string_lossy()}),
    ))
    .await;
    let outbound = free_port();
    let client = Envoy::start(&ads_bootstrap(
        xds,
        "sidecar~127.0.0.1~productpage-v1.default~default.svc.cluster.local",
        serde_json::json!({"NAMESPACE": "default", "LABELS": {"app": "productpage"},
            "MESH_OUTBOUND_ADDR": outbound.to_string(),
            "MESH_CERT_DIR": client_dir.to_string_lossy()}),
    ))
    .await;
    // Requests fail (503) until the deadline, and the reason is the SAN check: Envoy counts
    // it as `ssl.fail_verify_san` on the cluster.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let got = http::get(outbound, "/details/0", &[("host", "details:9080")]).await;
        assert!(!matches!(got, Ok((200, _))), "an impostor was trusted");
        let stats = client
            .admin_get("/stats?filter=ssl.fail_verify_san")
            .await
            .unwrap_or_default();
        let failed: u64 = stats
            .lines()
            .filter_map(|l| l.rsplit_once(": "))
            .filter_map(|(_, n)| n.trim().parse::<u64>().ok())
            .sum();
        if failed > 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{got:?}\n{stats}\n{}",
            client.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(app.requests(), 0, "nothing reached the workload");
}
