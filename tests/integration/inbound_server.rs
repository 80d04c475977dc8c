//! `mesh_tower::serve` behind mesh-control's inbound listener: PeerAuthentication picks
//! mTLS or plaintext, peers are identified by SPIFFE ID, AuthorizationPolicy is enforced; our
//! own MeshClient calls it over Istio mTLS.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use mesh_test_support::TestCa;
use mesh_test_support::http as plain;
use mesh_tower::server::PeerIdentity;

use super::meshed::{Workload, free_port, workload_mesh};

/// The details service at `addr` with its service account, ISTIO_MUTUAL to it, and `policy`.
fn config(addr: std::net::SocketAddr, policy: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: details}}\nspec:\n  ports: [{{port: 9080, name: http}}]\n  selector: {{app: details}}\n---\n\
         apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: details-v1}}\nspec: {{address: 127.0.0.1, ports: {{http: {}}}, labels: {{app: details}}, serviceAccount: bookinfo-details}}\n---\n\
         apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: details}}\nspec:\n  host: details\n  trafficPolicy: {{tls: {{mode: ISTIO_MUTUAL}}}}\n---\n{policy}",
        addr.port()
    )
}

/// A mesh for workload `app` (service account `bookinfo-<app>`), certificates from `ca`.
async fn mesh(
    xds: std::net::SocketAddr,
    app: &str,
    ca: &TestCa,
    certs: &std::path::Path,
) -> mesh_core::Mesh {
    let sa = format!("bookinfo-{app}");
    workload_mesh(xds, ca, certs, Workload::new(app, "default", &sa)).await
}

/// Answers with the caller's SPIFFE ID as the server saw it.
async fn whoami(
    req: http::Request<hyper::body::Incoming>,
) -> Result<http::Response<Full<Bytes>>, Infallible> {
    let who = req
        .extensions()
        .get::<PeerIdentity>()
        .and_then(|p| p.spiffe_id.as_ref().map(ToString::to_string))
        .unwrap_or_else(|| "anonymous".into());
    Ok(http::Response::new(Full::new(Bytes::from(who))))
}

struct Fixture {
    cp: std::sync::Arc<mesh_control::control::ControlPlane>,
    dir: tempfile::TempDir,
    _certs: tempfile::TempDir,
    addr: std::net::SocketAddr,
    ca: std::sync::Arc<TestCa>,
    productpage_mesh: mesh_core::Mesh,
    productpage: mesh_tower::MeshClient,
    reviews: mesh_tower::MeshClient,
}

impl Fixture {
    /// The leaf certificate the server presents to a new connection (DER).
    async fn presented_leaf(&self) -> Vec<u8> {
        let provider = self
            .productpage_mesh
            .certificate_provider("default")
            .expect("productpage identity")
            .clone();
        let config =
            mesh_core::identity::tls::client_config(&provider, std::sync::Arc::new([]), vec![]);
        let tcp = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
            .connect(
                rustls::pki_types::ServerName::try_from("details").unwrap(),
                tcp,
            )
            .await
            .expect("handshake");
        tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
    }
}

async fn fixture(policy: &str) -> Fixture {
    let ca = TestCa::new("mesh root");
    let certs = tempfile::tempdir().unwrap();
    let addr = free_port();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("mesh.yaml"), config(addr, policy)).unwrap();
    let (cp, xds) = super::serve_control_plane(dir.path()).await;
    let details = mesh(xds, "details", &ca, certs.path()).await;
    tokio::spawn(async move {
        mesh_tower::serve(&details, addr, tower::service_fn(whoami))
            .await
            .expect("serving")
    });
    let productpage_mesh = mesh(xds, "productpage", &ca, certs.path()).await;
    let productpage = mesh_tower::MeshClient::new(&productpage_mesh);
    let reviews = mesh_tower::MeshClient::new(&mesh(xds, "reviews", &ca, certs.path()).await);
    Fixture {
        cp,
        dir,
        _certs: certs,
        addr,
        ca: std::sync::Arc::new(ca),
        productpage_mesh,
        productpage,
        reviews,
    }
}

