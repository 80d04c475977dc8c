//! gRPC's xDS interop scenarios (grpc `doc/xds-test-descriptions.md`, psm-interop's URL-map
//! tests), reproduced on loopback with mesh-control as the control plane. The interop
//! servers from `mesh-grpc-interop` run in-process; the client under test is ours (in-process)
//! or grpcio's xDS client (`tests/python/xds_interop_client.py`), and the driver talks to it
//! only through its stats port (`LoadBalancerStatsService`, `XdsUpdateClientConfigureService`,
//! CSDS), as the real driver does. Each scenario runs for both clients (modules `mesh` and
//! `grpcio` at the end); where they differ, the scenario says which behaviour is right.
//!
//! Traffic Director's concepts map onto Istio's: a "backend service" is a Service (a CDS
//! cluster), an instance group is a set of WorkloadEntries, a URL map is a VirtualService.
//! Each server's host name is its WorkloadEntry's name.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
// A test harness, not the data path: a lock hands each reserved socket to one server.
#[allow(clippy::disallowed_types)]
use std::sync::{Arc, Mutex};
use std::time::Duration;

use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::service::status::v3::ClientStatusRequest;
use envoy_types::pb::envoy::service::status::v3::client_config::GenericXdsConfig;
use envoy_types::pb::envoy::service::status::v3::client_status_discovery_service_client::ClientStatusDiscoveryServiceClient;
use mesh_grpc_interop::proto::{
    ClientConfigureRequest, ClientConfigureResponse, ConfigureMetadata, Empty,
    LoadBalancerAccumulatedStatsRequest, LoadBalancerAccumulatedStatsResponse,
    LoadBalancerStatsRequest, LoadBalancerStatsResponse, RpcType, path,
};
use mesh_grpc_interop::{client, server};

use mesh_test_support::python::xds_interop_client;

use super::meshed::{TestMesh, Workload};

const CLIENT: Workload<'static> = Workload::new("client", "default", "client");
const SERVER: Workload<'static> = Workload::new("server", "default", "server");
const ALT: Workload<'static> = Workload::new("alt", "default", "alt");

/// One backend: a WorkloadEntry of a Service, in a group (a label subsets select on) and a
/// locality (`region/zone`, or empty).
#[derive(Clone, Debug)]
struct Backend {
    name: String,
    app: Workload<'static>,
    group: &'static str,
    locality: &'static str,
    addr: SocketAddr,
    /// The plaintext maintenance port (`XdsUpdateHealthService`).
    maintenance: SocketAddr,
    /// Both ports, bound from the start so that no parallel test takes them; the first
    /// server takes them, a restarted one binds the addresses again.
    #[allow(clippy::disallowed_types)]
    reserved: Arc<Mutex<Option<(std::net::TcpListener, std::net::TcpListener)>>>,
}

impl Backend {
    fn new(name: String, app: Workload<'static>, group: &'static str) -> Self {
        let bind = || std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let (port, maintenance) = (bind(), bind());
        Self {
            name,
            app,
            group,
            locality: "",
            addr: port.local_addr().unwrap(),
            maintenance: maintenance.local_addr().unwrap(),
            #[allow(clippy::disallowed_types)]
            reserved: Arc::new(Mutex::new(Some((port, maintenance)))),
        }
    }
}

/// `n` backends of `server`, the first half in group `a` and the rest in `b`, and `alt_n`
/// of `alt`.
fn backends(n: usize, alt_n: usize) -> Vec<Backend> {
    let server = (0..n).map(|i| {
        let group = if i < n.div_ceil(2) { "a" } else { "b" };
        Backend::new(format!("server-{i}"), SERVER, group)
    });
    let alt = (0..alt_n).map(|i| Backend::new(format!("alt-{i}"), ALT, "a"));
    server.chain(alt).collect()
}

/// The Services `server` and `alt` (port 8080) and their WorkloadEntries.
fn registry(backends: &[Backend]) -> String {
    registry_with_health(backends, &[])
}

