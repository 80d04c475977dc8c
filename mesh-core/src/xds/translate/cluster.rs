//! `Cluster` → [`Cluster`].

use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3 as pb;
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::extensions::load_balancing_policies as lbp;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
use prost::Name;

use super::endpoint::load_assignment;
use super::{At, FieldError, duration, effective_type_url, opt_duration, percent, unpack};
use crate::model::*;

const STATIC: i32 = 0;
const STRICT_DNS: i32 = 1;
const LOGICAL_DNS: i32 = 2;
const EDS: i32 = 3;
const ORIGINAL_DST: i32 = 4;

/// Translates and validates a `Cluster`.
pub fn cluster(c: &pb::Cluster) -> Result<Cluster, FieldError> {
    if c.name.is_empty() {
        return Err(FieldError::new("must not be empty").at("name"));
    }
    let kind = match &c.cluster_discovery_type {
        Some(pb::cluster::ClusterDiscoveryType::Type(t)) => *t,
        Some(pb::cluster::ClusterDiscoveryType::ClusterType(ct)) => {
            return Err(FieldError::new(format!(
                "custom cluster type {:?} is not supported",
                ct.name
            ))
            .at("cluster_type"));
        }
        None => STATIC,
    };
    let discovery = match kind {
        EDS => {
            let cfg = c.eds_cluster_config.as_ref();
            super::ads_config_source(cfg.and_then(|e| e.eds_config.as_ref()))
                .at("eds_cluster_config.eds_config")?;
            let service_name = cfg
                .map(|e| e.service_name.as_str())
                .filter(|s| !s.is_empty())
                .unwrap_or(&c.name);
            Discovery::Eds {
                service_name: service_name.into(),
            }
        }
        STATIC => {
            let la = c.load_assignment.as_ref().ok_or_else(|| {
                FieldError::new("is required for a STATIC cluster").at("load_assignment")
            })?;
            Discovery::Static(Arc::new(
                load_assignment(la, &c.name).at("load_assignment")?,
            ))
        }
        STRICT_DNS | LOGICAL_DNS => {
            let la = c.load_assignment.as_ref().ok_or_else(|| {
                FieldError::new("is required for a DNS cluster").at("load_assignment")
            })?;
            let mut hosts = Vec::new();
            for (li, l) in la.endpoints.iter().enumerate() {
                for (ei, e) in l.lb_endpoints.iter().enumerate() {
                    let at = format!(
                        "load_assignment.endpoints[{li}].lb_endpoints[{ei}].endpoint.address.socket_address"
                    );
                    let sa = super::endpoint::raw_socket_address(e).at(&at)?;
                    hosts.push((Box::<str>::from(sa.0), sa.1));
                }
            }
            if hosts.is_empty() {
                return Err(
                    FieldError::new("a DNS cluster needs at least one host").at("load_assignment")
                );
            }
            Discovery::Dns {
                hosts: hosts.into(),
                logical: kind == LOGICAL_DNS,
                family: match c.dns_lookup_family {
                    0 => DnsFamily::Any,
                    1 => DnsFamily::V4Only,
                    2 => DnsFamily::V6Only,
                    3 => DnsFamily::V4Preferred,
                    4 => DnsFamily::All,
                    n => {
                        return Err(
                            FieldError::new(format!("unknown family {n}")).at("dns_lookup_family")
                        );
                    }
                },
            }
        }
        ORIGINAL_DST => Discovery::OriginalDst,
        t => return Err(FieldError::new(format!("unknown discovery type {t}")).at("type")),
    };
    let lb = if let Some(p) = &c.load_balancing_policy {
        load_balancing_policy(p).at("load_balancing_policy")?
    } else {
        legacy_lb(c)?
    };
    let common = c.common_lb_config.as_ref();
    let healthy_panic_threshold = match common.and_then(|c| c.healthy_panic_threshold.as_ref()) {
        Some(p) => {
            f64::from(
                percent(p)
                    .at("common_lb_config.healthy_panic_threshold")?
                    .per_million,
            ) / 10_000.0
        }
        None => 50.0,
    };
    let locality_weighted = matches!(
        common.and_then(|c| c.locality_config_specifier.as_ref()),
        Some(pb::cluster::common_lb_config::LocalityConfigSpecifier::LocalityWeightedLbConfig(_))
    );
    let tls = match &c.transport_socket {
        Some(ts) => super::tls::upstream_transport_socket(ts)
            .at("transport_socket")?
            .map(Arc::new),
        None => None,
    };
    if !c.transport_socket_matches.is_empty() && tls.is_none() {
        // Istio sends `transport_socket_matches` with a `tlsMode: istio` match for auto-mTLS.
        // We honour the first TLS entry: every endpoint istiod programs in a mesh with a
        // sidecar or proxyless client carries that label.
        tracing::debug!(cluster = %c.name, "using the first TLS transport_socket_matches entry");
    }
    let tls = match tls {
        Some(t) => Some(t),
        None => {
            let mut found = None;
            for (i, m) in c.transport_socket_matches.iter().enumerate() {
                if let Some(ts) = &m.transport_socket
                    && let Some(t) = super::tls::upstream_transport_socket(ts)
                        .at(format!("transport_socket_matches[{i}].transport_socket"))?
                {
                    found = Some(Arc::new(t));
                    break;
                }
            }
            found
        }
    };
    // `auto_san_validation`: the server's certificate must be valid for the name asked for
    // (the SNI: the context's `sni`, else the cluster's host, which is what `auto_sni` would
    // send for requests to that host).
    let tls = match (tls, upstream_http_options(c)?) {
        (Some(t), Some(o)) if o.auto_san_validation && !t.verify_server_name => {
            let mut t = UpstreamTls::clone(&t);
            t.verify_server_name = true;
            Some(Arc::new(t))
        }
        (t, _) => t,
    };
    let (common_http, common_http_at) = common_http_options(c)?;
    Ok(Cluster {
        name: c.name.as_str().into(),
        discovery,
        connect_timeout: opt_duration(c.connect_timeout.as_ref(), "connect_timeout")?
            .unwrap_or(Duration::from_secs(5)),
        lb,
        circuit_breakers: circuit_breakers(c.circuit_breakers.as_ref()).at("circuit_breakers")?,
        outlier_detection: c
            .outlier_detection
            .as_ref()
            .map(outlier_detection)
            .transpose()
            .at("outlier_detection")?
            .map(Arc::new),
        tls,
        protocol: protocol(c)?,
        healthy_panic_threshold,
        locality_weighted,
        max_requests_per_connection: common_http
            .as_ref()
            .and_then(|o| o.max_requests_per_connection.as_ref())
            .or(c.max_requests_per_connection.as_ref())
            .map(|v| v.value)
            .filter(|v| *v > 0),
        http2: http2_options(c)?,
        idle_timeout: common_http_duration(&common_http, |o| o.idle_timeout.as_ref())
            .at("idle_timeout")
            .at(&common_http_at)?,
        max_connection_duration: common_http_duration(&common_http, |o| {
            o.max_connection_duration.as_ref()
        })
        .at("max_connection_duration")
        .at(&common_http_at)?,
    })
}

