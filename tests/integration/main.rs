//! Cross-crate tests. One module per behaviour; one binary so the suite links once.

mod ads_ack_nack;
mod ads_connectivity;
mod ads_resource_lifecycle;
mod ads_transports;
mod bad_input;
mod bookinfo;
mod control_plane;
mod control_plane_authz;
mod control_plane_authz_conditions;
mod control_plane_policy;
mod control_plane_samples;
mod envoy_control_plane;
mod envoy_differential;
mod envoy_inbound_authz;
mod envoy_mtls;
mod field_accounting;
mod grpc_interop;
mod grpc_mesh;
mod grpcio_control_plane;
mod inbound_authn_tasks;
mod inbound_authz_tasks;
mod inbound_differential;
mod inbound_ext_authz;
mod inbound_filter_chains;
mod inbound_limits;
mod inbound_server;
mod inbound_serving;
mod ipv6;
mod istio_dumps;
mod mesh_control_outbound;
mod meshed;
mod outbound_balancing;
mod outbound_circuit_breaking;
mod outbound_connections;
mod outbound_faults;
mod outbound_faulty;
mod outbound_mirroring;
mod outbound_outlier;
mod outbound_retries;
mod outbound_routing;
mod outbound_timeouts;
mod outbound_tls;
mod outbound_unknown_hosts;
mod snapshots;
mod static_config;
mod telemetry_access_log;
mod telemetry_config_dump;
mod telemetry_otlp_metrics;
mod telemetry_prometheus;
mod telemetry_tracing;
mod translate_fixtures;

use std::time::Duration;

use mesh_core::xds::XdsClientConfig;
use mesh_core::{Bootstrap, Mesh};
use mesh_test_support::AdsServer;

/// Client tunables that keep tests fast: short timers, quick reconnects.
pub(crate) fn fast_config() -> XdsClientConfig {
    let mut c = XdsClientConfig::default();
    c.does_not_exist_timeout = Duration::from_millis(500);
    c.backoff_base = Duration::from_millis(50);
    c.backoff_max = Duration::from_millis(200);
    c.routine_reconnect_delay = Duration::from_millis(10);
    c.connect_timeout = Duration::from_secs(2);
    c
}

/// A static client whose `svc:80` routes everything to cluster `c` of `addrs`, with `extra`
/// merged into the cluster.
pub(crate) async fn one_cluster_client(
    addrs: &[std::net::SocketAddr],
    extra: serde_json::Value,
) -> mesh_tower::MeshClient {
    use mesh_test_support::static_json::{cluster, listener, resources};
    static_client(resources(
        &[listener(
            "svc:80",
            serde_json::json!([{"match": {"prefix": "/"}, "route": {"cluster": "c"}}]),
            serde_json::json!([]),
        )],
        &[cluster("c", addrs, extra)],
    ))
    .await
}

/// Serves `mesh`'s admin endpoint on an ephemeral loopback port.
pub(crate) async fn start_admin(mesh: &Mesh) -> std::net::SocketAddr {
    let admin = mesh_tower::admin::Admin::bind(mesh, "127.0.0.1:0".parse().unwrap())
        .await
        .expect("admin");
    let addr = admin.local_addr();
    tokio::spawn(admin.run());
    addr
}

