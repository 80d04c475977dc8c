//! Outlier detection (Envoy's passive health checking).
//!
//! Each attempt's outcome is recorded on its host with atomics. Consecutive-failure ejections
//! happen inline, when the count reaches its threshold; success-rate and failure-percentage
//! ejections, and the return of ejected hosts, happen in the cluster's interval task
//! ([`analyze`]). An ejected host is left out of the balancer's tables, which the cluster
//! rebuilds on every ejection change; this gates the endpoint itself, not a latency estimate,
//! so fast failures cannot look attractive (linkerd2-proxy#4537).
//!
//! Ejection time grows with the host's ejection count: `base_ejection_time × count`, capped at
//! `max(base_ejection_time, max_ejection_time)`; the count falls by one for each interval the
//! host spends healthy. At most `max_ejection_percent` of hosts are ejected at once.

use mesh_core::model::OutlierDetection;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// What one attempt did, as outlier detection sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The upstream answered with this status (gRPC answers are classified by HTTP status).
    Status(u16),
    /// A failure that originated here: connect failure, timeout, reset.
    LocalFailure,
}

/// Per-host outlier state.
#[derive(Debug, Default)]
pub(crate) struct HostOutlier {
    consecutive_5xx: AtomicU32,
    consecutive_gateway: AtomicU32,
    consecutive_local: AtomicU32,
    /// When the current ejection ends (ms on the cluster's clock); 0 when not ejected.
    ejected_until: AtomicU64,
    /// The ejection multiplier.
    ejections: AtomicU32,
    interval_success: AtomicU32,
    interval_failure: AtomicU32,
}

/// Which consecutive-failure threshold a host crossed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EjectReason {
    Consecutive5xx,
    ConsecutiveGateway,
    ConsecutiveLocal,
}

impl HostOutlier {
    /// Whether the host is ejected now.
    pub(crate) fn is_ejected(&self) -> bool {
        self.ejected_until.load(Ordering::Acquire) != 0
    }

    /// When the current ejection ends, in ms on the cluster's clock (0: not ejected).
    pub(crate) fn ejected_until(&self) -> u64 {
        self.ejected_until.load(Ordering::Acquire)
    }

    /// Records an outcome; returns the consecutive-failure threshold it crossed, if any (the
    /// caller decides whether ejecting is allowed).
    pub(crate) fn record(&self, od: &OutlierDetection, outcome: Outcome) -> Option<EjectReason> {
        let local_split = od.split_external_local_origin_errors;
        // Without the split, local failures count like the 503 / 504 Envoy would have made of
        // them.
        let status = match outcome {
            Outcome::Status(s) => Some(s),
            Outcome::LocalFailure if !local_split => Some(503),
            Outcome::LocalFailure => None,
        };
        let Some(status) = status else {
            let n = self.consecutive_local.fetch_add(1, Ordering::AcqRel) + 1;
            return (n == od.consecutive_local_origin_failure
                && roll(od.enforcing_consecutive_local_origin_failure))
            .then_some(EjectReason::ConsecutiveLocal);
        };
        if local_split {
            // An answer from upstream proves the connection works.
            self.consecutive_local.store(0, Ordering::Release);
        }
        if status >= 500 {
            self.interval_failure.fetch_add(1, Ordering::Relaxed);
            let gw = if matches!(status, 502..=504) {
                self.consecutive_gateway.fetch_add(1, Ordering::AcqRel) + 1
            } else {
                self.consecutive_gateway.store(0, Ordering::Release);
                0
            };
            let n = self.consecutive_5xx.fetch_add(1, Ordering::AcqRel) + 1;
            if n == od.consecutive_5xx && roll(od.enforcing_consecutive_5xx) {
                return Some(EjectReason::Consecutive5xx);
            }
            if gw == od.consecutive_gateway_failure
                && roll(od.enforcing_consecutive_gateway_failure)
            {
                return Some(EjectReason::ConsecutiveGateway);
            }
            None
        } else {
            self.interval_success.fetch_add(1, Ordering::Relaxed);
            if self.consecutive_5xx.load(Ordering::Relaxed) != 0 {
                self.consecutive_5xx.store(0, Ordering::Release);
            }
            if self.consecutive_gateway.load(Ordering::Relaxed) != 0 {
                self.consecutive_gateway.store(0, Ordering::Release);
            }
            None
        }
    }

    /// Ejects the host at `now_ms`; false when it already was.
    pub(crate) fn eject(&self, od: &OutlierDetection, now_ms: u64) -> bool {
        let count = self.ejections.load(Ordering::Acquire) + 1;
        let cap = od.max_ejection_time.max(od.base_ejection_time);
        let time = od.base_ejection_time.saturating_mul(count).min(cap);
        let until = now_ms + time.as_millis() as u64;
        if self
            .ejected_until
            .compare_exchange(0, until.max(1), Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return false;
        }
        self.ejections.store(count, Ordering::Release);
        self.consecutive_5xx.store(0, Ordering::Release);
        self.consecutive_gateway.store(0, Ordering::Release);
        self.consecutive_local.store(0, Ordering::Release);
        true
    }

