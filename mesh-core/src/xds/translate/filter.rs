//! HTTP filters (`http_filters`) and per-route filter configs (`typed_per_filter_config`).
//!
//! Following gRFC A39: a filter whose type we do not implement is a NACK unless it is marked
//! `is_optional`, in which case it is kept as [`FilterConfig::Unsupported`] and skipped.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::rbac::v3 as rbac;
use envoy_types::pb::envoy::extensions::filters::http::{
    ext_authz::v3 as ext_authz, fault::v3 as fault, jwt_authn::v3 as jwt,
    local_ratelimit::v3 as rl, rbac::v3 as rbac_filter,
};
use envoy_types::pb::envoy::r#type::matcher::v3 as pbm;
use envoy_types::pb::google::protobuf::Any;
use prost::Name;

use super::matcher::{cidr, header_matcher, path_matcher, string_matcher};
use super::route::route_match;
use super::{
    At, FieldError, each, effective_type_url, fraction, header_name, opt_duration, unpack,
};
use crate::model::*;

/// Which side a connection manager serves: the filters each side applies differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Side {
    /// An API listener: requests this process sends.
    Client,
    /// A listener's filter chain: requests this process serves.
    Server,
}

/// Whether `side` applies filters of this config: the client runs fault injection only, the
/// server the policies (as gRPC's filter registry splits them). The router is both.
fn applies_on(config: &FilterConfig, side: Side) -> bool {
    match config {
        FilterConfig::Router | FilterConfig::Unsupported { .. } => true,
        FilterConfig::Fault(_) => side == Side::Client,
        _ => side == Side::Server,
    }
}

/// Translates one `http_filters` entry. A filter the side does not apply is refused (or
/// skipped when optional, per gRFC A39), never accepted and then passed over.
pub(crate) fn http_filter(
    f: &envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpFilter,
    side: Side,
) -> Result<HttpFilter, FieldError> {
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType;
    if f.name.is_empty() {
        return Err(FieldError::new("must not be empty").at("name"));
    }
    let config = match &f.config_type {
        Some(ConfigType::TypedConfig(any)) => match filter_config(any, false) {
            Ok(c) => c,
            Err(e) if f.is_optional && e.reason().starts_with(UNSUPPORTED) => {
                FilterConfig::Unsupported {
                    type_url: effective_type_url(any).into(),
                }
            }
            Err(e) => return Err(e.at("typed_config")),
        },
        Some(ConfigType::ConfigDiscovery(_)) => {
            if f.is_optional {
                FilterConfig::Unsupported {
                    type_url: "config_discovery".into(),
                }
            } else {
                return Err(FieldError::new("config_discovery (ECDS) is not supported")
                    .at("config_discovery"));
            }
        }
        None => return Err(FieldError::new("typed_config is required")),
    };
    let config = if applies_on(&config, side) {
        config
    } else if f.is_optional {
        FilterConfig::Unsupported {
            type_url: f
                .config_type
                .as_ref()
                .map(|c| match c {
                    ConfigType::TypedConfig(any) => effective_type_url(any),
                    ConfigType::ConfigDiscovery(_) => "config_discovery".into(),
                })
                .unwrap_or_default()
                .into(),
        }
    } else {
        let side = match side {
            Side::Client => "clients (API listeners)",
            Side::Server => "servers (filter chains)",
        };
        return Err(FieldError::new(format!(
            "is not applied on {side}; mark it is_optional or remove it"
        ))
        .at("typed_config"));
    };
    Ok(HttpFilter {
        name: f.name.as_str().into(),
        config,
        disabled: f.disabled,
    })
}

const UNSUPPORTED: &str = "unsupported filter";

/// Translates a filter's typed config. `per_route` selects the per-route message types.
fn filter_config(any: &Any, per_route: bool) -> Result<FilterConfig, FieldError> {
    use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
    let url = any.type_url.as_str();
    // Per route, Envoy takes each filter's own per-route message: a listener-level config
    // there would be refused by Envoy, and here would be read and then not applied.
    let per_route_type = [
        (Router::type_url(), None),
        (
            rbac_filter::Rbac::type_url(),
            Some(rbac_filter::RbacPerRoute::type_url()),
        ),
        (
            jwt::JwtAuthentication::type_url(),
            Some(jwt::PerRouteConfig::type_url()),
        ),
        (
            ext_authz::ExtAuthz::type_url(),
            Some(ext_authz::ExtAuthzPerRoute::type_url()),
        ),
    ];
    if per_route && let Some((_, instead)) = per_route_type.iter().find(|(t, _)| t == url) {
        return Err(FieldError::new(match instead {
            Some(instead) => format!("{url} is not a per-route config (use {instead})"),
            None => format!("{url} has no per-route config"),
        }));
    }
    Ok(match url {
        _ if url == Router::type_url() => FilterConfig::Router,
        _ if url == fault::HttpFault::type_url() => {
            FilterConfig::Fault(Arc::new(fault_config(&unpack(any)?)?))
        }
        _ if url == rbac_filter::Rbac::type_url() => {
            FilterConfig::Rbac(Arc::new(rbac_config(&unpack(any)?)?))
        }
        _ if url == rbac_filter::RbacPerRoute::type_url() && per_route => {
            let pr: rbac_filter::RbacPerRoute = unpack(any)?;
            let inner = pr.rbac.unwrap_or_default();
            FilterConfig::Rbac(Arc::new(rbac_config(&inner).at("rbac")?))
        }
        _ if url == jwt::JwtAuthentication::type_url() => {
            FilterConfig::Jwt(Arc::new(jwt_config(&unpack(any)?)?))
        }
        _ if url == jwt::PerRouteConfig::type_url() && per_route => {
            let pr: jwt::PerRouteConfig = unpack(any)?;
            use jwt::per_route_config::RequirementSpecifier as R;
            FilterConfig::JwtPerRoute(Arc::new(match pr.requirement_specifier {
                Some(R::Disabled(true)) => JwtPerRoute::Disabled,
                Some(R::RequirementName(n)) => JwtPerRoute::RequirementName(n.into()),
                _ => {
                    return Err(FieldError::new(
                        "disabled: true or requirement_name is required",
                    ));
                }
            }))
        }
        _ if url == rl::LocalRateLimit::type_url() => {
            FilterConfig::LocalRateLimit(Arc::new(local_rate_limit(&unpack(any)?)?))
        }
        _ if url == ext_authz::ExtAuthz::type_url() => {
            FilterConfig::ExtAuthz(Arc::new(ext_authz_config(&unpack(any)?)?))
        }
        _ => {
            return Err(FieldError::new(format!(
                "{UNSUPPORTED} {}",
                effective_type_url(any)
            )));
        }
    })
}

