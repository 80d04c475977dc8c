//! Errors of the mesh client: only for requests that cannot be routed at all. Everything Envoy
//! would answer (no healthy upstream, timeouts, overflow, …) is a response, with flags.

use std::time::Duration;

/// Why a request could not be handled.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The request names no destination: its URI has no authority and it has no `Host` header.
    #[error(
        "request has no authority: give an absolute URI (http://reviews:9080/...) or a Host header"
    )]
    NoAuthority,
    /// The mesh had no configuration for the target in time.
    #[error(
        "no mesh configuration for {authority} after {waited:?}: is the control plane reachable and does it know this service?"
    )]
    NotReady {
        /// The target (`host:port`).
        authority: String,
        /// How long the request waited.
        waited: Duration,
    },
}
