//! Translation of fixtures that exercise every match kind, action, cluster policy, endpoint
//! field and HTTP filter the model carries; matching is checked on real requests.

use std::time::Duration;

use mesh_core::StaticResources;
use mesh_core::model::*;
use mesh_core::xds::{Resource, ResourceType};

fn load(file: &str) -> StaticResources {
    let path = format!("{}/fixtures/{file}", env!("CARGO_MANIFEST_DIR"));
    StaticResources::from_file(&path).unwrap_or_else(|e| panic!("{e}"))
}

fn routes() -> std::sync::Arc<RouteTable> {
    match load("routes_all_kinds.yaml").get(ResourceType::RouteConfiguration, "all-kinds") {
        Some(Resource::RouteConfiguration(t)) => t.clone(),
        other => panic!("{other:?}"),
    }
}

/// The route name chosen for a request (sample 0: runtime fractions hit).
fn pick(table: &RouteTable, req: http::Request<()>, sample: u32) -> Option<String> {
    table
        .find(&RequestView::from_request(&req), sample)
        .map(|(_, r)| r.name.to_string())
}

fn get(uri: &str) -> http::request::Builder {
    http::Request::get(uri)
}

#[test]
fn every_path_match_kind() {
    let t = routes();
    let name = |uri: &str| pick(&t, get(uri).body(()).unwrap(), 999_999);
    assert_eq!(
        name("http://api.example.com/exact").as_deref(),
        Some("exact-path")
    );
    assert_eq!(
        name("http://api.example.com/exact/more").as_deref(),
        Some("catch-all")
    );
    assert_eq!(
        name("http://api.example.com/items/42").as_deref(),
        Some("regex")
    );
    assert_eq!(
        name("http://api.example.com/items/42x").as_deref(),
        Some("catch-all"),
        "safe_regex is a full match"
    );
    assert_eq!(
        name("http://api.example.com/api").as_deref(),
        Some("separated")
    );
    assert_eq!(
        name("http://api.example.com/api/v1").as_deref(),
        Some("separated")
    );
    assert_eq!(
        name("http://api.example.com/apiv1").as_deref(),
        Some("catch-all")
    );
    assert_eq!(
        name("http://api.example.com/case/x").as_deref(),
        Some("case-insensitive")
    );
    assert_eq!(
        name("http://api.example.com/frac").as_deref(),
        Some("catch-all"),
        "a sample above 25 % misses"
    );
    assert_eq!(
        pick(&t, get("http://api.example.com/frac").body(()).unwrap(), 10).as_deref(),
        Some("fraction")
    );
}

#[test]
fn virtual_host_domains() {
    let t = routes();
    assert_eq!(&*t.virtual_host("api.example.com").unwrap().name, "main");
    assert_eq!(&*t.virtual_host("www.example.com").unwrap().name, "main");
    // Envoy compares the authority with its port, so `*` wins over `*.example.com` here.
    assert_eq!(
        &*t.virtual_host("www.example.com:8080").unwrap().name,
        "fallback"
    );
    assert_eq!(&*t.virtual_host("api.other").unwrap().name, "main");
    assert_eq!(&*t.virtual_host("elsewhere").unwrap().name, "fallback");
}

