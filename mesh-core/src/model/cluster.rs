//! Clusters: `Cluster` → [`Cluster`].

use std::sync::Arc;
use std::time::Duration;

use super::endpoint::EndpointSet;
use super::tls::UpstreamTls;

/// A validated `Cluster`.
#[derive(Clone, Debug)]
pub struct Cluster {
    /// Resource name (Istio: `outbound|9080|v1|reviews.default.svc.cluster.local`).
    pub name: Arc<str>,
    /// Where the endpoints come from.
    pub discovery: Discovery,
    /// TCP connect timeout (Envoy's default: 5 s).
    pub connect_timeout: Duration,
    /// Load balancing.
    pub lb: LbPolicy,
    /// Limits (default priority thresholds).
    pub circuit_breakers: CircuitBreakers,
    /// Passive health checking.
    pub outlier_detection: Option<Arc<OutlierDetection>>,
    /// TLS origination.
    pub tls: Option<Arc<UpstreamTls>>,
    /// Which HTTP version to speak upstream.
    pub protocol: UpstreamProtocol,
    /// Below this share of healthy hosts, all hosts are used (Envoy's default: 50 %).
    pub healthy_panic_threshold: f64,
    /// Weigh localities by their `load_balancing_weight`.
    pub locality_weighted: bool,
    /// Close a connection after this many requests.
    pub max_requests_per_connection: Option<u32>,
    /// HTTP/2 settings of its connections (`http2_protocol_options`, in the cluster or in
    /// `HttpProtocolOptions`): flow-control windows and PING keepalive.
    pub http2: super::Http2Limits,
    /// A connection idle this long is not reused (`common_http_protocol_options.idle_timeout`;
    /// Envoy's default is one hour, which pooled connections here simply outlive unused).
    pub idle_timeout: Option<Duration>,
    /// A connection open this long takes no new request
    /// (`common_http_protocol_options.max_connection_duration`).
    pub max_connection_duration: Option<Duration>,
}

impl Cluster {
    /// The EDS resource name this cluster needs, if any.
    pub fn eds_name(&self) -> Option<&Arc<str>> {
        match &self.discovery {
            Discovery::Eds { service_name } => Some(service_name),
            _ => None,
        }
    }
}

/// How a cluster learns its endpoints.
#[derive(Clone, Debug)]
pub enum Discovery {
    /// From EDS, under this resource name (the cluster name unless `service_name` is set).
    Eds {
        /// EDS resource name.
        service_name: Arc<str>,
    },
    /// Inline `load_assignment` with IP addresses (STATIC).
    Static(Arc<EndpointSet>),
    /// Hostnames resolved by DNS (STRICT_DNS / LOGICAL_DNS).
    Dns {
        /// `host:port` pairs.
        hosts: Box<[(Box<str>, u16)]>,
        /// Use only the first address (LOGICAL_DNS).
        logical: bool,
        /// Which addresses of a name are used (`dns_lookup_family`).
        family: DnsFamily,
    },
    /// Connect to the request's original destination (ORIGINAL_DST, Istio's PassthroughCluster).
    OriginalDst,
}

/// Load balancing policy.
#[derive(Clone, Debug, PartialEq)]
pub enum LbPolicy {
    /// Weighted round robin.
    RoundRobin,
    /// Power of `choice_count` choices, least outstanding requests.
    LeastRequest {
        /// How many hosts are sampled (default 2).
        choice_count: u32,
        /// Active request bias (default 1.0).
        active_request_bias: f64,
    },
    /// Consistent hashing on a ring (Ketama).
    RingHash {
        /// Minimum ring size (default 1024).
        min_ring_size: u64,
        /// Maximum ring size (default 8M).
        max_ring_size: u64,
    },
    /// Uniform random.
    Random,
    /// Maglev consistent hashing.
    Maglev {
        /// Table size, a prime (default 65537).
        table_size: u64,
    },
}

/// Circuit-breaking thresholds (Envoy's DEFAULT priority; defaults 1024 each, 3 retries).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CircuitBreakers {
    /// Max connections to the cluster.
    pub max_connections: u32,
    /// Max requests waiting for a connection.
    pub max_pending_requests: u32,
    /// Max requests in flight.
    pub max_requests: u32,
    /// Max retries in flight.
    pub max_retries: u32,
    /// Retry budget, replacing `max_retries` when set.
    pub retry_budget: Option<RetryBudget>,
}

impl Default for CircuitBreakers {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            max_pending_requests: 1024,
            max_requests: 1024,
            max_retries: 3,
            retry_budget: None,
        }
    }
}

/// `Thresholds.RetryBudget`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryBudget {
    /// Retries allowed as a share of active requests, in per mille (default 200 = 20 %).
    pub budget_per_mille: u32,
    /// Retries always allowed (default 3).
    pub min_retry_concurrency: u32,
}