/// [`registry`], with the `Healthy` condition of the `unhealthy` backends' WorkloadEntries
/// false (what Istio's health checking writes).
fn registry_with_health(backends: &[Backend], unhealthy: &[&str]) -> String {
    let mut y = String::new();
    for svc in ["server", "alt"] {
        y += &format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {svc}, namespace: default}}\nspec:\n  ports: [{{port: 8080, name: grpc}}]\n  selector: {{app: {svc}}}\n---\n"
        );
    }
    for b in backends {
        y += &format!(
            "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: {}, namespace: default}}\nspec: {{address: 127.0.0.1, ports: {{grpc: {}}}, labels: {{app: {}, group: {}}}, serviceAccount: {}, locality: '{}'}}\n---\n",
            b.name,
            b.addr.port(),
            b.app.app,
            b.group,
            b.app.service_account,
            b.locality,
        );
        if unhealthy.contains(&b.name.as_str()) {
            y.insert_str(
                y.len() - "---\n".len(),
                "status: {conditions: [{type: Healthy, status: 'False'}]}\n",
            );
        }
    }
    y
}

/// A running scenario: control plane, servers, and the client under test.
struct Interop {
    mesh: TestMesh,
    backends: Vec<Backend>,
    /// By backend, `None` while stopped.
    servers: Vec<Option<server::Running>>,
    meshes: Vec<mesh_core::Mesh>,
    _client: Client,
    stats: tonic::transport::Channel,
}

/// Which interop client a scenario runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Ours, on `mesh_grpc::channel`, in-process.
    Mesh,
    /// grpcio's xDS client (`tests/python/xds_interop_client.py`).
    Grpcio,
}

