//! mesh-core: the foundation of mesh.
#![forbid(unsafe_code)]

pub mod model;
pub mod xds;