/// Translates `typed_per_filter_config`, sorted by filter name for deterministic dumps.
pub(crate) fn filter_overrides(map: &HashMap<String, Any>) -> Result<FilterOverrides, FieldError> {
    use envoy_types::pb::envoy::config::route::v3::FilterConfig as PbFilterConfig;
    let mut out: Vec<(Arc<str>, FilterOverride)> = Vec::with_capacity(map.len());
    let mut names: Vec<&String> = map.keys().collect();
    names.sort();
    for name in names {
        let any = &map[name];
        let result = if any.type_url == PbFilterConfig::type_url() {
            let fc: PbFilterConfig = unpack(any).at(format!("[{name:?}]"))?;
            if fc.disabled {
                Ok(FilterOverride::Disabled)
            } else {
                match fc.config.as_ref() {
                    None => Err(FieldError::new("config is required unless disabled")),
                    Some(inner) => match filter_config(inner, true) {
                        Ok(c) => Ok(FilterOverride::Config(c)),
                        Err(e) if fc.is_optional && e.reason().starts_with(UNSUPPORTED) => {
                            Ok(FilterOverride::Config(FilterConfig::Unsupported {
                                type_url: effective_type_url(inner).into(),
                            }))
                        }
                        Err(e) => Err(e.at("config")),
                    },
                }
            }
        } else {
            filter_config(any, true).map(FilterOverride::Config)
        };
        out.push((name.as_str().into(), result.at(format!("[{name:?}]"))?));
    }
    Ok(FilterOverrides(out.into()))
}

fn fault_config(f: &fault::HttpFault) -> Result<FaultConfig, FieldError> {
    use envoy_types::pb::envoy::extensions::filters::common::fault::v3::fault_delay::FaultDelaySecifier as D;
    let delay = match &f.delay {
        Some(d) => {
            let kind = match &d.fault_delay_secifier {
                Some(D::FixedDelay(fd)) => {
                    DelayKind::Fixed(super::duration(fd).at("delay.fixed_delay")?)
                }
                Some(D::HeaderDelay(_)) => DelayKind::Header,
                None => {
                    return Err(
                        FieldError::new("fixed_delay or header_delay is required").at("delay")
                    );
                }
            };
            let fraction = d
                .percentage
                .as_ref()
                .map(fraction)
                .transpose()
                .at("delay.percentage")?
                .unwrap_or(Fraction::ALWAYS);
            Some(FaultDelay { kind, fraction })
        }
        None => None,
    };
    let abort = match &f.abort {
        Some(a) => {
            use fault::fault_abort::ErrorType as E;
            let kind = match &a.error_type {
                Some(E::HttpStatus(s)) => AbortKind::Http(
                    http::StatusCode::from_u16(*s as u16)
                        .ok()
                        .filter(|_| (200..600).contains(s))
                        .ok_or_else(|| {
                            FieldError::new(format!("invalid HTTP status {s}"))
                                .at("abort.http_status")
                        })?,
                ),
                Some(E::GrpcStatus(s)) => AbortKind::Grpc(*s),
                Some(E::HeaderAbort(_)) => AbortKind::Header,
                None => {
                    return Err(FieldError::new(
                        "http_status, grpc_status or header_abort is required",
                    )
                    .at("abort"));
                }
            };
            let fraction = a
                .percentage
                .as_ref()
                .map(fraction)
                .transpose()
                .at("abort.percentage")?
                .unwrap_or(Fraction::ALWAYS);
            Some(FaultAbort { kind, fraction })
        }
        None => None,
    };
    if f.response_rate_limit.is_some() {
        return Err(
            FieldError::new("response_rate_limit is not supported").at("response_rate_limit")
        );
    }
    Ok(FaultConfig {
        delay,
        abort,
        headers: each("headers", &f.headers, header_matcher)?,
        upstream_cluster: (!f.upstream_cluster.is_empty())
            .then(|| f.upstream_cluster.as_str().into()),
        max_active_faults: f.max_active_faults.as_ref().map(|v| v.value),
    })
}

