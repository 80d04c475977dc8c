//! Hosts the mesh does not know: Istio's outbound traffic policy, and requests that arrive
//! before any configuration.

use std::time::Duration;

use mesh_test_support::Backend;
use mesh_test_support::static_json::{cluster, listener, resources};
use mesh_tower::OutboundTrafficPolicy;
use serde_json::json;

use crate::{get, static_client_with};

fn config(b: &Backend) -> serde_json::Value {
    resources(
        &[listener(
            "known:80",
            json!([{"match": {"prefix": "/"}, "route": {"cluster": "b"}}]),
            json!([]),
        )],
        &[cluster("b", &[b.addr()], json!({}))],
    )
}

#[tokio::test]
async fn registry_only_refuses_unknown_hosts_with_502_nr() {
    let b = Backend::start("b").await;
    let client = static_client_with(config(&b), |c| {
        c.outbound_traffic_policy(OutboundTrafficPolicy::RegistryOnly)
    })
    .await;
    let a = get(&client, "http://known/", &[]).await;
    assert_eq!(a.status, 200);
    let a = get(&client, &format!("http://{}/", b.addr()), &[]).await;
    assert_eq!(a.status, 502);
    assert_eq!(a.info.flags.to_string(), "NR");
    assert!(
        a.body.contains(&b.addr().to_string()),
        "names the host: {}",
        a.body
    );
    assert_eq!(b.requests(), 1);
}

#[tokio::test]
async fn allow_any_connects_directly() {
    let b = Backend::start("b").await;
    let client = static_client_with(config(&b), |c| c).await;
    let a = get(&client, &format!("http://{}/direct", b.addr()), &[]).await;
    assert_eq!((a.status, a.backend()), (200, "b"));
    assert_eq!(a.info.cluster.as_deref(), Some("PassthroughCluster"));
    assert_eq!(a.header("x-path"), "/direct");
}

/// Hop-by-hop headers are the caller's connection's business: neither the routed path nor
/// the passthrough forwards them (`te` only as `trailers`, which gRPC needs).
#[tokio::test]
async fn hop_by_hop_headers_never_travel_upstream() {
    let b = Backend::start("b").await;
    let client = static_client_with(config(&b), |c| c).await;
    let hop = [
        ("keep-alive", "timeout=5"),
        ("proxy-connection", "keep-alive"),
        ("te", "gzip"),
        // Nominated by `Connection`, so hop-by-hop too (Envoy's codec removes them).
        ("x-hop", "1"),
        ("connection", "X-Hop, close"),
        ("x-kept", "yes"),
    ];
    for uri in ["http://known/".to_owned(), format!("http://{}/", b.addr())] {
        let a = get(&client, &uri, &hop).await;
        assert_eq!(a.status, 200, "{uri}");
        assert_eq!(
            a.header("x-echo-x-kept"),
            "yes",
            "{uri}: end-to-end headers pass"
        );
        for (name, _) in &hop[..5] {
            assert_eq!(
                a.header(&format!("x-echo-{name}")),
                "",
                "{uri}: {name} was forwarded"
            );
        }
    }
    for uri in ["http://known/".to_owned(), format!("http://{}/", b.addr())] {
        let a = get(&client, &uri, &[("te", "trailers")]).await;
        assert_eq!(a.header("x-echo-te"), "trailers", "{uri}: gRPC needs it");
        // A repeated header is judged on every value, not the first.
        let a = get(&client, &uri, &[("te", "trailers"), ("te", "gzip")]).await;
        assert_eq!(a.header("x-echo-te"), "", "{uri}: te: gzip was forwarded");
    }
}

#[tokio::test]
async fn requests_wait_for_config_then_fail_clearly() {
    mesh_test_support::trace_init();
    // A control plane that is not there.
    let addr = mesh_test_support::unused_port();
    let bootstrap = mesh_core::Bootstrap::from_json(&format!(
        r#"{{"xds_servers": [{{"server_uri": "{addr}", "channel_creds": [{{"type": "insecure"}}]}}],
            "node": {{"id": "n"}}}}"#
    ))
    .unwrap();
    let mesh = mesh_core::Mesh::builder()
        .bootstrap(bootstrap)
        .build()
        .await
        .unwrap();
    let client = mesh_tower::MeshClient::builder(&mesh)
        .ready_timeout(Duration::from_millis(200))
        .build();
    let req = http::Request::get("http://reviews:9080/")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let started = std::time::Instant::now();
    let err = client.send(req).await.expect_err("no config");
    assert!(started.elapsed() >= Duration::from_millis(200));
    let text = err.to_string();
    assert!(
        text.contains("reviews:9080") && text.contains("200ms"),
        "{text}"
    );
    let req = http::Request::get("/no-authority")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    assert!(matches!(
        client.send(req).await,
        Err(mesh_tower::Error::NoAuthority)
    ));
}
