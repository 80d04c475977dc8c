//! xDS scale (BENCHMARKS.md `xds-scale`): 100, 1,000 and 10,000 clusters with their endpoints,
//! through our client and through Envoy 1.40 from the same ADS server; time and memory.
//!
//! Per size, three measurements:
//! 1. `translate`: decode + validate every resource into the model (no network); bytes are the
//!    model's heap per cluster and per endpoint.
//! 2. `ads`: the real client over loopback ADS against the test server: subscribe to every
//!    cluster, then every assignment; time from subscription to the last value arriving, then
//!    time from a push changing every cluster to the last change applied. Bytes are the client
//!    process's heap growth per resource, which includes the raw bytes kept for config dumps,
//!    the watch channels and the test server's own per-stream bookkeeping (about 60 B per name,
//!    so the figures are an upper bound). Then `--pushes` pushes that change every cluster:
//!    push-to-applied p50 and p99.
//! 3. `envoy`: Envoy (one worker) subscribed by wildcard to the same clusters over ADS: time
//!    from the push to every cluster active and warm (`cluster_manager.active_clusters`,
//!    `warming_clusters`), its heap growth per cluster with its endpoints (tcmalloc's
//!    `allocated`, from `/memory`), and the same pushes (fewer: Envoy takes seconds for each).
//!
//! Heap bytes come from a counting global allocator, so they are exact for this process.
//! Targets (BENCHMARKS.md): ≤ 5 KB per cluster and ≤ 0.3 KB per endpoint; Envoy needs about
//! 40 KB and 1.4 KB.
//!
//! `cargo bench -p mesh-tests --bench xds_scale [-- --sizes 100,1000,10000
//! --endpoints-per-cluster 10 --pushes 20 --envoy-pushes 3 | --quick]`
#![allow(unsafe_code)] // the counting allocator below

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use envoy_types::pb::google::protobuf::Any;
use mesh_core::xds::{ResourceType, ResourceWatch, XdsClientConfig};
use mesh_core::{Bootstrap, Mesh};
use mesh_test_support::AdsServer;
use mesh_test_support::envoy::Envoy;
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

/// The figures of one size.
struct Figures {
    clusters: usize,
    endpoints: usize,
    translate_us_per_cluster: f64,
    model_bytes_per_cluster: usize,
    model_bytes_per_endpoint: usize,
    ads_load_ms: f64,
    ads_bytes_per_cluster: usize,
    ads_bytes_per_endpoint: usize,
    ads_push_ms: Vec<f64>,
    envoy_load_ms: f64,
    envoy_bytes_per_cluster: u64,
    envoy_push_ms: Vec<f64>,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let sizes: Vec<usize> = args
        .iter()
        .position(|a| a == "--sizes")
        .and_then(|i| args.get(i + 1))
        .map(|v| {
            v.split(',')
                .map(|n| n.parse().expect("--sizes takes numbers"))
                .collect()
        })
        .unwrap_or_else(|| {
            if quick {
                vec![100, 1000]
            } else {
                vec![100, 1000, 10_000]
            }
        });
    let per_cluster = arg("--endpoints-per-cluster", 10);
    let pushes = arg("--pushes", if quick { 5 } else { 20 });
    let envoy_pushes = arg("--envoy-pushes", if quick { 2 } else { 3 });
    println!(
        "ENV {{\"nproc\":{},\"kernel\":{:?},\"mesh\":{:?},\"endpoints_per_cluster\":{per_cluster},\"pushes\":{pushes},\"envoy_pushes\":{envoy_pushes}}}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim(),
        env!("CARGO_PKG_VERSION"),
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut all = Vec::new();
    for &n in &sizes {
        let f = rt.block_on(size(n, per_cluster, pushes, envoy_pushes));
        println!(
            "BENCH {{\"scenario\":\"xds-scale\",\"client\":\"mesh\",\"clusters\":{},\"endpoints\":{},\"translate_us_per_cluster\":{:.2},\"model_bytes_per_cluster\":{},\"model_bytes_per_endpoint\":{},\"load_ms\":{:.1},\"bytes_per_cluster\":{},\"bytes_per_endpoint\":{},\"push_p50_ms\":{:.1},\"push_p99_ms\":{:.1}}}",
            f.clusters,
            f.endpoints,
            f.translate_us_per_cluster,
            f.model_bytes_per_cluster,
            f.model_bytes_per_endpoint,
            f.ads_load_ms,
            f.ads_bytes_per_cluster,
            f.ads_bytes_per_endpoint,
            quantile(&f.ads_push_ms, 0.5),
            quantile(&f.ads_push_ms, 0.99),
        );
        println!(
            "BENCH {{\"scenario\":\"xds-scale\",\"client\":\"envoy\",\"clusters\":{},\"endpoints\":{},\"load_ms\":{:.1},\"bytes_per_cluster_with_endpoints\":{},\"push_p50_ms\":{:.1},\"push_p99_ms\":{:.1}}}",
            f.clusters,
            f.endpoints,
            f.envoy_load_ms,
            f.envoy_bytes_per_cluster,
            quantile(&f.envoy_push_ms, 0.5),
            quantile(&f.envoy_push_ms, 0.99),
        );
        all.push(f);
    }
    println!();
    println!(
        "| clusters | endpoints | mesh: load ms | mesh: push p50 / p99 ms | mesh: B per cluster / per endpoint | Envoy: load ms | Envoy: push p50 / p99 ms | Envoy: B per cluster with its endpoints | mesh ÷ Envoy, memory per cluster with its endpoints |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for f in &all {
        let ours = f.ads_bytes_per_cluster + per_cluster * f.ads_bytes_per_endpoint;
        println!(
            "| {} | {} | {:.0} | {:.1} / {:.1} | {} / {} | {:.0} | {:.0} / {:.0} | {} | {:.2} |",
            f.clusters,
            f.endpoints,
            f.ads_load_ms,
            quantile(&f.ads_push_ms, 0.5),
            quantile(&f.ads_push_ms, 0.99),
            f.ads_bytes_per_cluster,
            f.ads_bytes_per_endpoint,
            f.envoy_load_ms,
            quantile(&f.envoy_push_ms, 0.5),
            quantile(&f.envoy_push_ms, 0.99),
            f.envoy_bytes_per_cluster,
            ours as f64 / f.envoy_bytes_per_cluster.max(1) as f64,
        );
    }
}

/// Nearest-rank quantile of `v` (0 when empty).
fn quantile(v: &[f64], q: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return 0.0;
    }
    v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1]
}

