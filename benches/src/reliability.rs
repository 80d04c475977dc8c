//! `reliability`: the mesh under attack and under churn, with the figures (issue 17's
//! reliability suite). Everything runs in this one process over real loopback TCP: meshed
//! servers (`mesh_tower::serve_listener`), `MeshClient`s, and a scriptable ADS server.
//!
//! ```text
//! cargo run --release -p mesh-bench --bin reliability -- [--quick] [--only NAME,…]
//! ```
//!
//! | scenario | what | passes when |
//! |---|---|---|
//! | `slowloris` | connections that never finish a TLS handshake or a request head, while a well-behaved client sends | no good request fails; every bad connection is closed by the timeouts |
//! | `host-flood` | requests with a new `Host` each, twice over | no request fails; the second flood grows memory by less than 16 MiB |
//! | `pushes` | configuration pushes (weights, endpoints, routes) under load through `MeshClient` and meshed servers | no request fails |
//! | `control-plane-down` | the control plane stopped under load, then back | no request fails while it is gone; the client resyncs |
//! | `flapping` | a control plane that drops every stream after its first answer | reconnects stay under 20 a minute |
//! | `rotation` | both sides' workload certificates replaced every 20 ms while every request makes a new mTLS connection | no handshake or request fails |
//!
//! Each scenario prints one line, `reliability {json}`, with its figures; the exit status is
//! non-zero when one fails. `--quick` runs small sizes (the suite runs it:
//! `benches/tests/reliability.rs`); the default sizes are the issue's (1,000 slow
//! connections, 1,000 pushes).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use mesh_core::identity::{CertificateProvider, Identity};
use mesh_test_support::resources as r;
use mesh_test_support::{AdsServer, TestCa};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How big each scenario is.
struct Size {
    slow_connections: usize,
    flood_requests: usize,
    pushes: usize,
    down_for: Duration,
    flapping_for: Duration,
    rotating_for: Duration,
}

impl Size {
    fn quick() -> Self {
        Self {
            slow_connections: 300,
            flood_requests: 12_000,
            pushes: 200,
            down_for: Duration::from_secs(2),
            flapping_for: Duration::from_secs(20),
            rotating_for: Duration::from_secs(3),
        }
    }

    fn full() -> Self {
        Self {
            slow_connections: 1000,
            flood_requests: 30_000,
            pushes: 1000,
            down_for: Duration::from_secs(10),
            flapping_for: Duration::from_secs(60),
            rotating_for: Duration::from_secs(15),
        }
    }
}

/// One scenario's outcome.
struct Outcome {
    figures: serde_json::Value,
    pass: bool,
}

const SCENARIOS: &[&str] = &[
    "slowloris",
    "host-flood",
    "pushes",
    "control-plane-down",
    "flapping",
    "rotation",
];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let only: Option<Vec<String>> = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .map(|v| v.split(',').map(str::to_owned).collect());
    let size = if quick { Size::quick() } else { Size::full() };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut all = true;
    for name in SCENARIOS {
        if only.as_ref().is_some_and(|o| !o.iter().any(|n| n == name)) {
            continue;
        }
        let started = Instant::now();
        let outcome = runtime.block_on(async {
            match *name {
                "slowloris" => slowloris(&size).await,
                "host-flood" => host_flood(&size).await,
                "pushes" => pushes(&size).await,
                "control-plane-down" => control_plane_down(&size).await,
                "flapping" => flapping(&size).await,
                "rotation" => rotation(&size).await,
                _ => unreachable!(),
            }
        });
        let mut line = outcome.figures;
        line["scenario"] = (*name).into();
        line["pass"] = outcome.pass.into();
        line["seconds"] = ((started.elapsed().as_secs_f64() * 10.0).round() / 10.0).into();
        println!("reliability {line}");
        all &= outcome.pass;
    }
    if all {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The application behind the meshed servers: answers with its name.
fn app(
    name: &'static str,
) -> impl tower::Service<
    http::Request<hyper::body::Incoming>,
    Response = http::Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Future<Output = Result<http::Response<Full<Bytes>>, Infallible>> + Send,
> + Clone
+ Send
+ 'static {
    tower::service_fn(
        move |_req: http::Request<hyper::body::Incoming>| async move {
            Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from_static(
                name.as_bytes(),
            ))))
        },
    )
}

