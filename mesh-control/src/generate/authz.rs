//! AuthorizationPolicy → Envoy RBAC filters, the way istiod builds them: one filter for DENY
//! policies placed before one for ALLOW policies (and AUDIT as a LOG filter); policy names
//! `ns[NS]-policy[NAME]-rule[I]`; a rule is `from` (any source) AND `to` (any operation) AND
//! every `when` condition.
//!
//! CUSTOM policies come first (Istio evaluates CUSTOM, then DENY, then ALLOW), as istiod
//! builds them: an RBAC filter whose *shadow* rules (`istio-ext-authz-…` policies, stat prefix
//! `istio_ext_authz_`) mark the requests the policies select, then an ext_authz filter enabled
//! only for requests so marked, calling the mesh config's extension provider. A policy whose
//! provider is missing, or a workload selected by policies of several providers, fails closed:
//! the CUSTOM rules become an enforced DENY.

// istiod still emits the `metadata` principal for request principals and JWT claims (Envoy
// deprecated it for `sourced_metadata`); we emit what clients and istiod agree on.
#![allow(deprecated)]

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::core::v3::CidrRange;
use envoy_types::pb::envoy::config::rbac::v3 as rbac;
use envoy_types::pb::envoy::config::route::v3::{
    HeaderMatcher, header_matcher::HeaderMatchSpecifier,
};
use envoy_types::pb::envoy::extensions::filters::http::ext_authz::v3 as ext_authz_pb;
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3 as rbac_filter;
use envoy_types::pb::envoy::r#type::matcher::v3 as matcher;
use envoy_types::pb::google::protobuf::Any;
use envoy_types::pb::google::protobuf::UInt32Value;
use envoy_types::util::pack_any;

use crate::config::istio::{
    AuthorizationPolicy, AuthzRule, MeshExtensionProvider, Operation, Source,
};

/// The authorization filters (typed configs) for the policies that apply to a workload, in
/// evaluation order. `provider` finds an extension provider and the cluster of its service.
pub(crate) fn filters<'a>(
    policies: &[(&str, &str, &AuthorizationPolicy)],
    provider: impl Fn(&str) -> Option<(&'a MeshExtensionProvider, String)>,
) -> Vec<(String, Any)> {
    let mut out = custom_filters(policies, provider);
    out.extend(
        rbac_filters(policies)
            .into_iter()
            .map(|(name, config)| (name, pack_any(config))),
    );
    out
}

/// Prefix of CUSTOM policy names, matched by the ext_authz filter's metadata check.
const EXT_AUTHZ_POLICY_PREFIX: &str = "istio-ext-authz";
/// Shadow stat prefix of the CUSTOM RBAC filter; it also prefixes the metadata key.
const EXT_AUTHZ_STAT_PREFIX: &str = "istio_ext_authz_";

fn custom_filters<'a>(
    policies: &[(&str, &str, &AuthorizationPolicy)],
    provider: impl Fn(&str) -> Option<(&'a MeshExtensionProvider, String)>,
) -> Vec<(String, Any)> {
    let custom: Vec<_> = policies
        .iter()
        .filter(|(_, _, p)| p.action.as_deref() == Some("CUSTOM"))
        .collect();
    if custom.is_empty() {
        return Vec::new();
    }
    let mut rules = BTreeMap::new();
    for (ns, name, p) in &custom {
        for (i, rule) in p.rules.iter().enumerate() {
            rules.insert(
                format!("{EXT_AUTHZ_POLICY_PREFIX}-ns[{ns}]-policy[{name}]-rule[{i}]"),
                policy(rule, ns, Fail::Always),
            );
        }
    }
    let mut names: Vec<&str> = custom
        .iter()
        .map(|(_, _, p)| p.provider.as_ref().map_or("", |x| x.name.as_str()))
        .collect();
    names.sort_unstable();
    names.dedup();
    let resolved = match names.as_slice() {
        [one] => provider(one).and_then(|(p, cluster)| ext_authz(p, cluster)),
        _ => None,
    };
    let Some(ext_authz) = resolved else {
        // Fail closed: what the CUSTOM policies select is denied.
        let deny = rbac_filter::Rbac {
            rules: Some(rbac::Rbac {
                action: rbac::rbac::Action::Deny as i32,
                policies: super::stable_map(rules),
                ..Default::default()
            }),
            ..Default::default()
        };
        return vec![("envoy.filters.http.rbac.custom".to_owned(), pack_any(deny))];
    };
    let mark = rbac_filter::Rbac {
        shadow_rules: Some(rbac::Rbac {
            action: rbac::rbac::Action::Deny as i32,
            policies: super::stable_map(rules),
            ..Default::default()
        }),
        shadow_rules_stat_prefix: EXT_AUTHZ_STAT_PREFIX.into(),
        ..Default::default()
    };
    vec![
        ("envoy.filters.http.rbac.custom".to_owned(), pack_any(mark)),
        (
            "envoy.filters.http.ext_authz".to_owned(),
            pack_any(ext_authz),
        ),
    ]
}

