//! AuthorizationPolicy CUSTOM on a meshed server: mesh-control turns the policy and the mesh
//! config's extension providers into marking RBAC rules and an ext_authz filter, and
//! `mesh_tower::serve` asks the authorizer, over HTTP or gRPC, through the mesh, only about
//! the requests the policy selects; an authorizer that cannot answer fails closed unless the
//! provider says `failOpen`.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::Full;
use mesh_test_support::authz::Authorizer;
use mesh_tower::MeshClient;

use super::meshed::{DETAILS, TestMesh, Workload, eventually, free_port, service};

const SLEEP: Workload<'static> = Workload {
    app: "sleep",
    namespace: "default",
    service_account: "sleep",
};

/// Answers with the check result the authorizer attached to the request, if any.
async fn app(
    req: http::Request<hyper::body::Incoming>,
) -> Result<http::Response<Full<Bytes>>, Infallible> {
    let seen = req
        .headers()
        .get("x-ext-authz-check-result")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("unchecked")
        .to_owned();
    Ok(http::Response::new(Full::new(Bytes::from(seen))))
}

fn authorizer_service(name: &str, port_name: &str, addr: std::net::SocketAddr) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  ports: [{{port: 8000, name: {port_name}}}]\n  selector: {{app: {name}}}\n---\n\
         apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: {name}}}\nspec: {{address: 127.0.0.1, ports: {{{port_name}: {}}}, labels: {{app: {name}}}}}\n---\n",
        addr.port()
    )
}

const PROVIDERS: &str = concat!(
    "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: istio, namespace: istio-system}\ndata:\n  mesh: |-\n    extensionProviders:\n",
    "    - name: http-authz\n      envoyExtAuthzHttp:\n        service: ext-authz-http.default.svc.cluster.local\n        port: 8000\n",
    "        includeRequestHeadersInCheck: [x-ext-authz]\n        headersToUpstreamOnAllow: [x-ext-authz-check-result]\n",
    "        headersToDownstreamOnDeny: [x-ext-authz-check-result]\n",
    "    - name: grpc-authz\n      envoyExtAuthzGrpc:\n        service: ext-authz-grpc.default.svc.cluster.local\n        port: 8000\n",
    "    - name: dead-authz\n      envoyExtAuthzHttp:\n        service: ext-authz-dead.default.svc.cluster.local\n        port: 8000\n",
    "    - name: dead-open-authz\n      envoyExtAuthzHttp:\n        service: ext-authz-dead.default.svc.cluster.local\n        port: 8000\n        failOpen: true\n---\n",
);

fn custom(provider: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: ext-authz, namespace: default}}\n\
         spec:\n  selector: {{matchLabels: {{app: details}}}}\n  action: CUSTOM\n  provider: {{name: {provider}}}\n  rules: [{{to: [{{operation: {{paths: [\"/headers\"]}}}}]}}]\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_policies_ask_the_authorizer_over_http_and_grpc() {
    let http_authz = Authorizer::http().await;
    let grpc_authz = Authorizer::grpc().await;
    let details = free_port();
    let mesh = TestMesh::start(&format!(
        "{}{}{}{}{PROVIDERS}\
         apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: details}}\nspec: {{host: details, trafficPolicy: {{tls: {{mode: ISTIO_MUTUAL}}}}}}\n",
        service(DETAILS, 9080, details),
        authorizer_service("ext-authz-http", "http", http_authz.addr),
        authorizer_service("ext-authz-grpc", "grpc", grpc_authz.addr),
        authorizer_service("ext-authz-dead", "http", free_port()),
    ))
    .await;
    mesh.apply("policy.yaml", &custom("http-authz"));
    mesh.serve(DETAILS, details, tower::service_fn(app)).await;
    let sleep = MeshClient::new(&mesh.mesh(SLEEP).await);
    let call = |path: &'static str, allow: bool| {
        let sleep = sleep.clone();
        async move {
            let headers: &[(&str, &str)] = if allow {
                &[("x-ext-authz", "allow")]
            } else {
                &[]
            };
            let a = super::get(&sleep, &format!("http://details:9080{path}"), headers).await;
            let seen = a.header("x-ext-authz-check-result").to_owned();
            (a.status, a.body, seen)
        }
    };

    // HTTP: the authorizer's denial reaches the caller, with the header it may see.
    let denied = eventually(
        "HTTP denial",
        || call("/headers", false),
        |(s, _, _)| *s == 403,
    )
    .await;
    assert_eq!(denied, (403, "denied by ext_authz".into(), "denied".into()));
    // An allowed request reaches the app with the header the authorizer added.
    assert_eq!(call("/headers", true).await.1, "allowed");
    let last = http_authz.last().expect("a check");
    assert_eq!(
        (last.method.as_str(), last.path.as_str()),
        ("GET", "/headers")
    );
    // Paths the policy does not select are never checked.
    let before = http_authz.checks();
    assert_eq!(call("/details/0", false).await.1, "unchecked");
    assert_eq!(http_authz.checks(), before);

    // gRPC: the same decisions; the authorizer learns the caller's SPIFFE identity.
    mesh.apply("policy.yaml", &custom("grpc-authz"));
    eventually(
        "the gRPC authorizer is asked",
        || call("/headers", true),
        |_| grpc_authz.checks() > 0,
    )
    .await;
    assert_eq!(call("/headers", true).await.1, "allowed");
    assert_eq!(
        grpc_authz.last().expect("a gRPC check").principal,
        "spiffe://cluster.local/ns/default/sa/sleep"
    );
    assert_eq!(
        call("/headers", false).await,
        (403, "denied by ext_authz".into(), "denied".into())
    );

    // An authorizer nobody answers for: closed by default, open when the provider says so.
    mesh.apply("policy.yaml", &custom("dead-authz"));
    let (_, body, _) = eventually(
        "fail closed",
        || call("/headers", true),
        |(s, b, _)| *s == 403 && b.is_empty(),
    )
    .await;
    assert_eq!(body, "");
    mesh.apply("policy.yaml", &custom("dead-open-authz"));
    eventually(
        "fail open",
        || call("/headers", false),
        |(s, b, _)| *s == 200 && b == "unchecked",
    )
    .await;
    assert_eq!(mesh.cp.ads().nack_count(), 0);
}
