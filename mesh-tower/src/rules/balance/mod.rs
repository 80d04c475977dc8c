//! Load balancing: priorities, localities and the per-cluster picker.
//!
//! A cluster's [`LbTable`] is rebuilt whenever its endpoints, their health or their ejection
//! change (rare events), so a pick (every request) is arithmetic over immutable arrays plus
//! one atomic increment for round robin: no lock, no allocation.
//!
//! Envoy's algorithm, step by step:
//! 1. **Priority**: each priority's health is the share of its hosts that are healthy and not
//!    ejected, times the overprovisioning factor (140 % by default), capped at 100 %. Load goes
//!    to priority 0 up to its health, the rest to the next, and so on; when the healths sum to
//!    less than 100 they are normalised. If the sum is below the panic threshold (50 % by
//!    default), the cluster is in *panic* and every host is used, healthy or not.
//! 2. **Locality** (only with locality-weighted balancing): a locality's share is its weight
//!    times its health.
//! 3. **Host**: weighted round robin, least request (power of `choice_count` choices), random,
//!    ring hash or Maglev. tower's P2C balancer is not used: it only knows least-loaded
//!    choice over ready services, while Envoy's policies need weights, hashes and priorities
//!    over passive endpoints, which this table picks in a few nanoseconds.

mod hash;

use std::sync::atomic::{AtomicUsize, Ordering};

use mesh_core::model::{HealthStatus, LbPolicy};

pub(crate) use hash::RequestHasher;
pub(crate) use hash::hash_key;
use hash::{Maglev, Ring};

/// What a pick reads from an endpoint besides its weight and place: the cluster's hosts
/// (`client::host`) and the public balancer's endpoints both answer it.
pub(crate) trait Balanced {
    /// Its key on a hash ring or Maglev table (Envoy hashes the address: `10.0.0.1:9080`).
    fn ring_key(&self) -> &str;
    /// Requests in flight to it (least request).
    fn active_requests(&self) -> u32;
    /// Whether outlier detection has ejected it.
    fn is_ejected(&self) -> bool;
}

/// One host of a cluster, with what the endpoint list says about it.
#[derive(Clone, Debug)]
pub(crate) struct HostEntry<H> {
    pub(crate) host: H,
    pub(crate) weight: u32,
    pub(crate) health: HealthStatus,
    pub(crate) priority: u32,
    /// Index of its locality within its priority.
    pub(crate) locality: u32,
    /// Its locality's weight (`None` when unset).
    pub(crate) locality_weight: Option<u32>,
}

/// How the table is built.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TableConfig<'a> {
    pub(crate) policy: &'a LbPolicy,
    pub(crate) overprovisioning_factor: u32,
    pub(crate) panic_threshold_percent: f64,
    pub(crate) locality_weighted: bool,
}

/// The picker of one cluster at one moment.
#[derive(Debug, Default)]
pub(crate) struct LbTable {
    priorities: Box<[PriorityTable]>,
    /// Cumulative load per priority, out of 100.
    cumulative_load: Box<[u32]>,
    /// Hosts usable at all (healthy, or all in panic).
    usable: usize,
    panic: bool,
}

#[derive(Debug)]
struct PriorityTable {
    localities: Box<[LocalityTable]>,
    /// Cumulative locality weights; empty when there is one locality.
    locality_cumulative: Box<[u64]>,
}

#[derive(Debug)]
struct LocalityTable {
    /// Indices into the cluster's host entries.
    hosts: Box<[u32]>,
    weights: Box<[u32]>,
    cumulative: Box<[u64]>,
    uniform: bool,
    /// Smooth weighted round-robin order (positions in `hosts`); empty when uniform.
    rr_order: Box<[u32]>,
    next: AtomicUsize,
    ring: Option<Ring>,
    maglev: Option<Maglev>,
}

