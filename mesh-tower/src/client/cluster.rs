//! A cluster's live state: its current configuration, hosts and balancer table, its circuit
//! breaker counters and its outlier-detection task.
//!
//! One [`ClusterRuntime`] exists per cluster name while any target's plan references it, so
//! counters and per-host state are shared by every route (and every target) that sends to the
//! cluster, and survive snapshot updates. Its [`ClusterState`] is immutable and swapped
//! atomically when the configuration, the endpoints or an ejection changes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use mesh_core::model::{
    CircuitBreakers, Cluster, Discovery, EndpointSet, LbPolicy, UpstreamProtocol,
};
use mesh_core::snapshot::ClusterEntry;

use super::host::{ConnectSettings, Host, Protocol, Transport};
use super::tls::Origination;
use crate::counters::Counters;
use crate::rules::balance::{LbTable, TableConfig};
use crate::rules::outlier::{self, Outcome};

/// A host of a cluster, with what its endpoint list says about it.
pub(crate) type HostEntry = crate::rules::balance::HostEntry<Arc<Host>>;

/// Envoy's default overprovisioning factor, for clusters without endpoints data.
const DEFAULT_OVERPROVISIONING: u32 = 140;

/// One cluster, live.
#[derive(Debug)]
pub(crate) struct ClusterRuntime {
    pub(crate) name: Arc<str>,
    state: ArcSwap<ClusterState>,
    pub(crate) counters: Arc<Counters>,
    clock: tokio::time::Instant,
    outlier_task: AtomicBool,
}

/// A cluster's configuration and hosts at one moment.
#[derive(Debug)]
pub(crate) struct ClusterState {
    pub(crate) config: Arc<Cluster>,
    endpoints: Option<Arc<EndpointSet>>,
    pub(crate) entries: Box<[HostEntry]>,
    pub(crate) lb: LbTable,
    pub(crate) settings: ConnectSettings,
    /// Set by the first update (the initial state is a placeholder).
    built: bool,
}

impl ClusterState {
    /// The upstream protocol for a request of `version`.
    pub(crate) fn protocol(&self, version: http::Version) -> Protocol {
        match self.config.protocol {
            UpstreamProtocol::Http2 => Protocol::Http2,
            UpstreamProtocol::Downstream if version == http::Version::HTTP_2 => Protocol::Http2,
            // ALPN negotiation needs TLS; in cleartext, HTTP/1.1 is what Envoy would speak.
            _ => Protocol::Http1,
        }
    }

    fn table(config: &Cluster, endpoints: Option<&EndpointSet>, entries: &[HostEntry]) -> LbTable {
        LbTable::build(
            entries,
            TableConfig {
                policy: &config.lb,
                overprovisioning_factor: endpoints
                    .map_or(DEFAULT_OVERPROVISIONING, |e| e.overprovisioning_factor),
                panic_threshold_percent: config.healthy_panic_threshold,
                locality_weighted: config.locality_weighted,
            },
        )
    }
}

impl ClusterRuntime {
    fn new(entry: &ClusterEntry) -> Self {
        let config = entry.cluster.clone();
        Self {
            name: config.name.clone(),
            state: ArcSwap::from_pointee(ClusterState {
                lb: LbTable::default(),
                // Replaced by the first update, which resolves TLS settings.
                settings: ConnectSettings {
                    connect_timeout: config.connect_timeout,
                    max_requests_per_connection: None,
                    idle_timeout: None,
                    max_connection_duration: None,
                    http2: Default::default(),
                    transport: Transport::Plain,
                },
                entries: Box::new([]),
                endpoints: None,
                config,
                built: false,
            }),
            counters: Arc::default(),
            clock: tokio::time::Instant::now(),
            outlier_task: AtomicBool::new(false),
        }
    }

    /// A cluster of one host that no configuration describes (a passthrough destination):
    /// no limits, no outlier detection, the request's protocol.
    pub(crate) fn single(name: Arc<str>, host: Arc<Host>, settings: ConnectSettings) -> Self {
        let config = Arc::new(Cluster {
            name: name.clone(),
            discovery: Discovery::OriginalDst,
            connect_timeout: settings.connect_timeout,
            lb: LbPolicy::RoundRobin,
            // Istio's PassthroughCluster: every threshold at its maximum.
            circuit_breakers: CircuitBreakers {
                max_connections: u32::MAX,
                max_pending_requests: u32::MAX,
                max_requests: u32::MAX,
                max_retries: u32::MAX,
                retry_budget: None,
            },
            outlier_detection: None,
            tls: None,
            protocol: UpstreamProtocol::Downstream,
            healthy_panic_threshold: 50.0,
            locality_weighted: false,
            max_requests_per_connection: settings.max_requests_per_connection,
            http2: settings.http2.clone(),
            idle_timeout: settings.idle_timeout,
            max_connection_duration: settings.max_connection_duration,
        });
        let entries: Box<[HostEntry]> = Box::new([HostEntry {
            host,
            weight: 1,
            health: mesh_core::model::HealthStatus::Healthy,
            priority: 0,
            locality: 0,
            locality_weight: None,
        }]);
        let lb = ClusterState::table(&config, None, &entries);
        Self {
            name,
            state: ArcSwap::from_pointee(ClusterState {
                config,
                endpoints: None,
                entries,
                lb,
                settings,
                built: true,
            }),
            counters: Arc::default(),
            clock: tokio::time::Instant::now(),
            outlier_task: AtomicBool::new(false),
        }
    }

