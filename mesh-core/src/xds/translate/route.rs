//! `RouteConfiguration` → [`RouteTable`].

use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::route::v3 as pb;

use super::filter::filter_overrides;
use super::matcher::{header_matcher, query_matcher, regex};
use super::{At, FieldError, each, fraction, header_name, opt_duration};
use crate::model::*;

/// Header mutations of any message carrying Envoy's four `*_headers_to_*` fields.
macro_rules! mutations {
    ($m:expr) => {
        header_mutations(
            &$m.request_headers_to_add,
            &$m.request_headers_to_remove,
            &$m.response_headers_to_add,
            &$m.response_headers_to_remove,
        )
    };
}

/// Translates and validates a `RouteConfiguration`.
pub fn route_configuration(rc: &pb::RouteConfiguration) -> Result<RouteTable, FieldError> {
    if rc.vhds.is_some() {
        return Err(FieldError::new("VHDS is not supported").at("vhds"));
    }
    let virtual_hosts = each("virtual_hosts", &rc.virtual_hosts, virtual_host)?;
    let mut seen: Vec<&DomainMatcher> = Vec::new();
    for (i, vh) in virtual_hosts.iter().enumerate() {
        for (j, d) in vh.domains.iter().enumerate() {
            if seen.contains(&d) {
                return Err(
                    FieldError::new("domain appears in more than one virtual host")
                        .at(format!("virtual_hosts[{i}].domains[{j}]")),
                );
            }
            seen.push(d);
        }
    }
    Ok(RouteTable {
        name: rc.name.as_str().into(),
        virtual_hosts,
        headers: mutations!(rc)?,
    })
}

fn virtual_host(vh: &pb::VirtualHost) -> Result<VirtualHost, FieldError> {
    if vh.domains.is_empty() {
        return Err(FieldError::new("at least one domain is required").at("domains"));
    }
    let domains = each("domains", &vh.domains, |d| {
        DomainMatcher::parse(d).map_err(|e| FieldError::new(e.to_string()))
    })?;
    let routes = each("routes", &vh.routes, route)?;
    Ok(VirtualHost {
        name: vh.name.as_str().into(),
        domains,
        routes,
        retry: optional_retry(vh.retry_policy.as_ref())?,
        hedge: vh.hedge_policy.as_ref().map(hedge_policy),
        headers: mutations!(vh)?,
        filter_overrides: filter_overrides(&vh.typed_per_filter_config)
            .at("typed_per_filter_config")?,
        mirrors: each(
            "request_mirror_policies",
            &vh.request_mirror_policies,
            mirror_policy,
        )?,
        include_attempt_count: vh.include_request_attempt_count,
    })
}

fn route(r: &pb::Route) -> Result<Route, FieldError> {
    let m = r
        .r#match
        .as_ref()
        .ok_or_else(|| FieldError::new("is required").at("match"))?;
    let matcher = route_match(m).at("match")?;
    use pb::route::Action as A;
    let action = match &r.action {
        Some(A::Route(ra)) => Action::Forward(Box::new(route_action(ra).at("route")?)),
        Some(A::Redirect(rd)) => Action::Redirect(Box::new(redirect(rd).at("redirect")?)),
        Some(A::DirectResponse(d)) => {
            let status = http::StatusCode::from_u16(d.status as u16)
                .ok()
                .filter(|_| (200..600).contains(&d.status))
                .ok_or_else(|| {
                    FieldError::new(format!("invalid status {}", d.status))
                        .at("direct_response.status")
                })?;
            let body = match d.body.as_ref().and_then(|b| b.specifier.as_ref()) {
                None => bytes::Bytes::new(),
                Some(core::data_source::Specifier::InlineString(s)) => {
                    bytes::Bytes::copy_from_slice(s.as_bytes())
                }
                Some(core::data_source::Specifier::InlineBytes(b)) => {
                    bytes::Bytes::copy_from_slice(b)
                }
                Some(_) => {
                    return Err(FieldError::new("only inline bodies are supported")
                        .at("direct_response.body"));
                }
            };
            Action::DirectResponse { status, body }
        }
        Some(A::NonForwardingAction(_)) => Action::NonForwarding,
        Some(A::FilterAction(_)) => {
            return Err(FieldError::new("filter_action is not supported").at("filter_action"));
        }
        None => {
            return Err(FieldError::new(
                "a route needs an action (route, redirect or direct_response)",
            ));
        }
    };
    Ok(Route {
        name: r.name.as_str().into(),
        matcher,
        action,
        headers: mutations!(r)?,
        filter_overrides: filter_overrides(&r.typed_per_filter_config)
            .at("typed_per_filter_config")?,
    })
}

