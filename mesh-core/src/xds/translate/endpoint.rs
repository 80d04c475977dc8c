//! `ClusterLoadAssignment` → [`EndpointSet`].

use std::net::SocketAddr;
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::endpoint::v3 as pb;

use super::listener::socket_address;
use super::{At, FieldError, fraction};
use crate::model::*;

/// Translates and validates a `ClusterLoadAssignment` received over EDS.
pub fn cluster_load_assignment(cla: &pb::ClusterLoadAssignment) -> Result<EndpointSet, FieldError> {
    load_assignment(cla, &cla.cluster_name)
}

pub(crate) fn load_assignment(
    cla: &pb::ClusterLoadAssignment,
    name: &str,
) -> Result<EndpointSet, FieldError> {
    // Group localities by priority; priorities must be contiguous from 0 (Envoy rejects gaps).
    let mut by_priority: Vec<Vec<LocalityEndpoints>> = Vec::new();
    // Localities are shared by every endpoint set that names them (10k clusters often share a
    // handful), so intern them per resource at least.
    let mut localities: Vec<Arc<Locality>> = Vec::new();
    for (i, l) in cla.endpoints.iter().enumerate() {
        let at = format!("endpoints[{i}]");
        let p = l.priority as usize;
        if p > 128 {
            return Err(FieldError::new(format!("priority {p} is too large"))
                .at("priority")
                .at(&at));
        }
        if by_priority.len() <= p {
            by_priority.resize_with(p + 1, Vec::new);
        }
        let loc = l.locality.clone().unwrap_or_default();
        let loc = Locality {
            region: loc.region.into(),
            zone: loc.zone.into(),
            sub_zone: loc.sub_zone.into(),
        };
        let locality = match localities.iter().find(|x| ***x == loc) {
            Some(x) => x.clone(),
            None => {
                let x = Arc::new(loc);
                localities.push(x.clone());
                x
            }
        };
        // Envoy's own dumps carry 0 for "unset"; either way the locality gets no load under
        // locality-weighted balancing.
        let weight = l
            .load_balancing_weight
            .as_ref()
            .map(|v| v.value)
            .filter(|w| *w > 0);
        let endpoints = super::each("lb_endpoints", &l.lb_endpoints, lb_endpoint).at(&at)?;
        by_priority[p].push(LocalityEndpoints {
            locality,
            weight,
            endpoints,
        });
    }
    if let Some(p) = by_priority.iter().position(Vec::is_empty)
        && p < by_priority.len()
    {
        return Err(FieldError::new(format!(
            "priority {p} has no localities; priorities must be contiguous from 0"
        ))
        .at("endpoints"));
    }
    let policy = cla.policy.as_ref();
    let overprovisioning_factor = policy
        .and_then(|p| p.overprovisioning_factor.as_ref())
        .map_or(140, |v| v.value);
    if overprovisioning_factor == 0 {
        return Err(FieldError::new("must be greater than 0").at("policy.overprovisioning_factor"));
    }
    let drop_overloads = match policy {
        Some(p) => super::each("policy.drop_overloads", &p.drop_overloads, |d| {
            Ok(DropOverload {
                category: d.category.as_str().into(),
                fraction: d
                    .drop_percentage
                    .as_ref()
                    .map(fraction)
                    .transpose()
                    .at("drop_percentage")?
                    .unwrap_or(Fraction { per_million: 0 }),
            })
        })?,
        None => Box::new([]),
    };
    Ok(EndpointSet {
        cluster_name: name.into(),
        priorities: by_priority
            .into_iter()
            .map(|l| Priority {
                localities: l.into(),
            })
            .collect(),
        overprovisioning_factor,
        drop_overloads,
    })
}

fn lb_endpoint(e: &pb::LbEndpoint) -> Result<Endpoint, FieldError> {
    let ep = match &e.host_identifier {
        Some(pb::lb_endpoint::HostIdentifier::Endpoint(ep)) => ep,
        Some(pb::lb_endpoint::HostIdentifier::EndpointName(_)) => {
            return Err(FieldError::new("named endpoints are not supported").at("endpoint_name"));
        }
        None => return Err(FieldError::new("is required").at("endpoint")),
    };
    let pb_address = ep
        .address
        .as_ref()
        .ok_or_else(|| FieldError::new("is required").at("endpoint.address"))?;
    let non_ip = match &pb_address.address {
        Some(core::address::Address::EnvoyInternalAddress(ia)) => {
            use core::envoy_internal_address::AddressNameSpecifier as N;
            let Some(N::ServerListenerName(listener)) = &ia.address_name_specifier else {
                return Err(FieldError::new("server_listener_name is required")
                    .at("endpoint.address.envoy_internal_address"));
            };
            Some(NonIpAddress::Internal {
                listener: listener.as_str().into(),
                endpoint_id: ia.endpoint_id.as_str().into(),
            })
        }
        Some(core::address::Address::Pipe(p)) if !p.path.is_empty() => {
            Some(NonIpAddress::Pipe(p.path.as_str().into()))
        }
        _ => None,
    };
    let address = match non_ip {
        Some(_) => SocketAddr::from(([0, 0, 0, 0], 0)),
        None => socket_address(pb_address).at("endpoint.address")?,
    };
    let additional: Vec<SocketAddr> = ep
        .additional_addresses
        .iter()
        .enumerate()
        .map(|(i, a)| {
            socket_address(
                a.address
                    .as_ref()
                    .ok_or_else(|| FieldError::new("is required"))?,
            )
            .at(format!("endpoint.additional_addresses[{i}].address"))
        })
        .collect::<Result<_, _>>()?;
    let weight = match e.load_balancing_weight.as_ref().map(|v| v.value) {
        Some(0) => return Err(FieldError::new("must be at least 1").at("load_balancing_weight")),
        Some(w) => w,
        None => 1,
    };
    let health = match e.health_status {
        0 => HealthStatus::Unknown,
        1 => HealthStatus::Healthy,
        2 => HealthStatus::Unhealthy,
        3 => HealthStatus::Draining,
        4 => HealthStatus::Timeout,
        5 => HealthStatus::Degraded,
        h => return Err(FieldError::new(format!("unknown health status {h}")).at("health_status")),
    };
    let extra =
        (!additional.is_empty() || !ep.hostname.is_empty() || non_ip.is_some()).then(|| {
            Box::new(EndpointExtra {
                additional_addresses: additional.into(),
                hostname: ep.hostname.as_str().into(),
                non_ip,
            })
        });
    Ok(Endpoint {
        address,
        weight,
        health,
        extra,
    })
}

/// The host and port of a DNS cluster's endpoint (the address is a name, not an IP).
pub(crate) fn raw_socket_address(e: &pb::LbEndpoint) -> Result<(&str, u16), FieldError> {
    let Some(pb::lb_endpoint::HostIdentifier::Endpoint(ep)) = &e.host_identifier else {
        return Err(FieldError::new("endpoint is required"));
    };
    match ep.address.as_ref().and_then(|a| a.address.as_ref()) {
        Some(core::address::Address::SocketAddress(sa)) => match sa.port_specifier {
            Some(core::socket_address::PortSpecifier::PortValue(p)) => Ok((
                sa.address.as_str(),
                u16::try_from(p)
                    .map_err(|_| FieldError::new(format!("invalid port {p}")).at("port_value"))?,
            )),
            _ => Err(FieldError::new("port_value is required")),
        },
        _ => Err(FieldError::new("socket_address is required")),
    }
}
