//! `Listener` → [`Listener`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::listener::v3 as pb;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use prost::Name;

use super::filter::{Side, http_filter};
use super::matcher::cidr;
use super::route::route_configuration;
use super::{At, FieldError, each, opt_duration, unpack};
use crate::model::*;

/// Translates and validates a `Listener`.
pub fn listener(l: &pb::Listener) -> Result<Listener, FieldError> {
    let kind = if let Some(api) = &l.api_listener {
        let any = api
            .api_listener
            .as_ref()
            .ok_or_else(|| FieldError::new("is required").at("api_listener.api_listener"))?;
        let h: hcm::HttpConnectionManager = unpack(any).at("api_listener.api_listener")?;
        ListenerKind::Api(Arc::new(
            http_connection_manager(&h, Side::Client).at("api_listener.api_listener")?,
        ))
    } else {
        let address = match &l.address {
            Some(a) => Some(socket_address(a).at("address")?),
            None if matches!(
                l.listener_specifier,
                Some(pb::listener::ListenerSpecifier::InternalListener(_))
            ) =>
            {
                None
            }
            None => {
                return Err(
                    FieldError::new("is required (unless internal_listener is set)").at("address"),
                );
            }
        };
        if l.filter_chains.is_empty() && l.default_filter_chain.is_none() {
            return Err(FieldError::new(
                "a socket listener needs filter_chains or a default_filter_chain",
            )
            .at("filter_chains"));
        }
        if l.filter_chain_matcher.is_some() {
            // Chains would be chosen by a matcher tree this library does not evaluate;
            // choosing them by `filter_chain_match` instead could serve a connection with the
            // wrong chain's policy.
            return Err(FieldError::new(
                "is not supported: chains are chosen by their filter_chain_match",
            )
            .at("filter_chain_matcher"));
        }
        let filter_chains = each("filter_chains", &l.filter_chains, filter_chain)?;
        let matches: Vec<&FilterChainMatch> = filter_chains.iter().map(|c| &c.matcher).collect();
        match check_overlaps(&matches) {
            Ok(()) => {}
            Err(OverlapError::Overlap { first, second }) => {
                return Err(FieldError::new(format!(
                    "matches the same connections as filter_chains[{first}] (Envoy: multiple filter chains with overlapping matching rules)"
                ))
                .at(format!("filter_chains[{second}].filter_chain_match")));
            }
            Err(OverlapError::TooLarge) => {
                return Err(FieldError::new(
                    "the filter_chain_match values expand into too many combinations to check",
                )
                .at("filter_chains"));
            }
        }
        ListenerKind::Socket(Arc::new(SocketListener {
            address,
            services: istio_services(l.metadata.as_ref()).at("metadata")?,
            filter_chains,
            default_filter_chain: l
                .default_filter_chain
                .as_ref()
                .map(filter_chain)
                .transpose()
                .at("default_filter_chain")?,
            inspect_timeout: match opt_duration(
                l.listener_filters_timeout.as_ref(),
                "listener_filters_timeout",
            )? {
                None => Some(Duration::from_secs(15)),
                Some(d) if d.is_zero() => None,
                Some(d) => Some(d),
            },
            continue_on_inspect_timeout: l.continue_on_listener_filters_timeout,
        }))
    };
    Ok(Listener {
        name: l.name.as_str().into(),
        kind,
    })
}