pub(crate) fn route_match(m: &pb::RouteMatch) -> Result<RouteMatcher, FieldError> {
    use pb::route_match::PathSpecifier as P;
    let path = match &m.path_specifier {
        Some(P::Prefix(p)) => PathMatch::Prefix(p.as_str().into()),
        Some(P::Path(p)) => PathMatch::Exact(p.as_str().into()),
        Some(P::SafeRegex(r)) => PathMatch::Regex(regex(r).at("safe_regex")?),
        Some(P::PathSeparatedPrefix(p)) => {
            if p.contains(['?', '#']) || (p.len() > 1 && p.ends_with('/')) {
                return Err(FieldError::new(format!(
                    "{p:?} must not contain ? or # nor end with /"
                ))
                .at("path_separated_prefix"));
            }
            PathMatch::SeparatedPrefix(p.as_str().into())
        }
        Some(P::ConnectMatcher(_)) => PathMatch::Connect,
        Some(P::PathMatchPolicy(_)) => {
            return Err(
                FieldError::new("path_match_policy is not supported").at("path_match_policy")
            );
        }
        None => {
            return Err(FieldError::new(
                "a path specifier (prefix, path, safe_regex, path_separated_prefix) is required",
            ));
        }
    };
    let runtime_fraction = match &m.runtime_fraction {
        Some(rf) => Some(
            rf.default_value
                .as_ref()
                .map(fraction)
                .transpose()
                .at("runtime_fraction.default_value")?
                .unwrap_or(Fraction { per_million: 0 }),
        ),
        None => None,
    };
    if !m.dynamic_metadata.is_empty() {
        return Err(
            FieldError::new("dynamic_metadata matching is not supported").at("dynamic_metadata"),
        );
    }
    Ok(RouteMatcher {
        path,
        case_sensitive: m.case_sensitive.as_ref().is_none_or(|b| b.value),
        headers: each("headers", &m.headers, header_matcher)?,
        query_params: each("query_parameters", &m.query_parameters, query_matcher)?,
        runtime_fraction,
        grpc: m.grpc.is_some(),
    })
}

