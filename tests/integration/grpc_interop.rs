//! gRPC's xDS interop scenarios (grpc `doc/xds-test-descriptions.md`, psm-interop's URL-map
//! tests), reproduced on loopback with mesh-control as the control plane: the interop
//! servers and client from `mesh-grpc-interop` run in-process, and the driver below talks
//! to the client only through its stats port (`LoadBalancerStatsService`,
//! `XdsUpdateClientConfigureService`, CSDS), as the real driver does.
//!
//! Traffic Director's concepts map onto Istio's: a "backend service" is a Service (a CDS
//! cluster), an instance group is a set of WorkloadEntries, a URL map is a VirtualService.
//! Each server's host name is its WorkloadEntry's name.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

use mesh_grpc_interop::proto::{
    ClientConfigureRequest, ClientConfigureResponse, ConfigureMetadata,
    LoadBalancerAccumulatedStatsRequest, LoadBalancerAccumulatedStatsResponse,
    LoadBalancerStatsRequest, LoadBalancerStatsResponse, RpcType, path,
};
use mesh_grpc_interop::{client, server};

use super::meshed::{TestMesh, Workload, free_port};

const CLIENT: Workload<'static> = Workload::new("client", "default", "client");
const SERVER: Workload<'static> = Workload::new("server", "default", "server");
const ALT: Workload<'static> = Workload::new("alt", "default", "alt");

/// One backend: a WorkloadEntry of a Service, in a group (a label subsets select on).
#[derive(Clone, Debug)]
struct Backend {
    name: String,
    app: Workload<'static>,
    group: &'static str,
    addr: SocketAddr,
}

/// The Services `server` and `alt` (port 8080) and their WorkloadEntries.
fn registry(backends: &[Backend]) -> String {
    let mut y = String::new();
    for svc in ["server", "alt"] {
        y += &format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {svc}, namespace: default}}\nspec:\n  ports: [{{port: 8080, name: grpc}}]\n  selector: {{app: {svc}}}\n---\n"
        );
    }
    for b in backends {
        y += &format!(
            "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: {}, namespace: default}}\nspec: {{address: 127.0.0.1, ports: {{grpc: {}}}, labels: {{app: {}, group: {}}}, serviceAccount: {}}}\n---\n",
            b.name,
            b.addr.port(),
            b.app.app,
            b.group,
            b.app.service_account
        );
    }
    y
}

/// A running scenario: control plane, servers, and the client under test.
struct Interop {
    mesh: TestMesh,
    backends: Vec<Backend>,
    _servers: Vec<server::Running>,
    _client: client::Running,
    stats: tonic::transport::Channel,
}

impl Interop {
    /// `n` backends of `server` in group `a` and `alt_n` of `alt`, with `policy` (more YAML)
    /// applied before the client starts; the client sends `rpcs` at `qps`.
    async fn start(n: usize, alt_n: usize, policy: &str, qps: u32, rpcs: &[RpcType]) -> Self {
        let mut backends = Vec::new();
        for i in 0..n {
            backends.push(Backend {
                name: format!("server-{i}"),
                app: SERVER,
                group: if i < n.div_ceil(2) { "a" } else { "b" },
                addr: free_port(),
            });
        }
        for i in 0..alt_n {
            backends.push(Backend {
                name: format!("alt-{i}"),
                app: ALT,
                group: "a",
                addr: free_port(),
            });
        }
        let mesh = TestMesh::start(&registry(&backends)).await;
        mesh.apply("policy.yaml", policy);
        let mut servers = Vec::new();
        for b in &backends {
            let m = mesh.mesh(b.app).await;
            let me = server::Identity {
                hostname: b.name.clone(),
                server_id: b.name.clone(),
            };
            servers.push(
                server::serve(&m, me, b.addr, free_port())
                    .await
                    .expect("an interop server"),
            );
        }
        let client_mesh = mesh.mesh(CLIENT).await;
        let client = client::start(
            &client_mesh,
            client::Options {
                server: "xds:///server:8080".into(),
                qps,
                workload: client::Workload {
                    rpcs: rpcs.to_vec(),
                    metadata: Vec::new(),
                    timeout: Duration::from_secs(20),
                },
                stats: "127.0.0.1:0".parse().unwrap(),
            },
        )
        .await
        .expect("the interop client");
        let stats = tonic::transport::Endpoint::from_shared(format!("http://{}", client.stats))
            .unwrap()
            .connect_lazy();
        Self {
            mesh,
            backends,
            _servers: servers,
            _client: client,
            stats,
        }
    }