#[test]
fn every_header_and_query_match_kind() {
    let t = routes();
    let full = || {
        get("http://api.example.com/h")
            .header("x-exact", "a")
            .header("x-regex", "bbb")
            .header("x-range", "5")
            .header("x-present", "")
            .header("x-prefix", "prefix")
            .header("x-suffix", "suffix")
            .header("x-contains", "amidst")
            .header("x-string", "s")
            .header("x-not", "yes")
    };
    assert_eq!(
        pick(&t, full().body(()).unwrap(), 0).as_deref(),
        Some("headers")
    );
    // Each matcher alone can fail the route.
    for (h, bad) in [
        ("x-exact", "b"),
        ("x-regex", "bc"),
        ("x-range", "10"),
        ("x-prefix", "xpre"),
        ("x-suffix", "fixx"),
        ("x-contains", "none"),
        ("x-string", "t"),
    ] {
        let mut req = full().body(()).unwrap();
        req.headers_mut().insert(h, bad.parse().unwrap());
        assert_eq!(
            pick(&t, req, 0).as_deref(),
            Some("catch-all"),
            "{h}: {bad} must not match"
        );
    }
    let mut inverted = full().body(()).unwrap();
    inverted
        .headers_mut()
        .insert("x-not", "no".parse().unwrap());
    assert_eq!(
        pick(&t, inverted, 0).as_deref(),
        Some("catch-all"),
        "invert_match"
    );
    let mut absent = full().body(()).unwrap();
    absent.headers_mut().remove("x-not");
    assert_eq!(
        pick(&t, absent, 0).as_deref(),
        Some("catch-all"),
        "Envoy: an inverted value matcher fails on a missing header"
    );
    let mut missing = full().body(()).unwrap();
    missing.headers_mut().remove("x-present");
    assert_eq!(
        pick(&t, missing, 0).as_deref(),
        Some("catch-all"),
        "present_match"
    );

    assert_eq!(
        pick(
            &t,
            get("http://api.example.com/q?user=jason&debug")
                .body(())
                .unwrap(),
            0
        )
        .as_deref(),
        Some("query")
    );
    assert_eq!(
        pick(
            &t,
            get("http://api.example.com/q?user=jason").body(()).unwrap(),
            0
        )
        .as_deref(),
        Some("catch-all")
    );
    assert_eq!(
        pick(
            &t,
            get("http://api.example.com/q?user=bob&debug=1")
                .body(())
                .unwrap(),
            0
        )
        .as_deref(),
        Some("catch-all")
    );
    let grpc = get("http://api.example.com/grpc.Service/Call")
        .header("content-type", "application/grpc")
        .body(())
        .unwrap();
    assert_eq!(pick(&t, grpc, 0).as_deref(), Some("grpc"));
    let not_grpc = get("http://api.example.com/grpc.Service/Call")
        .body(())
        .unwrap();
    assert_eq!(pick(&t, not_grpc, 0).as_deref(), Some("catch-all"));
}

fn route<'a>(t: &'a RouteTable, name: &str) -> &'a Route {
    t.virtual_hosts[0]
        .routes
        .iter()
        .find(|r| &*r.name == name)
        .unwrap_or_else(|| panic!("route {name}"))
}

fn forward<'a>(t: &'a RouteTable, name: &str) -> &'a ForwardAction {
    match &route(t, name).action {
        Action::Forward(f) => f,
        other => panic!("{name}: {other:?}"),
    }
}