/// The HTTP connection manager of the meshed servers, with `fields` over a plain one.
fn manager(fields: serde_json::Value) -> serde_json::Value {
    let mut hcm = json!({"name": "hcm", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "inbound",
        "route_config": {"name": "r", "virtual_hosts": [{"name": "all", "domains": ["*"],
            "routes": [{"match": {"prefix": "/"}, "non_forwarding_action": {}}]}]},
        "http_filters": [{"name": "router", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}});
    mesh_test_support::static_json::merge(&mut hcm["typed_config"], fields);
    hcm
}

/// A meshed server on a fresh loopback port, its inbound listener given statically: `chains`
/// (with a certificate from `ca` for TLS chains).
async fn meshed_server(
    name: &'static str,
    chains: serde_json::Value,
    extra: serde_json::Value,
    ca: &TestCa,
) -> SocketAddr {
    let cert = ca.server(&[]);
    let identity = Identity::from_pem(
        Some(cert.cert_pem.as_bytes()),
        Some(cert.key_pem.as_bytes()),
        Some(ca.root_pem.as_bytes()),
        name,
    )
    .expect("identity");
    meshed_server_with(
        name,
        chains,
        extra,
        CertificateProvider::from_identity("default", identity),
    )
    .await
}

/// [`meshed_server`] presenting the certificates `provider` holds (they may rotate).
async fn meshed_server_with(
    name: &'static str,
    chains: serde_json::Value,
    extra: serde_json::Value,
    provider: CertificateProvider,
) -> SocketAddr {
    let socket = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = socket.local_addr().expect("addr");
    let mut listener = json!({
        "name": format!("inbound|{addr}"),
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": addr.port()}},
        "filter_chains": chains});
    mesh_test_support::static_json::merge(&mut listener, extra);
    let doc = json!({"static_resources": {"listeners": [listener]}});
    let mesh = mesh_core::Mesh::builder()
        .bootstrap(
            mesh_core::Bootstrap::from_json(
                &json!({"server_listener_resource_name_template": "inbound|%s"}).to_string(),
            )
            .expect("bootstrap"),
        )
        .static_resources(
            mesh_core::StaticResources::from_value(&doc, "reliability").expect("listener"),
        )
        .certificate_provider("default", provider)
        .build()
        .await
        .expect("mesh");
    tokio::spawn(async move { mesh_tower::serve_listener(&mesh, socket, app(name)).await });
    addr
}

/// A plaintext meshed server.
async fn plain_server(name: &'static str, ca: &TestCa) -> SocketAddr {
    meshed_server(
        name,
        json!([{"filters": [manager(json!({}))]}]),
        json!({}),
        ca,
    )
    .await
}

/// This process's resident memory, in KiB.
fn rss_kib() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4
}

/// A keep-alive HTTP/1.1 client to `addr`.
fn h1_client() -> hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::Empty<Bytes>,
> {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http()
}

