//! The tasks played on httpbin (C1 circuit breaking, M1 mirroring, P1-P3 mutual TLS
//! migration) with Bookinfo's httpbin and fortio, meshed like every other service. Their YAML
//! is inline in Istio's task pages, so it is inline here too.

use std::net::SocketAddr;

use mesh_bookinfo::httpbin::Httpbin;
use mesh_tower::MeshClient;

use crate::meshed::{TestMesh, Workload, eventually, free_port, service};

const HTTPBIN: Workload<'static> = Workload::new("httpbin", "default", "httpbin");
const FORTIO: Workload<'static> = Workload::new("fortio", "default", "fortio");

const CIRCUIT_BREAKER: &str = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: httpbin}\nspec:\n  host: httpbin\n  trafficPolicy:\n    connectionPool:\n      tcp: {maxConnections: 1}\n      http: {http1MaxPendingRequests: 1, maxRequestsPerConnection: 1}\n    outlierDetection: {consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 3m, maxEjectionPercent: 100}\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c1_the_circuit_breaker_trips_past_one_connection_and_one_pending_request() {
    let addr = free_port();
    let mesh = TestMesh::start(&format!(
        "{}{CIRCUIT_BREAKER}",
        service(HTTPBIN, 8000, addr)
    ))
    .await;
    let httpbin = Httpbin::default();
    mesh.serve(HTTPBIN, addr, httpbin.clone().service()).await;
    let fortio_mesh = mesh.mesh(FORTIO).await;
    let fortio = MeshClient::new(&fortio_mesh);
    let url = "http://httpbin:8000/get";
    // `fortio load -curl`: one request, 200.
    eventually(
        "httpbin up",
        || mesh_bookinfo::fortio::load(&fortio, url, 1, 1),
        |c| c.count(200) == 1,
    )
    .await;

    // Two at a time: one active and one pending fit, but while the pending one waits for
    // the connection to be closed and made anew (one request per connection), the other
    // caller's next request finds the pending slot taken and is refused at once. Istio's
    // task sees 17 of 20 pass through a sidecar; here the refusal costs no network hop, so
    // the refused caller comes back sooner and more of its requests are refused.
    // Whether two callers collide is a race (in Envoy too): a machine busy with other work
    // can serialize a round of 20, so up to five rounds are run until one shows both.
    let mut rounds = Vec::new();
    for _ in 0..5 {
        let c2 = mesh_bookinfo::fortio::load(&fortio, url, 2, 20).await;
        assert_eq!(c2.total(), 20);
        assert_eq!(c2.count(200) + c2.count(503), 20, "{c2:?}");
        let tripped = c2.count(200) > 0 && c2.count(503) > 0;
        rounds.push(c2);
        if tripped {
            break;
        }
    }
    assert!(
        rounds
            .last()
            .is_some_and(|c| c.count(200) > 0 && c.count(503) > 0),
        "c=2: some 200, some 503 in a round: {rounds:?}"
    );
    // Three: the third concurrent request finds no room and is refused at once.
    let c3 = mesh_bookinfo::fortio::load(&fortio, url, 3, 30).await;
    assert_eq!(c3.total(), 30);
    assert!(c3.count(503) > 0, "c=3: some 503: {c3:?}");
    assert_eq!(c3.count(200) + c3.count(503), 30, "{c3:?}");

    // The client's overflow counter counts exactly the refusals.
    let clusters = mesh_tower::client::clusters(&fortio_mesh);
    let cluster = clusters["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "outbound|8000||httpbin.default.svc.cluster.local")
        .unwrap_or_else(|| panic!("{clusters}"));
    let overflow = cluster["upstream_rq_pending_overflow"].as_u64().unwrap()
        + cluster["upstream_rq_overflow"].as_u64().unwrap();
    assert_eq!(
        overflow as usize,
        rounds.iter().map(|c| c.count(503)).sum::<usize>() + c3.count(503),
        "{cluster}"
    );
}

fn versioned(name: &str, version: &str, addr: SocketAddr) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: {name}}}\n\
         spec: {{address: 127.0.0.1, ports: {{http: {}}}, labels: {{app: httpbin, version: {version}}}, serviceAccount: httpbin}}\n---\n",
        addr.port()
    )
}