#[test]
fn every_action() {
    let t = routes();
    let vh = &t.virtual_hosts[0];
    assert!(vh.include_attempt_count);
    assert_eq!(vh.retry.as_ref().unwrap().num_retries, 2);
    assert_eq!(t.headers.request_add[0].name, "x-table");

    assert!(
        matches!(&route(&t, "exact-path").action, Action::DirectResponse { status, body } if *status == 200 && body == "exact")
    );

    let regex = forward(&t, "regex");
    let rw = regex.regex_rewrite.as_ref().unwrap();
    assert_eq!(
        rw.pattern.replace_all("/items/42", &*rw.substitution),
        "/v2/items/42"
    );
    assert_eq!(
        regex.timeout,
        Some(DEFAULT_ROUTE_TIMEOUT),
        "Envoy's 15 s default"
    );
    assert_eq!(
        forward(&t, "separated").prefix_rewrite.as_deref(),
        Some("/internal")
    );

    let w = forward(&t, "weighted");
    let ClusterSpecifier::Weighted(split) = &w.cluster else {
        panic!()
    };
    assert_eq!(split.total, 100);
    assert_eq!(split.clusters[0].headers.request_add[0].name, "x-v");
    assert!(
        matches!(&split.clusters[1].host_rewrite, Some(HostRewrite::Literal(h)) if &**h == "v2.internal")
    );
    assert_eq!(w.timeout, Some(Duration::from_secs(3)));
    assert_eq!(w.idle_timeout, Some(Duration::from_secs(60)));
    let retry = w.retry.as_ref().unwrap();
    for on in [
        RetryOn::GATEWAY_ERROR,
        RetryOn::CONNECT_FAILURE,
        RetryOn::RETRIABLE_STATUS_CODES,
        RetryOn::RETRIABLE_HEADERS,
        RetryOn::RESET,
        RetryOn::GRPC_UNAVAILABLE,
        RetryOn::GRPC_CANCELLED,
    ] {
        assert!(retry.retry_on.contains(on), "{on:?}");
    }
    assert!(!retry.retry_on.contains(RetryOn::FIVE_XX));
    assert_eq!(retry.num_retries, 3);
    assert_eq!(retry.per_try_timeout, Some(Duration::from_millis(500)));
    assert_eq!(&*retry.retriable_status_codes, &[409, 429]);
    assert_eq!(retry.retriable_headers.len(), 1);
    assert_eq!(
        (retry.backoff_base, retry.backoff_max),
        (Duration::from_millis(10), Duration::from_millis(200))
    );
    assert!(retry.avoid_previous_hosts);
    assert_eq!(retry.host_selection_max_attempts, 5);
    assert_eq!(
        w.hedge,
        Some(HedgePolicy {
            on_per_try_timeout: true
        })
    );

    let by_header = forward(&t, "by-header");
    assert!(matches!(&by_header.cluster, ClusterSpecifier::Header(h) if h == "x-cluster"));
    assert_eq!(
        by_header.timeout, None,
        "timeout 0s disables the route timeout"
    );

    let hashing = forward(&t, "hashing");
    assert!(matches!(&hashing.hash_policies[0].source, HashSource::Header(h) if h == "x-user"));
    assert!(
        matches!(&hashing.hash_policies[1].source, HashSource::Cookie { name, ttl: Some(ttl), .. } if &**name == "session" && ttl.as_secs() == 3600)
    );
    assert!(hashing.hash_policies[1].terminal);
    assert!(matches!(
        hashing.hash_policies[2].source,
        HashSource::SourceIp
    ));
    assert!(
        matches!(&hashing.hash_policies[3].source, HashSource::QueryParameter(q) if &**q == "id")
    );

    let grpc = forward(&t, "grpc");
    let msd = grpc.max_stream_duration.unwrap();
    assert_eq!(msd.max, Some(Duration::from_secs(30)));
    assert_eq!(msd.grpc_timeout_header_max, Some(Duration::from_secs(10)));
    assert_eq!(
        msd.grpc_timeout_header_offset,
        Some(Duration::from_millis(100))
    );

    let mirror = forward(&t, "mirror");
    assert_eq!(mirror.mirrors.len(), 2);
    assert_eq!(mirror.mirrors[0].fraction, Fraction::from_percent(50.0));
    assert_eq!(mirror.mirrors[1].fraction, Fraction::ALWAYS);
    assert!(mirror.mirrors[1].disable_shadow_host_suffix);
    assert!(matches!(
        forward(&t, "host-rewrites").host_rewrite,
        Some(HostRewrite::Auto)
    ));
    assert!(
        matches!(&forward(&t, "host-from-header").host_rewrite, Some(HostRewrite::Header(h)) if h == "x-host")
    );

    let Action::Redirect(rd) = &route(&t, "redirect").action else {
        panic!()
    };
    assert_eq!(rd.scheme.as_deref(), Some("https"));
    assert_eq!(rd.host.as_deref(), Some("new.example.com"));
    assert_eq!(rd.port, Some(8443));
    assert!(matches!(&rd.path, Some(RedirectPath::Prefix(p)) if &**p == "/new"));
    assert_eq!(rd.status, http::StatusCode::TEMPORARY_REDIRECT);
    assert!(rd.strip_query);

    let m = route(&t, "mutations");
    let adds: Vec<_> = m
        .headers
        .request_add
        .iter()
        .map(|h| (h.name.as_str(), h.append))
        .collect();
    assert_eq!(
        adds,
        [
            ("x-added", AppendAction::AppendIfExistsOrAdd),
            ("x-only-if-absent", AppendAction::AddIfAbsent),
            ("x-overwrite", AppendAction::OverwriteIfExistsOrAdd)
        ]
    );
    assert_eq!(m.headers.request_remove[0], "x-secret");
    assert_eq!(m.headers.response_add[0].name, "x-served-by");
    assert_eq!(m.headers.response_remove[0], "server");
    let Some(FilterOverride::Config(FilterConfig::Fault(f))) =
        m.filter_overrides.get("envoy.filters.http.fault")
    else {
        panic!()
    };
    assert!(
        matches!(f.abort, Some(FaultAbort { kind: AbortKind::Http(s), fraction }) if s == 503 && fraction == Fraction::from_percent(10.0))
    );
    assert!(
        matches!(f.delay, Some(FaultDelay { kind: DelayKind::Fixed(d), fraction }) if d == Duration::from_millis(200) && fraction == Fraction::from_percent(10.0))
    );
    assert!(matches!(
        m.filter_overrides.get("envoy.filters.http.rbac"),
        Some(FilterOverride::Disabled)
    ));

    let refs = t.referenced_clusters();
    for c in [
        "items",
        "api",
        "headers",
        "v1",
        "v2",
        "ring",
        "primary",
        "shadow",
        "shadow-all",
        "default",
    ] {
        assert!(refs.iter().any(|r| &**r == c), "{c} is referenced");
    }
}

