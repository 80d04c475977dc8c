//! Fault injection: aborts (HTTP and gRPC), delays and percentages; aborts never reach the
//! upstream and are not retried.

use std::time::{Duration, Instant};

use mesh_test_support::Backend;
use mesh_test_support::static_json::{cluster, fault_filter, listener, resources};
use serde_json::json;

use crate::{get, static_client};

async fn client_with_fault(b: &Backend, fault: serde_json::Value) -> mesh_tower::MeshClient {
    let routes = json!([{"match": {"prefix": "/"},
        "route": {"cluster": "c", "retry_policy": {"retry_on": "5xx", "num_retries": 3}},
        "typed_per_filter_config": {"envoy.filters.http.fault": fault}}]);
    static_client(resources(
        &[listener("svc:80", routes, fault_filter())],
        &[cluster("c", &[b.addr()], json!({}))],
    ))
    .await
}

fn fault(body: serde_json::Value) -> serde_json::Value {
    let mut f =
        json!({"@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"});
    mesh_test_support::static_json::merge(&mut f, body);
    f
}

#[tokio::test]
async fn aborts_answer_locally_and_are_not_retried() {
    let b = Backend::start("b").await;
    let client = client_with_fault(
        &b,
        fault(json!({"abort": {"http_status": 503, "percentage": {"numerator": 100}}})),
    )
    .await;
    let a = get(&client, "http://svc/", &[]).await;
    assert_eq!((a.status, a.body.as_str()), (503, "fault filter abort"));
    assert_eq!(a.info.flags.to_string(), "FI");
    assert_eq!(a.info.attempts, 0);
    assert_eq!(b.requests(), 0);
}

#[tokio::test]
async fn grpc_aborts_carry_grpc_status() {
    let b = Backend::start("b").await;
    let client = client_with_fault(
        &b,
        fault(json!({"abort": {"grpc_status": 14, "percentage": {"numerator": 100}}})),
    )
    .await;
    let a = get(
        &client,
        "http://svc/",
        &[("content-type", "application/grpc")],
    )
    .await;
    assert_eq!((a.status, a.header("grpc-status")), (200, "14"));
}

#[tokio::test]
async fn delays_hold_the_request_then_forward_it() {
    let b = Backend::start("b").await;
    let client = client_with_fault(
        &b,
        fault(json!({"delay": {"fixed_delay": "0.2s", "percentage": {"numerator": 100}}})),
    )
    .await;
    let started = Instant::now();
    let a = get(&client, "http://svc/", &[]).await;
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_eq!((a.status, a.backend()), (200, "b"));
    assert_eq!(a.info.flags.to_string(), "DI");
}

#[tokio::test]
async fn abort_percentages_hold() {
    let b = Backend::start("b").await;
    let client = client_with_fault(
        &b,
        fault(json!({"abort": {"http_status": 500, "percentage": {"numerator": 30}}})),
    )
    .await;
    let n = 600;
    let mut aborted = 0;
    for _ in 0..n {
        aborted += (get(&client, "http://svc/", &[]).await.status == 500) as usize;
    }
    // 30 % ± 4 σ (σ ≈ 1.9 % at n = 600).
    let share = aborted as f64 / n as f64;
    assert!((0.22..0.38).contains(&share), "aborted share {share}");
}