/// The `/config_dump` entry of the resource named `name`, from the admin endpoint at `addr`.
pub(crate) async fn dumped_resource(addr: std::net::SocketAddr, name: &str) -> serde_json::Value {
    let (status, body) = mesh_test_support::http::get(addr, "/config_dump", &[])
        .await
        .unwrap();
    assert_eq!(status, 200);
    let dump: serde_json::Value = serde_json::from_str(&body).unwrap();
    dump["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == name)
        .unwrap_or_else(|| panic!("{name} in {dump}"))
        .clone()
}

/// A mesh connected to `server` with `features`.
pub(crate) async fn mesh_for(server: &AdsServer, features: &[&str]) -> Mesh {
    mesh_with(server, features, fast_config()).await
}

/// Like [`mesh_for`], with a does-not-exist timer long enough that a test can rely on it not
/// firing, however slow the machine.
pub(crate) async fn mesh_with_long_timer(server: &AdsServer) -> Mesh {
    let mut config = fast_config();
    config.does_not_exist_timeout = Duration::from_secs(30);
    mesh_with(server, &[], config).await
}

pub(crate) async fn mesh_with(
    server: &AdsServer,
    features: &[&str],
    config: XdsClientConfig,
) -> Mesh {
    mesh_test_support::trace_init();
    let bootstrap = Bootstrap::from_json(&server.bootstrap_json(features)).expect("bootstrap");
    Mesh::builder()
        .bootstrap(bootstrap)
        .xds_config(config)
        .build()
        .await
        .expect("mesh")
}

/// Loads `dir` into mesh-control and serves it on an ephemeral loopback port.
pub(crate) async fn serve_control_plane(
    dir: &std::path::Path,
) -> (
    std::sync::Arc<mesh_control::control::ControlPlane>,
    std::net::SocketAddr,
) {
    serve_control_plane_on(dir, std::net::Ipv4Addr::LOCALHOST.into()).await
}

/// [`serve_control_plane`] on `ip` (`::1` for single-stack IPv6).
pub(crate) async fn serve_control_plane_on(
    dir: &std::path::Path,
    ip: std::net::IpAddr,
) -> (
    std::sync::Arc<mesh_control::control::ControlPlane>,
    std::net::SocketAddr,
) {
    mesh_test_support::trace_init();
    let cp = std::sync::Arc::new(
        mesh_control::control::ControlPlane::new(dir).unwrap_or_else(|e| {
            panic!(
                "{}",
                e.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("\n")
            )
        }),
    );
    let listener = tokio::net::TcpListener::bind(std::net::SocketAddr::new(ip, 0))
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(cp.clone().serve_tcp(listener));
    (cp, addr)
}

/// A mesh from bootstrap JSON, with the fast test tunables.
pub(crate) async fn mesh_from_json(bootstrap: serde_json::Value) -> Mesh {
    mesh_test_support::trace_init();
    let bootstrap = Bootstrap::from_json(&bootstrap.to_string()).expect("bootstrap");
    Mesh::builder()
        .bootstrap(bootstrap)
        .xds_config(fast_config())
        .build()
        .await
        .expect("mesh")
}

/// A mesh whose bootstrap names `xds` and the given node (id, metadata), plus `extra` top-level
/// bootstrap fields.
pub(crate) async fn mesh_at(
    xds: std::net::SocketAddr,
    node: serde_json::Value,
    extra: serde_json::Value,
) -> Mesh {
    let mut json = serde_json::json!({
        "xds_servers": [{"server_uri": xds.to_string(), "channel_creds": [{"type": "insecure"}], "server_features": ["xds_v3"]}],
        "node": node,
    });
    if let (Some(obj), Some(more)) = (json.as_object_mut(), extra.as_object()) {
        obj.extend(more.clone());
    }
    mesh_from_json(json).await
}

/// A mesh client over static resources (`static_resources` JSON).
pub(crate) async fn static_client(doc: serde_json::Value) -> mesh_tower::MeshClient {
    static_client_with(doc, |b| b).await
}

/// Like [`static_client`], with builder settings.
pub(crate) async fn static_client_with(
    doc: serde_json::Value,
    f: impl FnOnce(mesh_tower::MeshClientBuilder) -> mesh_tower::MeshClientBuilder,
) -> mesh_tower::MeshClient {
    mesh_test_support::trace_init();
    let resources = mesh_core::StaticResources::from_value(&doc, "test").expect("valid resources");
    let mesh = Mesh::builder()
        .static_resources(resources)
        .build()
        .await
        .expect("mesh");
    f(mesh_tower::MeshClient::builder(&mesh)).build()
}

/// One answer, read in full.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) body: String,
    pub(crate) headers: http::HeaderMap,
    pub(crate) info: mesh_tower::ResponseInfo,
}

impl Answer {
    /// The backend that answered (its `x-backend` header), or "" for local replies.
    pub(crate) fn backend(&self) -> &str {
        self.headers
            .get("x-backend")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// A header as text ("" when absent).
    pub(crate) fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

/// Sends `req` through `client` and reads the answer.
pub(crate) async fn send(
    client: &mesh_tower::MeshClient,
    req: http::Request<http_body_util::Full<bytes::Bytes>>,
) -> Answer {
    use http_body_util::BodyExt;
    let rsp = client.send(req).await.expect("routable request");
    let info = mesh_tower::ResponseInfo::of(&rsp)
        .cloned()
        .expect("every response carries its info");
    let (parts, body) = rsp.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    Answer {
        status: parts.status.as_u16(),
        body: String::from_utf8_lossy(&body).into_owned(),
        headers: parts.headers,
        info,
    }
}

/// GET `url` with `headers` through `client`.
pub(crate) async fn get(
    client: &mesh_tower::MeshClient,
    url: &str,
    headers: &[(&str, &str)],
) -> Answer {
    let mut req = http::Request::get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    send(client, req.body(Default::default()).expect("request")).await
}
