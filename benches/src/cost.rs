//! `mesh-bench cost`: one scenario's client and server in this one process, on one thread,
//! sending requests one after another. Run under callgrind by `scripts/cost`, twice with
//! different request counts: the difference divided by the extra requests is the instructions
//! one request costs end to end (client side and server side together, as the bench's CPU per
//! request is), free of the start-up, and repeatable on a noisy machine where CPU time is not.
//!
//! ```text
//! mesh-bench cost --scenario mesh-full-mtls [--mode max-h1|max-h2] --requests 1000
//! ```
//!
//! The control plane (mesh-control) runs in the process too; between pushes it is idle. Traces
//! are not exported (no collector): `mesh-full` costs what it costs without its 1 % of spans.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::client::{self, ClientArgs};
use crate::mesh_config;
use crate::scenario::{Mode, Scenario, Stack};
use crate::server::{self, ServerArgs};

/// What `cost` is told.
pub(crate) struct CostArgs {
    pub(crate) scenario: Scenario,
    pub(crate) mode: Mode,
    pub(crate) requests: u64,
}

/// Sets the scenario up, sends `requests` requests, and prints `COST {json}`.
pub(crate) async fn run(args: CostArgs) {
    let s = args.scenario;
    if s.stack.is_envoy() {
        crate::fail("cost measures this process: Envoy scenarios run elsewhere");
    }
    let dir = tempfile::tempdir().expect("temp dir");
    // The full scenarios split between two subsets, each an instance of its own.
    let instances = if s.stack.is_mesh() && s.stack != Stack::MeshMin {
        2
    } else {
        1
    };
    let ports: Vec<u16> = (0..instances).map(|_| free_port()).collect();
    let port = ports[0];
    let (client_bootstrap, server_bootstrap) = if s.stack.is_mesh() {
        let yaml = mesh_config::istio_yaml(&s, args.mode, &ports);
        let cp = mesh_config::start_control_plane(dir.path(), &yaml).await;
        (Some(cp.client_bootstrap), Some(cp.server_bootstrap))
    } else {
        (None, None)
    };
    server::start(&ServerArgs {
        scenario: s,
        ports: ports.clone(),
        bootstrap: server_bootstrap,
        otlp: None,
    })
    .await;
    let callers = client::callers(&ClientArgs {
        scenario: s,
        mode: args.mode,
        target: Some(SocketAddr::from(([127, 0, 0, 1], port))).filter(|_| !s.stack.is_mesh()),
        bootstrap: client_bootstrap,
        otlp: None,
        warmup: Duration::ZERO,
        secs: Duration::ZERO,
    })
    .await;
    let caller = &callers[0];
    let deadline = Instant::now() + Duration::from_secs(60);
    while !caller.call().await {
        if Instant::now() > deadline {
            crate::fail(&format!("{}: no request succeeded within 60 s", s.name));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Warm the pools, the label caches and the allocator before counting.
    for _ in 0..50 {
        caller.call().await;
    }
    let mut failed = 0u64;
    for _ in 0..args.requests {
        failed += u64::from(!caller.call().await);
    }
    let out = serde_json::json!({
        "scenario": s.name,
        "mode": args.mode.to_string(),
        "requests": args.requests,
        "failed": failed,
    });
    println!("COST {out}");
    if failed > 0 {
        std::process::exit(1);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}
