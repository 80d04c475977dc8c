//! Inbound listeners for proxyless servers: PeerAuthentication picks the filter chains,
//! AuthorizationPolicy becomes RBAC filters (DENY before ALLOW), as istiod builds them. Read back
//! through our client's validated model.

use std::time::Duration;

use mesh_core::model::*;
use mesh_core::xds::{Resource, ResourceStatus, ResourceType};

const INBOUND: &str = "xds.istio.io/grpc/lds/inbound/127.0.0.1:19081";

/// Istio's authz-http task policies (A1-A4), the JWT task's (J2, J3), and one DENY rule.
const POLICIES: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: allow-nothing, namespace: default }
spec: {}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: details-viewer, namespace: default }
spec:
  selector: { matchLabels: { app: details } }
  action: ALLOW
  rules:
  - from: [{ source: { principals: ["cluster.local/ns/default/sa/bookinfo-productpage"] } }]
    to: [{ operation: { methods: ["GET"] } }]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: ratings-viewer, namespace: default }
spec:
  selector: { matchLabels: { app: ratings } }
  rules: [{ from: [{ source: { principals: ["cluster.local/ns/default/sa/bookinfo-reviews"] } }] }]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: require-jwt, namespace: default }
spec:
  selector: { matchLabels: { app: details } }
  rules:
  - from: [{ source: { requestPrincipals: ["testing@secure.istio.io/testing@secure.istio.io"] } }]
    when: [{ key: "request.auth.claims[groups]", values: ["group1"] }]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: no-delete, namespace: default }
spec:
  action: DENY
  rules: [{ to: [{ operation: { methods: ["DELETE"], notPaths: ["/public/*"] } }] }]
"#;

async fn inbound(extra: &str) -> std::sync::Arc<Listener> {
    mesh_test_support::trace_init();
    let dir = tempfile::tempdir().unwrap();
    let services = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../mesh-control/testdata/bookinfo/services.yaml");
    std::fs::copy(services, dir.path().join("services.yaml")).unwrap();
    std::fs::write(
        dir.path().join("policies.yaml"),
        format!("{POLICIES}---\n{extra}"),
    )
    .unwrap();
    let (cp, addr) = super::serve_control_plane(dir.path()).await;
    let node = serde_json::json!({"id": "sidecar~127.0.0.1~details-v1.default~default.svc.cluster.local",
                                  "metadata": {"NAMESPACE": "default", "LABELS": {"app": "details", "version": "v1"}}});
    let mesh = super::mesh_at(addr, node, serde_json::json!({"server_listener_resource_name_template": "xds.istio.io/grpc/lds/inbound/%s"})).await;
    assert_eq!(
        mesh.bootstrap()
            .server_listener_name("127.0.0.1:19081".parse().unwrap())
            .as_deref(),
        Some(INBOUND)
    );
    let mut w = mesh
        .xds_client()
        .unwrap()
        .watch(ResourceType::Listener, INBOUND)
        .await
        .unwrap();
    let st = tokio::time::timeout(
        Duration::from_secs(5),
        w.wait_for(|s| s.status != ResourceStatus::Requested),
    )
    .await
    .unwrap();
    assert_eq!(cp.ads().nack_count(), 0, "{:?}", st.error);
    match st.value {
        Some(Resource::Listener(l)) => l,
        other => panic!("no inbound listener: {other:?} {:?}", st.error),
    }
}

fn socket(l: &Listener) -> &SocketListener {
    match &l.kind {
        ListenerKind::Socket(s) => s,
        ListenerKind::Api(_) => panic!("an inbound listener owns a socket"),
    }
}

