//! # mesh-core
//!
//! The foundation of mesh, an in-process service mesh: the gRPC xDS [bootstrap](Bootstrap), an
//! [xDS client](xds::XdsClient) (Envoy v3 ADS, state of the world), the validated [config
//! model](model), per-target [snapshots](snapshot::TargetSnapshot), and [static
//! configuration](static_config::StaticResources) for running without a control plane.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! // From a control plane named in GRPC_XDS_BOOTSTRAP (istiod or mesh-control) ...
//! let mesh = mesh_core::Mesh::from_env().await?;
//! // ... or from a file of Envoy resources, with no control plane at all.
//! let mesh = mesh_core::Mesh::builder().static_file("mesh.yaml")?.build().await?;
//! let snapshot = mesh.target("reviews:9080").ready().await;
//! # Ok(()) }
//! ```
//!
//! | feature | reference |
//! |---|---|
//! | bootstrap: `xds_servers`, `node`, `certificate_providers`, templates, `authorities` | gRFC A27, A29, A47, A65, A71 |
//! | ADS: ACK/NACK with field paths, last-known-good, does-not-exist timer | xDS protocol, gRFC A46, A57 |
//! | deletion and data errors (`fail_on_data_errors`) | gRFC A53, A88 |
//! | fallback servers | gRFC A71 |
//! | complete LDS→RDS→CDS→EDS snapshots only | gRFC A74 |
//! | HTTP filters, `is_optional` | gRFC A39 |
//! | `load_balancing_policy` lists | gRFC A52 |
#![forbid(unsafe_code)]

pub mod authz_service;
pub mod bootstrap;
pub mod identity;
mod mesh;
pub mod model;
pub mod snapshot;
pub mod static_config;
pub mod status;
pub mod xds;

pub use bootstrap::Bootstrap;
pub use mesh::{DangerousMeshBuilder, Error, Mesh, MeshBuilder};
pub use snapshot::{Target, TargetSnapshot};
pub use static_config::StaticResources;

#[doc(hidden)]
pub static DESCRIPTORS: &[u8] = include_bytes!(env!("MESH_ENVOY_DESCRIPTORS"));
