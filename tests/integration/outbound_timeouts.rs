//! Timeouts: the route timeout over all attempts, the per-try timeout, and `grpc-timeout`.

use std::time::{Duration, Instant};

use mesh_test_support::static_json::{cluster, listener, resources};
use mesh_test_support::{Backend, Behavior};
use serde_json::json;

use crate::{get, static_client};

async fn client_for(route: serde_json::Value, backends: &[&Backend]) -> mesh_tower::MeshClient {
    let addrs: Vec<_> = backends.iter().map(|b| b.addr()).collect();
    static_client(resources(
        &[listener(
            "svc:80",
            json!([{"match": {"prefix": "/"}, "route": route}]),
            json!([]),
        )],
        &[cluster("c", &addrs, json!({}))],
    ))
    .await
}

#[tokio::test]
async fn route_timeout_answers_504_ut() {
    let slow = Backend::start("slow").await;
    slow.set(Behavior::Delay(Duration::from_secs(5)));
    let client = client_for(json!({"cluster": "c", "timeout": "0.2s"}), &[&slow]).await;
    let started = Instant::now();
    let a = get(&client, "http://svc/", &[]).await;
    assert_eq!(
        (a.status, a.body.as_str()),
        (504, "upstream request timeout")
    );
    assert_eq!(a.info.flags.to_string(), "UT");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn per_try_timeout_moves_on_to_another_host() {
    let slow = Backend::start("slow").await;
    slow.set(Behavior::Delay(Duration::from_secs(5)));
    let fast = Backend::start("fast").await;
    let client = client_for(
        json!({"cluster": "c", "timeout": "3s", "retry_policy": {
            "retry_on": "5xx", "num_retries": 2, "per_try_timeout": "0.1s",
            "retry_host_predicate": [{"name": "envoy.retry_host_predicates.previous_hosts",
                "typed_config": {"@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"}}],
            "host_selection_retry_max_attempts": 5}}),
        &[&slow, &fast],
    )
    .await;
    let mut retried = 0;
    for _ in 0..8 {
        let a = get(&client, "http://svc/", &[]).await;
        assert_eq!((a.status, a.backend()), (200, "fast"));
        assert!(a.info.attempts <= 2, "{:?}", a.info);
        retried += (a.info.attempts == 2) as usize;
    }
    assert!(
        retried > 0,
        "round robin sends some first attempts to the slow host"
    );
}

#[tokio::test]
async fn grpc_timeout_is_honoured_when_enabled() {
    let slow = Backend::start("slow").await;
    slow.set(Behavior::Delay(Duration::from_secs(5)));
    let client = client_for(
        json!({"cluster": "c", "timeout": "10s",
               "max_stream_duration": {"grpc_timeout_header_max": "0s"}}),
        &[&slow],
    )
    .await;
    let started = Instant::now();
    let a = get(
        &client,
        "http://svc/pkg.Svc/Call",
        &[
            ("content-type", "application/grpc"),
            ("grpc-timeout", "150m"),
        ],
    )
    .await;
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(a.status, 200, "gRPC local replies are trailers-only");
    assert_eq!(a.header("grpc-status"), "14");
    assert_eq!(a.info.flags.to_string(), "UT");
}

#[tokio::test]
async fn hedging_keeps_the_first_attempt_in_flight() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    for x in [&a, &b] {
        x.set(Behavior::Delay(Duration::from_millis(300)));
    }
    let route = |hedge: bool| {
        json!({"cluster": "c", "timeout": "3s",
               "retry_policy": {"retry_on": "5xx", "num_retries": 1, "per_try_timeout": "0.1s"},
               "hedge_policy": {"hedge_on_per_try_timeout": hedge}})
    };
    // Without hedging, each attempt is cut at 100 ms: the request fails.
    let plain = client_for(route(false), &[&a, &b]).await;
    let r = get(&plain, "http://svc/", &[]).await;
    assert_eq!((r.status, r.info.attempts), (504, 2), "{:?}", r.info);
    // With hedging, the first attempt keeps going and answers at 300 ms.
    let hedged = client_for(route(true), &[&a, &b]).await;
    let r = get(&hedged, "http://svc/", &[]).await;
    assert_eq!((r.status, r.info.attempts), (200, 2), "{:?}", r.info);
}
