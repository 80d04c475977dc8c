use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use mesh_core::model::OutlierDetection;

use super::*;
use crate::rules::outlier::HostOutlier;

/// An endpoint as a cluster's host carries one, without the connections.
#[derive(Debug)]
struct Host {
    addr: SocketAddr,
    addr_text: Box<str>,
    active: AtomicU32,
    outlier: HostOutlier,
}

impl Host {
    fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            addr_text: addr.to_string().into(),
            active: AtomicU32::new(0),
            outlier: HostOutlier::default(),
        }
    }
}

impl Balanced for Arc<Host> {
    fn ring_key(&self) -> &str {
        &self.addr_text
    }
    fn active_requests(&self) -> u32 {
        self.active.load(Ordering::Relaxed)
    }
    fn is_ejected(&self) -> bool {
        self.outlier.is_ejected()
    }
}

type HostEntry = super::HostEntry<Arc<Host>>;

fn entry(port: u16, weight: u32, priority: u32) -> HostEntry {
    HostEntry {
        host: Arc::new(Host::new(([10, 0, 0, 1], port).into())),
        weight,
        health: HealthStatus::Healthy,
        priority,
        locality: 0,
        locality_weight: None,
    }
}

fn cfg(policy: &LbPolicy) -> TableConfig<'_> {
    TableConfig {
        policy,
        overprovisioning_factor: 140,
        panic_threshold_percent: 50.0,
        locality_weighted: false,
    }
}

fn counts(entries: &[HostEntry], policy: &LbPolicy, n: usize) -> HashMap<u16, usize> {
    let table = LbTable::build(entries, cfg(policy));
    let mut out = HashMap::new();
    for _ in 0..n {
        let i = table
            .pick(entries, policy, PickContext::default())
            .expect("a host");
        *out.entry(entries[i as usize].host.addr.port()).or_default() += 1;
    }
    out
}

#[test]
fn round_robin_visits_hosts_in_turn() {
    let entries = vec![entry(1, 1, 0), entry(2, 1, 0), entry(3, 1, 0)];
    let c = counts(&entries, &LbPolicy::RoundRobin, 300);
    assert_eq!(c.values().copied().collect::<Vec<_>>(), vec![100; 3]);
}

#[test]
fn weighted_round_robin_follows_weights_exactly() {
    let entries = vec![entry(1, 1, 0), entry(2, 3, 0)];
    let c = counts(&entries, &LbPolicy::RoundRobin, 400);
    assert_eq!((c[&1], c[&2]), (100, 300));
    // Smooth: the heavy host never runs more than its share in a row.
    assert_eq!(smooth_wrr_order(&[1, 3]), vec![1, 0, 1, 1]);
}

#[test]
fn random_follows_weights() {
    fastrand::seed(7);
    let entries = vec![entry(1, 1, 0), entry(2, 4, 0)];
    let c = counts(&entries, &LbPolicy::Random, 10_000);
    let share = c[&2] as f64 / 10_000.0;
    assert!((0.77..0.83).contains(&share), "share {share}");
}

#[test]
fn least_request_prefers_idle_hosts() {
    fastrand::seed(3);
    let entries = vec![entry(1, 1, 0), entry(2, 1, 0)];
    entries[0].host.active.store(10, Ordering::Relaxed);
    let policy = LbPolicy::LeastRequest {
        choice_count: 2,
        active_request_bias: 1.0,
    };
    let c = counts(&entries, &policy, 1000);
    // P2C picks the busy host only when both samples land on it: about a quarter.
    assert!(c[&2] > 700, "{c:?}");
}

#[test]
fn ejected_and_unhealthy_hosts_are_skipped() {
    let mut entries = vec![
        entry(1, 1, 0),
        entry(2, 1, 0),
        entry(3, 1, 0),
        entry(4, 1, 0),
    ];
    entries[1].health = HealthStatus::Unhealthy;
    entries[2]
        .host
        .outlier
        .eject(&OutlierDetection::default(), 1);
    let c = counts(&entries, &LbPolicy::RoundRobin, 100);
    assert_eq!(
        c.keys().copied().collect::<std::collections::BTreeSet<_>>(),
        [1, 4].into()
    );
}

