//! DestinationRule + registry → `Cluster` and `ClusterLoadAssignment`.

use std::collections::BTreeMap;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3 as cluster;
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::endpoint::v3 as endpoint;
use envoy_types::pb::envoy::config::route::v3 as route;
use envoy_types::pb::envoy::extensions::load_balancing_policies as lbp;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as tls;
use envoy_types::pb::envoy::extensions::upstreams::http::v3 as upstream_http;
use envoy_types::pb::envoy::r#type::matcher::v3 as matcher;
use envoy_types::pb::google::protobuf::{UInt32Value, UInt64Value};
use envoy_types::util::pack_any;

use super::{Generator, pb_duration};
use crate::config::istio::{self, TrafficPolicy};
use crate::registry::{Port, Service};

/// The effective policy for one port of one subset: subset over rule, port level over both.
#[derive(Default)]
struct Effective<'a> {
    lb: Option<&'a istio::LoadBalancerSettings>,
    pool: Option<&'a istio::ConnectionPoolSettings>,
    outlier: Option<&'a istio::OutlierDetection>,
    tls: Option<&'a istio::ClientTlsSettings>,
}

impl<'a> Effective<'a> {
    fn apply(&mut self, p: &'a TrafficPolicy, port: u16) {
        self.lb = p.load_balancer.as_ref().or(self.lb);
        self.pool = p.connection_pool.as_ref().or(self.pool);
        self.outlier = p.outlier_detection.as_ref().or(self.outlier);
        self.tls = p.tls.as_ref().or(self.tls);
        if let Some(pl) = p
            .port_level_settings
            .iter()
            .find(|pl| pl.port.is_some_and(|x| x.number == u32::from(port)))
        {
            self.lb = pl.load_balancer.as_ref().or(self.lb);
            self.pool = pl.connection_pool.as_ref().or(self.pool);
            self.outlier = pl.outlier_detection.as_ref().or(self.outlier);
            self.tls = pl.tls.as_ref().or(self.tls);
        }
    }
}

fn effective<'a>(g: &'a Generator<'_>, svc: &Service, port: u16, subset: &str) -> Effective<'a> {
    let mut e = Effective::default();
    if let Some(dr) = g.destination_rule(svc) {
        if let Some(p) = &dr.traffic_policy {
            e.apply(p, port);
        }
        if let Some(p) = dr
            .subsets
            .iter()
            .find(|s| s.name == subset)
            .and_then(|s| s.traffic_policy.as_ref())
        {
            e.apply(p, port);
        }
    }
    e
}

