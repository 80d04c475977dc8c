//! The `faulty` benchmark (BENCHMARKS.md): 1 % of upstream answers are 503. Without the mesh
//! the caller sees those failures; through MeshClient (retries to other hosts, outlier
//! detection, least request) it should not. A second scenario has one host of four failing
//! every request, which outlier detection must eject.
//!
//! Scenarios, in one run, interleaved per rep:
//! - `bare-faulty`: hyper-util's pooled client, round robin over the backends, no retries.
//! - `mesh-faulty`: MeshClient with the `faulty` scenario's policies.
//! - `mesh-faulty-host`: the same, with one backend answering 503 always.
//!
//! Mode `max-h1`: 32 concurrent requests, closed loop, HTTP/1.1. Client and backends share one
//! process and two cores, so latencies are for comparison within this run only.
//!
//! `cargo bench -p mesh-tests --bench outbound_faulty [-- --quick | --reps N --secs S]`

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use mesh_test_support::load::{LoadReport, closed_loop};
use mesh_test_support::{Backend, Behavior, scenarios};

const CONCURRENCY: usize = 32;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = mesh_test_support::bench::Args::parse(5, 10);
    args.print_env();
    let (reps, secs) = (args.reps, if args.quick { 2 } else { args.secs });

    let mut faulty = Vec::new();
    for i in 0..4 {
        let b = Backend::start(&format!("b{i}")).await;
        b.set(Behavior::FailPerMille(10));
        faulty.push(b);
    }
    let mut one_bad = Vec::new();
    for i in 0..4 {
        one_bad.push(Backend::start(&format!("h{i}")).await);
    }
    one_bad[3].set(Behavior::Status(503));
    let addrs = |bs: &[Backend]| bs.iter().map(Backend::addr).collect::<Vec<SocketAddr>>();
    let mesh_faulty = client(scenarios::faulty(&addrs(&faulty))).await;
    let mesh_bad_host = client(scenarios::faulty(&addrs(&one_bad))).await;

    let duration = Duration::from_secs(secs);
    let mut results: Vec<(&str, Vec<LoadReport>)> = vec![
        ("bare-faulty", Vec::new()),
        ("mesh-faulty", Vec::new()),
        ("mesh-faulty-host", Vec::new()),
    ];
    // Warm up pools and ejections.
    bare(&addrs(&faulty), Duration::from_secs(1)).await;
    mesh(&mesh_faulty, Duration::from_secs(1)).await;
    mesh(&mesh_bad_host, Duration::from_secs(1)).await;
    for rep in 1..=reps {
        for (name, reports) in results.iter_mut() {
            let r = match *name {
                "bare-faulty" => bare(&addrs(&faulty), duration).await,
                "mesh-faulty" => mesh(&mesh_faulty, duration).await,
                _ => mesh(&mesh_bad_host, duration).await,
            };
            println!(
                "BENCH {{\"scenario\":\"{name}\",\"mode\":\"max-h1\",\"proto\":\"h1\",\"rep\":{rep},\"requests\":{},\"errors\":{},\"success\":{:.5},\"rps\":{:.1},\"p50_us\":{},\"p90_us\":{},\"p99_us\":{}}}",
                r.requests,
                r.requests - r.ok,
                r.success_rate(),
                r.rps(),
                r.quantile(0.5).as_micros(),
                r.quantile(0.9).as_micros(),
                r.quantile(0.99).as_micros(),
            );
            reports.push(r);
        }
    }
    println!();
    println!("| scenario | requests | success (min over reps) | p50 µs | p99 µs |");
    println!("|---|---|---|---|---|");
    for (name, reports) in &results {
        let median = |f: &dyn Fn(&LoadReport) -> f64| {
            mesh_test_support::bench::median(&reports.iter().map(f).collect::<Vec<_>>())
        };
        let requests: usize = reports.iter().map(|r| r.requests).sum();
        let worst = reports
            .iter()
            .map(LoadReport::success_rate)
            .fold(1.0, f64::min);
        let p50 = median(&|r| r.quantile(0.5).as_micros() as f64);
        let p99 = median(&|r| r.quantile(0.99).as_micros() as f64);
        println!(
            "SUMMARY {{\"scenario\":\"{name}\",\"mode\":\"max-h1\",\"reps\":{},\"requests\":{requests},\"success_min\":{worst:.5},\"p50_us\":{p50},\"p99_us\":{p99}}}",
            reports.len()
        );
        println!(
            "| {name} | {requests} | {:.3} % | {p50} | {p99} |",
            worst * 100.0
        );
    }
    let mesh_worst = results[1..]
        .iter()
        .flat_map(|(_, r)| r.iter().map(LoadReport::success_rate))
        .fold(1.0, f64::min);
    if mesh_worst < 0.999 {
        eprintln!("FAILED: mesh success rate {mesh_worst:.5} is below 99.9 %");
        std::process::exit(1);
    }
}

async fn client(doc: serde_json::Value) -> mesh_tower::MeshClient {
    let resources = mesh_core::StaticResources::from_value(&doc, "bench").expect("resources");
    let mesh = mesh_core::Mesh::builder()
        .static_resources(resources)
        .build()
        .await
        .expect("mesh");
    mesh_tower::MeshClient::new(&mesh)
}

async fn mesh(client: &mesh_tower::MeshClient, d: Duration) -> LoadReport {
    let client = client.clone();
    closed_loop(CONCURRENCY, usize::MAX, d, move || {
        let client = client.clone();
        async move {
            let req = http::Request::get("http://svc/")
                .body(Empty::<Bytes>::new())
                .expect("request");
            match client.send(req).await {
                Ok(r) => {
                    let ok = r.status() == 200;
                    ok && r.into_body().collect().await.is_ok()
                }
                Err(_) => false,
            }
        }
    })
    .await
}

async fn bare(addrs: &[SocketAddr], d: Duration) -> LoadReport {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let uris: Arc<Vec<http::Uri>> = Arc::new(
        addrs
            .iter()
            .map(|a| format!("http://{a}/").parse().expect("uri"))
            .collect(),
    );
    let next = Arc::new(AtomicUsize::new(0));
    closed_loop(CONCURRENCY, usize::MAX, d, move || {
        let (client, uris, next) = (client.clone(), uris.clone(), next.clone());
        async move {
            let uri = uris[next.fetch_add(1, Ordering::Relaxed) % uris.len()].clone();
            match client.get(uri).await {
                Ok(r) => {
                    let ok = r.status() == 200;
                    ok && r.into_body().collect().await.is_ok()
                }
                Err(_) => false,
            }
        }
    })
    .await
}