const ROUTE_V1: &str = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: httpbin}\nspec:\n  hosts: [httpbin]\n  http:\n  - route: [{destination: {host: httpbin, subset: v1}, weight: 100}]\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn m1_mirrored_requests_reach_v2_as_the_shadow_host() {
    let (v1_addr, v2_addr) = (free_port(), free_port());
    let mesh = TestMesh::start(&format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: httpbin}}\nspec:\n  ports: [{{port: 8000, name: http}}]\n  selector: {{app: httpbin}}\n---\n{}{}\
         apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: httpbin}}\nspec:\n  host: httpbin\n  subsets: [{{name: v1, labels: {{version: v1}}}}, {{name: v2, labels: {{version: v2}}}}]\n---\n{ROUTE_V1}",
        versioned("httpbin-v1", "v1", v1_addr),
        versioned("httpbin-v2", "v2", v2_addr),
    ))
    .await;
    let (v1, v2) = (Httpbin::default(), Httpbin::default());
    mesh.serve(HTTPBIN, v1_addr, v1.clone().service()).await;
    mesh.serve(HTTPBIN, v2_addr, v2.clone().service()).await;
    let sleep = MeshClient::new(&mesh.mesh(Workload::new("sleep", "default", "sleep")).await);
    let headers = || async { crate::get(&sleep, "http://httpbin:8000/headers", &[]).await };
    let a = eventually("v1 answers", headers, |a| a.status == 200).await;
    assert_eq!(a.info.upstream, Some(v1_addr));
    assert!(
        v2.log().is_empty(),
        "before mirroring only v1 sees requests"
    );

    // A newer file with the same VirtualService replaces the first one.
    mesh.apply(
        "mirror.yaml",
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: httpbin}\nspec:\n  hosts: [httpbin]\n  http:\n  - route: [{destination: {host: httpbin, subset: v1}, weight: 100}]\n    mirror: {host: httpbin, subset: v2}\n    mirrorPercentage: {value: 100.0}\n",
    );
    let logged = eventually(
        "v2 gets a copy",
        || async {
            let a = crate::get(&sleep, "http://httpbin:8000/headers", &[]).await;
            assert_eq!(a.info.upstream, Some(v1_addr), "the client only sees v1");
            v2.log()
        },
        |log| !log.is_empty(),
    )
    .await;
    let copy = &logged[0];
    assert_eq!(
        (copy.method.as_str(), copy.path.as_str()),
        ("GET", "/headers")
    );
    assert_eq!(copy.host, "httpbin-shadow:8000", "Envoy's -shadow suffix");
    assert!(v1.log().iter().all(|l| l.host == "httpbin:8000"));
}

/// httpbin and sleep in `foo` and `bar`, a sleep without a sidecar in `legacy`.
struct Migration {
    mesh: TestMesh,
    httpbin: [(&'static str, SocketAddr); 2],
    sleeps: [MeshClient; 2],
}

impl Migration {
    async fn start() -> Self {
        let (in_foo, in_bar) = (free_port(), free_port());
        let httpbin = |ns| Workload::new("httpbin", ns, "httpbin");
        let mut yaml = String::new();
        for (ns, addr) in [("foo", in_foo), ("bar", in_bar)] {
            yaml += &service(httpbin(ns), 8000, addr);
            // Istio turns mutual TLS on by itself for workloads with sidecars (auto mTLS);
            // mesh-control needs it said.
            yaml += &format!(
                "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: httpbin, namespace: {ns}}}\nspec: {{host: httpbin.{ns}.svc.cluster.local, trafficPolicy: {{tls: {{mode: ISTIO_MUTUAL}}}}}}\n---\n"
            );
        }
        let mesh = TestMesh::start(&yaml).await;
        for (ns, addr) in [("foo", in_foo), ("bar", in_bar)] {
            mesh.serve(httpbin(ns), addr, Httpbin::default().service())
                .await;
        }
        let sleep = |ns| Workload::new("sleep", ns, "sleep");
        let sleeps = [
            MeshClient::new(&mesh.mesh(sleep("foo")).await),
            MeshClient::new(&mesh.mesh(sleep("bar")).await),
        ];
        Self {
            mesh,
            httpbin: [("foo", in_foo), ("bar", in_bar)],
            sleeps,
        }
    }

    /// `curl http://httpbin.<to>:8000/ip` from `from` (`foo`, `bar` or `legacy`): the status,
    /// or 0 when the connection fails (curl's `000`).
    async fn curl(&self, from: &str, to: &str) -> u16 {
        let (_, addr) = *self.httpbin.iter().find(|(ns, _)| *ns == to).unwrap();
        match from {
            "legacy" => mesh_test_support::http::get(
                addr,
                "/ip",
                &[("host", &format!("httpbin.{to}:8000"))],
            )
            .await
            .map_or(0, |(s, _)| s),
            ns => {
                let client = &self.sleeps[usize::from(ns == "bar")];
                crate::get(client, &format!("http://httpbin.{to}:8000/ip"), &[])
                    .await
                    .status
            }
        }
    }

    async fn all(&self) -> Vec<(&'static str, &'static str, u16)> {
        let mut out = Vec::new();
        for from in ["foo", "bar", "legacy"] {
            for to in ["foo", "bar"] {
                out.push((from, to, self.curl(from, to).await));
            }
        }
        out
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p1_to_p3_mutual_tls_migration() {
    let m = Migration::start().await;
    // P1: no policy, every pair answers.
    let ok = |r: &Vec<(&str, &str, u16)>| r.iter().all(|(_, _, s)| *s == 200);
    eventually("P1", || m.all(), ok).await;
    // P2: STRICT in foo: the legacy client cannot reach foo; the rest can.
    m.mesh.apply(
        "foo-strict.yaml",
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: foo}\nspec: {mtls: {mode: STRICT}}\n",
    );
    let p2 = |r: &Vec<(&str, &str, u16)>| {
        r.iter().all(|(from, to, s)| {
            *s == if (*from, *to) == ("legacy", "foo") {
                0
            } else {
                200
            }
        })
    };
    eventually("P2", || m.all(), p2).await;
    // P3: STRICT mesh-wide: legacy reaches nobody; sidecar pairs still answer.
    m.mesh.apply(
        "mesh-strict.yaml",
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: istio-system}\nspec: {mtls: {mode: STRICT}}\n",
    );
    let p3 = |r: &Vec<(&str, &str, u16)>| {
        r.iter()
            .all(|(from, _, s)| *s == if *from == "legacy" { 0 } else { 200 })
    };
    eventually("P3", || m.all(), p3).await;
    assert_eq!(m.mesh.cp.ads().nack_count(), 0);
}