pub(crate) fn rbac_config(r: &rbac_filter::Rbac) -> Result<RbacFilter, FieldError> {
    rbac_rules(RbacParts {
        rules: r.rules.as_ref(),
        shadow_rules: r.shadow_rules.as_ref(),
        uses_matchers: r.matcher.is_some() || r.shadow_matcher.is_some(),
        stat_prefix: &r.rules_stat_prefix,
        shadow_stat_prefix: &r.shadow_rules_stat_prefix,
    })
}

/// What the HTTP and the network RBAC filters share.
struct RbacParts<'a> {
    rules: Option<&'a rbac::Rbac>,
    shadow_rules: Option<&'a rbac::Rbac>,
    uses_matchers: bool,
    stat_prefix: &'a str,
    shadow_stat_prefix: &'a str,
}

fn rbac_rules(p: RbacParts<'_>) -> Result<RbacFilter, FieldError> {
    if p.uses_matchers {
        return Err(FieldError::new("the matcher API is not supported; use rules").at("matcher"));
    }
    Ok(RbacFilter {
        rules: p.rules.map(rbac_policies).transpose().at("rules")?,
        shadow_rules: p
            .shadow_rules
            .map(rbac_policies)
            .transpose()
            .at("shadow_rules")?,
        stat_prefix: p.stat_prefix.into(),
        shadow_stat_prefix: p.shadow_stat_prefix.into(),
    })
}

/// The network RBAC filter (`envoy.filters.network.rbac`), evaluated once per connection. As
/// in Envoy, `header` rules are refused (a connection has no headers); `url_path` rules load
/// and never match.
pub(crate) fn network_rbac_config(
    r: &envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac,
) -> Result<RbacFilter, FieldError> {
    let filter = rbac_rules(RbacParts {
        rules: r.rules.as_ref(),
        shadow_rules: r.shadow_rules.as_ref(),
        uses_matchers: r.matcher.is_some() || r.shadow_matcher.is_some(),
        stat_prefix: &r.stat_prefix,
        shadow_stat_prefix: &r.shadow_rules_stat_prefix,
    })?;
    for (field, rules) in [
        ("rules", &filter.rules),
        ("shadow_rules", &filter.shadow_rules),
    ] {
        for (name, p) in rules.iter().flat_map(|r| r.policies.iter()) {
            if p.permissions.iter().any(permission_has_header)
                || p.principals.iter().any(principal_has_header)
            {
                return Err(FieldError::new(
                    "header rules are not supported by the network RBAC filter (as in Envoy)",
                )
                .at(format!("{field}.policies[{name:?}]")));
            }
        }
    }
    Ok(filter)
}

fn permission_has_header(p: &Permission) -> bool {
    match p {
        Permission::Header(_) => true,
        Permission::And(v) | Permission::Or(v) => v.iter().any(permission_has_header),
        Permission::Not(x) => permission_has_header(x),
        _ => false,
    }
}

fn principal_has_header(p: &Principal) -> bool {
    match p {
        Principal::Header(_) => true,
        Principal::And(v) | Principal::Or(v) => v.iter().any(principal_has_header),
        Principal::Not(x) => principal_has_header(x),
        _ => false,
    }
}

fn rbac_policies(r: &rbac::Rbac) -> Result<RbacPolicies, FieldError> {
    let action = match r.action {
        0 => RbacAction::Allow,
        1 => RbacAction::Deny,
        2 => RbacAction::Log,
        a => return Err(FieldError::new(format!("unknown action {a}")).at("action")),
    };
    let mut names: Vec<&String> = r.policies.keys().collect();
    names.sort();
    let mut policies = Vec::with_capacity(names.len());
    for name in names {
        let p = &r.policies[name];
        let at = format!("policies[{name:?}]");
        if p.condition.is_some() || p.checked_condition.is_some() {
            return Err(FieldError::new("CEL conditions are not supported")
                .at("condition")
                .at(at));
        }
        // Envoy's validation: a policy needs both lists (an empty one would never match).
        for (field, empty) in [
            ("permissions", p.permissions.is_empty()),
            ("principals", p.principals.is_empty()),
        ] {
            if empty {
                return Err(FieldError::new("must not be empty").at(field).at(at));
            }
        }
        let policy = RbacPolicy {
            permissions: each("permissions", &p.permissions, permission).at(&at)?,
            principals: each("principals", &p.principals, principal).at(&at)?,
        };
        policies.push((name.as_str().into(), policy));
    }
    Ok(RbacPolicies {
        action,
        policies: policies.into(),
    })
}

