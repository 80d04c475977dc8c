//! VirtualService → `RouteConfiguration`, as istiod translates it.

use std::collections::HashMap;

use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::route::v3 as route;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3 as fault;
use envoy_types::pb::envoy::r#type::matcher::v3 as matcher;
use envoy_types::pb::google::protobuf::{Any, BoolValue, UInt32Value};
use envoy_types::util::pack_any;

use super::{Generator, NodeInfo, fraction, outbound, pb_duration};
use crate::config::istio::{self, StringMatch};
use crate::registry::Service;

/// Istio's retry policy for routes whose VirtualService sets none.
fn default_retry() -> route::RetryPolicy {
    route::RetryPolicy {
        retry_on: "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
            .into(),
        num_retries: Some(UInt32Value { value: 2 }),
        retriable_status_codes: vec![503],
        retry_host_predicate: vec![previous_hosts()],
        host_selection_retry_max_attempts: 5,
        ..Default::default()
    }
}

fn previous_hosts() -> route::retry_policy::RetryHostPredicate {
    use envoy_types::pb::envoy::extensions::retry::host::previous_hosts::v3::PreviousHostsPredicate;
    route::retry_policy::RetryHostPredicate {
        name: "envoy.retry_host_predicates.previous_hosts".into(),
        config_type: Some(
            route::retry_policy::retry_host_predicate::ConfigType::TypedConfig(pack_any(
                PreviousHostsPredicate::default(),
            )),
        ),
    }
}

