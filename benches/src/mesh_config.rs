//! The mesh scenarios' configuration, as a user writes it: Istio YAML for mesh-control (run by
//! the orchestrator, outside the measured processes), and each side's gRPC xDS bootstrap with
//! istio-agent's certificate files.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::scenario::{Mode, Scenario, Stack};

/// The service the client calls and its port.
pub(crate) const SERVICE: &str = "bench";
/// The service's port.
pub(crate) const PORT: u16 = 8080;
/// The client's identity.
pub(crate) const CLIENT_ID: &str = "spiffe://cluster.local/ns/default/sa/bench-client";
/// The server's identity.
pub(crate) const SERVER_ID: &str = "spiffe://cluster.local/ns/default/sa/bench-server";

/// Istio's port name for the protocol (it selects HTTP/1.1, HTTP/2 or gRPC upstream).
fn port_name(s: &Scenario, mode: Mode) -> &'static str {
    match mode.proto(s.grpc) {
        "grpc" => "grpc",
        "h2" => "http2",
        _ => "http",
    }
}

/// Istio YAML for `s` in `mode` with the server's instances at `ports` (v1, then v2).
pub(crate) fn istio_yaml(s: &Scenario, mode: Mode, ports: &[u16]) -> String {
    let name = port_name(s, mode);
    let mut y = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {SERVICE}, namespace: default}}\n\
         spec:\n  ports: [{{port: {PORT}, name: {name}}}]\n  selector: {{app: bench-server}}\n"
    );
    for (i, port) in ports.iter().enumerate() {
        y += &format!(
            "---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\n\
             metadata: {{name: bench-v{v}, namespace: default}}\n\
             spec: {{address: 127.0.0.1, ports: {{{name}: {port}}}, serviceAccount: bench-server, \
             labels: {{app: bench-server, version: v{v}}}}}\n",
            v = i + 1
        );
    }
    if s.stack == Stack::MeshMin {
        return y;
    }
    let retry_on = if s.grpc {
        "unavailable,reset,connect-failure"
    } else {
        "5xx,reset,connect-failure"
    };
    // The canary match never fires: the header match is evaluated on every request, then the
    // weighted split picks a subset.
    y += &format!(
        "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: bench, namespace: default}}\n\
         spec:\n  hosts: [{SERVICE}]\n  http:\n\
         \x20 - match: [{{headers: {{x-bench-canary: {{exact: \"yes\"}}}}}}]\n\
         \x20   route: [{{destination: {{host: {SERVICE}, subset: v2}}}}]\n\
         \x20 - route:\n\
         \x20   - {{destination: {{host: {SERVICE}, subset: v1}}, weight: 50}}\n\
         \x20   - {{destination: {{host: {SERVICE}, subset: v2}}, weight: 50}}\n\
         \x20   retries: {{attempts: 2, retryOn: \"{retry_on}\"}}\n"
    );
    let tls = if s.stack.mtls() {
        "\n    tls: {mode: ISTIO_MUTUAL}"
    } else {
        ""
    };
    y += &format!(
        "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: bench, namespace: default}}\n\
         spec:\n  host: {SERVICE}\n  trafficPolicy:\n\
         \x20   connectionPool: {{tcp: {{maxConnections: 1024}}, http: {{http1MaxPendingRequests: 1024, http2MaxRequests: 1024}}}}\n\
         \x20   outlierDetection: {{consecutive5xxErrors: 5, interval: 1s, baseEjectionTime: 30s, maxEjectionPercent: 50}}\n\
         \x20   loadBalancer: {{simple: LEAST_REQUEST}}{tls}\n\
         \x20 subsets:\n  - {{name: v1, labels: {{version: v1}}}}\n  - {{name: v2, labels: {{version: v2}}}}\n"
    );
    // Authorization on the server: a DENY rule and an ALLOW rule, as a real policy set has;
    // with mTLS the ALLOW rule also names the caller.
    let from = if s.stack.mtls() {
        "\n    from: [{source: {principals: [cluster.local/ns/default/sa/bench-client]}}]"
    } else {
        ""
    };
    let paths = if s.grpc {
        "[/envoy.service.auth.v3.Authorization/*]"
    } else {
        "[/bench*]"
    };
    y += &format!(
        "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: no-admin, namespace: default}}\n\
         spec:\n  selector: {{matchLabels: {{app: bench-server}}}}\n  action: DENY\n  rules:\n  - to: [{{operation: {{paths: [/admin*]}}}}]\n\
         ---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: bench-callers, namespace: default}}\n\
         spec:\n  selector: {{matchLabels: {{app: bench-server}}}}\n  action: ALLOW\n  rules:\n  - to: [{{operation: {{methods: [GET, POST], paths: {paths}}}}}]{from}\n"
    );
    if s.stack.mtls() {
        y += "---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\n\
              metadata: {name: default, namespace: istio-system}\nspec: {mtls: {mode: STRICT}}\n";
    }
    y
}

