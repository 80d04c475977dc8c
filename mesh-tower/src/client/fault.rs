//! Fault injection (Envoy's `envoy.filters.http.fault`, Istio's `fault` on an HTTP route).
//!
//! The listener names the fault filters; a route (or its virtual host, or the chosen weighted
//! cluster) may replace a filter's config or disable it. A fault applies when the request's
//! headers match, the chosen cluster is the one named (if any), fewer than
//! `max_active_faults` are active, and the percentage draw hits. The delay runs first, then the
//! abort; an aborted request never reaches the router, so it is never retried.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use http::StatusCode;
use mesh_core::model::{
    AbortKind, DelayKind, FaultConfig, FilterConfig, FilterOverride, FilterOverrides, RequestView,
};

/// A fault filter of the listener, in filter order.
#[derive(Clone, Debug)]
pub(crate) struct FaultFilter {
    pub(crate) name: Arc<str>,
    pub(crate) config: Arc<FaultConfig>,
    pub(crate) disabled: bool,
}

/// What to inject into one request.
#[derive(Debug, Default)]
pub(crate) struct Injection {
    pub(crate) delay: Option<Duration>,
    pub(crate) abort: Option<Abort>,
    _active: Option<ActiveFault>,
}

/// The answer to an aborted request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Abort {
    Http(StatusCode),
    Grpc(u32),
}

/// Counts one request with an active fault.
#[derive(Debug)]
struct ActiveFault(Arc<AtomicU32>);

impl Drop for ActiveFault {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Decides the faults for a request routed to `cluster`. `overrides` go from the most specific
/// (weighted cluster) to the least (virtual host).
pub(crate) fn evaluate(
    filters: &[FaultFilter],
    overrides: &[&FilterOverrides],
    cluster: &str,
    req: &RequestView<'_>,
    active: &Arc<AtomicU32>,
) -> Injection {
    let mut out = Injection::default();
    for f in filters {
        let config = match overrides.iter().find_map(|o| o.get(&f.name)) {
            Some(FilterOverride::Disabled) => continue,
            Some(FilterOverride::Config(FilterConfig::Fault(c))) => c,
            Some(FilterOverride::Config(_)) => continue,
            None if f.disabled => continue,
            None => &f.config,
        };
        if !config.headers.iter().all(|m| m.matches(req))
            || config
                .upstream_cluster
                .as_deref()
                .is_some_and(|c| c != cluster)
        {
            continue;
        }
        let delay = config.delay.as_ref().and_then(|d| {
            d.fraction.hit(sample()).then_some(())?;
            match d.kind {
                DelayKind::Fixed(t) => Some(t),
                DelayKind::Header => {
                    header_u64(req, "x-envoy-fault-delay-request").map(Duration::from_millis)
                }
            }
        });
        let abort = config.abort.as_ref().and_then(|a| {
            a.fraction.hit(sample()).then_some(())?;
            match a.kind {
                AbortKind::Http(s) => Some(Abort::Http(s)),
                AbortKind::Grpc(c) => Some(Abort::Grpc(c)),
                AbortKind::Header => header_u64(req, "x-envoy-fault-abort-request")
                    .and_then(|c| StatusCode::from_u16(c as u16).ok())
                    .filter(|s| (200..600).contains(&s.as_u16()))
                    .map(Abort::Http)
                    .or_else(|| {
                        header_u64(req, "x-envoy-fault-abort-grpc-request")
                            .map(|c| Abort::Grpc(c as u32))
                    }),
            }
        });
        if delay.is_none() && abort.is_none() {
            continue;
        }
        if out._active.is_none() {
            let max = config.max_active_faults.unwrap_or(u32::MAX);
            if active
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n < max).then(|| n + 1)
                })
                .is_err()
            {
                continue;
            }
            out._active = Some(ActiveFault(active.clone()));
        }
        out.delay = out.delay.or(delay);
        out.abort = out.abort.or(abort);
    }
    out
}

fn sample() -> u32 {
    fastrand::u32(0..1_000_000)
}