fn http(chain: &FilterChain) -> &HttpConnectionManager {
    match &chain.filter {
        NetworkFilter::Http(h) => h,
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn authorization_policies_become_rbac_filters_deny_first() {
    let l = inbound("").await;
    let s = socket(&l);
    assert_eq!(s.address, Some("127.0.0.1:19081".parse().unwrap()));
    let h = http(&s.filter_chains[0]);
    let kinds: Vec<&str> = h.http_filters.iter().map(|f| f.config.kind()).collect();
    assert_eq!(
        kinds,
        ["rbac", "rbac", "router"],
        "DENY, then ALLOW, then the router"
    );
    let rules = |i: usize| match &h.http_filters[i].config {
        FilterConfig::Rbac(r) => r.rules.clone().expect("enforced rules"),
        other => panic!("{other:?}"),
    };
    let deny = rules(0);
    assert_eq!(deny.action, RbacAction::Deny);
    assert_eq!(
        &*deny.policies[0].0,
        "ns[default]-policy[no-delete]-rule[0]"
    );
    let allow = rules(1);
    assert_eq!(allow.action, RbacAction::Allow);
    let names: Vec<&str> = allow.policies.iter().map(|(n, _)| &**n).collect();
    assert_eq!(
        names,
        [
            "ns[default]-policy[details-viewer]-rule[0]",
            "ns[default]-policy[require-jwt]-rule[0]"
        ],
        "allow-nothing adds no rule, ratings-viewer selects another workload"
    );
    // details-viewer: GET from productpage's SPIFFE identity.
    let viewer = &allow.policies[0].1;
    let Principal::And(ids) = &viewer.principals[0] else {
        panic!()
    };
    let Principal::Or(sources) = &ids[0] else {
        panic!()
    };
    let Principal::And(fields) = &sources[0] else {
        panic!()
    };
    let Principal::Or(principals) = &fields[0] else {
        panic!()
    };
    assert!(
        matches!(&principals[0], Principal::Authenticated(Some(m)) if m.matches("spiffe://cluster.local/ns/default/sa/bookinfo-productpage") && !m.matches("spiffe://cluster.local/ns/default/sa/other"))
    );
    let Permission::And(perms) = &viewer.permissions[0] else {
        panic!()
    };
    let Permission::Or(ops) = &perms[0] else {
        panic!()
    };
    let Permission::And(op_fields) = &ops[0] else {
        panic!()
    };
    let Permission::Or(methods) = &op_fields[0] else {
        panic!()
    };
    assert!(matches!(&methods[0], Permission::Header(h) if &*h.name == ":method"));
    // require-jwt: the request principal and the groups claim come from JWT metadata.
    let jwt = &allow.policies[1].1;
    let Principal::And(ids) = &jwt.principals[0] else {
        panic!()
    };
    assert_eq!(ids.len(), 2, "the source and the when-condition");
    let Principal::And(claim) = &ids[1] else {
        panic!()
    };
    let Principal::Or(values) = &claim[0] else {
        panic!()
    };
    assert!(
        matches!(&values[0], Principal::Metadata(m) if &*m.filter == "istio_authn" && m.path.len() == 2 && matches!(&m.value, ValueMatch::ListAny(_)))
    );
}

#[tokio::test]
async fn peer_authentication_picks_the_filter_chains() {
    // No PeerAuthentication: PERMISSIVE, mTLS and plaintext on one port.
    let l = inbound("").await;
    let chains = &socket(&l).filter_chains;
    assert_eq!(chains.len(), 2);
    assert_eq!(chains[0].matcher.transport_protocol.as_deref(), Some("tls"));
    assert!(
        chains[0]
            .tls
            .as_ref()
            .is_some_and(|t| t.require_client_certificate)
    );
    assert_eq!(
        chains[1].matcher.transport_protocol.as_deref(),
        Some("raw_buffer")
    );
    assert!(chains[1].tls.is_none());

    // Mesh-wide STRICT: one chain, client certificates required.
    let strict = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: istio-system}\nspec: {mtls: {mode: STRICT}}\n";
    let l = inbound(strict).await;
    let chains = &socket(&l).filter_chains;
    assert_eq!(chains.len(), 1);
    let tls = chains[0].tls.as_ref().expect("mTLS");
    assert!(tls.require_client_certificate);
    assert_eq!(
        tls.identity,
        CertSource::Provider {
            instance: "default".into(),
            certificate_name: "default".into()
        }
    );

    // A workload's port-level setting beats the mesh's.
    let port_level = format!(
        "{strict}---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: details, namespace: default}}\nspec:\n  selector: {{matchLabels: {{app: details}}}}\n  mtls: {{mode: STRICT}}\n  portLevelMtls: {{19081: {{mode: DISABLE}}}}\n"
    );
    let l = inbound(&port_level).await;
    let chains = &socket(&l).filter_chains;
    assert_eq!(chains.len(), 1);
    assert!(chains[0].tls.is_none(), "port 19081 is DISABLE");
}

#[tokio::test]
async fn request_authentication_puts_jwt_before_rbac() {
    // Istio's authz-jwt task (J1), with the sample's issuer and an inline key set.
    let ra = r#"apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: { name: jwt-example, namespace: default }
spec:
  selector: { matchLabels: { app: details } }
  jwtRules:
  - issuer: testing@secure.istio.io
    jwks: '{"keys":[{"kty":"RSA","e":"AQAB","n":"xAE7eB6qugXyCAG3yhh7pkDkT65pHymX-P7KfIupjf59vsdo91bSP9C8H07pSAGQO1MV_xFj9VswgsCg4R6otmg5PV2He95lZdHtOcU5DXIg_pbhLdKXbi66GlVeK6ABZOUW3WYtnNHD-91gVuoeJT_DwtGGcp4ignkgXfkiEm4sw-4sfb4qdt5oLbyVpmW6x9cfa7vs2WTfURiCrBoUqgBo_-4WTiULmmHSGZHOjzwa8WtrtOQGsAFjIbno85jp6MnGGGZPYZbDAa_b3y5u-YpW7ypZrvD8BgtKVjgtQgZhLAGezMt0ua3DRrWnKqTZ0BJ_EyxOGuHJrLsn00fnMQ"}]}'
    forwardOriginalToken: true
    outputClaimToHeaders: [{ header: x-jwt-sub, claim: sub }]
"#;
    let l = inbound(ra).await;
    let h = http(&socket(&l).filter_chains[0]);
    let kinds: Vec<&str> = h.http_filters.iter().map(|f| f.config.kind()).collect();
    assert_eq!(
        kinds,
        ["jwt_authn", "rbac", "rbac", "router"],
        "JWT before RBAC"
    );
    let FilterConfig::Jwt(jwt) = &h.http_filters[0].config else {
        panic!()
    };
    let (name, p) = &jwt.providers[0];
    assert_eq!(&**name, "origins-0");
    assert_eq!(&*p.issuer, "testing@secure.istio.io");
    assert_eq!(
        p.payload_in_metadata.as_deref(),
        Some("testing@secure.istio.io"),
        "RBAC reads the payload under the issuer"
    );
    assert!(p.forward);
    assert_eq!(p.claim_to_headers[0].1, "x-jwt-sub");
    assert!(matches!(&p.jwks, JwksSource::Local(keys) if keys.contains("\"kty\":\"RSA\"")));
    // A missing token passes; a present one must verify with a provider.
    let JwtRequirement::Any(reqs) = &jwt.rules[0].1 else {
        panic!()
    };
    assert!(matches!(&reqs[0], JwtRequirement::Provider(n) if &**n == "origins-0"));
    assert!(matches!(reqs[1], JwtRequirement::AllowMissing));
}

#[tokio::test]
async fn custom_policies_become_marking_rbac_then_ext_authz() {
    let l = inbound(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: istio, namespace: istio-system}\ndata:\n  mesh: |-\n    extensionProviders:\n    - name: authz-grpc\n      envoyExtAuthzGrpc: {service: details, port: 9080, timeout: 0.5s, failOpen: true}\n---\n\
         apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: ext, namespace: default}\nspec:\n  action: CUSTOM\n  provider: {name: authz-grpc}\n  rules: [{to: [{operation: {paths: [\"/admin\"]}}]}]\n",
    )
    .await;
    let h = http(&socket(&l).filter_chains[0]);
    let kinds: Vec<&str> = h.http_filters.iter().map(|f| f.config.kind()).collect();
    assert_eq!(
        kinds,
        ["rbac", "ext_authz", "rbac", "rbac", "router"],
        "CUSTOM first, then DENY, then ALLOW"
    );
    let FilterConfig::Rbac(mark) = &h.http_filters[0].config else {
        panic!()
    };
    assert!(mark.rules.is_none(), "marks only");
    assert_eq!(&*mark.shadow_stat_prefix, "istio_ext_authz_");
    assert_eq!(
        &*mark.shadow_rules.as_ref().unwrap().policies[0].0,
        "istio-ext-authz-ns[default]-policy[ext]-rule[0]"
    );
    let FilterConfig::ExtAuthz(e) = &h.http_filters[1].config else {
        panic!()
    };
    assert!(matches!(&e.service, ExtAuthzService::Grpc { cluster, .. }
        if &**cluster == "outbound|9080||details.default.svc.cluster.local"));
    assert_eq!(e.timeout, Duration::from_millis(500));
    assert!(e.failure_mode_allow);
    let m = e
        .enabled_metadata
        .as_ref()
        .expect("enabled by the marking rules");
    assert_eq!(&*m.filter, "envoy.filters.http.rbac");
    assert_eq!(&*m.path[0], "istio_ext_authz_shadow_effective_policy_id");
}

/// The same configuration generates the same bytes each time: prost writes a protobuf map
/// (RBAC `policies`, JWT `providers`) in its `HashMap`'s order, and a listener whose bytes
/// changed with every snapshot would be pushed to every workload with every snapshot.
#[test]
fn an_unchanged_inbound_listener_encodes_the_same_bytes_each_time() {
    let dir = tempfile::tempdir().unwrap();
    let services = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../mesh-control/testdata/bookinfo/services.yaml");
    std::fs::copy(services, dir.path().join("services.yaml")).unwrap();
    let jwt = "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: { name: jwt, namespace: default }\nspec:\n  jwtRules:\n  - { issuer: a, jwks: '{\"keys\":[]}' }\n  - { issuer: b, jwks: '{\"keys\":[]}' }\n  - { issuer: c, jwks: '{\"keys\":[]}' }\n";
    std::fs::write(
        dir.path().join("policies.yaml"),
        format!("{POLICIES}---\n{jwt}"),
    )
    .unwrap();
    let node = mesh_control::generate::NodeInfo {
        id: "details".into(),
        namespace: "default".into(),
        labels: [("app".to_owned(), "details".to_owned())].into(),
        ..Default::default()
    };
    let names = [INBOUND.to_owned()];
    let generate = |version| {
        let snapshot = mesh_control::control::load(dir.path(), version).expect("loads");
        let listeners = snapshot.resources(&node, mesh_core::xds::type_urls::LISTENER, &names);
        assert_eq!(listeners.len(), 1);
        listeners[0].value.clone()
    };
    let first = generate(1);
    for version in 2..6 {
        assert!(
            generate(version) == first,
            "snapshot {version} encodes differently"
        );
    }
}
