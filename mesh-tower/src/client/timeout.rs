//! The route timeout: one deadline over all attempts, from the route's `timeout`, the request's
//! `grpc-timeout` (when `max_stream_duration.grpc_timeout_header_max` is set) and the route's
//! `max_stream_duration`.
//!
//! The deadline covers the wait for the response headers, across every attempt and backoff;
//! a response body then streams without it, so long gRPC streams are not cut (Envoy applies its
//! route timeout to the body too, which is why Istio turns it off for streaming services).

use std::time::Duration;

use http::HeaderMap;
use mesh_core::model::ForwardAction;

use crate::flags::ResponseFlags;

/// The deadline of a request and the flag it ends with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Deadline {
    pub(crate) after: Duration,
    pub(crate) flag: ResponseFlags,
}

/// The effective deadline for a request forwarded by `fwd`, or `None` for no limit.
pub(crate) fn deadline(fwd: &ForwardAction, headers: &HeaderMap) -> Option<Deadline> {
    let mut timeout = fwd.timeout;
    if let Some(msd) = &fwd.max_stream_duration
        && let Some(cap) = msd.grpc_timeout_header_max
        && let Some(grpc) = headers
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout)
    {
        let mut t = grpc.saturating_sub(msd.grpc_timeout_header_offset.unwrap_or_default());
        if !cap.is_zero() {
            t = t.min(cap);
        }
        // A zero result means "no deadline" only for the header-less case; an expired
        // grpc-timeout still times out at once.
        timeout = Some(t);
    }
    let route = timeout.map(|after| Deadline {
        after,
        flag: ResponseFlags::UPSTREAM_REQUEST_TIMEOUT,
    });
    let stream = fwd
        .max_stream_duration
        .and_then(|m| m.max)
        .filter(|d| !d.is_zero())
        .map(|after| Deadline {
            after,
            flag: ResponseFlags::UPSTREAM_MAX_STREAM_DURATION_REACHED,
        });
    match (route, stream) {
        (Some(r), Some(s)) => Some(if s.after < r.after { s } else { r }),
        (r, s) => r.or(s),
    }
}

/// Parses gRPC's `grpc-timeout` (`<digits><unit>`, at most 8 digits).
pub(crate) fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (digits, unit) = v.split_at(v.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_core::model::{ClusterSpecifier, MaxStreamDuration};

    fn fwd(timeout: Option<Duration>, msd: Option<MaxStreamDuration>) -> ForwardAction {
        ForwardAction {
            cluster: ClusterSpecifier::Cluster("c".into()),
            timeout,
            idle_timeout: None,
            retry: None,
            hedge: None,
            hash_policies: Box::new([]),
            mirrors: Box::new([]),
            prefix_rewrite: None,
            regex_rewrite: None,
            host_rewrite: None,
            max_stream_duration: msd,
            cluster_not_found_status: http::StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    #[test]
    fn grpc_timeout_syntax() {
        assert_eq!(parse_grpc_timeout("100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("5x"), None);
        assert_eq!(parse_grpc_timeout("123456789m"), None, "at most 8 digits");
    }

    #[test]
    fn route_timeout_applies_without_grpc_settings() {
        let mut h = HeaderMap::new();
        h.insert("grpc-timeout", "50m".parse().unwrap());
        let d = deadline(&fwd(Some(Duration::from_secs(3)), None), &h).unwrap();
        assert_eq!(
            d.after,
            Duration::from_secs(3),
            "grpc-timeout ignored unless enabled"
        );
        assert!(deadline(&fwd(None, None), &h).is_none());
    }

    #[test]
    fn grpc_timeout_is_honoured_capped_and_offset() {
        let mut h = HeaderMap::new();
        h.insert("grpc-timeout", "500m".parse().unwrap());
        let msd = |max: u64, off: u64| MaxStreamDuration {
            max: None,
            grpc_timeout_header_max: Some(Duration::from_millis(max)),
            grpc_timeout_header_offset: Some(Duration::from_millis(off)),
        };
        let d = |m| {
            deadline(&fwd(Some(Duration::from_secs(15)), Some(m)), &h)
                .unwrap()
                .after
        };
        assert_eq!(d(msd(0, 0)), Duration::from_millis(500));
        assert_eq!(d(msd(200, 0)), Duration::from_millis(200));
        assert_eq!(d(msd(0, 100)), Duration::from_millis(400));
    }

    #[test]
    fn max_stream_duration_caps_with_its_own_flag() {
        let m = MaxStreamDuration {
            max: Some(Duration::from_millis(100)),
            ..MaxStreamDuration::default()
        };
        let d = deadline(
            &fwd(Some(Duration::from_secs(1)), Some(m)),
            &HeaderMap::new(),
        )
        .unwrap();
        assert_eq!(d.after, Duration::from_millis(100));
        assert_eq!(d.flag, ResponseFlags::UPSTREAM_MAX_STREAM_DURATION_REACHED);
    }
}
