//! The application client of a scenario, in its own process pinned to the client's CPU: it
//! builds the scenario's callers, waits until a request succeeds, warms up, prints
//! `MEASURING`, runs the measured phase and prints `RESULT {json}` with its own CPU time and
//! memory for that phase.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::load::{Caller, Outcome, closed_loop, open_loop};
use crate::mesh_config::{PORT, SERVICE};
use crate::scenario::{Mode, Scenario};

/// What the client process is told.
pub(crate) struct ClientArgs {
    pub(crate) scenario: Scenario,
    pub(crate) mode: Mode,
    /// The server (bare) or the client-side Envoy (Envoy pair); `None` with the mesh.
    pub(crate) target: Option<SocketAddr>,
    pub(crate) bootstrap: Option<std::path::PathBuf>,
    pub(crate) otlp: Option<SocketAddr>,
    pub(crate) warmup: Duration,
    pub(crate) secs: Duration,
}

/// A mesh from the bootstrap at `path`, tracing to `otlp` at `sampling` when it is above 0.
pub(crate) async fn mesh(path: &Path, sampling: f64, otlp: Option<SocketAddr>) -> mesh_core::Mesh {
    let mesh = mesh_core::Mesh::builder()
        .bootstrap_file(path)
        .expect("bootstrap")
        .build()
        .await
        .expect("mesh");
    if let (true, Some(otlp)) = (sampling > 0.0, otlp) {
        mesh_tower::telemetry::Tracing::otlp(format!("http://{otlp}"))
            .sampling(sampling)
            // Short runs (the quick mode's 2 s) still export within the run.
            .batch_delay(Duration::from_secs(1))
            .install(&mesh)
            .expect("tracing");
    }
    mesh
}

/// One caller per connection the mode asks for (each has its own pool, so HTTP/2 modes get
/// that many connections); one for the open-loop modes.
pub(crate) async fn callers(args: &ClientArgs) -> Vec<Caller> {
    let s = args.scenario;
    let n = args
        .mode
        .closed_loop()
        .map_or(1, |(connections, _)| connections);
    let h2 = args.mode.proto(s.grpc) != "h1";
    let mesh = match &args.bootstrap {
        Some(path) => Some(mesh(path, s.sampling, args.otlp).await),
        None => None,
    };
    let authority = format!("{SERVICE}:{PORT}");
    (0..n)
        .map(|_| match (&mesh, args.target) {
            (Some(mesh), _) if s.grpc => {
                let channel = mesh_grpc::MeshChannel::new(
                    mesh_tower::MeshClient::new(mesh),
                    &format!("xds:///{authority}"),
                )
                .expect("xds target");
                Caller::MeshGrpc(AuthorizationClient::new(channel))
            }
            (Some(mesh), _) => Caller::Mesh {
                client: mesh_tower::MeshClient::new(mesh),
                uri: format!("http://{authority}/bench").parse().expect("uri"),
            },
            (None, Some(addr)) if s.grpc => {
                let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                    .expect("endpoint")
                    .connect_lazy();
                Caller::Grpc(AuthorizationClient::new(channel))
            }
            (None, Some(addr)) => {
                let mut connector = HttpConnector::new();
                connector.set_nodelay(true);
                Caller::Hyper {
                    client: Client::builder(TokioExecutor::new())
                        .http2_only(h2)
                        .build(connector),
                    uri: format!("http://{addr}/bench").parse().expect("uri"),
                    host: authority.parse().expect("host"),
                }
            }
            (None, None) => panic!("a client needs --target or --bootstrap"),
        })
        .collect()
}

async fn phase(callers: &[Caller], mode: Mode, d: Duration) -> Outcome {
    match mode {
        Mode::Rate(rate) => {
            let (handle, caller) = (tokio::runtime::Handle::current(), callers[0].clone());
            tokio::task::spawn_blocking(move || open_loop(&handle, &caller, rate, d))
                .await
                .expect("pacer")
        }
        _ => {
            let per = mode.closed_loop().map_or(1, |(_, streams)| streams);
            closed_loop(callers, per, d).await
        }
    }
}

/// Runs the client; exits the process with 1 if no request succeeds within 30 s.
pub(crate) async fn run(args: ClientArgs) {
    let callers = callers(&args).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !callers[0].call().await {
        if Instant::now() > deadline {
            eprintln!(
                "mesh-bench client: {} {}: no request succeeded within 30 s",
                args.scenario.name, args.mode
            );
            std::process::exit(1);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    phase(&callers, args.mode, args.warmup).await;
    println!("MEASURING");
    let cpu = crate::sys::own_cpu();
    let out = phase(&callers, args.mode, args.secs).await;
    let cpu = crate::sys::own_cpu() - cpu;
    let result = serde_json::json!({
        "requests": out.requests,
        "errors": out.errors,
        "secs": out.elapsed.as_secs_f64(),
        "p50_us": out.quantile_us(0.5),
        "p90_us": out.quantile_us(0.9),
        "p99_us": out.quantile_us(0.99),
        "max_us": out.latency.max(),
        "cpu_us": cpu.as_micros() as u64,
        "rss_mib": crate::sys::memory_mib(std::process::id()).0,
        "anon_mib": crate::sys::memory_mib(std::process::id()).1,
    });
    println!("RESULT {result}");
}
