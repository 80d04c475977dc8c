//! The sidecar pair we replace: bare client → Envoy (client side) → Envoy (server side) → bare
//! server, written as static bootstraps. Each Envoy runs one worker thread (`--concurrency 1`,
//! the usual sidecar setting) and is pinned to its side's CPU. Envoy's defaults stay on
//! (stats, 1024-request circuit breakers); with mTLS the hop carries the same SPIFFE
//! certificates and SAN checks as the mesh scenarios.

use std::path::Path;

use serde_json::{Value, json};

use crate::mesh_config::{CLIENT_ID, SERVER_ID};

/// The two bootstraps: the client-side Envoy listens on `client_port` and forwards to the
/// server-side Envoy on `server_port`, which forwards to the application on `app_port`.
/// `h2` makes both upstream hops HTTP/2 (HTTP/2 and gRPC scenarios); the listeners accept
/// both. With `mtls`, `certs` holds each side's istio-agent files (`bench-client/`,
/// `bench-server/`).
pub(crate) fn bootstraps(
    client_port: u16,
    server_port: u16,
    app_port: u16,
    h2: bool,
    mtls: Option<&Path>,
) -> (String, String) {
    let upstream_tls = mtls.map(|certs| {
        json!({"name": "envoy.transport_sockets.tls", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "sni": "bench",
            "common_tls_context": common_tls(&certs.join("bench-client"), SERVER_ID)}})
    });
    let downstream_tls = mtls.map(|certs| {
        json!({"name": "envoy.transport_sockets.tls", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "require_client_certificate": true,
            "common_tls_context": common_tls(&certs.join("bench-server"), CLIENT_ID)}})
    });
    let client = bootstrap(
        listener(client_port, None),
        cluster(server_port, h2, upstream_tls),
    );
    let server = bootstrap(
        listener(server_port, downstream_tls),
        cluster(app_port, h2, None),
    );
    (client, server)
}

fn common_tls(dir: &Path, peer: &str) -> Value {
    let file = |n: &str| json!({"filename": dir.join(n).to_string_lossy()});
    json!({
        "tls_certificates": [{"certificate_chain": file("cert-chain.pem"), "private_key": file("key.pem")}],
        "validation_context": {"trusted_ca": file("root-cert.pem"),
            "match_typed_subject_alt_names": [{"san_type": "URI", "matcher": {"exact": peer}}]},
    })
}

fn listener(port: u16, tls: Option<Value>) -> Value {
    let mut chain = json!({"filters": [{
    "name": "envoy.filters.network.http_connection_manager",
    "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "bench",
        "codec_type": "AUTO",
        "route_config": {"name": "all", "virtual_hosts": [{"name": "all", "domains": ["*"],
            "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "next"}}]}]},
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
    }}]});
    if let Some(tls) = tls {
        chain["transport_socket"] = tls;
    }
    json!({
        "name": "bench",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [chain],
    })
}

fn cluster(port: u16, h2: bool, tls: Option<Value>) -> Value {
    let mut c = json!({
        "name": "next",
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {"cluster_name": "next", "endpoints": [{"lb_endpoints": [{"endpoint": {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]},
    });
    if h2 {
        c["typed_extension_protocol_options"] = json!({
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}}}});
    }
    if let Some(tls) = tls {
        c["transport_socket"] = tls;
    }
    c
}

fn bootstrap(listener: Value, cluster: Value) -> String {
    json!({
        "node": {"id": "bench", "cluster": "bench"},
        "static_resources": {"listeners": [listener], "clusters": [cluster]},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
    })
    .to_string()
}