fn permission(p: &rbac::Permission) -> Result<Permission, FieldError> {
    use rbac::permission::Rule as R;
    Ok(
        match p
            .rule
            .as_ref()
            .ok_or_else(|| FieldError::new("rule is required"))?
        {
            // Envoy refuses empty sets and `any: false` (an empty AND would match everything).
            R::AndRules(s) | R::OrRules(s) if s.rules.is_empty() => {
                return Err(FieldError::new("a rule set must not be empty"));
            }
            R::Any(false) => return Err(FieldError::new("must be true").at("any")),
            R::AndRules(s) => Permission::And(each("and_rules.rules", &s.rules, permission)?),
            R::OrRules(s) => Permission::Or(each("or_rules.rules", &s.rules, permission)?),
            R::Any(true) => Permission::Any,
            R::Header(h) => Permission::Header(header_matcher(h).at("header")?),
            R::UrlPath(m) => Permission::UrlPath(path_matcher(m).at("url_path")?),
            R::DestinationIp(c) => Permission::DestinationIp(cidr(c).at("destination_ip")?),
            R::DestinationPort(port) => {
                Permission::DestinationPort(u16::try_from(*port).map_err(|_| {
                    FieldError::new(format!("invalid port {port}")).at("destination_port")
                })?)
            }
            R::DestinationPortRange(r) => {
                let ok = |v: i32| u16::try_from(v).ok();
                match (ok(r.start), ok(r.end)) {
                    (Some(s), Some(e)) if s < e => Permission::DestinationPortRange(s, e),
                    _ => {
                        return Err(FieldError::new(format!(
                            "invalid range {}..{}",
                            r.start, r.end
                        ))
                        .at("destination_port_range"));
                    }
                }
            }
            R::Metadata(m) => Permission::Metadata(rbac_metadata(m).at("metadata")?),
            R::NotRule(inner) => Permission::Not(Box::new(permission(inner).at("not_rule")?)),
            R::RequestedServerName(m) => {
                Permission::RequestedServerName(string_matcher(m).at("requested_server_name")?)
            }
            R::Matcher(_) | R::UriTemplate(_) | R::SourcedMetadata(_) => {
                return Err(FieldError::new(
                    "matcher, uri_template and sourced_metadata rules are not supported",
                ));
            }
        },
    )
}

fn principal(p: &rbac::Principal) -> Result<Principal, FieldError> {
    use rbac::principal::Identifier as I;
    Ok(
        match p
            .identifier
            .as_ref()
            .ok_or_else(|| FieldError::new("identifier is required"))?
        {
            I::AndIds(s) | I::OrIds(s) if s.ids.is_empty() => {
                return Err(FieldError::new("an identifier set must not be empty"));
            }
            I::Any(false) => return Err(FieldError::new("must be true").at("any")),
            I::AndIds(s) => Principal::And(each("and_ids.ids", &s.ids, principal)?),
            I::OrIds(s) => Principal::Or(each("or_ids.ids", &s.ids, principal)?),
            I::Any(true) => Principal::Any,
            I::Authenticated(a) => Principal::Authenticated(
                a.principal_name
                    .as_ref()
                    .map(string_matcher)
                    .transpose()
                    .at("authenticated.principal_name")?,
            ),
            I::SourceIp(c) => Principal::SourceIp(cidr(c).at("source_ip")?),
            I::DirectRemoteIp(c) => Principal::DirectRemoteIp(cidr(c).at("direct_remote_ip")?),
            I::RemoteIp(c) => Principal::RemoteIp(cidr(c).at("remote_ip")?),
            I::Header(h) => Principal::Header(header_matcher(h).at("header")?),
            I::UrlPath(m) => Principal::UrlPath(path_matcher(m).at("url_path")?),
            I::Metadata(m) => Principal::Metadata(rbac_metadata(m).at("metadata")?),
            I::FilterState(f) => {
                use pbm::filter_state_matcher::Matcher as M;
                let value = match &f.matcher {
                    Some(M::StringMatch(s)) => string_matcher(s).at("filter_state.string_match")?,
                    _ => {
                        return Err(
                            FieldError::new("only string_match is supported").at("filter_state")
                        );
                    }
                };
                // The only filter state an in-process server has: the peer's verified identity
                // (Istio's key). Any other key would never match, which a DENY must not do.
                if f.key != PEER_PRINCIPAL_KEY {
                    return Err(FieldError::new(format!(
                        "filter state {:?} is not available (only {PEER_PRINCIPAL_KEY:?})",
                        f.key
                    ))
                    .at("filter_state.key"));
                }
                Principal::FilterState {
                    key: f.key.as_str().into(),
                    value,
                }
            }
            I::NotId(inner) => Principal::Not(Box::new(principal(inner).at("not_id")?)),
            I::SourcedMetadata(_) | I::Custom(_) => {
                return Err(FieldError::new(
                    "sourced_metadata and custom principals are not supported",
                ));
            }
        },
    )
}

/// Envoy's default ext_authz check timeout.
const EXT_AUTHZ_TIMEOUT: Duration = Duration::from_millis(200);