/// `OutlierDetection`, with Envoy's defaults filled in.
#[derive(Clone, Debug, PartialEq)]
pub struct OutlierDetection {
    /// Consecutive 5xx before ejection (default 5).
    pub consecutive_5xx: u32,
    /// Consecutive 502/503/504 before ejection (default 5).
    pub consecutive_gateway_failure: u32,
    /// Consecutive local-origin failures (default 5).
    pub consecutive_local_origin_failure: u32,
    /// Tell local-origin failures (connect errors, timeouts) from upstream answers.
    pub split_external_local_origin_errors: bool,
    /// Analysis interval (default 10 s).
    pub interval: Duration,
    /// Base ejection time, multiplied by the number of ejections (default 30 s).
    pub base_ejection_time: Duration,
    /// Ejection cap (default max(base, 300 s)).
    pub max_ejection_time: Duration,
    /// Max share of hosts ejected at once, percent (default 10).
    pub max_ejection_percent: u32,
    /// Enforcement percentages (default 100, 0, 100, 100, 0).
    pub enforcing_consecutive_5xx: u32,
    /// See above.
    pub enforcing_consecutive_gateway_failure: u32,
    /// See above.
    pub enforcing_consecutive_local_origin_failure: u32,
    /// See above.
    pub enforcing_success_rate: u32,
    /// See above.
    pub enforcing_failure_percentage: u32,
    /// Success-rate analysis: minimum hosts (default 5).
    pub success_rate_minimum_hosts: u32,
    /// Success-rate analysis: minimum requests per host (default 100).
    pub success_rate_request_volume: u32,
    /// Success-rate analysis: stdev factor / 1000 (default 1900).
    pub success_rate_stdev_factor: u32,
    /// Failure-percentage threshold (default 85).
    pub failure_percentage_threshold: u32,
    /// Failure-percentage analysis: minimum hosts (default 5).
    pub failure_percentage_minimum_hosts: u32,
    /// Failure-percentage analysis: minimum requests per host (default 50).
    pub failure_percentage_request_volume: u32,
}

impl Default for OutlierDetection {
    fn default() -> Self {
        Self {
            consecutive_5xx: 5,
            consecutive_gateway_failure: 5,
            consecutive_local_origin_failure: 5,
            split_external_local_origin_errors: false,
            interval: Duration::from_secs(10),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(300),
            max_ejection_percent: 10,
            enforcing_consecutive_5xx: 100,
            enforcing_consecutive_gateway_failure: 0,
            enforcing_consecutive_local_origin_failure: 100,
            enforcing_success_rate: 100,
            enforcing_failure_percentage: 0,
            success_rate_minimum_hosts: 5,
            success_rate_request_volume: 100,
            success_rate_stdev_factor: 1900,
            failure_percentage_threshold: 85,
            failure_percentage_minimum_hosts: 5,
            failure_percentage_request_volume: 50,
        }
    }
}

/// Upstream HTTP version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpstreamProtocol {
    /// HTTP/1.1 (Envoy's default).
    Http1,
    /// HTTP/2 (`http2_protocol_options` or explicit HTTP/2 in `HttpProtocolOptions`).
    Http2,
    /// Same as the downstream request (`use_downstream_protocol_config`).
    Downstream,
    /// Negotiated with ALPN (`auto_config`).
    Auto,
}

/// `dns_lookup_family`: which of a name's addresses a DNS cluster uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DnsFamily {
    /// Every address the resolver returns, in its order (unset, `AUTO`; Envoy's `AUTO` takes
    /// IPv6 when there is any, which would leave IPv4-only backends on `localhost` unreached).
    #[default]
    Any,
    /// IPv4 only.
    V4Only,
    /// IPv6 only.
    V6Only,
    /// IPv4 when there is any, else IPv6.
    V4Preferred,
    /// Both, IPv4 first (`ALL`).
    All,
}

impl DnsFamily {
    /// The addresses of one name this family uses, in order.
    pub fn select(self, addrs: Vec<std::net::SocketAddr>) -> Vec<std::net::SocketAddr> {
        let (v4, v6): (Vec<_>, Vec<_>) = addrs.iter().partition(|a| a.is_ipv4());
        match self {
            Self::Any => addrs,
            Self::V4Only => v4,
            Self::V6Only => v6,
            Self::V4Preferred if !v4.is_empty() => v4,
            Self::V4Preferred => v6,
            Self::All => v4.into_iter().chain(v6).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::DnsFamily;

    #[test]
    fn dns_families_select_as_envoy_names_them() {
        let v4: std::net::SocketAddr = "10.0.0.1:80".parse().unwrap();
        let v6: std::net::SocketAddr = "[fd00::1]:80".parse().unwrap();
        let both = vec![v6, v4];
        assert_eq!(DnsFamily::Any.select(both.clone()), [v6, v4]);
        assert_eq!(DnsFamily::V4Only.select(both.clone()), [v4]);
        assert_eq!(DnsFamily::V6Only.select(both.clone()), [v6]);
        assert_eq!(DnsFamily::V4Preferred.select(both.clone()), [v4]);
        assert_eq!(DnsFamily::V4Preferred.select(vec![v6]), [v6]);
        assert_eq!(DnsFamily::All.select(both), [v4, v6]);
    }
}