/// Connections that never finish a TLS handshake or a request head, while a good client
/// sends: the timeouts close them, and the good client is never refused.
async fn slowloris(size: &Size) -> Outcome {
    let ca = TestCa::new("reliability");
    let tls = json!({"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
        "common_tls_context": {"tls_certificate_provider_instance": {"instance_name": "default"}}}});
    let hcm = manager(json!({"request_headers_timeout": "1s"}));
    let chains = json!([
        {"filter_chain_match": {"transport_protocol": "tls"}, "transport_socket": tls,
         "transport_socket_connect_timeout": "1s", "filters": [hcm.clone()]},
        {"filter_chain_match": {"transport_protocol": "raw_buffer"}, "filters": [hcm]}
    ]);
    let addr = meshed_server(
        "slowloris",
        chains,
        json!({"listener_filters_timeout": "1s"}),
        &ca,
    )
    .await;
    let rss_before = rss_kib();
    let opened = Instant::now();
    let mut bad = Vec::with_capacity(size.slow_connections);
    for i in 0..size.slow_connections {
        let Ok(mut tcp) = tokio::net::TcpStream::connect(addr).await else {
            continue;
        };
        let first: &[u8] = if i % 2 == 0 {
            &[0x16, 0x03, 0x01, 0x00, 0x80]
        } else {
            b"GET / HTTP/1.1\r\nhost: a\r\nx-slow: "
        };
        let _ = tcp.write_all(first).await;
        bad.push(tcp);
    }
    let rss_held = rss_kib();
    let client = h1_client();
    let good = mesh_test_support::load::closed_loop(4, usize::MAX, Duration::from_secs(3), {
        let client = client.clone();
        move || {
            let client = client.clone();
            async move {
                let uri: http::Uri = format!("http://{addr}/").parse().expect("uri");
                match client.get(uri).await {
                    Ok(rsp) => rsp.status() == 200 && rsp.into_body().collect().await.is_ok(),
                    Err(_) => false,
                }
            }
        }
    })
    .await;
    // Every bad connection must have been closed by now or soon (1 s bounds, plus a margin).
    let closed = Arc::new(AtomicU64::new(0));
    let mut waits = tokio::task::JoinSet::new();
    for mut tcp in bad.drain(..) {
        let closed = closed.clone();
        waits.spawn(async move {
            let mut buf = [0u8; 256];
            let done = tokio::time::timeout(Duration::from_secs(5), async {
                loop {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                }
            })
            .await;
            if done.is_ok() {
                closed.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    while waits.join_next().await.is_some() {}
    let closed = closed.load(Ordering::Relaxed) as usize;
    let failed = good.requests - good.ok;
    Outcome {
        pass: failed == 0 && good.ok > 0 && closed == size.slow_connections,
        figures: json!({
            "slow_connections": size.slow_connections,
            "closed_by_timeouts": closed,
            "checked_after_s": (opened.elapsed().as_secs_f64() * 10.0).round() / 10.0,
            "good_requests": good.requests,
            "good_failed": failed,
            "good_p99_ms": good.quantile(0.99).as_secs_f64() * 1e3,
            "rss_kib_before": rss_before,
            "rss_kib_with_slow_connections": rss_held,
            "rss_kib_after": rss_kib(),
        }),
    }
}

/// Requests with a new `Host` each: the server's label tables are capped, so a second flood
/// as large as the first grows memory by little.
async fn host_flood(size: &Size) -> Outcome {
    let ca = TestCa::new("reliability");
    let addr = plain_server("flood", &ca).await;
    let client = h1_client();
    let next = Arc::new(AtomicU64::new(0));
    let flood = |n: usize| {
        let client = client.clone();
        let next = next.clone();
        mesh_test_support::load::closed_loop(8, n, Duration::from_secs(600), move || {
            let client = client.clone();
            let i = next.fetch_add(1, Ordering::Relaxed);
            async move {
                let req = http::Request::get(format!("http://{addr}/"))
                    .header("host", format!("h{i}.flood.example"))
                    .body(http_body_util::Empty::new())
                    .expect("request");
                match client.request(req).await {
                    Ok(rsp) => rsp.status() == 200 && rsp.into_body().collect().await.is_ok(),
                    Err(_) => false,
                }
            }
        })
    };
    let before = rss_kib();
    let first = flood(size.flood_requests).await;
    let after_first = rss_kib();
    let second = flood(size.flood_requests).await;
    let after_second = rss_kib();
    let failed = (first.requests - first.ok) + (second.requests - second.ok);
    let second_growth = after_second.saturating_sub(after_first);
    Outcome {
        pass: failed == 0 && second_growth < 16 * 1024,
        figures: json!({
            "requests": first.requests + second.requests,
            "failed": failed,
            "rss_kib_before": before,
            "rss_kib_after_first_flood": after_first,
            "rss_kib_after_second_flood": after_second,
            "second_flood_growth_kib": second_growth,
        }),
    }
}

/// The client's configuration: `svc` routed to clusters `a` and `b` by weight.
fn client_config(ads: &AdsServer, weight_a: u32, a: &[SocketAddr], b: &[SocketAddr], push: usize) {
    use envoy_types::pb::envoy::config::route::v3 as route;
    use envoy_types::pb::google::protobuf::UInt32Value;
    let mut rc = r::route_to("svc", &["svc", "svc:80"], "a");
    let action = route::RouteAction {
        cluster_specifier: Some(route::route_action::ClusterSpecifier::WeightedClusters(
            route::WeightedCluster {
                clusters: vec![
                    route::weighted_cluster::ClusterWeight {
                        name: "a".into(),
                        weight: Some(UInt32Value { value: weight_a }),
                        ..Default::default()
                    },
                    route::weighted_cluster::ClusterWeight {
                        name: "b".into(),
                        weight: Some(UInt32Value {
                            value: 100 - weight_a,
                        }),
                        ..Default::default()
                    },
                ],
                ..Default::default()
            },
        )),
        ..Default::default()
    };
    let vh = &mut rc.virtual_hosts[0];
    vh.routes[0].action = Some(route::route::Action::Route(action));
    // A route that changes with every push (its header), ahead of the catch-all.
    let mut extra = vh.routes[0].clone();
    extra.r#match = Some(r::prefix_match(&format!("/push-{push}")));
    vh.routes.insert(0, extra);
    ads.set_many([
        r::any(r::api_listener("svc:80", "svc-routes")),
        r::any({
            let mut rc = rc;
            rc.name = "svc-routes".into();
            rc
        }),
        r::any(r::eds_cluster("a")),
        r::any(r::eds_cluster("b")),
        r::any(r::endpoints("a", a)),
        r::any(r::endpoints("b", b)),
    ]);
}

/// A `MeshClient` on `ads`, with the client's usual (fast) settings.
async fn mesh_client(ads: &AdsServer) -> mesh_tower::MeshClient {
    let bootstrap = mesh_core::Bootstrap::from_json(&ads.bootstrap_json(&[])).expect("bootstrap");
    let mut config = mesh_core::xds::XdsClientConfig::default();
    config.backoff_base = Duration::from_millis(50);
    config.backoff_max = Duration::from_millis(500);
    let mesh = mesh_core::Mesh::builder()
        .bootstrap(bootstrap)
        .xds_config(config)
        .build()
        .await
        .expect("mesh");
    mesh_tower::MeshClient::new(&mesh)
}

/// Load through `client` to `svc` until `stop` resolves: requests sent and failed.
async fn load_until(client: &mesh_tower::MeshClient, stop: impl Future<Output = ()>) -> (u64, u64) {
    let sent = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let mut workers = tokio::task::JoinSet::new();
    let (done_tx, done_rx) = tokio::sync::watch::channel(false);
    for _ in 0..4 {
        let (client, sent, failed, mut done) = (
            client.clone(),
            sent.clone(),
            failed.clone(),
            done_rx.clone(),
        );
        workers.spawn(async move {
            while !*done.borrow_and_update() {
                let req = http::Request::get("http://svc/")
                    .body(http_body_util::Empty::<Bytes>::new())
                    .expect("request");
                let ok = match client.send(req).await {
                    Ok(rsp) => rsp.status() == 200 && rsp.into_body().collect().await.is_ok(),
                    Err(_) => false,
                };
                sent.fetch_add(1, Ordering::Relaxed);
                if !ok {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    stop.await;
    let _ = done_tx.send(true);
    while workers.join_next().await.is_some() {}
    (sent.load(Ordering::Relaxed), failed.load(Ordering::Relaxed))
}

/// Waits until `client` answers 200 for `svc`.
async fn until_served(client: &mesh_tower::MeshClient) {
    for _ in 0..200 {
        let req = http::Request::get("http://svc/")
            .body(http_body_util::Empty::<Bytes>::new())
            .expect("request");
        if let Ok(rsp) = client.send(req).await
            && rsp.status() == 200
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("svc never served");
}

/// Configuration pushes under load: weights, endpoint sets and routes change on every push,
/// between meshed servers; no request may fail.
async fn pushes(size: &Size) -> Outcome {
    let ca = TestCa::new("reliability");
    let servers = [
        plain_server("a1", &ca).await,
        plain_server("a2", &ca).await,
        plain_server("b1", &ca).await,
        plain_server("b2", &ca).await,
    ];
    let ads = AdsServer::start().await;
    ads.stop_recording();
    client_config(&ads, 50, &servers[..2], &servers[2..], 0);
    let client = mesh_client(&ads).await;
    until_served(&client).await;
    let pushes = size.pushes;
    let pusher = async {
        for i in 1..=pushes {
            let weight = (i * 37 % 101) as u32;
            // Never an empty set: a cluster keeps at least one live endpoint.
            let a = if i % 2 == 0 {
                &servers[..2]
            } else {
                &servers[..1]
            };
            let b = if i % 3 == 0 {
                &servers[2..]
            } else {
                &servers[3..]
            };
            client_config(&ads, weight, a, b, i);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // The last push settles before the load stops.
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let started = Instant::now();
    let (sent, failed) = load_until(&client, pusher).await;
    Outcome {
        pass: failed == 0 && sent > 0,
        figures: json!({
            "pushes": pushes,
            "requests": sent,
            "failed": failed,
            "pushes_per_s": (pushes as f64 / started.elapsed().as_secs_f64()).round(),
        }),
    }
}

/// The control plane stopped under load and started again: the client keeps serving from its
/// last configuration, then resyncs.
async fn control_plane_down(size: &Size) -> Outcome {
    let ca = TestCa::new("reliability");
    let servers = [plain_server("a", &ca).await, plain_server("b", &ca).await];
    let mut ads = AdsServer::start().await;
    client_config(&ads, 50, &servers[..1], &servers[1..], 0);
    let client = mesh_client(&ads).await;
    until_served(&client).await;
    let opened_before = ads.streams_opened();
    let down_for = size.down_for;
    let mut resynced = false;
    let outage = async {
        ads.stop().await;
        tokio::time::sleep(down_for).await;
        ads.restart().await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while ads.streams_opened() <= opened_before && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        resynced = ads.streams_opened() > opened_before;
        // A little more load on the new stream.
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let (sent_down, failed_down) = load_until(&client, outage).await;
    Outcome {
        pass: failed_down == 0 && resynced && sent_down > 0,
        figures: json!({
            "down_s": down_for.as_secs_f64(),
            "requests": sent_down,
            "failed": failed_down,
            "resynced": resynced,
        }),
    }
}

/// A control plane that answers once and drops every stream: the client's reconnects per
/// minute, with its default backoff.
async fn flapping(size: &Size) -> Outcome {
    let ads = AdsServer::start().await;
    ads.stop_recording();
    ads.set(r::any(r::eds_cluster("c1")));
    ads.flap(true);
    let bootstrap = mesh_core::Bootstrap::from_json(&ads.bootstrap_json(&[])).expect("bootstrap");
    let mesh = mesh_core::Mesh::builder()
        .bootstrap(bootstrap)
        .build()
        .await
        .expect("mesh");
    let mut w = mesh
        .xds_client()
        .expect("xds")
        .watch(mesh_core::xds::ResourceType::Cluster, "c1")
        .await
        .expect("watch");
    w.wait_for(|s| s.value.is_some()).await;
    let start = ads.streams_opened();
    tokio::time::sleep(size.flapping_for).await;
    let reconnects = ads.streams_opened() - start;
    let per_minute = reconnects as f64 * 60.0 / size.flapping_for.as_secs_f64();
    Outcome {
        pass: per_minute < 20.0 && w.current().value.is_some(),
        figures: json!({
            "observed_s": size.flapping_for.as_secs_f64(),
            "reconnects": reconnects,
            "reconnects_per_minute": (per_minute * 10.0).round() / 10.0,
        }),
    }
}

/// A workload identity from `ca` for `spiffe_id`, freshly keyed.
fn workload_identity(ca: &TestCa, spiffe_id: &str) -> Identity {
    let cert = ca.workload(spiffe_id);
    Identity::from_pem(
        Some(cert.cert_pem.as_bytes()),
        Some(cert.key_pem.as_bytes()),
        Some(ca.root_pem.as_bytes()),
        spiffe_id,
    )
    .expect("identity")
}

/// Both sides' certificates rotate under load, every request on a new mTLS connection (one
/// request per connection): no handshake may fail.
async fn rotation(size: &Size) -> Outcome {
    const SERVER: &str = "spiffe://cluster.local/ns/default/sa/server";
    const CLIENT: &str = "spiffe://cluster.local/ns/default/sa/client";
    let ca = TestCa::new("reliability");
    let server_certs =
        CertificateProvider::from_identity("default", workload_identity(&ca, SERVER));
    let client_certs =
        CertificateProvider::from_identity("default", workload_identity(&ca, CLIENT));
    let mtls = json!({"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
        "require_client_certificate": true,
        "common_tls_context": {
            "tls_certificate_provider_instance": {"instance_name": "default"},
            "validation_context": {"ca_certificate_provider_instance": {"instance_name": "default"}}}}});
    let server = meshed_server_with(
        "rotation",
        json!([{"transport_socket": mtls, "filters": [manager(json!({}))]}]),
        json!({}),
        server_certs.clone(),
    )
    .await;
    let upstream_tls = json!({"transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
        "common_tls_context": {
            "tls_certificate_provider_instance": {"instance_name": "default"},
            "validation_context": {
                "ca_certificate_provider_instance": {"instance_name": "default"},
                "match_subject_alt_names": [{"exact": SERVER}]}}}},
        "max_requests_per_connection": 1});
    let doc = mesh_test_support::static_json::resources(
        &[mesh_test_support::static_json::listener(
            "svc:80",
            json!([{"match": {"prefix": "/"}, "route": {"cluster": "server"}}]),
            json!([]),
        )],
        &[mesh_test_support::static_json::cluster(
            "server",
            &[server],
            upstream_tls,
        )],
    );
    let mesh = mesh_core::Mesh::builder()
        .static_resources(
            mesh_core::StaticResources::from_value(&doc, "reliability").expect("resources"),
        )
        .certificate_provider("default", client_certs.clone())
        .build()
        .await
        .expect("mesh");
    let client = mesh_tower::MeshClient::new(&mesh);
    until_served(&client).await;
    let rotations = Arc::new(AtomicU64::new(0));
    let rotating_for = size.rotating_for;
    let rotate = {
        let rotations = rotations.clone();
        async move {
            let end = Instant::now() + rotating_for;
            while Instant::now() < end {
                tokio::time::sleep(Duration::from_millis(20)).await;
                server_certs.set(workload_identity(&ca, SERVER));
                client_certs.set(workload_identity(&ca, CLIENT));
                rotations.fetch_add(1, Ordering::Relaxed);
            }
        }
    };
    let (sent, failed) = load_until(&client, rotate).await;
    Outcome {
        pass: failed == 0 && sent > 0,
        figures: json!({
            "rotations": rotations.load(Ordering::Relaxed),
            "connections": sent,
            "failed": failed,
        }),
    }
}
