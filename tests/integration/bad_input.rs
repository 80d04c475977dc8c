//! Bad input gets an error naming the resource and the field.

use mesh_core::StaticResources;

fn error(yaml: &str) -> String {
    StaticResources::from_str(yaml, "bad.yaml")
        .unwrap_err()
        .to_string()
}

const ROUTE_HEAD: &str = r#"
resources:
- "@type": type.googleapis.com/envoy.config.route.v3.RouteConfiguration
  name: rc
  virtual_hosts:
  - name: vh
    domains: ["*"]
    routes:
"#;

#[test]
fn invalid_regex() {
    let e = error(&format!(
        "{ROUTE_HEAD}    - match: {{ safe_regex: {{ regex: \"/a(\" }} }}\n      route: {{ cluster: c }}\n"
    ));
    assert!(e.contains("RouteConfiguration rc"), "{e}");
    assert!(
        e.contains("virtual_hosts[0].routes[0].match.safe_regex.regex"),
        "{e}"
    );
    assert!(e.contains("invalid regex"), "{e}");
}

#[test]
fn weighted_clusters_total_that_does_not_add_up() {
    let e = error(&format!(
        "{ROUTE_HEAD}    - match: {{ prefix: / }}\n      route:\n        weighted_clusters:\n          total_weight: 100\n          clusters: [{{ name: a, weight: 50 }}, {{ name: b, weight: 40 }}]\n"
    ));
    assert!(e.contains("RouteConfiguration rc"), "{e}");
    assert!(
        e.contains("virtual_hosts[0].routes[0].route.weighted_clusters.total_weight"),
        "{e}"
    );
    assert!(e.contains("add up to 90"), "{e}");
}

#[test]
fn weighted_clusters_all_zero() {
    let e = error(&format!(
        "{ROUTE_HEAD}    - match: {{ prefix: / }}\n      route:\n        weighted_clusters:\n          clusters: [{{ name: a, weight: 0 }}]\n"
    ));
    assert!(
        e.contains("route.weighted_clusters.clusters: the weights add up to 0"),
        "{e}"
    );
}

#[test]
fn unknown_required_filter_is_rejected_and_optional_one_skipped() {
    let stats = r#"{ "@type": type.googleapis.com/stats.PluginConfig, foo: bar }"#;
    let listener = |optional| client_listener(stats, optional);
    let e = error(&listener(false));
    assert!(e.contains("Listener l"), "{e}");
    assert!(
        e.contains("api_listener.api_listener.http_filters[0].typed_config"),
        "{e}"
    );
    assert!(
        e.contains("unsupported filter type.googleapis.com/stats.PluginConfig"),
        "{e}"
    );
    let ok = StaticResources::from_str(&listener(true), "ok.yaml")
        .expect("an optional unknown filter is skipped");
    // ... and the skip is reported, by path and type.
    let unapplied = ok.unapplied(mesh_core::xds::ResourceType::Listener, "l");
    let skipped = unapplied
        .iter()
        .find(|f| &*f.path == "api_listener.api_listener.http_filters[0].typed_config")
        .unwrap_or_else(|| panic!("{unapplied:?}"));
    assert_eq!(skipped.class, mesh_core::xds::FieldClass::Ignored);
    assert!(skipped.note.contains("stats.PluginConfig"), "{skipped}");
}

/// An API listener (the client side) with an HTTP filter only servers apply.
fn client_listener(filter: &str, optional: bool) -> String {
    format!(
        r#"
static_resources:
  listeners:
  - name: l
    api_listener:
      api_listener:
        "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
        rds: {{ route_config_name: r }}
        http_filters:
        - name: policy
          is_optional: {optional}
          typed_config: {filter}
        - name: router
          typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}
"#
    )
}

#[test]
fn a_policy_filter_on_the_client_side_is_refused_not_passed_over() {
    // Envoy would enforce RBAC on outbound requests; the client does not, so it says so
    // (gRPC's rule: a server-only filter on a client listener is a NACK unless optional).
    let rbac = r#"{ "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC, rules: { action: DENY, policies: {} } }"#;
    let e = error(&client_listener(rbac, false));
    assert!(
        e.contains("http_filters[0].typed_config: is not applied on clients"),
        "{e}"
    );
    StaticResources::from_str(&client_listener(rbac, true), "ok.yaml").expect("optional: skipped");
}

#[test]
fn listener_level_configs_are_refused_per_route() {
    let e = error(&format!(
        "{ROUTE_HEAD}    - match: {{ prefix: / }}\n      route: {{ cluster: c }}\n      typed_per_filter_config:\n        jwt: {{ \"@type\": type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication }}\n"
    ));
    assert!(e.contains("typed_per_filter_config"), "{e}");
    assert!(
        e.contains("is not a per-route config (use type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.PerRouteConfig)"),
        "{e}"
    );
}

