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

/// The longest duration a configuration may give: `google.protobuf.Duration`'s range,
/// 315,576,000,000 s (10,000 years), as Envoy validates durations. Every duration from xDS,
/// a bootstrap or Istio YAML is checked against it, so none can overflow a deadline.
///
/// ```
/// assert_eq!(mesh_core::model::MAX_DURATION.as_secs(), 315_576_000_000);
/// ```
pub const MAX_DURATION: std::time::Duration = std::time::Duration::from_secs(315_576_000_000);

/// A duration given in seconds as a float (proto3 JSON, Istio's Go syntax), checked against
/// [`MAX_DURATION`]: never a panic on a huge, negative or not-a-number value.
///
/// ```
/// use mesh_core::model::duration_from_secs_f64;
/// assert_eq!(duration_from_secs_f64(1.5), Ok(std::time::Duration::from_millis(1500)));
/// assert!(duration_from_secs_f64(1e30).is_err());
/// assert!(duration_from_secs_f64(-1.0).is_err());
/// assert!(duration_from_secs_f64(f64::NAN).is_err());
/// ```
pub fn duration_from_secs_f64(secs: f64) -> Result<std::time::Duration, InvalidDuration> {
    if secs.is_nan() || secs < 0.0 {
        return Err(InvalidDuration::Negative);
    }
    match std::time::Duration::try_from_secs_f64(secs) {
        Ok(d) if d <= MAX_DURATION => Ok(d),
        _ => Err(InvalidDuration::TooLarge),
    }
}

/// Why a number of seconds is not a duration ([`duration_from_secs_f64`]). Its message
/// completes a sentence that starts with the value or the field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidDuration {
    /// Negative, or not a number.
    #[error("must be a non-negative number of seconds")]
    Negative,
    /// Beyond 10,000 years (more than `google.protobuf.Duration` holds).
    #[error("is too large (at most {}s, 10,000 years)", MAX_DURATION.as_secs())]
    TooLarge,
}
