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
