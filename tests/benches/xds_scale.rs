//! xDS scale: apply 10,000 clusters and 100,000 endpoints, report time and memory.
//!
//! Two measurements, in one run:
//! 1. `translate`: decode + validate every resource into the model (no network); bytes are the
//!    model's heap per cluster and per endpoint.
//! 2. `ads`: the real client over loopback ADS against the test server: subscribe to every
//!    cluster, then every assignment; time from subscription to the last value arriving, then
//!    time from a push changing every cluster to the last change applied. Bytes are the client
//!    process's heap growth per resource, which includes the raw bytes kept for config dumps,
//!    the watch channels and the test server's own per-stream bookkeeping (about 60 B per name,
//!    so the figures are an upper bound).
//!
//! Heap bytes come from a counting global allocator, so they are exact for this process.
//! Targets (BENCHMARKS.md): ≤ 5 KB per cluster and ≤ 0.3 KB per endpoint; Envoy needs about
//! 40 KB and 1.4 KB.
//!
//! `cargo bench -p mesh-tests --bench xds_scale [-- --clusters N --endpoints-per-cluster M]`
#![allow(unsafe_code)] // the counting allocator below

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use envoy_types::pb::google::protobuf::Any;
use mesh_core::xds::{ResourceType, ResourceWatch, XdsClientConfig};
use mesh_core::{Bootstrap, Mesh};
use mesh_test_support::AdsServer;
use mesh_test_support::resources as r;

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator; we only count bytes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size, Ordering::Relaxed);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn live() -> usize {
    LIVE.load(Ordering::Relaxed)
}

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name} takes a number"))
        })
        .unwrap_or(default)
}

fn cluster_name(i: usize) -> String {
    format!(
        "outbound|9080|v{}|svc-{i}.ns-{}.svc.cluster.local",
        i % 3,
        i % 50
    )
}

/// Istio-like clusters: EDS, round robin, circuit breakers and outlier detection set.
fn cluster(i: usize, connect_secs: i64) -> Any {
    use envoy_types::pb::envoy::config::cluster::v3 as c;
    use envoy_types::pb::google::protobuf::{Duration as PbDuration, UInt32Value};
    let mut cl = r::eds_cluster(&cluster_name(i));
    cl.connect_timeout = Some(PbDuration {
        seconds: connect_secs,
        nanos: 0,
    });
    cl.circuit_breakers = Some(c::CircuitBreakers {
        thresholds: vec![c::circuit_breakers::Thresholds {
            max_connections: Some(UInt32Value { value: 4294967295 }),
            max_pending_requests: Some(UInt32Value { value: 4294967295 }),
            max_requests: Some(UInt32Value { value: 4294967295 }),
            max_retries: Some(UInt32Value { value: 4294967295 }),
            ..Default::default()
        }],
        ..Default::default()
    });
    cl.outlier_detection = Some(c::OutlierDetection {
        consecutive_5xx: Some(UInt32Value { value: 5 }),
        interval: Some(PbDuration {
            seconds: 10,
            nanos: 0,
        }),
        ..Default::default()
    });
    r::any(cl)
}

fn assignment(i: usize, per_cluster: usize) -> Any {
    let addrs: Vec<std::net::SocketAddr> = (0..per_cluster)
        .map(|j| {
            let n = i * per_cluster + j;
            std::net::SocketAddr::from(([10, (n >> 16) as u8, (n >> 8) as u8, n as u8], 9080))
        })
        .collect();
    r::any(r::endpoints(&cluster_name(i), &addrs))
}

fn main() {
    let clusters = arg("--clusters", 10_000);
    let per_cluster = arg("--endpoints-per-cluster", 10);
    let endpoints = clusters * per_cluster;
    println!("xds-scale: {clusters} clusters, {endpoints} endpoints ({per_cluster} per cluster)");

    let cluster_anys: Vec<Any> = (0..clusters).map(|i| cluster(i, 1)).collect();
    let cla_anys: Vec<Any> = (0..clusters).map(|i| assignment(i, per_cluster)).collect();
    let wire_c: usize = cluster_anys.iter().map(|a| a.value.len()).sum();
    let wire_e: usize = cla_anys.iter().map(|a| a.value.len()).sum();
    println!(
        "wire size: {} B per cluster, {} B per endpoint",
        wire_c / clusters,
        wire_e / endpoints
    );

    // 1. Translation into the model.
    let base = live();
    let t = Instant::now();
    let models: Vec<_> = cluster_anys
        .iter()
        .map(|a| mesh_core::xds::translate::resource(a).expect("valid cluster"))
        .collect();
    let t_c = t.elapsed();
    let after_c = live();
    let t = Instant::now();
    let eps: Vec<_> = cla_anys
        .iter()
        .map(|a| mesh_core::xds::translate::resource(a).expect("valid assignment"))
        .collect();
    let t_e = t.elapsed();
    let after_e = live();
    println!(
        "translate: clusters {:.1} ms ({:.2} µs each), {} B per cluster; endpoints {:.1} ms, {} B per endpoint",
        ms(t_c),
        t_c.as_secs_f64() * 1e6 / clusters as f64,
        (after_c - base) / clusters,
        ms(t_e),
        (after_e - after_c) / endpoints,
    );
    drop(models);
    drop(eps);

    // 2. The real client over ADS.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let server = AdsServer::start().await;
        server.set_many(cluster_anys.iter().chain(&cla_anys).cloned());
        server.stop_recording();
        drop(cluster_anys);
        drop(cla_anys);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut config = XdsClientConfig::default();
        config.does_not_exist_timeout = Duration::from_secs(60);
        let bootstrap = Bootstrap::from_json(&server.bootstrap_json(&[])).expect("bootstrap");
        let base = live();
        let mesh = Mesh::builder().bootstrap(bootstrap).xds_config(config).build().await.expect("mesh");
        let client = mesh.xds_client().expect("ADS").clone();

        let t = Instant::now();
        let mut cws = Vec::with_capacity(clusters);
        for i in 0..clusters {
            cws.push(client.watch(ResourceType::Cluster, cluster_name(i)).await.expect("watch"));
        }
        wait_all(&mut cws).await;
        let t_c = t.elapsed();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let after_c = live();

        let t = Instant::now();
        let mut ews = Vec::with_capacity(clusters);
        for i in 0..clusters {
            ews.push(client.watch(ResourceType::ClusterLoadAssignment, cluster_name(i)).await.expect("watch"));
        }
        wait_all(&mut ews).await;
        let t_e = t.elapsed();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let after_e = live();
        println!(
            "ads: {clusters} clusters applied in {:.0} ms, {} B per cluster; {endpoints} endpoints applied in {:.0} ms, {} B per endpoint",
            ms(t_c),
            (after_c.saturating_sub(base)) / clusters,
            ms(t_e),
            (after_e.saturating_sub(after_c)) / endpoints,
        );

        // A push that changes every cluster: time until the client has applied all of them.
        let t = Instant::now();
        server.set_many((0..clusters).map(|i| cluster(i, 2)));
        for w in &mut cws {
            w.wait_for(|s| matches!(&s.value, Some(mesh_core::xds::Resource::Cluster(c)) if c.connect_timeout.as_secs() == 2)).await;
        }
        println!("ads: push changing {clusters} clusters → all applied in {:.0} ms", ms(t.elapsed()));
        drop((cws, ews, mesh));
    });
}

async fn wait_all(ws: &mut [ResourceWatch]) {
    for w in ws {
        w.wait_for(|s| s.value.is_some()).await;
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
