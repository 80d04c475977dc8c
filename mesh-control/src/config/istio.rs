//! Istio's configuration resources (networking.istio.io, security.istio.io), as serde types.
//!
//! Field names and shapes follow Istio's API (camelCase). Unknown fields are errors, as in
//! Istio's CRD validation, so a typo is reported with its line instead of being ignored.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::duration::IstioDuration;

/// `VirtualService.spec`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VirtualService {
    /// Hosts the routes apply to.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Gateways (and `mesh`) the routes apply to.
    #[serde(default)]
    pub gateways: Vec<String>,
    /// HTTP routes, in order.
    #[serde(default)]
    pub http: Vec<HttpRoute>,
    /// TLS routes (parsed; not served).
    #[serde(default)]
    pub tls: Vec<serde_json::Value>,
    /// TCP routes (parsed; not served).
    #[serde(default)]
    pub tcp: Vec<serde_json::Value>,
    /// Namespaces the resource is visible to.
    #[serde(default)]
    pub export_to: Vec<String>,
}

/// `HTTPRoute`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRoute {
    /// Name.
    pub name: Option<String>,
    /// Conditions (any of them).
    #[serde(rename = "match", default)]
    pub matches: Vec<HttpMatchRequest>,
    /// Weighted destinations.
    #[serde(default)]
    pub route: Vec<HttpRouteDestination>,
    /// Redirect instead of forwarding.
    pub redirect: Option<HttpRedirect>,
    /// Answer directly.
    pub direct_response: Option<HttpDirectResponse>,
    /// Delegate to another VirtualService (parsed; not served).
    pub delegate: Option<serde_json::Value>,
    /// Rewrite before forwarding.
    pub rewrite: Option<HttpRewrite>,
    /// Request timeout.
    pub timeout: Option<IstioDuration>,
    /// Retry policy.
    pub retries: Option<HttpRetry>,
    /// Fault injection.
    pub fault: Option<HttpFaultInjection>,
    /// Mirror destination (single form).
    pub mirror: Option<Destination>,
    /// Mirror share for `mirror`.
    pub mirror_percentage: Option<Percent>,
    /// Deprecated integer form of `mirror_percentage`.
    pub mirror_percent: Option<u32>,
    /// Mirrors (list form).
    #[serde(default)]
    pub mirrors: Vec<HttpMirrorPolicy>,
    /// CORS (parsed; not served).
    pub cors_policy: Option<serde_json::Value>,
    /// Header operations.
    pub headers: Option<Headers>,
}

/// `HTTPMatchRequest`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpMatchRequest {
    /// Name.
    pub name: Option<String>,
    /// Path.
    pub uri: Option<StringMatch>,
    /// Scheme.
    pub scheme: Option<StringMatch>,
    /// Method.
    pub method: Option<StringMatch>,
    /// Authority.
    pub authority: Option<StringMatch>,
    /// Headers that must match.
    #[serde(default)]
    pub headers: BTreeMap<String, StringMatch>,
    /// Destination port.
    pub port: Option<u32>,
    /// Source workload labels.
    #[serde(default)]
    pub source_labels: BTreeMap<String, String>,
    /// Gateways.
    #[serde(default)]
    pub gateways: Vec<String>,
    /// Query parameters that must match.
    #[serde(default)]
    pub query_params: BTreeMap<String, StringMatch>,
    /// Case-insensitive URI matching.
    #[serde(default)]
    pub ignore_uri_case: bool,
    /// Headers that must not match.
    #[serde(default)]
    pub without_headers: BTreeMap<String, StringMatch>,
    /// Source namespace.
    pub source_namespace: Option<String>,
    /// Stat prefix.
    pub stat_prefix: Option<String>,
}

/// `StringMatch`: exactly one of the three.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StringMatch {
    /// Exact.
    Exact(String),
    /// Prefix.
    Prefix(String),
    /// RE2 regex (full match).
    Regex(String),
}

impl<'de> Deserialize<'de> for StringMatch {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Raw {
            exact: Option<String>,
            prefix: Option<String>,
            regex: Option<String>,
        }
        let r = Raw::deserialize(d)?;
        match (r.exact, r.prefix, r.regex) {
            (Some(e), None, None) => Ok(Self::Exact(e)),
            (None, Some(p), None) => Ok(Self::Prefix(p)),
            (None, None, Some(x)) => Ok(Self::Regex(x)),
            _ => Err(serde::de::Error::custom(
                "exactly one of exact, prefix or regex is required",
            )),
        }
    }
}