fn ext_authz_config(e: &ext_authz::ExtAuthz) -> Result<ExtAuthz, FieldError> {
    use envoy_types::pb::envoy::config::core::v3::{grpc_service, http_uri};
    use ext_authz::ext_authz::Services;
    let list = |l: Option<&pbm::ListStringMatcher>,
                path: &str|
     -> Result<Box<[StringMatcher]>, FieldError> {
        match l {
            Some(l) => each(&format!("{path}.patterns"), &l.patterns, string_matcher),
            None => Ok(Box::new([])),
        }
    };
    let (service, timeout, mut allowed_headers, headers_to_add, upstream, client, client_ok) =
        match &e.services {
            Some(Services::HttpService(h)) => {
                let uri = h
                    .server_uri
                    .as_ref()
                    .ok_or_else(|| FieldError::new("is required").at("http_service.server_uri"))?;
                let cluster = match &uri.http_upstream_type {
                    Some(http_uri::HttpUpstreamType::Cluster(c)) if !c.is_empty() => c.as_str(),
                    _ => {
                        return Err(FieldError::new("cluster is required")
                            .at("http_service.server_uri.cluster"));
                    }
                };
                let timeout =
                    super::opt_duration(uri.timeout.as_ref(), "http_service.server_uri.timeout")?
                        .unwrap_or(EXT_AUTHZ_TIMEOUT);
                let req = h.authorization_request.as_ref();
                let rsp = h.authorization_response.as_ref();
                let headers_to_add = match req {
                    Some(r) => each(
                        "http_service.authorization_request.headers_to_add",
                        &r.headers_to_add,
                        |hv| {
                            Ok((
                                header_name(&hv.key).at("key")?,
                                http::HeaderValue::from_str(&hv.value)
                                    .map_err(|e| FieldError::new(e.to_string()).at("value"))?,
                            ))
                        },
                    )?,
                    None => Box::new([]),
                };
                (
                    ExtAuthzService::Http {
                        cluster: cluster.into(),
                        uri: uri.uri.as_str().into(),
                        path_prefix: h.path_prefix.as_str().into(),
                    },
                    timeout,
                    list(
                        req.and_then(|r| r.allowed_headers.as_ref()),
                        "http_service.authorization_request.allowed_headers",
                    )?,
                    headers_to_add,
                    list(
                        rsp.and_then(|r| r.allowed_upstream_headers.as_ref()),
                        "http_service.authorization_response.allowed_upstream_headers",
                    )?,
                    list(
                        rsp.and_then(|r| r.allowed_client_headers.as_ref()),
                        "http_service.authorization_response.allowed_client_headers",
                    )?,
                    list(
                        rsp.and_then(|r| r.allowed_client_headers_on_success.as_ref()),
                        "http_service.authorization_response.allowed_client_headers_on_success",
                    )?,
                )
            }
            Some(Services::GrpcService(g)) => {
                let timeout = super::opt_duration(g.timeout.as_ref(), "grpc_service.timeout")?
                    .unwrap_or(EXT_AUTHZ_TIMEOUT);
                let service = match &g.target_specifier {
                    Some(grpc_service::TargetSpecifier::EnvoyGrpc(eg))
                        if !eg.cluster_name.is_empty() =>
                    {
                        ExtAuthzService::Grpc {
                            cluster: eg.cluster_name.as_str().into(),
                            authority: (!eg.authority.is_empty())
                                .then(|| eg.authority.as_str().into()),
                        }
                    }
                    _ => {
                        return Err(
                            FieldError::new("envoy_grpc with a cluster_name is required")
                                .at("grpc_service"),
                        );
                    }
                };
                (
                    service,
                    timeout,
                    Box::new([]) as Box<[StringMatcher]>,
                    Box::new([]) as Box<[_]>,
                    Box::new([]) as Box<[_]>,
                    Box::new([]) as Box<[_]>,
                    Box::new([]) as Box<[_]>,
                )
            }
            None => return Err(FieldError::new("http_service or grpc_service is required")),
        };
    // The filter-level list replaces the deprecated one in the HTTP service.
    if let Some(l) = &e.allowed_headers {
        allowed_headers = each("allowed_headers.patterns", &l.patterns, string_matcher)?;
    }
    let status_on_error = match &e.status_on_error {
        Some(s) if s.code != 0 => http::StatusCode::from_u16(s.code as u16).map_err(|_| {
            FieldError::new(format!("invalid status {}", s.code)).at("status_on_error.code")
        })?,
        _ => http::StatusCode::FORBIDDEN,
    };
    Ok(ExtAuthz {
        service,
        timeout,
        failure_mode_allow: e.failure_mode_allow,
        status_on_error,
        allowed_headers,
        headers_to_add,
        allowed_upstream_headers: upstream,
        allowed_client_headers: client,
        allowed_client_headers_on_success: client_ok,
        with_request_body: e.with_request_body.as_ref().map(|b| BodyBuffering {
            max_bytes: b.max_request_bytes,
            allow_partial: b.allow_partial_message,
        }),
        enabled_metadata: e
            .filter_enabled_metadata
            .as_ref()
            .map(|m| metadata_matcher(m).at("filter_enabled_metadata"))
            .transpose()?,
        filter_enabled: match &e.filter_enabled {
            Some(f) => Some(
                fraction(f.default_value.as_ref().ok_or_else(|| {
                    FieldError::new("is required").at("filter_enabled.default_value")
                })?)
                .at("filter_enabled.default_value")?,
            ),
            None => None,
        },
    })
}

/// Filter state Istio keeps the peer's principal under.
const PEER_PRINCIPAL_KEY: &str = "io.istio.peer_principal";

/// Dynamic metadata namespaces the inbound side's filters publish: the JWT filter (under its
/// own name and Istio's `istio_authn`) and RBAC's shadow rules.
const PUBLISHED_METADATA: [&str; 3] = [
    "istio_authn",
    "envoy.filters.http.jwt_authn",
    "envoy.filters.http.rbac",
];

