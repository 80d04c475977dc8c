//! `Listener` → [`Listener`].

use std::net::SocketAddr;
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::listener::v3 as pb;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use prost::Name;

use super::filter::http_filter;
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
            http_connection_manager(&h).at("api_listener.api_listener")?,
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
        ListenerKind::Socket(Arc::new(SocketListener {
            address,
            filter_chains: each("filter_chains", &l.filter_chains, filter_chain)?,
            default_filter_chain: l
                .default_filter_chain
                .as_ref()
                .map(filter_chain)
                .transpose()
                .at("default_filter_chain")?,
            has_filter_chain_matcher: l.filter_chain_matcher.is_some(),
        }))
    };
    Ok(Listener {
        name: l.name.as_str().into(),
        kind,
    })
}

pub(crate) fn http_connection_manager(
    h: &hcm::HttpConnectionManager,
) -> Result<HttpConnectionManager, FieldError> {
    use hcm::http_connection_manager::RouteSpecifier as R;
    let routes = match &h.route_specifier {
        Some(R::Rds(rds)) => {
            if rds.route_config_name.is_empty() {
                return Err(FieldError::new("must not be empty").at("rds.route_config_name"));
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
    let http_filters = each("http_filters", &h.http_filters, http_filter)?;
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
    Ok(HttpConnectionManager {
        routes,
        http_filters,
        max_stream_duration: opt_duration(
            common.and_then(|c| c.max_stream_duration.as_ref()),
            "common_http_protocol_options.max_stream_duration",
        )?
        .filter(|d| !d.is_zero()),
        stream_idle_timeout: opt_duration(h.stream_idle_timeout.as_ref(), "stream_idle_timeout")?,
    })
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
    // The terminal filter decides what the chain does; earlier network filters (Istio's
    // metadata exchange, authn) have no effect on a library and are skipped.
    let last = fc
        .filters
        .last()
        .ok_or_else(|| FieldError::new("at least one filter is required").at("filters"))?;
    let at = format!("filters[{}]", fc.filters.len() - 1);
    let typed = match &last.config_type {
        Some(pb::filter::ConfigType::TypedConfig(any)) => Some(any),
        _ => None,
    };
    let filter = match typed {
        Some(any) if any.type_url == hcm::HttpConnectionManager::type_url() => {
            let h: hcm::HttpConnectionManager = unpack(any).at(&at)?;
            NetworkFilter::Http(Arc::new(http_connection_manager(&h).at("typed_config").at(&at)?))
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
    Ok(FilterChain {
        name: fc.name.as_str().into(),
        matcher,
        tls,
        filter,
    })
}

fn filter_chain_match(m: &pb::FilterChainMatch) -> Result<FilterChainMatch, FieldError> {
    let port = |p: u32, f: &str| {
        u16::try_from(p).map_err(|_| FieldError::new(format!("invalid port {p}")).at(f.to_owned()))
    };
    Ok(FilterChainMatch {
        destination_port: m
            .destination_port
            .as_ref()
            .map(|p| port(p.value, "destination_port"))
            .transpose()?,
        prefix_ranges: each("prefix_ranges", &m.prefix_ranges, cidr)?,
        source_prefix_ranges: each("source_prefix_ranges", &m.source_prefix_ranges, cidr)?,
        source_ports: each("source_ports", &m.source_ports, |p| port(*p, ""))?,
        server_names: m.server_names.iter().map(|s| s.as_str().into()).collect(),
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