fn route_action(ra: &pb::RouteAction) -> Result<ForwardAction, FieldError> {
    use pb::route_action::ClusterSpecifier as C;
    let cluster = match &ra.cluster_specifier {
        Some(C::Cluster(c)) if c.is_empty() => {
            return Err(FieldError::new("must not be empty").at("cluster"));
        }
        Some(C::Cluster(c)) => ClusterSpecifier::Cluster(c.as_str().into()),
        Some(C::ClusterHeader(h)) => ClusterSpecifier::Header(header_name(h).at("cluster_header")?),
        Some(C::WeightedClusters(w)) => {
            ClusterSpecifier::Weighted(weighted_clusters(w).at("weighted_clusters")?)
        }
        Some(C::ClusterSpecifierPlugin(_)) | Some(C::InlineClusterSpecifierPlugin(_)) => {
            return Err(
                FieldError::new("cluster specifier plugins are not supported")
                    .at("cluster_specifier_plugin"),
            );
        }
        None => {
            return Err(FieldError::new(
                "one of cluster, cluster_header or weighted_clusters is required",
            ));
        }
    };
    use pb::route_action::HostRewriteSpecifier as H;
    let host_rewrite = match &ra.host_rewrite_specifier {
        Some(H::HostRewriteLiteral(h)) => Some(HostRewrite::Literal(h.as_str().into())),
        Some(H::AutoHostRewrite(b)) if b.value => Some(HostRewrite::Auto),
        Some(H::AutoHostRewrite(_)) => None,
        Some(H::HostRewriteHeader(h)) => Some(HostRewrite::Header(
            header_name(h).at("host_rewrite_header")?,
        )),
        Some(H::HostRewritePathRegex(_)) => {
            return Err(FieldError::new("host_rewrite_path_regex is not supported")
                .at("host_rewrite_path_regex"));
        }
        Some(H::HostRewrite(_)) => {
            return Err(
                FieldError::new("host_rewrite (formatter) is not supported").at("host_rewrite")
            );
        }
        None => None,
    };
    let timeout = match &ra.timeout {
        None => Some(DEFAULT_ROUTE_TIMEOUT),
        Some(d) => Some(super::duration(d).at("timeout")?).filter(|d| !d.is_zero()),
    };
    let max_stream_duration = match &ra.max_stream_duration {
        Some(m) => Some(MaxStreamDuration {
            max: opt_duration(
                m.max_stream_duration.as_ref(),
                "max_stream_duration.max_stream_duration",
            )?
            .filter(|d| !d.is_zero()),
            grpc_timeout_header_max: opt_duration(
                m.grpc_timeout_header_max.as_ref(),
                "max_stream_duration.grpc_timeout_header_max",
            )?,
            grpc_timeout_header_offset: opt_duration(
                m.grpc_timeout_header_offset.as_ref(),
                "max_stream_duration.grpc_timeout_header_offset",
            )?,
        }),
        None => None,
    };
    let regex_rewrite = ra
        .regex_rewrite
        .as_ref()
        .map(regex_rewrite)
        .transpose()
        .at("regex_rewrite")?;
    if !ra.prefix_rewrite.is_empty() && regex_rewrite.is_some() {
        return Err(
            FieldError::new("prefix_rewrite and regex_rewrite are mutually exclusive")
                .at("prefix_rewrite"),
        );
    }
    let cluster_not_found_status = match ra.cluster_not_found_response_code {
        0 => http::StatusCode::SERVICE_UNAVAILABLE,
        1 => http::StatusCode::NOT_FOUND,
        2 => http::StatusCode::INTERNAL_SERVER_ERROR,
        c => {
            return Err(
                FieldError::new(format!("unknown code {c}")).at("cluster_not_found_response_code")
            );
        }
    };
    Ok(ForwardAction {
        cluster,
        timeout,
        idle_timeout: opt_duration(ra.idle_timeout.as_ref(), "idle_timeout")?,
        retry: optional_retry(ra.retry_policy.as_ref())?,
        hedge: ra.hedge_policy.as_ref().map(hedge_policy),
        hash_policies: each("hash_policy", &ra.hash_policy, hash_policy)?,
        mirrors: each(
            "request_mirror_policies",
            &ra.request_mirror_policies,
            mirror_policy,
        )?,
        prefix_rewrite: (!ra.prefix_rewrite.is_empty()).then(|| ra.prefix_rewrite.as_str().into()),
        regex_rewrite,
        host_rewrite,
        max_stream_duration,
        cluster_not_found_status,
    })
}

fn weighted_clusters(w: &pb::WeightedCluster) -> Result<WeightedClusters, FieldError> {
    if w.clusters.is_empty() {
        return Err(FieldError::new("at least one cluster is required").at("clusters"));
    }
    let clusters = each("clusters", &w.clusters, |c| {
        if c.name.is_empty() {
            return Err(FieldError::new(
                "must not be empty (cluster_header in weights is not supported)",
            )
            .at("name"));
        }
        use pb::weighted_cluster::cluster_weight::HostRewriteSpecifier as H;
        Ok(ClusterWeight {
            name: c.name.as_str().into(),
            weight: c.weight.as_ref().map_or(0, |v| v.value),
            headers: mutations!(c)?,
            filter_overrides: filter_overrides(&c.typed_per_filter_config)
                .at("typed_per_filter_config")?,
            host_rewrite: c
                .host_rewrite_specifier
                .as_ref()
                .map(|H::HostRewriteLiteral(h)| HostRewrite::Literal(h.as_str().into())),
        })
    })?;
    let sum: u64 = clusters.iter().map(|c| u64::from(c.weight)).sum();
    if sum == 0 {
        return Err(FieldError::new("the weights add up to 0").at("clusters"));
    }
    if sum > u64::from(u32::MAX) {
        return Err(
            FieldError::new(format!("the weights add up to {sum}, above 2^32-1")).at("clusters"),
        );
    }
    if let Some(total) = &w.total_weight {
        // Deprecated in Envoy but still sent by older control planes; when set it must agree.
        if u64::from(total.value) != sum {
            return Err(FieldError::new(format!(
                "total_weight is {} but the cluster weights add up to {sum}",
                total.value
            ))
            .at("total_weight"));
        }
    }
    // Zero-weight entries can never be chosen; dropping them keeps the pick loop tight.
    let clusters: Box<[ClusterWeight]> = clusters
        .into_vec()
        .into_iter()
        .filter(|c| c.weight > 0)
        .collect();
    Ok(WeightedClusters {
        clusters,
        total: sum as u32,
    })
}

