//! Istio's durations: Go syntax (`1s`, `0.5s`, `100ms`, `1m30s`, `2h`).

use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// Parses a Go duration string.
///
/// ```
/// use std::time::Duration;
/// assert_eq!(mesh_control::config::parse_duration("1m30s"), Ok(Duration::from_secs(90)));
/// assert_eq!(mesh_control::config::parse_duration("0.5s"), Ok(Duration::from_millis(500)));
/// assert!(mesh_control::config::parse_duration("soon").is_err());
/// // Beyond google.protobuf.Duration's range: an error, never a panic.
/// assert!(mesh_control::config::parse_duration("99999999999999999999h").is_err());
/// ```
pub fn parse_duration(s: &str) -> Result<Duration, InvalidDuration> {
    let bad = || InvalidDuration::Syntax(s.into());
    if s.is_empty() {
        return Err(bad());
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        if num_len == 0 {
            return Err(bad());
        }
        let value: f64 = rest[..num_len].parse().map_err(|_| bad())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return Err(bad()),
        };
        total += value * scale;
        rest = &rest[unit_len..];
    }
    mesh_core::model::duration_from_secs_f64(total)
        .map_err(|why| InvalidDuration::Range(s.into(), why))
}

/// Why a string is not an Istio duration ([`parse_duration`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidDuration {
    /// Not Go's duration syntax.
    #[error("{0:?} is not a duration (use e.g. \"1s\", \"250ms\", \"1m30s\")")]
    Syntax(Box<str>),
    /// Negative or too large.
    #[error("{0:?} {1}")]
    Range(Box<str>, mesh_core::model::InvalidDuration),
}

/// A duration field in Istio YAML.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct IstioDuration(pub Duration);

impl<'de> Deserialize<'de> for IstioDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s)
            .map(IstioDuration)
            .map_err(serde::de::Error::custom)
    }
}