pub(crate) fn http_connection_manager(
    h: &hcm::HttpConnectionManager,
    side: Side,
) -> Result<HttpConnectionManager, FieldError> {
    use hcm::http_connection_manager::RouteSpecifier as R;
    let routes = match &h.route_specifier {
        Some(R::Rds(rds)) => {
            if rds.route_config_name.is_empty() {
                return Err(FieldError::new("must not be empty").at("rds.route_config_name"));
            }
            super::ads_config_source(rds.config_source.as_ref()).at("rds.config_source")?;
            if side == Side::Server {
                // The server matches routes for their per-route filter settings (RBAC, JWT,
                // rate limits); served without them, a per-route policy would be lost.
                return Err(FieldError::new(
                    "inbound routes over RDS are not followed; give the route_config inline",
                )
                .at("rds"));
            }
            RouteSource::Rds(rds.route_config_name.as_str().into())
        }
        Some(R::RouteConfig(rc)) => {
            RouteSource::Inline(Arc::new(route_configuration(rc).at("route_config")?))
        }
        Some(R::ScopedRoutes(_)) => {
            return Err(FieldError::new("scoped routes are not supported").at("scoped_routes"));
        }
        None => return Err(FieldError::new("rds or route_config is required")),
    };
    let http_filters = each("http_filters", &h.http_filters, |f| http_filter(f, side))?;
    // gRFC A39: the router must be present and last.
    match http_filters.last() {
        Some(f) if matches!(f.config, FilterConfig::Router) => {}
        _ => return Err(FieldError::new("the last filter must be the router").at("http_filters")),
    }
    if let Some(i) = http_filters[..http_filters.len() - 1]
        .iter()
        .position(|f| matches!(f.config, FilterConfig::Router))
    {
        return Err(
            FieldError::new("the router must be the last filter").at(format!("http_filters[{i}]"))
        );
    }
    let common = h.common_http_protocol_options.as_ref();
    if h.path_normalization_options.is_some() {
        return Err(FieldError::new(
            "is not supported (use normalize_path, merge_slashes and path_with_escaped_slashes_action)",
        )
        .at("path_normalization_options"));
    }
    if !h.original_ip_detection_extensions.is_empty() {
        // They decide the client address that `remote_ip` rules match: ignoring them would
        // let a policy match the wrong client.
        return Err(FieldError::new("is not supported").at("original_ip_detection_extensions"));
    }
    use hcm::http_connection_manager::PathWithEscapedSlashesAction as Slashes;
    let escaped_slashes = match Slashes::try_from(h.path_with_escaped_slashes_action) {
        Ok(Slashes::ImplementationSpecificDefault | Slashes::KeepUnchanged) => {
            EscapedSlashes::KeepUnchanged
        }
        Ok(Slashes::RejectRequest) => EscapedSlashes::RejectRequest,
        Ok(Slashes::UnescapeAndRedirect) => EscapedSlashes::UnescapeAndRedirect,
        Ok(Slashes::UnescapeAndForward) => EscapedSlashes::UnescapeAndForward,
        Err(_) => {
            return Err(FieldError::new(format!(
                "unknown action {}",
                h.path_with_escaped_slashes_action
            ))
            .at("path_with_escaped_slashes_action"));
        }
    };
    Ok(HttpConnectionManager {
        routes,
        http_filters,
        max_stream_duration: opt_duration(
            common.and_then(|c| c.max_stream_duration.as_ref()),
            "common_http_protocol_options.max_stream_duration",
        )?
        .filter(|d| !d.is_zero()),
        stream_idle_timeout: match opt_duration(
            h.stream_idle_timeout.as_ref(),
            "stream_idle_timeout",
        )? {
            None => Some(Duration::from_secs(300)),
            Some(d) => Some(d).filter(|d| !d.is_zero()),
        },
        limits: connection_limits(h)?,
        path_normalization: PathNormalization {
            // Envoy's default when unset (runtime `http_connection_manager.normalize_path`).
            normalize: h.normalize_path.as_ref().is_some_and(|b| b.value),
            merge_slashes: h.merge_slashes,
            escaped_slashes,
        },
        client_address: ClientAddress {
            use_remote_address: h.use_remote_address.as_ref().is_some_and(|b| b.value),
            xff_num_trusted_hops: h.xff_num_trusted_hops,
        },
        forward_client_cert: {
            use hcm::http_connection_manager::ForwardClientCertDetails as F;
            match F::try_from(h.forward_client_cert_details) {
                // SANITIZE_SET and APPEND_FORWARD add the verified peer's details, which is not
                // done here: an application reading the last element as its peer (right behind
                // Envoy) would then read whatever the caller wrote, so the header is removed.
                Ok(F::Sanitize | F::SanitizeSet | F::AppendForward) => ForwardClientCert::Sanitize,
                Ok(F::ForwardOnly) => ForwardClientCert::ForwardOnMtls,
                Ok(F::AlwaysForwardOnly) => ForwardClientCert::Always,
                Err(_) => {
                    return Err(FieldError::new(format!(
                        "unknown value {}",
                        h.forward_client_cert_details
                    ))
                    .at("forward_client_cert_details"));
                }
            }
        },
    })
}

