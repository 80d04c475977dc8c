//! What telemetry costs per request (BENCHMARKS.md format), client side, in one run:
//! - `bare`: hyper-util's pooled client, no mesh;
//! - `mesh-metrics`: MeshClient, one route to one cluster, Istio's metrics (always on);
//! - `mesh-trace-1pct` / `mesh-trace-100pct`: the same with OpenTelemetry spans sampled at
//!   1 % and 100 %, exported over OTLP/gRPC to an in-process sink;
//! - `mesh-trace-100pct-log`: and the JSON access log, to /dev/null.
//!
//! Process CPU (client, backend and sink together: the backend's share is the same in every
//! scenario) per request and latency, closed loop, 8 concurrent requests, interleaved reps.
//! The SUMMARY lines give each scenario's CPU per request added over `mesh-metrics` and
//! `bare`.
//!
//! `cargo bench -p mesh-tests --bench telemetry [-- --quick | --reps N --secs S]`

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use mesh_test_support::load::{LoadReport, closed_loop};
use mesh_tower::telemetry::{AccessLog, Telemetry, Tracing};

const CONCURRENCY: usize = 8;

/// User plus system CPU of this process so far.
fn cpu() -> Duration {
    mesh_test_support::bench::process_cpu("self")
}

/// A plain hyper server answering `ok` (the test `Backend` echoes headers, whose cost would
/// grow with the trace headers and blur the comparison).
async fn backend() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let _ = tcp.set_nodelay(true);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(http::Response::new(
                        http_body_util::Full::new(Bytes::from_static(b"ok")),
                    ))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    addr
}

async fn mesh_client(backend: std::net::SocketAddr) -> (mesh_core::Mesh, mesh_tower::MeshClient) {
    let doc = mesh_test_support::scenarios::single_route("svc", &[backend]);
    let resources = mesh_core::StaticResources::from_value(&doc, "bench").expect("resources");
    let mesh = mesh_core::Mesh::builder()
        .static_resources(resources)
        .build()
        .await
        .expect("mesh");
    let client = mesh_tower::MeshClient::new(&mesh);
    (mesh, client)
}

async fn run_mesh(client: &mesh_tower::MeshClient, d: Duration) -> LoadReport {
    let client = client.clone();
    closed_loop(CONCURRENCY, usize::MAX, d, move || {
        let client = client.clone();
        async move {
            let req = http::Request::get("http://svc/")
                .header("user-agent", "bench")
                .body(Empty::<Bytes>::new())
                .expect("request");
            match client.send(req).await {
                Ok(r) => r.status() == 200 && r.into_body().collect().await.is_ok(),
                Err(_) => false,
            }
        }
    })
    .await
}

async fn run_bare(addr: std::net::SocketAddr, d: Duration) -> LoadReport {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let uri: http::Uri = format!("http://{addr}/").parse().expect("uri");
    closed_loop(CONCURRENCY, usize::MAX, d, move || {
        let (client, uri) = (client.clone(), uri.clone());
        async move {
            match client.get(uri).await {
                Ok(r) => r.status() == 200 && r.into_body().collect().await.is_ok(),
                Err(_) => false,
            }
        }
    })
    .await
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = mesh_test_support::bench::Args::parse(5, 5);
    args.print_env();
    let (reps, secs) = (args.reps, args.secs);
    let backend = backend().await;
    let sink = mesh_test_support::otlp::Sink::start().await;
    let tracing = |ratio: f64| {
        Tracing::otlp(format!("http://{}", sink.addr))
            .sampling(ratio)
            .batch_delay(Duration::from_millis(200))
    };
    let (_m0, metrics) = mesh_client(backend).await;
    let (m1, trace1) = mesh_client(backend).await;
    tracing(0.01).install(&m1).expect("tracing");
    let (m100, trace100) = mesh_client(backend).await;
    tracing(1.0).install(&m100).expect("tracing");
    let (mlog, logged) = mesh_client(backend).await;
    tracing(1.0).install(&mlog).expect("tracing");
    AccessLog::to(std::fs::File::create("/dev/null").expect("/dev/null")).install(&mlog);

    let names = [
        "bare",
        "mesh-metrics",
        "mesh-trace-1pct",
        "mesh-trace-100pct",
        "mesh-trace-100pct-log",
    ];
    let mut cpu_per_req: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    let mut p50: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    let duration = Duration::from_secs(secs);
    for rep in 0..=reps {
        for (i, name) in names.iter().enumerate() {
            if !args.runs(name) {
                continue;
            }
            let before = cpu();
            let r = match i {
                0 => run_bare(backend, duration).await,
                1 => run_mesh(&metrics, duration).await,
                2 => run_mesh(&trace1, duration).await,
                3 => run_mesh(&trace100, duration).await,
                _ => run_mesh(&logged, duration).await,
            };
            let used = cpu() - before;
            if rep == 0 {
                continue; // warm-up
            }
            let us = used.as_secs_f64() * 1e6 / r.requests.max(1) as f64;
            println!(
                "BENCH {{\"scenario\":\"{name}\",\"mode\":\"max-h1\",\"proto\":\"h1\",\"rep\":{rep},\"requests\":{},\"errors\":{},\"rps\":{:.1},\"p50_us\":{},\"p99_us\":{},\"cpu_us_per_req\":{us:.2}}}",
                r.requests,
                r.requests - r.ok,
                r.rps(),
                r.quantile(0.5).as_micros(),
                r.quantile(0.99).as_micros(),
            );
            if r.ok != r.requests {
                eprintln!("FAILED: {name} had {} errors", r.requests - r.ok);
                std::process::exit(1);
            }
            cpu_per_req[i].push(us);
            p50[i].push(r.quantile(0.5).as_micros() as f64);
        }
    }
    if args.only.is_some() {
        return;
    }
    let median = mesh_test_support::bench::median;
    println!();
    println!("| scenario | CPU µs/request | added over mesh-metrics | added over bare | p50 µs |");
    println!("|---|---|---|---|---|");
    let (bare, base) = (median(&cpu_per_req[0]), median(&cpu_per_req[1]));
    for (i, name) in names.iter().enumerate() {
        let c = median(&cpu_per_req[i]);
        println!(
            "SUMMARY {{\"scenario\":\"{name}\",\"mode\":\"max-h1\",\"reps\":{reps},\"cpu_us_per_req\":{c:.2},\"vs_mesh_metrics\":{{\"cpu_added_us\":{:.2}}},\"vs_bare\":{{\"cpu_added_us\":{:.2},\"cpu_ratio\":{:.2}}},\"p50_us\":{}}}",
            c - base,
            c - bare,
            c / bare,
            median(&p50[i])
        );
        println!(
            "| {name} | {c:.1} | {:+.1} | {:+.1} | {} |",
            c - base,
            c - bare,
            median(&p50[i])
        );
    }
    // Let the last batches go out, then check they arrived.
    tokio::time::sleep(Duration::from_millis(600)).await;
    println!(
        "\nspans received by the sink: {}; dropped: {}",
        sink.spans(),
        Telemetry::of(&m100).dropped_spans() + Telemetry::of(&m1).dropped_spans()
    );
    if sink.spans() == 0 {
        eprintln!("FAILED: no span reached the sink");
        std::process::exit(1);
    }
}