fn cluster(r: &StaticResources, name: &str) -> std::sync::Arc<Cluster> {
    match r.get(ResourceType::Cluster, name) {
        Some(Resource::Cluster(c)) => c.clone(),
        other => panic!("{name}: {other:?}"),
    }
}

#[test]
fn every_cluster_policy() {
    let r = load("clusters_endpoints.yaml");
    let rr = cluster(&r, "rr");
    assert!(
        matches!(&rr.discovery, Discovery::Eds { service_name } if &**service_name == "rr-eds")
    );
    assert_eq!(rr.connect_timeout, Duration::from_millis(250));
    assert_eq!(rr.lb, LbPolicy::RoundRobin);
    assert_eq!(
        rr.circuit_breakers,
        CircuitBreakers {
            max_connections: 10,
            max_pending_requests: 20,
            max_requests: 30,
            max_retries: 4,
            retry_budget: Some(RetryBudget {
                budget_per_mille: 250,
                min_retry_concurrency: 5
            }),
        },
        "the DEFAULT priority thresholds, not HIGH"
    );
    let od = rr.outlier_detection.as_ref().unwrap();
    assert_eq!(
        (
            od.consecutive_5xx,
            od.consecutive_gateway_failure,
            od.consecutive_local_origin_failure
        ),
        (3, 2, 4)
    );
    assert!(od.split_external_local_origin_errors);
    assert_eq!(
        (od.interval, od.base_ejection_time, od.max_ejection_time),
        (
            Duration::from_secs(1),
            Duration::from_secs(5),
            Duration::from_secs(60)
        )
    );
    assert_eq!(od.max_ejection_percent, 50);
    assert_eq!(
        (
            od.enforcing_consecutive_gateway_failure,
            od.enforcing_success_rate,
            od.enforcing_failure_percentage
        ),
        (100, 0, 100)
    );
    assert_eq!(
        (
            od.success_rate_minimum_hosts,
            od.success_rate_request_volume,
            od.success_rate_stdev_factor
        ),
        (3, 10, 1500)
    );
    assert_eq!(
        (
            od.failure_percentage_threshold,
            od.failure_percentage_minimum_hosts,
            od.failure_percentage_request_volume
        ),
        (60, 2, 20)
    );
    assert_eq!(rr.healthy_panic_threshold, 30.0);
    assert!(rr.locality_weighted);
    assert_eq!(rr.protocol, UpstreamProtocol::Http2);
    let tls = rr.tls.as_ref().unwrap();
    assert_eq!(
        tls.sni.as_deref(),
        Some("outbound_.9080_._.reviews.default.svc.cluster.local")
    );
    assert_eq!(
        tls.identity,
        Some(CertSource::Provider {
            instance: "default".into(),
            certificate_name: "default".into()
        })
    );
    let v = tls.validation.as_ref().unwrap();
    assert_eq!(
        v.ca,
        CertSource::Provider {
            instance: "default".into(),
            certificate_name: "ROOTCA".into()
        }
    );
    assert_eq!(v.san_matchers[0].kind, SanKind::Uri);
    assert!(
        v.san_matchers[0]
            .matcher
            .matches("spiffe://cluster.local/ns/default/sa/bookinfo-reviews")
    );
    assert_eq!(tls.alpn.len(), 3);

    assert_eq!(
        cluster(&r, "least").lb,
        LbPolicy::LeastRequest {
            choice_count: 3,
            active_request_bias: 1.5
        }
    );
    assert_eq!(
        cluster(&r, "ring").lb,
        LbPolicy::RingHash {
            min_ring_size: 64,
            max_ring_size: 4096
        }
    );
    assert_eq!(cluster(&r, "random").lb, LbPolicy::Random);
    assert_eq!(
        cluster(&r, "maglev").lb,
        LbPolicy::Maglev { table_size: 5003 }
    );
    assert_eq!(
        cluster(&r, "policy-list").lb,
        LbPolicy::RingHash {
            min_ring_size: 128,
            max_ring_size: 8 * 1024 * 1024
        },
        "gRFC A52: the first supported policy, through wrr_locality"
    );
    assert!(
        matches!(&cluster(&r, "dns").discovery, Discovery::Dns { hosts, logical: false, .. } if hosts[0] == ("details.local".into(), 9080))
    );
}