/// What a pick may consider besides the table.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct PickContext<'a> {
    /// The request's hash, from the route's hash policies.
    pub(crate) hash: Option<u64>,
    /// Host entries already tried (retry host predicate `previous_hosts`).
    pub(crate) avoid: &'a [u32],
    /// How many picks may be made to avoid them (`host_selection_retry_max_attempts`).
    pub(crate) max_attempts: u32,
}

impl LbTable {
    /// Builds the table over `entries` as they are now (health from EDS, ejection from
    /// outlier detection).
    pub(crate) fn build<H: Balanced>(entries: &[HostEntry<H>], cfg: TableConfig<'_>) -> Self {
        let levels = entries.iter().map(|e| e.priority + 1).max().unwrap_or(0) as usize;
        let healthy = |e: &HostEntry<H>| e.health.is_healthy() && !e.host.is_ejected();
        let mut health = vec![0u32; levels];
        let mut counts = vec![0usize; levels];
        for p in 0..levels {
            let total = entries.iter().filter(|e| e.priority as usize == p).count();
            let ok = entries
                .iter()
                .filter(|e| e.priority as usize == p && healthy(e))
                .count();
            counts[p] = total;
            if total > 0 {
                health[p] = ((ok as u64 * cfg.overprovisioning_factor as u64) / total as u64)
                    .min(100) as u32;
            }
        }
        let total_health: u32 = health.iter().sum::<u32>().min(100);
        // A threshold of 0 turns panic off (Envoy): with no healthy host, nothing is picked
        // (503 `UH`) rather than every unhealthy one.
        let panic = total_health < cfg.panic_threshold_percent.ceil() as u32
            || (total_health == 0 && !entries.is_empty() && cfg.panic_threshold_percent > 0.0);
        let mut loads = vec![0u32; levels];
        if panic {
            // Every host counts; the first priority with hosts takes the traffic.
            if let Some(p) = counts.iter().position(|&c| c > 0) {
                loads[p] = 100;
            }
        } else {
            let mut remaining = 100u32;
            for p in 0..levels {
                let share = if total_health < 100 {
                    health[p] * 100 / total_health.max(1)
                } else {
                    health[p]
                };
                loads[p] = share.min(remaining);
                remaining -= loads[p];
            }
            // Rounding leftovers go to the last priority that has load.
            if remaining > 0
                && let Some(p) = loads.iter().rposition(|&l| l > 0)
            {
                loads[p] += remaining;
            }
        }

        let mut priorities = Vec::with_capacity(levels);
        let mut cumulative_load = Vec::with_capacity(levels);
        let mut acc = 0;
        let mut usable = 0;
        for (p, load) in loads.iter().enumerate() {
            if *load == 0 {
                continue;
            }
            let members: Vec<u32> = entries
                .iter()
                .enumerate()
                .filter(|(_, e)| e.priority as usize == p && (panic || healthy(e)))
                .map(|(i, _)| i as u32)
                .collect();
            if members.is_empty() {
                continue;
            }
            usable += members.len();
            acc += load;
            cumulative_load.push(acc);
            priorities.push(PriorityTable::build(entries, &members, cfg));
        }
        Self {
            priorities: priorities.into(),
            cumulative_load: cumulative_load.into(),
            usable,
            panic,
        }
    }

    /// Whether the cluster is in panic (too few healthy hosts; all are used).
    pub(crate) fn in_panic(&self) -> bool {
        self.panic
    }

    /// How many hosts can be picked.
    pub(crate) fn usable_hosts(&self) -> usize {
        self.usable
    }

    /// Picks a host entry index, or `None` when no host is usable.
    pub(crate) fn pick<H: Balanced>(
        &self,
        entries: &[HostEntry<H>],
        policy: &LbPolicy,
        ctx: PickContext<'_>,
    ) -> Option<u32> {
        let mut last = None;
        for attempt in 0..=ctx.max_attempts {
            // A retried pick must not land on the same ring position again.
            let hash = ctx.hash.map(|h| h.wrapping_add(attempt as u64));
            let picked = self.pick_once(entries, policy, hash)?;
            if !ctx.avoid.contains(&picked) {
                return Some(picked);
            }
            last = Some(picked);
        }
        last
    }

