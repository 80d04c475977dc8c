//! The xDS channel over a Unix socket, over TLS, and over mutual TLS (real rustls handshakes
//! with rcgen certificates).

use mesh_core::xds::ResourceType;
use mesh_test_support::resources as r;
use mesh_test_support::{AdsServer, TempFiles, TestCa};

async fn cluster_arrives(bootstrap: serde_json::Value) -> Result<(), String> {
    let mesh = super::mesh_from_json(bootstrap).await;
    let mut w = mesh
        .xds_client()
        .unwrap()
        .watch(ResourceType::Cluster, "c1")
        .await
        .unwrap();
    tokio::time::timeout(
        std::time::Duration::from_secs(3),
        w.wait_for(|s| s.value.is_some()),
    )
    .await
    .map(|_| ())
    .map_err(|_| "no config within 3 s".to_owned())
}

#[tokio::test]
async fn unix_socket_server_uri() {
    mesh_test_support::trace_init();
    let files = TempFiles::new();
    let server = AdsServer::start_unix(&files.path("xds.sock")).await;
    server.set(r::any(r::eds_cluster("c1")));
    assert!(server.server_uri().starts_with("unix:///"));
    let json = serde_json::json!({
        "xds_servers": [{"server_uri": server.server_uri(), "channel_creds": [{"type": "insecure"}]}],
        "node": {"id": "n"},
    });
    cluster_arrives(json)
        .await
        .expect("config over a Unix socket");
}

#[tokio::test]
async fn tls_channel_creds_verify_the_server() {
    mesh_test_support::trace_init();
    let ca = TestCa::new("xds-ca");
    let server = AdsServer::start_tls(&ca.server(&[]), None).await;
    server.set(r::any(r::eds_cluster("c1")));
    let files = TempFiles::new();
    let creds = |ca_file: &std::path::Path| {
        serde_json::json!({
            "xds_servers": [{"server_uri": format!("localhost:{}", server.addr().port()),
                              "channel_creds": [{"type": "tls", "config": {"ca_certificate_file": ca_file}}]}],
            "node": {"id": "n"},
        })
    };
    cluster_arrives(creds(&files.write("ca.pem", &ca.root_pem)))
        .await
        .expect("TLS with the right CA");

    // A different CA must not be trusted.
    let other = TestCa::new("other-ca");
    let err = cluster_arrives(creds(&files.write("other.pem", &other.root_pem)))
        .await
        .unwrap_err();
    assert!(err.contains("no config"), "{err}");
}

#[tokio::test]
async fn mtls_channel_creds_present_a_client_certificate() {
    mesh_test_support::trace_init();
    let ca = TestCa::new("xds-ca");
    let server = AdsServer::start_tls(&ca.server(&[]), Some(&ca.root_pem)).await;
    server.set(r::any(r::eds_cluster("c1")));
    let files = TempFiles::new();
    let client = ca.client("spiffe://cluster.local/ns/default/sa/test");
    let ca_file = files.write("ca.pem", &ca.root_pem);
    let with_cert = serde_json::json!({
        "xds_servers": [{"server_uri": format!("localhost:{}", server.addr().port()),
                          "channel_creds": [{"type": "tls", "config": {
                              "ca_certificate_file": ca_file,
                              "certificate_file": files.write("cert.pem", &client.cert_pem),
                              "private_key_file": files.write("key.pem", &client.key_pem)}}]}],
        "node": {"id": "n"},
    });
    cluster_arrives(with_cert)
        .await
        .expect("mTLS with a client certificate");

    let without = serde_json::json!({
        "xds_servers": [{"server_uri": format!("localhost:{}", server.addr().port()),
                          "channel_creds": [{"type": "tls", "config": {"ca_certificate_file": ca_file}}]}],
        "node": {"id": "n"},
    });
    assert!(
        cluster_arrives(without).await.is_err(),
        "the server requires a client certificate"
    );
}

/// mesh-control serves ADS over mutual TLS when asked: a client presenting a certificate
/// from the client CA gets its configuration, one without is refused; and it serves no more
/// streams than its limit (`RESOURCE_EXHAUSTED` past it), so clients cannot starve it.
#[tokio::test]
async fn mesh_control_serves_ads_over_mtls_and_bounds_its_streams() {
    use mesh_control::control::{ServeOptions, ServeTls};
    mesh_test_support::trace_init();
    let config = tempfile::tempdir().unwrap();
    std::fs::write(
        config.path().join("mesh.yaml"),
        "apiVersion: v1\nkind: Service\nmetadata: {name: app, namespace: default}\nspec:\n  ports: [{port: 80, name: http}]\n",
    )
    .unwrap();
    let cp = std::sync::Arc::new(mesh_control::control::ControlPlane::new(config.path()).unwrap());
    let ca = TestCa::new("xds-ca");
    let files = TempFiles::new();
    let server = ca.server(&[]);
    let tls = ServeTls {
        cert: files.write("server.pem", &server.cert_pem),
        key: files.write("server-key.pem", &server.key_pem),
        client_ca: Some(files.write("ca.pem", &ca.root_pem)),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let options = ServeOptions::default().tls(tls).max_streams(1);
    tokio::spawn(async move { cp.serve_tcp_with(listener, &options).await });

    let client = ca.client("spiffe://cluster.local/ns/default/sa/app");
    let creds = |with_cert: bool| {
        let mut config = serde_json::json!({"ca_certificate_file": files.path("ca.pem")});
        if with_cert {
            config["certificate_file"] =
                serde_json::json!(files.write("cert.pem", &client.cert_pem));
            config["private_key_file"] = serde_json::json!(files.write("key.pem", &client.key_pem));
        }
        serde_json::json!({
            "xds_servers": [{"server_uri": format!("localhost:{port}"),
                             "channel_creds": [{"type": "tls", "config": config}]}],
            "node": {"id": "sidecar~127.0.0.1~app-1.default~default.svc.cluster.local",
                     "metadata": {"NAMESPACE": "default"}},
        })
    };
    let cluster = "outbound|80||app.default.svc.cluster.local";
    let arrives = |bootstrap: serde_json::Value| async move {
        let mesh = super::mesh_from_json(bootstrap).await;
        let mut w = mesh
            .xds_client()
            .unwrap()
            .watch(ResourceType::Cluster, cluster)
            .await
            .unwrap();
        let got = tokio::time::timeout(
            std::time::Duration::from_secs(3),
            w.wait_for(|s| s.value.is_some()),
        )
        .await
        .is_ok();
        (got, mesh)
    };
    let (got, _) = arrives(creds(false)).await;
    assert!(!got, "no client certificate: refused");
    let (got, _holding) = arrives(creds(true)).await;
    assert!(got, "mTLS with a client certificate");
    let (got, _) = arrives(creds(true)).await;
    assert!(!got, "a second stream is over the limit of 1");
}