    /// Returns the host if its ejection is over; true when it changed state.
    fn maybe_return(&self, now_ms: u64) -> bool {
        let until = self.ejected_until.load(Ordering::Acquire);
        if until != 0 && now_ms >= until {
            return self
                .ejected_until
                .compare_exchange(until, 0, Ordering::AcqRel, Ordering::Acquire)
                .is_ok();
        }
        if until == 0 {
            // A healthy interval lowers the multiplier.
            let _ = self
                .ejections
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        }
        false
    }

    /// Takes this interval's (successes, failures).
    fn take_interval(&self) -> (u32, u32) {
        (
            self.interval_success.swap(0, Ordering::AcqRel),
            self.interval_failure.swap(0, Ordering::AcqRel),
        )
    }
}

/// Envoy's `enforcing_*` percentages.
fn roll(percent: u32) -> bool {
    percent >= 100 || (percent > 0 && fastrand::u32(0..100) < percent)
}

/// Whether one more host may be ejected when `ejected` of `total` already are.
pub(crate) fn may_eject(od: &OutlierDetection, ejected: usize, total: usize) -> bool {
    total > 0 && (ejected * 100) < (od.max_ejection_percent as usize * total)
}

/// The interval's work over a cluster's hosts: return hosts whose ejection is over, then run
/// success-rate and failure-percentage analysis. Returns whether any host changed state.
pub(crate) fn analyze<'a>(
    od: &OutlierDetection,
    hosts: impl Iterator<Item = &'a HostOutlier> + Clone,
    now_ms: u64,
) -> bool {
    let mut changed = false;
    for h in hosts.clone() {
        changed |= h.maybe_return(now_ms);
    }
    let stats: Vec<(&HostOutlier, u32, u32)> = hosts
        .clone()
        .map(|h| {
            let (s, f) = h.take_interval();
            (h, s, f)
        })
        .collect();
    let total = stats.len();
    let mut ejected = stats.iter().filter(|(h, ..)| h.is_ejected()).count();
    let try_eject = |h: &HostOutlier, enforcing: u32, ejected: &mut usize| {
        if !h.is_ejected()
            && roll(enforcing)
            && may_eject(od, *ejected, total)
            && h.eject(od, now_ms)
        {
            *ejected += 1;
            true
        } else {
            false
        }
    };

    // Success rate: hosts whose rate falls below mean - factor × stdev.
    let rated: Vec<(&HostOutlier, f64)> = stats
        .iter()
        .filter(|(_, s, f)| s + f >= od.success_rate_request_volume.max(1))
        .map(|(h, s, f)| (*h, *s as f64 / (s + f) as f64 * 100.0))
        .collect();
    if od.enforcing_success_rate > 0 && rated.len() >= od.success_rate_minimum_hosts as usize {
        let mean = rated.iter().map(|(_, r)| r).sum::<f64>() / rated.len() as f64;
        let var = rated.iter().map(|(_, r)| (r - mean).powi(2)).sum::<f64>() / rated.len() as f64;
        let threshold = mean - (od.success_rate_stdev_factor as f64 / 1000.0) * var.sqrt();
        for (h, rate) in &rated {
            if *rate < threshold {
                changed |= try_eject(h, od.enforcing_success_rate, &mut ejected);
            }
        }
    }

    // Failure percentage: hosts failing at least the threshold share.
    let counted: Vec<(&HostOutlier, f64)> = stats
        .iter()
        .filter(|(_, s, f)| s + f >= od.failure_percentage_request_volume.max(1))
        .map(|(h, s, f)| (*h, *f as f64 / (s + f) as f64 * 100.0))
        .collect();
    if od.enforcing_failure_percentage > 0
        && counted.len() >= od.failure_percentage_minimum_hosts as usize
    {
        for (h, pct) in &counted {
            if *pct >= od.failure_percentage_threshold as f64 {
                changed |= try_eject(h, od.enforcing_failure_percentage, &mut ejected);
            }
        }
    }
    changed
}

