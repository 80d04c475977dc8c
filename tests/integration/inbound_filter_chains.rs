//! Filter chains as Envoy chooses them, and no chain serving the application without its
//! policy: a chain picked by TLS server name (read from the ClientHello), another for other
//! TLS names, network RBAC closing connections before HTTP, a chain whose terminal filter
//! is not HTTP closing connections; and listeners whose chains cannot be told apart (or are
//! chosen by the matcher API) refused when they load. Servers without an inbound listener
//! refuse to serve unless asked.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use mesh_core::identity::{CertificateProvider, Identity};
use mesh_test_support::TestCa;
use mesh_test_support::backend::echo;
use serde_json::{Value, json};

pub(super) fn tls_socket() -> Value {
    json!({"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
        "common_tls_context": {"tls_certificate_provider_instance": {"instance_name": "default"}}}})
}

pub(super) fn hcm(deny_all: bool) -> Value {
    let mut filters = Vec::new();
    if deny_all {
        filters.push(json!({"name": "rbac", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
            "rules": {"action": "ALLOW", "policies": {}}}}));
    }
    filters.push(json!({"name": "router", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}));
    json!({"name": "hcm", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "inbound",
        "route_config": {"name": "r", "virtual_hosts": [{"name": "all", "domains": ["*"],
            "routes": [{"match": {"prefix": "/"}, "non_forwarding_action": {}}]}]},
        "http_filters": filters}})
}

pub(super) fn inbound(addr: SocketAddr, chains: Value) -> Value {
    json!({"static_resources": {"listeners": [{
        "name": format!("inbound|{addr}"),
        "address": {"socket_address": {"address": addr.ip().to_string(), "port_value": addr.port()}},
        "filter_chains": chains}]}})
}

pub(super) fn mesh_builder(doc: &Value, ca: &TestCa) -> Result<mesh_core::MeshBuilder, String> {
    let server = ca.server(&["a.example.com", "b.example.com"]);
    let identity = Identity::from_pem(
        Some(server.cert_pem.as_bytes()),
        Some(server.key_pem.as_bytes()),
        Some(ca.root_pem.as_bytes()),
        "test",
    )
    .expect("identity");
    let resources =
        mesh_core::StaticResources::from_value(doc, "test").map_err(|e| e.to_string())?;
    Ok(mesh_core::Mesh::builder()
        .bootstrap(
            mesh_core::Bootstrap::from_json(
                &json!({"server_listener_resource_name_template": "inbound|%s"}).to_string(),
            )
            .expect("bootstrap"),
        )
        .static_resources(resources)
        .certificate_provider(
            "default",
            CertificateProvider::from_identity("default", identity),
        ))
}

/// Serves the echo application on a fresh port behind `chains`.
async fn serve(chains: Value, ca: &TestCa) -> SocketAddr {
    mesh_test_support::trace_init();
    let socket = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let mesh = mesh_builder(&inbound(addr, chains), ca)
        .expect("the listener loads")
        .build()
        .await
        .expect("mesh");
    let app = tower::service_fn(|req: http::Request<hyper::body::Incoming>| async move {
        Ok::<_, Infallible>(echo("app", &req))
    });
    tokio::spawn(async move { mesh_tower::serve_listener(&mesh, socket, app).await });
    addr
}

/// GET / over TLS with this server name, from `from`: the status, or why there was none.
async fn tls_get(addr: SocketAddr, from: IpAddr, sni: &str, ca: &TestCa) -> Result<u16, String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(ca.root_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from, 0)).unwrap();
    let tcp = socket.connect(addr).await.map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from(sni.to_owned()).unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = http::Request::get("/")
        .header("host", "app")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let rsp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = rsp.status().as_u16();
    let _ = rsp.into_body().collect().await;
    Ok(status)
}

use rustls::pki_types::pem::PemObject;

#[tokio::test]
async fn chains_by_server_name_network_rbac_and_non_http_terminals() {
    let ca = TestCa::new("chains");
    let chains = json!([
        {"name": "named",
         "filter_chain_match": {"transport_protocol": "tls", "server_names": ["A.example.com"]},
         "transport_socket": tls_socket(),
         "filters": [
            {"name": "envoy.filters.network.rbac", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC",
                "stat_prefix": "tcp.",
                "rules": {"action": "DENY", "policies": {"blocked": {
                    "permissions": [{"any": true}],
                    "principals": [{"direct_remote_ip": {"address_prefix": "127.0.0.2", "prefix_len": 32}}]}}}}},
            hcm(false)]},
        {"name": "other-tls",
         "filter_chain_match": {"transport_protocol": "tls"},
         "transport_socket": tls_socket(),
         "filters": [hcm(true)]},
        {"name": "tcp",
         "filter_chain_match": {"transport_protocol": "raw_buffer"},
         "filters": [{"name": "envoy.filters.network.tcp_proxy", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
            "stat_prefix": "tcp", "cluster": "somewhere"}}]}
    ]);
    let addr = serve(chains, &ca).await;
    let here = IpAddr::from([127, 0, 0, 1]);
    assert_eq!(
        tls_get(addr, here, "a.example.com", &ca).await,
        Ok(200),
        "the named chain"
    );
    assert_eq!(
        tls_get(addr, here, "b.example.com", &ca).await,
        Ok(403),
        "another name takes the other TLS chain, and its policy"
    );
    let blocked = tls_get(addr, IpAddr::from([127, 0, 0, 2]), "a.example.com", &ca).await;
    assert!(
        blocked.is_err(),
        "network RBAC closes the connection: {blocked:?}"
    );
    let plain = mesh_test_support::http::get(addr, "/", &[("host", "app")]).await;
    assert!(
        plain.is_err(),
        "a TCP proxy chain is not served as HTTP without policy: {plain:?}"
    );
}

