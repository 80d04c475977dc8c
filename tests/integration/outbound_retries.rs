//! Retries: retry_on conditions, attempts, exhaustion (URX), connect failures with previous
//! host avoidance, and request bodies replayed on the retry.

use mesh_test_support::static_json::{cluster, listener, resources};
use mesh_test_support::{Backend, Behavior};
use serde_json::json;

use crate::{get, send, static_client};

fn retry(on: &str, n: u32) -> serde_json::Value {
    json!({"cluster": "c", "retry_policy": {"retry_on": on, "num_retries": n,
        "retry_back_off": {"base_interval": "0.001s"},
        "retry_host_predicate": [{"name": "envoy.retry_host_predicates.previous_hosts",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"}}],
        "host_selection_retry_max_attempts": 5}})
}

async fn client_for(
    route: serde_json::Value,
    addrs: &[std::net::SocketAddr],
) -> mesh_tower::MeshClient {
    static_client(resources(
        &[listener(
            "svc:80",
            json!([{"match": {"prefix": "/"}, "route": route}]),
            json!([]),
        )],
        &[cluster("c", addrs, json!({}))],
    ))
    .await
}

#[tokio::test]
async fn failed_attempts_are_retried_until_one_succeeds() {
    let b = Backend::start("b").await;
    let client = client_for(retry("5xx", 2), &[b.addr()]).await;
    b.fail_next(2);
    let a = get(&client, "http://svc/", &[]).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.info.attempts, 3);
    assert_eq!(b.requests(), 3);
    assert!(a.info.flags.is_empty());
}

#[tokio::test]
async fn exhausted_retries_return_the_last_answer_with_urx() {
    let b = Backend::start("b").await;
    b.set(Behavior::Status(503));
    let client = client_for(retry("gateway-error", 2), &[b.addr()]).await;
    let a = get(&client, "http://svc/", &[]).await;
    assert_eq!(
        (a.status, a.backend()),
        (503, "b"),
        "the upstream's own answer"
    );
    assert_eq!(a.info.attempts, 3);
    assert_eq!(a.info.flags.to_string(), "URX");
}

#[tokio::test]
async fn non_matching_conditions_are_not_retried() {
    let b = Backend::start("b").await;
    b.set(Behavior::Status(500));
    let client = client_for(retry("gateway-error", 2), &[b.addr()]).await;
    let a = get(&client, "http://svc/", &[]).await;
    assert_eq!((a.status, a.info.attempts), (500, 1));
    let none = client_for(json!({"cluster": "c"}), &[b.addr()]).await;
    let a = get(&none, "http://svc/", &[]).await;
    assert_eq!((a.status, a.info.attempts), (500, 1));
}

#[tokio::test]
async fn connect_failures_retry_on_another_host() {
    let b = Backend::start("b").await;
    let dead = mesh_test_support::unused_port();
    let client = client_for(retry("connect-failure", 1), &[dead, b.addr()]).await;
    for _ in 0..6 {
        let a = get(&client, "http://svc/", &[]).await;
        assert_eq!((a.status, a.backend()), (200, "b"), "{:?}", a.info);
    }
    let no_retry = client_for(json!({"cluster": "c"}), &[dead]).await;
    let a = get(&no_retry, "http://svc/", &[]).await;
    assert_eq!(a.status, 503);
    assert_eq!(a.info.flags.to_string(), "UF");
    assert!(a.body.starts_with("upstream connect error or disconnect/reset before headers. reset reason: remote connection failure"), "{}", a.body);
}

#[tokio::test]
async fn request_bodies_are_replayed() {
    let b = Backend::start("b").await;
    let client = client_for(retry("5xx", 1), &[b.addr()]).await;
    b.fail_next(1);
    let req = http::Request::post("http://svc/upload")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            b"hello, mesh",
        )))
        .unwrap();
    let a = send(&client, req).await;
    assert_eq!((a.status, a.info.attempts), (200, 2));
    assert_eq!(
        a.header("x-body-len"),
        "11",
        "the retry carried the whole body"
    );
}

#[tokio::test]
async fn resets_are_retried_under_reset() {
    let b = Backend::start("b").await;
    b.set(Behavior::Reset);
    let client = client_for(retry("reset", 1), &[b.addr()]).await;
    let a = get(&client, "http://svc/", &[]).await;
    assert_eq!(a.status, 503);
    assert_eq!(a.info.attempts, 2);
    assert!(
        a.info
            .flags
            .contains(mesh_tower::ResponseFlags::UPSTREAM_RETRY_LIMIT_EXCEEDED),
        "{}",
        a.info.flags
    );
}