    /// The current state.
    pub(crate) fn state(&self) -> Arc<ClusterState> {
        self.state.load_full()
    }

    /// Applies a snapshot's view of the cluster, reusing the hosts of addresses it still
    /// names. Resolves DNS clusters' names.
    pub(crate) async fn update(self: &Arc<Self>, mesh: &mesh_core::Mesh, entry: &ClusterEntry) {
        let current = self.state.load_full();
        let same_endpoints = match (&current.endpoints, &entry.endpoints) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        if Arc::ptr_eq(&current.config, &entry.cluster)
            && same_endpoints
            && current.built
            && !current.entries.is_empty()
        {
            return;
        }
        let config = entry.cluster.clone();
        // TLS settings are resolved once per cluster version (they may read files).
        let settings = if Arc::ptr_eq(&current.config, &config) && current.built {
            current.settings.clone()
        } else {
            settings(mesh, &config).await
        };
        let existing: HashMap<SocketAddr, &Arc<Host>> = current
            .entries
            .iter()
            .map(|e| (e.host.addr, &e.host))
            .collect();
        let host_for = |addr: SocketAddr| -> Arc<Host> {
            match existing.get(&addr) {
                Some(h) => {
                    if settings != current.settings || config.protocol != current.config.protocol {
                        h.clear_pool();
                    }
                    Arc::clone(h)
                }
                None => Arc::new(Host::new(addr)),
            }
        };
        let entries: Vec<HostEntry> = match (&config.discovery, &entry.endpoints) {
            (
                Discovery::Dns {
                    hosts,
                    logical,
                    family,
                },
                _,
            ) => {
                let mut out = Vec::new();
                for (name, port) in hosts.iter() {
                    match tokio::net::lookup_host((&**name, *port)).await {
                        Ok(addrs) => {
                            let addrs = family.select(addrs.collect());
                            let take = if *logical { 1 } else { addrs.len() };
                            for addr in addrs.into_iter().take(take) {
                                out.push(HostEntry {
                                    host: host_for(addr),
                                    weight: 1,
                                    health: mesh_core::model::HealthStatus::Healthy,
                                    priority: 0,
                                    locality: 0,
                                    locality_weight: None,
                                });
                            }
                        }
                        Err(e) => {
                            tracing::warn!(cluster = %config.name, host = %name, error = %e, "DNS resolution failed")
                        }
                    }
                }
                out
            }
            (_, Some(set)) => endpoint_entries(set, host_for),
            (_, None) => Vec::new(),
        };
        let lb = ClusterState::table(&config, entry.endpoints.as_deref(), &entries);
        log_panic(&config.name, &lb);
        self.state.store(Arc::new(ClusterState {
            config,
            endpoints: entry.endpoints.clone(),
            entries: entries.into(),
            lb,
            settings,
            built: true,
        }));
        self.ensure_outlier_task();
    }

    /// Records an attempt's outcome for outlier detection, ejecting the host when a
    /// consecutive-failure threshold is crossed and the ejection cap allows it.
    pub(crate) fn report(&self, state: &ClusterState, host: &Host, outcome: Outcome) {
        let Some(od) = state.config.outlier_detection.as_deref() else {
            return;
        };
        if host.outlier.record(od, outcome).is_none() {
            return;
        }
        let current = self.state.load();
        let ejected = current
            .entries
            .iter()
            .filter(|e| e.host.outlier.is_ejected())
            .count();
        if outlier::may_eject(od, ejected, current.entries.len())
            && host.outlier.eject(od, self.now_ms())
        {
            tracing::debug!(cluster = %self.name, host = %host.addr, "ejected");
            self.refresh();
        }
    }

    /// Rebuilds the balancer table from the hosts' current health and ejection.
    fn refresh(&self) {
        let new = self.state.rcu(|s| ClusterState {
            config: s.config.clone(),
            endpoints: s.endpoints.clone(),
            entries: s.entries.clone(),
            lb: ClusterState::table(&s.config, s.endpoints.as_deref(), &s.entries),
            settings: s.settings.clone(),
            built: s.built,
        });
        drop(new);
        log_panic(&self.name, &self.state.load().lb);
    }

    fn now_ms(&self) -> u64 {
        self.clock.elapsed().as_millis() as u64 + 1
    }