/// The connection manager's limits and timeouts, with Envoy's defaults (and this library's
/// bounded ones where Envoy has none: [`ConnectionLimits`]).
fn connection_limits(h: &hcm::HttpConnectionManager) -> Result<ConnectionLimits, FieldError> {
    let defaults = ConnectionLimits::default();
    let common = h.common_http_protocol_options.as_ref();
    // Unset: the default; `0s`: none, as Envoy reads these fields.
    let timeout = |d: Option<&envoy_types::pb::google::protobuf::Duration>,
                   field: &str,
                   default: Option<Duration>| {
        Ok::<_, FieldError>(match opt_duration(d, field)? {
            None => default,
            Some(d) if d.is_zero() => None,
            Some(d) => Some(d),
        })
    };
    let max_headers_count = match common.and_then(|c| c.max_headers_count.as_ref()) {
        None => defaults.max_headers_count,
        Some(n) if n.value >= 1 => n.value,
        Some(_) => {
            return Err(FieldError::new("must be at least 1")
                .at("common_http_protocol_options.max_headers_count"));
        }
    };
    // Envoy's bounds for the field (proto validation: 1..=8192 KiB).
    let max_request_headers_kb = match &h.max_request_headers_kb {
        None => defaults.max_request_headers_kb,
        Some(n) if (1..=8192).contains(&n.value) => n.value,
        Some(n) => {
            return Err(
                FieldError::new(format!("{} is not within 1..=8192", n.value))
                    .at("max_request_headers_kb"),
            );
        }
    };
    let http2 = match h.http2_protocol_options.as_ref() {
        None => Http2Limits::default(),
        Some(o) => http2_limits(o).at("http2_protocol_options")?,
    };
    Ok(ConnectionLimits {
        drain_timeout: opt_duration(h.drain_timeout.as_ref(), "drain_timeout")?
            .unwrap_or(defaults.drain_timeout),
        request_headers_timeout: timeout(
            h.request_headers_timeout.as_ref(),
            "request_headers_timeout",
            defaults.request_headers_timeout,
        )?,
        idle_timeout: timeout(
            common.and_then(|c| c.idle_timeout.as_ref()),
            "common_http_protocol_options.idle_timeout",
            defaults.idle_timeout,
        )?,
        max_connection_duration: timeout(
            common.and_then(|c| c.max_connection_duration.as_ref()),
            "common_http_protocol_options.max_connection_duration",
            None,
        )?,
        max_headers_count,
        max_request_headers_kb,
        http2,
    })
}

/// An HTTP/2 window size, within the protocol's bounds (Envoy validates the same range).
/// `Http2ProtocolOptions`, as a server advertises them and a cluster's connections use them.
pub(crate) fn http2_limits(
    o: &envoy_types::pb::envoy::config::core::v3::Http2ProtocolOptions,
) -> Result<Http2Limits, FieldError> {
    let keepalive = o.connection_keepalive.as_ref();
    // Zero means no PINGs, as unset.
    let interval = opt_duration(
        keepalive.and_then(|k| k.interval.as_ref()),
        "connection_keepalive.interval",
    )?
    .filter(|d| !d.is_zero());
    Ok(Http2Limits {
        max_concurrent_streams: match &o.max_concurrent_streams {
            None => None,
            Some(n) if n.value >= 1 => Some(n.value),
            Some(_) => {
                return Err(FieldError::new("must be at least 1").at("max_concurrent_streams"));
            }
        },
        keepalive_interval: interval,
        // Envoy requires the timeout with the settings; a PING unanswered that long
        // closes the connection.
        keepalive_timeout: match keepalive {
            None => None,
            Some(k) => Some(
                opt_duration(k.timeout.as_ref(), "connection_keepalive.timeout")?
                    .filter(|d| !d.is_zero())
                    .ok_or_else(|| {
                        FieldError::new("is required and must be positive")
                            .at("connection_keepalive.timeout")
                    })?,
            ),
        },
        initial_stream_window_size: window(
            o.initial_stream_window_size.as_ref(),
            "initial_stream_window_size",
        )?,
        initial_connection_window_size: window(
            o.initial_connection_window_size.as_ref(),
            "initial_connection_window_size",
        )?,
    })
}