async fn size(clusters: usize, per_cluster: usize, pushes: usize, envoy_pushes: usize) -> Figures {
    let endpoints = clusters * per_cluster;
    let cluster_anys: Vec<Any> = (0..clusters).map(|i| cluster(i, 1)).collect();
    let cla_anys: Vec<Any> = (0..clusters).map(|i| assignment(i, per_cluster)).collect();

    // 1. Translation into the model.
    let base = live();
    let t = Instant::now();
    let models: Vec<_> = cluster_anys
        .iter()
        .map(|a| mesh_core::xds::translate::resource(a).expect("valid cluster"))
        .collect();
    let t_c = t.elapsed();
    let after_c = live();
    let eps: Vec<_> = cla_anys
        .iter()
        .map(|a| mesh_core::xds::translate::resource(a).expect("valid assignment"))
        .collect();
    let after_e = live();
    drop(models);
    drop(eps);
    let translate_us_per_cluster = t_c.as_secs_f64() * 1e6 / clusters as f64;
    let model_bytes_per_cluster = (after_c - base) / clusters;
    let model_bytes_per_endpoint = (after_e - after_c) / endpoints;

    // 2. The real client over ADS.
    let server = AdsServer::start().await;
    server.set_many(cluster_anys.iter().chain(&cla_anys).cloned());
    server.stop_recording();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut config = XdsClientConfig::default();
    config.does_not_exist_timeout = Duration::from_secs(60);
    let bootstrap = Bootstrap::from_json(&server.bootstrap_json(&[])).expect("bootstrap");
    let base = live();
    let mesh = Mesh::builder()
        .bootstrap(bootstrap)
        .xds_config(config)
        .build()
        .await
        .expect("mesh");
    let client = mesh.xds_client().expect("ADS").clone();
    let t = Instant::now();
    let mut cws = Vec::with_capacity(clusters);
    for i in 0..clusters {
        cws.push(
            client
                .watch(ResourceType::Cluster, cluster_name(i))
                .await
                .expect("watch"),
        );
    }
    let mut ews = Vec::with_capacity(clusters);
    for i in 0..clusters {
        ews.push(
            client
                .watch(ResourceType::ClusterLoadAssignment, cluster_name(i))
                .await
                .expect("watch"),
        );
    }
    wait_all(&mut cws).await;
    let t_c = t.elapsed();
    wait_all(&mut ews).await;
    let ads_load_ms = ms(t.elapsed());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let after = live();
    // Clusters and endpoints were applied together; the model's split of the bytes between
    // them (measured above) divides the growth.
    let model_total = model_bytes_per_cluster * clusters + model_bytes_per_endpoint * endpoints;
    let grown = after.saturating_sub(base);
    let share = |model: usize| -> usize {
        (grown as f64 * model as f64 / model_total.max(1) as f64) as usize
    };
    let ads_bytes_per_cluster = share(model_bytes_per_cluster * clusters) / clusters;
    let ads_bytes_per_endpoint = share(model_bytes_per_endpoint * endpoints) / endpoints;
    let _ = t_c;

    // Pushes that change every cluster: time until the client has applied all of them.
    let mut ads_push_ms = Vec::with_capacity(pushes);
    for k in 0..pushes {
        let secs = k as i64 + 2;
        let t = Instant::now();
        server.set_many((0..clusters).map(|i| cluster(i, secs)));
        for w in &mut cws {
            w.wait_for(|s| {
                matches!(&s.value, Some(mesh_core::xds::Resource::Cluster(c))
                    if c.connect_timeout.as_secs() == secs as u64)
            })
            .await;
        }
        ads_push_ms.push(ms(t.elapsed()));
    }
    drop((cws, ews, mesh, server));

    // 3. Envoy, from its own ADS server, with the same resources.
    let (envoy_load_ms, envoy_bytes_per_cluster, envoy_push_ms) =
        envoy(clusters, &cluster_anys, &cla_anys, envoy_pushes).await;
    Figures {
        clusters,
        endpoints,
        translate_us_per_cluster,
        model_bytes_per_cluster,
        model_bytes_per_endpoint,
        ads_load_ms,
        ads_bytes_per_cluster,
        ads_bytes_per_endpoint,
        ads_push_ms,
        envoy_load_ms,
        envoy_bytes_per_cluster,
        envoy_push_ms,
    }
}