/// A running client of either kind (kept for its lifetime).
enum Client {
    Mesh(#[allow(dead_code)] client::Running),
    Grpcio(#[allow(dead_code)] mesh_test_support::python::InteropClient),
}

/// The client's target.
const TARGET: &str = "xds:///server:8080";

impl Interop {
    /// `n` backends of `server` (groups `a` and `b`) and `alt_n` of `alt`, with `policy`
    /// (more YAML) applied before the client starts; the client sends `rpcs` at `qps`.
    async fn start(
        kind: Kind,
        n: usize,
        alt_n: usize,
        policy: &str,
        qps: u32,
        rpcs: &[RpcType],
    ) -> Self {
        Self::start_with(kind, backends(n, alt_n), "", policy, qps, rpcs).await
    }

    /// [`Interop::start`] with these backends, and the client in `locality`.
    async fn start_with(
        kind: Kind,
        backends: Vec<Backend>,
        locality: &str,
        policy: &str,
        qps: u32,
        rpcs: &[RpcType],
    ) -> Self {
        let mesh = TestMesh::start(&registry(&backends)).await;
        mesh.apply("policy.yaml", policy);
        let mut servers = Vec::new();
        let mut meshes = Vec::new();
        for b in &backends {
            let m = mesh.mesh(b.app).await;
            servers.push(Some(serve(&m, b).await));
            meshes.push(m);
        }
        let (client, stats) = match kind {
            Kind::Mesh => {
                let client_mesh = if locality.is_empty() {
                    mesh.mesh(CLIENT).await
                } else {
                    mesh.mesh_in(CLIENT, locality).await
                };
                let options = client::Options {
                    server: TARGET.into(),
                    qps,
                    workload: client::Workload {
                        rpcs: rpcs.to_vec(),
                        metadata: Vec::new(),
                        timeout: Duration::from_secs(20),
                    },
                    stats: "127.0.0.1:0".parse().unwrap(),
                };
                let running = client::start(&client_mesh, options)
                    .await
                    .expect("the interop client");
                let stats = running.stats;
                (Client::Mesh(running), stats)
            }
            Kind::Grpcio => {
                let rpcs: Vec<&str> = rpcs.iter().map(|r| r.method()).collect();
                let args = [
                    format!("--server={TARGET}"),
                    format!("--qps={qps}"),
                    format!("--rpc={}", rpcs.join(",")),
                    "--rpc_timeout_sec=20".into(),
                    "--secure_mode".into(),
                ];
                let bootstrap = mesh.bootstrap(CLIENT, locality).to_string();
                let running = xds_interop_client(&bootstrap, &args);
                let stats = SocketAddr::from(([127, 0, 0, 1], running.stats_port));
                (Client::Grpcio(running), stats)
            }
        };
        let stats = tonic::transport::Endpoint::from_shared(format!("http://{stats}"))
            .unwrap()
            .connect_lazy();
        Self {
            mesh,
            backends,
            servers,
            meshes,
            _client: client,
            stats,
        }
    }

    fn index(&self, host: &str) -> usize {
        self.backends
            .iter()
            .position(|b| b.name == host)
            .unwrap_or_else(|| panic!("no backend {host}"))
    }

    /// Stops these backends gracefully (their ports close; open connections drain).
    async fn stop(&mut self, hosts: &[String]) {
        for h in hosts {
            let i = self.index(h);
            let running = self.servers[i].take().expect("running");
            tokio::time::timeout(Duration::from_secs(5), running.stop())
                .await
                .expect("drained");
        }
    }

    /// Starts these backends again, on their old ports.
    async fn restart(&mut self, hosts: &[String]) {
        for h in hosts {
            let i = self.index(h);
            assert!(self.servers[i].is_none(), "{h} is running");
            self.servers[i] = Some(serve(&self.meshes[i], &self.backends[i]).await);
        }
    }

    /// Calls `SetNotServing` on a backend's maintenance port, then plays Istio's health
    /// checker: every WorkloadEntry's `Healthy` condition follows its server's health
    /// service.
    async fn set_not_serving(&self, host: &str) {
        let b = &self.backends[self.index(host)];
        let maintenance =
            tonic::transport::Endpoint::from_shared(format!("http://{}", b.maintenance))
                .unwrap()
                .connect_lazy();
        let _: tonic::Response<Empty> = mesh_grpc_interop::call(
            maintenance,
            path::SET_NOT_SERVING,
            tonic::Request::new(Empty {}),
        )
        .await
        .expect("SetNotServing");
        let unhealthy: Vec<&str> = self
            .backends
            .iter()
            .zip(&self.servers)
            .filter(|(_, s)| s.as_ref().is_some_and(|s| !*s.health.subscribe().borrow()))
            .map(|(b, _)| b.name.as_str())
            .collect();
        self.apply_file(
            "mesh.yaml",
            &registry_with_health(&self.backends, &unhealthy),
        )
        .await;
    }

    /// Replaces the registry's WorkloadEntries with `backends` (servers keep running).
    async fn set_registry(&self, backends: &[Backend]) {
        self.apply_file("mesh.yaml", &registry(backends)).await;
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

    /// The client's CSDS dump: one entry per resource.
    async fn csds(&self) -> Vec<GenericXdsConfig> {
        let mut csds = ClientStatusDiscoveryServiceClient::new(self.stats.clone());
        let mut dump = csds
            .fetch_client_status(ClientStatusRequest::default())
            .await
            .expect("CSDS")
            .into_inner();
        assert_eq!(dump.config.len(), 1, "one client");
        dump.config.remove(0).generic_xds_configs
    }

    /// The route configurations in the CSDS dump.
    async fn csds_routes(&self) -> Vec<RouteConfiguration> {
        self.csds()
            .await
            .into_iter()
            .filter_map(|c| c.xds_config)
            .filter(|a| a.type_url.ends_with(".RouteConfiguration"))
            .map(|a| prost::Message::decode(&a.value[..]).expect("a RouteConfiguration"))
            .collect()
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
        self.apply_file("policy.yaml", yaml).await;
    }

    /// Writes `file` and waits until every node has the new configuration.
    async fn apply_file(&self, file: &str, yaml: &str) {
        let version = self.mesh.apply(file, yaml);
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

/// An interop server for `b`, through `mesh`.
async fn serve(mesh: &mesh_core::Mesh, b: &Backend) -> server::Running {
    let me = server::Identity {
        hostname: b.name.clone(),
        server_id: b.name.clone(),
    };
    let reserved = b.reserved.lock().unwrap().take();
    match reserved {
        Some((port, maintenance)) => {
            let tokio = |l: std::net::TcpListener| {
                l.set_nonblocking(true).expect("nonblocking");
                tokio::net::TcpListener::from_std(l).expect("a tokio listener")
            };
            server::serve_on(mesh, me, tokio(port), tokio(maintenance))
        }
        None => server::serve(mesh, me, b.addr, b.maintenance)
            .await
            .expect("an interop server"),
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

/// Round robin over Istio mutual TLS (Istio's default balancer is least request; Traffic
/// Director's, which the scenarios assume, round robin).
const ROUND_ROBIN: &str = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: server, namespace: default}\nspec: {host: server, trafficPolicy: {tls: {mode: ISTIO_MUTUAL}, loadBalancer: {simple: ROUND_ROBIN}}}\n";

/// ping_pong and round_robin: every backend gets RPCs, then 100 RPCs split evenly (each
/// backend within ±1 of 100/N), with no failures, over Istio mutual TLS.
async fn ping_pong_and_round_robin(kind: Kind) {
    let t = Interop::start(kind, 4, 0, ROUND_ROBIN, 100, UNARY).await;
    let all = t.hosts(SERVER, None);
    t.until("every backend gets RPCs", 100, |r| peers(r) == all)
        .await;
    assert_even(&t.stats(100).await, &all);
    assert_eq!(t.mesh.cp.ads().nack_count(), 0);
}

/// traffic_splitting: all RPCs to group a, then a 20/80 split between the groups.
async fn traffic_splitting(kind: Kind) {
    let subsets = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: server, namespace: default}\nspec: {host: server, subsets: [{name: a, labels: {group: a}}, {name: b, labels: {group: b}}]}\n---\n";
    let vs = |wa: u32, wb: u32| {
        format!(
            "{subsets}apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: server, namespace: default}}\nspec:\n  hosts: [server]\n  http:\n  - route:\n    - {{destination: {{host: server, subset: a}}, weight: {wa}}}\n    - {{destination: {{host: server, subset: b}}, weight: {wb}}}\n"
        )
    };
    let t = Interop::start(kind, 4, 0, &vs(100, 0), 200, UNARY).await;
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
async fn path_and_header_matching(kind: Kind) {
    let vs = |m: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: server, namespace: default}}\nspec:\n  hosts: [server]\n  http:\n  - match: [{m}]\n    route: [{{destination: {{host: alt}}}}]\n  - route: [{{destination: {{host: server}}}}]\n"
        )
    };
    let t = Interop::start(kind, 2, 2, &vs("{uri: {exact: /none}}"), 50, BOTH).await;
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
async fn fault_injection(kind: Kind) {
    let vs = |fault: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: server, namespace: default}}\nspec:\n  hosts: [server]\n  http:\n  - match: [{{uri: {{exact: /grpc.testing.TestService/UnaryCall}}}}]\n    fault: {fault}\n    route: [{{destination: {{host: server}}}}]\n  - route: [{{destination: {{host: server}}}}]\n"
        )
    };
    let none = vs(
        "{abort: {percentage: {value: 0}, httpStatus: 401}, delay: {percentage: {value: 0}, fixedDelay: 20s}}",
    );
    let t = Interop::start(kind, 2, 0, &none, 50, BOTH).await;
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
async fn retry(kind: Kind) {
    let vs = |attempts: u32| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: server, namespace: default}}\nspec:\n  hosts: [server]\n  http:\n  - retries: {{attempts: {attempts}, retryOn: unavailable}}\n    route: [{{destination: {{host: server}}}}]\n"
        )
    };
    let t = Interop::start(kind, 2, 0, &vs(3), 20, UNARY).await;
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