pub(super) fn cluster(
    g: &Generator<'_>,
    node: &super::NodeInfo,
    name: &str,
    svc: &Service,
    port: &Port,
    subset: &str,
) -> cluster::Cluster {
    let e = effective(g, svc, port.number, subset);
    let mut c = cluster::Cluster {
        name: name.to_owned(),
        cluster_discovery_type: Some(cluster::cluster::ClusterDiscoveryType::Type(
            cluster::cluster::DiscoveryType::Eds as i32,
        )),
        eds_cluster_config: Some(cluster::cluster::EdsClusterConfig {
            eds_config: Some(super::ads()),
            service_name: name.to_owned(),
        }),
        // Istio's default connect timeout.
        connect_timeout: Some(pb_duration(Duration::from_secs(10))),
        ..Default::default()
    };
    if let Some(lb) = e.lb {
        if let Some(ch) = &lb.consistent_hash {
            if let Some(m) = &ch.maglev {
                c.lb_policy = cluster::cluster::LbPolicy::Maglev as i32;
                c.lb_config = Some(cluster::cluster::LbConfig::MaglevLbConfig(
                    cluster::cluster::MaglevLbConfig {
                        table_size: m.table_size.map(|v| UInt64Value { value: v }),
                    },
                ));
            } else {
                c.lb_policy = cluster::cluster::LbPolicy::RingHash as i32;
                let min = ch
                    .ring_hash
                    .and_then(|r| r.minimum_ring_size)
                    .or(ch.minimum_ring_size);
                c.lb_config = Some(cluster::cluster::LbConfig::RingHashLbConfig(
                    cluster::cluster::RingHashLbConfig {
                        minimum_ring_size: min.map(|v| UInt64Value { value: v }),
                        ..Default::default()
                    },
                ));
            }
        } else {
            c.load_balancing_policy = match lb.simple.as_deref() {
                Some("ROUND_ROBIN") => None,
                Some("RANDOM") => Some(policy_list(pack_any(lbp::random::v3::Random::default()))),
                _ => Some(least_request()),
            };
        }
    } else {
        c.load_balancing_policy = Some(least_request());
    }
    // istiod's defaults: every threshold unlimited unless the DestinationRule sets it (Envoy's
    // own defaults, such as 3 concurrent retries, would shed retries a mesh user never asked
    // to limit).
    let http = e.pool.as_ref().and_then(|p| p.http.as_ref());
    let limit = |v: Option<u32>| {
        Some(UInt32Value {
            value: v.unwrap_or(u32::MAX),
        })
    };
    c.circuit_breakers = Some(cluster::CircuitBreakers {
        thresholds: vec![cluster::circuit_breakers::Thresholds {
            max_connections: limit(
                e.pool
                    .as_ref()
                    .and_then(|p| p.tcp.as_ref())
                    .and_then(|t| t.max_connections),
            ),
            max_pending_requests: limit(http.and_then(|h| h.http1_max_pending_requests)),
            max_requests: limit(http.and_then(|h| h.http2_max_requests)),
            max_retries: limit(http.and_then(|h| h.max_retries)),
            track_remaining: true,
            ..Default::default()
        }],
        ..Default::default()
    });
    if let Some(pool) = e.pool {
        if let Some(ct) = pool.tcp.as_ref().and_then(|t| t.connect_timeout) {
            c.connect_timeout = Some(pb_duration(ct.0));
        }
        if let Some(n) = pool
            .http
            .as_ref()
            .and_then(|h| h.max_requests_per_connection)
        {
            // Deprecated in favour of HttpProtocolOptions, but read by every Envoy and by our
            // client; one field keeps the cluster simple.
            #[allow(deprecated)]
            {
                c.max_requests_per_connection = Some(UInt32Value { value: n });
            }
        }
    }
    if let Some(o) = e.outlier {
        let u = |v: Option<u32>| v.map(|value| UInt32Value { value });
        let gateway = o.consecutive_gateway_errors.or(o.consecutive_errors);
        c.outlier_detection = Some(cluster::OutlierDetection {
            consecutive_5xx: u(o.consecutive_5xx_errors).or(Some(UInt32Value { value: 0 })),
            enforcing_consecutive_5xx: Some(UInt32Value {
                value: if o.consecutive_5xx_errors.is_some() {
                    100
                } else {
                    0
                },
            }),
            consecutive_gateway_failure: u(gateway),
            enforcing_consecutive_gateway_failure: gateway.map(|_| UInt32Value { value: 100 }),
            split_external_local_origin_errors: o
                .split_external_local_origin_errors
                .unwrap_or(false),
            consecutive_local_origin_failure: u(o.consecutive_local_origin_failures),
            interval: o.interval.map(|d| pb_duration(d.0)),
            base_ejection_time: o.base_ejection_time.map(|d| pb_duration(d.0)),
            max_ejection_percent: u(o.max_ejection_percent),
            // Istio turns success-rate ejection off.
            enforcing_success_rate: Some(UInt32Value { value: 0 }),
            ..Default::default()
        });
        if let Some(min) = o.min_health_percent {
            c.common_lb_config = Some(cluster::cluster::CommonLbConfig {
                healthy_panic_threshold: Some(envoy_types::pb::envoy::r#type::v3::Percent {
                    value: f64::from(min),
                }),
                ..Default::default()
            });
        }
    }
    if port.is_h2() {
        let opts = upstream_http::HttpProtocolOptions {
            upstream_protocol_options: Some(upstream_http::http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(
                upstream_http::http_protocol_options::ExplicitHttpConfig {
                    protocol_config: Some(upstream_http::http_protocol_options::explicit_http_config::ProtocolConfig::Http2ProtocolOptions(Default::default())),
                },
            )),
            ..Default::default()
        };
        c.typed_extension_protocol_options.insert(
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".into(),
            pack_any(opts),
        );
    }
    if let Some(dns) = &svc.dns {
        dns_discovery(&mut c, dns, port.number, node.kind);
    }
    if let Some(t) = e.tls {
        c.transport_socket = upstream_tls(t, svc, port.number, name, node);
    }
    c
}

