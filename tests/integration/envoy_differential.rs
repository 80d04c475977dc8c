//! Differential tests: the same routes and clusters, the same requests, through a real Envoy
//! 1.40 and through MeshClient, on separate but identical loopback backends. The outcomes
//! (status, which backend answered, how many attempts reached upstream, Envoy's local reply
//! bodies) must agree; splits agree within statistical tolerance.

use std::net::SocketAddr;
use std::time::Duration;

use mesh_test_support::static_json::{cluster, listener, resources};
use mesh_test_support::{Backend, Behavior, Envoy};
use serde_json::{Value, json};

use crate::static_client;

/// One side: the backends of each cluster, and a way to send requests.
struct Side {
    backends: Vec<Vec<Backend>>,
    send: Sender,
}

enum Sender {
    Envoy { _envoy: Envoy, addr: SocketAddr },
    Mesh(mesh_tower::MeshClient),
}

/// Status and body of one answer.
type Outcome = (u16, String);

impl Side {
    async fn get(&self, headers: &[(&str, &str)]) -> Outcome {
        match &self.send {
            Sender::Envoy { addr, .. } => {
                let mut h = vec![("host", "svc")];
                h.extend_from_slice(headers);
                mesh_test_support::http::get(*addr, "/", &h)
                    .await
                    .expect("envoy answers")
            }
            Sender::Mesh(client) => {
                let a = crate::get(client, "http://svc/", headers).await;
                (a.status, a.body)
            }
        }
    }

    fn requests(&self, cluster: usize) -> u64 {
        self.backends[cluster].iter().map(Backend::requests).sum()
    }
}

/// Clusters as (name, backend names, extra cluster fields).
type ClusterSpec<'a> = (&'a str, &'a [&'a str], Value);

async fn backends(specs: &[ClusterSpec<'_>]) -> Vec<Vec<Backend>> {
    let mut out = Vec::new();
    for (_, names, _) in specs {
        let mut v = Vec::new();
        for n in names.iter() {
            v.push(Backend::start(n).await);
        }
        out.push(v);
    }
    out
}

fn clusters(specs: &[ClusterSpec<'_>], backends: &[Vec<Backend>]) -> Vec<Value> {
    specs
        .iter()
        .zip(backends)
        .map(|((name, _, extra), bs)| {
            let addrs: Vec<SocketAddr> = bs.iter().map(Backend::addr).collect();
            cluster(name, &addrs, extra.clone())
        })
        .collect()
}

/// Envoy and MeshClient over the same configuration.
async fn pair(routes: Value, filters: Value, specs: &[ClusterSpec<'_>]) -> (Side, Side) {
    let envoy_backends = backends(specs).await;
    let mut http_filters = filters.as_array().cloned().unwrap_or_default();
    http_filters.push(
        json!({"name": "envoy.filters.http.router", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}),
    );
    let bootstrap = json!({
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": [{
                "name": "outbound",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "outbound",
                        "route_config": {"name": "svc", "virtual_hosts": [
                            {"name": "svc", "domains": ["*"], "routes": routes.clone()}]},
                        "http_filters": http_filters,
                    }}]}]
            }],
            "clusters": clusters(specs, &envoy_backends),
        }
    });
    let envoy = Envoy::start(&bootstrap.to_string()).await;
    let envoy_addr = envoy.listener_addr(0).await;
    let envoy_side = Side {
        backends: envoy_backends,
        send: Sender::Envoy {
            _envoy: envoy,
            addr: envoy_addr,
        },
    };
    let mesh_backends = backends(specs).await;
    let client = static_client(resources(
        &[listener("svc:80", routes, filters)],
        &clusters(specs, &mesh_backends),
    ))
    .await;
    let mesh_side = Side {
        backends: mesh_backends,
        send: Sender::Mesh(client),
    };
    (envoy_side, mesh_side)
}

