//! # mesh-grpc-interop
//!
//! gRPC's xDS interop test client and server (`grpc.testing`), on mesh-grpc: the peers the
//! interop scenarios drive (see grpc's `doc/xds-test-descriptions.md`). The binaries
//! `xds-interop-client` and `xds-interop-server` take the contract's flags; the library is
//! what they run, so tests can start the same client and servers in-process.
#![forbid(unsafe_code)]

pub mod client;
pub mod flags;
pub mod proto;
mod rpc;
pub mod server;

pub use rpc::call;

/// Background tasks that end with their owner (a running client or server).
#[derive(Debug)]
struct Tasks(Vec<tokio::task::JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// What the binaries' `main` does around their work: logging from `RUST_LOG`, and an error
/// printed as its message (naming the flag or the bootstrap field) with a failing exit code.
pub fn run_main<F>(program: &str, work: F) -> std::process::ExitCode
where
    F: std::future::Future<Output = Result<(), Box<dyn std::error::Error>>>,
{
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{program}: no runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(work) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{program}: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