#[test]
fn lower_priorities_take_the_load_healthy_ones_cannot() {
    // Priority 0: 1 of 4 healthy → health 35 %; priority 1 takes the remaining 65 %.
    let mut entries: Vec<HostEntry> = (1..=4).map(|p| entry(p, 1, 0)).collect();
    for e in &mut entries[1..] {
        e.health = HealthStatus::Unhealthy;
    }
    entries.push(entry(10, 1, 1));
    let c = counts(&entries, &LbPolicy::Random, 10_000);
    let p0 = c.get(&1).copied().unwrap_or(0) as f64 / 10_000.0;
    assert!((0.32..0.38).contains(&p0), "priority 0 share {p0}");
    assert_eq!(c.get(&2), None);
}

#[test]
fn overprovisioning_keeps_all_load_on_a_mostly_healthy_priority() {
    // 3 of 4 healthy: 75 % × 1.4 > 100 %, so priority 1 gets nothing.
    let mut entries: Vec<HostEntry> = (1..=4).map(|p| entry(p, 1, 0)).collect();
    entries[0].health = HealthStatus::Unhealthy;
    entries.push(entry(10, 1, 1));
    let c = counts(&entries, &LbPolicy::Random, 2000);
    assert_eq!(c.get(&10), None);
}

#[test]
fn panic_mode_uses_every_host() {
    // 1 of 4 healthy and nothing else: 35 % < 50 % panic threshold.
    let mut entries: Vec<HostEntry> = (1..=4).map(|p| entry(p, 1, 0)).collect();
    for e in &mut entries[1..] {
        e.health = HealthStatus::Unhealthy;
    }
    let table = LbTable::build(&entries, cfg(&LbPolicy::RoundRobin));
    assert!(table.in_panic());
    assert_eq!(table.usable_hosts(), 4);
    let c = counts(&entries, &LbPolicy::RoundRobin, 400);
    assert_eq!(c.len(), 4);
}

#[test]
fn a_zero_panic_threshold_turns_panic_off() {
    let mut entries: Vec<HostEntry> = (1..=4).map(|p| entry(p, 1, 0)).collect();
    for e in &mut entries {
        e.health = HealthStatus::Unhealthy;
    }
    let policy = LbPolicy::RoundRobin;
    let table = LbTable::build(
        &entries,
        TableConfig {
            panic_threshold_percent: 0.0,
            ..cfg(&policy)
        },
    );
    assert!(!table.in_panic());
    assert_eq!(table.pick(&entries, &policy, PickContext::default()), None);
    // With the default threshold, the same hosts are all used.
    assert!(LbTable::build(&entries, cfg(&policy)).in_panic());
}

#[test]
fn no_hosts_means_no_pick() {
    let table = LbTable::build::<Arc<Host>>(&[], cfg(&LbPolicy::RoundRobin));
    assert_eq!(
        table.pick::<Arc<Host>>(&[], &LbPolicy::RoundRobin, PickContext::default()),
        None
    );
}

#[test]
fn locality_weights_split_traffic() {
    let mut entries = vec![entry(1, 1, 0), entry(2, 1, 0)];
    entries[0].locality_weight = Some(1);
    entries[1].locality = 1;
    entries[1].locality_weight = Some(3);
    let policy = LbPolicy::RoundRobin;
    let table = LbTable::build(
        &entries,
        TableConfig {
            locality_weighted: true,
            ..cfg(&policy)
        },
    );
    fastrand::seed(11);
    let mut second = 0;
    for _ in 0..10_000 {
        if table.pick(&entries, &policy, PickContext::default()) == Some(1) {
            second += 1;
        }
    }
    let share = second as f64 / 10_000.0;
    assert!((0.72..0.78).contains(&share), "share {share}");
}

#[test]
fn previous_hosts_are_avoided() {
    // Seeded like the other sampling tests: a clean-clone CI run once drew host 0 on all 21
    // picks (1 in 2^21 per loop, about one run in 20,000 unseeded), which says nothing about
    // the avoidance.
    fastrand::seed(7);
    let entries = vec![entry(1, 1, 0), entry(2, 1, 0)];
    let policy = LbPolicy::Random;
    let table = LbTable::build(&entries, cfg(&policy));
    for _ in 0..100 {
        let ctx = PickContext {
            avoid: &[0],
            max_attempts: 20,
            ..PickContext::default()
        };
        assert_eq!(table.pick(&entries, &policy, ctx), Some(1));
    }
}

