//! xDS.
pub mod translate;