    /// Host names of the backends of `app` (in `group`, when given).
    fn hosts(&self, app: Workload<'_>, group: Option<&str>) -> Vec<String> {
        self.backends
            .iter()
            .filter(|b| b.app.app == app.app && group.is_none_or(|g| b.group == g))
            .map(|b| b.name.clone())
            .collect()
    }

    /// `GetClientStats` for the next `n` RPCs.
    async fn stats(&self, n: i32) -> LoadBalancerStatsResponse {
        let req = LoadBalancerStatsRequest {
            num_rpcs: n,
            timeout_sec: 30,
        };
        mesh_grpc_interop::call(
            self.stats.clone(),
            path::GET_CLIENT_STATS,
            tonic::Request::new(req),
        )
        .await
        .expect("GetClientStats")
        .into_inner()
    }

    /// `GetClientAccumulatedStats`.
    async fn accumulated(&self) -> LoadBalancerAccumulatedStatsResponse {
        mesh_grpc_interop::call(
            self.stats.clone(),
            path::GET_CLIENT_ACCUMULATED_STATS,
            tonic::Request::new(LoadBalancerAccumulatedStatsRequest {}),
        )
        .await
        .expect("GetClientAccumulatedStats")
        .into_inner()
    }

    /// `Configure`: methods, metadata per method, and the deadline (0: unchanged).
    async fn configure(&self, rpcs: &[RpcType], md: &[(RpcType, &str, &str)], timeout_sec: i32) {
        let req = ClientConfigureRequest {
            types: rpcs.iter().map(|&t| t as i32).collect(),
            metadata: md
                .iter()
                .map(|&(t, k, v)| ConfigureMetadata {
                    r#type: t as i32,
                    key: k.into(),
                    value: v.into(),
                })
                .collect(),
            timeout_sec,
        };
        let _: tonic::Response<ClientConfigureResponse> = mesh_grpc_interop::call(
            self.stats.clone(),
            path::CONFIGURE,
            tonic::Request::new(req),
        )
        .await
        .expect("Configure");
    }

    /// Polls `stats(n)` until `ok`, failing after 30 s with the last answer.
    async fn until(
        &self,
        what: &str,
        n: i32,
        ok: impl Fn(&LoadBalancerStatsResponse) -> bool,
    ) -> LoadBalancerStatsResponse {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let got = self.stats(n).await;
            if ok(&got) {
                return got;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: still {got:?}"
            );
        }
    }

    /// Applies `yaml` as the policy and waits until every node has it.
    async fn apply(&self, yaml: &str) {
        let version = self.mesh.apply("policy.yaml", yaml);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !self.mesh.cp.ads().in_sync(version) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "nodes not in sync with {version}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Per-method results (status code → count) gathered while `f` runs.
    async fn results_during<F: std::future::Future>(
        &self,
        f: F,
    ) -> BTreeMap<&'static str, BTreeMap<i32, i32>> {
        let before = self.accumulated().await;
        f.await;
        let after = self.accumulated().await;
        let mut out = BTreeMap::new();
        for method in [RpcType::EmptyCall, RpcType::UnaryCall] {
            let get = |r: &LoadBalancerAccumulatedStatsResponse| {
                r.stats_per_method
                    .get(method.enum_name())
                    .map(|s| s.result.clone())
                    .unwrap_or_default()
            };
            let (b, a) = (get(&before), get(&after));
            let delta: BTreeMap<i32, i32> = a
                .iter()
                .map(|(code, n)| (*code, n - b.get(code).copied().unwrap_or(0)))
                .filter(|(_, n)| *n > 0)
                .collect();
            if !delta.is_empty() {
                out.insert(method.method(), delta);
            }
        }
        out
    }
}