/// Turns an EDS cluster into one whose hosts the client resolves: STRICT_DNS for Envoy
/// (every address), LOGICAL_DNS for `DNS_ROUND_ROBIN` and for proxyless clients (gRPC
/// supports only the logical form).
fn dns_discovery(
    c: &mut cluster::Cluster,
    dns: &crate::registry::DnsTargets,
    port: u16,
    kind: super::NodeKind,
) {
    use cluster::cluster::{DiscoveryType, DnsLookupFamily};
    let logical = dns.logical || kind == super::NodeKind::Proxyless;
    let ty = if logical {
        DiscoveryType::LogicalDns
    } else {
        DiscoveryType::StrictDns
    };
    c.cluster_discovery_type = Some(cluster::cluster::ClusterDiscoveryType::Type(ty as i32));
    c.eds_cluster_config = None;
    c.dns_lookup_family = DnsLookupFamily::V4Preferred as i32;
    let targets: Vec<_> = if logical {
        dns.targets.iter().take(1).collect()
    } else {
        dns.targets.iter().collect()
    };
    let lb_endpoints = targets
        .into_iter()
        .map(|(host, ports)| endpoint::LbEndpoint {
            host_identifier: Some(endpoint::lb_endpoint::HostIdentifier::Endpoint(
                endpoint::Endpoint {
                    address: Some(core::Address {
                        address: Some(core::address::Address::SocketAddress(core::SocketAddress {
                            address: host.clone(),
                            port_specifier: Some(core::socket_address::PortSpecifier::PortValue(
                                u32::from(ports.get(&port).copied().unwrap_or(port)),
                            )),
                            ..Default::default()
                        })),
                    }),
                    ..Default::default()
                },
            )),
            ..Default::default()
        })
        .collect();
    c.load_assignment = Some(endpoint::ClusterLoadAssignment {
        cluster_name: c.name.clone(),
        endpoints: vec![endpoint::LocalityLbEndpoints {
            lb_endpoints,
            ..Default::default()
        }],
        ..Default::default()
    });
}

/// Istio's default balancer. It goes in `load_balancing_policy` (gRFC A52) with round robin
/// after it, not in the legacy `lb_policy` enum: each client takes the first policy it
/// supports, and gRPC rejects `lb_policy: LEAST_REQUEST` outright.
fn least_request() -> cluster::LoadBalancingPolicy {
    policy_list(pack_any(lbp::least_request::v3::LeastRequest::default()))
}

fn policy_list(first: envoy_types::pb::google::protobuf::Any) -> cluster::LoadBalancingPolicy {
    let entry = |name: &str, any| cluster::load_balancing_policy::Policy {
        typed_extension_config: Some(core::TypedExtensionConfig {
            name: name.into(),
            typed_config: Some(any),
        }),
    };
    cluster::LoadBalancingPolicy {
        policies: vec![
            entry("preferred", first),
            entry(
                "round_robin",
                pack_any(lbp::round_robin::v3::RoundRobin::default()),
            ),
        ],
    }
}

/// `ClientTLSSettings` → the cluster's transport socket.
fn upstream_tls(
    t: &istio::ClientTlsSettings,
    svc: &Service,
    port: u16,
    cluster_name: &str,
    node: &super::NodeInfo,
) -> Option<core::TransportSocket> {
    let file = |f: &str| core::DataSource {
        specifier: Some(core::data_source::Specifier::Filename(f.into())),
        ..Default::default()
    };
    let exact = |s: String| matcher::StringMatcher {
        match_pattern: Some(matcher::string_matcher::MatchPattern::Exact(s)),
        ignore_case: false,
    };
    let san = |s: String| tls::SubjectAltNameMatcher {
        san_type: tls::subject_alt_name_matcher::SanType::Uri as i32,
        matcher: Some(exact(s)),
        ..Default::default()
    };
    let mut common = tls::CommonTlsContext::default();
    let mut sni = t.sni.clone().unwrap_or_default();
    match t.mode.as_deref().unwrap_or("DISABLE") {
        "ISTIO_MUTUAL" => {
            let mut sans: Vec<String> =
                svc.endpoints.iter().filter_map(|e| e.spiffe_id()).collect();
            sans.sort();
            sans.dedup();
            common = super::identity::CertSource::for_node(node).common_context(sans);
            common.alpn_protocols = vec!["istio-peer-exchange".into(), "istio".into()];
            if sni.is_empty() {
                // istiod's SNI for a cluster: outbound_.PORT_.SUBSET_.HOST
                let subset = cluster_name.split('|').nth(2).unwrap_or("");
                sni = format!("outbound_.{port}_.{subset}_.{}", svc.hostname);
            }
        }
        "SIMPLE" | "MUTUAL" => {
            if t.mode.as_deref() == Some("MUTUAL")
                && let (Some(c), Some(k)) = (&t.client_certificate, &t.private_key)
            {
                common.tls_certificates = vec![tls::TlsCertificate {
                    certificate_chain: Some(file(c)),
                    private_key: Some(file(k)),
                    ..Default::default()
                }];
            }
            let validation = tls::CertificateValidationContext {
                trusted_ca: t.ca_certificates.as_deref().map(file),
                system_root_certs: t.ca_certificates.is_none().then(Default::default),
                match_typed_subject_alt_names: t
                    .subject_alt_names
                    .iter()
                    .cloned()
                    .map(san)
                    .collect(),
                ..Default::default()
            };
            if !t.insecure_skip_verify.unwrap_or(false) {
                common.validation_context_type = Some(
                    tls::common_tls_context::ValidationContextType::ValidationContext(validation),
                );
            }
        }
        _ => return None,
    }
    let ctx = tls::UpstreamTlsContext {
        common_tls_context: Some(common),
        sni,
        ..Default::default()
    };
    Some(core::TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(core::transport_socket::ConfigType::TypedConfig(pack_any(
            ctx,
        ))),
    })
}