/// A side of the hop.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Side {
    Client,
    Server,
}

impl Side {
    fn app(self) -> &'static str {
        match self {
            Self::Client => "bench-client",
            Self::Server => "bench-server",
        }
    }

    /// Its SPIFFE ID.
    pub(crate) fn spiffe_id(self) -> &'static str {
        match self {
            Self::Client => CLIENT_ID,
            Self::Server => SERVER_ID,
        }
    }
}

/// istio-agent's files for `side` under `dir/<app>`: `cert-chain.pem`, `key.pem`,
/// `root-cert.pem`. Returns the directory.
pub(crate) fn write_certificates(
    ca: &mesh_test_support::TestCa,
    dir: &Path,
    side: Side,
) -> PathBuf {
    let d = dir.join(side.app());
    ca.write_istio_files(&ca.workload(side.spiffe_id()), &d);
    d
}

/// Writes `side`'s xDS bootstrap (mesh-control at `xds`, the certificates in `certs`) and
/// returns its path.
pub(crate) fn write_bootstrap(dir: &Path, side: Side, xds: SocketAddr, certs: &Path) -> PathBuf {
    let file = |n: &str| certs.join(n).to_string_lossy().into_owned();
    let app = side.app();
    let doc = serde_json::json!({
        "xds_servers": [{"server_uri": xds.to_string(), "channel_creds": [{"type": "insecure"}],
            "server_features": ["xds_v3"]}],
        "node": {"id": format!("sidecar~127.0.0.1~{app}-v1.default~default.svc.cluster.local"),
            "metadata": {"NAMESPACE": "default", "LABELS": {"app": app, "version": "v1"}}},
        "server_listener_resource_name_template": "xds.istio.io/grpc/lds/inbound/%s",
        "certificate_providers": {"default": {"plugin_name": "file_watcher", "config": {
            "certificate_file": file("cert-chain.pem"), "private_key_file": file("key.pem"),
            "ca_certificate_file": file("root-cert.pem"), "refresh_interval": "600s"}}},
    });
    let path = dir.join(format!("{app}.bootstrap.json"));
    std::fs::write(&path, doc.to_string()).expect("write bootstrap");
    path
}

/// mesh-control serving Istio YAML from a directory, with both sides' certificates and
/// bootstraps.
pub(crate) struct ControlPlane {
    pub(crate) control: std::sync::Arc<mesh_control::control::ControlPlane>,
    /// Where the YAML lives (`bench.yaml`): write it and `reload` to change the scenario.
    pub(crate) config_dir: PathBuf,
    pub(crate) client_bootstrap: PathBuf,
    pub(crate) server_bootstrap: PathBuf,
}

/// Starts mesh-control in this process on a loopback port, serving `yaml`, with a test CA's
/// certificates for both sides and their bootstraps, all under `dir`.
pub(crate) async fn start_control_plane(dir: &Path, yaml: &str) -> ControlPlane {
    let ca = mesh_test_support::TestCa::new("bench root");
    let client_certs = write_certificates(&ca, dir, Side::Client);
    let server_certs = write_certificates(&ca, dir, Side::Server);
    let config_dir = dir.join("istio");
    std::fs::create_dir_all(&config_dir).expect("config dir");
    std::fs::write(config_dir.join("bench.yaml"), yaml).expect("write config");
    let control = std::sync::Arc::new(
        mesh_control::control::ControlPlane::new(&config_dir)
            .unwrap_or_else(|e| panic!("mesh-control: {e:?}")),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let xds = listener.local_addr().expect("addr");
    tokio::spawn(control.clone().serve_tcp(listener));
    ControlPlane {
        control,
        config_dir,
        client_bootstrap: write_bootstrap(dir, Side::Client, xds, &client_certs),
        server_bootstrap: write_bootstrap(dir, Side::Server, xds, &server_certs),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::SCENARIOS;

    /// Every scenario's YAML is valid Istio for mesh-control.
    #[test]
    fn every_scenario_config_loads_in_mesh_control() {
        for s in SCENARIOS.iter().filter(|s| s.stack.is_mesh()) {
            for &mode in s.modes() {
                let dir = tempfile::tempdir().unwrap();
                std::fs::write(
                    dir.path().join("bench.yaml"),
                    istio_yaml(s, mode, &[1001, 1002]),
                )
                .unwrap();
                if let Err(e) = mesh_control::control::load(dir.path(), 1) {
                    panic!("{} {mode}: {e:?}", s.name);
                }
            }
        }
    }
}