fn window(
    v: Option<&envoy_types::pb::google::protobuf::UInt32Value>,
    field: &str,
) -> Result<Option<u32>, FieldError> {
    match v {
        None => Ok(None),
        Some(n) if (65_535..=2_147_483_647).contains(&n.value) => Ok(Some(n.value)),
        Some(n) => Err(
            FieldError::new(format!("{} is not within 65535..=2147483647", n.value))
                .at(field.to_owned()),
        ),
    }
}

fn filter_chain(fc: &pb::FilterChain) -> Result<FilterChain, FieldError> {
    let matcher = fc
        .filter_chain_match
        .as_ref()
        .map(filter_chain_match)
        .transpose()
        .at("filter_chain_match")?
        .unwrap_or_default();
    let tls = match &fc.transport_socket {
        Some(ts) => super::tls::downstream_transport_socket(ts)
            .at("transport_socket")?
            .map(Arc::new),
        None => None,
    };
    // The terminal filter decides what the chain does. Every filter ahead of it must be one
    // that is enforced here: a filter skipped there could be a policy (network RBAC, a
    // filter of Istio's) that the chain would then be served without.
    let (last, ahead) = fc
        .filters
        .split_last()
        .ok_or_else(|| FieldError::new("at least one filter is required").at("filters"))?;
    let network_filters = ahead
        .iter()
        .enumerate()
        .map(|(i, f)| network_policy(f).at(format!("filters[{i}]")))
        .collect::<Result<Box<[_]>, _>>()?;
    let at = format!("filters[{}]", fc.filters.len() - 1);
    let typed = match &last.config_type {
        Some(pb::filter::ConfigType::TypedConfig(any)) => Some(any),
        _ => None,
    };
    let filter = match typed {
        Some(any) if any.type_url == hcm::HttpConnectionManager::type_url() => {
            let h: hcm::HttpConnectionManager = unpack(any).at(&at)?;
            NetworkFilter::Http(Arc::new(http_connection_manager(&h, Side::Server).at("typed_config").at(&at)?))
        }
        Some(any) if any.type_url == envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy::type_url() => {
            use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{TcpProxy, tcp_proxy::ClusterSpecifier};
            let t: TcpProxy = unpack(any).at(&at)?;
            match t.cluster_specifier {
                Some(ClusterSpecifier::Cluster(c)) => NetworkFilter::TcpProxy { cluster: c.into() },
                _ => NetworkFilter::Unsupported { name: "tcp_proxy with weighted_clusters".into() },
            }
        }
        Some(any) => NetworkFilter::Unsupported { name: any.type_url.as_str().into() },
        None => NetworkFilter::Unsupported { name: last.name.as_str().into() },
    };
    let handshake_timeout = match opt_duration(
        fc.transport_socket_connect_timeout.as_ref(),
        "transport_socket_connect_timeout",
    )? {
        None => Some(DEFAULT_HANDSHAKE_TIMEOUT),
        Some(d) if d.is_zero() => None,
        Some(d) => Some(d),
    };
    Ok(FilterChain {
        name: fc.name.as_str().into(),
        matcher,
        tls,
        network_filters,
        filter,
        handshake_timeout,
    })
}

/// A network filter ahead of a chain's terminal filter: network RBAC and connection limits
/// are enforced; anything else refuses the listener.
fn network_policy(f: &pb::Filter) -> Result<NetworkPolicy, FieldError> {
    use envoy_types::pb::envoy::extensions::filters::network::connection_limit::v3 as limit;
    use envoy_types::pb::envoy::extensions::filters::network::rbac::v3 as network_rbac;
    match &f.config_type {
        Some(pb::filter::ConfigType::TypedConfig(any))
            if any.type_url == limit::ConnectionLimit::type_url() =>
        {
            let c: limit::ConnectionLimit = unpack(any)?;
            if c.runtime_enabled.is_some() {
                // A runtime key could switch the limit off; there is no runtime here, and
                // taking it as always on would differ from Envoy where it is off.
                return Err(FieldError::new("is not supported (there is no runtime)")
                    .at("typed_config.runtime_enabled"));
            }
            let max_connections = match &c.max_connections {
                Some(n) if n.value >= 1 => n.value,
                _ => {
                    return Err(FieldError::new("is required and must be at least 1")
                        .at("typed_config.max_connections"));
                }
            };
            Ok(NetworkPolicy::ConnectionLimit {
                max_connections,
                delay: opt_duration(c.delay.as_ref(), "typed_config.delay")?
                    .filter(|d| !d.is_zero()),
            })
        }
        Some(pb::filter::ConfigType::TypedConfig(any))
            if any.type_url == network_rbac::Rbac::type_url() =>
        {
            let r: network_rbac::Rbac = unpack(any)?;
            Ok(NetworkPolicy::Rbac(Arc::new(
                super::filter::network_rbac_config(&r).at("typed_config")?,
            )))
        }
        Some(pb::filter::ConfigType::TypedConfig(any)) => Err(FieldError::new(format!(
            "network filter {} ({:?}) is not supported ahead of the terminal filter; the listener is refused rather than served without it",
            super::effective_type_url(any),
            f.name
        ))),
        _ => Err(FieldError::new(format!(
            "network filter {:?} has no typed_config (config_discovery is not supported)",
            f.name
        ))),
    }
}