#[tokio::test]
async fn listeners_whose_chains_cannot_be_told_apart_are_refused() {
    let ca = TestCa::new("refused");
    let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let refused = |chains: Value| mesh_builder(&inbound(addr, chains), &ca).expect_err("refused");
    let twice = refused(json!([
        {"filter_chain_match": {"server_names": ["a.example.com", "b.example.com"]}, "filters": [hcm(false)]},
        {"filter_chain_match": {"server_names": ["B.example.com"]}, "filters": [hcm(true)]}
    ]));
    assert!(
        twice.contains("filter_chains[1].filter_chain_match") && twice.contains("overlapping"),
        "{twice}"
    );
    let partial = refused(json!([
        {"filter_chain_match": {"server_names": ["*w.example.com"]}, "filters": [hcm(false)]}
    ]));
    assert!(partial.contains("partial wildcards"), "{partial}");
    let unknown = refused(json!([{"filters": [
        {"name": "istio.stats", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.local_ratelimit.v3.LocalRateLimit",
            "stat_prefix": "x", "token_bucket": {"max_tokens": 1, "fill_interval": "1s"}}},
        hcm(false)]}]));
    assert!(
        unknown.contains("filters[0]")
            && unknown.contains("is not supported ahead of the terminal filter"),
        "{unknown}"
    );
    let header_rule = refused(json!([{"filters": [
        {"name": "rbac", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC",
            "stat_prefix": "tcp.",
            "rules": {"action": "DENY", "policies": {"p": {
                "permissions": [{"header": {"name": ":path", "string_match": {"prefix": "/admin"}}}],
                "principals": [{"any": true}]}}}}},
        hcm(false)]}]));
    assert!(
        header_rule.contains("header rules are not supported"),
        "{header_rule}"
    );
    let mut doc = inbound(addr, json!([{"name": "a", "filters": [hcm(false)]}]));
    doc["static_resources"]["listeners"][0]["filter_chain_matcher"] = json!({
        "on_no_match": {"action": {"name": "a", "typed_config": {
            "@type": "type.googleapis.com/google.protobuf.StringValue", "value": "a"}}}});
    let matcher = mesh_builder(&doc, &ca).expect_err("refused");
    assert!(matcher.contains("filter_chain_matcher"), "{matcher}");
}

#[tokio::test]
async fn without_an_inbound_listener_nothing_is_served_unless_asked() {
    let socket = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mesh = mesh_core::Mesh::builder()
        .static_resources(mesh_core::StaticResources::default())
        .build()
        .await
        .unwrap();
    let app = tower::service_fn(|req: http::Request<hyper::body::Incoming>| async move {
        Ok::<_, Infallible>(echo("app", &req))
    });
    let refused = mesh_tower::serve_listener(&mesh, socket, app)
        .await
        .expect_err("no policy, no serving");
    assert!(
        matches!(
            refused,
            mesh_tower::server::ServeError::NoInboundPolicy { .. }
        ),
        "{refused}"
    );
    assert!(
        refused.to_string().contains("serve_without_inbound_policy"),
        "{refused}"
    );

    let socket = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let asked = mesh_core::Mesh::builder()
        .static_resources(mesh_core::StaticResources::default())
        .dangerous()
        .serve_without_inbound_policy()
        .build()
        .await
        .unwrap();
    tokio::spawn(async move { mesh_tower::serve_listener(&asked, socket, app).await });
    let (status, body) = mesh_test_support::http::get(addr, "/", &[]).await.unwrap();
    assert_eq!((status, body.as_str()), (200, "app"));
}

