//! RequestAuthentication → the `jwt_authn` filter, as istiod builds it: one provider per JWT
//! rule (`origins-N`), the payload published under the issuer's name (from which the RBAC
//! filters read `request.auth.principal` and claims), and one requirement for every path:
//! any valid token from a provider, or no token at all. A missing token passes (an
//! AuthorizationPolicy can then require one); an invalid one is rejected.

use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::route::v3 as route;
use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3 as jwt;

use crate::config::istio::RequestAuthentication;

/// The filter for the RequestAuthentications that apply to a workload, if any.
pub(crate) fn filter(policies: &[&RequestAuthentication]) -> Option<jwt::JwtAuthentication> {
    let rules: Vec<_> = policies.iter().flat_map(|p| p.jwt_rules.iter()).collect();
    if rules.is_empty() {
        return None;
    }
    let mut providers = std::collections::HashMap::new();
    let mut any_of = Vec::new();
    for (i, r) in rules.iter().enumerate() {
        let name = format!("origins-{i}");
        let jwks = match (&r.jwks, &r.jwks_uri) {
            (Some(inline), _) => {
                jwt::jwt_provider::JwksSourceSpecifier::LocalJwks(core::DataSource {
                    specifier: Some(core::data_source::Specifier::InlineString(inline.clone())),
                    ..Default::default()
                })
            }
            (None, Some(uri)) => {
                jwt::jwt_provider::JwksSourceSpecifier::RemoteJwks(jwt::RemoteJwks {
                    http_uri: Some(core::HttpUri {
                        uri: uri.clone(),
                        timeout: Some(super::pb_duration(
                            r.timeout
                                .map(|t| t.0)
                                .unwrap_or(std::time::Duration::from_secs(5)),
                        )),
                        http_upstream_type: Some(core::http_uri::HttpUpstreamType::Cluster(
                            jwks_cluster(uri),
                        )),
                    }),
                    cache_duration: Some(super::pb_duration(std::time::Duration::from_secs(300))),
                    ..Default::default()
                })
            }
            // Validation requires one of them; an empty key set rejects every token.
            (None, None) => jwt::jwt_provider::JwksSourceSpecifier::LocalJwks(core::DataSource {
                specifier: Some(core::data_source::Specifier::InlineString(
                    r#"{"keys":[]}"#.into(),
                )),
                ..Default::default()
            }),
        };
        let provider = jwt::JwtProvider {
            issuer: r.issuer.clone(),
            audiences: r.audiences.clone(),
            forward: r.forward_original_token.unwrap_or(false),
            from_headers: r
                .from_headers
                .iter()
                .map(|h| jwt::JwtHeader {
                    name: h.name.clone(),
                    value_prefix: h.prefix.clone().unwrap_or_default(),
                })
                .collect(),
            from_params: r.from_params.clone(),
            forward_payload_header: r.output_payload_to_header.clone().unwrap_or_default(),
            claim_to_headers: r
                .output_claim_to_headers
                .iter()
                .map(|c| jwt::JwtClaimToHeader {
                    header_name: c.header.clone(),
                    claim_name: c.claim.clone(),
                    ..Default::default()
                })
                .collect(),
            payload_in_metadata: r.issuer.clone(),
            jwks_source_specifier: Some(jwks),
            ..Default::default()
        };
        providers.insert(name.clone(), provider);
        any_of.push(jwt::JwtRequirement {
            requires_type: Some(jwt::jwt_requirement::RequiresType::ProviderName(name)),
        });
    }
    any_of.push(jwt::JwtRequirement {
        requires_type: Some(jwt::jwt_requirement::RequiresType::AllowMissing(
            Default::default(),
        )),
    });
    let everything = route::RouteMatch {
        path_specifier: Some(route::route_match::PathSpecifier::Prefix("/".into())),
        ..Default::default()
    };
    Some(jwt::JwtAuthentication {
        providers,
        rules: vec![jwt::RequirementRule {
            r#match: Some(everything),
            requirement_type: Some(jwt::requirement_rule::RequirementType::Requires(
                jwt::JwtRequirement {
                    requires_type: Some(jwt::jwt_requirement::RequiresType::RequiresAny(
                        jwt::JwtRequirementOrList {
                            requirements: any_of,
                        },
                    )),
                },
            )),
        }],
        ..Default::default()
    })
}

/// The cluster name a JWKS URI is fetched through: `outbound|PORT||HOST`, as istiod names it.
fn jwks_cluster(uri: &str) -> String {
    let rest = uri.split_once("://").map_or(uri, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or(rest);
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if p.parse::<u16>().is_ok() => (h, p.parse().unwrap_or(80)),
        _ => (authority, if uri.starts_with("https") { 443 } else { 80 }),
    };
    super::outbound(port, "", host)
}