/// `HTTPRouteDestination`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteDestination {
    /// Where.
    pub destination: Destination,
    /// Share of traffic (all absent: equal, a single one: 100).
    pub weight: Option<i32>,
    /// Header operations for this destination.
    pub headers: Option<Headers>,
}

/// `Destination`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Destination {
    /// Service host.
    pub host: String,
    /// DestinationRule subset.
    pub subset: Option<String>,
    /// Port.
    pub port: Option<PortSelector>,
}

/// `PortSelector`.
#[derive(Clone, Copy, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortSelector {
    /// Port number.
    pub number: u32,
}

/// `Headers`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Headers {
    /// Request operations.
    pub request: Option<HeaderOperations>,
    /// Response operations.
    pub response: Option<HeaderOperations>,
}

/// `HeaderOperations`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderOperations {
    /// Overwrite.
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    /// Append.
    #[serde(default)]
    pub add: BTreeMap<String, String>,
    /// Remove.
    #[serde(default)]
    pub remove: Vec<String>,
}

/// `HTTPRedirect`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRedirect {
    /// New path.
    pub uri: Option<String>,
    /// New authority.
    pub authority: Option<String>,
    /// New port.
    pub port: Option<u32>,
    /// Port derivation (`FROM_PROTOCOL_DEFAULT`, `FROM_REQUEST_PORT`).
    pub derive_port: Option<String>,
    /// New scheme.
    pub scheme: Option<String>,
    /// Status (default 301).
    pub redirect_code: Option<u32>,
}

/// `HTTPDirectResponse`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpDirectResponse {
    /// Status.
    pub status: u32,
    /// Body.
    pub body: Option<HttpBody>,
}

/// `HTTPBody`: `string` or (base64) `bytes`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpBody {
    /// Text.
    pub string: Option<String>,
    /// Base64 bytes.
    pub bytes: Option<String>,
}

/// `HTTPRewrite`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRewrite {
    /// Replaces the matched URI prefix (or the whole path for exact matches).
    pub uri: Option<String>,
    /// New authority.
    pub authority: Option<String>,
    /// Regex rewrite.
    pub uri_regex_rewrite: Option<RegexRewrite>,
}

/// `RegexRewrite`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegexRewrite {
    /// Pattern.
    #[serde(rename = "match")]
    pub pattern: String,
    /// Replacement (`\1` groups).
    pub rewrite: String,
}

/// `HTTPRetry`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRetry {
    /// Retries (0 disables).
    pub attempts: i32,
    /// Timeout per attempt.
    pub per_try_timeout: Option<IstioDuration>,
    /// Envoy `retry_on` list (Istio also accepts HTTP status codes here).
    pub retry_on: Option<String>,
    /// Retry in other localities.
    pub retry_remote_localities: Option<bool>,
    /// Avoid previously tried hosts.
    pub retry_ignore_previous_hosts: Option<bool>,
    /// Base backoff.
    pub backoff: Option<IstioDuration>,
}

/// `HTTPFaultInjection`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpFaultInjection {
    /// Delay.
    pub delay: Option<FaultDelay>,
    /// Abort.
    pub abort: Option<FaultAbort>,
}

/// `HTTPFaultInjection.Delay`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultDelay {
    /// Delay.
    pub fixed_delay: Option<IstioDuration>,
    /// Exponential delay (not supported by Istio either).
    pub exponential_delay: Option<IstioDuration>,
    /// Share of requests.
    pub percentage: Option<Percent>,
    /// Deprecated integer share.
    pub percent: Option<u32>,
}

/// `HTTPFaultInjection.Abort`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultAbort {
    /// HTTP status.
    pub http_status: Option<u32>,
    /// gRPC status name (e.g. `UNAVAILABLE`).
    pub grpc_status: Option<String>,
    /// HTTP/2 error (not supported by Istio either).
    pub http2_error: Option<String>,
    /// Share of requests.
    pub percentage: Option<Percent>,
}

/// `Percent`.
#[derive(Clone, Copy, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Percent {
    /// 0.0 ..= 100.0.
    pub value: f64,
}

