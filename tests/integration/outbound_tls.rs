//! TLS origination verifies the server's name where a name is what identifies it: a
//! `SIMPLE` context with a CA file and no SAN matcher accepts only a certificate valid for
//! the SNI, and `auto_san_validation` asks the same of a certificate-provider CA; an SNI
//! taken from a request header is refused when the cluster loads.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use mesh_core::identity::{CertificateProvider, Identity};
use mesh_test_support::static_json::{cluster, listener, resources};
use mesh_test_support::{CertifiedKey, TempFiles, TestCa};
use serde_json::{Value, json};

/// A TLS server presenting `cert`, answering 200 "tls".
async fn tls_server(cert: &CertifiedKey) -> SocketAddr {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cert.server_config()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let svc = hyper::service::service_fn(|_req| async {
                    Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from_static(b"tls"))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    addr
}

/// A client whose `svc:80` goes to `server` over TLS with `context` (an
/// `UpstreamTlsContext`'s fields) and `extra` cluster fields.
async fn client(
    server: SocketAddr,
    context: Value,
    extra: Value,
    ca: &TestCa,
) -> mesh_tower::MeshClient {
    let mut c = json!({"transport_socket": {"name": "tls", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"}}});
    mesh_test_support::static_json::merge(&mut c["transport_socket"]["typed_config"], context);
    mesh_test_support::static_json::merge(&mut c, extra);
    let doc = resources(
        &[listener(
            "svc:80",
            json!([{"match": {"prefix": "/"}, "route": {"cluster": "s"}}]),
            json!([]),
        )],
        &[cluster("s", &[server], c)],
    );
    let workload = ca.workload("spiffe://cluster.local/ns/default/sa/client");
    let identity = Identity::from_pem(
        Some(workload.cert_pem.as_bytes()),
        Some(workload.key_pem.as_bytes()),
        Some(ca.root_pem.as_bytes()),
        "client",
    )
    .unwrap();
    let mesh = mesh_core::Mesh::builder()
        .static_resources(mesh_core::StaticResources::from_value(&doc, "test").expect("resources"))
        .certificate_provider(
            "default",
            CertificateProvider::from_identity("default", identity),
        )
        .build()
        .await
        .expect("mesh");
    mesh_tower::MeshClient::new(&mesh)
}

#[tokio::test]
async fn simple_tls_with_a_ca_file_checks_the_servers_name() {
    let ca = TestCa::new("simple");
    let files = TempFiles::new();
    let ca_file = files.write("ca.pem", &ca.root_pem);
    let context = json!({"sni": "api.example.com", "common_tls_context": {
        "validation_context": {"trusted_ca": {"filename": ca_file}}}});
    for (name, status) in [("api.example.com", 200), ("other.example.com", 503)] {
        let server = tls_server(&ca.server(&[name])).await;
        let client = client(server, context.clone(), json!({}), &ca).await;
        let a = super::get(&client, "http://svc/", &[]).await;
        assert_eq!(a.status, status, "certificate for {name}: {}", a.body);
    }
}

#[tokio::test]
async fn auto_san_validation_checks_the_name_with_a_provider_ca() {
    let ca = TestCa::new("auto-san");
    let context = json!({"sni": "api.example.com", "common_tls_context": {
        "validation_context": {"ca_certificate_provider_instance": {"instance_name": "default"}}}});
    let auto = json!({"typed_extension_protocol_options": {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "upstream_http_protocol_options": {"auto_sni": true, "auto_san_validation": true},
            "explicit_http_config": {"http_protocol_options": {}}}}});
    let wrong = tls_server(&ca.server(&["other.example.com"])).await;
    // A mesh CA identifies servers by SPIFFE ID: without auto_san_validation, no name check.
    let plain = client(wrong, context.clone(), json!({}), &ca).await;
    assert_eq!(super::get(&plain, "http://svc/", &[]).await.status, 200);
    let checked = client(wrong, context.clone(), auto.clone(), &ca).await;
    assert_eq!(super::get(&checked, "http://svc/", &[]).await.status, 503);
    let right = tls_server(&ca.server(&["api.example.com"])).await;
    let checked = client(right, context, auto, &ca).await;
    assert_eq!(super::get(&checked, "http://svc/", &[]).await.status, 200);
}

#[test]
fn an_sni_from_a_request_header_is_refused() {
    let doc = resources(
        &[],
        &[cluster(
            "s",
            &["127.0.0.1:1".parse().unwrap()],
            json!({"typed_extension_protocol_options": {
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    "upstream_http_protocol_options": {"auto_sni": true, "override_auto_sni_header": "x-sni"},
                    "explicit_http_config": {"http_protocol_options": {}}}}}),
        )],
    );
    let e = mesh_core::StaticResources::from_value(&doc, "test")
        .unwrap_err()
        .to_string();
    assert!(e.contains("override_auto_sni_header"), "{e}");
    assert!(e.contains("not supported"), "{e}");
}