/// An optional `retry_policy` field, shared once by every route that uses it.
fn optional_retry(r: Option<&pb::RetryPolicy>) -> Result<Option<Arc<RetryPolicy>>, FieldError> {
    Ok(r.map(retry_policy)
        .transpose()
        .at("retry_policy")?
        .map(Arc::new))
}

pub(crate) fn retry_policy(r: &pb::RetryPolicy) -> Result<RetryPolicy, FieldError> {
    let retry_on =
        RetryOn::parse(&r.retry_on).map_err(|e| FieldError::new(e.to_string()).at("retry_on"))?;
    let (backoff_base, backoff_max) = match &r.retry_back_off {
        Some(b) => {
            let base = b
                .base_interval
                .as_ref()
                .map(super::duration)
                .transpose()
                .at("retry_back_off.base_interval")?
                .ok_or_else(|| FieldError::new("is required").at("retry_back_off.base_interval"))?;
            if base.is_zero() {
                return Err(
                    FieldError::new("must be greater than zero").at("retry_back_off.base_interval")
                );
            }
            let max = opt_duration(b.max_interval.as_ref(), "retry_back_off.max_interval")?
                .unwrap_or(base * 10);
            if max < base {
                return Err(FieldError::new("must not be below base_interval")
                    .at("retry_back_off.max_interval"));
            }
            (base, max)
        }
        None => (
            std::time::Duration::from_millis(25),
            std::time::Duration::from_millis(250),
        ),
    };
    // Only the previous-hosts predicate is implemented: named so, or typed so (v3 requires
    // the typed form; the name alone is what older control planes send). Any other predicate
    // is refused rather than read as this one.
    let mut avoid_previous_hosts = false;
    for (i, p) in r.retry_host_predicate.iter().enumerate() {
        use envoy_types::pb::envoy::config::route::v3::retry_policy::retry_host_predicate::ConfigType;
        let typed = p
            .config_type
            .as_ref()
            .map(|ConfigType::TypedConfig(any)| super::effective_type_url(any));
        let previous_hosts = match typed.as_deref() {
            Some(t) => {
                t.ends_with("/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate")
            }
            None => p.name == "envoy.retry_host_predicates.previous_hosts",
        };
        if !previous_hosts {
            return Err(FieldError::new(format!(
                "retry host predicate {} is not supported (previous_hosts only)",
                typed.unwrap_or_else(|| p.name.clone())
            ))
            .at(format!("retry_host_predicate[{i}]")));
        }
        avoid_previous_hosts = true;
    }
    let retriable_status_codes = each("retriable_status_codes", &r.retriable_status_codes, |c| {
        u16::try_from(*c)
            .ok()
            .filter(|c| (100..600).contains(c))
            .ok_or_else(|| FieldError::new(format!("invalid status code {c}")))
    })?;
    Ok(RetryPolicy {
        retry_on,
        num_retries: r.num_retries.as_ref().map_or(1, |v| v.value),
        per_try_timeout: opt_duration(r.per_try_timeout.as_ref(), "per_try_timeout")?
            .filter(|d| !d.is_zero()),
        per_try_idle_timeout: opt_duration(
            r.per_try_idle_timeout.as_ref(),
            "per_try_idle_timeout",
        )?,
        retriable_status_codes,
        retriable_headers: each("retriable_headers", &r.retriable_headers, header_matcher)?,
        retriable_request_headers: each(
            "retriable_request_headers",
            &r.retriable_request_headers,
            header_matcher,
        )?,
        backoff_base,
        backoff_max,
        avoid_previous_hosts,
        host_selection_max_attempts: r.host_selection_retry_max_attempts.clamp(1, 100) as u32,
    })
}