/// timeout: UnaryCall's route has a 3 s timeout (`max_stream_duration` for gRPC, gRFC A31),
/// EmptyCall's none. timeout_different_route: both sleep 4 s, so UnaryCall ends with
/// DEADLINE_EXCEEDED and EmptyCall succeeds; app_timeout_exceeded: a 1 s deadline ends a
/// 2 s sleep first; timeout_not_exceeded: a 1 s sleep fits.
async fn timeout(kind: Kind) {
    let vs = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: server, namespace: default}\nspec:\n  hosts: [server]\n  http:\n  - match: [{uri: {exact: /grpc.testing.TestService/UnaryCall}}]\n    timeout: 3s\n    route: [{destination: {host: server}}]\n  - route: [{destination: {host: server}}]\n";
    let t = Interop::start(kind, 2, 0, vs, 20, BOTH).await;
    t.until("up", 20, |r| r.num_failures == 0).await;
    let sleep = |s: &'static str| {
        [
            (RpcType::EmptyCall, "rpc-behavior", s),
            (RpcType::UnaryCall, "rpc-behavior", s),
        ]
    };
    // Results are counted as RPCs finish: let those sent before each change finish first.
    let settle = || tokio::time::sleep(Duration::from_millis(4500));

    t.configure(BOTH, &sleep("sleep-4"), 0).await;
    settle().await;
    let got = t.results_during(t.stats(40)).await;
    assert_eq!(got["UnaryCall"].keys().collect::<Vec<_>>(), [&4], "{got:?}");
    assert_eq!(got["EmptyCall"].keys().collect::<Vec<_>>(), [&0], "{got:?}");

    t.configure(UNARY, &sleep("sleep-2"), 1).await;
    settle().await;
    let got = t.results_during(t.stats(20)).await;
    assert_eq!(got.keys().collect::<Vec<_>>(), [&"UnaryCall"], "{got:?}");
    assert_eq!(got["UnaryCall"].keys().collect::<Vec<_>>(), [&4], "{got:?}");

    t.configure(UNARY, &sleep("sleep-1"), 20).await;
    settle().await;
    let got = t.results_during(t.stats(20)).await;
    assert_eq!(got["UnaryCall"].keys().collect::<Vec<_>>(), [&0], "{got:?}");
}