/// Envoy's `cluster_manager.*` counters and gauges.
async fn envoy_stats(envoy: &Envoy) -> std::collections::HashMap<String, u64> {
    let text = envoy
        .admin_get("/stats?filter=^cluster_manager%5C.")
        .await
        .unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(": ")?;
            Some((k.trim().to_owned(), v.trim().parse().ok()?))
        })
        .collect()
}

/// tcmalloc's allocated bytes in Envoy.
async fn envoy_allocated(envoy: &Envoy) -> u64 {
    let text = envoy.admin_get("/memory").await.unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    v["allocated"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .or_else(|| v["allocated"].as_u64())
        .unwrap_or_else(|| panic!("no allocated bytes in Envoy's /memory: {text}"))
}

/// Waits until Envoy has `clusters` active (plus its static `xds` cluster) and none warming,
/// with at least `updates` accepted CDS updates.
async fn envoy_settled(envoy: &Envoy, clusters: usize, updates: u64) {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let s = envoy_stats(envoy).await;
        let get = |k: &str| s.get(k).copied().unwrap_or(0);
        if get("cluster_manager.cds.update_success") >= updates
            // Its static `xds` cluster counts too.
            && get("cluster_manager.active_clusters") > clusters as u64
            && get("cluster_manager.warming_clusters") == 0
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "Envoy did not settle on {clusters} clusters: {s:?}\n{}",
            envoy.log()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn envoy(
    clusters: usize,
    cluster_anys: &[Any],
    cla_anys: &[Any],
    pushes: usize,
) -> (f64, u64, Vec<f64>) {
    let server = AdsServer::start().await;
    server.serve_wildcard();
    server.stop_recording();
    let bootstrap =
        mesh_test_support::envoy::ads_bootstrap(server.addr(), "xds-scale", serde_json::json!({}));
    let envoy = Envoy::start(&bootstrap).await;
    // Settled on nothing: its first (empty) CDS response accepted.
    envoy_settled(&envoy, 0, 1).await;
    let base = envoy_allocated(&envoy).await;
    let t = Instant::now();
    // Endpoints first, so each cluster warms as soon as it asks for them.
    server.set_many(cla_anys.iter().cloned());
    server.set_many(cluster_anys.iter().cloned());
    envoy_settled(&envoy, clusters, 2).await;
    let load_ms = ms(t.elapsed());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let bytes = envoy_allocated(&envoy).await.saturating_sub(base) / clusters as u64;
    let mut push_ms = Vec::with_capacity(pushes);
    for k in 0..pushes {
        let updates = envoy_stats(&envoy)
            .await
            .get("cluster_manager.cds.update_success")
            .copied()
            .unwrap_or(0);
        let t = Instant::now();
        server.set_many((0..clusters).map(|i| cluster(i, k as i64 + 2)));
        // As istiod does, endpoints follow the clusters (updated clusters warm again).
        server.set_many(cla_anys.iter().cloned());
        envoy_settled(&envoy, clusters, updates + 1).await;
        push_ms.push(ms(t.elapsed()));
    }
    (load_ms, bytes, push_ms)
}

async fn wait_all(ws: &mut [ResourceWatch]) {
    for w in ws {
        w.wait_for(|s| s.value.is_some()).await;
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
