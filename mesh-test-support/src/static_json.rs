//! Static mesh configuration as JSON (Envoy's proto3 JSON), for data-path tests: the same
//! resources a control plane would send, written inline next to the behaviour they test.

use std::net::SocketAddr;

use serde_json::{Value, json};

/// A STATIC cluster over `addrs` (one locality), with a 1 s connect timeout; `extra` is
/// merged over it (e.g. `{"lb_policy": "RANDOM"}`).
pub fn cluster(name: &str, addrs: &[SocketAddr], extra: Value) -> Value {
    let endpoints: Vec<Value> = addrs
        .iter()
        .map(|a| {
            json!({"endpoint": {"address": {"socket_address": {
                "address": a.ip().to_string(), "port_value": a.port()}}}})
        })
        .collect();
    let mut c = json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": endpoints}]},
    });
    merge(&mut c, extra);
    c
}

/// A client API listener named `name` (`svc:80`) with inline routes: one virtual host for
/// every domain, holding `routes`; `filters` run before the router (e.g. the fault filter).
pub fn listener(name: &str, routes: Value, filters: Value) -> Value {
    let mut http_filters = filters.as_array().cloned().unwrap_or_default();
    http_filters.push(
        json!({"name": "envoy.filters.http.router", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}),
    );
    json!({
        "name": name,
        "api_listener": {"api_listener": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": "test",
            "route_config": {"name": name, "virtual_hosts": [
                {"name": name, "domains": ["*"], "routes": routes}]},
            "http_filters": http_filters,
        }}
    })
}

/// The fault filter with an empty config, enabled per route by `typed_per_filter_config`.
pub fn fault_filter() -> Value {
    json!([{"name": "envoy.filters.http.fault", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"}}])
}

/// A `static_resources` document.
pub fn resources(listeners: &[Value], clusters: &[Value]) -> Value {
    json!({"static_resources": {"listeners": listeners, "clusters": clusters}})
}

/// Deep-merges `extra` into `base` (objects key by key; anything else replaces).
pub fn merge(base: &mut Value, extra: Value) {
    match (base, extra) {
        (Value::Object(b), Value::Object(e)) => {
            for (k, v) in e {
                merge(b.entry(k).or_insert(Value::Null), v);
            }
        }
        (b, e) => *b = e,
    }
}