/// `HTTPMirrorPolicy`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpMirrorPolicy {
    /// Where.
    pub destination: Destination,
    /// Share.
    pub percentage: Option<Percent>,
}

/// `DestinationRule.spec`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DestinationRule {
    /// Service host.
    pub host: String,
    /// Policy for all subsets.
    pub traffic_policy: Option<TrafficPolicy>,
    /// Subsets.
    #[serde(default)]
    pub subsets: Vec<Subset>,
    /// Visibility.
    #[serde(default)]
    pub export_to: Vec<String>,
    /// Workloads it applies to.
    pub workload_selector: Option<WorkloadSelector>,
}

/// `Subset`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Subset {
    /// Name.
    pub name: String,
    /// Endpoint labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Policy overriding the rule's.
    pub traffic_policy: Option<TrafficPolicy>,
}

/// `TrafficPolicy`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficPolicy {
    /// Load balancing.
    pub load_balancer: Option<LoadBalancerSettings>,
    /// Connection limits.
    pub connection_pool: Option<ConnectionPoolSettings>,
    /// Outlier detection.
    pub outlier_detection: Option<OutlierDetection>,
    /// TLS origination.
    pub tls: Option<ClientTlsSettings>,
    /// Per-port overrides.
    #[serde(default)]
    pub port_level_settings: Vec<PortTrafficPolicy>,
    /// Tunnel (parsed; not served).
    pub tunnel: Option<serde_json::Value>,
    /// PROXY protocol (parsed; not served).
    pub proxy_protocol: Option<serde_json::Value>,
}

/// `PortTrafficPolicy`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortTrafficPolicy {
    /// Port.
    pub port: Option<PortSelector>,
    /// Load balancing.
    pub load_balancer: Option<LoadBalancerSettings>,
    /// Connection limits.
    pub connection_pool: Option<ConnectionPoolSettings>,
    /// Outlier detection.
    pub outlier_detection: Option<OutlierDetection>,
    /// TLS origination.
    pub tls: Option<ClientTlsSettings>,
}

/// `LoadBalancerSettings`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoadBalancerSettings {
    /// `ROUND_ROBIN`, `LEAST_REQUEST`, `LEAST_CONN`, `RANDOM`, `PASSTHROUGH`, `UNSPECIFIED`.
    pub simple: Option<String>,
    /// Consistent hashing.
    pub consistent_hash: Option<ConsistentHash>,
    /// Locality-aware balancing: priorities by the client's locality (with outlier
    /// detection, as in Istio).
    pub locality_lb_setting: Option<LocalityLbSetting>,
    /// Warm-up (parsed; not served).
    pub warmup_duration_secs: Option<IstioDuration>,
    /// Warm-up (parsed; not served).
    pub warmup: Option<serde_json::Value>,
}

/// `LocalityLoadBalancerSetting`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalityLbSetting {
    /// Whether locality-aware balancing applies (default: on, as in Istio's mesh config).
    pub enabled: Option<bool>,
    /// Where traffic fails over to when a client's own region is down.
    #[serde(default)]
    pub failover: Vec<LocalityFailover>,
    /// Weighted distribution between localities (parsed; not served).
    #[serde(default)]
    pub distribute: Vec<serde_json::Value>,
    /// Failover by endpoint labels (parsed; not served).
    #[serde(default)]
    pub failover_priority: Vec<String>,
}

/// One `failover` entry: clients in region `from` go to region `to` before any other.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalityFailover {
    /// The client's region.
    pub from: String,
    /// The region to fail over to.
    pub to: String,
}

/// `ConsistentHashLB`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConsistentHash {
    /// Hash a header.
    pub http_header_name: Option<String>,
    /// Hash a cookie.
    pub http_cookie: Option<HttpCookie>,
    /// Hash the source IP.
    pub use_source_ip: Option<bool>,
    /// Hash a query parameter.
    pub http_query_parameter_name: Option<String>,
    /// Ring hash.
    pub ring_hash: Option<RingHash>,
    /// Maglev.
    pub maglev: Option<Maglev>,
    /// Deprecated ring size.
    pub minimum_ring_size: Option<u64>,
}