/// Retries while the server is not yet serving (it waits for its listener).
async fn call(client: &mesh_tower::MeshClient, method: &str) -> crate::Answer {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let req = http::Request::builder()
            .method(method)
            .uri("http://details:9080/details/0")
            .body(Default::default())
            .unwrap();
        let a = crate::send(client, req).await;
        let not_up = a
            .info
            .flags
            .contains(mesh_tower::ResponseFlags::UPSTREAM_CONNECTION_FAILURE);
        if !not_up || tokio::time::Instant::now() >= deadline {
            return a;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const STRICT: &str = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: istio-system}\nspec: {mtls: {mode: STRICT}}\n";

#[tokio::test]
async fn strict_mtls_identifies_callers_and_refuses_plaintext() {
    let f = fixture(STRICT).await;
    let a = call(&f.productpage, "GET").await;
    assert_eq!(
        (a.status, a.body.as_str()),
        (
            200,
            "spiffe://cluster.local/ns/default/sa/bookinfo-productpage"
        ),
        "{a:?}"
    );
    let plain = plain::get(f.addr, "/details/0", &[("host", "details")]).await;
    assert!(plain.is_err(), "STRICT refuses plaintext: {plain:?}");
    assert_eq!(f.cp.ads().nack_count(), 0);
}

#[tokio::test]
async fn permissive_serves_plaintext_and_mtls_on_one_port() {
    let f = fixture("").await;
    let a = call(&f.productpage, "GET").await;
    assert_eq!(
        a.body, "spiffe://cluster.local/ns/default/sa/bookinfo-productpage",
        "{a:?}"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let plain = loop {
        match plain::get(f.addr, "/details/0", &[("host", "details")]).await {
            Ok(r) => break r,
            Err(e) => assert!(tokio::time::Instant::now() < deadline, "{e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(plain, (200, "anonymous".to_owned()));
}

#[tokio::test]
async fn authorization_policies_allow_and_deny_by_identity_and_operation() {
    let f = fixture(&format!(
        "{STRICT}---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: details-viewer, namespace: default}}\nspec:\n  selector: {{matchLabels: {{app: details}}}}\n  rules:\n  - from: [{{source: {{principals: [cluster.local/ns/default/sa/bookinfo-productpage]}}}}]\n    to: [{{operation: {{methods: [GET]}}}}]\n"
    ))
    .await;
    let a = call(&f.productpage, "GET").await;
    assert_eq!(a.status, 200, "{a:?}");
    let a = call(&f.productpage, "POST").await;
    assert_eq!((a.status, a.body.as_str()), (403, "RBAC: access denied"));
    let a = call(&f.reviews, "GET").await;
    assert_eq!(
        (a.status, a.body.as_str()),
        (403, "RBAC: access denied"),
        "another identity"
    );

    // DENY wins over ALLOW, and a change applies without restarting the server.
    std::fs::write(
        f.dir.path().join("deny.yaml"),
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: no-details, namespace: default}\nspec:\n  action: DENY\n  rules: [{to: [{operation: {paths: [\"/details/*\"]}}]}]\n",
    )
    .unwrap();
    f.cp.reload().unwrap_or_else(|e| panic!("{e:?}"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let a = call(&f.productpage, "GET").await;
        if a.status == 403 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{a:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn an_envoy_sidecar_calls_a_meshed_server_over_istio_mtls() {
    let ca = TestCa::new("mesh root");
    let certs = tempfile::tempdir().unwrap();
    let addr = free_port();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("mesh.yaml"), config(addr, STRICT)).unwrap();
    let (cp, xds) = super::serve_control_plane(dir.path()).await;
    let details = mesh(xds, "details", &ca, certs.path()).await;
    tokio::spawn(async move {
        mesh_tower::serve(&details, addr, tower::service_fn(whoami))
            .await
            .expect("serving")
    });
    let envoy_certs = certs.path().join("envoy-productpage");
    ca.write_istio_files(
        &ca.workload("spiffe://cluster.local/ns/default/sa/bookinfo-productpage"),
        &envoy_certs,
    );
    let outbound = free_port();
    let envoy = mesh_test_support::Envoy::start(&mesh_test_support::envoy::ads_bootstrap(
        xds,
        "sidecar~127.0.0.1~productpage-v1.default~default.svc.cluster.local",
        serde_json::json!({"NAMESPACE": "default", "LABELS": {"app": "productpage"},
            "MESH_OUTBOUND_ADDR": outbound.to_string(),
            "MESH_CERT_DIR": envoy_certs.to_string_lossy()}),
    ))
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match plain::get(outbound, "/details/0", &[("host", "details:9080")]).await {
            Ok((200, who)) => {
                assert_eq!(
                    who,
                    "spiffe://cluster.local/ns/default/sa/bookinfo-productpage"
                );
                break;
            }
            other => assert!(
                tokio::time::Instant::now() < deadline,
                "{other:?}\n{}",
                envoy.log()
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(cp.ads().nack_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_under_load_without_failures() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let f = fixture(STRICT).await;
    assert_eq!(call(&f.productpage, "GET").await.status, 200);
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let load = {
        let (stop, mesh) = (stop.clone(), f.productpage_mesh.clone());
        tokio::spawn(async move {
            let (mut ok, mut failed) = (0u32, Vec::new());
            let mut client = mesh_tower::MeshClient::new(&mesh);
            while !stop.load(Ordering::Relaxed) {
                // A fresh client (and so fresh connections and handshakes) every 5 requests.
                if ok % 5 == 0 {
                    client = mesh_tower::MeshClient::new(&mesh);
                }
                let req = ::http::Request::get("http://details:9080/details/0")
                    .body(Full::new(Bytes::new()))
                    .unwrap();
                let a = crate::send(&client, req).await;
                if a.status == 200 {
                    ok += 1;
                } else {
                    failed.push(format!("{} {}", a.status, a.info.flags));
                }
            }
            (ok, failed)
        })
    };
    // The server's files (as istio-agent rewrites them), 20 times.
    let server_dir = f._certs.path().join("details.default");
    let ca_root = std::fs::read_to_string(server_dir.join("root-cert.pem")).unwrap();
    let ca = f.ca.clone();
    let mut last_leaf = String::new();
    for _ in 0..20 {
        let key = ca.workload("spiffe://cluster.local/ns/default/sa/bookinfo-details");
        // Write to temporary names, then rename: what istio-agent does.
        for (name, body) in [("key.pem", &key.key_pem), ("cert-chain.pem", &key.cert_pem)] {
            let tmp = server_dir.join(format!("{name}.tmp"));
            std::fs::write(&tmp, body).unwrap();
            std::fs::rename(&tmp, server_dir.join(name)).unwrap();
        }
        assert_eq!(
            std::fs::read_to_string(server_dir.join("root-cert.pem")).unwrap(),
            ca_root
        );
        last_leaf = key.cert_pem;
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = load.await.unwrap();
    assert!(
        failed.is_empty(),
        "{} failed of {}: {:?}",
        failed.len(),
        ok as usize + failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(ok > 20, "{ok} requests");
    // A new connection presents the newest certificate.
    let presented = f.presented_leaf().await;
    let newest = rustls::pki_types::pem::PemObject::from_pem_slice(last_leaf.as_bytes())
        .map(|c: rustls::pki_types::CertificateDer<'static>| c.to_vec())
        .unwrap();
    assert_eq!(
        presented, newest,
        "new handshakes use the rotated certificate"
    );
}

/// Serves a listener whose local rate limit filter has `config` and whose virtual host has
/// `host_overrides`, and returns the answers to `n` requests.
async fn rate_limited(
    config: serde_json::Value,
    host_overrides: serde_json::Value,
    n: usize,
) -> Vec<(u16, String)> {
    mesh_test_support::trace_init();
    let addr = free_port();
    let name = format!("inbound|{addr}");
    let mut filter = serde_json::json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
        "stat_prefix": "rl"});
    mesh_test_support::static_json::merge(&mut filter, config);
    let doc = serde_json::json!({"static_resources": {"listeners": [{
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": addr.port()}},
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": "inbound",
                "route_config": {"name": "inbound", "virtual_hosts": [{"name": "all", "domains": ["*"],
                    "typed_per_filter_config": host_overrides,
                    "routes": [{"match": {"prefix": "/"}, "non_forwarding_action": {}}]}]},
                "http_filters": [
                    {"name": "envoy.filters.http.local_ratelimit", "typed_config": filter},
                    {"name": "envoy.filters.http.router", "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
                ]}}]}]
    }]}});
    let bootstrap = mesh_core::Bootstrap::from_json(
        &serde_json::json!({"server_listener_resource_name_template": "inbound|%s"}).to_string(),
    )
    .unwrap();
    let mesh = mesh_core::Mesh::builder()
        .bootstrap(bootstrap)
        .static_resources(mesh_core::StaticResources::from_value(&doc, "test").unwrap())
        .build()
        .await
        .unwrap();
    tokio::spawn(async move { mesh_tower::serve(&mesh, addr, tower::service_fn(whoami)).await });
    let mut answers = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while answers.len() < n {
        match plain::get(addr, "/", &[("host", "svc")]).await {
            Ok(a) => answers.push(a),
            Err(e) => assert!(tokio::time::Instant::now() < deadline, "{e}"),
        }
    }
    answers
}

fn bucket(max_tokens: u32) -> serde_json::Value {
    serde_json::json!({
        "token_bucket": {"max_tokens": max_tokens, "tokens_per_fill": 1, "fill_interval": "60s"},
        "filter_enabled": {"default_value": {"numerator": 100}, "runtime_key": "e"},
        "filter_enforced": {"default_value": {"numerator": 100}, "runtime_key": "f"},
        "response_headers_to_add": [{"header": {"key": "x-local-rate-limit", "value": "true"}}]})
}

#[tokio::test]
async fn local_rate_limits_answer_429_past_the_bucket() {
    let answers = rate_limited(bucket(3), serde_json::json!({}), 5).await;
    let statuses: Vec<u16> = answers.iter().map(|a| a.0).collect();
    assert_eq!(statuses, [200, 200, 200, 429, 429], "a bucket of 3");
    assert_eq!(answers[3].1, "local_rate_limited");
}

/// Istio's shape: the listener's filter limits nothing, a virtual host's override sets the
/// bucket, which every route of the host shares (it was passed over for the listener's).
#[tokio::test]
async fn a_virtual_host_rate_limit_is_enforced() {
    let mut host = serde_json::json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
        "stat_prefix": "vh"});
    mesh_test_support::static_json::merge(&mut host, bucket(2));
    let overrides = serde_json::json!({"envoy.filters.http.local_ratelimit": host});
    let answers = rate_limited(serde_json::json!({}), overrides, 4).await;
    let statuses: Vec<u16> = answers.iter().map(|a| a.0).collect();
    assert_eq!(statuses, [200, 200, 429, 429], "the host's bucket of 2");
}
