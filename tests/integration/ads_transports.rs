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
