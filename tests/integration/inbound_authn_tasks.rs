//! Istio's "JWT authentication" and "require JWT" tasks (rows J1-J3 of
//! bookinfo-scenarios.md): a meshed httpbin in namespace foo with RequestAuthentication and
//! AuthorizationPolicy from mesh-control, called by a meshed sleep with and without tokens.
//!
//! Runs with tokens from a test issuer, and again with Istio's own sample JWKS and tokens
//! (`demo.jwt`, `groups-scope.jwt`) when ../shared/istio-samples is there.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use bytes::Bytes;
use http_body_util::Full;
use mesh_test_support::jwt::Issuer;
use mesh_tower::MeshClient;
use mesh_tower::server::VerifiedJwt;

use super::meshed::{TestMesh, Workload, eventually, free_port, service};

const HTTPBIN: Workload<'static> = Workload {
    app: "httpbin",
    namespace: "foo",
    service_account: "httpbin",
};
const SLEEP: Workload<'static> = Workload {
    app: "sleep",
    namespace: "foo",
    service_account: "sleep",
};
const ISSUER: &str = "testing@secure.istio.io";

/// httpbin's `/headers`, reduced: who the token said the caller is, and whether the token
/// still reached the application.
async fn httpbin(
    req: http::Request<hyper::body::Incoming>,
) -> Result<http::Response<Full<Bytes>>, Infallible> {
    let sub = req
        .extensions()
        .get::<VerifiedJwt>()
        .and_then(|j| j.claims["sub"].as_str().map(str::to_owned))
        .unwrap_or_else(|| "-".into());
    let auth = req.headers().contains_key("authorization");
    Ok(http::Response::new(Full::new(Bytes::from(format!(
        "sub={sub} authorization={auth}"
    )))))
}

struct Tokens {
    jwks: String,
    demo: String,
    groups: String,
}

/// Sleep → httpbin through the mesh, with this bearer token (if any).
async fn curl(sleep: &MeshClient, token: Option<&str>) -> (u16, String) {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = bearer
        .iter()
        .map(|b| ("authorization", b.as_str()))
        .collect();
    let a = super::get(sleep, "http://httpbin.foo:8000/headers", &headers).await;
    (a.status, a.body)
}

fn request_authentication(rule: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: jwt-example, namespace: foo}}\n\
         spec:\n  selector: {{matchLabels: {{app: httpbin}}}}\n  jwtRules:\n  - issuer: \"{ISSUER}\"\n    {rule}\n"
    )
}

