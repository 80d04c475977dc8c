//! `xds-interop-server`: gRPC's xDS interop test server on mesh-grpc.
//!
//! ```text
//! GRPC_XDS_BOOTSTRAP=bootstrap.json xds-interop-server --port=8080 --maintenance_port=8081 \
//!     --server_id=s0 --host_name_override=server-0
//! ```

use std::net::{Ipv4Addr, SocketAddr};

use mesh_grpc_interop::flags::Flags;
use mesh_grpc_interop::server::{Identity, serve};

const KNOWN: &[&str] = &[
    "port",
    "maintenance_port",
    "secure_mode",
    "server_id",
    "host_name_override",
    "verbose",
];

fn main() -> std::process::ExitCode {
    mesh_grpc_interop::run_main("xds-interop-server", run())
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let f = Flags::parse(std::env::args().skip(1), KNOWN)?;
    let port: u16 = f.number("port", 8080)?;
    let maintenance: u16 = f.number("maintenance_port", port.wrapping_add(1))?;
    if maintenance == port {
        // The meshed port serves only what its inbound listener allows; the maintenance
        // port must stay reachable in plaintext, so it cannot be the same socket.
        return Err("--maintenance_port must differ from --port".into());
    }
    let hostname = match f.string("host_name_override") {
        Some(h) => h.to_owned(),
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "localhost".into()),
    };
    let me = Identity {
        server_id: f.string("server_id").unwrap_or(&hostname).to_owned(),
        hostname,
    };
    let _secure = f.bool("secure_mode")?;
    let mesh = mesh_core::Mesh::from_env().await?;
    let running = serve(
        &mesh,
        me,
        SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)),
        SocketAddr::from((Ipv4Addr::UNSPECIFIED, maintenance)),
    )
    .await?;
    tokio::signal::ctrl_c().await?;
    // Istio's default drain time.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), running.stop()).await;
    Ok(())
}
