//! Protobuf → model. The only module where `envoy-types` messages appear.
//!
//! Each resource is decoded and validated once, on arrival. Errors name the field path inside
//! the resource (`virtual_hosts[0].routes[2].match.safe_regex.regex: …`), so a NACK's
//! `error_detail` tells an operator exactly what to fix; the resource name is added by the
//! caller ([`crate::xds::ResourceError`]).
//!
//! Why `envoy-types`: it ships pre-generated prost 0.14 / tonic 0.14 code for the whole Envoy
//! data-plane API (no `protoc` at build time), `prost::Name` on every message, ADS and CSDS
//! client *and* server stubs, and a descriptor set that our static-config loader uses for the
//! proto3 JSON mapping. `xds-api` is on an older tonic, and generating our own would vendor
//! hundreds of upstream protos.

// Control planes (istiod included) still send deprecated fields; accepting them is the point.
#![allow(deprecated)]

mod cluster;
mod endpoint;
mod filter;
mod listener;
mod matcher;
mod route;
mod tls;

use std::fmt;

use crate::model::MAX_DURATION;
use std::time::Duration;

use envoy_types::pb::google::protobuf::{Any, Duration as PbDuration};
use prost::{Message, Name};

pub use cluster::cluster;
pub use endpoint::cluster_load_assignment;
pub use listener::listener;
pub use route::route_configuration;

/// Decodes and validates one resource of any of the four types, as the client does on arrival:
/// its type, name and model, or an error naming the resource and field.
pub fn resource(
    any: &Any,
) -> Result<(crate::xds::ResourceType, String, crate::xds::Resource), InvalidResource> {
    let (ty, d) = crate::xds::decode_any(any, false).map_err(InvalidResource::Decode)?;
    let r = d.result.map_err(|error| InvalidResource::Field {
        ty,
        name: d.name.clone(),
        error,
    })?;
    Ok((ty, d.name, r))
}

/// Why [`resource`] refuses a resource.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidResource {
    /// It is not one of the four types, or not a valid message of its type.
    #[error("{0}")]
    Decode(String),
    /// It fails validation at a field.
    #[error("{ty} {name}: {error}")]
    Field {
        /// Its type.
        ty: crate::xds::ResourceType,
        /// Its name.
        name: String,
        /// The field, and why.
        error: FieldError,
    },
}

/// A validation failure inside one resource, with the path of the offending field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct FieldError {
    path: String,
    reason: String,
}

impl FieldError {
    /// A failure at the current position.
    pub(crate) fn new(reason: impl Into<String>) -> Self {
        Self {
            path: String::new(),
            reason: reason.into(),
        }
    }

    /// Prefixes the path with an enclosing field name or index (`"routes[2]"`).
    pub(crate) fn at(mut self, segment: impl fmt::Display) -> Self {
        let seg = segment.to_string();
        self.path = if self.path.is_empty() {
            seg
        } else if self.path.starts_with('[') {
            format!("{seg}{}", self.path)
        } else {
            format!("{seg}.{}", self.path)
        };
        self
    }

    /// The field path, e.g. `virtual_hosts[0].domains[1]`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// What is wrong.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.reason)
        } else {
            write!(f, "{}: {}", self.path, self.reason)
        }
    }
}

/// Adds a field segment to an error on its way out.
pub(crate) trait At<T> {
    fn at(self, segment: impl fmt::Display) -> Result<T, FieldError>;
}

impl<T> At<T> for Result<T, FieldError> {
    fn at(self, segment: impl fmt::Display) -> Result<T, FieldError> {
        self.map_err(|e| e.at(segment))
    }
}

/// Translates each element, naming its index on failure.
pub(crate) fn each<A, B>(
    field: &str,
    items: impl IntoIterator<Item = A>,
    mut f: impl FnMut(A) -> Result<B, FieldError>,
) -> Result<Box<[B]>, FieldError> {
    items
        .into_iter()
        .enumerate()
        .map(|(i, x)| f(x).map_err(|e| e.at(format!("{field}[{i}]"))))
        .collect()
}

/// A protobuf duration as a `Duration`. As Envoy validates them, negative values and values
/// beyond `google.protobuf.Duration`'s range (10,000 years, [`MAX_DURATION`]) are errors, so
/// no configured duration can overflow a deadline or a timer later.
pub(crate) fn duration(d: &PbDuration) -> Result<Duration, FieldError> {
    if d.seconds < 0 || d.nanos < 0 || d.nanos >= 1_000_000_000 {
        return Err(FieldError::new(format!(
            "duration must be non-negative with nanos < 1e9, got {}s {}ns",
            d.seconds, d.nanos
        )));
    }
    let value = Duration::new(d.seconds as u64, d.nanos as u32);
    if value > MAX_DURATION {
        return Err(FieldError::new(format!(
            "duration {}s is too large (at most {}s)",
            d.seconds,
            MAX_DURATION.as_secs()
        )));
    }
    Ok(value)
}