/// The cluster's `common_http_protocol_options`, from `HttpProtocolOptions` or else the
/// deprecated cluster field, with the path it was found at.
fn common_http_options(
    c: &pb::Cluster,
) -> Result<(Option<core::HttpProtocolOptions>, String), FieldError> {
    const KEY: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";
    let at = format!("typed_extension_protocol_options[{KEY:?}]");
    if let Some(any) = c.typed_extension_protocol_options.get(KEY) {
        let o: HttpProtocolOptions = unpack(any).at(&at)?;
        if let Some(common) = o.common_http_protocol_options {
            return Ok((Some(common), format!("{at}.common_http_protocol_options")));
        }
    }
    Ok((
        c.common_http_protocol_options,
        "common_http_protocol_options".into(),
    ))
}

/// A duration of the common options; zero means none, as in Envoy.
fn common_http_duration(
    o: &Option<core::HttpProtocolOptions>,
    get: impl Fn(&core::HttpProtocolOptions) -> Option<&envoy_types::pb::google::protobuf::Duration>,
) -> Result<Option<std::time::Duration>, FieldError> {
    Ok(o.as_ref()
        .and_then(get)
        .map(duration)
        .transpose()?
        .filter(|d| !d.is_zero()))
}

/// The cluster's HTTP/2 options: from `HttpProtocolOptions` (whichever protocol choice
/// carries them), else the deprecated cluster field.
fn http2_options(c: &pb::Cluster) -> Result<Http2Limits, FieldError> {
    use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::{
        UpstreamProtocolOptions as U, explicit_http_config::ProtocolConfig as P,
    };
    const KEY: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";
    let from_extension = match c.typed_extension_protocol_options.get(KEY) {
        None => None,
        Some(any) => {
            let o: HttpProtocolOptions =
                unpack(any).at(format!("typed_extension_protocol_options[{KEY:?}]"))?;
            let (h2, at) = match o.upstream_protocol_options {
                Some(U::ExplicitHttpConfig(e)) => match e.protocol_config {
                    Some(P::Http2ProtocolOptions(h2)) => (Some(h2), "explicit_http_config"),
                    _ => (None, ""),
                },
                Some(U::UseDownstreamProtocolConfig(d)) => {
                    (d.http2_protocol_options, "use_downstream_protocol_config")
                }
                Some(U::AutoConfig(a)) => (a.http2_protocol_options, "auto_config"),
                None => (None, ""),
            };
            match h2 {
                Some(h2) => Some(
                    super::listener::http2_limits(&h2)
                        .at("http2_protocol_options")
                        .at(at)
                        .at(format!("typed_extension_protocol_options[{KEY:?}]"))?,
                ),
                None => None,
            }
        }
    };
    match (from_extension, c.http2_protocol_options.as_ref()) {
        (Some(l), _) => Ok(l),
        (None, Some(o)) => super::listener::http2_limits(o).at("http2_protocol_options"),
        (None, None) => Ok(Http2Limits::default()),
    }
}

