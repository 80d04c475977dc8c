//! tonic through the mesh: a tonic-generated client on `mesh_grpc::channel(&mesh,
//! "xds:///authz:9000")` calls tonic-generated servers served by `mesh_grpc::Server`, both
//! configured by mesh-control: balanced over both backends, over Istio mutual TLS with the
//! caller's identity reaching the handler, gRPC faults and HTTP faults seen as gRPC statuses,
//! RBAC refusals as `PERMISSION_DENIED`, and `UNAVAILABLE` retried away.
//!
//! The service is Envoy's `envoy.service.auth.v3.Authorization` (from envoy-types): any
//! generated unary service would do.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::authorization_server::{
    Authorization, AuthorizationServer,
};
use envoy_types::pb::envoy::service::auth::v3::{CheckRequest, CheckResponse};
use mesh_tower::server::PeerIdentity;

use super::meshed::{TestMesh, Workload, eventually, free_port};

const FRONTEND: Workload<'static> = Workload::new("frontend", "default", "frontend");
const AUTHZ: Workload<'static> = Workload::new("authz", "default", "authz");

/// Answers with its name and the caller's SPIFFE ID in the response metadata; fails the
/// first `fail_first` calls with `UNAVAILABLE`.
#[derive(Clone)]
struct Named {
    name: &'static str,
    fail_first: Arc<AtomicU32>,
}

#[tonic::async_trait]
impl Authorization for Named {
    async fn check(
        &self,
        req: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        if self
            .fail_first
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(tonic::Status::unavailable("warming up"));
        }
        let caller = req
            .extensions()
            .get::<PeerIdentity>()
            .and_then(|p| p.spiffe_id.as_ref().map(ToString::to_string))
            .unwrap_or_else(|| "anonymous".into());
        let mut rsp = tonic::Response::new(CheckResponse::default());
        rsp.metadata_mut()
            .insert("x-served-by", self.name.parse().unwrap());
        rsp.metadata_mut()
            .insert("x-caller", caller.parse().unwrap());
        Ok(rsp)
    }
}

fn config(a: std::net::SocketAddr, b: std::net::SocketAddr) -> String {
    let entry = |name: &str, addr: std::net::SocketAddr| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: {name}}}\nspec: {{address: 127.0.0.1, ports: {{grpc: {}}}, labels: {{app: authz}}, serviceAccount: authz}}\n---\n",
            addr.port()
        )
    };
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: authz}}\nspec:\n  ports: [{{port: 9000, name: grpc}}]\n  selector: {{app: authz}}\n---\n{}{}\
         apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: authz}}\nspec: {{host: authz, trafficPolicy: {{tls: {{mode: ISTIO_MUTUAL}}}}}}\n",
        entry("authz-a", a),
        entry("authz-b", b),
    )
}

async fn call(
    client: &AuthorizationClient<mesh_grpc::MeshChannel>,
) -> Result<(String, String), tonic::Status> {
    let rsp = client.clone().check(CheckRequest::default()).await?;
    let get = |k: &str| {
        rsp.metadata()
            .get(k)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    Ok((get("x-served-by"), get("x-caller")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tonic_client_calls_meshed_tonic_servers_over_xds() {
    let (a, b) = (free_port(), free_port());
    let mesh = TestMesh::start(&config(a, b)).await;
    let fail_first = Arc::new(AtomicU32::new(0));
    for (name, addr) in [("a", a), ("b", b)] {
        let server = mesh.mesh(AUTHZ).await;
        let svc = AuthorizationServer::new(Named {
            name,
            fail_first: fail_first.clone(),
        });
        let builder = mesh_grpc::Server::builder(&server).add_service(svc);
        let mut state = builder.serving_state();
        tokio::spawn(async move { builder.serve(addr).await.expect("serving") });
        // The serving-state callback (gRFC A36) says when the inbound listener is in.
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            state.wait_for(|s| *s == mesh_grpc::ServingState::Serving),
        )
        .await
        .expect("serving within 10 s")
        .expect("the server is running");
    }
    let frontend = mesh.mesh(FRONTEND).await;
    let client = AuthorizationClient::new(
        mesh_grpc::channel(&frontend, "xds:///authz:9000").expect("an xds target"),
    );

    // Both backends, over mTLS, with the caller's identity.
    let first = eventually("authz up", || call(&client), |r| r.is_ok())
        .await
        .unwrap();
    assert_eq!(first.1, "spiffe://cluster.local/ns/default/sa/frontend");
    let mut served = std::collections::BTreeSet::new();
    for _ in 0..20 {
        served.insert(call(&client).await.expect("a call").0);
    }
    assert_eq!(served.into_iter().collect::<Vec<_>>(), ["a", "b"]);

    // UNAVAILABLE is retried (Istio's default retry policy), on another backend.
    fail_first.store(1, Ordering::Relaxed);
    call(&client).await.expect("retried past UNAVAILABLE");
    assert_eq!(fail_first.load(Ordering::Relaxed), 0, "one attempt failed");

    // A gRPC-status abort, and an HTTP-status abort mapped as gRPC maps it.
    let fault = |abort: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: authz}}\nspec:\n  hosts: [authz]\n  http:\n  - fault: {{abort: {{percentage: {{value: 100}}, {abort}}}}}\n    route: [{{destination: {{host: authz}}}}]\n"
        )
    };
    mesh.apply("fault.yaml", &fault("grpcStatus: RESOURCE_EXHAUSTED"));
    let e = eventually("gRPC abort", || call(&client), |r| r.is_err())
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
    mesh.apply("fault.yaml", &fault("httpStatus: 401"));
    let e = eventually(
        "HTTP abort",
        || call(&client),
        |r| {
            r.as_ref()
                .is_err_and(|e| e.code() != tonic::Code::ResourceExhausted)
        },
    )
    .await
    .unwrap_err();
    assert_eq!(
        e.code(),
        tonic::Code::Unauthenticated,
        "401 → UNAUTHENTICATED: {e:?}"
    );
    mesh.apply("fault.yaml", "");

    // RBAC on the server side: PERMISSION_DENIED.
    mesh.apply(
        "deny.yaml",
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-frontend, namespace: default}\nspec:\n  selector: {matchLabels: {app: authz}}\n  action: DENY\n  rules: [{from: [{source: {principals: [cluster.local/ns/default/sa/frontend]}}]}]\n",
    );
    let e = eventually(
        "RBAC",
        || call(&client),
        |r| {
            r.as_ref()
                .is_err_and(|e| e.code() == tonic::Code::PermissionDenied)
        },
    )
    .await
    .unwrap_err();
    assert_eq!(e.message(), "RBAC: access denied");
    assert_eq!(mesh.cp.ads().nack_count(), 0);
}

#[test]
fn targets_must_be_xds_uris() {
    assert!("http://authz:9000".parse::<mesh_grpc::XdsUri>().is_err());
    assert!("xds:///".parse::<mesh_grpc::XdsUri>().is_err());
    let t: mesh_grpc::XdsUri = "xds:///authz".parse().unwrap();
    assert_eq!(t.http_authority(), "authz:80");
}