/// `HTTPCookie`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpCookie {
    /// Name.
    pub name: String,
    /// Path.
    pub path: Option<String>,
    /// TTL for generated cookies.
    pub ttl: Option<IstioDuration>,
    /// Attributes (parsed; not served).
    #[serde(default)]
    pub attributes: Vec<serde_json::Value>,
}

/// `RingHash`.
#[derive(Clone, Copy, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RingHash {
    /// Minimum ring size.
    pub minimum_ring_size: Option<u64>,
}

/// `MagLev`.
#[derive(Clone, Copy, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Maglev {
    /// Table size.
    pub table_size: Option<u64>,
}

/// `ConnectionPoolSettings`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConnectionPoolSettings {
    /// TCP settings.
    pub tcp: Option<TcpSettings>,
    /// HTTP settings.
    pub http: Option<HttpSettings>,
}

/// `ConnectionPoolSettings.TCPSettings`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpSettings {
    /// Max connections.
    pub max_connections: Option<u32>,
    /// Connect timeout.
    pub connect_timeout: Option<IstioDuration>,
    /// Keepalive (parsed; not served).
    pub tcp_keepalive: Option<serde_json::Value>,
    /// Max connection duration.
    pub max_connection_duration: Option<IstioDuration>,
    /// Idle timeout.
    pub idle_timeout: Option<IstioDuration>,
}

/// `ConnectionPoolSettings.HTTPSettings`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpSettings {
    /// Max pending requests.
    pub http1_max_pending_requests: Option<u32>,
    /// Max requests.
    pub http2_max_requests: Option<u32>,
    /// Requests per connection.
    pub max_requests_per_connection: Option<u32>,
    /// Max concurrent retries.
    pub max_retries: Option<u32>,
    /// Idle timeout.
    pub idle_timeout: Option<IstioDuration>,
    /// `DEFAULT`, `DO_NOT_UPGRADE`, `UPGRADE`.
    pub h2_upgrade_policy: Option<String>,
    /// Use the client's protocol.
    pub use_client_protocol: Option<bool>,
    /// Max concurrent streams.
    pub max_concurrent_streams: Option<u32>,
}

/// `OutlierDetection`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutlierDetection {
    /// Split local-origin errors.
    pub split_external_local_origin_errors: Option<bool>,
    /// Consecutive local-origin failures.
    pub consecutive_local_origin_failures: Option<u32>,
    /// Consecutive 502/503/504.
    pub consecutive_gateway_errors: Option<u32>,
    /// Consecutive 5xx.
    pub consecutive_5xx_errors: Option<u32>,
    /// Deprecated alias of consecutive gateway errors.
    pub consecutive_errors: Option<u32>,
    /// Analysis interval.
    pub interval: Option<IstioDuration>,
    /// Base ejection time.
    pub base_ejection_time: Option<IstioDuration>,
    /// Max ejected share (percent).
    pub max_ejection_percent: Option<u32>,
    /// Minimum healthy share (percent) for ejection to run.
    pub min_health_percent: Option<u32>,
}

/// `ClientTLSSettings`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClientTlsSettings {
    /// `DISABLE`, `SIMPLE`, `MUTUAL`, `ISTIO_MUTUAL`.
    pub mode: Option<String>,
    /// Client certificate file (MUTUAL).
    pub client_certificate: Option<String>,
    /// Key file (MUTUAL).
    pub private_key: Option<String>,
    /// CA file.
    pub ca_certificates: Option<String>,
    /// Kubernetes secret name (parsed; not served).
    pub credential_name: Option<String>,
    /// Accepted SANs.
    #[serde(default)]
    pub subject_alt_names: Vec<String>,
    /// SNI.
    pub sni: Option<String>,
    /// Skip verification.
    pub insecure_skip_verify: Option<bool>,
    /// CRL file.
    pub ca_crl: Option<String>,
}

/// `WorkloadSelector`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadSelector {
    /// Labels.
    #[serde(default, alias = "matchLabels")]
    pub labels: BTreeMap<String, String>,
}

/// `PolicyTargetReference`: a Gateway API style reference to what a policy attaches to.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyTargetReference {
    /// API group (empty: the core group).
    #[serde(default)]
    pub group: String,
    /// `Service`, `ServiceEntry`, `Gateway`, `GatewayClass`.
    pub kind: String,
    /// Name.
    pub name: String,
    /// Must be empty: cross-namespace references are not supported (as in Istio).
    #[serde(default)]
    pub namespace: String,
}