#[test]
fn routes_and_endpoints_from_elsewhere_than_the_ads_stream_are_refused() {
    let e = error(
        r#"
static_resources:
  listeners:
  - name: l
    api_listener:
      api_listener:
        "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
        rds: { route_config_name: r, config_source: { path_config_source: { path: /etc/routes.yaml } } }
        http_filters:
        - name: router
          typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }
"#,
    );
    assert!(e.contains("rds.config_source: a file config source"), "{e}");
}

#[test]
fn router_must_be_last() {
    let e = error(
        r#"
static_resources:
  listeners:
  - name: l
    api_listener:
      api_listener:
        "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
        rds: { route_config_name: r }
        http_filters:
        - name: router
          typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }
        - name: fault
          typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault }
"#,
    );
    assert!(
        e.contains("http_filters: the last filter must be the router"),
        "{e}"
    );
}

#[test]
fn malformed_bootstrap_fails_fast_with_the_json_path() {
    let e = mesh_core::Bootstrap::from_json(
        r#"{"xds_servers": [{"server_uri": "x:1", "channel_creds": "insecure"}]}"#,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("xds_servers[0].channel_creds"), "{e}");
}

#[test]
fn bad_endpoint_address() {
    let e = error(
        r#"
resources:
- "@type": type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment
  cluster_name: c
  endpoints:
  - lb_endpoints:
    - endpoint: { address: { socket_address: { address: not-an-ip, port_value: 80 } } }
"#,
    );
    assert!(e.contains("ClusterLoadAssignment c"), "{e}");
    assert!(
        e.contains("endpoints[0].lb_endpoints[0].endpoint.address.socket_address.address"),
        "{e}"
    );
}

#[tokio::test]
async fn unusable_certificates_fail_the_mesh_at_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let ca = mesh_test_support::TestCa::new("root");
    let expired = ca.expired_workload("spiffe://cluster.local/ns/default/sa/x");
    std::fs::write(dir.path().join("cert-chain.pem"), &expired.cert_pem).unwrap();
    std::fs::write(dir.path().join("key.pem"), &expired.key_pem).unwrap();
    let file = |n: &str| dir.path().join(n).to_string_lossy().into_owned();
    let bootstrap = |cert: String| {
        mesh_core::Bootstrap::from_json(
            &serde_json::json!({
                "xds_servers": [{"server_uri": "127.0.0.1:1", "channel_creds": [{"type": "insecure"}]}],
                "node": {"id": "n"},
                "certificate_providers": {"default": {"plugin_name": "file_watcher", "config": {
                    "certificate_file": cert, "private_key_file": file("key.pem")}}}
            })
            .to_string(),
        )
        .unwrap()
    };
    let err = mesh_core::Mesh::builder()
        .bootstrap(bootstrap(file("cert-chain.pem")))
        .build()
        .await
        .expect_err("expired certificate");
    let text = err.to_string();
    assert!(
        text.contains("\"default\"") && text.contains("not valid now"),
        "{text}"
    );
    let err = mesh_core::Mesh::builder()
        .bootstrap(bootstrap(file("missing.pem")))
        .build()
        .await
        .expect_err("missing file");
    assert!(err.to_string().contains("missing.pem"), "{err}");
}

/// A cluster with this `UpstreamTlsContext` (YAML, indented for its place).
fn tls_cluster(common_extra: &str) -> String {
    format!(
        r#"
resources:
- "@type": type.googleapis.com/envoy.config.cluster.v3.Cluster
  name: c
  type: EDS
  eds_cluster_config: {{ eds_config: {{ ads: {{}} }} }}
  transport_socket:
    name: tls
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
      common_tls_context:
{common_extra}
"#
    )
}

