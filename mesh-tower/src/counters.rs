//! Envoy's circuit-breaker counts: per-cluster limits on connections, pending requests, active
//! requests and active retries, checked with atomics and answered at once on overflow (503,
//! `UO`). The cluster's attempts and [`CircuitBreakerLayer`](crate::layer::CircuitBreakerLayer)
//! count with them; response bodies hold an [`Inflight`].
//!
//! tower has no equivalent (a concurrency limit waits instead of failing fast), so the counters
//! are ours. A request holds an [`Inflight`] from admission until its response body is dropped,
//! the span for which Envoy counts a request active.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use mesh_core::model::CircuitBreakers;
use tokio::sync::Notify;

/// A client-wide retry budget, on top of each cluster's own limits: retries in flight may not
/// exceed `percent` of the requests in flight, or `min_concurrency`, whichever is larger.
///
/// This is Envoy's `retry_budget` semantics (a concurrency budget, so it needs no clock and no
/// lock on the request path) applied to every cluster, so that retries cannot multiply the
/// load on a failing upstream even where the control plane sets no budget (Istio's clusters
/// carry none). The default is 20 % with a floor of 3, Envoy's budget defaults.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryBudget {
    /// Share of active requests that may be retries, in percent.
    pub percent: f64,
    /// Retries always allowed.
    pub min_concurrency: u32,
}

impl Default for RetryBudget {
    fn default() -> Self {
        Self {
            percent: 20.0,
            min_concurrency: 3,
        }
    }
}

/// One cluster's live counts.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) active_requests: AtomicU32,
    pub(crate) active_retries: AtomicU32,
    pub(crate) pending: AtomicU32,
    pub(crate) connections: AtomicU32,
    /// Signalled when an HTTP/1 connection becomes idle or closes, for pending requests.
    pub(crate) freed: Notify,
    /// Envoy's overflow counters: requests refused by `max_requests`
    /// (`upstream_rq_pending_overflow` counts both, as Envoy's does for HTTP/1), by
    /// `max_pending_requests`, and retries refused.
    pub(crate) rq_overflow: AtomicU64,
    pub(crate) pending_overflow: AtomicU64,
    pub(crate) retry_overflow: AtomicU64,
}

/// Increments `counter` unless it is already at `max`.
fn try_acquire(counter: &AtomicU32, max: u32) -> bool {
    counter
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < max).then(|| n + 1)
        })
        .is_ok()
}

impl Counters {
    /// Admits one more request unless `max_requests` are active.
    pub(crate) fn try_request(&self, limits: &CircuitBreakers) -> bool {
        let ok = try_acquire(&self.active_requests, limits.max_requests);
        if !ok {
            self.rq_overflow.fetch_add(1, Ordering::Relaxed);
        }
        ok
    }

    /// Admits one more retry unless the cluster's limit (its retry budget, else
    /// `max_retries`) or the client's budget is reached; the slot is held until the returned
    /// guard (or the [`Inflight`] it moves into) is dropped.
    pub(crate) fn try_retry(
        self: &Arc<Self>,
        limits: &CircuitBreakers,
        client: Option<&RetryBudget>,
    ) -> Option<RetrySlot> {
        let admitted = self.retry_admitted(limits, client);
        if !admitted {
            self.retry_overflow.fetch_add(1, Ordering::Relaxed);
        }
        admitted.then(|| RetrySlot(self.clone()))
    }

    fn retry_admitted(&self, limits: &CircuitBreakers, client: Option<&RetryBudget>) -> bool {
        let active = self.active_requests.load(Ordering::Acquire);
        let budget_max =
            |percent: f64, min: u32| -> u32 { ((active as f64 * percent / 100.0) as u32).max(min) };
        let mut max = match limits.retry_budget {
            Some(b) => budget_max(b.budget_per_mille as f64 / 10.0, b.min_retry_concurrency),
            None => limits.max_retries,
        };
        if let Some(c) = client {
            max = max.min(budget_max(c.percent, c.min_concurrency));
        }
        try_acquire(&self.active_retries, max)
    }

    /// Reserves a connection unless `max_connections` are open.
    pub(crate) fn try_connection(&self, limits: &CircuitBreakers) -> bool {
        try_acquire(&self.connections, limits.max_connections)
    }

    /// Releases a connection.
    pub(crate) fn connection_closed(&self) {
        self.connections.fetch_sub(1, Ordering::AcqRel);
        self.freed.notify_waiters();
    }

