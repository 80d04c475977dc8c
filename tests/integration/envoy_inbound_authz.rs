//! Envoy in front of a workload, configured by mesh-control: the AuthorizationPolicy → RBAC
//! generation is enforced by a real RBAC engine as Istio's authz-http task expects.

use std::time::Duration;

use super::meshed::free_port;
use mesh_test_support::envoy::{Envoy, ads_bootstrap};
use mesh_test_support::{Backend, http};

const SERVICE: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: details}\nspec:\n  ports: [{port: 9080, name: http}]\n  selector: {app: details}\n";

/// Waits until `method path` through Envoy's inbound listener answers `status`.
async fn expect(
    inbound: std::net::SocketAddr,
    method: &str,
    path: &str,
    status: u16,
    envoy: &Envoy,
) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let got = http::request(inbound, method, path, &[("host", "details:9080")]).await;
        if let Ok((s, body)) = &got
            && *s == status
        {
            return body.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{method} {path}: wanted {status}, got {got:?}; Envoy log:\n{}",
            envoy.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn envoy_enforces_generated_authorization_policies() {
    let app = Backend::start("details-v1").await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("service.yaml"), SERVICE).unwrap();
    let (cp, xds) = super::serve_control_plane(dir.path()).await;
    let inbound = free_port();
    let bootstrap = ads_bootstrap(
        xds,
        "sidecar~127.0.0.1~details-v1.default~default.svc.cluster.local",
        serde_json::json!({"NAMESPACE": "default", "LABELS": {"app": "details", "version": "v1"},
                           "MESH_INBOUND_ADDR": inbound.to_string(), "MESH_APP_ADDR": app.addr().to_string()}),
    );
    let envoy = Envoy::start(&bootstrap).await;
    let apply = |yaml: &str| {
        std::fs::write(dir.path().join("policy.yaml"), yaml).unwrap();
        cp.reload().unwrap_or_else(|e| panic!("{e:?}"));
    };

    // No policy: everything reaches the workload.
    assert_eq!(
        expect(inbound, "GET", "/details/0", 200, &envoy).await,
        "details-v1"
    );
    assert_eq!(
        expect(inbound, "POST", "/details/0", 200, &envoy).await,
        "details-v1"
    );

    // A1: allow-nothing denies everything.
    apply(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: allow-nothing, namespace: default}\nspec: {}\n",
    );
    assert_eq!(
        expect(inbound, "GET", "/details/0", 403, &envoy).await,
        "RBAC: access denied"
    );

    // A2-style: allow GET only.
    let viewer = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: details-viewer, namespace: default}\nspec:\n  selector: {matchLabels: {app: details}}\n  rules: [{to: [{operation: {methods: [GET]}}]}]\n";
    apply(&format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: allow-nothing, namespace: default}}\nspec: {{}}\n---\n{viewer}"
    ));
    assert_eq!(
        expect(inbound, "GET", "/details/0", 200, &envoy).await,
        "details-v1"
    );
    expect(inbound, "POST", "/details/0", 403, &envoy).await;

    // DENY is evaluated before ALLOW.
    apply(&format!(
        "{viewer}---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: no-admin, namespace: default}}\nspec:\n  action: DENY\n  rules: [{{to: [{{operation: {{paths: [\"/admin*\"]}}}}]}}]\n"
    ));
    expect(inbound, "GET", "/admin/users", 403, &envoy).await;
    expect(inbound, "GET", "/details/0", 200, &envoy).await;
    assert_eq!(
        cp.ads().nack_count(),
        0,
        "Envoy NACKed; log:\n{}",
        envoy.log()
    );
}