/// With a wildcard bind, a connection's destination is its own local address: chains by
/// destination range and `destination_ip` rules see 127.0.0.1, not 0.0.0.0.
#[tokio::test]
async fn a_wildcard_bind_matches_on_the_connections_destination() {
    mesh_test_support::trace_init();
    let ca = TestCa::new("wildcard");
    let socket = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let chains = json!([{
        "filter_chain_match": {"prefix_ranges": [{"address_prefix": "127.0.0.1", "prefix_len": 32}]},
        "filters": [hcm(false)]}]);
    let mesh = mesh_builder(&inbound(addr, chains), &ca)
        .expect("the listener loads")
        .build()
        .await
        .unwrap();
    let app = tower::service_fn(|req: http::Request<hyper::body::Incoming>| async move {
        Ok::<_, Infallible>(echo("app", &req))
    });
    tokio::spawn(async move { mesh_tower::serve_listener(&mesh, socket, app).await });
    let to = SocketAddr::from(([127, 0, 0, 1], addr.port()));
    let (status, body) = mesh_test_support::http::get(to, "/", &[("host", "app")])
        .await
        .expect("served by the 127.0.0.1 chain");
    assert_eq!((status, body.as_str()), (200, "app"));
}

/// How long the peer at the other end of `tcp` keeps it open after sending `first`: the
/// connection closes (EOF or reset) within `limit`, or `None`.
pub(super) async fn closes_within(
    tcp: &mut tokio::net::TcpStream,
    first: &[u8],
    limit: std::time::Duration,
) -> Option<std::time::Duration> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let started = std::time::Instant::now();
    tcp.write_all(first).await.unwrap();
    let mut buf = [0u8; 64];
    match tokio::time::timeout(limit, tcp.read(&mut buf)).await {
        Ok(Ok(0) | Err(_)) => Some(started.elapsed()),
        _ => None,
    }
}

/// Idle and trickling peers: a connection that shows no first byte, or only part of a
/// ClientHello, is closed after the listener's `listener_filters_timeout` (Envoy's rule),
/// not held for ever while the chain cannot be chosen; with
/// `continue_on_listener_filters_timeout`, a silent one is taken as plaintext instead.
#[tokio::test]
async fn peers_that_never_show_their_first_bytes_are_closed() {
    let ca = TestCa::new("idle");
    let chains = json!([
        {"filter_chain_match": {"transport_protocol": "tls"}, "transport_socket": tls_socket(),
         "filters": [hcm(false)]},
        {"filter_chain_match": {"transport_protocol": "raw_buffer"}, "filters": [hcm(false)]}
    ]);
    let with = |extra: Value| {
        let chains = chains.clone();
        let ca = &ca;
        async move {
            mesh_test_support::trace_init();
            let socket = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = socket.local_addr().unwrap();
            let mut doc = inbound(addr, chains);
            mesh_test_support::static_json::merge(
                &mut doc["static_resources"]["listeners"][0],
                extra,
            );
            let mesh = mesh_builder(&doc, ca).unwrap().build().await.unwrap();
            let app = tower::service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                Ok::<_, Infallible>(echo("app", &req))
            });
            tokio::spawn(async move { mesh_tower::serve_listener(&mesh, socket, app).await });
            addr
        }
    };
    let limit = std::time::Duration::from_secs(5);
    let addr = with(json!({"listener_filters_timeout": "0.3s"})).await;
    let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
    let closed = closes_within(&mut idle, b"", limit).await;
    assert!(closed.is_some(), "an idle peer is closed");
    let mut trickle = tokio::net::TcpStream::connect(addr).await.unwrap();
    let closed = closes_within(&mut trickle, &[0x16, 0x03, 0x01], limit).await;
    assert!(
        closed.is_some(),
        "a peer stuck inside its ClientHello is closed"
    );
    // Still serving others.
    let (status, _) = mesh_test_support::http::get(addr, "/", &[("host", "app")])
        .await
        .unwrap();
    assert_eq!(status, 200);

    let addr = with(json!({"listener_filters_timeout": "0.3s",
                           "continue_on_listener_filters_timeout": true}))
    .await;
    let mut late = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    late.write_all(b"GET / HTTP/1.1\r\nhost: app\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(limit, late.read_to_end(&mut answer))
        .await
        .expect("an answer")
        .unwrap();
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "taken as plaintext after the timeout: {:?}",
        String::from_utf8_lossy(&answer)
    );
}

/// A chain's `tls_params` are enforced: with a TLS 1.3 minimum (as istiod sets for some
/// listeners), a client that offers only TLS 1.2 fails its handshake; one that offers 1.3 is
/// served.
#[tokio::test]
async fn a_chains_tls_params_are_enforced() {
    let ca = TestCa::new("params");
    let mut socket = tls_socket();
    socket["typed_config"]["common_tls_context"]["tls_params"] =
        json!({"tls_minimum_protocol_version": "TLSv1_3"});
    let addr = serve(
        json!([{"transport_socket": socket, "filters": [hcm(false)]}]),
        &ca,
    )
    .await;
    assert_eq!(
        tls_get(addr, "127.0.0.1".parse().unwrap(), "a.example.com", &ca).await,
        Ok(200)
    );
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(ca.root_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let only12 = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS12])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("a.example.com").unwrap();
    let refused = tokio_rustls::TlsConnector::from(Arc::new(only12))
        .connect(name, tcp)
        .await;
    assert!(refused.is_err(), "a TLS 1.2 client is refused");
}
