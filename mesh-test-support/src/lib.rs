//! Test support shared by every crate's tests: a scriptable ADS server on real loopback TCP,
//! builders for the xDS resources tests need, and small helpers.
//!
//! Not published; nothing here is used outside tests and benchmarks.
#![forbid(unsafe_code)]
// Test code may lock: nothing here is on a request path.
#![allow(clippy::disallowed_types)]

pub mod ads;
pub mod authz;
pub mod backend;
pub mod bench;
pub mod envoy;
pub mod http;
pub mod jwt;
pub mod load;
pub mod otlp;
pub mod pki;
pub mod ports;
pub mod prometheus;
pub mod python;
pub mod resources;
pub mod scenarios;
pub mod static_json;

pub use ads::AdsServer;
pub use backend::{Backend, Behavior};
pub use envoy::Envoy;
pub use pki::{CertifiedKey, TempFiles, TestCa};
pub use ports::unused_port;

/// Installs a `tracing` subscriber for tests once (`RUST_LOG` filters it; default `warn`).
pub fn trace_init() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// Polls `$cond` until it holds, failing the test after `$timeout` (default 10 s) with `$msg`.
#[macro_export]
macro_rules! assert_eventually {
    ($cond:expr, $($msg:tt)+) => {{
        let deadline = ::tokio::time::Instant::now() + ::std::time::Duration::from_secs(10);
        loop {
            if $cond {
                break;
            }
            if ::tokio::time::Instant::now() >= deadline {
                panic!($($msg)+);
            }
            ::tokio::time::sleep(::std::time::Duration::from_millis(10)).await;
        }
    }};
}

/// `../shared/<sub>` beside the workspace (Istio's samples and xDS dumps, kept outside the
/// repository). CI and developer machines have it; a test that needs it panics when it is
/// missing, unless `MESH_SHARED_OPTIONAL` is set, in which case it gets `None` and returns.
pub fn shared_dir(sub: &str) -> Option<std::path::PathBuf> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared")
        .join(sub);
    if dir.is_dir() {
        return Some(dir);
    }
    assert!(
        std::env::var_os("MESH_SHARED_OPTIONAL").is_some(),
        "{} is missing (set MESH_SHARED_OPTIONAL=1 to run without the shared fixtures)",
        dir.display()
    );
    None
}