#[tokio::test]
async fn envoy_enforces_custom_policies_through_the_mesh_configs_ext_authz_provider() {
    let app = Backend::start("details-v1").await;
    let authz = mesh_test_support::authz::Authorizer::http().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("service.yaml"), SERVICE).unwrap();
    std::fs::write(
        dir.path().join("ext-authz.yaml"),
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: ext-authz}}\nspec:\n  ports: [{{port: 8000, name: http}}]\n  selector: {{app: ext-authz}}\n---\n\
             apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: ext-authz}}\nspec: {{address: 127.0.0.1, ports: {{http: {}}}, labels: {{app: ext-authz}}}}\n---\n\
             apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: istio, namespace: istio-system}}\ndata:\n  mesh: |-\n    extensionProviders:\n    - name: sample-ext-authz-http\n      envoyExtAuthzHttp:\n        service: ext-authz.default.svc.cluster.local\n        port: 8000\n        includeRequestHeadersInCheck: [x-ext-authz]\n        headersToDownstreamOnDeny: [x-ext-authz-check-result]\n---\n\
             apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: ext-authz, namespace: default}}\nspec:\n  selector: {{matchLabels: {{app: details}}}}\n  action: CUSTOM\n  provider: {{name: sample-ext-authz-http}}\n  rules: [{{to: [{{operation: {{paths: [\"/headers\"]}}}}]}}]\n",
            authz.addr.port()
        ),
    )
    .unwrap();
    let (cp, xds) = super::serve_control_plane(dir.path()).await;
    let inbound = free_port();
    let bootstrap = ads_bootstrap(
        xds,
        "sidecar~127.0.0.1~details-v1.default~default.svc.cluster.local",
        serde_json::json!({"NAMESPACE": "default", "LABELS": {"app": "details", "version": "v1"},
                           "MESH_INBOUND_ADDR": inbound.to_string(), "MESH_APP_ADDR": app.addr().to_string()}),
    );
    let envoy = Envoy::start(&bootstrap).await;

    // Selected by the CUSTOM policy, no allow header: the authorizer's 403 reaches the client.
    assert_eq!(
        expect(inbound, "GET", "/headers", 403, &envoy).await,
        "denied by ext_authz"
    );
    let got = http::request(
        inbound,
        "GET",
        "/headers",
        &[("host", "details:9080"), ("x-ext-authz", "allow")],
    )
    .await
    .unwrap();
    assert_eq!(
        got,
        (200, "details-v1".to_owned()),
        "allowed by the authorizer"
    );
    // Not selected: never checked.
    let before = authz.checks();
    assert_eq!(
        expect(inbound, "GET", "/details/0", 200, &envoy).await,
        "details-v1"
    );
    assert_eq!(authz.checks(), before, "only selected requests are checked");
    assert_eq!(
        cp.ads().nack_count(),
        0,
        "Envoy NACKed; log:\n{}",
        envoy.log()
    );
}

#[tokio::test]
async fn custom_policies_with_a_missing_provider_fail_closed() {
    let app = Backend::start("details-v1").await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("service.yaml"), SERVICE).unwrap();
    std::fs::write(
        dir.path().join("policy.yaml"),
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: ext-authz, namespace: default}\nspec:\n  action: CUSTOM\n  provider: {name: nowhere}\n  rules: [{to: [{operation: {paths: [\"/headers\"]}}]}]\n",
    )
    .unwrap();
    let (cp, xds) = super::serve_control_plane(dir.path()).await;
    let inbound = free_port();
    let bootstrap = ads_bootstrap(
        xds,
        "sidecar~127.0.0.1~details-v1.default~default.svc.cluster.local",
        serde_json::json!({"NAMESPACE": "default", "LABELS": {"app": "details"},
                           "MESH_INBOUND_ADDR": inbound.to_string(), "MESH_APP_ADDR": app.addr().to_string()}),
    );
    let envoy = Envoy::start(&bootstrap).await;
    expect(inbound, "GET", "/headers", 403, &envoy).await;
    expect(inbound, "GET", "/details/0", 200, &envoy).await;
    assert_eq!(cp.ads().nack_count(), 0);
}
