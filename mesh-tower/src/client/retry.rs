//! Retry policy: which outcomes are retried, and how long to wait between attempts.
//!
//! The conditions are Envoy's `retry_on` (and so Istio's `retryOn`): an attempt is retried when
//! its outcome matches a condition, attempts remain, the body can be replayed and the retry
//! budget admits it ([`Counters::try_retry`](super::circuit_breaker::Counters::try_retry)).

use std::time::Duration;

use http::HeaderMap;
use mesh_core::model::{RequestView, RetryOn, RetryPolicy};

/// How an attempt ended, as the retry policy sees it.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Outcome<'a> {
    /// The upstream answered.
    Response { status: u16, headers: &'a HeaderMap },
    /// Connecting failed.
    ConnectFailure,
    /// The stream was reset (or the connection closed) before a response.
    Reset,
    /// HTTP/2 `REFUSED_STREAM`.
    RefusedStream,
    /// The per-try timeout fired.
    PerTryTimeout,
}

/// Whether `outcome` is retriable under `policy` (ignoring attempts left and budgets).
pub(crate) fn retriable(policy: &RetryPolicy, outcome: Outcome<'_>) -> bool {
    let on = policy.retry_on;
    let has = |c: RetryOn| on.contains(c);
    // Envoy retries any reset (and per-try timeout) under 5xx, gateway-error and reset.
    let any_reset = has(RetryOn::FIVE_XX) || has(RetryOn::GATEWAY_ERROR) || has(RetryOn::RESET);
    match outcome {
        Outcome::ConnectFailure => any_reset || has(RetryOn::CONNECT_FAILURE),
        Outcome::Reset | Outcome::PerTryTimeout => any_reset,
        Outcome::RefusedStream => any_reset || has(RetryOn::REFUSED_STREAM),
        Outcome::Response { status, headers } => {
            (has(RetryOn::FIVE_XX) && status >= 500)
                || (has(RetryOn::GATEWAY_ERROR) && matches!(status, 502..=504))
                || (has(RetryOn::RETRIABLE_4XX) && status == 409)
                || (has(RetryOn::RETRIABLE_STATUS_CODES)
                    && policy.retriable_status_codes.contains(&status))
                || (has(RetryOn::RETRIABLE_HEADERS) && retriable_headers(policy, headers))
                || grpc_retriable(on, headers)
        }
    }
}

fn retriable_headers(policy: &RetryPolicy, headers: &HeaderMap) -> bool {
    if policy.retriable_headers.is_empty() {
        return false;
    }
    let view = RequestView::of_headers(headers);
    policy.retriable_headers.iter().any(|m| m.matches(&view))
}

/// gRPC conditions read `grpc-status` from the response headers, where a trailers-only
/// response (the usual shape of a gRPC error) carries it.
fn grpc_retriable(on: RetryOn, headers: &HeaderMap) -> bool {
    let Some(code) = crate::respond::grpc_status(headers) else {
        return false;
    };
    let cond = match code {
        1 => RetryOn::GRPC_CANCELLED,
        4 => RetryOn::GRPC_DEADLINE_EXCEEDED,
        8 => RetryOn::GRPC_RESOURCE_EXHAUSTED,
        13 => RetryOn::GRPC_INTERNAL,
        14 => RetryOn::GRPC_UNAVAILABLE,
        _ => return false,
    };
    on.contains(cond)
}

/// Whether the request may be retried at all (`retriable_request_headers`).
pub(crate) fn request_allows(policy: &RetryPolicy, req: &RequestView<'_>) -> bool {
    policy.retriable_request_headers.is_empty()
        || policy
            .retriable_request_headers
            .iter()
            .any(|m| m.matches(req))
}

/// Envoy's jittered exponential backoff before retry `n` (1 for the first retry): a uniform
/// wait in `[0, min(base × 2^(n-1), max))`.
pub(crate) fn backoff(policy: &RetryPolicy, n: u32) -> Duration {
    let base = policy.backoff_base.as_millis().max(1) as u64;
    let max = policy.backoff_max.as_millis().max(1) as u64;
    let ceiling = base
        .saturating_mul(1u64 << (n.saturating_sub(1)).min(32))
        .min(max);
    Duration::from_millis(fastrand::u64(0..ceiling.max(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(on: &str) -> RetryPolicy {
        RetryPolicy {
            retry_on: RetryOn::parse(on).unwrap(),
            num_retries: 2,
            per_try_timeout: None,
            per_try_idle_timeout: None,
            retriable_status_codes: Box::new([418]),
            retriable_headers: Box::new([]),
            retriable_request_headers: Box::new([]),
            backoff_base: Duration::from_millis(25),
            backoff_max: Duration::from_millis(250),
            avoid_previous_hosts: false,
            host_selection_max_attempts: 1,
        }
    }

    fn status(s: u16, h: &HeaderMap) -> Outcome<'_> {
        Outcome::Response {
            status: s,
            headers: h,
        }
    }

    #[test]
    fn envoy_conditions() {
        let h = HeaderMap::new();
        assert!(retriable(&policy("5xx"), status(500, &h)));
        assert!(retriable(&policy("5xx"), Outcome::ConnectFailure));
        assert!(retriable(&policy("5xx"), Outcome::PerTryTimeout));
        assert!(!retriable(&policy("5xx"), status(404, &h)));
        assert!(retriable(&policy("gateway-error"), status(503, &h)));
        assert!(!retriable(&policy("gateway-error"), status(500, &h)));
        assert!(retriable(
            &policy("connect-failure"),
            Outcome::ConnectFailure
        ));
        assert!(!retriable(&policy("connect-failure"), Outcome::Reset));
        assert!(!retriable(&policy("connect-failure"), status(503, &h)));
        assert!(retriable(&policy("reset"), Outcome::Reset));
        assert!(retriable(&policy("refused-stream"), Outcome::RefusedStream));
        assert!(!retriable(&policy("refused-stream"), Outcome::Reset));
        assert!(retriable(&policy("retriable-4xx"), status(409, &h)));
        assert!(retriable(
            &policy("retriable-status-codes"),
            status(418, &h)
        ));
        assert!(!retriable(
            &policy("retriable-status-codes"),
            status(503, &h)
        ));
    }

    #[test]
    fn grpc_conditions_read_grpc_status() {
        let mut h = HeaderMap::new();
        h.insert("grpc-status", "14".parse().unwrap());
        assert!(retriable(&policy("unavailable"), status(200, &h)));
        assert!(!retriable(&policy("cancelled"), status(200, &h)));
        h.insert("grpc-status", "1".parse().unwrap());
        assert!(retriable(&policy("cancelled"), status(200, &h)));
    }

    #[test]
    fn backoff_is_jittered_and_capped() {
        let p = policy("5xx");
        for n in 1..10 {
            let ceiling = (25u64 << (n - 1)).min(250);
            for _ in 0..50 {
                assert!(backoff(&p, n) < Duration::from_millis(ceiling));
            }
        }
    }
}