/// circuit_breaking: with `keep-open` RPCs, in-flight RPCs (started − completed) settle at
/// the cluster's `max_requests` (http2MaxRequests), then follow a raised limit.
async fn circuit_breaking(kind: Kind) {
    let dr = |max: u32| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: server, namespace: default}}\nspec: {{host: server, trafficPolicy: {{connectionPool: {{http: {{http2MaxRequests: {max}}}}}}}}}\n"
        )
    };
    let t = Interop::start(kind, 2, 0, &dr(50), 100, UNARY).await;
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
                // And it stays there while RPCs keep coming. A sample can also count an RPC
                // that has started and is being refused (grpcio records the refusal on
                // another thread), so it may read one or two over, never under.
                let mut seen = Vec::new();
                for _ in 0..5 {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    seen.push(in_flight().await);
                }
                assert!(
                    seen.iter().all(|n| (want..=want + 2).contains(n)) && seen.contains(&want),
                    "in flight over 500 ms: {seen:?}, want {want}"
                );
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
async fn csds(kind: Kind) {
    use envoy_types::pb::envoy::admin::v3::ClientResourceStatus;

    let t = Interop::start(kind, 2, 0, "", 50, UNARY).await;
    let rsp = t.until("up", 50, |r| r.num_failures == 0).await;
    assert_eq!(rsp.rpcs_by_peer.values().sum::<i32>(), 50);
    let configs = t.csds().await;
    let mut types: HashMap<&str, Vec<&str>> = HashMap::new();
    for c in &configs {
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

/// Each backend within ±1 of an even share of 100 RPCs, none failed.
fn assert_even(rsp: &LoadBalancerStatsResponse, hosts: &[String]) {
    assert_eq!(rsp.num_failures, 0, "{rsp:?}");
    assert_eq!(peers(rsp), hosts, "{rsp:?}");
    let share = 100 / hosts.len() as i32;
    for (peer, n) in &rsp.rpcs_by_peer {
        assert!(
            (share - 1..=share + 1).contains(n),
            "{peer} got {n} of 100: {rsp:?}"
        );
    }
}

/// backends_restart: every backend gets RPCs; while all are stopped none succeeds; after a
/// restart on the same ports the split is even again.
async fn backends_restart(kind: Kind) {
    let mut t = Interop::start(kind, 4, 0, ROUND_ROBIN, 100, UNARY).await;
    let all = t.hosts(SERVER, None);
    t.until("every backend gets RPCs", 100, |r| peers(r) == all)
        .await;
    assert_even(&t.stats(100).await, &all);

    t.stop(&all).await;
    t.until("nothing succeeds", 50, |r| r.num_failures == 50)
        .await;
    let rsp = t.stats(100).await;
    assert_eq!(rsp.num_failures, 100, "while stopped: {rsp:?}");

    t.restart(&all).await;
    t.until("every backend again", 100, |r| {
        peers(r) == all && r.num_failures == 0
    })
    .await;
    assert_even(&t.stats(100).await, &all);
}

/// remove_instance_group and new_instance_group_receives_traffic: WorkloadEntries leave
/// and join the Service while their servers keep running; traffic follows, and nothing
/// fails on the way.
async fn instance_groups_removed_and_added(kind: Kind) {
    let t = Interop::start(kind, 4, 0, "", 100, UNARY).await;
    let (all, a) = (t.hosts(SERVER, None), t.hosts(SERVER, Some("a")));
    t.until("every backend gets RPCs", 100, |r| peers(r) == all)
        .await;

    let only_a: Vec<Backend> = t
        .backends
        .iter()
        .filter(|b| b.group == "a")
        .cloned()
        .collect();
    let got = t
        .results_during(async {
            t.set_registry(&only_a).await;
            t.until("group b removed", 100, |r| peers(r) == a).await;
        })
        .await;
    assert_eq!(got["UnaryCall"].keys().collect::<Vec<_>>(), [&0], "{got:?}");
    let rsp = t.stats(100).await;
    assert_eq!((peers(&rsp), rsp.num_failures), (a.clone(), 0), "{rsp:?}");

    t.set_registry(&t.backends).await;
    t.until("group b receives traffic again", 100, |r| peers(r) == all)
        .await;
}

/// change_backend_service: the URL map's default service changes to another cluster; every
/// RPC goes to the new one, none fails across the switch, and CSDS shows the new route.
async fn change_backend_service(kind: Kind) {
    let vs = |to: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: server, namespace: default}}\nspec:\n  hosts: [server]\n  http:\n  - route: [{{destination: {{host: {to}}}}}]\n"
        )
    };
    let t = Interop::start(kind, 2, 2, &vs("server"), 100, UNARY).await;
    let (server, alt) = (t.hosts(SERVER, None), t.hosts(ALT, None));
    t.until("default service", 100, |r| peers(r) == server)
        .await;
    let got = t
        .results_during(async {
            t.apply(&vs("alt")).await;
            t.until("new service", 100, |r| peers(r) == alt).await;
        })
        .await;
    assert_eq!(got["UnaryCall"].keys().collect::<Vec<_>>(), [&0], "{got:?}");
    let rsp = t.stats(200).await;
    assert_eq!((peers(&rsp), rsp.num_failures), (alt, 0), "{rsp:?}");
    let routes = format!("{:?}", t.csds_routes().await);
    assert!(
        routes.contains(r#"Cluster("outbound|8080||alt.default"#)
            && !routes.contains(r#"Cluster("outbound|8080||server.default"#),
        "CSDS routes: {routes}"
    );
}

/// api_listener: the VirtualService behind the client's listener is deleted and another,
/// under another name, takes its place (Traffic Director's second URL map and forwarding
/// rule for the same host); RPCs keep succeeding through the LDS/RDS change.
async fn api_listener(kind: Kind) {
    let vs = |name: &str, to: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  hosts: [server]\n  http:\n  - route: [{{destination: {{host: {to}}}}}]\n"
        )
    };
    let t = Interop::start(kind, 2, 2, &vs("first", "server"), 100, UNARY).await;
    let (server, alt) = (t.hosts(SERVER, None), t.hosts(ALT, None));
    t.until("the first route", 100, |r| peers(r) == server)
        .await;
    let got = t
        .results_during(async {
            // Both for a moment (mesh-control merges them, the first one's route winning),
            // then only the second.
            t.apply(&format!(
                "{}---\n{}",
                vs("first", "server"),
                vs("second", "alt")
            ))
            .await;
            t.stats(50).await;
            t.apply(&vs("second", "alt")).await;
            t.until("the second route", 100, |r| peers(r) == alt).await;
        })
        .await;
    assert_eq!(got["UnaryCall"].keys().collect::<Vec<_>>(), [&0], "{got:?}");
    assert_eq!(t.stats(100).await.num_failures, 0);
}

