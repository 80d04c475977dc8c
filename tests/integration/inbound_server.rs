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

const TEMPLATE: &str = "xds.istio.io/grpc/lds/inbound/%s";

fn free_port() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

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
    let dir = certs.join(app);
    ca.write_istio_files(
        &ca.workload(&format!(
            "spiffe://cluster.local/ns/default/sa/bookinfo-{app}"
        )),
        &dir,
    );
    let file = |n: &str| dir.join(n).to_string_lossy().into_owned();
    super::mesh_at(
        xds,
        serde_json::json!({"id": format!("sidecar~127.0.0.1~{app}-v1.default~default.svc.cluster.local"),
                           "metadata": {"NAMESPACE": "default", "LABELS": {"app": app}}}),
        serde_json::json!({
            "server_listener_resource_name_template": TEMPLATE,
            "certificate_providers": {"default": {"plugin_name": "file_watcher", "config": {
                "certificate_file": file("cert-chain.pem"), "private_key_file": file("key.pem"),
                "ca_certificate_file": file("root-cert.pem"), "refresh_interval": "600s"}}}}),
    )
    .await
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
    productpage: mesh_tower::MeshClient,
    reviews: mesh_tower::MeshClient,
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
    let productpage =
        mesh_tower::MeshClient::new(&mesh(xds, "productpage", &ca, certs.path()).await);
    let reviews = mesh_tower::MeshClient::new(&mesh(xds, "reviews", &ca, certs.path()).await);
    Fixture {
        cp,
        dir,
        _certs: certs,
        addr,
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
