//! Load balancing on real backends: round robin, weights from the endpoint list, ring hash
//! stickiness, and priority failover.

use std::collections::HashMap;

use mesh_test_support::Backend;
use mesh_test_support::static_json::{cluster, listener, resources};
use serde_json::json;

use crate::{get, static_client};

async fn counts(
    client: &mesh_tower::MeshClient,
    n: usize,
    headers: &[(&str, &str)],
) -> HashMap<String, usize> {
    let mut out = HashMap::new();
    for _ in 0..n {
        let a = get(client, "http://svc/", headers).await;
        assert_eq!(a.status, 200);
        *out.entry(a.backend().to_owned()).or_default() += 1;
    }
    out
}

fn endpoint(b: &Backend, weight: u32) -> serde_json::Value {
    json!({"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": b.addr().port()}}},
           "load_balancing_weight": weight})
}

#[tokio::test]
async fn round_robin_and_endpoint_weights() {
    let bs = [
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    ];
    let addrs: Vec<_> = bs.iter().map(|b| b.addr()).collect();
    let route = json!([{"match": {"prefix": "/"}, "route": {"cluster": "rr"}}]);
    let client = static_client(resources(
        &[listener("svc:80", route.clone(), json!([]))],
        &[cluster("rr", &addrs, json!({}))],
    ))
    .await;
    let c = counts(&client, 300, &[]).await;
    assert_eq!([c["a"], c["b"], c["c"]], [100, 100, 100]);

    let weighted = json!({"load_assignment": {"cluster_name": "rr", "endpoints": [
        {"lb_endpoints": [endpoint(&bs[0], 1), endpoint(&bs[1], 3)]}]}});
    let client = static_client(resources(
        &[listener("svc:80", route, json!([]))],
        &[cluster("rr", &addrs, weighted)],
    ))
    .await;
    let c = counts(&client, 400, &[]).await;
    assert_eq!((c["a"], c["b"]), (100, 300));
}

#[tokio::test]
async fn ring_hash_keeps_a_key_on_one_host() {
    let bs = [
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    ];
    let addrs: Vec<_> = bs.iter().map(|b| b.addr()).collect();
    let route = json!([{"match": {"prefix": "/"}, "route": {"cluster": "ring",
        "hash_policy": [{"header": {"header_name": "x-user"}}]}}]);
    let client = static_client(resources(
        &[listener("svc:80", route, json!([]))],
        &[cluster("ring", &addrs, json!({"lb_policy": "RING_HASH"}))],
    ))
    .await;
    let mut homes = std::collections::HashSet::new();
    for user in 0..30 {
        let user = format!("user-{user}");
        let c = counts(&client, 5, &[("x-user", &user)]).await;
        assert_eq!(c.len(), 1, "{user} stayed on one host: {c:?}");
        homes.extend(c.into_keys());
    }
    assert_eq!(homes.len(), 3, "users spread over every host");
}

#[tokio::test]
async fn priorities_fail_over_when_the_first_is_gone() {
    let primary = Backend::start("primary").await;
    let backup = Backend::start("backup").await;
    let dead = mesh_test_support::unused_port();
    let lb = |addr: std::net::SocketAddr, health: &str| {
        json!({"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": addr.port()}}},
               "health_status": health})
    };
    let assignment = |p0_health: &str| {
        json!({"load_assignment": {"cluster_name": "p", "endpoints": [
        {"priority": 0, "lb_endpoints": [lb(primary.addr(), p0_health), lb(dead, "UNHEALTHY")]},
        {"priority": 1, "lb_endpoints": [lb(backup.addr(), "HEALTHY")]}]}})
    };
    let route = json!([{"match": {"prefix": "/"}, "route": {"cluster": "p"}}]);
    let client = static_client(resources(
        &[listener("svc:80", route.clone(), json!([]))],
        &[cluster("p", &[], assignment("HEALTHY"))],
    ))
    .await;
    // Priority 0 is 50 % healthy: 70 % of the load stays there, 30 % spills to priority 1.
    let c = counts(&client, 1000, &[]).await;
    let share = c.get("primary").copied().unwrap_or(0) as f64 / 1000.0;
    assert!((0.64..0.76).contains(&share), "{c:?}");
    let client = static_client(resources(
        &[listener("svc:80", route, json!([]))],
        &[cluster("p", &[], assignment("UNHEALTHY"))],
    ))
    .await;
    assert_eq!(counts(&client, 50, &[]).await["backup"], 50);
}