fn legacy_lb(c: &pb::Cluster) -> Result<LbPolicy, FieldError> {
    use pb::cluster::LbConfig as L;
    Ok(match c.lb_policy {
        0 => LbPolicy::RoundRobin,
        1 => {
            let cfg = match &c.lb_config {
                Some(L::LeastRequestLbConfig(l)) => Some(l),
                _ => None,
            };
            LbPolicy::LeastRequest {
                choice_count: choice_count(
                    cfg.and_then(|l| l.choice_count.as_ref()).map(|v| v.value),
                )
                .at("least_request_lb_config.choice_count")?,
                active_request_bias: cfg
                    .and_then(|l| l.active_request_bias.as_ref())
                    .map_or(1.0, |r| r.default_value),
            }
        }
        2 => {
            let cfg = match &c.lb_config {
                Some(L::RingHashLbConfig(r)) => Some(r),
                _ => None,
            };
            ring_hash(
                cfg.and_then(|r| r.minimum_ring_size.as_ref())
                    .map(|v| v.value),
                cfg.and_then(|r| r.maximum_ring_size.as_ref())
                    .map(|v| v.value),
            )
            .at("ring_hash_lb_config")?
        }
        3 => LbPolicy::Random,
        5 => {
            let size = match &c.lb_config {
                Some(L::MaglevLbConfig(m)) => m.table_size.as_ref().map(|v| v.value),
                _ => None,
            };
            maglev(size).at("maglev_lb_config")?
        }
        6 => LbPolicy::RoundRobin, // CLUSTER_PROVIDED: only meaningful for ORIGINAL_DST.
        7 => {
            return Err(FieldError::new(
                "LOAD_BALANCING_POLICY_CONFIG needs load_balancing_policy",
            )
            .at("lb_policy"));
        }
        p => return Err(FieldError::new(format!("unknown lb_policy {p}")).at("lb_policy")),
    })
}

