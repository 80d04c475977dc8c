//! Endpoints: `ClusterLoadAssignment` → [`EndpointSet`].
//!
//! Sized for large meshes: an endpoint is a socket address, a weight and a health byte, with
//! rarely used data (extra addresses, hostname) boxed behind an `Option`, so 100,000 endpoints
//! fit in a few megabytes.

use std::net::SocketAddr;
use std::sync::Arc;

use super::matcher::Fraction;

/// A validated `ClusterLoadAssignment`.
#[derive(Clone, Debug)]
pub struct EndpointSet {
    /// The cluster (or EDS service name) it is for.
    pub cluster_name: Arc<str>,
    /// Priorities, index = priority (0 is the highest); each has at least one locality.
    pub priorities: Box<[Priority]>,
    /// Overprovisioning factor in percent (Envoy's default: 140).
    pub overprovisioning_factor: u32,
    /// Drop categories.
    pub drop_overloads: Box<[DropOverload]>,
}

impl EndpointSet {
    /// Every endpoint, in all priorities and localities.
    pub fn endpoints(&self) -> impl Iterator<Item = &Endpoint> {
        self.priorities
            .iter()
            .flat_map(|p| p.localities.iter())
            .flat_map(|l| l.endpoints.iter())
    }
}

/// The localities at one priority.
#[derive(Clone, Debug)]
pub struct Priority {
    /// Localities.
    pub localities: Box<[LocalityEndpoints]>,
}

/// Endpoints in one locality.
#[derive(Clone, Debug)]
pub struct LocalityEndpoints {
    /// Where.
    pub locality: Arc<Locality>,
    /// Locality weight (used with locality-weighted LB); `None` when unset.
    pub weight: Option<u32>,
    /// Endpoints.
    pub endpoints: Box<[Endpoint]>,
}

/// `core.v3.Locality`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Locality {
    /// Region.
    pub region: Box<str>,
    /// Zone.
    pub zone: Box<str>,
    /// Sub-zone.
    pub sub_zone: Box<str>,
}

/// One endpoint.
#[derive(Clone, Debug)]
pub struct Endpoint {
    /// Primary address.
    pub address: SocketAddr,
    /// LB weight (≥ 1; default 1).
    pub weight: u32,
    /// Health.
    pub health: HealthStatus,
    /// Extra addresses and hostname, rarely present.
    pub extra: Option<Box<EndpointExtra>>,
}

/// Rarely-set endpoint data.
#[derive(Clone, Debug, Default)]
pub struct EndpointExtra {
    /// `additional_addresses` (e.g. the IPv6 address of a dual-stack endpoint).
    pub additional_addresses: Box<[SocketAddr]>,
    /// Hostname (used for auto host rewrite and hashing by hostname).
    pub hostname: Box<str>,
    /// An address that is not an IP socket address; `Endpoint::address` is then `0.0.0.0:0`.
    pub non_ip: Option<NonIpAddress>,
}

/// Endpoint addresses other than IP sockets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NonIpAddress {
    /// A Unix domain socket path (Envoy's `pipe`; istio-agent serves SDS and xDS this way).
    Pipe(Box<str>),
    /// An Envoy internal listener (`server_listener_name`, `endpoint_id`): reachable only inside
    /// an Envoy, so balancers skip such endpoints.
    Internal {
        /// The internal listener.
        listener: Box<str>,
        /// The endpoint id passed to it.
        endpoint_id: Box<str>,
    },
}

/// `core.v3.HealthStatus`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HealthStatus {
    /// Unknown: treated as healthy.
    Unknown,
    /// Healthy.
    Healthy,
    /// Unhealthy: not chosen unless in panic.
    Unhealthy,
    /// Draining: not chosen for new requests.
    Draining,
    /// Health check timed out.
    Timeout,
    /// Degraded: chosen only when no healthy host is left.
    Degraded,
}

impl Endpoint {
    /// The non-IP address, when the endpoint has one.
    pub fn non_ip(&self) -> Option<&NonIpAddress> {
        self.extra.as_ref().and_then(|e| e.non_ip.as_ref())
    }
}

impl HealthStatus {
    /// Whether the balancer may pick it normally (Envoy: UNKNOWN and HEALTHY).
    pub fn is_healthy(self) -> bool {
        matches!(self, Self::Unknown | Self::Healthy)
    }
}

/// `Policy.DropOverload`.
#[derive(Clone, Debug)]
pub struct DropOverload {
    /// Category, reported in load reports.
    pub category: Box<str>,
    /// Share of requests dropped.
    pub fraction: Fraction,
}