    fn pick_once<H: Balanced>(
        &self,
        entries: &[HostEntry<H>],
        policy: &LbPolicy,
        hash: Option<u64>,
    ) -> Option<u32> {
        let total = *self.cumulative_load.last()?;
        let sample = match hash {
            Some(h) => (h % total as u64) as u32,
            None => fastrand::u32(0..total),
        };
        let p = self.cumulative_load.partition_point(|&c| c <= sample);
        let pt = &self.priorities[p.min(self.priorities.len() - 1)];
        let lt = if pt.locality_cumulative.is_empty() {
            &pt.localities[0]
        } else {
            let total = *pt.locality_cumulative.last().expect("non-empty");
            let s = fastrand::u64(0..total);
            &pt.localities[pt.locality_cumulative.partition_point(|&c| c <= s)]
        };
        lt.pick(entries, policy, hash)
    }
}

impl PriorityTable {
    fn build<H: Balanced>(entries: &[HostEntry<H>], members: &[u32], cfg: TableConfig<'_>) -> Self {
        if !cfg.locality_weighted {
            return Self {
                localities: Box::new([LocalityTable::build(entries, members, cfg.policy)]),
                locality_cumulative: Box::new([]),
            };
        }
        let mut ids: Vec<u32> = members
            .iter()
            .map(|&i| entries[i as usize].locality)
            .collect();
        ids.sort_unstable();
        ids.dedup();
        let mut localities = Vec::new();
        let mut cumulative = Vec::new();
        let mut acc = 0u64;
        for id in ids {
            let in_locality: Vec<u32> = members
                .iter()
                .copied()
                .filter(|&i| entries[i as usize].locality == id)
                .collect();
            let first = &entries[in_locality[0] as usize];
            // Unweighted localities get no traffic under locality-weighted balancing.
            let Some(weight) = first.locality_weight.filter(|w| *w > 0) else {
                continue;
            };
            let all = entries
                .iter()
                .filter(|e| e.priority == first.priority && e.locality == id)
                .count()
                .max(1);
            let health = ((in_locality.len() as u64 * cfg.overprovisioning_factor as u64)
                / all as u64)
                .min(100);
            let effective = weight as u64 * health;
            if effective == 0 {
                continue;
            }
            acc += effective;
            cumulative.push(acc);
            localities.push(LocalityTable::build(entries, &in_locality, cfg.policy));
        }
        if localities.is_empty() {
            // No weighted locality: fall back to all members rather than failing.
            return Self {
                localities: Box::new([LocalityTable::build(entries, members, cfg.policy)]),
                locality_cumulative: Box::new([]),
            };
        }
        Self {
            localities: localities.into(),
            locality_cumulative: cumulative.into(),
        }
    }
}

impl LocalityTable {
    fn build<H: Balanced>(entries: &[HostEntry<H>], hosts: &[u32], policy: &LbPolicy) -> Self {
        let weights: Vec<u32> = hosts
            .iter()
            .map(|&i| entries[i as usize].weight.max(1))
            .collect();
        let uniform = weights.windows(2).all(|w| w[0] == w[1]);
        let mut cumulative = Vec::with_capacity(weights.len());
        let mut acc = 0u64;
        for w in &weights {
            acc += *w as u64;
            cumulative.push(acc);
        }
        let rr_order = if uniform || !matches!(policy, LbPolicy::RoundRobin) {
            Vec::new()
        } else {
            smooth_wrr_order(&weights)
        };
        let keys = || hosts.iter().map(|&i| entries[i as usize].host.ring_key());
        let ring = match policy {
            LbPolicy::RingHash {
                min_ring_size,
                max_ring_size,
            } => Some(Ring::build(
                keys(),
                &weights,
                *min_ring_size,
                *max_ring_size,
            )),
            _ => None,
        };
        let maglev = match policy {
            LbPolicy::Maglev { table_size } => Some(Maglev::build(keys(), &weights, *table_size)),
            _ => None,
        };
        Self {
            hosts: hosts.into(),
            weights: weights.into(),
            cumulative: cumulative.into(),
            uniform,
            rr_order: rr_order.into(),
            // Start at a random place so that many clients do not all hit host 0 first.
            next: AtomicUsize::new(fastrand::usize(0..hosts.len().max(1))),
            ring,
            maglev,
        }
    }