#[test]
fn every_endpoint_field() {
    let r = load("clusters_endpoints.yaml");
    let Some(Resource::ClusterLoadAssignment(e)) =
        r.get(ResourceType::ClusterLoadAssignment, "rr-eds")
    else {
        panic!()
    };
    assert_eq!(e.overprovisioning_factor, 200);
    assert_eq!(&*e.drop_overloads[0].category, "throttle");
    assert_eq!(e.drop_overloads[0].fraction, Fraction::from_percent(5.0));
    assert_eq!(e.priorities.len(), 2);
    let p0 = &e.priorities[0].localities;
    assert_eq!(p0.len(), 2);
    assert_eq!(
        (&*p0[0].locality.region, &*p0[0].locality.zone, p0[0].weight),
        ("us", "us-1a", Some(3))
    );
    let eps = &p0[0].endpoints;
    assert_eq!(eps[0].weight, 2);
    assert_eq!(eps[0].health, HealthStatus::Healthy);
    assert_eq!(eps[1].address, "[fd00::2]:80".parse().unwrap());
    assert_eq!(eps[1].health, HealthStatus::Draining);
    let extra = eps[1].extra.as_ref().unwrap();
    assert_eq!(&*extra.hostname, "reviews-2");
    assert_eq!(
        &*extra.additional_addresses,
        &["10.0.0.2:80".parse().unwrap()]
    );
    let healths: Vec<_> = p0[1].endpoints.iter().map(|e| e.health).collect();
    assert_eq!(healths, [HealthStatus::Unhealthy, HealthStatus::Degraded]);
    assert!(!HealthStatus::Degraded.is_healthy() && HealthStatus::Unknown.is_healthy());
    assert_eq!(&*e.priorities[1].localities[0].locality.region, "eu");
    assert_eq!(e.endpoints().count(), 5);
}