/// The DestinationRule that turns on Istio's locality failover: outlier detection ejects a
/// backend on its first failure (a refused connection counts, as in Envoy), for a second.
const FAILOVER_DR: &str = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: server, namespace: default}\nspec: {host: server, trafficPolicy: {outlierDetection: {consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 1s, maxEjectionPercent: 100}}}\n";

/// Group a in the client's zone, group b in another zone of its region.
fn two_localities() -> Vec<Backend> {
    let mut bs = backends(4, 0);
    for b in &mut bs {
        b.locality = if b.group == "a" { "r1/z1" } else { "r1/z2" };
    }
    bs
}

/// secondary_locality_gets_requests_on_primary_failure: the client's own zone only; when
/// every backend there is down, the other zone (priority 1) only; then back.
async fn locality_failover_on_primary_failure(kind: Kind) {
    let mut t = Interop::start_with(kind, two_localities(), "r1/z1", FAILOVER_DR, 100, UNARY).await;
    let (primary, secondary) = (t.hosts(SERVER, Some("a")), t.hosts(SERVER, Some("b")));
    t.until("primary locality only", 100, |r| peers(r) == primary)
        .await;
    let rsp = t.stats(200).await;
    assert_eq!(
        (peers(&rsp), rsp.num_failures),
        (primary.clone(), 0),
        "{rsp:?}"
    );

    t.stop(&primary).await;
    t.until("secondary locality only", 100, |r| {
        peers(r) == secondary && r.num_failures == 0
    })
    .await;

    t.restart(&primary).await;
    t.until("primary locality again", 100, |r| {
        peers(r) == primary && r.num_failures == 0
    })
    .await;
    assert_eq!(t.mesh.cp.ads().nack_count(), 0);
}