/// A metadata rule of RBAC: only on namespaces some filter here fills, since a rule on one
/// that stays empty would never match, and a DENY that never matches fails open.
fn rbac_metadata(m: &pbm::MetadataMatcher) -> Result<MetadataMatcher, FieldError> {
    if !PUBLISHED_METADATA.contains(&m.filter.as_str()) {
        return Err(FieldError::new(format!(
            "no filter here publishes metadata under {:?} (only {PUBLISHED_METADATA:?})",
            m.filter
        ))
        .at("filter"));
    }
    metadata_matcher(m)
}

fn metadata_matcher(m: &pbm::MetadataMatcher) -> Result<MetadataMatcher, FieldError> {
    let path = each("path", &m.path, |seg| match &seg.segment {
        Some(pbm::metadata_matcher::path_segment::Segment::Key(k)) => {
            Ok(Box::<str>::from(k.as_str()))
        }
        None => Err(FieldError::new("key is required")),
    })?;
    let value = value_matcher(
        m.value
            .as_ref()
            .ok_or_else(|| FieldError::new("is required").at("value"))?,
    )
    .at("value")?;
    Ok(MetadataMatcher {
        filter: m.filter.as_str().into(),
        path,
        value,
        invert: m.invert,
    })
}

fn value_matcher(v: &pbm::ValueMatcher) -> Result<ValueMatch, FieldError> {
    use pbm::value_matcher::MatchPattern as P;
    Ok(
        match v
            .match_pattern
            .as_ref()
            .ok_or_else(|| FieldError::new("match_pattern is required"))?
        {
            P::NullMatch(_) => ValueMatch::Null,
            P::DoubleMatch(d) => match &d.match_pattern {
                Some(pbm::double_matcher::MatchPattern::Range(r)) => {
                    ValueMatch::DoubleRange(r.start, r.end)
                }
                Some(pbm::double_matcher::MatchPattern::Exact(x)) => {
                    ValueMatch::DoubleRange(*x, x.next_up())
                }
                None => return Err(FieldError::new("match_pattern is required").at("double_match")),
            },
            P::StringMatch(s) => ValueMatch::String(string_matcher(s).at("string_match")?),
            P::BoolMatch(b) => ValueMatch::Bool(*b),
            P::PresentMatch(true) => ValueMatch::Present,
            // Envoy's `present_match: false` matches nothing (not "absent"): an empty `or`.
            P::PresentMatch(false) => ValueMatch::Or(Box::new([])),
            P::ListMatch(l) => match &l.match_pattern {
                Some(pbm::list_matcher::MatchPattern::OneOf(inner)) => {
                    ValueMatch::ListAny(Box::new(value_matcher(inner).at("list_match.one_of")?))
                }
                None => return Err(FieldError::new("one_of is required").at("list_match")),
            },
            P::OrMatch(o) => ValueMatch::Or(each(
                "or_match.value_matchers",
                &o.value_matchers,
                value_matcher,
            )?),
        },
    )
}

fn jwt_config(j: &jwt::JwtAuthentication) -> Result<JwtConfig, FieldError> {
    let mut names: Vec<&String> = j.providers.keys().collect();
    names.sort();
    let mut providers = Vec::with_capacity(names.len());
    for name in names {
        let p = jwt_provider(&j.providers[name]).at(format!("providers[{name:?}]"))?;
        providers.push((Arc::<str>::from(name.as_str()), Arc::new(p)));
    }
    let known = |n: &str| providers.iter().any(|(p, _)| &**p == n);
    let rules = each("rules", &j.rules, |r| {
        let m = r
            .r#match
            .as_ref()
            .ok_or_else(|| FieldError::new("is required").at("match"))?;
        use jwt::requirement_rule::RequirementType as T;
        let req = match &r.requirement_type {
            Some(T::Requires(req)) => jwt_requirement(req, &known).at("requires")?,
            Some(T::RequirementName(n)) => {
                let req = j.requirement_map.get(n).ok_or_else(|| {
                    FieldError::new(format!("no requirement named {n:?} in requirement_map"))
                        .at("requirement_name")
                })?;
                jwt_requirement(req, &known).at("requirement_name")?
            }
            None => JwtRequirement::AllowMissingOrFailed,
        };
        Ok((route_match(m).at("match")?, req))
    })?;
    let mut map_names: Vec<&String> = j.requirement_map.keys().collect();
    map_names.sort();
    let requirement_map = map_names
        .into_iter()
        .map(|n| {
            Ok((
                Arc::<str>::from(n.as_str()),
                jwt_requirement(&j.requirement_map[n], &known)
                    .at(format!("requirement_map[{n:?}]"))?,
            ))
        })
        .collect::<Result<Box<[_]>, FieldError>>()?;
    Ok(JwtConfig {
        providers: providers.into(),
        rules,
        requirement_map,
    })
}

