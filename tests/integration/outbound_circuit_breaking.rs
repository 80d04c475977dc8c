//! Circuit breakers: overflowing `max_requests`, or `max_connections` plus
//! `max_pending_requests` on HTTP/1, answers 503 `UO` at once.

use std::time::{Duration, Instant};

use mesh_test_support::{Backend, Behavior};
use serde_json::json;

use crate::{Answer, get};

async fn concurrent(client: &mesh_tower::MeshClient, n: usize) -> Vec<Answer> {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let c = client.clone();
            tokio::spawn(async move { get(&c, "http://svc/", &[]).await })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

async fn client_with(b: &Backend, thresholds: serde_json::Value) -> mesh_tower::MeshClient {
    crate::one_cluster_client(
        &[b.addr()],
        json!({"circuit_breakers": {"thresholds": [thresholds]}}),
    )
    .await
}

#[tokio::test]
async fn max_requests_overflow_fails_fast() {
    let b = Backend::start("b").await;
    b.set(Behavior::Delay(Duration::from_millis(400)));
    let client = client_with(&b, json!({"max_requests": 2})).await;
    let started = Instant::now();
    let answers = concurrent(&client, 6).await;
    let ok = answers.iter().filter(|a| a.status == 200).count();
    let overflow: Vec<_> = answers.iter().filter(|a| a.status == 503).collect();
    assert_eq!((ok, overflow.len()), (2, 4), "{answers:?}");
    for a in overflow {
        assert_eq!(a.info.flags.to_string(), "UO");
        assert_eq!(a.header("x-envoy-overloaded"), "true");
    }
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn http1_connections_and_pending_requests_are_bounded() {
    let b = Backend::start("b").await;
    b.set(Behavior::Delay(Duration::from_millis(200)));
    // Istio's circuit-breaking task: one connection, one pending request.
    let client = client_with(&b, json!({"max_connections": 1, "max_pending_requests": 1})).await;
    let answers = concurrent(&client, 5).await;
    let ok = answers.iter().filter(|a| a.status == 200).count();
    assert_eq!(
        ok, 2,
        "one on the connection, one waiting for it: {answers:?}"
    );
    assert!(
        answers
            .iter()
            .filter(|a| a.status == 503)
            .all(|a| a.info.flags.to_string() == "UO")
    );
    // Afterwards the breaker is closed again.
    assert_eq!(get(&client, "http://svc/", &[]).await.status, 200);
}