const REQUIRE_JWT: &str = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: require-jwt, namespace: foo}\n\
     spec:\n  selector: {matchLabels: {app: httpbin}}\n  action: ALLOW\n  rules:\n  - from: [{source: {requestPrincipals: [\"testing@secure.istio.io/testing@secure.istio.io\"]}}]\n";

async fn jwt_tasks(tokens: Tokens) {
    let addr = free_port();
    let mesh = TestMesh::start(&service(HTTPBIN, 8000, addr)).await;
    mesh.serve(HTTPBIN, addr, tower::service_fn(httpbin)).await;
    let sleep = MeshClient::new(&mesh.mesh(SLEEP).await);
    eventually("httpbin up", || curl(&sleep, None), |(s, _)| *s == 200).await;

    // J1: an invalid token is refused, no token passes, a valid one is verified and, by
    // default, not forwarded.
    mesh.apply(
        "authn.yaml",
        &request_authentication(&format!("jwks: '{}'", tokens.jwks)),
    );
    let (_, body) = eventually(
        "J1 401",
        || curl(&sleep, Some("invalidToken")),
        |(s, _)| *s == 401,
    )
    .await;
    assert_eq!(body, "Jwt is not in the form of Header.Payload.Signature");
    assert_eq!(
        curl(&sleep, None).await,
        (200, "sub=- authorization=false".into())
    );
    assert_eq!(
        curl(&sleep, Some(&tokens.demo)).await,
        (200, format!("sub={ISSUER} authorization=false"))
    );

    // J2: a request principal is required.
    mesh.apply("require.yaml", REQUIRE_JWT);
    let (_, body) = eventually("J2 403", || curl(&sleep, None), |(s, _)| *s == 403).await;
    assert_eq!(body, "RBAC: access denied");
    assert_eq!(curl(&sleep, Some(&tokens.demo)).await.0, 200);
    assert_eq!(curl(&sleep, Some("invalidToken")).await.0, 401);

    // J3: and a group claim.
    mesh.apply(
        "require.yaml",
        &format!(
            "{REQUIRE_JWT}    when: [{{key: \"request.auth.claims[groups]\", values: [group1]}}]\n"
        ),
    );
    eventually(
        "J3 403 for demo.jwt",
        || curl(&sleep, Some(&tokens.demo)),
        |(s, _)| *s == 403,
    )
    .await;
    assert_eq!(curl(&sleep, Some(&tokens.groups)).await.0, 200);
    assert_eq!(mesh.cp.ads().nack_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_jwt_tasks_j1_to_j3_with_a_test_issuer() {
    let issuer = Issuer::new(ISSUER);
    jwt_tasks(Tokens {
        jwks: issuer.jwks(),
        demo: issuer.token(ISSUER, serde_json::json!({"foo": "bar"})),
        groups: issuer.token(
            ISSUER,
            serde_json::json!({"groups": ["group1", "group2"], "scope": ["scope1", "scope2"]}),
        ),
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_jwt_tasks_j1_to_j3_with_istios_sample_tokens() {
    // Istio's own files, unchanged (the test issuer's run covers J1-J3 without them).
    let Some(dir) = mesh_test_support::shared_dir("istio-samples/jwt") else {
        return;
    };
    let read = |f: &str| {
        std::fs::read_to_string(dir.join(f))
            .unwrap_or_else(|e| panic!("{f}: {e}"))
            .trim()
            .to_owned()
    };
    jwt_tasks(Tokens {
        jwks: read("jwks.json").replace('\n', ""),
        demo: read("demo.jwt"),
        groups: read("groups-scope.jwt"),
    })
    .await;
}

/// Serves a JWKS document, counting fetches.
async fn jwks_server(doc: String) -> (std::net::SocketAddr, Arc<AtomicU32>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let fetches = Arc::new(AtomicU32::new(0));
    let counted = fetches.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (doc, counted) = (doc.clone(), counted.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| {
                    counted.fetch_add(1, Ordering::Relaxed);
                    let doc = doc.clone();
                    async move { Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from(doc)))) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, fetches)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_jwks_are_fetched_once_and_cached() {
    let issuer = Issuer::new(ISSUER);
    let (jwks, fetches) = jwks_server(issuer.jwks()).await;
    let addr = free_port();
    let mesh = TestMesh::start(&format!(
        "{}{}",
        service(HTTPBIN, 8000, addr),
        request_authentication(&format!(
            "jwksUri: \"http://127.0.0.1:{}/jwks.json\"",
            jwks.port()
        ))
    ))
    .await;
    mesh.serve(HTTPBIN, addr, tower::service_fn(httpbin)).await;
    let sleep = MeshClient::new(&mesh.mesh(SLEEP).await);
    let token = issuer.token(ISSUER, serde_json::json!({}));
    eventually(
        "verified with fetched keys",
        || curl(&sleep, Some(&token)),
        |(s, _)| *s == 200,
    )
    .await;
    for _ in 0..10 {
        assert_eq!(curl(&sleep, Some(&token)).await.0, 200);
    }
    assert_eq!(curl(&sleep, Some("invalidToken")).await.0, 401);
    assert_eq!(fetches.load(Ordering::Relaxed), 1, "the key set is cached");
    // A token signed by another key is refused by the same cached set.
    let other = Issuer::new(ISSUER).token(ISSUER, serde_json::json!({}));
    assert_eq!(curl(&sleep, Some(&other)).await.0, 401);
}

/// Serves a JWKS document over TLS with `cert`, counting the requests that got through and
/// the handshakes a client abandoned with an alert (it refused the certificate).
async fn https_jwks_server(
    doc: String,
    cert: &mesh_test_support::CertifiedKey,
) -> (std::net::SocketAddr, Arc<AtomicU32>, Arc<AtomicU32>) {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cert.server_config()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let fetches = Arc::new(AtomicU32::new(0));
    let refusals = Arc::new(AtomicU32::new(0));
    let (counted, refused) = (fetches.clone(), refusals.clone());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (doc, counted, acceptor) = (doc.clone(), counted.clone(), acceptor.clone());
            let refused = refused.clone();
            tokio::spawn(async move {
                let tls = match acceptor.accept(stream).await {
                    Ok(tls) => tls,
                    Err(e) => {
                        if e.to_string().contains("alert") {
                            refused.fetch_add(1, Ordering::Relaxed);
                        }
                        return;
                    }
                };
                let svc = hyper::service::service_fn(move |_req| {
                    counted.fetch_add(1, Ordering::Relaxed);
                    let doc = doc.clone();
                    async move { Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from(doc)))) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (addr, fetches, refusals)
}

/// A remote JWKS over `https` is fetched over TLS the mesh verifies: through the cluster a
/// DestinationRule gives TLS (`SIMPLE` with `caCertificates`), the server must hold a
/// certificate from that CA valid for the JWKS host; one that does not (another CA, another
/// name), or a host outside the mesh whose certificate the system's roots do not vouch for,
/// is refused, and the request fails closed (401), as no key can be trusted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_jwks_are_fetched_only_from_a_verified_server() {
    let issuer = Issuer::new(ISSUER);
    let ca = mesh_test_support::TestCa::new("jwks");
    let files = mesh_test_support::TempFiles::new();
    let ca_file = files.write("ca.pem", &ca.root_pem);
    let token = issuer.token(ISSUER, serde_json::json!({}));

    // (server certificate, JWKS host, expected answer)
    let cases = [
        (ca.server(&["jwks.test"]), "jwks.test", 200),
        (ca.server(&["other.test"]), "jwks.test", 401),
        (
            mesh_test_support::TestCa::new("rogue").server(&["jwks.test"]),
            "jwks.test",
            401,
        ),
        // Outside the mesh (no ServiceEntry): the system's roots do not know the test CA.
        (ca.server(&["jwks.test"]), "127.0.0.1", 401),
    ];
    for (cert, host, expected) in cases {
        let (jwks, fetches, refusals) = https_jwks_server(issuer.jwks(), &cert).await;
        let port = jwks.port();
        let entry = format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: jwks, namespace: foo}}\nspec:\n  hosts: [jwks.test]\n  location: MESH_EXTERNAL\n  resolution: STATIC\n  ports: [{{number: {port}, name: http, protocol: HTTP}}]\n  endpoints: [{{address: 127.0.0.1, ports: {{http: {port}}}}}]\n---\n\
             apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: jwks, namespace: foo}}\nspec:\n  host: jwks.test\n  trafficPolicy: {{tls: {{mode: SIMPLE, caCertificates: {}}}}}\n---\n",
            ca_file.display()
        );
        let addr = free_port();
        let mesh = TestMesh::start(&format!(
            "{entry}{}{}",
            service(HTTPBIN, 8000, addr),
            request_authentication(&format!("jwksUri: \"https://{host}:{port}/jwks.json\""))
        ))
        .await;
        mesh.serve(HTTPBIN, addr, tower::service_fn(httpbin)).await;
        let sleep = MeshClient::new(&mesh.mesh(SLEEP).await);
        if expected == 200 {
            eventually(
                "verified with keys fetched over verified TLS",
                || curl(&sleep, Some(&token)),
                |(s, _)| *s == 200,
            )
            .await;
        } else {
            // Served (a token-less request passes), but no key is ever fetched.
            eventually("serving", || curl(&sleep, None), |(s, _)| *s == 200).await;
            for _ in 0..3 {
                assert_eq!(curl(&sleep, Some(&token)).await.0, 401, "{host}");
                tokio::time::sleep(std::time::Duration::from_millis(400)).await;
            }
            assert_eq!(
                fetches.load(Ordering::Relaxed),
                0,
                "no request reached an unverified server"
            );
            assert!(
                refusals.load(Ordering::Relaxed) > 0,
                "{host}: the mesh spoke TLS and refused the certificate (not plaintext)"
            );
        }
    }
}

/// A JWKS server on loopback: answers with `doc` while `healthy`, 503 otherwise, and sends
/// the `Host` of every request it gets.
async fn jwks_origin(
    doc: String,
    healthy: Arc<std::sync::atomic::AtomicBool>,
) -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (seen, hosts) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (doc, up, seen) = (doc.clone(), healthy.clone(), seen.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: http::Request<_>| {
                    let host = req.headers().get("host").and_then(|h| h.to_str().ok());
                    let _ = seen.send(host.unwrap_or("").to_owned());
                    let mut rsp = http::Response::new(Full::new(Bytes::from(doc.clone())));
                    if !up.load(Ordering::Relaxed) {
                        *rsp.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
                    }
                    async move { Ok::<_, Infallible>(rsp) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, hosts)
}

/// Serves httpbin behind an Envoy inbound listener whose one provider fetches keys as
/// `remote_jwks` says, with `clusters` as the static clusters; returns its address.
async fn serve_with_remote_jwks(
    remote_jwks: serde_json::Value,
    clusters: serde_json::Value,
) -> std::net::SocketAddr {
    use super::inbound_filter_chains::{inbound, mesh_builder};
    let jwt = serde_json::json!({"name": "envoy.filters.http.jwt_authn", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
        "providers": {"p": {"issuer": ISSUER, "remote_jwks": remote_jwks}},
        "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "p"}}]}});
    let hcm = serde_json::json!({"name": "hcm", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "inbound",
        "route_config": {"name": "r", "virtual_hosts": [{"name": "all", "domains": ["*"],
            "routes": [{"match": {"prefix": "/"}, "non_forwarding_action": {}}]}]},
        "http_filters": [jwt, {"name": "router", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}});
    let socket = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let mut resources = inbound(addr, serde_json::json!([{"filters": [hcm]}]));
    resources["static_resources"]["clusters"] = clusters;
    let ca = mesh_test_support::TestCa::new("jwks");
    let mesh = mesh_builder(&resources, &ca)
        .unwrap()
        .build()
        .await
        .unwrap();
    tokio::spawn(async move {
        mesh_tower::serve_listener(&mesh, socket, tower::service_fn(httpbin)).await
    });
    addr
}

/// A STATIC cluster `name` with one endpoint, `addr`.
fn static_cluster(name: &str, addr: std::net::SocketAddr) -> serde_json::Value {
    serde_json::json!({"name": name, "type": "STATIC",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {
            "address": {"socket_address": {"address": addr.ip().to_string(), "port_value": addr.port()}}}}]}]}})
}

/// `GET /` with a bearer token; the status.
async fn get_with_token(addr: std::net::SocketAddr, token: &str) -> Result<u16, String> {
    let bearer = format!("Bearer {token}");
    mesh_test_support::http::get(addr, "/", &[("host", "app"), ("authorization", &bearer)])
        .await
        .map(|(s, _)| s)
}

/// How stale remote keys may get is bounded: with a 1 s `cache_duration`, keys serve while
/// fresh, then while stale (one more `cache_duration`, refresh failing), and then no longer:
/// tokens fail closed (401) until the JWKS server answers again, and then pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_keys_stop_verifying_after_a_second_cache_duration() {
    use std::sync::atomic::AtomicBool;
    let issuer = Issuer::new(ISSUER);
    let healthy = Arc::new(AtomicBool::new(true));
    let (jwks, _) = jwks_origin(issuer.jwks(), healthy.clone()).await;
    let addr = serve_with_remote_jwks(
        serde_json::json!({
            "http_uri": {"uri": format!("http://{jwks}/jwks.json"), "cluster": "jwks", "timeout": "1s"},
            "cache_duration": "1s"}),
        serde_json::json!([static_cluster("jwks", jwks)]),
    )
    .await;
    let token = issuer.token(ISSUER, serde_json::json!({}));
    let get = || get_with_token(addr, &token);
    assert_eq!(get().await, Ok(200), "fresh keys");
    healthy.store(false, Ordering::Relaxed);
    tokio::time::sleep(std::time::Duration::from_millis(1300)).await;
    assert_eq!(
        get().await,
        Ok(200),
        "stale keys serve while the refresh fails"
    );
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    assert_eq!(get().await, Ok(401), "keys too old to use: fail closed");
    healthy.store(true, Ordering::Relaxed);
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(get().await, Ok(200), "fetched again");
}

/// Keys come from the cluster `http_uri.cluster` names, as Envoy fetches them, whatever host
/// the URI names (which only becomes the request's `Host`); a cluster that does not exist
/// fails closed, and nothing falls back to reaching the URI's host, even when that host would
/// serve the keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_jwks_are_fetched_from_the_cluster_http_uri_names() {
    use std::sync::atomic::AtomicBool;
    let issuer = Issuer::new(ISSUER);
    let token = issuer.token(ISSUER, serde_json::json!({}));
    let up = Arc::new(AtomicBool::new(true));
    let (named, mut named_hosts) = jwks_origin(issuer.jwks(), up.clone()).await;
    let (direct, mut direct_hosts) = jwks_origin(issuer.jwks(), up).await;

    // The URI names a host no resolver knows; the cluster reaches the keys.
    let addr = serve_with_remote_jwks(
        serde_json::json!({"http_uri": {"uri": "http://keys.invalid/jwks.json", "cluster": "idp", "timeout": "1s"}}),
        serde_json::json!([static_cluster("idp", named)]),
    )
    .await;
    assert_eq!(get_with_token(addr, &token).await, Ok(200));
    assert_eq!(named_hosts.try_recv().as_deref(), Ok("keys.invalid"));
    assert!(named_hosts.try_recv().is_err(), "fetched once");

    // The URI names a server with good keys, but the cluster does not exist: no fetch.
    let addr = serve_with_remote_jwks(
        serde_json::json!({"http_uri": {"uri": format!("http://{direct}/jwks.json"), "cluster": "missing", "timeout": "1s"}}),
        serde_json::json!([]),
    )
    .await;
    for _ in 0..3 {
        assert_eq!(get_with_token(addr, &token).await, Ok(401));
    }
    assert!(direct_hosts.try_recv().is_err(), "never fetched");
}