fn peers(rsp: &LoadBalancerStatsResponse) -> Vec<String> {
    let mut p: Vec<String> = rsp.rpcs_by_peer.keys().cloned().collect();
    p.sort();
    p
}

fn method_peers(rsp: &LoadBalancerStatsResponse, method: &str) -> Vec<String> {
    let mut p: Vec<String> = rsp
        .rpcs_by_method
        .get(method)
        .map(|m| m.rpcs_by_peer.keys().cloned().collect())
        .unwrap_or_default();
    p.sort();
    p
}

const UNARY: &[RpcType] = &[RpcType::UnaryCall];
const BOTH: &[RpcType] = &[RpcType::EmptyCall, RpcType::UnaryCall];

/// ping_pong and round_robin: every backend gets RPCs, then 100 RPCs split evenly (each
/// backend within ±1 of 100/N), with no failures, over Istio mutual TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_pong_and_round_robin() {
    let dr = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: server, namespace: default}\nspec: {host: server, trafficPolicy: {tls: {mode: ISTIO_MUTUAL}, loadBalancer: {simple: ROUND_ROBIN}}}\n";
    let t = Interop::start(4, 0, dr, 100, UNARY).await;
    let all = t.hosts(SERVER, None);
    t.until("every backend gets RPCs", 100, |r| peers(r) == all)
        .await;
    let rsp = t.stats(100).await;
    assert_eq!(rsp.num_failures, 0, "{rsp:?}");
    assert_eq!(rsp.rpcs_by_peer.values().sum::<i32>(), 100);
    for (peer, n) in &rsp.rpcs_by_peer {
        assert!((24..=26).contains(n), "{peer} got {n} of 100: {rsp:?}");
    }
    assert_eq!(t.mesh.cp.ads().nack_count(), 0);
}

/// traffic_splitting: all RPCs to group a, then a 20/80 split between the groups.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_splitting() {
    let subsets = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: server, namespace: default}\nspec: {host: server, subsets: [{name: a, labels: {group: a}}, {name: b, labels: {group: b}}]}\n---\n";
    let vs = |wa: u32, wb: u32| {
        format!(
            "{subsets}apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: server, namespace: default}}\nspec:\n  hosts: [server]\n  http:\n  - route:\n    - {{destination: {{host: server, subset: a}}, weight: {wa}}}\n    - {{destination: {{host: server, subset: b}}, weight: {wb}}}\n"
        )
    };
    let t = Interop::start(4, 0, &vs(100, 0), 200, UNARY).await;
    let (a, b) = (t.hosts(SERVER, Some("a")), t.hosts(SERVER, Some("b")));
    t.until("group a serves", 100, |r| peers(r) == a).await;
    let rsp = t.stats(300).await;
    assert_eq!(peers(&rsp), a, "all to group a: {rsp:?}");

    t.apply(&vs(20, 80)).await;
    t.until("group b serves", 50, |r| {
        b.iter().all(|h| r.rpcs_by_peer.contains_key(h))
    })
    .await;
    let rsp = t.stats(1000).await;
    assert_eq!(rsp.num_failures, 0);
    let in_a: i32 = a.iter().filter_map(|h| rsp.rpcs_by_peer.get(h)).sum();
    // 20 % of 1000: σ ≈ 12.6, so ±60 is nearly 5σ.
    assert!(
        (140..=260).contains(&in_a),
        "group a got {in_a} of 1000: {rsp:?}"
    );
}

