//! RequestAuthentication → the `jwt_authn` filter, as istiod builds it: one provider per JWT
//! rule (`origins-N`), the payload published under the issuer's name (from which the RBAC
//! filters read `request.auth.principal` and claims), and one requirement for every path:
//! any valid token from a provider, or no token at all. A missing token passes (an
//! AuthorizationPolicy can then require one); an invalid one is rejected.

use envoy_types::pb::envoy::config::cluster::v3 as cluster;
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::endpoint::v3 as endpoint;
use envoy_types::pb::envoy::config::route::v3 as route;
use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3 as jwt;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as tls;
use envoy_types::pb::envoy::r#type::matcher::v3 as matcher;

use crate::config::istio::RequestAuthentication;

/// The filter for the RequestAuthentications that apply to a workload, if any.
pub(crate) fn filter(policies: &[&RequestAuthentication]) -> Option<jwt::JwtAuthentication> {
    let rules: Vec<_> = policies.iter().flat_map(|p| p.jwt_rules.iter()).collect();
    if rules.is_empty() {
        return None;
    }
    let mut providers = super::stable_map([]);
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

/// Where a JWKS URI points.
struct JwksTarget<'a> {
    /// The host as the URI spells it (an IPv6 address in brackets).
    host: &'a str,
    port: u16,
    tls: bool,
}

fn jwks_target(uri: &str) -> JwksTarget<'_> {
    let tls = uri.starts_with("https://");
    let rest = uri.split_once("://").map_or(uri, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !p.contains(']') && p.parse::<u16>().is_ok() => {
            (h, p.parse().unwrap_or(80))
        }
        _ => (authority, if tls { 443 } else { 80 }),
    };
    JwksTarget { host, port, tls }
}

/// The cluster name a JWKS URI is fetched through: `outbound|PORT||HOST`, as istiod names it.
fn jwks_cluster(uri: &str) -> String {
    let t = jwks_target(uri);
    super::outbound(t.port, "", t.host)
}

/// The clusters that fetch keys from JWKS hosts outside the registry, by name.
///
/// istiod fetches such keys itself and inlines them; this development control plane leaves
/// the fetch to the workload, through a cluster that reaches the host directly: its name
/// resolved by the client (an address used as is) and, for `https`, TLS verified against the
/// system's roots for that name. A JWKS host the registry knows is reached through its own
/// cluster instead (its endpoints, and the TLS its DestinationRule asks for).
pub(crate) fn external_jwks_clusters<'p>(
    policies: impl IntoIterator<Item = &'p RequestAuthentication>,
    registry: &crate::registry::Registry,
    namespace: &str,
) -> Vec<cluster::Cluster> {
    let mut out: Vec<cluster::Cluster> = Vec::new();
    for uri in policies
        .into_iter()
        .flat_map(|p| p.jwt_rules.iter())
        .filter(|r| r.jwks.is_none())
        .filter_map(|r| r.jwks_uri.as_deref())
    {
        let t = jwks_target(uri);
        let name = jwks_cluster(uri);
        if registry.resolve(t.host, namespace).is_some() || out.iter().any(|c| c.name == name) {
            continue;
        }
        out.push(external_cluster(name, &t));
    }
    out
}

fn external_cluster(name: String, t: &JwksTarget<'_>) -> cluster::Cluster {
    use cluster::cluster::{ClusterDiscoveryType, DiscoveryType, DnsLookupFamily};
    let host = t.host.trim_start_matches('[').trim_end_matches(']');
    let ip = host.parse::<std::net::IpAddr>().is_ok();
    let ty = if ip {
        DiscoveryType::Static
    } else {
        // The logical form: the one proxyless gRPC clients support too.
        DiscoveryType::LogicalDns
    };
    let endpoint = endpoint::LbEndpoint {
        host_identifier: Some(endpoint::lb_endpoint::HostIdentifier::Endpoint(
            endpoint::Endpoint {
                address: Some(core::Address {
                    address: Some(core::address::Address::SocketAddress(core::SocketAddress {
                        address: host.into(),
                        port_specifier: Some(core::socket_address::PortSpecifier::PortValue(
                            u32::from(t.port),
                        )),
                        ..Default::default()
                    })),
                }),
                ..Default::default()
            },
        )),
        ..Default::default()
    };
    let transport_socket = t.tls.then(|| {
        // The host's name (or address) must be in the certificate: Envoy checks no name on
        // its own, so the SAN matcher says it, for Envoy and for this library alike.
        let san = tls::SubjectAltNameMatcher {
            san_type: if ip {
                tls::subject_alt_name_matcher::SanType::IpAddress
            } else {
                tls::subject_alt_name_matcher::SanType::Dns
            } as i32,
            matcher: Some(matcher::StringMatcher {
                match_pattern: Some(matcher::string_matcher::MatchPattern::Exact(host.into())),
                ignore_case: false,
            }),
            ..Default::default()
        };
        let ctx = tls::UpstreamTlsContext {
            common_tls_context: Some(tls::CommonTlsContext {
                validation_context_type: Some(
                    tls::common_tls_context::ValidationContextType::ValidationContext(
                        tls::CertificateValidationContext {
                            system_root_certs: Some(Default::default()),
                            match_typed_subject_alt_names: vec![san],
                            ..Default::default()
                        },
                    ),
                ),
                ..Default::default()
            }),
            sni: if ip { String::new() } else { host.into() },
            ..Default::default()
        };
        core::TransportSocket {
            name: "envoy.transport_sockets.tls".into(),
            config_type: Some(core::transport_socket::ConfigType::TypedConfig(
                super::pack_any(ctx),
            )),
        }
    });
    cluster::Cluster {
        load_assignment: Some(endpoint::ClusterLoadAssignment {
            cluster_name: name.clone(),
            endpoints: vec![endpoint::LocalityLbEndpoints {
                lb_endpoints: vec![endpoint],
                ..Default::default()
            }],
            ..Default::default()
        }),
        name,
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(ty as i32)),
        dns_lookup_family: DnsLookupFamily::V4Preferred as i32,
        connect_timeout: Some(super::pb_duration(std::time::Duration::from_secs(10))),
        transport_socket,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwks_uris_name_their_host_and_port() {
        let cases = [
            ("https://idp.example.com/keys", "idp.example.com", 443, true),
            ("http://idp.example.com/keys", "idp.example.com", 80, false),
            (
                "https://idp.example.com:8443/k?x=1",
                "idp.example.com",
                8443,
                true,
            ),
            ("http://[::1]:9000/jwks.json", "[::1]", 9000, false),
            ("https://[::1]/jwks.json", "[::1]", 443, true),
            ("https://user@idp.test/keys", "idp.test", 443, true),
        ];
        for (uri, host, port, tls) in cases {
            let t = jwks_target(uri);
            assert_eq!((t.host, t.port, t.tls), (host, port, tls), "{uri}");
        }
        assert_eq!(
            jwks_cluster("https://idp.example.com/keys"),
            "outbound|443||idp.example.com"
        );
    }
}
