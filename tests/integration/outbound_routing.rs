//! Routing through MeshClient on real loopback backends: header matches, weighted splits,
//! cluster_header, rewrites, header mutations, direct responses, redirects, HTTP/2 upstreams.

use mesh_test_support::Backend;
use mesh_test_support::static_json::{cluster, listener, resources};
use serde_json::json;

use crate::{get, static_client};

#[tokio::test]
async fn header_match_and_weighted_split() {
    let v1 = Backend::start("v1").await;
    let v2 = Backend::start("v2").await;
    let routes = json!([
        {"match": {"prefix": "/", "headers": [{"name": "end-user", "string_match": {"exact": "jason"}}]},
         "route": {"cluster": "v2"}},
        {"match": {"prefix": "/"},
         "route": {"weighted_clusters": {"clusters": [
             {"name": "v1", "weight": 80}, {"name": "v2", "weight": 20}]}}}
    ]);
    let client = static_client(resources(
        &[listener("reviews:9080", routes, json!([]))],
        &[
            cluster("v1", &[v1.addr()], json!({})),
            cluster("v2", &[v2.addr()], json!({})),
        ],
    ))
    .await;
    for _ in 0..20 {
        let a = get(&client, "http://reviews:9080/r", &[("end-user", "jason")]).await;
        assert_eq!((a.status, a.backend()), (200, "v2"));
        assert_eq!(a.info.cluster.as_deref(), Some("v2"));
        assert_eq!(a.info.upstream, Some(v2.addr()));
    }
    let n = 1000;
    let mut to_v2 = 0;
    for _ in 0..n {
        let a = get(&client, "http://reviews:9080/r", &[]).await;
        assert_eq!(a.status, 200);
        to_v2 += (a.backend() == "v2") as usize;
    }
    // 20 % ± 4 σ (σ ≈ 1.26 % at n = 1000).
    let share = to_v2 as f64 / n as f64;
    assert!((0.15..0.25).contains(&share), "v2 share {share}");
}

#[tokio::test]
async fn rewrites_header_mutations_direct_responses_and_redirects() {
    let b = Backend::start("b").await;
    let routes = json!([
        {"match": {"prefix": "/old/"},
         "route": {"cluster": "b", "prefix_rewrite": "/new/", "host_rewrite_literal": "rewritten.example"},
         "request_headers_to_add": [{"header": {"key": "x-added", "value": "yes"}}],
         "request_headers_to_remove": ["x-secret"],
         "response_headers_to_add": [{"header": {"key": "x-route", "value": "old"}}]},
        {"match": {"path": "/teapot"}, "direct_response": {"status": 418, "body": {"inline_string": "short and stout"}}},
        {"match": {"prefix": "/moved"}, "redirect": {"host_redirect": "elsewhere.example", "path_redirect": "/here"}},
        {"match": {"prefix": "/by-header"}, "route": {"cluster_header": "x-cluster"}}
    ]);
    let client = static_client(resources(
        &[listener("svc:80", routes, json!([]))],
        &[cluster("b", &[b.addr()], json!({}))],
    ))
    .await;
    let a = get(&client, "http://svc/old/x?q=1", &[("x-secret", "s")]).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.header("x-path"), "/new/x?q=1");
    assert_eq!(a.header("x-authority"), "rewritten.example");
    assert_eq!(a.header("x-echo-x-added"), "yes");
    assert_eq!(a.header("x-echo-x-secret"), "", "removed before sending");
    assert_eq!(a.header("x-route"), "old");

    let a = get(&client, "http://svc/teapot", &[]).await;
    assert_eq!((a.status, a.body.as_str()), (418, "short and stout"));
    assert_eq!(b.requests(), 1, "direct responses never reach a backend");

    let a = get(&client, "http://svc/moved?k=v", &[]).await;
    assert_eq!(a.status, 301);
    assert_eq!(a.header("location"), "http://elsewhere.example/here?k=v");

    let a = get(&client, "http://svc/by-header", &[("x-cluster", "b")]).await;
    assert_eq!((a.status, a.backend()), (200, "b"));
    let a = get(&client, "http://svc/by-header", &[("x-cluster", "nope")]).await;
    assert_eq!(a.status, 503);
    assert_eq!(a.info.flags.to_string(), "NC");
}

#[tokio::test]
async fn no_route_is_404_nr() {
    let b = Backend::start("b").await;
    let routes = json!([{"match": {"prefix": "/api"}, "route": {"cluster": "b"}}]);
    let client = static_client(resources(
        &[listener("svc:80", routes, json!([]))],
        &[cluster("b", &[b.addr()], json!({}))],
    ))
    .await;
    let a = get(&client, "http://svc/other", &[]).await;
    assert_eq!(a.status, 404);
    assert_eq!(a.info.flags.to_string(), "NR");
    assert_eq!(a.info.attempts, 0);
}

#[tokio::test]
async fn http2_upstreams_get_the_service_authority() {
    let b = Backend::start("b").await;
    let routes = json!([{"match": {"prefix": "/"}, "route": {"cluster": "b"}}]);
    let h2 = json!({"typed_extension_protocol_options": {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}}}}});
    let client = static_client(resources(
        &[listener("svc:80", routes, json!([]))],
        &[cluster("b", &[b.addr()], h2)],
    ))
    .await;
    for _ in 0..3 {
        let a = get(&client, "http://svc/h2", &[]).await;
        assert_eq!(a.status, 200);
        assert_eq!(a.header("x-version"), "HTTP/2.0");
        assert_eq!(
            a.header("x-authority"),
            "svc",
            "the service's name, not the endpoint's"
        );
    }
}

/// A listener that asks for path normalization gets it before routing, as a sidecar's
/// outbound listener does: the route is chosen on the normalized path and the upstream sees
/// it; a path normalization refuses is answered locally.
#[tokio::test]
async fn the_listener_normalizes_paths_before_routing() {
    let public = Backend::start("public").await;
    let admin = Backend::start("admin").await;
    let routes = json!([
        {"match": {"prefix": "/admin/"}, "route": {"cluster": "admin"}},
        {"match": {"prefix": "/"}, "route": {"cluster": "public"}}
    ]);
    let mut l = listener("svc:80", routes, json!([]));
    mesh_test_support::static_json::merge(
        &mut l["api_listener"]["api_listener"],
        json!({"normalize_path": true, "merge_slashes": true,
               "path_with_escaped_slashes_action": "UNESCAPE_AND_REDIRECT"}),
    );
    let client = static_client(resources(
        &[l],
        &[
            cluster("public", &[public.addr()], json!({})),
            cluster("admin", &[admin.addr()], json!({})),
        ],
    ))
    .await;
    for spelling in [
        "/public/../admin/x",
        "/%61dmin/x",
        "//admin//x",
        "/admin/./x",
    ] {
        let a = get(&client, &format!("http://svc:80{spelling}"), &[]).await;
        assert_eq!((a.status, a.backend()), (200, "admin"), "{spelling}");
        assert_eq!(a.header("x-path"), "/admin/x", "{spelling}");
    }
    let refused = get(&client, "http://svc:80/admin%00", &[]).await;
    assert_eq!((refused.status, refused.backend()), (400, ""));
    let redirected = get(&client, "http://svc:80/admin%2Fx?q=1", &[]).await;
    assert_eq!(redirected.status, 307);
    assert_eq!(redirected.header("location"), "/admin/x?q=1");
    assert_eq!(admin.requests() + public.requests(), 4);
}