/// Route hash policies for services whose DestinationRule asks for consistent hashing.
pub(super) fn hash_policies(
    g: &Generator<'_>,
    svc: &Service,
) -> Vec<route::route_action::HashPolicy> {
    let Some(ch) = g
        .destination_rule(svc)
        .and_then(|dr| dr.traffic_policy.as_ref())
        .and_then(|p| p.load_balancer.as_ref())
        .and_then(|lb| lb.consistent_hash.as_ref())
    else {
        return vec![];
    };
    use route::route_action::hash_policy::{self as hp, PolicySpecifier as P};
    let specifier = if let Some(h) = &ch.http_header_name {
        P::Header(hp::Header {
            header_name: h.clone(),
            ..Default::default()
        })
    } else if let Some(c) = &ch.http_cookie {
        P::Cookie(hp::Cookie {
            name: c.name.clone(),
            ttl: c.ttl.map(|t| pb_duration(t.0)),
            path: c.path.clone().unwrap_or_default(),
            ..Default::default()
        })
    } else if ch.use_source_ip == Some(true) {
        P::ConnectionProperties(hp::ConnectionProperties { source_ip: true })
    } else if let Some(q) = &ch.http_query_parameter_name {
        P::QueryParameter(hp::QueryParameter { name: q.clone() })
    } else {
        return vec![];
    };
    vec![route::route_action::HashPolicy {
        policy_specifier: Some(specifier),
        terminal: false,
    }]
}

pub(super) fn endpoints(
    g: &Generator<'_>,
    node: &super::NodeInfo,
    name: &str,
    svc: &Service,
    port: &Port,
    subset: &str,
    labels: Option<&BTreeMap<String, String>>,
) -> endpoint::ClusterLoadAssignment {
    // One LocalityLbEndpoints per locality, in a stable order.
    let mut by_locality: BTreeMap<(String, String, String), Vec<endpoint::LbEndpoint>> =
        BTreeMap::new();
    for e in &svc.endpoints {
        if labels.is_some_and(|l| !l.iter().all(|(k, v)| e.labels.get(k) == Some(v))) {
            continue;
        }
        let p = e
            .ports
            .get(&port.number)
            .copied()
            .unwrap_or(port.target_port);
        let address = core::Address {
            address: Some(core::address::Address::SocketAddress(core::SocketAddress {
                address: e.address.to_string(),
                port_specifier: Some(core::socket_address::PortSpecifier::PortValue(u32::from(p))),
                ..Default::default()
            })),
        };
        by_locality
            .entry(e.locality.clone())
            .or_default()
            .push(endpoint::LbEndpoint {
                health_status: core::HealthStatus::Healthy as i32,
                load_balancing_weight: Some(UInt32Value { value: e.weight }),
                host_identifier: Some(endpoint::lb_endpoint::HostIdentifier::Endpoint(
                    endpoint::Endpoint {
                        address: Some(address),
                        ..Default::default()
                    },
                )),
                ..Default::default()
            });
    }
    let mut localities: Vec<endpoint::LocalityLbEndpoints> = by_locality
        .into_iter()
        .map(
            |((region, zone, sub_zone), lb_endpoints)| endpoint::LocalityLbEndpoints {
                locality: Some(core::Locality {
                    region,
                    zone,
                    sub_zone,
                }),
                load_balancing_weight: Some(UInt32Value {
                    value: lb_endpoints
                        .iter()
                        .map(|e| e.load_balancing_weight.as_ref().map_or(1, |w| w.value))
                        .sum(),
                }),
                lb_endpoints,
                ..Default::default()
            },
        )
        .collect();
    let e = effective(g, svc, port.number, subset);
    let setting = e.lb.and_then(|lb| lb.locality_lb_setting.as_ref());
    // As in Istio: failover needs outlier detection (without it, nothing would ever move
    // traffic off a failed locality) and the client's locality.
    if let (Some(client), Some(_)) = (&node.locality, e.outlier)
        && setting.is_none_or(|s| s.enabled != Some(false))
    {
        let failover = setting.map_or(&[][..], |s| &s.failover[..]);
        failover_priorities(client, failover, &mut localities);
    }
    endpoint::ClusterLoadAssignment {
        cluster_name: name.to_owned(),
        endpoints: localities,
        ..Default::default()
    }
}