/// gRFC A52: the first policy in the list that we support wins; none supported is an error.
fn load_balancing_policy(p: &pb::LoadBalancingPolicy) -> Result<LbPolicy, FieldError> {
    for (i, policy) in p.policies.iter().enumerate() {
        let Some(any) = policy
            .typed_extension_config
            .as_ref()
            .and_then(|t| t.typed_config.as_ref())
        else {
            return Err(FieldError::new("typed_config is required")
                .at(format!("policies[{i}].typed_extension_config")));
        };
        if let Some(lb) =
            lb_extension(any, 0).at(format!("policies[{i}].typed_extension_config.typed_config"))?
        {
            return Ok(lb);
        }
    }
    Err(FieldError::new("no supported policy in the list").at("policies"))
}

fn lb_extension(
    any: &envoy_types::pb::google::protobuf::Any,
    depth: u8,
) -> Result<Option<LbPolicy>, FieldError> {
    let url = any.type_url.as_str();
    Ok(Some(
        if url == lbp::round_robin::v3::RoundRobin::type_url() {
            LbPolicy::RoundRobin
        } else if url == lbp::least_request::v3::LeastRequest::type_url() {
            let l: lbp::least_request::v3::LeastRequest = unpack(any)?;
            LbPolicy::LeastRequest {
                choice_count: choice_count(l.choice_count.map(|v| v.value)).at("choice_count")?,
                active_request_bias: l.active_request_bias.map_or(1.0, |r| r.default_value),
            }
        } else if url == lbp::ring_hash::v3::RingHash::type_url() {
            let r: lbp::ring_hash::v3::RingHash = unpack(any)?;
            ring_hash(
                r.minimum_ring_size.map(|v| v.value),
                r.maximum_ring_size.map(|v| v.value),
            )?
        } else if url == lbp::random::v3::Random::type_url() {
            LbPolicy::Random
        } else if url == lbp::maglev::v3::Maglev::type_url() {
            let m: lbp::maglev::v3::Maglev = unpack(any)?;
            maglev(m.table_size.map(|v| v.value))?
        } else if url == lbp::pick_first::v3::PickFirst::type_url() {
            // Pick-first is round robin over a one-endpoint view; approximating it by round robin
            // keeps every endpoint usable.
            LbPolicy::RoundRobin
        } else if url == lbp::wrr_locality::v3::WrrLocality::type_url() && depth == 0 {
            let w: lbp::wrr_locality::v3::WrrLocality = unpack(any)?;
            let inner = w
                .endpoint_picking_policy
                .ok_or_else(|| FieldError::new("is required").at("endpoint_picking_policy"))?;
            return load_balancing_policy(&inner)
                .at("endpoint_picking_policy")
                .map(Some);
        } else {
            tracing::debug!(type_url = %effective_type_url(any), "skipping unsupported LB policy");
            return Ok(None);
        },
    ))
}

fn choice_count(v: Option<u32>) -> Result<u32, FieldError> {
    match v {
        None => Ok(2),
        Some(n) if n >= 2 => Ok(n),
        Some(n) => Err(FieldError::new(format!("must be at least 2, got {n}"))),
    }
}

fn ring_hash(min: Option<u64>, max: Option<u64>) -> Result<LbPolicy, FieldError> {
    let min = min.unwrap_or(1024);
    let max = max.unwrap_or(8 * 1024 * 1024);
    if min == 0 || max > 8 * 1024 * 1024 || min > max {
        return Err(FieldError::new(format!(
            "ring sizes must satisfy 0 < minimum ({min}) <= maximum ({max}) <= 8M"
        )));
    }
    Ok(LbPolicy::RingHash {
        min_ring_size: min,
        max_ring_size: max,
    })
}

