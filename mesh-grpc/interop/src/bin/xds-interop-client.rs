//! `xds-interop-client`: gRPC's xDS interop test client on mesh-grpc.
//!
//! ```text
//! GRPC_XDS_BOOTSTRAP=bootstrap.json xds-interop-client --server=xds:///server:8080 \
//!     --qps=100 --rpc=UnaryCall,EmptyCall --metadata=EmptyCall:xds_md:empty_ytpme \
//!     --stats_port=50052 --rpc_timeout_sec=20
//! ```

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use mesh_grpc_interop::client::{Options, Workload, start};
use mesh_grpc_interop::flags::{self, Flags};

const KNOWN: &[&str] = &[
    "server",
    "qps",
    "num_channels",
    "rpc",
    "metadata",
    "stats_port",
    "rpc_timeout_sec",
    "secure_mode",
    "fail_on_failed_rpc",
    "print_response",
    "verbose",
];

fn main() -> std::process::ExitCode {
    mesh_grpc_interop::run_main("xds-interop-client", run())
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let f = Flags::parse(std::env::args().skip(1), KNOWN)?;
    let server = f
        .string("server")
        .ok_or("--server=xds:///host[:port] is required")?
        .to_owned();
    // --secure_mode needs nothing more: whether a cluster uses mTLS is the control plane's
    // call (its DestinationRule), and the certificates come from the bootstrap's providers.
    let _secure = f.bool("secure_mode")?;
    let opts = Options {
        server,
        qps: f.number("qps", 1)?,
        workload: Workload {
            rpcs: flags::rpcs(f.string("rpc").unwrap_or("UnaryCall"))?,
            metadata: flags::metadata(f.string("metadata").unwrap_or(""))?,
            timeout: Duration::from_secs(f.number("rpc_timeout_sec", 30)?),
        },
        stats: SocketAddr::from((Ipv4Addr::UNSPECIFIED, f.number("stats_port", 50052)?)),
    };
    let mesh = mesh_core::Mesh::from_env().await?;
    let running = start(&mesh, opts).await?;
    tracing::info!(stats = %running.stats, "interop client running");
    tokio::signal::ctrl_c().await?;
    Ok(())
}