/// The ext_authz filter for a provider, or `None` when it has no ext_authz settings.
fn ext_authz(p: &MeshExtensionProvider, cluster: String) -> Option<ext_authz_pb::ExtAuthz> {
    use envoy_types::pb::envoy::config::core::v3::{
        self as core, GrpcService, HeaderValue, HttpUri, grpc_service, http_uri,
    };
    use envoy_types::pb::envoy::r#type::v3::HttpStatus;
    use ext_authz_pb::ext_authz::Services;
    // istiod's default check timeout.
    const DEFAULT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);
    let names = |list: &[String]| -> Option<matcher::ListStringMatcher> {
        (!list.is_empty()).then(|| matcher::ListStringMatcher {
            patterns: list.iter().map(|h| header_name_matcher(h)).collect(),
        })
    };
    let body = |b: &Option<crate::config::istio::RequestBodyInCheck>| {
        b.map(|b| ext_authz_pb::BufferSettings {
            max_request_bytes: b.max_request_bytes.unwrap_or(8192),
            allow_partial_message: b.allow_partial_message,
            pack_as_bytes: b.pack_as_bytes,
        })
    };
    let status = |s: &Option<String>| {
        s.as_deref()
            .and_then(|s| s.parse::<i32>().ok())
            .map(|code| HttpStatus { code })
    };
    let enabled = matcher::MetadataMatcher {
        filter: "envoy.filters.http.rbac".into(),
        path: vec![matcher::metadata_matcher::PathSegment {
            segment: Some(matcher::metadata_matcher::path_segment::Segment::Key(
                format!("{EXT_AUTHZ_STAT_PREFIX}shadow_effective_policy_id"),
            )),
        }],
        value: Some(matcher::ValueMatcher {
            match_pattern: Some(matcher::value_matcher::MatchPattern::StringMatch(
                matcher::StringMatcher {
                    match_pattern: Some(matcher::string_matcher::MatchPattern::Prefix(
                        EXT_AUTHZ_POLICY_PREFIX.into(),
                    )),
                    ..Default::default()
                },
            )),
        }),
        ..Default::default()
    };
    let mut out = ext_authz_pb::ExtAuthz {
        transport_api_version: core::ApiVersion::V3 as i32,
        filter_enabled_metadata: Some(enabled),
        ..Default::default()
    };
    if let Some(h) = &p.envoy_ext_authz_http {
        let timeout = h.timeout.map_or(DEFAULT_TIMEOUT, |d| d.0);
        let mut request_headers = h.include_request_headers_in_check.clone();
        request_headers.extend(h.include_headers_in_check.iter().cloned());
        out.services = Some(Services::HttpService(ext_authz_pb::HttpService {
            server_uri: Some(HttpUri {
                uri: format!("http://{}:{}", h.service, h.port),
                timeout: Some(super::pb_duration(timeout)),
                http_upstream_type: Some(http_uri::HttpUpstreamType::Cluster(cluster)),
            }),
            path_prefix: h.path_prefix.clone().unwrap_or_default(),
            authorization_request: Some(ext_authz_pb::AuthorizationRequest {
                headers_to_add: h
                    .include_additional_headers_in_check
                    .iter()
                    .map(|(k, v)| HeaderValue {
                        key: k.clone(),
                        value: v.clone(),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }),
            authorization_response: Some(ext_authz_pb::AuthorizationResponse {
                allowed_upstream_headers: names(&h.headers_to_upstream_on_allow),
                allowed_client_headers: names(&h.headers_to_downstream_on_deny),
                allowed_client_headers_on_success: names(&h.headers_to_downstream_on_allow),
                ..Default::default()
            }),
            ..Default::default()
        }));
        out.allowed_headers = names(&request_headers);
        out.failure_mode_allow = h.fail_open;
        out.status_on_error = status(&h.status_on_error);
        out.with_request_body = body(&h.include_request_body_in_check);
    } else if let Some(g) = &p.envoy_ext_authz_grpc {
        let timeout = g.timeout.map_or(DEFAULT_TIMEOUT, |d| d.0);
        out.services = Some(Services::GrpcService(GrpcService {
            timeout: Some(super::pb_duration(timeout)),
            target_specifier: Some(grpc_service::TargetSpecifier::EnvoyGrpc(
                grpc_service::EnvoyGrpc {
                    cluster_name: cluster,
                    authority: g.service.clone(),
                    ..Default::default()
                },
            )),
            ..Default::default()
        }));
        out.failure_mode_allow = g.fail_open;
        out.status_on_error = status(&g.status_on_error);
        out.with_request_body = body(&g.include_request_body_in_check);
    } else {
        return None;
    }
    Some(out)
}

/// A header name in a provider list: exact, or `prefix*` / `*suffix`, case-insensitive.
fn header_name_matcher(h: &str) -> matcher::StringMatcher {
    use matcher::string_matcher::MatchPattern as P;
    let pattern = if let Some(p) = h.strip_suffix('*') {
        P::Prefix(p.into())
    } else if let Some(s) = h.strip_prefix('*') {
        P::Suffix(s.into())
    } else {
        P::Exact(h.into())
    };
    matcher::StringMatcher {
        match_pattern: Some(pattern),
        ignore_case: true,
    }
}

/// The RBAC filters of DENY, ALLOW and AUDIT policies, in evaluation order.
fn rbac_filters(
    policies: &[(&str, &str, &AuthorizationPolicy)],
) -> Vec<(String, rbac_filter::Rbac)> {
    let mut by_action: BTreeMap<u8, (rbac::rbac::Action, BTreeMap<String, rbac::Policy>)> =
        BTreeMap::new();
    for (ns, name, p) in policies {
        let (order, action) = match p.action.as_deref().unwrap_or("ALLOW") {
            "DENY" => (0, rbac::rbac::Action::Deny),
            "ALLOW" => (1, rbac::rbac::Action::Allow),
            "AUDIT" => (2, rbac::rbac::Action::Log),
            // CUSTOM is built by `custom_filters`.
            _ => continue,
        };
        let entry = by_action
            .entry(order)
            .or_insert_with(|| (action, BTreeMap::new()));
        for (i, rule) in p.rules.iter().enumerate() {
            entry.1.insert(
                format!("ns[{ns}]-policy[{name}]-rule[{i}]"),
                policy(rule, ns, Fail::of(action)),
            );
        }
    }
    by_action
        .into_values()
        .map(|(action, policies)| {
            let name = match action {
                rbac::rbac::Action::Deny => "envoy.filters.http.rbac.deny",
                rbac::rbac::Action::Allow => "envoy.filters.http.rbac.allow",
                _ => "envoy.filters.http.rbac.audit",
            };
            // An ALLOW filter with no policies denies everything: Istio's "allow nothing".
            let config = rbac_filter::Rbac {
                rules: Some(rbac::Rbac {
                    action: action as i32,
                    policies: super::stable_map(policies),
                    ..Default::default()
                }),
                ..Default::default()
            };
            (name.to_owned(), config)
        })
        .collect()
}

/// One rule: its `from` sources (any), its `to` operations (any) and every `when` condition.
/// `ns` is the policy's namespace (a bare service account is in it); `fail` is what a
/// condition that cannot be generated becomes, so that it narrows an ALLOW and widens a DENY
/// (`validate` refuses such policies; this only keeps generation from ever failing open).
fn policy(rule: &AuthzRule, ns: &str, fail: Fail) -> rbac::Policy {
    let mut permissions: Vec<rbac::Permission> = Vec::new();
    if !rule.to.is_empty() {
        permissions.push(or_perm(
            rule.to
                .iter()
                .map(|t| operation(&t.operation, fail))
                .collect(),
        ));
    }
    let mut principals: Vec<rbac::Principal> = Vec::new();
    if !rule.from.is_empty() {
        principals.push(or_id(
            rule.from.iter().map(|f| source(&f.source, ns)).collect(),
        ));
    }
    for c in &rule.when {
        match condition(c, ns) {
            Ok(Generated::Permission(p)) => permissions.push(p),
            Ok(Generated::Principal(p)) => principals.push(p),
            Err(why) => {
                tracing::error!(key = %c.key, %why, "authorization condition cannot be generated; failing closed");
                principals.push(fail.principal());
            }
        }
    }
    rbac::Policy {
        permissions: vec![and_perm(if permissions.is_empty() {
            vec![any_perm()]
        } else {
            permissions
        })],
        principals: vec![and_id(if principals.is_empty() {
            vec![any_id()]
        } else {
            principals
        })],
        ..Default::default()
    }
}

/// What a part of a rule that cannot be generated turns into.
#[derive(Clone, Copy, Debug)]
enum Fail {
    /// Matches nothing: the ALLOW rule allows nothing.
    Never,
    /// Matches everything: the DENY (or CUSTOM, AUDIT) rule applies to every request.
    Always,
}

impl Fail {
    fn of(action: rbac::rbac::Action) -> Self {
        match action {
            rbac::rbac::Action::Allow => Fail::Never,
            _ => Fail::Always,
        }
    }

    /// The same intent under a negation (`notPaths`, `notPorts`): what would have matched
    /// must not, and the other way round.
    fn inverted(self) -> Self {
        match self {
            Fail::Never => Fail::Always,
            Fail::Always => Fail::Never,
        }
    }

    fn principal(self) -> rbac::Principal {
        match self {
            Fail::Never => not_id(any_id()),
            Fail::Always => any_id(),
        }
    }

    fn permission(self) -> rbac::Permission {
        match self {
            Fail::Never => not_perm(any_perm()),
            Fail::Always => any_perm(),
        }
    }
}

fn any_perm() -> rbac::Permission {
    rbac::Permission {
        rule: Some(rbac::permission::Rule::Any(true)),
    }
}
fn any_id() -> rbac::Principal {
    rbac::Principal {
        identifier: Some(rbac::principal::Identifier::Any(true)),
    }
}
fn and_perm(rules: Vec<rbac::Permission>) -> rbac::Permission {
    rbac::Permission {
        rule: Some(rbac::permission::Rule::AndRules(rbac::permission::Set {
            rules,
        })),
    }
}
fn or_perm(rules: Vec<rbac::Permission>) -> rbac::Permission {
    rbac::Permission {
        rule: Some(rbac::permission::Rule::OrRules(rbac::permission::Set {
            rules,
        })),
    }
}
fn not_perm(p: rbac::Permission) -> rbac::Permission {
    rbac::Permission {
        rule: Some(rbac::permission::Rule::NotRule(Box::new(p))),
    }
}
fn and_id(ids: Vec<rbac::Principal>) -> rbac::Principal {
    rbac::Principal {
        identifier: Some(rbac::principal::Identifier::AndIds(rbac::principal::Set {
            ids,
        })),
    }
}
fn or_id(ids: Vec<rbac::Principal>) -> rbac::Principal {
    rbac::Principal {
        identifier: Some(rbac::principal::Identifier::OrIds(rbac::principal::Set {
            ids,
        })),
    }
}
fn not_id(p: rbac::Principal) -> rbac::Principal {
    rbac::Principal {
        identifier: Some(rbac::principal::Identifier::NotId(Box::new(p))),
    }
}

/// Istio's string forms: `*` any non-empty value, `*x` suffix, `x*` prefix, else exact (a `*`
/// elsewhere is a literal character, as in istiod).
fn istio_string(v: &str, prefix: &str) -> matcher::StringMatcher {
    use matcher::string_matcher::MatchPattern as P;
    let pattern = if v == "*" {
        P::SafeRegex(matcher::RegexMatcher {
            regex: ".+".into(),
            ..Default::default()
        })
    } else if let Some(rest) = v.strip_prefix('*') {
        if prefix.is_empty() {
            P::Suffix(rest.to_owned())
        } else {
            // The prefix still has to be there: `*/sa/x` is not "any name ending in /sa/x".
            P::SafeRegex(matcher::RegexMatcher {
                regex: format!("{}.*{}", regex_escape(prefix), regex_escape(rest)),
                ..Default::default()
            })
        }
    } else if let Some(rest) = v.strip_suffix('*') {
        P::Prefix(format!("{prefix}{rest}"))
    } else {
        P::Exact(format!("{prefix}{v}"))
    };
    matcher::StringMatcher {
        match_pattern: Some(pattern),
        ignore_case: false,
    }
}

/// A header rule in Istio's forms: `*` is presence, `*x` a suffix, `x*` a prefix.
fn istio_header(name: &str, v: &str, ignore_case: bool) -> HeaderMatcher {
    if v == "*" {
        return HeaderMatcher {
            name: name.into(),
            header_match_specifier: Some(HeaderMatchSpecifier::PresentMatch(true)),
            ..Default::default()
        };
    }
    let mut m = istio_string(v, "");
    m.ignore_case = ignore_case;
    header(name, m)
}

fn header(name: &str, m: matcher::StringMatcher) -> HeaderMatcher {
    HeaderMatcher {
        name: name.into(),
        header_match_specifier: Some(HeaderMatchSpecifier::StringMatch(m)),
        ..Default::default()
    }
}

fn cidr(s: &str) -> CidrRange {
    let (addr, len) = s
        .split_once('/')
        .unwrap_or((s, if s.contains(':') { "128" } else { "32" }));
    CidrRange {
        address_prefix: addr.to_owned(),
        prefix_len: len.parse().ok().map(|value| UInt32Value { value }),
    }
}

/// `values` OR-ed, `not_values` each negated; both AND-ed.
fn with_negations<T>(
    values: &[String],
    not_values: &[String],
    one: impl Fn(&str) -> T,
    or: impl Fn(Vec<T>) -> T,
    not: impl Fn(T) -> T,
) -> Vec<T> {
    let mut out = Vec::new();
    if !values.is_empty() {
        out.push(or(values.iter().map(|v| one(v)).collect()));
    }
    if !not_values.is_empty() {
        out.push(not(or(not_values.iter().map(|v| one(v)).collect())));
    }
    out
}

fn spiffe(v: &str) -> rbac::Principal {
    let m = istio_string(v, "spiffe://");
    rbac::Principal {
        identifier: Some(rbac::principal::Identifier::Authenticated(
            rbac::principal::Authenticated {
                principal_name: Some(m),
            },
        )),
    }
}

fn authenticated(m: matcher::StringMatcher) -> rbac::Principal {
    rbac::Principal {
        identifier: Some(rbac::principal::Identifier::Authenticated(
            rbac::principal::Authenticated {
                principal_name: Some(m),
            },
        )),
    }
}

fn regex_matcher(regex: String) -> matcher::StringMatcher {
    matcher::StringMatcher {
        match_pattern: Some(matcher::string_matcher::MatchPattern::SafeRegex(
            matcher::RegexMatcher {
                regex,
                ..Default::default()
            },
        )),
        ignore_case: false,
    }
}

/// A namespace as istiod matches it: `.*/ns/<ns>/.*`, a `*` in the value being any text.
fn namespace_principal(ns: &str) -> rbac::Principal {
    let pattern: Vec<String> = ns.split('*').map(regex_escape).collect();
    authenticated(regex_matcher(format!(".*/ns/{}/.*", pattern.join(".*"))))
}

/// A service account as istiod matches it: `ns/sa`, or `sa` in the policy's namespace.
fn service_account_principal(sa: &str, policy_ns: &str) -> rbac::Principal {
    let (ns, name) = sa.split_once('/').unwrap_or((policy_ns, sa));
    authenticated(regex_matcher(format!(
        "spiffe://.+/ns/{}/(.+/|)sa/{}(/.+)?",
        regex_escape(ns),
        regex_escape(name)
    )))
}

/// A trust domain: `td` (its identities), `*` (any), or one `*` at either end.
fn trust_domain_principal(td: &str) -> rbac::Principal {
    use matcher::string_matcher::MatchPattern as P;
    let m = match td {
        "*" => matcher::StringMatcher {
            match_pattern: Some(P::Prefix("spiffe://".into())),
            ignore_case: false,
        },
        _ if td.contains('*') => {
            let parts: Vec<String> = td.split('*').map(regex_escape).collect();
            return authenticated(regex_matcher(format!(
                "spiffe://{}/.*",
                parts.join("[^/]*")
            )));
        }
        _ => matcher::StringMatcher {
            match_pattern: Some(P::Prefix(format!("spiffe://{td}/"))),
            ignore_case: false,
        },
    };
    authenticated(m)
}

fn request_principal(v: &str) -> rbac::Principal {
    metadata_principal("request.auth.principal", None, istio_string(v, ""))
}

fn metadata_principal(key: &str, sub: Option<&str>, m: matcher::StringMatcher) -> rbac::Principal {
    let mut path = vec![matcher::metadata_matcher::PathSegment {
        segment: Some(matcher::metadata_matcher::path_segment::Segment::Key(
            key.into(),
        )),
    }];
    let value = match sub {
        Some(claim) => {
            path.push(matcher::metadata_matcher::PathSegment {
                segment: Some(matcher::metadata_matcher::path_segment::Segment::Key(
                    claim.into(),
                )),
            });
            matcher::ValueMatcher {
                match_pattern: Some(matcher::value_matcher::MatchPattern::ListMatch(Box::new(
                    matcher::ListMatcher {
                        match_pattern: Some(matcher::list_matcher::MatchPattern::OneOf(Box::new(
                            matcher::ValueMatcher {
                                match_pattern: Some(
                                    matcher::value_matcher::MatchPattern::StringMatch(m),
                                ),
                            },
                        ))),
                    },
                ))),
            }
        }
        None => matcher::ValueMatcher {
            match_pattern: Some(matcher::value_matcher::MatchPattern::StringMatch(m)),
        },
    };
    rbac::Principal {
        identifier: Some(rbac::principal::Identifier::Metadata(
            matcher::MetadataMatcher {
                filter: "istio_authn".into(),
                path,
                value: Some(value),
                invert: false,
            },
        )),
    }
}

fn source(s: &Source, policy_ns: &str) -> rbac::Principal {
    let mut ids = Vec::new();
    ids.extend(with_negations(
        &s.principals,
        &s.not_principals,
        spiffe,
        or_id,
        not_id,
    ));
    ids.extend(with_negations(
        &s.request_principals,
        &s.not_request_principals,
        request_principal,
        or_id,
        not_id,
    ));
    ids.extend(with_negations(
        &s.namespaces,
        &s.not_namespaces,
        namespace_principal,
        or_id,
        not_id,
    ));
    ids.extend(with_negations(
        &s.service_accounts,
        &s.not_service_accounts,
        |sa| service_account_principal(sa, policy_ns),
        or_id,
        not_id,
    ));
    ids.extend(with_negations(
        &s.trust_domains,
        &s.not_trust_domains,
        trust_domain_principal,
        or_id,
        not_id,
    ));
    let ip = |v: &str| rbac::Principal {
        identifier: Some(rbac::principal::Identifier::DirectRemoteIp(cidr(v))),
    };
    ids.extend(with_negations(
        &s.ip_blocks,
        &s.not_ip_blocks,
        ip,
        or_id,
        not_id,
    ));
    let remote = |v: &str| rbac::Principal {
        identifier: Some(rbac::principal::Identifier::RemoteIp(cidr(v))),
    };
    ids.extend(with_negations(
        &s.remote_ip_blocks,
        &s.not_remote_ip_blocks,
        remote,
        or_id,
        not_id,
    ));
    and_id(if ids.is_empty() { vec![any_id()] } else { ids })
}

fn operation(o: &Operation, fail: Fail) -> rbac::Permission {
    let mut rules = Vec::new();
    let host = |v: &str| rbac::Permission {
        rule: Some(rbac::permission::Rule::Header(istio_header(
            ":authority",
            v,
            true,
        ))),
    };
    rules.extend(with_negations(
        &o.hosts,
        &o.not_hosts,
        host,
        or_perm,
        not_perm,
    ));
    let method = |v: &str| rbac::Permission {
        rule: Some(rbac::permission::Rule::Header(istio_header(
            ":method", v, false,
        ))),
    };
    rules.extend(with_negations(
        &o.methods,
        &o.not_methods,
        method,
        or_perm,
        not_perm,
    ));
    // Paths and ports can fail to generate: a failing value becomes `fail` among `values`,
    // and its inverse among `notValues`, which are negated.
    let negatable =
        |values: &[String], not_values: &[String], one: &dyn Fn(&str, Fail) -> rbac::Permission| {
            let mut out = Vec::new();
            if !values.is_empty() {
                out.push(or_perm(values.iter().map(|v| one(v, fail)).collect()));
            }
            if !not_values.is_empty() {
                out.push(not_perm(or_perm(
                    not_values.iter().map(|v| one(v, fail.inverted())).collect(),
                )));
            }
            out
        };
    let path = |v: &str, fail: Fail| {
        if v.contains('{') || v.contains('}') {
            // `{*}` / `{**}` templates: `validate` refuses them.
            return fail.permission();
        }
        rbac::Permission {
            rule: Some(rbac::permission::Rule::UrlPath(matcher::PathMatcher {
                rule: Some(matcher::path_matcher::Rule::Path(istio_string(v, ""))),
            })),
        }
    };
    rules.extend(negatable(&o.paths, &o.not_paths, &path));
    let port = |v: &str, fail: Fail| match parse_port(v) {
        Ok(port) => rbac::Permission {
            rule: Some(rbac::permission::Rule::DestinationPort(u32::from(port))),
        },
        // `validate` refuses a port that does not parse.
        Err(_) => fail.permission(),
    };
    rules.extend(negatable(&o.ports, &o.not_ports, &port));
    and_perm(if rules.is_empty() {
        vec![any_perm()]
    } else {
        rules
    })
}

/// A port as Istio reads one: a decimal number up to 65535.
pub(crate) fn parse_port(v: &str) -> Result<u16, String> {
    v.parse::<u16>().map_err(|e| format!("bad port ({v}): {e}"))
}

/// A `when` condition, generated.
enum Generated {
    /// About the request or its destination.
    Permission(rbac::Permission),
    /// About the caller.
    Principal(rbac::Principal),
}

/// Every `when` key Istio defines, as istiod generates it; anything else is an error
/// ([`condition_key_error`] says which, for `validate`).
fn condition(c: &crate::config::istio::Condition, policy_ns: &str) -> Result<Generated, String> {
    if let Some(why) = condition_key_error(&c.key) {
        return Err(why);
    }
    let key = c.key.as_str();
    let bracketed = |prefix: &str| {
        key.strip_prefix(prefix)
            .and_then(|k| k.strip_prefix('['))
            .and_then(|k| k.strip_suffix(']'))
            .map(str::to_owned)
    };
    let perm = |one: &dyn Fn(&str) -> Result<rbac::Permission, String>| {
        let ok = |vs: &[String]| vs.iter().map(|v| one(v)).collect::<Result<Vec<_>, _>>();
        let mut out = Vec::new();
        if !c.values.is_empty() {
            out.push(or_perm(ok(&c.values)?));
        }
        if !c.not_values.is_empty() {
            out.push(not_perm(or_perm(ok(&c.not_values)?)));
        }
        Ok::<_, String>(Generated::Permission(and_perm(out)))
    };
    let id = |one: &dyn Fn(&str) -> rbac::Principal| {
        Generated::Principal(and_id(with_negations(
            &c.values,
            &c.not_values,
            one,
            or_id,
            not_id,
        )))
    };
    Ok(match key {
        "destination.ip" => perm(&|v| {
            Ok(rbac::Permission {
                rule: Some(rbac::permission::Rule::DestinationIp(cidr(v))),
            })
        })?,
        "destination.port" => perm(&|v| {
            Ok(rbac::Permission {
                rule: Some(rbac::permission::Rule::DestinationPort(u32::from(
                    parse_port(v)?,
                ))),
            })
        })?,
        "connection.sni" => perm(&|v| {
            Ok(rbac::Permission {
                rule: Some(rbac::permission::Rule::RequestedServerName(istio_string(
                    v, "",
                ))),
            })
        })?,
        "source.ip" => id(&|v| rbac::Principal {
            identifier: Some(rbac::principal::Identifier::DirectRemoteIp(cidr(v))),
        }),
        "remote.ip" => id(&|v| rbac::Principal {
            identifier: Some(rbac::principal::Identifier::RemoteIp(cidr(v))),
        }),
        "source.namespace" => id(&namespace_principal),
        "source.principal" => id(&spiffe),
        "source.serviceAccount" => id(&|v| service_account_principal(v, policy_ns)),
        "source.trustDomain" => id(&trust_domain_principal),
        "request.auth.principal" => id(&request_principal),
        "request.auth.audiences" => {
            id(&|v| metadata_principal("request.auth.audiences", None, istio_string(v, "")))
        }
        "request.auth.presenter" => {
            id(&|v| metadata_principal("request.auth.presenter", None, istio_string(v, "")))
        }
        _ => {
            if let Some(h) = bracketed("request.headers") {
                let h = h.to_ascii_lowercase();
                id(&move |v| rbac::Principal {
                    identifier: Some(rbac::principal::Identifier::Header(istio_header(
                        &h, v, false,
                    ))),
                })
            } else if let Some(claim) = bracketed("request.auth.claims") {
                // `[a][b]` is the nested claim a.b; `[a.b]` is one claim named "a.b".
                let path: Vec<&str> = claim.split("][").collect();
                if path.len() > 1 {
                    return Err(format!(
                        "nested claims ({key}) are not supported by mesh-control"
                    ));
                }
                id(&|v| {
                    metadata_principal("request.auth.claims", Some(path[0]), istio_string(v, ""))
                })
            } else {
                return Err(format!("unknown attribute {key}"));
            }
        }
    })
}

/// Why a `when` key is refused, in istiod's words, or `None` for a key it generates.
pub(crate) fn condition_key_error(key: &str) -> Option<String> {
    const PLAIN: &[&str] = &[
        "source.ip",
        "remote.ip",
        "source.namespace",
        "source.principal",
        "source.serviceAccount",
        "source.trustDomain",
        "request.auth.principal",
        "request.auth.audiences",
        "request.auth.presenter",
        "destination.ip",
        "destination.port",
        "connection.sni",
    ];
    if key.is_empty() {
        return Some("`key` must not be empty".into());
    }
    if PLAIN.contains(&key) {
        return None;
    }
    if key == "destination.namespace" {
        return Some(format!(
            "attribute {key} is replaced by the metadata.namespace"
        ));
    }
    if key.starts_with("destination.labels") {
        return Some(format!(
            "attribute {key} is replaced by the workload selector"
        ));
    }
    if key == "destination.name" || key == "destination.user" {
        return Some(format!(
            "deprecated attribute {key}: only supported in v1alpha1"
        ));
    }
    let bracketed = |prefix: &str| {
        key.strip_prefix(prefix)
            .map(|rest| rest.starts_with('[') && rest.ends_with(']') && rest.len() > 2)
    };
    for prefix in ["request.headers", "request.auth.claims"] {
        match bracketed(prefix) {
            Some(true) => {
                if prefix == "request.auth.claims" && key.contains("][") {
                    return Some(format!(
                        "nested claims ({key}) are not supported by mesh-control"
                    ));
                }
                return None;
            }
            Some(false) => return Some(format!("bad key ({key}): should have format a[b]")),
            None => {}
        }
    }
    if let Some(rest) = key.strip_prefix("experimental.envoy.filters.") {
        return match rest.split_once('[') {
            // Generated as istiod does, but a mesh server has no such filter to fill the
            // metadata: the rule could never match (a DENY would fail open), so it is refused.
            Some((filter, k)) if !filter.is_empty() && k.len() > 1 && k.ends_with(']') => {
                Some(format!(
                    "{key}: mesh's servers have no envoy.filters.{filter} filter to read it from"
                ))
            }
            _ => Some(format!("invalid key: {key}")),
        };
    }
    Some(format!("unknown attribute: {key}"))
}

fn regex_escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                vec![c]
            } else {
                vec!['\\', c]
            }
        })
        .collect()
}