/// secondary_locality_gets_no_requests_on_partial_primary_failure, where mesh and gRPC
/// differ, and both are right by their own specification. With one of two primary backends down, gRPC sends everything to the survivor:
/// its priority policy (gRFC A27, "priority" LB) leaves a priority only when the whole
/// priority is unreachable. Envoy, and so mesh, weighs a priority by its healthy share
/// times the EDS `overprovisioning_factor` (default 140, the field's documented meaning):
/// 50 % healthy is 70 % of the load, and 30 % goes to the next priority, before the
/// survivor is overloaded. mesh keeps Envoy's behaviour: the xDS resource asks for it (the
/// field's default applies when it is unset), and it is what Istio users' sidecars do
/// today. grpcio gets the scenario's own assertion, mesh the 70/30 split.
async fn locality_partial_primary_failure(kind: Kind) {
    let mut t = Interop::start_with(kind, two_localities(), "r1/z1", FAILOVER_DR, 100, UNARY).await;
    let (primary, secondary) = (t.hosts(SERVER, Some("a")), t.hosts(SERVER, Some("b")));
    t.until("primary locality only", 100, |r| peers(r) == primary)
        .await;
    t.stop(&primary[..1]).await;
    let survivor = &primary[1];
    t.until("the stopped backend is ejected", 100, |r| {
        r.num_failures == 0 && !r.rpcs_by_peer.contains_key(&primary[0])
    })
    .await;
    let rsp = t.stats(1000).await;
    assert_eq!(rsp.num_failures, 0, "{rsp:?}");
    let to_survivor = rsp.rpcs_by_peer.get(survivor).copied().unwrap_or(0);
    let to_secondary: i32 = secondary
        .iter()
        .filter_map(|h| rsp.rpcs_by_peer.get(h))
        .sum();
    match kind {
        // 70 % / 30 %: σ ≈ 14.5 over 1000, so ±70 is nearly 5σ.
        Kind::Mesh => assert!(
            (630..=770).contains(&to_survivor) && to_survivor + to_secondary == 1000,
            "survivor {to_survivor}, secondary {to_secondary}: {rsp:?}"
        ),
        Kind::Grpcio => assert_eq!(
            (to_survivor, to_secondary),
            (1000, 0),
            "gRPC keeps a priority while any of it is up: {rsp:?}"
        ),
    }
}