fn maglev(size: Option<u64>) -> Result<LbPolicy, FieldError> {
    let size = size.unwrap_or(65537);
    let is_prime = size >= 2
        && (2..)
            .take_while(|d| d * d <= size)
            .all(|d| !size.is_multiple_of(d));
    if !is_prime || size > 5_000_011 {
        return Err(FieldError::new(format!(
            "table_size must be a prime up to 5000011, got {size}"
        ))
        .at("table_size"));
    }
    Ok(LbPolicy::Maglev { table_size: size })
}

fn circuit_breakers(cb: Option<&pb::CircuitBreakers>) -> Result<CircuitBreakers, FieldError> {
    let mut out = CircuitBreakers::default();
    let Some(cb) = cb else { return Ok(out) };
    // Only the DEFAULT routing priority applies to our traffic.
    if let Some((i, t)) = cb
        .thresholds
        .iter()
        .enumerate()
        .find(|(_, t)| t.priority == 0)
    {
        let _ = i;
        if let Some(v) = &t.max_connections {
            out.max_connections = v.value;
        }
        if let Some(v) = &t.max_pending_requests {
            out.max_pending_requests = v.value;
        }
        if let Some(v) = &t.max_requests {
            out.max_requests = v.value;
        }
        if let Some(v) = &t.max_retries {
            out.max_retries = v.value;
        }
        if let Some(b) = &t.retry_budget {
            let pct = b
                .budget_percent
                .as_ref()
                .map_or(Ok(200), |p| percent(p).map(|f| f.per_million / 1000));
            out.retry_budget = Some(RetryBudget {
                budget_per_mille: pct.at(format!("thresholds[{i}].retry_budget.budget_percent"))?,
                min_retry_concurrency: b.min_retry_concurrency.as_ref().map_or(3, |v| v.value),
            });
        }
    }
    Ok(out)
}

fn outlier_detection(o: &pb::OutlierDetection) -> Result<OutlierDetection, FieldError> {
    let d = OutlierDetection::default();
    let u = |v: &Option<envoy_types::pb::google::protobuf::UInt32Value>, default: u32| {
        v.as_ref().map_or(default, |v| v.value)
    };
    let pct =
        |v: &Option<envoy_types::pb::google::protobuf::UInt32Value>, default: u32, field: &str| {
            let x = u(v, default);
            if x > 100 {
                Err(FieldError::new(format!("{x} is above 100")).at(field.to_owned()))
            } else {
                Ok(x)
            }
        };
    let base = opt_duration(o.base_ejection_time.as_ref(), "base_ejection_time")?
        .unwrap_or(d.base_ejection_time);
    let max = opt_duration(o.max_ejection_time.as_ref(), "max_ejection_time")?
        .unwrap_or(d.max_ejection_time.max(base));
    let interval = match &o.interval {
        Some(i) => duration(i).at("interval")?,
        None => d.interval,
    };
    if interval.is_zero() {
        return Err(FieldError::new("must be greater than zero").at("interval"));
    }
    Ok(OutlierDetection {
        consecutive_5xx: u(&o.consecutive_5xx, d.consecutive_5xx),
        consecutive_gateway_failure: u(
            &o.consecutive_gateway_failure,
            d.consecutive_gateway_failure,
        ),
        consecutive_local_origin_failure: u(
            &o.consecutive_local_origin_failure,
            d.consecutive_local_origin_failure,
        ),
        split_external_local_origin_errors: o.split_external_local_origin_errors,
        interval,
        base_ejection_time: base,
        max_ejection_time: max,
        max_ejection_percent: pct(
            &o.max_ejection_percent,
            d.max_ejection_percent,
            "max_ejection_percent",
        )?,
        enforcing_consecutive_5xx: pct(
            &o.enforcing_consecutive_5xx,
            d.enforcing_consecutive_5xx,
            "enforcing_consecutive_5xx",
        )?,
        enforcing_consecutive_gateway_failure: pct(
            &o.enforcing_consecutive_gateway_failure,
            d.enforcing_consecutive_gateway_failure,
            "enforcing_consecutive_gateway_failure",
        )?,
        enforcing_consecutive_local_origin_failure: pct(
            &o.enforcing_consecutive_local_origin_failure,
            d.enforcing_consecutive_local_origin_failure,
            "enforcing_consecutive_local_origin_failure",
        )?,
        enforcing_success_rate: pct(
            &o.enforcing_success_rate,
            d.enforcing_success_rate,
            "enforcing_success_rate",
        )?,
        enforcing_failure_percentage: pct(
            &o.enforcing_failure_percentage,
            d.enforcing_failure_percentage,
            "enforcing_failure_percentage",
        )?,
        success_rate_minimum_hosts: u(&o.success_rate_minimum_hosts, d.success_rate_minimum_hosts),
        success_rate_request_volume: u(
            &o.success_rate_request_volume,
            d.success_rate_request_volume,
        ),
        success_rate_stdev_factor: u(&o.success_rate_stdev_factor, d.success_rate_stdev_factor),
        failure_percentage_threshold: pct(
            &o.failure_percentage_threshold,
            d.failure_percentage_threshold,
            "failure_percentage_threshold",
        )?,
        failure_percentage_minimum_hosts: u(
            &o.failure_percentage_minimum_hosts,
            d.failure_percentage_minimum_hosts,
        ),
        failure_percentage_request_volume: u(
            &o.failure_percentage_request_volume,
            d.failure_percentage_request_volume,
        ),
    })
}