/// TLS settings this library cannot honour are refused with the field, never ignored: each
/// would accept a peer Envoy refuses, or speak what the configuration forbids.
#[test]
fn tls_settings_that_cannot_be_honoured_are_refused() {
    let ca = "        validation_context:\n          trusted_ca: { filename: /ca.pem }\n";
    for (extra, field) in [
        (
            "          verify_certificate_spki: [\"NvqYIYSbgK2vCJpQhObf77vv+bQWtc5ek5RIOwPiC9A=\"]\n",
            "verify_certificate_spki",
        ),
        (
            "          verify_certificate_hash: [\"df6ff72fe9116521268f6f2dd4966f51df479883fe7037b39f75916ac3049d1a\"]\n",
            "verify_certificate_hash",
        ),
        ("          crl: { filename: /crl.pem }\n", "crl"),
        (
            "          allow_expired_certificate: true\n",
            "allow_expired_certificate",
        ),
        (
            "          trust_chain_verification: ACCEPT_UNTRUSTED\n",
            "trust_chain_verification",
        ),
        ("          max_verify_depth: 1\n", "max_verify_depth"),
    ] {
        let e = error(&tls_cluster(&format!("{ca}{extra}")));
        assert!(e.contains("Cluster c"), "{e}");
        assert!(
            e.contains(&format!("validation_context.{field}")),
            "{field}: {e}"
        );
        assert!(e.contains("not supported"), "{e}");
    }
    for (params, why) in [
        (
            "{ tls_maximum_protocol_version: TLSv1_1 }",
            "nothing to speak",
        ),
        (
            "{ tls_minimum_protocol_version: TLSv1_3, tls_maximum_protocol_version: TLSv1_2 }",
            "above the maximum",
        ),
        (
            "{ tls_maximum_protocol_version: TLSv1_2, cipher_suites: [AES128-SHA, ECDHE-RSA-AES128-SHA] }",
            "none of the TLS 1.2 cipher suites",
        ),
        ("{ ecdh_curves: [P-521] }", "none of the curves"),
        (
            "{ signature_algorithms: [rsa_pss_rsae_sha256] }",
            "not supported",
        ),
    ] {
        let e = error(&tls_cluster(&format!("{ca}        tls_params: {params}\n")));
        assert!(e.contains("common_tls_context.tls_params"), "{params}: {e}");
        assert!(e.contains(why), "{params}: {e}");
    }
    // What istiod sends loads: an allow list whose RSA-key-exchange suites are not offered.
    let istio = "        tls_params: { tls_minimum_protocol_version: TLSv1_2, tls_maximum_protocol_version: TLSv1_3, cipher_suites: [ECDHE-ECDSA-AES256-GCM-SHA384, ECDHE-RSA-AES256-GCM-SHA384, ECDHE-ECDSA-AES128-GCM-SHA256, ECDHE-RSA-AES128-GCM-SHA256, AES256-GCM-SHA384, AES128-GCM-SHA256] }\n";
    StaticResources::from_str(&tls_cluster(&format!("{ca}{istio}")), "ok.yaml")
        .expect("istiod's tls_params load");
}

/// Durations beyond `google.protobuf.Duration`'s range are refused, not overflowed (here by
/// the JSON reader; over xDS, by the translation: `translate::tests`).
#[test]
fn durations_beyond_protobufs_range_are_refused() {
    let e = error(
        r#"
resources:
- "@type": type.googleapis.com/envoy.config.cluster.v3.Cluster
  name: c
  type: EDS
  eds_cluster_config: { eds_config: { ads: {} } }
  connect_timeout: 315576000001s
"#,
    );
    assert!(e.contains("connect_timeout"), "{e}");
    assert!(e.contains("out of range"), "{e}");
}

/// HTTP/2 windows outside the protocol's range are refused (hyper would panic on them), as
/// Envoy's validation refuses them.
#[test]
fn http2_windows_outside_the_protocols_range_are_refused() {
    let doc = serde_json::json!({"static_resources": {"listeners": [{
        "name": "inbound",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 8080}},
        "filter_chains": [{"filters": [{"name": "hcm", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": "inbound",
            "http2_protocol_options": {"initial_connection_window_size": 4294967295u64},
            "route_config": {"name": "r", "virtual_hosts": [{"name": "all", "domains": ["*"],
                "routes": [{"match": {"prefix": "/"}, "non_forwarding_action": {}}]}]},
            "http_filters": [{"name": "router", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}}]}]}]}});
    let e = StaticResources::from_value(&doc, "bad.json")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("http2_protocol_options.initial_connection_window_size"),
        "{e}"
    );
    assert!(e.contains("65535..=2147483647"), "{e}");
}

#[test]
fn a_server_chain_with_routes_over_rds_is_refused() {
    // The server matches routes for their per-route policies; routes it cannot see would be
    // policies it never applies.
    let e = error(
        r#"
static_resources:
  listeners:
  - name: inbound
    address: { socket_address: { address: 127.0.0.1, port_value: 8080 } }
    filter_chains:
    - filters:
      - name: hcm
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          rds: { route_config_name: inbound }
          http_filters:
          - name: router
            typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }
"#,
    );
    assert!(
        e.contains("typed_config.rds: inbound routes over RDS are not followed"),
        "{e}"
    );
}

#[test]
fn retry_host_predicates_other_than_previous_hosts_are_refused() {
    let route = |predicate: &str| {
        format!(
            "{ROUTE_HEAD}    - match: {{ prefix: / }}\n      route:\n        cluster: c\n        retry_policy:\n          retry_host_predicate: [{predicate}]\n"
        )
    };
    let e = error(&route(
        r#"{ name: envoy.retry_host_predicates.omit_canary_hosts, typed_config: { "@type": type.googleapis.com/envoy.extensions.retry.host.omit_canary_hosts.v3.OmitCanaryHostsPredicate } }"#,
    ));
    assert!(
        e.contains("retry_host_predicate[0]: retry host predicate type.googleapis.com/envoy.extensions.retry.host.omit_canary_hosts.v3.OmitCanaryHostsPredicate is not supported"),
        "{e}"
    );
    StaticResources::from_str(
        &route(
            r#"{ name: envoy.retry_host_predicates.previous_hosts, typed_config: { "@type": type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate } }"#,
        ),
        "ok.yaml",
    )
    .expect("previous_hosts, typed as v3 asks");
}