/// The ejection time a host would get for its next ejection (for dumps and tests).
#[cfg(test)]
pub(crate) fn next_ejection_time(od: &OutlierDetection, h: &HostOutlier) -> std::time::Duration {
    let count = h.ejections.load(Ordering::Acquire) + 1;
    od.base_ejection_time
        .saturating_mul(count)
        .min(od.max_ejection_time.max(od.base_ejection_time))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn od() -> OutlierDetection {
        OutlierDetection {
            consecutive_5xx: 3,
            base_ejection_time: Duration::from_secs(30),
            max_ejection_percent: 100,
            ..OutlierDetection::default()
        }
    }

    #[test]
    fn consecutive_5xx_crosses_the_threshold_once() {
        let h = HostOutlier::default();
        let od = od();
        assert_eq!(h.record(&od, Outcome::Status(503)), None);
        assert_eq!(h.record(&od, Outcome::Status(500)), None);
        assert_eq!(
            h.record(&od, Outcome::Status(503)),
            Some(EjectReason::Consecutive5xx)
        );
        assert_eq!(
            h.record(&od, Outcome::Status(503)),
            None,
            "only at the crossing"
        );
    }

    #[test]
    fn a_success_resets_the_count() {
        let h = HostOutlier::default();
        let od = od();
        h.record(&od, Outcome::Status(503));
        h.record(&od, Outcome::Status(503));
        h.record(&od, Outcome::Status(200));
        assert_eq!(h.record(&od, Outcome::Status(503)), None);
    }

    #[test]
    fn local_failures_count_as_5xx_unless_split() {
        let h = HostOutlier::default();
        let od = od();
        h.record(&od, Outcome::LocalFailure);
        h.record(&od, Outcome::LocalFailure);
        assert_eq!(
            h.record(&od, Outcome::LocalFailure),
            Some(EjectReason::Consecutive5xx)
        );
        let split = OutlierDetection {
            split_external_local_origin_errors: true,
            consecutive_local_origin_failure: 2,
            ..od
        };
        let h = HostOutlier::default();
        assert_eq!(h.record(&split, Outcome::LocalFailure), None);
        assert_eq!(
            h.record(&split, Outcome::LocalFailure),
            Some(EjectReason::ConsecutiveLocal)
        );
    }

    #[test]
    fn ejection_time_grows_and_is_capped() {
        let od = OutlierDetection {
            max_ejection_time: Duration::from_secs(70),
            ..od()
        };
        let h = HostOutlier::default();
        assert!(h.eject(&od, 1));
        assert!(!h.eject(&od, 1), "already ejected");
        assert!(h.is_ejected());
        assert!(!analyze(&od, std::iter::once(&h), 30_000));
        assert!(
            analyze(&od, std::iter::once(&h), 30_001),
            "returns after 30 s"
        );
        assert_eq!(next_ejection_time(&od, &h), Duration::from_secs(60));
        assert!(h.eject(&od, 40_000));
        assert!(h.eject(&od, 0) || h.is_ejected());
        analyze(&od, std::iter::once(&h), 100_000);
        assert_eq!(
            next_ejection_time(&od, &h),
            Duration::from_secs(70),
            "capped"
        );
    }

    #[test]
    fn max_ejection_percent_bounds_ejections() {
        let od = OutlierDetection {
            max_ejection_percent: 10,
            ..od()
        };
        assert!(may_eject(&od, 0, 2), "one host can always go");
        assert!(!may_eject(&od, 1, 2));
        assert!(may_eject(&od, 1, 20));
        assert!(!may_eject(&od, 2, 20));
    }

    #[test]
    fn success_rate_ejects_the_outlier() {
        let od = OutlierDetection {
            success_rate_minimum_hosts: 3,
            success_rate_request_volume: 10,
            max_ejection_percent: 50,
            ..od()
        };
        // With Envoy's factor of 1.9 standard deviations, one outlier among few hosts cannot
        // stand out enough; among ten, one at 50 % does (mean 95, stdev 15, threshold 66.5).
        let hosts: Vec<HostOutlier> = (0..10).map(|_| HostOutlier::default()).collect();
        for (i, h) in hosts.iter().enumerate() {
            for n in 0..100 {
                let fail = i == 3 && n % 2 == 0;
                let status = if fail { 500 } else { 200 };
                // Keep the consecutive counter from ejecting first.
                h.record(
                    &OutlierDetection {
                        consecutive_5xx: u32::MAX,
                        ..od.clone()
                    },
                    Outcome::Status(status),
                );
            }
        }
        assert!(analyze(&od, hosts.iter(), 1));
        assert!(hosts[3].is_ejected());
        assert_eq!(hosts.iter().filter(|h| h.is_ejected()).count(), 1);
    }

    #[test]
    fn failure_percentage_ejects_hosts_over_the_threshold() {
        let od = OutlierDetection {
            enforcing_failure_percentage: 100,
            enforcing_success_rate: 0,
            failure_percentage_minimum_hosts: 2,
            failure_percentage_request_volume: 10,
            failure_percentage_threshold: 50,
            max_ejection_percent: 100,
            consecutive_5xx: u32::MAX,
            ..od()
        };
        let hosts: Vec<HostOutlier> = (0..2).map(|_| HostOutlier::default()).collect();
        for n in 0..20 {
            hosts[0].record(&od, Outcome::Status(200));
            hosts[1].record(&od, Outcome::Status(if n < 12 { 503 } else { 200 }));
        }
        assert!(analyze(&od, hosts.iter(), 1));
        assert!(!hosts[0].is_ejected());
        assert!(hosts[1].is_ejected());
    }
}