#[test]
fn inbound_listener_with_every_filter() {
    let r = load("inbound_listener.yaml");
    let Some(Resource::Listener(l)) = r.get(
        ResourceType::Listener,
        "xds.istio.io/grpc/lds/inbound/0.0.0.0:9080",
    ) else {
        panic!()
    };
    let ListenerKind::Socket(s) = &l.kind else {
        panic!("a socket listener")
    };
    assert_eq!(s.address, Some("0.0.0.0:9080".parse().unwrap()));
    let fc = &s.filter_chains[0];
    assert_eq!(fc.matcher.destination_port, Some(9080));
    assert_eq!(fc.matcher.transport_protocol.as_deref(), Some("tls"));
    assert_eq!(fc.matcher.application_protocols.len(), 2);
    assert!(fc.matcher.source_prefix_ranges[0].contains("10.1.2.3".parse().unwrap()));
    let tls = fc.tls.as_ref().unwrap();
    assert!(tls.require_client_certificate);
    assert_eq!(
        tls.identity,
        CertSource::Provider {
            instance: "default".into(),
            certificate_name: "default".into()
        }
    );
    let NetworkFilter::Http(h) = &fc.filter else {
        panic!()
    };
    assert!(
        matches!(&h.routes, RouteSource::Inline(t) if matches!(t.virtual_hosts[0].routes[0].action, Action::NonForwarding))
    );
    let kinds: Vec<&str> = h.http_filters.iter().map(|f| f.config.kind()).collect();
    assert_eq!(
        kinds,
        [
            "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault",
            "rbac",
            "rbac",
            "jwt_authn",
            "local_ratelimit",
            "router"
        ],
        "the optional fault filter is skipped on a server, as gRPC does"
    );

    let Some(Resource::Listener(api)) = r.get(ResourceType::Listener, "reviews:9080") else {
        panic!()
    };
    let ListenerKind::Api(client) = &api.kind else {
        panic!("an API listener")
    };
    let FilterConfig::Fault(fault) = &client.http_filters[0].config else {
        panic!()
    };
    assert!(matches!(
        fault.abort,
        Some(FaultAbort {
            kind: AbortKind::Grpc(14),
            ..
        })
    ));
    assert_eq!(fault.max_active_faults, Some(10));
    assert_eq!(fault.headers.len(), 1);

    let FilterConfig::Rbac(deny) = &h.http_filters[1].config else {
        panic!()
    };
    let rules = deny.rules.as_ref().unwrap();
    assert_eq!(rules.action, RbacAction::Deny);
    assert_eq!(&*deny.stat_prefix, "istio_dry_run_deny_");
    let Permission::And(parts) = &rules.policies[0].1.permissions[0] else {
        panic!()
    };
    assert!(matches!(&parts[0], Permission::Header(h) if &*h.name == ":method"));
    assert!(
        matches!(&parts[1], Permission::Not(inner) if matches!(**inner, Permission::UrlPath(_)))
    );

    let FilterConfig::Rbac(allow) = &h.http_filters[2].config else {
        panic!()
    };
    let policy = &allow.rules.as_ref().unwrap().policies[0].1;
    assert!(
        matches!(&policy.permissions[0], Permission::Or(p) if matches!(p[1], Permission::DestinationPortRange(9000, 9100)))
    );
    let Principal::Or(ids) = &policy.principals[0] else {
        panic!()
    };
    assert!(
        matches!(&ids[0], Principal::Authenticated(Some(m)) if m.matches("spiffe://cluster.local/ns/default/sa/bookinfo-productpage"))
    );
    assert!(matches!(&ids[1], Principal::SourceIp(c) if c.prefix_len == 32));
    let Principal::Metadata(md) = &policy.principals[1] else {
        panic!()
    };
    assert_eq!((&*md.filter, md.path.len()), ("istio_authn", 2));
    assert!(
        matches!(&md.value, ValueMatch::ListAny(inner) if matches!(**inner, ValueMatch::String(_)))
    );
    assert!(allow.shadow_rules.is_some());

    let FilterConfig::Jwt(jwt) = &h.http_filters[3].config else {
        panic!()
    };
    let (name, p) = &jwt.providers[0];
    assert_eq!(&**name, "origins-0");
    assert_eq!(&*p.issuer, "testing@secure.istio.io");
    assert!(p.forward);
    assert_eq!(p.from_headers[0].0, "authorization");
    assert_eq!(p.claim_to_headers[0].1, "x-jwt-sub");
    assert!(
        matches!(&jwt.rules[0].1, JwtRequirement::Any(r) if matches!(r[1], JwtRequirement::AllowMissing))
    );

    let FilterConfig::LocalRateLimit(rl) = &h.http_filters[4].config else {
        panic!()
    };
    assert_eq!(
        rl.bucket,
        Some(TokenBucket {
            max_tokens: 10,
            tokens_per_fill: 10,
            fill_interval: Duration::from_secs(1)
        })
    );
    assert_eq!(
        (rl.enabled, rl.enforced),
        (Fraction::ALWAYS, Fraction::ALWAYS)
    );
    assert_eq!(rl.status, http::StatusCode::TOO_MANY_REQUESTS);

    let default = s.default_filter_chain.as_ref().unwrap();
    assert!(
        matches!(&default.filter, NetworkFilter::TcpProxy { cluster } if &**cluster == "PassthroughCluster")
    );
}
