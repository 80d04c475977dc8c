//! Single-stack IPv6 (OpenShift Service Mesh supports it): mesh-control's ADS, the workloads,
//! their endpoints and inbound listeners all on `[::1]` only, with Istio mTLS (STRICT), routing
//! by header to a subset, retries, and an AuthorizationPolicy, checked as on IPv4.

use std::collections::HashSet;
use std::convert::Infallible;
use std::net::{Ipv6Addr, SocketAddr};
use std::sync::Arc;
// The test application's own state, not the mesh's data path.
#[allow(clippy::disallowed_types)]
use std::sync::Mutex;

use bytes::Bytes;
use http_body_util::Full;
use mesh_tower::MeshClient;
use mesh_tower::server::PeerIdentity;

use super::meshed::{PRODUCTPAGE, REVIEWS, TestMesh, eventually};

/// An IPv6 loopback port nobody listens on yet.
fn free_v6_port() -> SocketAddr {
    std::net::TcpListener::bind((Ipv6Addr::LOCALHOST, 0))
        .expect("bind [::1]")
        .local_addr()
        .expect("addr")
}

fn yaml(v1: SocketAddr, v2: SocketAddr) -> String {
    format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: reviews, namespace: default}}
spec:
  ports: [{{port: 9080, name: http}}]
  selector: {{app: reviews}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: reviews-v1, namespace: default}}
spec: {{address: "::1", ports: {{http: {}}}, labels: {{app: reviews, version: v1}}, serviceAccount: bookinfo-reviews}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: reviews-v2, namespace: default}}
spec: {{address: "::1", ports: {{http: {}}}, labels: {{app: reviews, version: v2}}, serviceAccount: bookinfo-reviews}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews, namespace: default}}
spec:
  host: reviews
  trafficPolicy: {{tls: {{mode: ISTIO_MUTUAL}}}}
  subsets: [{{name: v1, labels: {{version: v1}}}}, {{name: v2, labels: {{version: v2}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews, namespace: default}}
spec:
  hosts: [reviews]
  http:
  - match: [{{headers: {{end-user: {{exact: jason}}}}}}]
    route: [{{destination: {{host: reviews, subset: v2}}}}]
  - route: [{{destination: {{host: reviews, subset: v1}}}}]
    retries: {{attempts: 3, retryOn: 5xx}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: default, namespace: default}}
spec: {{mtls: {{mode: STRICT}}}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: deny-admin, namespace: default}}
spec:
  selector: {{matchLabels: {{app: reviews}}}}
  action: DENY
  rules: [{{to: [{{operation: {{paths: ["/admin*"]}}}}]}}]
"#,
        v1.port(),
        v2.port()
    )
}

/// The reviews application: answers with its version and whether the caller came over mTLS;
/// `v1` fails the first request of each `x-id` with 503 (for the retry).
#[allow(clippy::disallowed_types)] // the application's own state, not the data path
fn reviews(
    version: &'static str,
) -> impl tower::Service<
    http::Request<hyper::body::Incoming>,
    Response = http::Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Future<Output = Result<http::Response<Full<Bytes>>, Infallible>> + Send,
> + Clone
+ Send
+ 'static {
    let seen = Arc::new(Mutex::new(HashSet::<String>::new()));
    tower::service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let seen = seen.clone();
        async move {
            let id = req
                .headers()
                .get("x-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            if version == "v1"
                && let Some(id) = id
                && seen.lock().expect("seen").insert(id)
            {
                let mut rsp = http::Response::new(Full::new(Bytes::from_static(b"flaky")));
                *rsp.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
                return Ok(rsp);
            }
            let peer = req.extensions().get::<PeerIdentity>();
            let mtls = peer.is_some_and(|p| p.spiffe_id.is_some());
            let from = peer.map(|p| p.addr.to_string()).unwrap_or_default();
            Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from(format!(
                "{version} mtls={mtls} from={from}"
            )))))
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mesh_on_the_ipv6_loopback_only() {
    let (v1, v2) = (free_v6_port(), free_v6_port());
    let mesh = TestMesh::start_on(&yaml(v1, v2), Ipv6Addr::LOCALHOST.into()).await;
    assert!(mesh.xds.is_ipv6(), "ADS on [::1]: {}", mesh.xds);
    mesh.serve(REVIEWS, v1, reviews("v1")).await;
    mesh.serve(REVIEWS, v2, reviews("v2")).await;
    let client = MeshClient::new(&mesh.mesh(PRODUCTPAGE).await);

    // Routing by header to v2, over mTLS from an IPv6 peer.
    let a = eventually(
        "jason reaches v2",
        || super::get(&client, "http://reviews:9080/r", &[("end-user", "jason")]),
        |a| a.status == 200,
    )
    .await;
    assert!(a.body.starts_with("v2 mtls=true from=[::1]:"), "{}", a.body);

    // Retries: v1 fails each new x-id once; the route retries 5xx.
    for i in 0..5 {
        let id = format!("req-{i}");
        let a = super::get(&client, "http://reviews:9080/r", &[("x-id", &id)]).await;
        assert_eq!(a.status, 200, "{id}: {}", a.body);
        assert!(a.body.starts_with("v1 mtls=true"), "{}", a.body);
    }

    // Authorization: DENY on /admin*, including a spelling normalization folds onto it.
    for path in ["/admin", "/admin/x", "/./admin/x", "/%61dmin"] {
        let a = super::get(&client, &format!("http://reviews:9080{path}"), &[]).await;
        assert_eq!(a.status, 403, "{path}: {}", a.body);
    }

    // STRICT: a plaintext IPv6 client is refused before HTTP.
    let plain = mesh_test_support::http::get(v1, "/r", &[("host", "reviews")]).await;
    assert!(plain.is_err(), "plaintext to a STRICT server: {plain:?}");
}