/// path_matching and header_matching: a rule sends the matching method to `alt`, the other
/// to `server`, for each kind of match psm-interop checks that Istio can express.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_and_header_matching() {
    let vs = |m: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: server, namespace: default}}\nspec:\n  hosts: [server]\n  http:\n  - match: [{m}]\n    route: [{{destination: {{host: alt}}}}]\n  - route: [{{destination: {{host: server}}}}]\n"
        )
    };
    let t = Interop::start(2, 2, &vs("{uri: {exact: /none}}"), 50, BOTH).await;
    t.configure(
        BOTH,
        &[
            (RpcType::EmptyCall, "xds_md", "empty_ytpme"),
            (RpcType::UnaryCall, "xds_md", "unary_yranu"),
            (RpcType::UnaryCall, "xds_md_numeric", "159"),
        ],
        0,
    )
    .await;
    let (server, alt) = (t.hosts(SERVER, None), t.hosts(ALT, None));
    t.until("default route", 100, |r| peers(r) == server).await;

    // (rule, the method it sends to alt)
    let cases = [
        (
            "{uri: {exact: /grpc.testing.TestService/EmptyCall}}",
            "EmptyCall",
        ),
        (
            "{uri: {prefix: /grpc.testing.TestService/Unary}}",
            "UnaryCall",
        ),
        ("{uri: {regex: '^/.*/UnaryCall$'}}", "UnaryCall"),
        (
            "{uri: {exact: /gRpC.tEsTinG.tEstseRvice/empTycaLl}, ignoreUriCase: true}",
            "EmptyCall",
        ),
        ("{headers: {xds_md: {exact: empty_ytpme}}}", "EmptyCall"),
        ("{headers: {xds_md: {prefix: un}}}", "UnaryCall"),
        ("{headers: {xds_md: {regex: '.*me$'}}}", "EmptyCall"),
        ("{headers: {xds_md: {regex: '^em.*me$'}}}", "EmptyCall"),
        // Istio has no range or present matcher; a regex over the numeric header and
        // withoutHeaders (an inverted match) stand in for them.
        (
            "{headers: {xds_md_numeric: {regex: '1[0-9][0-9]'}}}",
            "UnaryCall",
        ),
        (
            "{withoutHeaders: {xds_md: {exact: unary_yranu}}}",
            "EmptyCall",
        ),
    ];
    for (rule, to_alt) in cases {
        t.apply(&vs(rule)).await;
        let other = if to_alt == "EmptyCall" {
            "UnaryCall"
        } else {
            "EmptyCall"
        };
        let rsp = t
            .until(rule, 100, |r| {
                method_peers(r, to_alt).iter().all(|p| alt.contains(p))
                    && method_peers(r, other).iter().all(|p| server.contains(p))
            })
            .await;
        let rsp2 = t.stats(100).await;
        assert_eq!(rsp2.num_failures, 0, "{rule}: {rsp2:?}");
        assert_eq!(
            method_peers(&rsp2, to_alt),
            alt,
            "{rule}: {rsp2:?} (before: {rsp:?})"
        );
        assert_eq!(method_peers(&rsp2, other), server, "{rule}: {rsp2:?}");
    }
    assert_eq!(t.mesh.cp.ads().nack_count(), 0);
}