fn header_u64(req: &RequestView<'_>, name: &str) -> Option<u64> {
    req.headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_core::model::{FaultAbort, FaultDelay, Fraction};

    fn filter(c: FaultConfig) -> FaultFilter {
        FaultFilter {
            name: "envoy.filters.http.fault".into(),
            config: Arc::new(c),
            disabled: false,
        }
    }

    fn abort(code: u16, fraction: Fraction) -> FaultConfig {
        FaultConfig {
            abort: Some(FaultAbort {
                kind: AbortKind::Http(StatusCode::from_u16(code).unwrap()),
                fraction,
            }),
            ..FaultConfig::default()
        }
    }

    fn run(filters: &[FaultFilter], o: &[&FilterOverrides], req: &http::Request<()>) -> Injection {
        evaluate(
            filters,
            o,
            "c",
            &RequestView::from_request(req),
            &Arc::new(AtomicU32::new(0)),
        )
    }

    #[test]
    fn aborts_and_delays_apply_at_their_percentage() {
        let req = http::Request::get("http://a/").body(()).unwrap();
        let f = [filter(abort(503, Fraction::ALWAYS))];
        assert_eq!(
            run(&f, &[], &req).abort,
            Some(Abort::Http(StatusCode::SERVICE_UNAVAILABLE))
        );
        let never = [filter(abort(503, Fraction { per_million: 0 }))];
        assert_eq!(run(&never, &[], &req).abort, None);
        fastrand::seed(5);
        let half = [filter(abort(503, Fraction::from_percent(50.0)))];
        let hits = (0..2000)
            .filter(|_| run(&half, &[], &req).abort.is_some())
            .count();
        assert!((900..1100).contains(&hits), "{hits}");
        let delay = [filter(FaultConfig {
            delay: Some(FaultDelay {
                kind: DelayKind::Fixed(Duration::from_secs(7)),
                fraction: Fraction::ALWAYS,
            }),
            ..FaultConfig::default()
        })];
        assert_eq!(run(&delay, &[], &req).delay, Some(Duration::from_secs(7)));
    }

    #[test]
    fn route_overrides_replace_or_disable_the_filter() {
        let req = http::Request::get("http://a/").body(()).unwrap();
        let base = [FaultFilter {
            disabled: true,
            ..filter(FaultConfig::default())
        }];
        assert!(
            run(&base, &[], &req).abort.is_none(),
            "disabled without an override"
        );
        let o = FilterOverrides(Box::new([(
            "envoy.filters.http.fault".into(),
            FilterOverride::Config(FilterConfig::Fault(Arc::new(abort(500, Fraction::ALWAYS)))),
        )]));
        assert_eq!(
            run(&base, &[&o], &req).abort,
            Some(Abort::Http(StatusCode::INTERNAL_SERVER_ERROR))
        );
        let off = FilterOverrides(Box::new([(
            "envoy.filters.http.fault".into(),
            FilterOverride::Disabled,
        )]));
        let on = [filter(abort(500, Fraction::ALWAYS))];
        assert!(run(&on, &[&off], &req).abort.is_none());
    }

    #[test]
    fn header_controlled_faults_read_envoy_headers() {
        let req = http::Request::get("http://a/")
            .header("x-envoy-fault-abort-request", "429")
            .header("x-envoy-fault-delay-request", "20")
            .body(())
            .unwrap();
        let f = [filter(FaultConfig {
            abort: Some(FaultAbort {
                kind: AbortKind::Header,
                fraction: Fraction::ALWAYS,
            }),
            delay: Some(FaultDelay {
                kind: DelayKind::Header,
                fraction: Fraction::ALWAYS,
            }),
            ..FaultConfig::default()
        })];
        let i = run(&f, &[], &req);
        assert_eq!(i.abort, Some(Abort::Http(StatusCode::TOO_MANY_REQUESTS)));
        assert_eq!(i.delay, Some(Duration::from_millis(20)));
    }

    #[test]
    fn max_active_faults_caps_concurrent_faults() {
        let req = http::Request::get("http://a/").body(()).unwrap();
        let f = [filter(FaultConfig {
            max_active_faults: Some(1),
            ..abort(503, Fraction::ALWAYS)
        })];
        let active = Arc::new(AtomicU32::new(0));
        let view = RequestView::from_request(&req);
        let first = evaluate(&f, &[], "c", &view, &active);
        assert!(first.abort.is_some());
        assert!(evaluate(&f, &[], "c", &view, &active).abort.is_none());
        drop(first);
        assert!(evaluate(&f, &[], "c", &view, &active).abort.is_some());
    }
}
