//! The validated configuration model: plain Rust, no protobuf types.
//!
//! Every xDS resource is translated into these types once, when it arrives
//! ([`crate::xds::translate`]); the data path reads nothing else. Lists are boxed slices (no
//! spare capacity), names are `Arc<str>` (shared between the resource and its references).

mod authz;
mod chain_match;
mod cluster;
mod endpoint;
mod filter;
mod listener;
mod matcher;
mod path;
mod route;
mod tls;

pub use authz::*;
pub use chain_match::*;
pub use cluster::*;
pub use endpoint::*;
pub use filter::*;
pub use listener::*;
pub use matcher::*;
pub use path::*;
pub use route::*;
pub use tls::*;