fn jwt_requirement(
    r: &jwt::JwtRequirement,
    known: &dyn Fn(&str) -> bool,
) -> Result<JwtRequirement, FieldError> {
    use jwt::jwt_requirement::RequiresType as T;
    let check = |n: &str, field: &str| {
        if known(n) {
            Ok(Arc::<str>::from(n))
        } else {
            Err(FieldError::new(format!("unknown provider {n:?}")).at(field.to_owned()))
        }
    };
    Ok(match &r.requires_type {
        Some(T::ProviderName(n)) => JwtRequirement::Provider(check(n, "provider_name")?),
        Some(T::ProviderAndAudiences(p)) => JwtRequirement::ProviderAudiences(
            check(&p.provider_name, "provider_and_audiences.provider_name")?,
            p.audiences.iter().map(|a| a.as_str().into()).collect(),
        ),
        Some(T::RequiresAny(l)) => {
            JwtRequirement::Any(each("requires_any.requirements", &l.requirements, |x| {
                jwt_requirement(x, known)
            })?)
        }
        Some(T::RequiresAll(l)) => {
            JwtRequirement::All(each("requires_all.requirements", &l.requirements, |x| {
                jwt_requirement(x, known)
            })?)
        }
        Some(T::AllowMissingOrFailed(_)) => JwtRequirement::AllowMissingOrFailed,
        Some(T::AllowMissing(_)) => JwtRequirement::AllowMissing,
        Some(T::ExtractOnlyWithoutValidation(_)) => {
            return Err(FieldError::new(
                "extract_only_without_validation is not supported",
            ));
        }
        None => JwtRequirement::AllowMissingOrFailed,
    })
}

fn jwt_provider(p: &jwt::JwtProvider) -> Result<JwtProvider, FieldError> {
    use jwt::jwt_provider::JwksSourceSpecifier as J;
    let jwks = match &p.jwks_source_specifier {
        Some(J::LocalJwks(ds)) => {
            use envoy_types::pb::envoy::config::core::v3::data_source::Specifier as S;
            match &ds.specifier {
                Some(S::InlineString(s)) => JwksSource::Local(s.as_str().into()),
                Some(S::InlineBytes(b)) => JwksSource::Local(String::from_utf8_lossy(b).into()),
                _ => return Err(FieldError::new("only inline JWKS is supported").at("local_jwks")),
            }
        }
        Some(J::RemoteJwks(r)) => {
            let uri = r
                .http_uri
                .as_ref()
                .ok_or_else(|| FieldError::new("is required").at("remote_jwks.http_uri"))?;
            // As in Envoy, the cluster is required: the keys are fetched through it (its
            // endpoints and its TLS), never by routing the URI's host.
            let cluster = match &uri.http_upstream_type {
                Some(
                    envoy_types::pb::envoy::config::core::v3::http_uri::HttpUpstreamType::Cluster(
                        c,
                    ),
                ) if !c.is_empty() => c.as_str().into(),
                _ => {
                    return Err(FieldError::new("is required").at("remote_jwks.http_uri.cluster"));
                }
            };
            JwksSource::Remote {
                uri: uri.uri.as_str().into(),
                cluster,
                timeout: opt_duration(uri.timeout.as_ref(), "remote_jwks.http_uri.timeout")?
                    .unwrap_or(Duration::from_secs(1)),
                cache_duration: opt_duration(
                    r.cache_duration.as_ref(),
                    "remote_jwks.cache_duration",
                )?
                .unwrap_or(Duration::from_secs(300)),
            }
        }
        None => return Err(FieldError::new("local_jwks or remote_jwks is required")),
    };
    let from_headers = each("from_headers", &p.from_headers, |h| {
        Ok((
            header_name(&h.name).at("name")?,
            Box::<str>::from(h.value_prefix.as_str()),
        ))
    })?;
    let claim_to_headers = each("claim_to_headers", &p.claim_to_headers, |c| {
        Ok((
            Box::<str>::from(c.claim_name.as_str()),
            header_name(&c.header_name).at("header_name")?,
        ))
    })?;
    Ok(JwtProvider {
        issuer: p.issuer.as_str().into(),
        audiences: p.audiences.iter().map(|a| a.as_str().into()).collect(),
        jwks,
        from_headers,
        from_params: p.from_params.iter().map(|s| s.as_str().into()).collect(),
        from_cookies: p.from_cookies.iter().map(|s| s.as_str().into()).collect(),
        forward: p.forward,
        forward_payload_header: (!p.forward_payload_header.is_empty())
            .then(|| header_name(&p.forward_payload_header))
            .transpose()
            .at("forward_payload_header")?,
        claim_to_headers,
        payload_in_metadata: (!p.payload_in_metadata.is_empty())
            .then(|| p.payload_in_metadata.as_str().into()),
        clock_skew: Duration::from_secs(if p.clock_skew_seconds == 0 {
            60
        } else {
            u64::from(p.clock_skew_seconds)
        }),
    })
}

