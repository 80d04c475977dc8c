//! A stock Envoy sidecar pair carrying mTLS exactly as Istio YAML asks: DestinationRule
//! `ISTIO_MUTUAL` on the client's side, PeerAuthentication `STRICT` on the server's, SPIFFE
//! certificates from one CA, the server's identity checked against the service account.

use super::meshed::free_port;
use mesh_test_support::envoy::{Envoy, ads_bootstrap};
use mesh_test_support::{Backend, TestCa, http};
use std::time::Duration;

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

/// A proxyless mesh client of `xds`, its certificates from a file_watcher provider in `dir`.
async fn mesh_client(xds: std::net::SocketAddr, dir: &std::path::Path) -> mesh_tower::MeshClient {
    let file = |n: &str| dir.join(n).to_string_lossy().into_owned();
    let mesh = super::mesh_at(
        xds,
        serde_json::json!({"id": "sidecar~127.0.0.1~productpage-v1.default~default.svc.cluster.local",
                           "metadata": {"NAMESPACE": "default"}}),
        serde_json::json!({"certificate_providers": {"default": {"plugin_name": "file_watcher", "config": {
            "certificate_file": file("cert-chain.pem"), "private_key_file": file("key.pem"),
            "ca_certificate_file": file("root-cert.pem"), "refresh_interval": "600s"}}}}),
    )
    .await;
    mesh_tower::MeshClient::new(&mesh)
}

#[tokio::test]
async fn a_meshed_client_calls_a_server_behind_envoy_over_istio_mtls() {
    let app = Backend::start("details-v1").await;
    let ca = TestCa::new("mesh root");
    let certs = tempfile::tempdir().unwrap();
    let (client_dir, server_dir, impostor_dir) = (
        certs.path().join("productpage"),
        certs.path().join("details"),
        certs.path().join("impostor"),
    );
    ca.write_istio_files(
        &ca.workload("spiffe://cluster.local/ns/default/sa/bookinfo-productpage"),
        &client_dir,
    );
    ca.write_istio_files(
        &ca.workload("spiffe://cluster.local/ns/default/sa/bookinfo-details"),
        &server_dir,
    );
    ca.write_istio_files(
        &ca.workload("spiffe://cluster.local/ns/default/sa/impostor"),
        &impostor_dir,
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
    let client = mesh_client(xds, &client_dir).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let a = crate::get(&client, "http://details:9080/details/0", &[]).await;
        if a.status == 200 {
            assert_eq!(a.body, "details-v1");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{a:?}\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(cp.ads().nack_count(), 0);

    // The same client against an Envoy presenting another identity: refused, flagged UF (and
    // URX: Istio's default retries try again, to no avail).
    let inbound2 = free_port();
    let dir2 = tempfile::tempdir().unwrap();
    std::fs::write(
        dir2.path().join("mesh.yaml"),
        registry(inbound2.port(), "bookinfo-details"),
    )
    .unwrap();
    let (_cp2, xds2) = super::serve_control_plane(dir2.path()).await;
    let _impostor = Envoy::start(&ads_bootstrap(
        xds2,
        "sidecar~127.0.0.1~details-v1.default~default.svc.cluster.local",
        serde_json::json!({"NAMESPACE": "default", "LABELS": {"app": "details"},
            "MESH_INBOUND_ADDR": inbound2.to_string(), "MESH_APP_ADDR": app.addr().to_string(),
            "MESH_CERT_DIR": impostor_dir.to_string_lossy()}),
    ))
    .await;
    let fooled = mesh_client(xds2, &client_dir).await;
    let before = app.requests();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let a = crate::get(&fooled, "http://details:9080/details/0", &[]).await;
        assert_ne!(a.status, 200, "an impostor was trusted");
        if a.info
            .flags
            .contains(mesh_tower::ResponseFlags::UPSTREAM_CONNECTION_FAILURE)
        {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{a:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(app.requests(), before, "nothing reached the workload");
}