    fn pick<H: Balanced>(
        &self,
        entries: &[HostEntry<H>],
        policy: &LbPolicy,
        hash: Option<u64>,
    ) -> Option<u32> {
        let n = self.hosts.len();
        if n == 0 {
            return None;
        }
        if n == 1 {
            return Some(self.hosts[0]);
        }
        let pos = match policy {
            LbPolicy::RoundRobin => {
                let i = self.next.fetch_add(1, Ordering::Relaxed);
                if self.uniform {
                    i % n
                } else {
                    self.rr_order[i % self.rr_order.len()] as usize
                }
            }
            LbPolicy::Random => self.weighted_random(),
            LbPolicy::LeastRequest {
                choice_count,
                active_request_bias,
            } => self.least_request(entries, *choice_count, *active_request_bias),
            LbPolicy::RingHash { .. } => {
                let ring = self.ring.as_ref().expect("built for ring hash");
                ring.get(hash.unwrap_or_else(|| fastrand::u64(..)))?
            }
            LbPolicy::Maglev { .. } => {
                let table = self.maglev.as_ref().expect("built for maglev");
                table.get(hash.unwrap_or_else(|| fastrand::u64(..)))?
            }
        };
        Some(self.hosts[pos])
    }

    fn weighted_random(&self) -> usize {
        if self.uniform {
            return fastrand::usize(0..self.hosts.len());
        }
        let total = *self.cumulative.last().expect("non-empty");
        let s = fastrand::u64(0..total);
        self.cumulative.partition_point(|&c| c <= s)
    }

    /// Envoy's least request: sample `choice_count` hosts and take the one with the fewest
    /// active requests; with unequal weights, the best `weight / (active + 1) ^ bias`.
    fn least_request<H: Balanced>(
        &self,
        entries: &[HostEntry<H>],
        choice_count: u32,
        bias: f64,
    ) -> usize {
        let n = self.hosts.len();
        let active = |pos: usize| entries[self.hosts[pos] as usize].host.active_requests();
        let mut best = fastrand::usize(0..n);
        if self.uniform {
            let mut best_active = active(best);
            for _ in 1..choice_count.max(2) {
                let c = fastrand::usize(0..n);
                let a = active(c);
                if a < best_active {
                    best = c;
                    best_active = a;
                }
            }
        } else {
            let score =
                |pos: usize| self.weights[pos] as f64 / ((active(pos) + 1) as f64).powf(bias);
            let mut best_score = score(best);
            for _ in 1..choice_count.max(2) {
                let c = fastrand::usize(0..n);
                let s = score(c);
                if s > best_score {
                    best = c;
                    best_score = s;
                }
            }
        }
        best
    }
}

/// nginx's smooth weighted round robin, unrolled into one period (weights reduced by their
/// gcd and, for very large sums, scaled down to keep the period short).
fn smooth_wrr_order(weights: &[u32]) -> Vec<u32> {
    const MAX_PERIOD: u64 = 16 * 1024;
    let g = weights.iter().copied().fold(0, gcd).max(1);
    let mut w: Vec<u64> = weights.iter().map(|&x| (x / g) as u64).collect();
    let sum: u64 = w.iter().sum();
    if sum > MAX_PERIOD {
        for x in w.iter_mut() {
            *x = (*x * MAX_PERIOD / sum).max(1);
        }
    }
    let total: i64 = w.iter().sum::<u64>() as i64;
    let mut current = vec![0i64; w.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for i in 0..w.len() {
            current[i] += w[i] as i64;
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        out.push(best as u32);
    }
    out
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[cfg(test)]
mod tests;