fn local_rate_limit(r: &rl::LocalRateLimit) -> Result<LocalRateLimit, FieldError> {
    let bucket = match &r.token_bucket {
        Some(tb) => {
            let fill_interval =
                opt_duration(tb.fill_interval.as_ref(), "token_bucket.fill_interval")?.ok_or_else(
                    || FieldError::new("is required").at("token_bucket.fill_interval"),
                )?;
            if fill_interval < Duration::from_millis(50) {
                return Err(
                    FieldError::new("must be at least 50ms").at("token_bucket.fill_interval")
                );
            }
            if tb.max_tokens == 0 {
                return Err(FieldError::new("must be greater than 0").at("token_bucket.max_tokens"));
            }
            Some(TokenBucket {
                max_tokens: tb.max_tokens,
                tokens_per_fill: tb.tokens_per_fill.as_ref().map_or(1, |v| v.value),
                fill_interval,
            })
        }
        None => None,
    };
    let pct = |p: &Option<envoy_types::pb::envoy::config::core::v3::RuntimeFractionalPercent>,
               field: &str| {
        match p {
            Some(rf) => rf
                .default_value
                .as_ref()
                .map(fraction)
                .transpose()
                .at(format!("{field}.default_value"))
                .map(|f| f.unwrap_or(Fraction { per_million: 0 })),
            None => Ok(Fraction { per_million: 0 }),
        }
    };
    let status = match &r.status {
        Some(s) => http::StatusCode::from_u16(s.code as u16)
            .ok()
            .filter(|_| (400..600).contains(&s.code))
            .ok_or_else(|| {
                FieldError::new(format!("invalid status {}", s.code)).at("status.code")
            })?,
        None => http::StatusCode::TOO_MANY_REQUESTS,
    };
    let response_headers = each("response_headers_to_add", &r.response_headers_to_add, |h| {
        let hv = h
            .header
            .as_ref()
            .ok_or_else(|| FieldError::new("is required").at("header"))?;
        let v = http::HeaderValue::from_str(&hv.value)
            .map_err(|_| FieldError::new("invalid header value").at("header.value"))?;
        Ok((header_name(&hv.key).at("header.key")?, v))
    })?;
    Ok(LocalRateLimit {
        bucket,
        enabled: pct(&r.filter_enabled, "filter_enabled")?,
        enforced: pct(&r.filter_enforced, "filter_enforced")?,
        status,
        response_headers,
    })
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::rbac::v3 as rbac;
    use envoy_types::pb::envoy::r#type::matcher::v3 as pbm;

    use super::*;

    fn deny_principal(identifier: rbac::principal::Identifier) -> rbac_filter::Rbac {
        rbac_filter::Rbac {
            rules: Some(rbac::Rbac {
                action: rbac::rbac::Action::Deny as i32,
                policies: [(
                    "p".to_owned(),
                    rbac::Policy {
                        permissions: vec![rbac::Permission {
                            rule: Some(rbac::permission::Rule::Any(true)),
                        }],
                        principals: vec![rbac::Principal {
                            identifier: Some(identifier),
                        }],
                        ..Default::default()
                    },
                )]
                .into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn exact(v: &str) -> pbm::StringMatcher {
        pbm::StringMatcher {
            match_pattern: Some(pbm::string_matcher::MatchPattern::Exact(v.into())),
            ignore_case: false,
        }
    }

    /// A rule on state nothing here fills would never match: a DENY built on one would let
    /// everything through, so it is refused.
    #[test]
    fn rules_on_state_nothing_fills_are_refused() {
        use rbac::principal::Identifier as I;
        let state = |key: &str| {
            I::FilterState(pbm::FilterStateMatcher {
                key: key.into(),
                matcher: Some(pbm::filter_state_matcher::Matcher::StringMatch(exact("x"))),
            })
        };
        assert!(rbac_config(&deny_principal(state("io.istio.peer_principal"))).is_ok());
        let e = rbac_config(&deny_principal(state("envoy.network.peer"))).unwrap_err();
        assert!(e.to_string().contains("filter_state.key"), "{e}");
        let metadata = |filter: &str| {
            I::Metadata(pbm::MetadataMatcher {
                filter: filter.into(),
                path: vec![pbm::metadata_matcher::PathSegment {
                    segment: Some(pbm::metadata_matcher::path_segment::Segment::Key(
                        "k".into(),
                    )),
                }],
                value: Some(pbm::ValueMatcher {
                    match_pattern: Some(pbm::value_matcher::MatchPattern::StringMatch(exact("v"))),
                }),
                invert: false,
            })
        };
        assert!(rbac_config(&deny_principal(metadata("istio_authn"))).is_ok());
        let e = rbac_config(&deny_principal(metadata("envoy.filters.http.lua"))).unwrap_err();
        assert!(e.to_string().contains("no filter here publishes"), "{e}");
    }

    /// As in Envoy, keys are fetched through a named cluster; a URI alone would have them
    /// fetched from wherever its host routes.
    #[test]
    fn remote_jwks_need_a_cluster() {
        use envoy_types::pb::envoy::config::core::v3 as core;
        let provider = |cluster: Option<&str>| jwt::JwtProvider {
            issuer: "i".into(),
            jwks_source_specifier: Some(jwt::jwt_provider::JwksSourceSpecifier::RemoteJwks(
                jwt::RemoteJwks {
                    http_uri: Some(core::HttpUri {
                        uri: "https://idp.example.com/keys".into(),
                        http_upstream_type: cluster
                            .map(|c| core::http_uri::HttpUpstreamType::Cluster(c.into())),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            )),
            ..Default::default()
        };
        for missing in [None, Some("")] {
            let e = jwt_provider(&provider(missing)).unwrap_err();
            assert_eq!(e.to_string(), "remote_jwks.http_uri.cluster: is required");
        }
        let p = jwt_provider(&provider(Some("outbound|443||idp.example.com"))).unwrap();
        assert!(
            matches!(p.jwks, JwksSource::Remote { cluster, .. } if &*cluster == "outbound|443||idp.example.com")
        );
    }
}