/// outlier_detection: one of five backends answers UnaryCall with UNKNOWN; it is ejected
/// (gRPC errors count as their HTTP equivalent, 500, as in Envoy) and RPCs go only to the
/// other four; once it behaves, it gets RPCs again.
async fn outlier_detection(kind: Kind) {
    let dr = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: server, namespace: default}\nspec: {host: server, trafficPolicy: {outlierDetection: {consecutive5xxErrors: 5, interval: 1s, baseEjectionTime: 10s, maxEjectionPercent: 50}}}\n";
    let t = Interop::start(kind, 5, 0, dr, 100, UNARY).await;
    let all = t.hosts(SERVER, None);
    t.until("every backend gets RPCs", 100, |r| peers(r) == all)
        .await;
    t.configure(
        UNARY,
        &[(
            RpcType::UnaryCall,
            "rpc-behavior",
            "hostname=server-0 error-code-2",
        )],
        0,
    )
    .await;
    let others: Vec<String> = all[1..].to_vec();
    t.until("server-0 ejected", 100, |r| {
        peers(r) == others && r.num_failures == 0
    })
    .await;
    let rsp = t.stats(200).await;
    assert_eq!((peers(&rsp), rsp.num_failures), (others, 0), "{rsp:?}");

    t.configure(UNARY, &[], 0).await;
    t.until("server-0 back", 100, |r| {
        peers(r) == all && r.num_failures == 0
    })
    .await;
}

/// affinity (ring hash): RPCs carrying the hash header all go to one backend; RPCs without
/// it spread over all three; when the chosen backend reports NOT_SERVING (and so leaves
/// EDS), the same header sticks to one other backend. CSDS shows the ring hash cluster.
async fn affinity(kind: Kind) {
    use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster::LbPolicy};

    let dr = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: server, namespace: default}\nspec: {host: server, trafficPolicy: {loadBalancer: {consistentHash: {httpHeaderName: affinity-key}}}}\n";
    let t = Interop::start(kind, 3, 0, dr, 100, BOTH).await;
    let all = t.hosts(SERVER, None);
    t.until("RPCs without the header reach every backend", 150, |r| {
        peers(r) == all
    })
    .await;
    // After RPCs have flowed: grpcio creates its xDS client (what CSDS reports) lazily.
    let clusters: Vec<Cluster> = t
        .csds()
        .await
        .into_iter()
        .filter_map(|c| c.xds_config)
        .filter(|a| a.type_url.ends_with(".Cluster"))
        .map(|a| prost::Message::decode(&a.value[..]).expect("a Cluster"))
        .collect();
    assert!(
        !clusters.is_empty()
            && clusters
                .iter()
                .all(|c| c.lb_policy == LbPolicy::RingHash as i32),
        "{clusters:?}"
    );

    let sticky = [(RpcType::EmptyCall, "affinity-key", "123")];
    t.configure(&[RpcType::EmptyCall], &sticky, 0).await;
    let rsp = t
        .until("one backend for the header", 100, |r| peers(r).len() == 1)
        .await;
    let chosen = peers(&rsp).remove(0);
    let rsp = t.stats(100).await;
    assert_eq!(
        (peers(&rsp), rsp.num_failures),
        (vec![chosen.clone()], 0),
        "{rsp:?}"
    );

    t.set_not_serving(&chosen).await;
    let rsp = t
        .until("one other backend", 100, |r| {
            peers(r).len() == 1 && peers(r)[0] != chosen
        })
        .await;
    let next = peers(&rsp);
    let rsp = t.stats(100).await;
    assert_eq!((peers(&rsp), rsp.num_failures), (next, 0), "{rsp:?}");
}

/// Each scenario as a test for every client kind listed.
macro_rules! scenarios {
    ($kind:ident: $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                super::$name(super::Kind::$kind).await
            }
        )*
    };
}

/// Every scenario for our client.
mod mesh {
    scenarios!(Mesh:
        ping_pong_and_round_robin, backends_restart, locality_failover_on_primary_failure,
        locality_partial_primary_failure, instance_groups_removed_and_added,
        change_backend_service, traffic_splitting, path_and_header_matching, api_listener,
        circuit_breaking, timeout, fault_injection, retry, csds, affinity, outlier_detection,
    );
}

/// The same scenarios for grpcio's xDS client. Not outlier_detection: Istio's API has only
/// consecutive-error ejection (`consecutive5xxErrors`, `consecutiveGatewayErrors`), and gRPC
/// implements only success-rate and failure-percentage ejection (gRFC A50), so through Istio
/// a gRPC client has no outlier detection at all.
mod grpcio {
    scenarios!(Grpcio:
        ping_pong_and_round_robin, backends_restart, locality_failover_on_primary_failure,
        locality_partial_primary_failure, instance_groups_removed_and_added,
        change_backend_service, traffic_splitting, path_and_header_matching, api_listener,
        circuit_breaking, timeout, fault_injection, retry, csds, affinity,
    );
}