/// fault_injection: HTTP 401 aborts become UNAUTHENTICATED (gRPC's HTTP-to-status mapping),
/// delays past the deadline DEADLINE_EXCEEDED, a route the fault is not on is untouched,
/// and 50 % faults hit about half the RPCs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_injection() {
    let vs = |fault: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: server, namespace: default}}\nspec:\n  hosts: [server]\n  http:\n  - match: [{{uri: {{exact: /grpc.testing.TestService/UnaryCall}}}}]\n    fault: {fault}\n    route: [{{destination: {{host: server}}}}]\n  - route: [{{destination: {{host: server}}}}]\n"
        )
    };
    let none = vs(
        "{abort: {percentage: {value: 0}, httpStatus: 401}, delay: {percentage: {value: 0}, fixedDelay: 20s}}",
    );
    let t = Interop::start(2, 0, &none, 50, BOTH).await;
    t.until("up", 50, |r| r.num_failures == 0).await;
    let sample = || t.stats(200);
    let got = t.results_during(sample()).await;
    assert!(
        got.values().all(|r| r.keys().eq([&0])),
        "0 % faults: all OK: {got:?}"
    );

    t.apply(&vs("{abort: {percentage: {value: 100}, httpStatus: 401}}"))
        .await;
    t.until("abort", 50, |r| method_peers(r, "UnaryCall").is_empty())
        .await;
    let got = t.results_during(sample()).await;
    assert_eq!(
        got["UnaryCall"].keys().collect::<Vec<_>>(),
        [&16],
        "401 → UNAUTHENTICATED: {got:?}"
    );
    assert_eq!(
        got["EmptyCall"].keys().collect::<Vec<_>>(),
        [&0],
        "the other route: {got:?}"
    );

    t.configure(BOTH, &[], 1).await;
    t.apply(&vs("{delay: {percentage: {value: 100}, fixedDelay: 20s}}"))
        .await;
    t.until("delay", 50, |r| method_peers(r, "UnaryCall").is_empty())
        .await;
    let got = t.results_during(sample()).await;
    assert_eq!(
        got["UnaryCall"].keys().collect::<Vec<_>>(),
        [&4],
        "delay past a 1 s deadline: {got:?}"
    );

    t.apply(&vs("{abort: {percentage: {value: 50}, httpStatus: 401}}"))
        .await;
    t.until("half abort", 50, |r| {
        !method_peers(r, "UnaryCall").is_empty()
    })
    .await;
    let got = t.results_during(t.stats(400)).await;
    let unary = &got["UnaryCall"];
    let aborted = f64::from(unary.get(&16).copied().unwrap_or(0));
    let total = f64::from(unary.values().sum::<i32>());
    assert!(
        (aborted / total - 0.5).abs() < 0.2,
        "about half UNAUTHENTICATED: {got:?}"
    );
    assert_eq!(t.mesh.cp.ads().nack_count(), 0);
}

/// retry: `succeed-on-retry-attempt-4,error-code-14` fails with 3 retries (UNAVAILABLE)
/// and succeeds with 4; the mesh sends `grpc-previous-rpc-attempts` on retries (gRFC A6).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry() {
    let vs = |attempts: u32| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: server, namespace: default}}\nspec:\n  hosts: [server]\n  http:\n  - retries: {{attempts: {attempts}, retryOn: unavailable}}\n    route: [{{destination: {{host: server}}}}]\n"
        )
    };
    let t = Interop::start(2, 0, &vs(3), 20, UNARY).await;
    t.until("up", 20, |r| r.num_failures == 0).await;
    t.configure(
        UNARY,
        &[(
            RpcType::UnaryCall,
            "rpc-behavior",
            "succeed-on-retry-attempt-4,error-code-14",
        )],
        0,
    )
    .await;
    t.until("3 retries are too few", 20, |r| r.num_failures == 20)
        .await;
    let got = t.results_during(t.stats(40)).await;
    assert_eq!(
        got["UnaryCall"].keys().collect::<Vec<_>>(),
        [&14],
        "{got:?}"
    );

    t.apply(&vs(4)).await;
    t.until("4 retries suffice", 20, |r| r.num_failures == 0)
        .await;
    let got = t.results_during(t.stats(40)).await;
    assert_eq!(got["UnaryCall"].keys().collect::<Vec<_>>(), [&0], "{got:?}");
}