    /// Counts a request waiting for a connection unless `max_pending_requests` wait already.
    pub(crate) fn try_pending(&self, limits: &CircuitBreakers) -> Option<PendingGuard<'_>> {
        let ok = try_acquire(&self.pending, limits.max_pending_requests);
        if !ok {
            self.pending_overflow.fetch_add(1, Ordering::Relaxed);
        }
        ok.then(|| PendingGuard(self))
    }
}

/// One admitted retry, counted until dropped (when its attempt has answered).
#[derive(Debug)]
pub(crate) struct RetrySlot(Arc<Counters>);

impl Drop for RetrySlot {
    fn drop(&mut self) {
        self.0.active_retries.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Counts one pending request until dropped.
pub(crate) struct PendingGuard<'a>(&'a Counters);

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A host's count of requests in flight (for least-request balancing).
pub(crate) trait HostActive: Send + Sync + std::fmt::Debug {
    fn active(&self) -> &AtomicU32;
}

/// One admitted upstream request (an attempt): counted active in its cluster, and on its host
/// for least-request balancing, until dropped.
#[derive(Debug)]
pub(crate) struct Inflight {
    counters: Arc<Counters>,
    host: Option<Arc<dyn HostActive>>,
}

impl Inflight {
    /// Takes over an admission made with [`Counters::try_request`].
    pub(crate) fn new(counters: Arc<Counters>) -> Self {
        Self {
            counters,
            host: None,
        }
    }

    /// Counts the request on `host` too.
    pub(crate) fn on_host(&mut self, host: Arc<dyn HostActive>) {
        host.active().fetch_add(1, Ordering::AcqRel);
        if let Some(old) = self.host.replace(host) {
            old.active().fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Drop for Inflight {
    fn drop(&mut self) {
        self.counters.active_requests.fetch_sub(1, Ordering::AcqRel);
        if let Some(h) = &self.host {
            h.active().fetch_sub(1, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_core::model::RetryBudget as ClusterBudget;

    fn limits(max_requests: u32, max_retries: u32) -> CircuitBreakers {
        CircuitBreakers {
            max_requests,
            max_retries,
            ..CircuitBreakers::default()
        }
    }

    #[test]
    fn requests_overflow_at_the_limit_and_free_on_drop() {
        let c = Arc::new(Counters::default());
        let l = limits(2, 3);
        assert!(c.try_request(&l));
        let a = Inflight::new(c.clone());
        assert!(c.try_request(&l));
        let _b = Inflight::new(c.clone());
        assert!(!c.try_request(&l), "third request overflows");
        drop(a);
        assert!(c.try_request(&l), "a slot frees when a request ends");
    }

    #[test]
    fn retries_obey_the_tighter_of_cluster_and_client_budgets() {
        let c = Arc::new(Counters::default());
        c.active_requests.store(100, Ordering::Relaxed);
        let mut held = Vec::new();
        let client = RetryBudget::default();
        // Cluster allows 3 concurrent retries (Envoy's default), the client 20 % of 100.
        for _ in 0..3 {
            held.push(
                c.try_retry(&limits(1024, 3), Some(&client))
                    .expect("admitted"),
            );
        }
        assert!(c.try_retry(&limits(1024, 3), Some(&client)).is_none());
        held.clear();
        assert_eq!(
            c.active_retries.load(Ordering::Relaxed),
            0,
            "slots free on drop"
        );
        let unlimited = limits(1024, u32::MAX);
        for _ in 0..20 {
            held.push(c.try_retry(&unlimited, Some(&client)).expect("admitted"));
        }
        assert!(
            c.try_retry(&unlimited, Some(&client)).is_none(),
            "20 % of 100 active"
        );
        held.clear();
        let budget = CircuitBreakers {
            retry_budget: Some(ClusterBudget {
                budget_per_mille: 100,
                min_retry_concurrency: 1,
            }),
            ..limits(1024, 3)
        };
        for _ in 0..10 {
            held.push(c.try_retry(&budget, None).expect("admitted"));
        }
        assert!(
            c.try_retry(&budget, None).is_none(),
            "the cluster's 10 % budget"
        );
    }

    #[test]
    fn pending_requests_are_bounded() {
        let c = Counters::default();
        let l = CircuitBreakers {
            max_pending_requests: 1,
            ..CircuitBreakers::default()
        };
        let g = c.try_pending(&l).expect("first waits");
        assert!(c.try_pending(&l).is_none(), "second overflows");
        drop(g);
        assert!(c.try_pending(&l).is_some());
    }
}