    /// Starts the interval task of outlier detection, once, when the cluster has it.
    fn ensure_outlier_task(self: &Arc<Self>) {
        if self.state.load().config.outlier_detection.is_none()
            || self.outlier_task.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let weak: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let interval = match weak.upgrade() {
                    Some(c) => match c.state.load().config.outlier_detection.as_deref() {
                        Some(od) => od.interval.max(Duration::from_millis(1)),
                        None => {
                            c.outlier_task.store(false, Ordering::Release);
                            return;
                        }
                    },
                    None => return,
                };
                tokio::time::sleep(interval).await;
                let Some(c) = weak.upgrade() else { return };
                let st = c.state.load_full();
                if let Some(od) = st.config.outlier_detection.as_deref()
                    && outlier::analyze(od, st.entries.iter().map(|e| &e.host.outlier), c.now_ms())
                {
                    c.refresh();
                }
            }
        });
    }
}

fn log_panic(cluster: &str, lb: &LbTable) {
    if lb.in_panic() {
        tracing::warn!(
            %cluster,
            hosts = lb.usable_hosts(),
            "too few healthy hosts: panic mode, balancing over all of them"
        );
    }
}

async fn settings(mesh: &mesh_core::Mesh, c: &Cluster) -> ConnectSettings {
    let transport = match &c.tls {
        None => Transport::Plain,
        Some(t) => match Origination::new(mesh, t, &c.name).await {
            Ok(o) => Transport::Tls(Arc::new(o)),
            Err(why) => {
                tracing::error!(cluster = %c.name, %why, "TLS settings cannot be honoured; the cluster fails closed");
                Transport::Broken(why.into())
            }
        },
    };
    ConnectSettings {
        connect_timeout: c.connect_timeout,
        max_requests_per_connection: c.max_requests_per_connection,
        idle_timeout: c.idle_timeout,
        max_connection_duration: c.max_connection_duration,
        http2: c.http2.clone(),
        transport,
    }
}

fn endpoint_entries(
    set: &EndpointSet,
    mut host_for: impl FnMut(SocketAddr) -> Arc<Host>,
) -> Vec<HostEntry> {
    let mut out = Vec::new();
    for (p, prio) in set.priorities.iter().enumerate() {
        for (l, loc) in prio.localities.iter().enumerate() {
            for e in loc.endpoints.iter() {
                // Pipes and Envoy-internal listeners cannot be reached from this process.
                if e.non_ip().is_some() {
                    continue;
                }
                out.push(HostEntry {
                    host: host_for(e.address),
                    weight: e.weight,
                    health: e.health,
                    priority: p as u32,
                    locality: l as u32,
                    locality_weight: loc.weight,
                });
            }
        }
    }
    out
}

/// Cluster runtimes by name, shared by every target of one client.
#[derive(Debug, Default)]
pub(crate) struct ClusterStore {
    map: ArcSwap<HashMap<Arc<str>, Weak<ClusterRuntime>>>,
}

impl ClusterStore {
    /// The runtime for `entry`'s cluster, created on first use. Runs on the config path only.
    pub(crate) fn get_or_create(&self, entry: &ClusterEntry) -> Arc<ClusterRuntime> {
        let name = &entry.cluster.name;
        if let Some(rt) = self.map.load().get(name).and_then(Weak::upgrade) {
            return rt;
        }
        let mut created = None;
        self.map.rcu(|map| {
            let mut map: HashMap<_, _> = map
                .iter()
                .filter(|(_, w)| w.strong_count() > 0)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let rt = match map.get(name).and_then(Weak::upgrade) {
                Some(rt) => rt,
                None => {
                    let rt = Arc::new(ClusterRuntime::new(entry));
                    map.insert(name.clone(), Arc::downgrade(&rt));
                    rt
                }
            };
            created = Some(rt);
            map
        });
        created.expect("rcu ran")
    }
}

impl ClusterStore {
    /// Every live cluster with its hosts, for the admin endpoint's `/clusters`.
    pub(crate) fn dump(&self) -> Vec<serde_json::Value> {
        let mut out: Vec<serde_json::Value> = self
            .map
            .load()
            .values()
            .filter_map(Weak::upgrade)
            .map(|rt| {
                let st = rt.state();
                let c = &rt.counters;
                let hosts: Vec<serde_json::Value> = st
                    .entries
                    .iter()
                    .map(|e| {
                        serde_json::json!({
                            "address": &*e.host.addr_text,
                            "weight": e.weight,
                            "priority": e.priority,
                            "health": format!("{:?}", e.health).to_uppercase(),
                            "ejected": e.host.outlier.is_ejected(),
                            "active_requests": e.host.active.load(Ordering::Relaxed),
                        })
                    })
                    .collect();
                serde_json::json!({
                    "name": &*rt.name,
                    "active_requests": c.active_requests.load(Ordering::Relaxed),
                    "active_retries": c.active_retries.load(Ordering::Relaxed),
                    "pending_requests": c.pending.load(Ordering::Relaxed),
                    "connections": c.connections.load(Ordering::Relaxed),
                    "upstream_rq_pending_overflow": c.pending_overflow.load(Ordering::Relaxed),
                    "upstream_rq_overflow": c.rq_overflow.load(Ordering::Relaxed),
                    "upstream_rq_retry_overflow": c.retry_overflow.load(Ordering::Relaxed),
                    "hosts": hosts,
                })
            })
            .collect();
        out.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
        out
    }
}