fn hedge_policy(h: &pb::HedgePolicy) -> HedgePolicy {
    HedgePolicy {
        on_per_try_timeout: h.hedge_on_per_try_timeout,
    }
}

fn mirror_policy(m: &pb::route_action::RequestMirrorPolicy) -> Result<MirrorPolicy, FieldError> {
    if m.cluster.is_empty() {
        return Err(FieldError::new(
            "must not be empty (cluster_header mirrors are not supported)",
        )
        .at("cluster"));
    }
    let fraction = match &m.runtime_fraction {
        Some(rf) => rf
            .default_value
            .as_ref()
            .map(fraction)
            .transpose()
            .at("runtime_fraction.default_value")?
            .unwrap_or(Fraction { per_million: 0 }),
        None => Fraction::ALWAYS,
    };
    Ok(MirrorPolicy {
        cluster: m.cluster.as_str().into(),
        fraction,
        disable_shadow_host_suffix: m.disable_shadow_host_suffix_append,
    })
}

fn hash_policy(h: &pb::route_action::HashPolicy) -> Result<HashPolicy, FieldError> {
    use pb::route_action::hash_policy::PolicySpecifier as P;
    let source = match &h.policy_specifier {
        Some(P::Header(hd)) => {
            HashSource::Header(header_name(&hd.header_name).at("header.header_name")?)
        }
        Some(P::Cookie(c)) => HashSource::Cookie {
            name: c.name.as_str().into(),
            ttl: opt_duration(c.ttl.as_ref(), "cookie.ttl")?,
            path: c.path.as_str().into(),
        },
        Some(P::ConnectionProperties(c)) if c.source_ip => HashSource::SourceIp,
        Some(P::ConnectionProperties(_)) => {
            return Err(FieldError::new("only source_ip is supported").at("connection_properties"));
        }
        Some(P::QueryParameter(q)) => HashSource::QueryParameter(q.name.as_str().into()),
        Some(P::FilterState(f)) => HashSource::FilterState(f.key.as_str().into()),
        None => return Err(FieldError::new("a policy specifier is required")),
    };
    Ok(HashPolicy {
        source,
        terminal: h.terminal,
    })
}

fn regex_rewrite(
    r: &envoy_types::pb::envoy::r#type::matcher::v3::RegexMatchAndSubstitute,
) -> Result<RegexRewrite, FieldError> {
    let p = r
        .pattern
        .as_ref()
        .ok_or_else(|| FieldError::new("is required").at("pattern"))?;
    let pattern = regex::Regex::new(&p.regex).map_err(|e| {
        FieldError::new(format!("invalid regex {:?}: {e}", p.regex)).at("pattern.regex")
    })?;
    // Envoy writes groups as \1; the regex crate as ${1}.
    let substitution = backrefs_to_regex_crate(&r.substitution);
    Ok(RegexRewrite {
        pattern,
        substitution: substitution.into(),
    })
}

fn backrefs_to_regex_crate(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek().is_some_and(|d| d.is_ascii_digit()) => {
                out.push_str("${");
                while let Some(d) = chars.peek().copied().filter(char::is_ascii_digit) {
                    out.push(d);
                    chars.next();
                }
                out.push('}');
            }
            '$' => out.push_str("$$"),
            c => out.push(c),
        }
    }
    out
}

