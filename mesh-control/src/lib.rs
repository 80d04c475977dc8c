//! mesh-control: a development control plane. Istio YAML in, xDS out, for mesh's own clients,
//! gRPC's proxyless clients and Envoy sidecars alike.
#![forbid(unsafe_code)]

pub mod analyze;
pub mod config;
pub mod control;
pub mod dev;
pub mod dump;
pub mod generate;
pub mod registry;
pub mod server;