impl PolicyTargetReference {
    /// The `group/kind` Istio names the kind by (`core` for the empty group).
    pub fn group_kind(&self) -> String {
        let group = if self.group.is_empty() {
            "core"
        } else {
            &self.group
        };
        format!("{group}/{}", self.kind)
    }
}

/// A policy's target references, `targetRef` and `targetRefs` together.
pub fn target_refs<'a>(
    single: &'a Option<PolicyTargetReference>,
    many: &'a [PolicyTargetReference],
) -> impl Iterator<Item = &'a PolicyTargetReference> {
    single.iter().chain(many)
}

/// `ServiceEntry.spec`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceEntry {
    /// Hosts.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Virtual IPs.
    #[serde(default)]
    pub addresses: Vec<String>,
    /// Ports.
    #[serde(default)]
    pub ports: Vec<ServicePort>,
    /// `MESH_EXTERNAL` or `MESH_INTERNAL`.
    pub location: Option<String>,
    /// `NONE`, `STATIC`, `DNS`, `DNS_ROUND_ROBIN`.
    pub resolution: Option<String>,
    /// Inline endpoints.
    #[serde(default)]
    pub endpoints: Vec<WorkloadEntry>,
    /// Selects WorkloadEntries.
    pub workload_selector: Option<WorkloadSelector>,
    /// Visibility.
    #[serde(default)]
    pub export_to: Vec<String>,
    /// Accepted SANs.
    #[serde(default)]
    pub subject_alt_names: Vec<String>,
}

/// `ServicePort`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServicePort {
    /// Port.
    pub number: u32,
    /// `HTTP`, `HTTP2`, `GRPC`, `TCP`, `TLS`, `HTTPS`, `MONGO`….
    pub protocol: Option<String>,
    /// Name.
    pub name: Option<String>,
    /// Port on the endpoints.
    pub target_port: Option<u32>,
}

/// `WorkloadEntry.spec` (also a ServiceEntry's inline endpoint).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadEntry {
    /// IP address (v4 or v6) or host name.
    #[serde(default)]
    pub address: String,
    /// Port name → number.
    #[serde(default)]
    pub ports: BTreeMap<String, u32>,
    /// Labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Network.
    pub network: Option<String>,
    /// `region/zone/subzone`.
    pub locality: Option<String>,
    /// LB weight.
    pub weight: Option<u32>,
    /// Service account.
    pub service_account: Option<String>,
    /// The object's `status.conditions[type=Healthy]`, as Istio's health checks (istio-agent,
    /// or whoever probes the workload) write it: `Some(false)` takes the endpoint out of
    /// EDS, as istiod does by default. Not part of the spec.
    #[serde(skip)]
    pub healthy: Option<bool>,
}

/// `PeerAuthentication.spec`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerAuthentication {
    /// Workloads (none: namespace or mesh wide).
    pub selector: Option<WorkloadSelector>,
    /// Mode.
    pub mtls: Option<MtlsSetting>,
    /// Per-port modes.
    #[serde(default)]
    pub port_level_mtls: BTreeMap<u32, MtlsSetting>,
}

/// `PeerAuthentication.MutualTLS`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MtlsSetting {
    /// `UNSET`, `DISABLE`, `PERMISSIVE`, `STRICT`.
    pub mode: Option<String>,
}

/// `AuthorizationPolicy.spec`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizationPolicy {
    /// Workloads.
    pub selector: Option<WorkloadSelector>,
    /// What the policy attaches to instead of a selector (deprecated single form).
    pub target_ref: Option<PolicyTargetReference>,
    /// What the policy attaches to instead of a selector: the workloads of a Service or a
    /// ServiceEntry (as a waypoint would apply it); Gateways, of which mesh-control serves
    /// none.
    #[serde(default)]
    pub target_refs: Vec<PolicyTargetReference>,
    /// `ALLOW` (default), `DENY`, `AUDIT`, `CUSTOM`.
    pub action: Option<String>,
    /// CUSTOM provider.
    pub provider: Option<ExtensionProvider>,
    /// Rules.
    #[serde(default)]
    pub rules: Vec<AuthzRule>,
}

/// `AuthorizationPolicy.ExtensionProvider`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExtensionProvider {
    /// Provider name from the mesh config.
    pub name: String,
}