fn filter_chain_match(m: &pb::FilterChainMatch) -> Result<FilterChainMatch, FieldError> {
    // Envoy validates 1..=65535: a chain for port 0 could never match.
    let port = |p: u32, f: &str| match u16::try_from(p) {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(FieldError::new(format!("invalid port {p}")).at(f.to_owned())),
    };
    if !m.address_suffix.is_empty() || m.suffix_len.is_some() {
        return Err(FieldError::new(
            "address_suffix and suffix_len are not implemented (as in Envoy)",
        )
        .at("address_suffix"));
    }
    let server_names = m
        .server_names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let wildcard_ok = n.starts_with("*.") && !n[1..].contains('*');
            if n.contains('*') && !wildcard_ok {
                Err(FieldError::new(format!(
                    "{n:?}: partial wildcards are not supported (only a leading \"*.\")"
                ))
                .at(format!("server_names[{i}]")))
            } else {
                Ok(Box::<str>::from(n.to_ascii_lowercase()))
            }
        })
        .collect::<Result<Box<[_]>, _>>()?;
    use pb::filter_chain_match::ConnectionSourceType as S;
    let source_type = match S::try_from(m.source_type) {
        Ok(S::Any) => SourceType::Any,
        Ok(S::SameIpOrLoopback) => SourceType::SameIpOrLoopback,
        Ok(S::External) => SourceType::External,
        Err(_) => {
            return Err(
                FieldError::new(format!("unknown source type {}", m.source_type)).at("source_type"),
            );
        }
    };
    Ok(FilterChainMatch {
        destination_port: m
            .destination_port
            .as_ref()
            .map(|p| port(p.value, "destination_port"))
            .transpose()?,
        prefix_ranges: each("prefix_ranges", &m.prefix_ranges, cidr)?,
        direct_source_prefix_ranges: each(
            "direct_source_prefix_ranges",
            &m.direct_source_prefix_ranges,
            cidr,
        )?,
        source_type,
        source_prefix_ranges: each("source_prefix_ranges", &m.source_prefix_ranges, cidr)?,
        source_ports: each("source_ports", &m.source_ports, |p| port(*p, ""))?,
        server_names,
        transport_protocol: (!m.transport_protocol.is_empty())
            .then(|| m.transport_protocol.as_str().into()),
        application_protocols: m
            .application_protocols
            .iter()
            .map(|s| s.as_str().into())
            .collect(),
    })
}

/// Parses a `core.v3.Address` holding a socket address (IPv4 or IPv6 literal).
pub(crate) fn socket_address(a: &core::Address) -> Result<SocketAddr, FieldError> {
    use core::address::Address as A;
    match &a.address {
        Some(A::SocketAddress(sa)) => {
            let port = match &sa.port_specifier {
                Some(core::socket_address::PortSpecifier::PortValue(p)) => u16::try_from(*p)
                    .map_err(|_| {
                        FieldError::new(format!("invalid port {p}")).at("socket_address.port_value")
                    })?,
                Some(core::socket_address::PortSpecifier::NamedPort(_)) => {
                    return Err(FieldError::new("named ports are not supported")
                        .at("socket_address.named_port"));
                }
                None => return Err(FieldError::new("port_value is required").at("socket_address")),
            };
            let ip: std::net::IpAddr = sa.address.parse().map_err(|_| {
                FieldError::new(format!("{:?} is not an IP address", sa.address))
                    .at("socket_address.address")
            })?;
            Ok(SocketAddr::new(ip, port))
        }
        Some(A::Pipe(_)) => Err(FieldError::new("pipe addresses are not supported").at("pipe")),
        Some(A::EnvoyInternalAddress(_)) => {
            Err(FieldError::new("internal addresses are not supported")
                .at("envoy_internal_address"))
        }
        None => Err(FieldError::new("socket_address is required")),
    }
}