/// An optional duration field.
pub(crate) fn opt_duration(
    d: Option<&PbDuration>,
    field: &str,
) -> Result<Option<Duration>, FieldError> {
    d.map(duration).transpose().at(field)
}

/// Decodes an `Any` of the expected type.
pub(crate) fn unpack<T: Message + Name + Default>(any: &Any) -> Result<T, FieldError> {
    if any.type_url != T::type_url() {
        return Err(FieldError::new(format!(
            "expected {}, got {}",
            T::type_url(),
            any.type_url
        )));
    }
    T::decode(any.value.as_slice())
        .map_err(|e| FieldError::new(format!("cannot decode {}: {e}", T::full_name())))
}

/// The type URL of a typed config, looking through `TypedStruct` wrappers so that an unknown
/// filter is reported by its real type.
pub(crate) fn effective_type_url(any: &Any) -> String {
    /// `xds.type.v3.TypedStruct` (and udpa's), of which only `type_url` is read. envoy-types
    /// has the descriptor but no Rust type for it.
    #[derive(Clone, PartialEq, prost::Message)]
    struct TypedStruct {
        #[prost(string, tag = "1")]
        type_url: String,
    }
    if (any.type_url == crate::model::type_urls::TYPED_STRUCT
        || any.type_url == crate::model::type_urls::UDPA_TYPED_STRUCT)
        && let Ok(ts) = TypedStruct::decode(any.value.as_slice())
    {
        return ts.type_url;
    }
    any.type_url.clone()
}

/// A `ConfigSource` naming where a dependent resource comes from: this client has one
/// stream, so only `ads` and `self` (or none) can be followed; a file path or another API
/// server is refused, as gRPC refuses it, rather than fetched from the wrong place.
pub(crate) fn ads_config_source(
    c: Option<&envoy_types::pb::envoy::config::core::v3::ConfigSource>,
) -> Result<(), FieldError> {
    use envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier as S;
    match c.and_then(|c| c.config_source_specifier.as_ref()) {
        None | Some(S::Ads(_)) | Some(S::Self_(_)) => Ok(()),
        Some(S::Path(_) | S::PathConfigSource(_)) => Err(FieldError::new(
            "a file config source is not supported (ads or self only)",
        )),
        Some(S::ApiConfigSource(_)) => Err(FieldError::new(
            "a separate API config source is not supported (ads or self only)",
        )),
    }
}

/// Parses a header name, naming the field on failure.
pub(crate) fn header_name(name: &str) -> Result<http::HeaderName, FieldError> {
    http::HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
        .map_err(|_| FieldError::new(format!("invalid header name {name:?}")))
}

/// Converts a `FractionalPercent` to parts per million.
pub(crate) fn fraction(
    p: &envoy_types::pb::envoy::r#type::v3::FractionalPercent,
) -> Result<crate::model::Fraction, FieldError> {
    let scale: u64 = match p.denominator {
        0 => 10_000, // HUNDRED
        1 => 100,    // TEN_THOUSAND
        2 => 1,      // MILLION
        d => return Err(FieldError::new(format!("unknown denominator {d}"))).at("denominator"),
    };
    Ok(crate::model::Fraction {
        per_million: (u64::from(p.numerator) * scale).min(1_000_000) as u32,
    })
}

/// Converts a `Percent` (0-100 double).
pub(crate) fn percent(
    p: &envoy_types::pb::envoy::r#type::v3::Percent,
) -> Result<crate::model::Fraction, FieldError> {
    if !(0.0..=100.0).contains(&p.value) {
        return Err(FieldError::new(format!("percent {} is outside 0..=100", p.value)).at("value"));
    }
    Ok(crate::model::Fraction::from_percent(p.value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_beyond_protobufs_range_are_refused() {
        let at = |seconds| duration(&PbDuration { seconds, nanos: 0 });
        assert_eq!(at(315_576_000_000).unwrap(), MAX_DURATION);
        let e = at(315_576_000_001).unwrap_err().to_string();
        assert!(e.contains("too large"), "{e}");
        assert!(at(i64::MAX).is_err());
        assert!(at(-1).is_err());
    }
}