fn redirect(r: &pb::RedirectAction) -> Result<Redirect, FieldError> {
    use pb::redirect_action::{PathRewriteSpecifier as P, SchemeRewriteSpecifier as S};
    let status = match r.response_code {
        0 => http::StatusCode::MOVED_PERMANENTLY,
        1 => http::StatusCode::FOUND,
        2 => http::StatusCode::SEE_OTHER,
        3 => http::StatusCode::TEMPORARY_REDIRECT,
        4 => http::StatusCode::PERMANENT_REDIRECT,
        c => return Err(FieldError::new(format!("unknown code {c}")).at("response_code")),
    };
    Ok(Redirect {
        scheme: match &r.scheme_rewrite_specifier {
            Some(S::HttpsRedirect(true)) => Some("https".into()),
            Some(S::HttpsRedirect(false)) | None => None,
            Some(S::SchemeRedirect(s)) => Some(s.as_str().into()),
        },
        host: (!r.host_redirect.is_empty()).then(|| r.host_redirect.as_str().into()),
        port: match r.port_redirect {
            0 => None,
            p => {
                Some(u16::try_from(p).map_err(|_| {
                    FieldError::new(format!("invalid port {p}")).at("port_redirect")
                })?)
            }
        },
        path: match &r.path_rewrite_specifier {
            Some(P::PathRedirect(p)) => Some(RedirectPath::Path(p.as_str().into())),
            Some(P::PrefixRewrite(p)) => Some(RedirectPath::Prefix(p.as_str().into())),
            Some(P::RegexRewrite(rr)) => {
                Some(RedirectPath::Regex(regex_rewrite(rr).at("regex_rewrite")?))
            }
            Some(P::PathRewrite(_)) => {
                return Err(
                    FieldError::new("path_rewrite (formatter) is not supported").at("path_rewrite")
                );
            }
            None => None,
        },
        status,
        strip_query: r.strip_query,
    })
}

pub(crate) fn header_mutations(
    req_add: &[core::HeaderValueOption],
    req_remove: &[String],
    rsp_add: &[core::HeaderValueOption],
    rsp_remove: &[String],
) -> Result<HeaderMutations, FieldError> {
    Ok(HeaderMutations {
        request_add: kept(each("request_headers_to_add", req_add, header_add)?),
        request_remove: each("request_headers_to_remove", req_remove, |n| header_name(n))?,
        response_add: kept(each("response_headers_to_add", rsp_add, header_add)?),
        response_remove: each("response_headers_to_remove", rsp_remove, |n| header_name(n))?,
    })
}

fn kept(adds: Box<[Option<HeaderAdd>]>) -> Box<[HeaderAdd]> {
    adds.into_iter().flatten().collect()
}

/// One header to add; `None` for an empty value without `keep_empty_value`, which Envoy does
/// not add.
fn header_add(h: &core::HeaderValueOption) -> Result<Option<HeaderAdd>, FieldError> {
    let hv = h
        .header
        .as_ref()
        .ok_or_else(|| FieldError::new("is required").at("header"))?;
    let name = header_name(&hv.key).at("header.key")?;
    let raw: &[u8] = if hv.raw_value.is_empty() {
        hv.value.as_bytes()
    } else {
        &hv.raw_value
    };
    let value = http::HeaderValue::from_bytes(raw)
        .map_err(|_| FieldError::new("not a valid header value").at("header.value"))?;
    let append = match (h.append.as_ref().map(|b| b.value), h.append_action) {
        // The deprecated `append` wins when set, as in Envoy.
        (Some(true), _) => AppendAction::AppendIfExistsOrAdd,
        (Some(false), _) => AppendAction::OverwriteIfExistsOrAdd,
        (None, 0) => AppendAction::AppendIfExistsOrAdd,
        (None, 1) => AppendAction::AddIfAbsent,
        (None, 2) => AppendAction::OverwriteIfExistsOrAdd,
        (None, 3) => AppendAction::OverwriteIfExists,
        (None, a) => {
            return Err(FieldError::new(format!("unknown append_action {a}")).at("append_action"));
        }
    };
    if value.is_empty() && !h.keep_empty_value {
        return Ok(None);
    }
    Ok(Some(HeaderAdd {
        name,
        value,
        append,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backrefs() {
        assert_eq!(backrefs_to_regex_crate(r"/v2/\1/x$"), "/v2/${1}/x$$");
    }
}