/// `Rule`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthzRule {
    /// Sources (any).
    #[serde(default)]
    pub from: Vec<RuleFrom>,
    /// Operations (any).
    #[serde(default)]
    pub to: Vec<RuleTo>,
    /// Conditions (all).
    #[serde(default)]
    pub when: Vec<Condition>,
}

/// `Rule.From`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleFrom {
    /// Source.
    pub source: Source,
}

/// `Rule.To`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleTo {
    /// Operation.
    pub operation: Operation,
}

/// `Source`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(missing_docs)]
pub struct Source {
    #[serde(default)]
    pub principals: Vec<String>,
    #[serde(default)]
    pub not_principals: Vec<String>,
    #[serde(default)]
    pub request_principals: Vec<String>,
    #[serde(default)]
    pub not_request_principals: Vec<String>,
    #[serde(default)]
    pub namespaces: Vec<String>,
    #[serde(default)]
    pub not_namespaces: Vec<String>,
    #[serde(default)]
    pub service_accounts: Vec<String>,
    #[serde(default)]
    pub not_service_accounts: Vec<String>,
    #[serde(default)]
    pub trust_domains: Vec<String>,
    #[serde(default)]
    pub not_trust_domains: Vec<String>,
    #[serde(default)]
    pub ip_blocks: Vec<String>,
    #[serde(default)]
    pub not_ip_blocks: Vec<String>,
    #[serde(default)]
    pub remote_ip_blocks: Vec<String>,
    #[serde(default)]
    pub not_remote_ip_blocks: Vec<String>,
}

/// `Operation`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(missing_docs)]
pub struct Operation {
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub not_hosts: Vec<String>,
    #[serde(default)]
    pub ports: Vec<String>,
    #[serde(default)]
    pub not_ports: Vec<String>,
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub not_methods: Vec<String>,
    #[serde(default)]
    pub paths: Vec<String>,
    #[serde(default)]
    pub not_paths: Vec<String>,
}

/// `Condition`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Condition {
    /// Attribute (`request.headers[x]`, `source.ip`, `request.auth.claims[groups]`…).
    pub key: String,
    /// Accepted values.
    #[serde(default)]
    pub values: Vec<String>,
    /// Rejected values.
    #[serde(default)]
    pub not_values: Vec<String>,
}

/// `RequestAuthentication.spec`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestAuthentication {
    /// Workloads.
    pub selector: Option<WorkloadSelector>,
    /// What the policy attaches to instead of a selector (deprecated single form).
    pub target_ref: Option<PolicyTargetReference>,
    /// What the policy attaches to instead of a selector, as for AuthorizationPolicy.
    #[serde(default)]
    pub target_refs: Vec<PolicyTargetReference>,
    /// Issuers.
    #[serde(default)]
    pub jwt_rules: Vec<JwtRule>,
}

/// `JWTRule`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwtRule {
    /// `iss`.
    pub issuer: String,
    /// Accepted `aud`.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// JWKS URL.
    pub jwks_uri: Option<String>,
    /// Inline JWKS.
    pub jwks: Option<String>,
    /// Token headers.
    #[serde(default)]
    pub from_headers: Vec<JwtHeader>,
    /// Token query parameters.
    #[serde(default)]
    pub from_params: Vec<String>,
    /// Token cookies.
    #[serde(default)]
    pub from_cookies: Vec<String>,
    /// Header receiving the payload.
    pub output_payload_to_header: Option<String>,
    /// Keep the token upstream.
    pub forward_original_token: Option<bool>,
    /// Claims copied to headers.
    #[serde(default)]
    pub output_claim_to_headers: Vec<ClaimToHeader>,
    /// JWKS fetch timeout.
    pub timeout: Option<IstioDuration>,
}

/// `JWTHeader`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwtHeader {
    /// Header name.
    pub name: String,
    /// Value prefix (e.g. `Bearer `).
    pub prefix: Option<String>,
}

/// `ClaimToHeader`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClaimToHeader {
    /// Header.
    pub header: String,
    /// Claim.
    pub claim: String,
}

/// `Gateway.spec` (accepted and validated; a proxyless mesh has no gateway to serve it).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Gateway {
    /// Gateway workload labels.
    #[serde(default)]
    pub selector: BTreeMap<String, String>,
    /// Servers.
    #[serde(default)]
    pub servers: Vec<serde_json::Value>,
}

