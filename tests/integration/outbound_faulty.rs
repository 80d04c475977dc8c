//! The `faulty` scenario as a test: with 1 % of upstream answers 503, or one host failing
//! every request, retries and outlier ejection keep the caller's success rate at 99.9 % or
//! more. (The benchmark `outbound_faulty` measures the same at length, with latencies.)

use std::time::Duration;

use mesh_test_support::load::closed_loop;
use mesh_test_support::{Backend, Behavior, scenarios};

use crate::static_client;

async fn run(backends: &[Backend], requests: usize) -> mesh_test_support::load::LoadReport {
    let addrs: Vec<_> = backends.iter().map(Backend::addr).collect();
    let client = static_client(scenarios::faulty(&addrs)).await;
    closed_loop(8, requests, Duration::from_secs(60), move || {
        let client = client.clone();
        async move {
            let req = http::Request::get("http://svc/")
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .unwrap();
            matches!(client.send(req).await, Ok(r) if r.status() == 200)
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_percent_of_503s_are_retried_away() {
    let mut backends = Vec::new();
    for i in 0..4 {
        let b = Backend::start(&format!("b{i}")).await;
        b.set(Behavior::FailPerMille(10));
        backends.push(b);
    }
    let report = run(&backends, 4000).await;
    let upstream: u64 = backends.iter().map(Backend::requests).sum();
    assert!(
        report.success_rate() >= 0.999,
        "success {:.4} over {} requests",
        report.success_rate(),
        report.requests
    );
    // About 1 % extra attempts: retries are spent where needed, not multiplied.
    assert!(
        upstream < (report.requests as u64) * 103 / 100,
        "{upstream} upstream attempts"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_host_is_ejected() {
    let mut backends = Vec::new();
    for i in 0..4 {
        backends.push(Backend::start(&format!("b{i}")).await);
    }
    backends[3].set(Behavior::Status(503));
    let report = run(&backends, 4000).await;
    assert!(
        report.success_rate() >= 0.999,
        "success {:.4} over {} requests",
        report.success_rate(),
        report.requests
    );
    let bad = backends[3].requests();
    assert!(
        bad <= 20,
        "the failing host saw {bad} requests after being ejected"
    );
}