pub(super) fn route_configuration(
    g: &Generator<'_>,
    node: &NodeInfo,
    name: &str,
    svc: &Service,
    port: u16,
) -> route::RouteConfiguration {
    let short = svc.hostname.split('.').next().unwrap_or(&svc.hostname);
    let mut domains = vec![svc.hostname.clone(), format!("{}:{port}", svc.hostname)];
    if svc.hostname.ends_with(crate::registry::DOMAIN_SUFFIX) {
        let ns_qualified = format!("{short}.{}", svc.namespace);
        for d in [
            short.to_owned(),
            ns_qualified.clone(),
            format!("{ns_qualified}.svc"),
        ] {
            domains.push(format!("{d}:{port}"));
            domains.push(d);
        }
    }
    let default_cluster = outbound(port, "", &svc.hostname);
    let routes = match g.virtual_service(svc) {
        Some((_, vs)) => vs
            .http
            .iter()
            .flat_map(|r| http_route(g, node, svc, port, r))
            .collect(),
        None => vec![forward_to(&default_cluster, g, svc)],
    };
    route::RouteConfiguration {
        name: name.to_owned(),
        virtual_hosts: vec![route::VirtualHost {
            name: format!("{}:{port}", svc.hostname),
            domains,
            routes,
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// The route a service gets without a VirtualService.
fn forward_to(cluster: &str, g: &Generator<'_>, svc: &Service) -> route::Route {
    route::Route {
        name: "default".into(),
        r#match: Some(route::RouteMatch {
            path_specifier: Some(route::route_match::PathSpecifier::Prefix("/".into())),
            ..Default::default()
        }),
        action: Some(route::route::Action::Route(route::RouteAction {
            cluster_specifier: Some(route::route_action::ClusterSpecifier::Cluster(
                cluster.into(),
            )),
            timeout: Some(pb_duration(std::time::Duration::ZERO)),
            retry_policy: Some(default_retry()),
            hash_policy: super::cluster::hash_policies(g, svc),
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// One HTTPRoute becomes one Envoy route per match (or one catch-all route).
fn http_route(
    g: &Generator<'_>,
    node: &NodeInfo,
    svc: &Service,
    port: u16,
    r: &istio::HttpRoute,
) -> Vec<route::Route> {
    let matches: Vec<Option<&istio::HttpMatchRequest>> = if r.matches.is_empty() {
        vec![None]
    } else {
        r.matches.iter().map(Some).collect()
    };
    matches
        .into_iter()
        .filter(|m| m.is_none_or(|m| applies_to(m, node, port)))
        .map(|m| route::Route {
            name: r.name.clone().unwrap_or_default(),
            r#match: Some(route_match(m)),
            action: Some(action(g, svc, port, r, m)),
            typed_per_filter_config: fault_config(r),
            request_headers_to_add: header_adds(
                r.headers.as_ref().and_then(|h| h.request.as_ref()),
            ),
            request_headers_to_remove: r
                .headers
                .as_ref()
                .and_then(|h| h.request.as_ref())
                .map(|o| o.remove.clone())
                .unwrap_or_default(),
            response_headers_to_add: header_adds(
                r.headers.as_ref().and_then(|h| h.response.as_ref()),
            ),
            response_headers_to_remove: r
                .headers
                .as_ref()
                .and_then(|h| h.response.as_ref())
                .map(|o| o.remove.clone())
                .unwrap_or_default(),
            ..Default::default()
        })
        .collect()
}

/// Conditions on the caller, decided here per node as istiod does.
fn applies_to(m: &istio::HttpMatchRequest, node: &NodeInfo, port: u16) -> bool {
    m.port.is_none_or(|p| p == u32::from(port))
        && m.source_labels
            .iter()
            .all(|(k, v)| node.labels.get(k) == Some(v))
        && m.source_namespace
            .as_ref()
            .is_none_or(|ns| *ns == node.namespace)
}

fn string_matcher(m: &StringMatch, ignore_case: bool) -> matcher::StringMatcher {
    use matcher::string_matcher::MatchPattern as P;
    let pattern = match m {
        StringMatch::Exact(s) => P::Exact(s.clone()),
        StringMatch::Prefix(s) => P::Prefix(s.clone()),
        StringMatch::Regex(r) => P::SafeRegex(matcher::RegexMatcher {
            regex: r.clone(),
            ..Default::default()
        }),
    };
    matcher::StringMatcher {
        match_pattern: Some(pattern),
        ignore_case,
    }
}

fn header(name: &str, m: &StringMatch, invert: bool) -> route::HeaderMatcher {
    // An empty prefix means "present" in Istio.
    let specifier = match m {
        StringMatch::Prefix(p) if p.is_empty() => {
            route::header_matcher::HeaderMatchSpecifier::PresentMatch(true)
        }
        _ => route::header_matcher::HeaderMatchSpecifier::StringMatch(string_matcher(m, false)),
    };
    route::HeaderMatcher {
        name: name.to_ascii_lowercase(),
        header_match_specifier: Some(specifier),
        invert_match: invert,
        ..Default::default()
    }
}

fn route_match(m: Option<&istio::HttpMatchRequest>) -> route::RouteMatch {
    use route::route_match::PathSpecifier as P;
    let Some(m) = m else {
        return route::RouteMatch {
            path_specifier: Some(P::Prefix("/".into())),
            ..Default::default()
        };
    };
    let path = match &m.uri {
        Some(StringMatch::Exact(p)) => P::Path(p.clone()),
        Some(StringMatch::Prefix(p)) => P::Prefix(p.clone()),
        Some(StringMatch::Regex(r)) => P::SafeRegex(matcher::RegexMatcher {
            regex: r.clone(),
            ..Default::default()
        }),
        None => P::Prefix("/".into()),
    };
    let mut headers: Vec<route::HeaderMatcher> =
        m.headers.iter().map(|(k, v)| header(k, v, false)).collect();
    headers.extend(m.without_headers.iter().map(|(k, v)| header(k, v, true)));
    for (pseudo, value) in [
        (":method", &m.method),
        (":authority", &m.authority),
        (":scheme", &m.scheme),
    ] {
        if let Some(v) = value {
            headers.push(header(pseudo, v, false));
        }
    }
    let query_parameters = m
        .query_params
        .iter()
        .map(|(k, v)| route::QueryParameterMatcher {
            name: k.clone(),
            query_parameter_match_specifier: Some(
                route::query_parameter_matcher::QueryParameterMatchSpecifier::StringMatch(
                    string_matcher(v, false),
                ),
            ),
        })
        .collect();
    route::RouteMatch {
        path_specifier: Some(path),
        case_sensitive: m.ignore_uri_case.then_some(BoolValue { value: false }),
        headers,
        query_parameters,
        ..Default::default()
    }
}

fn action(
    g: &Generator<'_>,
    svc: &Service,
    port: u16,
    r: &istio::HttpRoute,
    m: Option<&istio::HttpMatchRequest>,
) -> route::route::Action {
    if let Some(d) = &r.direct_response {
        use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
        let body = d.body.as_ref().and_then(|b| {
            b.string
                .clone()
                .map(Specifier::InlineString)
                .or_else(|| b.bytes.as_ref().map(|x| Specifier::InlineString(x.clone())))
        });
        return route::route::Action::DirectResponse(route::DirectResponseAction {
            status: d.status,
            body: body.map(|s| core::DataSource {
                specifier: Some(s),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    if let Some(rd) = &r.redirect {
        use route::redirect_action::{PathRewriteSpecifier, SchemeRewriteSpecifier};
        let code = match rd.redirect_code.unwrap_or(301) {
            302 => route::redirect_action::RedirectResponseCode::Found,
            303 => route::redirect_action::RedirectResponseCode::SeeOther,
            307 => route::redirect_action::RedirectResponseCode::TemporaryRedirect,
            308 => route::redirect_action::RedirectResponseCode::PermanentRedirect,
            _ => route::redirect_action::RedirectResponseCode::MovedPermanently,
        };
        return route::route::Action::Redirect(route::RedirectAction {
            host_redirect: rd.authority.clone().unwrap_or_default(),
            port_redirect: rd.port.unwrap_or(0),
            response_code: code as i32,
            scheme_rewrite_specifier: rd
                .scheme
                .clone()
                .map(SchemeRewriteSpecifier::SchemeRedirect),
            path_rewrite_specifier: rd.uri.clone().map(PathRewriteSpecifier::PathRedirect),
            ..Default::default()
        });
    }
    let cluster_for = |d: &istio::Destination| {
        let target = g
            .registry
            .resolve(&d.host, &svc.namespace)
            .map_or_else(|| d.host.clone(), |s| s.hostname.clone());
        let p = d.port.map_or(port, |p| p.number as u16);
        outbound(p, d.subset.as_deref().unwrap_or(""), &target)
    };
    use route::route_action::ClusterSpecifier;
    let specifier = match r.route.as_slice() {
        [single] => ClusterSpecifier::Cluster(cluster_for(&single.destination)),
        many => ClusterSpecifier::WeightedClusters(route::WeightedCluster {
            clusters: many
                .iter()
                .map(|d| route::weighted_cluster::ClusterWeight {
                    name: cluster_for(&d.destination),
                    weight: Some(UInt32Value {
                        value: d.weight.unwrap_or(0).max(0) as u32,
                    }),
                    request_headers_to_add: header_adds(
                        d.headers.as_ref().and_then(|h| h.request.as_ref()),
                    ),
                    response_headers_to_add: header_adds(
                        d.headers.as_ref().and_then(|h| h.response.as_ref()),
                    ),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }),
    };
    let retry_policy = match &r.retries {
        None => Some(default_retry()),
        Some(x) if x.attempts <= 0 => None,
        Some(x) => Some(retry_policy(x)),
    };
    let mut mirrors: Vec<route::route_action::RequestMirrorPolicy> = r
        .mirrors
        .iter()
        .map(|mp| {
            mirror(
                &cluster_for(&mp.destination),
                mp.percentage.map(|p| p.value),
            )
        })
        .collect();
    if let Some(d) = &r.mirror {
        let pct = r
            .mirror_percentage
            .map(|p| p.value)
            .or(r.mirror_percent.map(f64::from));
        mirrors.push(mirror(&cluster_for(d), pct));
    }
    let (prefix_rewrite, regex_rewrite, host) = match &r.rewrite {
        Some(rw) => {
            let regex = rw
                .uri_regex_rewrite
                .as_ref()
                .map(|x| matcher::RegexMatchAndSubstitute {
                    pattern: Some(matcher::RegexMatcher {
                        regex: x.pattern.clone(),
                        ..Default::default()
                    }),
                    substitution: x.rewrite.clone(),
                });
            // For an exact-path match, Istio rewrites the whole path with a regex.
            let exact = matches!(m.and_then(|m| m.uri.as_ref()), Some(StringMatch::Exact(_)));
            let (prefix, regex) = match (&rw.uri, exact) {
                (Some(uri), true) => (
                    String::new(),
                    Some(matcher::RegexMatchAndSubstitute {
                        pattern: Some(matcher::RegexMatcher {
                            regex: ".*".into(),
                            ..Default::default()
                        }),
                        substitution: uri.clone(),
                    }),
                ),
                (Some(uri), false) => (uri.clone(), regex),
                (None, _) => (String::new(), regex),
            };
            (prefix, regex, rw.authority.clone())
        }
        None => (String::new(), None, None),
    };
    // Istio: no timeout unless the VirtualService sets one.
    let timeout = pb_duration(r.timeout.map(|t| t.0).unwrap_or_default());
    route::route::Action::Route(route::RouteAction {
        cluster_specifier: Some(specifier),
        timeout: Some(timeout),
        // As istiod: the same limit as a stream duration, which is the only deadline gRPC's
        // xDS client reads (gRFC A31), and as the cap on the caller's grpc-timeout (0 = the
        // header is honoured uncapped).
        max_stream_duration: Some(route::route_action::MaxStreamDuration {
            max_stream_duration: Some(timeout),
            grpc_timeout_header_max: Some(timeout),
            grpc_timeout_header_offset: None,
        }),
        retry_policy,
        request_mirror_policies: mirrors,
        prefix_rewrite,
        regex_rewrite,
        host_rewrite_specifier: host
            .map(route::route_action::HostRewriteSpecifier::HostRewriteLiteral),
        hash_policy: super::cluster::hash_policies(g, svc),
        ..Default::default()
    })
}

fn mirror(cluster: &str, percent: Option<f64>) -> route::route_action::RequestMirrorPolicy {
    route::route_action::RequestMirrorPolicy {
        cluster: cluster.to_owned(),
        runtime_fraction: Some(core::RuntimeFractionalPercent {
            default_value: Some(fraction(percent.unwrap_or(100.0))),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn retry_policy(x: &istio::HttpRetry) -> route::RetryPolicy {
    // Istio accepts HTTP status codes among the conditions and turns them into
    // retriable-status-codes.
    let mut on = Vec::new();
    let mut codes = Vec::new();
    for part in x
        .retry_on
        .as_deref()
        .unwrap_or("connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes")
        .split(',')
    {
        let part = part.trim();
        match part.parse::<u32>() {
            Ok(code) => codes.push(code),
            Err(_) if !part.is_empty() => on.push(part.to_owned()),
            Err(_) => {}
        }
    }
    if !codes.is_empty() && !on.iter().any(|o| o == "retriable-status-codes") {
        on.push("retriable-status-codes".into());
    }
    if codes.is_empty() && on.iter().any(|o| o == "retriable-status-codes") {
        codes.push(503);
    }
    route::RetryPolicy {
        retry_on: on.join(","),
        num_retries: Some(UInt32Value {
            value: x.attempts as u32,
        }),
        per_try_timeout: x.per_try_timeout.map(|t| pb_duration(t.0)),
        retriable_status_codes: codes,
        retry_host_predicate: if x.retry_ignore_previous_hosts.unwrap_or(true) {
            vec![previous_hosts()]
        } else {
            vec![]
        },
        host_selection_retry_max_attempts: 5,
        retry_back_off: x.backoff.map(|b| route::retry_policy::RetryBackOff {
            base_interval: Some(pb_duration(b.0)),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn fault_config(r: &istio::HttpRoute) -> HashMap<String, Any> {
    let Some(f) = &r.fault else {
        return HashMap::new();
    };
    use envoy_types::pb::envoy::extensions::filters::common::fault::v3 as common;
    let delay = f.delay.as_ref().and_then(|d| {
        let fixed = d.fixed_delay?;
        Some(common::FaultDelay {
            percentage: Some(fraction(
                d.percentage
                    .map(|p| p.value)
                    .or(d.percent.map(f64::from))
                    .unwrap_or(100.0),
            )),
            fault_delay_secifier: Some(common::fault_delay::FaultDelaySecifier::FixedDelay(
                pb_duration(fixed.0),
            )),
        })
    });
    let abort = f.abort.as_ref().and_then(|a| {
        let error_type = if let Some(s) = a.http_status {
            fault::fault_abort::ErrorType::HttpStatus(s)
        } else {
            fault::fault_abort::ErrorType::GrpcStatus(grpc_code(a.grpc_status.as_deref()?)?)
        };
        Some(fault::FaultAbort {
            percentage: Some(fraction(a.percentage.map(|p| p.value).unwrap_or(100.0))),
            error_type: Some(error_type),
            ..Default::default()
        })
    });
    let config = fault::HttpFault {
        delay,
        abort,
        ..Default::default()
    };
    HashMap::from([("envoy.filters.http.fault".to_owned(), pack_any(config))])
}

/// gRPC status names as Istio accepts them.
fn grpc_code(name: &str) -> Option<u32> {
    const CODES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    CODES
        .iter()
        .position(|c| c.eq_ignore_ascii_case(name))
        .map(|i| i as u32)
        .or_else(|| name.parse().ok())
}

fn header_adds(ops: Option<&istio::HeaderOperations>) -> Vec<core::HeaderValueOption> {
    let Some(ops) = ops else { return vec![] };
    let opt = |k: &String, v: &String, action: core::header_value_option::HeaderAppendAction| {
        core::HeaderValueOption {
            header: Some(core::HeaderValue {
                key: k.clone(),
                value: v.clone(),
                ..Default::default()
            }),
            append_action: action as i32,
            ..Default::default()
        }
    };
    use core::header_value_option::HeaderAppendAction as A;
    ops.set
        .iter()
        .map(|(k, v)| opt(k, v, A::OverwriteIfExistsOrAdd))
        .chain(
            ops.add
                .iter()
                .map(|(k, v)| opt(k, v, A::AppendIfExistsOrAdd)),
        )
        .collect()
}