/// `filter_metadata.istio.services`: `[{host, name, namespace}]`, as istiod writes it (the
/// name and namespace default to the host's first two labels). Other metadata is Envoy's
/// opaque data and is left alone.
fn istio_services(metadata: Option<&core::Metadata>) -> Result<Box<[ServiceRef]>, FieldError> {
    use envoy_types::pb::google::protobuf::value::Kind;
    let Some(istio) = metadata.and_then(|m| m.filter_metadata.get("istio")) else {
        return Ok(Box::new([]));
    };
    let Some(list) = istio.fields.get("services") else {
        return Ok(Box::new([]));
    };
    let Some(Kind::ListValue(list)) = &list.kind else {
        return Err(FieldError::new("must be a list").at("filter_metadata.istio.services"));
    };
    each("filter_metadata.istio.services", &list.values, |v| {
        let Some(Kind::StructValue(s)) = &v.kind else {
            return Err(FieldError::new("must be a struct"));
        };
        let text = |k: &str| match s.fields.get(k).and_then(|v| v.kind.as_ref()) {
            Some(Kind::StringValue(t)) if !t.is_empty() => Some(t.as_str()),
            _ => None,
        };
        let host = text("host").ok_or_else(|| FieldError::new("is required").at("host"))?;
        let name = text("name").unwrap_or_else(|| host.split('.').next().unwrap_or(host));
        // Istio's telemetry says `unknown` for what it cannot tell.
        let namespace = text("namespace")
            .or_else(|| host.split('.').nth(1))
            .unwrap_or("unknown");
        Ok(ServiceRef {
            host: host.into(),
            name: name.into(),
            namespace: namespace.into(),
        })
    })
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::google::protobuf::{ListValue, Struct, Value, value::Kind};

    use super::*;

    fn metadata(services: Vec<Value>) -> core::Metadata {
        let list = Value {
            kind: Some(Kind::ListValue(ListValue { values: services })),
        };
        core::Metadata {
            filter_metadata: [(
                "istio".to_owned(),
                Struct {
                    fields: [("services".to_owned(), list)].into(),
                },
            )]
            .into(),
            ..Default::default()
        }
    }

    fn service(fields: &[(&str, &str)]) -> Value {
        Value {
            kind: Some(Kind::StructValue(Struct {
                fields: fields
                    .iter()
                    .map(|(k, v)| {
                        let v = Value {
                            kind: Some(Kind::StringValue((*v).into())),
                        };
                        ((*k).to_owned(), v)
                    })
                    .collect(),
            })),
        }
    }

    /// istiod's `istio.services` metadata names the services; the name and namespace default
    /// to the host's first labels; an entry without a host is refused with its place.
    #[test]
    fn istio_services_metadata_names_the_workloads_services() {
        let m = metadata(vec![
            service(&[
                ("host", "reviews.default.svc.cluster.local"),
                ("name", "reviews"),
                ("namespace", "default"),
            ]),
            service(&[("host", "ratings.bookinfo.svc.cluster.local")]),
            service(&[("host", "localhost")]),
        ]);
        let got = istio_services(Some(&m)).unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(
            (&*got[2].name, &*got[2].namespace),
            ("localhost", "unknown")
        );
        assert_eq!(
            (&*got[1].host, &*got[1].name, &*got[1].namespace),
            ("ratings.bookinfo.svc.cluster.local", "ratings", "bookinfo")
        );
        assert!(istio_services(None).unwrap().is_empty());
        let e = istio_services(Some(&metadata(vec![service(&[("name", "x")])]))).unwrap_err();
        assert_eq!(
            e.to_string(),
            "filter_metadata.istio.services[0].host: is required"
        );
    }
}