fn ring_policy() -> LbPolicy {
    LbPolicy::RingHash {
        min_ring_size: 1024,
        max_ring_size: 8 * 1024 * 1024,
    }
}

#[test]
fn ring_hash_is_consistent_and_moves_few_keys() {
    let policy = ring_policy();
    let entries: Vec<HostEntry> = (1..=4).map(|p| entry(p, 1, 0)).collect();
    let table = LbTable::build(&entries, cfg(&policy));
    let pick = |t: &LbTable, e: &[HostEntry], h: u64| {
        let ctx = PickContext {
            hash: Some(h),
            ..PickContext::default()
        };
        e[t.pick(e, &policy, ctx).unwrap() as usize]
            .host
            .addr
            .port()
    };
    let keys: Vec<u64> = (0..2000u64).map(|k| hash_key(&k.to_le_bytes())).collect();
    let before: Vec<u16> = keys.iter().map(|&h| pick(&table, &entries, h)).collect();
    let again: Vec<u16> = keys.iter().map(|&h| pick(&table, &entries, h)).collect();
    assert_eq!(before, again, "the same key lands on the same host");
    let fewer = entries[..3].to_vec();
    let table = LbTable::build(&fewer, cfg(&policy));
    let kept: Vec<(u64, u16)> = keys
        .iter()
        .zip(&before)
        .filter(|(_, b)| **b != 4)
        .map(|(h, b)| (*h, *b))
        .collect();
    let moved = kept
        .iter()
        .filter(|(h, b)| pick(&table, &fewer, *h) != *b)
        .count();
    // The ring grows a little (Envoy rescales it to the lightest host), so a few keys move
    // between remaining hosts; the removed host's keys all move, and most others stay.
    assert!(
        moved * 5 < kept.len(),
        "{moved} of {} keys moved",
        kept.len()
    );
}

#[test]
fn ring_size_follows_envoy_scaling() {
    let ring = Ring::build(["a", "b"].into_iter(), &[1, 3], 1024, 8 << 20);
    // The lightest host (1/4) gets ceil(0.25 × 1024) = 256 points, so 1024 in all.
    assert_eq!(ring.len(), 1024);
}

#[test]
fn maglev_spreads_by_weight_and_is_stable() {
    let keys = ["10.0.0.1:1", "10.0.0.1:2", "10.0.0.1:3"];
    let table = Maglev::build(keys.into_iter(), &[1, 1, 2], 65537);
    let mut c = [0usize; 3];
    for slot in table.table.iter() {
        c[*slot as usize] += 1;
    }
    let share = c[2] as f64 / 65537.0;
    assert!((0.49..0.51).contains(&share), "{c:?}");
    let again = Maglev::build(keys.into_iter(), &[1, 1, 2], 65537);
    assert_eq!(table.table, again.table);
}

#[test]
fn hash_policies_combine_and_stop_at_terminal() {
    use mesh_core::model::{HashPolicy, HashSource};
    let req = http::Request::get("http://svc/p?user=7")
        .header("x-user", "alice")
        .header("cookie", "a=1; session=xyz")
        .body(())
        .unwrap();
    let view = mesh_core::model::RequestView::from_request(&req);
    let header = HashPolicy {
        source: HashSource::Header(http::HeaderName::from_static("x-user")),
        terminal: false,
    };
    let h = RequestHasher::compute(std::slice::from_ref(&header), &view, None);
    assert_eq!(h.hash(), Some(hash_key(b"alice")));
    let query = HashPolicy {
        source: HashSource::QueryParameter("user".into()),
        terminal: false,
    };
    let both = RequestHasher::compute(&[header.clone(), query.clone()], &view, None);
    assert_eq!(
        both.hash(),
        Some(hash_key(b"alice").rotate_left(1) ^ hash_key(b"7"))
    );
    let terminal = HashPolicy {
        terminal: true,
        ..header
    };
    let first = RequestHasher::compute(&[terminal, query], &view, None);
    assert_eq!(first.hash(), Some(hash_key(b"alice")));
    let cookie = HashPolicy {
        source: HashSource::Cookie {
            name: "session".into(),
            ttl: None,
            path: "".into(),
        },
        terminal: false,
    };
    assert_eq!(
        RequestHasher::compute(&[cookie], &view, None).hash(),
        Some(hash_key(b"xyz"))
    );
}