/// `upstream_http_protocol_options` of the cluster's `HttpProtocolOptions`, if any. An SNI
/// taken from a request header is refused (connections are not pooled per request name).
fn upstream_http_options(
    c: &pb::Cluster,
) -> Result<Option<envoy_types::pb::envoy::config::core::v3::UpstreamHttpProtocolOptions>, FieldError>
{
    const KEY: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";
    let Some(any) = c.typed_extension_protocol_options.get(KEY) else {
        return Ok(None);
    };
    let o: HttpProtocolOptions =
        unpack(any).at(format!("typed_extension_protocol_options[{KEY:?}]"))?;
    let Some(u) = o.upstream_http_protocol_options else {
        return Ok(None);
    };
    if !u.override_auto_sni_header.is_empty() {
        return Err(FieldError::new("is not supported").at(format!(
            "typed_extension_protocol_options[{KEY:?}].upstream_http_protocol_options.override_auto_sni_header"
        )));
    }
    Ok(Some(u))
}

fn protocol(c: &pb::Cluster) -> Result<UpstreamProtocol, FieldError> {
    const KEY: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";
    if let Some(any) = c.typed_extension_protocol_options.get(KEY) {
        let o: HttpProtocolOptions =
            unpack(any).at(format!("typed_extension_protocol_options[{KEY:?}]"))?;
        use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::{
            UpstreamProtocolOptions as U, explicit_http_config::ProtocolConfig as P,
        };
        return Ok(match o.upstream_protocol_options {
            Some(U::ExplicitHttpConfig(e)) => match e.protocol_config {
                Some(P::Http2ProtocolOptions(_)) => UpstreamProtocol::Http2,
                Some(P::Http3ProtocolOptions(_)) => {
                    return Err(
                        FieldError::new("HTTP/3 upstreams are not supported").at(format!(
                            "typed_extension_protocol_options[{KEY:?}].explicit_http_config"
                        )),
                    );
                }
                _ => UpstreamProtocol::Http1,
            },
            Some(U::UseDownstreamProtocolConfig(_)) => UpstreamProtocol::Downstream,
            Some(U::AutoConfig(_)) => UpstreamProtocol::Auto,
            None => UpstreamProtocol::Http1,
        });
    }
    Ok(if c.http2_protocol_options.is_some() {
        UpstreamProtocol::Http2
    } else if c.protocol_selection == 1 {
        UpstreamProtocol::Downstream
    } else {
        UpstreamProtocol::Http1
    })
}