/// timeout: a route timeout on UnaryCall ends RPCs that sleep past it with DEADLINE_EXCEEDED,
/// while EmptyCall, on a route without one, waits and succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_different_route() {
    let vs = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: server, namespace: default}\nspec:\n  hosts: [server]\n  http:\n  - match: [{uri: {exact: /grpc.testing.TestService/UnaryCall}}]\n    timeout: 1s\n    route: [{destination: {host: server}}]\n  - route: [{destination: {host: server}}]\n";
    let t = Interop::start(2, 0, vs, 20, BOTH).await;
    t.until("up", 20, |r| r.num_failures == 0).await;
    t.configure(
        BOTH,
        &[
            (RpcType::EmptyCall, "rpc-behavior", "sleep-2"),
            (RpcType::UnaryCall, "rpc-behavior", "sleep-2"),
        ],
        0,
    )
    .await;
    // Let the RPCs sent before the change finish.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let got = t.results_during(t.stats(40)).await;
    assert_eq!(got["UnaryCall"].keys().collect::<Vec<_>>(), [&4], "{got:?}");
    assert_eq!(got["EmptyCall"].keys().collect::<Vec<_>>(), [&0], "{got:?}");
}

/// circuit_breaking: with `keep-open` RPCs, in-flight RPCs (started − completed) settle at
/// the cluster's `max_requests` (http2MaxRequests), then follow a raised limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn circuit_breaking() {
    let dr = |max: u32| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: server, namespace: default}}\nspec: {{host: server, trafficPolicy: {{connectionPool: {{http: {{http2MaxRequests: {max}}}}}}}}}\n"
        )
    };
    let t = Interop::start(2, 0, &dr(50), 100, UNARY).await;
    t.until("up", 50, |r| r.num_failures == 0).await;
    t.configure(
        UNARY,
        &[(RpcType::UnaryCall, "rpc-behavior", "keep-open")],
        0,
    )
    .await;
    let in_flight = || async {
        let r = t.accumulated().await;
        let s = &r.stats_per_method["UNARY_CALL"];
        s.rpcs_started - s.result.values().sum::<i32>()
    };
    let settle = |want: i32| async move {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let n = in_flight().await;
            if n == want {
                // And it stays there while RPCs keep coming.
                tokio::time::sleep(Duration::from_millis(500)).await;
                assert_eq!(in_flight().await, want);
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "in flight {n}, want {want}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    settle(50).await;
    t.apply(&dr(80)).await;
    settle(80).await;
}

/// csds: the client's CSDS on its stats port shows the listener for the target, an EDS
/// cluster with endpoints, and every resource ACKED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csds() {
    use envoy_types::pb::envoy::admin::v3::ClientResourceStatus;
    use envoy_types::pb::envoy::service::status::v3::ClientStatusRequest;
    use envoy_types::pb::envoy::service::status::v3::client_status_discovery_service_client::ClientStatusDiscoveryServiceClient;

    let t = Interop::start(2, 0, "", 50, UNARY).await;
    let rsp = t.until("up", 50, |r| r.num_failures == 0).await;
    assert_eq!(rsp.rpcs_by_peer.values().sum::<i32>(), 50);
    let mut csds = ClientStatusDiscoveryServiceClient::new(t.stats.clone());
    let dump = csds
        .fetch_client_status(ClientStatusRequest::default())
        .await
        .expect("CSDS")
        .into_inner();
    let config = &dump.config[0];
    let mut types: HashMap<&str, Vec<&str>> = HashMap::new();
    for c in &config.generic_xds_configs {
        assert_eq!(
            c.client_status,
            ClientResourceStatus::Acked as i32,
            "{} {} is not ACKED",
            c.type_url,
            c.name
        );
        types
            .entry(c.type_url.rsplit('.').next().unwrap())
            .or_default()
            .push(&c.name);
    }
    assert!(
        types["Listener"].iter().any(|l| l.contains("server")),
        "{types:?}"
    );
    assert!(
        types["Cluster"].iter().any(|c| c.contains("server")),
        "{types:?}"
    );
    assert!(!types["ClusterLoadAssignment"].is_empty(), "{types:?}");
}