/// Istio's locality failover: a locality's priority is how much of the client's locality it
/// shares (0: region, zone and sub-zone; 1: region and zone; 2: region; 3: none), with
/// regions outside a `failover` entry's `to` below that (4); the priorities used are then
/// numbered from 0 without gaps.
fn failover_priorities(
    client: &super::Locality,
    failover: &[istio::LocalityFailover],
    localities: &mut [endpoint::LocalityLbEndpoints],
) {
    let (region, zone, sub_zone) = client;
    let rank = |l: Option<&core::Locality>| -> u32 {
        let l = l.cloned().unwrap_or_default();
        match (
            l.region == *region,
            l.zone == *zone,
            l.sub_zone == *sub_zone,
        ) {
            (true, true, true) => 0,
            (true, true, false) => 1,
            (true, false, _) => 2,
            (false, ..) => match failover.iter().find(|f| f.from == *region) {
                Some(f) if f.to != l.region => 4,
                _ => 3,
            },
        }
    };
    let ranks: Vec<u32> = localities
        .iter()
        .map(|l| rank(l.locality.as_ref()))
        .collect();
    let mut used = ranks.clone();
    used.sort_unstable();
    used.dedup();
    for (l, r) in localities.iter_mut().zip(ranks) {
        l.priority = used.iter().position(|u| *u == r).unwrap_or(0) as u32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(l: &str) -> endpoint::LocalityLbEndpoints {
        let mut p = l.split('/').map(str::to_owned);
        endpoint::LocalityLbEndpoints {
            locality: Some(core::Locality {
                region: p.next().unwrap_or_default(),
                zone: p.next().unwrap_or_default(),
                sub_zone: p.next().unwrap_or_default(),
            }),
            ..Default::default()
        }
    }

    fn priorities(failover: &[(&str, &str)], ls: &[&str]) -> Vec<u32> {
        let client = ("us".to_owned(), "us-a".to_owned(), "rack1".to_owned());
        let failover: Vec<_> = failover
            .iter()
            .map(|(f, t)| istio::LocalityFailover {
                from: (*f).into(),
                to: (*t).into(),
            })
            .collect();
        let mut ls: Vec<_> = ls.iter().map(|l| at(l)).collect();
        failover_priorities(&client, &failover, &mut ls);
        ls.iter().map(|l| l.priority).collect()
    }

    #[test]
    fn priorities_follow_how_much_locality_is_shared_without_gaps() {
        assert_eq!(
            priorities(
                &[],
                &["us/us-a/rack1", "us/us-a/rack2", "us/us-b", "eu/eu-a"]
            ),
            [0, 1, 2, 3]
        );
        // Only the levels present count: same region and another region are 0 and 1.
        assert_eq!(priorities(&[], &["eu/eu-a", "us/us-b"]), [1, 0]);
        assert_eq!(
            priorities(&[("us", "ap")], &["eu/eu-a", "ap/ap-a", "us/us-a/rack1"]),
            [2, 1, 0],
            "the failover region comes before other regions"
        );
        assert_eq!(
            priorities(&[("eu", "ap")], &["eu/eu-a", "ap/ap-a"]),
            [0, 0],
            "another region's entry changes nothing"
        );
    }
}