/// Istio's `MeshConfig`, as found in the `mesh` key of the `istio` ConfigMap. Only what
/// mesh-control serves is read; other fields are accepted and ignored.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MeshConfig {
    /// Providers referenced by CUSTOM AuthorizationPolicies (and telemetry).
    #[serde(default)]
    pub extension_providers: Vec<MeshExtensionProvider>,
    /// How proxies normalize request paths before authorization and routing.
    pub path_normalization: Option<ProxyPathNormalization>,
}

/// `MeshConfig.ProxyPathNormalization`.
#[derive(Clone, Copy, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProxyPathNormalization {
    /// The normalization (default `DEFAULT`, which is `BASE`).
    #[serde(default)]
    pub normalization: PathNormalizationMode,
}

/// `ProxyPathNormalization.NormalizationType`, and what istiod sets on every HTTP connection
/// manager for it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PathNormalizationMode {
    /// `BASE`.
    #[default]
    Default,
    /// No normalization (`normalize_path: false`).
    None,
    /// RFC 3986 normalization (`normalize_path: true`).
    Base,
    /// `BASE` and `merge_slashes`.
    MergeSlashes,
    /// `MERGE_SLASHES`, and `%2F` / `%5C` decoded (`UNESCAPE_AND_FORWARD`).
    DecodeAndMergeSlashes,
}

/// `MeshConfig.ExtensionProvider`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MeshExtensionProvider {
    /// The name policies use.
    pub name: String,
    /// External authorization over HTTP.
    pub envoy_ext_authz_http: Option<ExtAuthzHttpProvider>,
    /// External authorization over gRPC.
    pub envoy_ext_authz_grpc: Option<ExtAuthzGrpcProvider>,
}

/// `EnvoyExternalAuthorizationHttpProvider`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExtAuthzHttpProvider {
    /// Service host (`ext-authz.foo.svc.cluster.local`, or a short name).
    pub service: String,
    /// Service port.
    pub port: u32,
    /// Check timeout (default 600 s, as istiod sets).
    pub timeout: Option<IstioDuration>,
    /// Prefix for the check request's path.
    pub path_prefix: Option<String>,
    /// Allow requests when the service cannot be reached.
    #[serde(default)]
    pub fail_open: bool,
    /// Status when the check fails (default 403).
    pub status_on_error: Option<String>,
    /// Request headers sent in the check.
    #[serde(default)]
    pub include_request_headers_in_check: Vec<String>,
    /// Deprecated name of the above.
    #[serde(default)]
    pub include_headers_in_check: Vec<String>,
    /// Extra headers added to the check request.
    #[serde(default)]
    pub include_additional_headers_in_check: BTreeMap<String, String>,
    /// Send the body.
    pub include_request_body_in_check: Option<RequestBodyInCheck>,
    /// Check-response headers copied upstream on allow.
    #[serde(default)]
    pub headers_to_upstream_on_allow: Vec<String>,
    /// Check-response headers copied to the client on allow.
    #[serde(default)]
    pub headers_to_downstream_on_allow: Vec<String>,
    /// Check-response headers copied to the client on deny.
    #[serde(default)]
    pub headers_to_downstream_on_deny: Vec<String>,
}

/// `EnvoyExternalAuthorizationGrpcProvider`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExtAuthzGrpcProvider {
    /// Service host.
    pub service: String,
    /// Service port.
    pub port: u32,
    /// Check timeout (default 600 s).
    pub timeout: Option<IstioDuration>,
    /// Allow requests when the service cannot be reached.
    #[serde(default)]
    pub fail_open: bool,
    /// Status when the check fails (default 403).
    pub status_on_error: Option<String>,
    /// Send the body.
    pub include_request_body_in_check: Option<RequestBodyInCheck>,
}

/// `EnvoyExternalAuthorizationRequestBody`.
#[derive(Clone, Copy, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestBodyInCheck {
    /// Most bytes sent.
    pub max_request_bytes: Option<u32>,
    /// Send a partial body rather than 413.
    #[serde(default)]
    pub allow_partial_message: bool,
    /// Send the body as bytes.
    #[serde(default)]
    pub pack_as_bytes: bool,
}
