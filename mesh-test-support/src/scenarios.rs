//! Data-path scenarios shared by tests and benchmarks, as static mesh resources.

use std::net::SocketAddr;

use serde_json::{Value, json};

use crate::static_json::{cluster, listener, resources};

/// The `faulty` scenario (BENCHMARKS.md): `svc:80` routes to one cluster over `backends`, with
/// what a careful operator configures against flaky upstreams: retries on 5xx (two, to other
/// hosts, Envoy's default backoff), outlier detection (5 consecutive 5xx eject for 30 s, up to
/// half the hosts) and least-request balancing. The cluster lifts Envoy's default of 3
/// concurrent retries (as istiod does for every cluster), leaving the client's retry budget
/// (20 % of requests in flight) to bound them: at tens of thousands of requests a second, 3
/// concurrent retries are too few for 1 % of failures.
pub fn faulty(backends: &[SocketAddr]) -> Value {
    let routes = json!([{"match": {"prefix": "/"}, "route": {"cluster": "faulty",
        "timeout": "5s",
        "retry_policy": {"retry_on": "5xx,connect-failure,reset", "num_retries": 2,
            "retry_host_predicate": [{"name": "envoy.retry_host_predicates.previous_hosts",
                "typed_config": {"@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"}}],
            "host_selection_retry_max_attempts": 3}}}]);
    resources(
        &[listener("svc:80", routes, json!([]))],
        &[cluster(
            "faulty",
            backends,
            json!({"lb_policy": "LEAST_REQUEST",
                "circuit_breakers": {"thresholds": [{"max_retries": 1024}]},
                "outlier_detection": {
                "consecutive_5xx": 5, "interval": "1s", "base_ejection_time": "30s",
                "max_ejection_percent": 50}}),
        )],
    )
}

/// The `mesh-min` shape (BENCHMARKS.md): `authority` routes to one cluster over `backends`,
/// round robin, no policies.
pub fn single_route(authority: &str, backends: &[SocketAddr]) -> Value {
    let host = if authority.contains(':') {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    let routes = json!([{"match": {"prefix": "/"}, "route": {"cluster": "svc"}}]);
    resources(
        &[listener(&host, routes, json!([]))],
        &[cluster("svc", backends, json!({}))],
    )
}