#[tokio::test]
async fn routing_and_split_agree() {
    let routes = json!([
        {"match": {"prefix": "/", "headers": [{"name": "end-user", "string_match": {"exact": "jason"}}]},
         "route": {"cluster": "v2"}},
        {"match": {"prefix": "/"}, "route": {"weighted_clusters": {"clusters": [
            {"name": "v1", "weight": 75}, {"name": "v2", "weight": 25}]}}}
    ]);
    let specs: [ClusterSpec<'_>; 2] = [("v1", &["v1"], json!({})), ("v2", &["v2"], json!({}))];
    let (envoy, mesh) = pair(routes, json!([]), &specs).await;
    for side in [&envoy, &mesh] {
        for _ in 0..10 {
            assert_eq!(side.get(&[("end-user", "jason")]).await, (200, "v2".into()));
        }
    }
    let n = 600;
    let mut shares = Vec::new();
    for side in [&envoy, &mesh] {
        let mut v2 = 0;
        for _ in 0..n {
            let (status, body) = side.get(&[]).await;
            assert_eq!(status, 200);
            v2 += (body == "v2") as usize;
        }
        shares.push(v2 as f64 / n as f64);
    }
    // Each within 4 σ of 25 % (σ ≈ 1.8 % at n = 600).
    for s in &shares {
        assert!(
            (0.18..0.32).contains(s),
            "v2 shares (envoy, mesh): {shares:?}"
        );
    }
}

#[tokio::test]
async fn retries_agree() {
    let routes = json!([{"match": {"prefix": "/"}, "route": {"cluster": "c", "retry_policy": {
        "retry_on": "5xx", "num_retries": 2, "retry_back_off": {"base_interval": "0.001s"}}}}]);
    let specs: [ClusterSpec<'_>; 1] = [("c", &["b"], json!({}))];
    let (envoy, mesh) = pair(routes, json!([]), &specs).await;
    let mut seen = Vec::new();
    for side in [&envoy, &mesh] {
        side.backends[0][0].fail_next(2);
        let recovered = side.get(&[]).await;
        let after_recovery = side.requests(0);
        side.backends[0][0].set(Behavior::Status(503));
        let exhausted = side.get(&[]).await;
        let after_exhaustion = side.requests(0);
        seen.push((recovered, after_recovery, exhausted.0, after_exhaustion));
    }
    assert_eq!(seen[0], seen[1], "(envoy, mesh)");
    assert_eq!(seen[0].1, 3, "three attempts");
    assert_eq!(seen[0].3, 6, "three more when every attempt fails");
}

#[tokio::test]
async fn timeouts_faults_and_connect_failures_agree() {
    let dead = mesh_test_support::unused_port();
    let routes = json!([
        {"match": {"prefix": "/", "headers": [{"name": "x-case", "string_match": {"exact": "timeout"}}]},
         "route": {"cluster": "slow", "timeout": "0.2s"}},
        {"match": {"prefix": "/", "headers": [{"name": "x-case", "string_match": {"exact": "abort"}}]},
         "route": {"cluster": "slow"},
         "typed_per_filter_config": {"envoy.filters.http.fault": {
             "@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault",
             "abort": {"http_status": 503, "percentage": {"numerator": 100}}}}},
        {"match": {"prefix": "/"}, "route": {"cluster": "dead"}}
    ]);
    let dead_cluster = json!({"load_assignment": {"cluster_name": "dead", "endpoints": [{"lb_endpoints": [
        {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": dead.port()}}}}]}]}});
    let specs: [ClusterSpec<'_>; 2] = [("slow", &["slow"], json!({})), ("dead", &[], dead_cluster)];
    let (envoy, mesh) = pair(
        routes,
        mesh_test_support::static_json::fault_filter(),
        &specs,
    )
    .await;
    let mut seen = Vec::new();
    for side in [&envoy, &mesh] {
        side.backends[0][0].set(Behavior::Delay(Duration::from_secs(3)));
        let timeout = side.get(&[("x-case", "timeout")]).await;
        let abort = side.get(&[("x-case", "abort")]).await;
        let connect = side.get(&[]).await;
        seen.push((timeout, abort, connect));
    }
    assert_eq!(seen[0], seen[1], "(envoy, mesh)");
    assert_eq!(seen[0].0, (504, "upstream request timeout".into()));
    assert_eq!(seen[0].1, (503, "fault filter abort".into()));
    assert_eq!(
        seen[0].2,
        (503, "upstream connect error or disconnect/reset before headers. reset reason: remote connection failure".into())
    );
}

#[tokio::test]
async fn circuit_breaking_agrees() {
    let routes = json!([{"match": {"prefix": "/"}, "route": {"cluster": "c"}}]);
    let specs: [ClusterSpec<'_>; 1] = [(
        "c",
        &["b"],
        json!({"circuit_breakers": {"thresholds": [{"max_requests": 2}]}}),
    )];
    let (envoy, mesh) = pair(routes, json!([]), &specs).await;
    let envoy = std::sync::Arc::new(envoy);
    let mesh = std::sync::Arc::new(mesh);
    let mut seen = Vec::new();
    for side in [&envoy, &mesh] {
        side.backends[0][0].set(Behavior::Delay(Duration::from_millis(500)));
        let tasks: Vec<_> = (0..6)
            .map(|_| {
                let s = side.clone();
                tokio::spawn(async move { s.get(&[]).await })
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out.sort();
        seen.push(out);
    }
    assert_eq!(seen[0], seen[1], "(envoy, mesh)");
    assert_eq!(seen[0].iter().filter(|o| o.0 == 200).count(), 2);
}

#[tokio::test]
async fn outlier_ejection_agrees() {
    let routes = json!([{"match": {"prefix": "/"}, "route": {"cluster": "c"}}]);
    let specs: [ClusterSpec<'_>; 1] = [(
        "c",
        &["good", "bad"],
        json!({"outlier_detection": {"consecutive_5xx": 3, "interval": "10s",
               "base_ejection_time": "30s", "max_ejection_percent": 50}}),
    )];
    let (envoy, mesh) = pair(routes, json!([]), &specs).await;
    let mut seen = Vec::new();
    for side in [&envoy, &mesh] {
        side.backends[0][1].set(Behavior::Status(503));
        let mut statuses = Vec::new();
        for _ in 0..30 {
            statuses.push(side.get(&[]).await.0);
        }
        let bad = side.backends[0][1].requests();
        // Envoy ejects on its main thread, so one more request may reach the host first.
        assert!((3..=4).contains(&bad), "bad host got {bad}: {statuses:?}");
        seen.push(statuses[10..].to_vec());
    }
    assert_eq!(
        seen[0], seen[1],
        "after ejection, every answer is the good host's"
    );
    assert!(seen[0].iter().all(|&s| s == 200));
}
