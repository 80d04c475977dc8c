//! Authorization on HTTP traffic (A1-A4) and mutual TLS on every hop (P4).

use super::{Task, task};

fn viewer(name: &str, app: &str, principal: Option<&str>) -> String {
    let from = principal.map_or(String::new(), |p| {
        format!("  - from: [{{source: {{principals: [\"{p}\"]}}}}]\n    to: [{{operation: {{methods: [GET]}}}}]\n")
    });
    let rules = if from.is_empty() {
        "  - to: [{operation: {methods: [GET]}}]\n".to_owned()
    } else {
        from
    };
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: default}}\n\
         spec:\n  selector: {{matchLabels: {{app: {app}}}}}\n  action: ALLOW\n  rules:\n{rules}"
    )
}

async fn authz_http(t: Task) {
    t.apply("virtual-service-reviews-v3.yaml").await;
    t.page_until(None, "reviews on v3", |p| p.stars() == Some("red"))
        .await;
    // A1: allow-nothing.
    t.apply_yaml(
        "allow-nothing.yaml",
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: allow-nothing, namespace: default}\nspec: {}\n",
    )
    .await;
    let p = t.page_until(None, "A1", |p| p.status == 403).await;
    assert_eq!(p.body, "RBAC: access denied");
    // A2: anyone may GET the page; its calls are still denied.
    t.apply_yaml(
        "productpage-viewer.yaml",
        &viewer("productpage-viewer", "productpage", None),
    )
    .await;
    let p = t.page_until(None, "A2", |p| p.status == 200).await;
    for text in [
        "William Shakespeare",
        "Error fetching product details",
        "Error fetching product reviews",
    ] {
        assert!(p.has(text), "A2 lacks {text:?}: {p:?}");
    }
    // A3: details and reviews admit productpage; ratings still denies reviews.
    let pp = "cluster.local/ns/default/sa/bookinfo-productpage";
    t.apply_yaml(
        "details-viewer.yaml",
        &viewer("details-viewer", "details", Some(pp)),
    )
    .await;
    t.apply_yaml(
        "reviews-viewer.yaml",
        &viewer("reviews-viewer", "reviews", Some(pp)),
    )
    .await;
    let p = t
        .page_until(None, "A3", |p| {
            p.has("Book Details") && p.has("Book Reviews")
        })
        .await;
    assert!(
        p.has("Ratings service is currently unavailable"),
        "A3: {p:?}"
    );
    // A4: ratings admits reviews.
    t.apply_yaml(
        "ratings-viewer.yaml",
        &viewer(
            "ratings-viewer",
            "ratings",
            Some("cluster.local/ns/default/sa/bookinfo-reviews"),
        ),
    )
    .await;
    let p = t.page_until(None, "A4", |p| p.stars() == Some("red")).await;
    assert!(p.has("Book Details") && p.has("Book Reviews"), "{p:?}");
}
task!(
    a1_to_a4_authorization_on_http_traffic,
    a1_to_a4_authorization_on_http_traffic_istio,
    authz_http
);

async fn every_hop_mtls(t: Task) {
    // STRICT for the namespace, productpage left PERMISSIVE: it is the edge the reader's
    // browser reaches in plaintext, as an ingress gateway would be.
    t.apply_yaml(
        "strict.yaml",
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: default}\nspec: {mtls: {mode: STRICT}}\n---\n\
         apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: productpage, namespace: default}\nspec:\n  selector: {matchLabels: {app: productpage}}\n  mtls: {mode: PERMISSIVE}\n",
    )
    .await;
    t.apply("virtual-service-reviews-v3.yaml").await;
    let p = t
        .page_until(None, "P4 page", |p| p.stars() == Some("red"))
        .await;
    assert!(p.has("Book Details"), "{p:?}");
    // Every server saw its callers over Istio mutual TLS, with their identities.
    for (i, w) in mesh_bookinfo::WORKLOADS.iter().enumerate().skip(1) {
        if w.name == "reviews-v1" || w.name == "reviews-v2" {
            continue; // v3 takes reviews' traffic here
        }
        let text = mesh_tower::telemetry::Telemetry::of(&t.bookinfo.meshes()[i]).prometheus();
        let inbound: Vec<&str> = text
            .lines()
            .filter(|l| {
                l.starts_with("istio_requests_total{reporter=\"destination\"")
                    && l.contains("response_code=\"200\"")
            })
            .collect();
        assert!(!inbound.is_empty(), "{} served nothing:\n{text}", w.name);
        assert!(
            inbound
                .iter()
                .all(|l| l.contains("connection_security_policy=\"mutual_tls\"")),
            "{}: {inbound:?}",
            w.name
        );
    }
}
task!(
    p4_every_hop_is_mutual_tls,
    p4_every_hop_is_mutual_tls_istio,
    every_hop_mtls
);
