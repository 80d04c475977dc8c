//! Routes: `RouteConfiguration` → [`RouteTable`], with Envoy's virtual host selection.

use std::sync::Arc;
use std::time::Duration;

use super::filter::FilterOverrides;
use super::matcher::{Fraction, HeaderMatcher, RequestView, RouteMatcher};

/// A validated `RouteConfiguration`.
#[derive(Clone, Debug)]
pub struct RouteTable {
    /// Resource name.
    pub name: Arc<str>,
    /// Virtual hosts in configuration order.
    pub virtual_hosts: Box<[VirtualHost]>,
    /// Header mutations applied to every request and response.
    pub headers: HeaderMutations,
}

impl RouteTable {
    /// The virtual host for `authority`, chosen as Envoy does: an exact domain first, then the
    /// longest `*.suffix` wildcard, then the longest `prefix.*` wildcard, then `*`. When no
    /// domain matches the authority with its port, the port is stripped and matching retried
    /// (Istio lists both `reviews` and `reviews:9080`, but other control planes list one).
    pub fn virtual_host(&self, authority: &str) -> Option<&VirtualHost> {
        self.virtual_host_at(authority).map(|(_, vh)| vh)
    }

    /// [`RouteTable::virtual_host`], with its position in the table.
    fn virtual_host_at(&self, authority: &str) -> Option<(usize, &VirtualHost)> {
        self.pick_vhost(authority).or_else(|| {
            let (host, port) = authority.rsplit_once(':')?;
            let is_port = !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit());
            if is_port { self.pick_vhost(host) } else { None }
        })
    }

    fn pick_vhost(&self, authority: &str) -> Option<(usize, &VirtualHost)> {
        let mut best: Option<(usize, DomainRank)> = None;
        for (i, vh) in self.virtual_hosts.iter().enumerate() {
            for d in vh.domains.iter() {
                if let Some(rank) = d.rank(authority)
                    && best.as_ref().is_none_or(|(_, r)| rank > *r)
                {
                    best = Some((i, rank));
                }
            }
        }
        best.map(|(i, _)| (i, &self.virtual_hosts[i]))
    }

    /// The virtual host and first matching route for a request, with `sample` a uniform random
    /// number in `0..1_000_000` for runtime fractions.
    pub fn find(&self, req: &RequestView<'_>, sample: u32) -> Option<(&VirtualHost, &Route)> {
        self.find_indexed(req, sample).map(|f| (f.host, f.route))
    }

    /// [`RouteTable::find`], with where the virtual host and route are in the table, for
    /// state built alongside the table and indexed the same way.
    pub fn find_indexed(&self, req: &RequestView<'_>, sample: u32) -> Option<FoundRoute<'_>> {
        let (host_index, host) = self.virtual_host_at(req.authority)?;
        let (route_index, route) = host
            .routes
            .iter()
            .enumerate()
            .find(|(_, r)| r.matcher.matches(req, sample))?;
        Some(FoundRoute {
            host_index,
            route_index,
            host,
            route,
        })
    }

    /// Every cluster name a route in this table can send to, without duplicates
    /// (`cluster_header` targets are only known per request and are not listed).
    pub fn referenced_clusters(&self) -> Vec<Arc<str>> {
        let mut out: Vec<Arc<str>> = Vec::new();
        let mut push = |c: &Arc<str>| {
            if !out.iter().any(|x| x == c) {
                out.push(c.clone());
            }
        };
        for vh in self.virtual_hosts.iter() {
            for m in vh.mirrors.iter() {
                push(&m.cluster);
            }
            for r in vh.routes.iter() {
                if let Action::Forward(f) = &r.action {
                    match &f.cluster {
                        ClusterSpecifier::Cluster(c) => push(c),
                        ClusterSpecifier::Weighted(w) => {
                            w.clusters.iter().for_each(|c| push(&c.name))
                        }
                        ClusterSpecifier::Header(_) => {}
                    }
                    for m in f.mirrors.iter() {
                        push(&m.cluster);
                    }
                }
            }
        }
        out
    }
}

/// How specific a domain match is; larger is better (Envoy's order).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum DomainRank {
    Any,
    Prefix(usize),
    Suffix(usize),
    Exact,
}

/// One entry of `VirtualHost.domains`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DomainMatcher {
    /// `example.com` (compared case-insensitively).
    Exact(Box<str>),
    /// `*.example.com`: the stored text is `.example.com` (the `*` must match at least one char).
    Suffix(Box<str>),
    /// `example.*`: the stored text is `example.`.
    Prefix(Box<str>),
    /// `*`.
    Any,
}

/// Why a virtual host's domain is not one Envoy accepts ([`DomainMatcher::parse`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidDomain {
    /// An empty string.
    #[error("empty domain")]
    Empty,
    /// A `*` elsewhere than first or last.
    #[error("domain {0:?}: a wildcard may only be the first or last character")]
    Wildcard(Box<str>),
}

impl DomainMatcher {
    /// Parses one domain as Envoy accepts it.
    pub fn parse(domain: &str) -> Result<Self, InvalidDomain> {
        if domain == "*" {
            return Ok(Self::Any);
        }
        if domain.is_empty() {
            return Err(InvalidDomain::Empty);
        }
        let stars = domain.matches('*').count();
        match stars {
            0 => Ok(Self::Exact(domain.to_ascii_lowercase().into())),
            1 if domain.starts_with('*') => {
                Ok(Self::Suffix(domain[1..].to_ascii_lowercase().into()))
            }
            1 if domain.ends_with('*') => Ok(Self::Prefix(
                domain[..domain.len() - 1].to_ascii_lowercase().into(),
            )),
            _ => Err(InvalidDomain::Wildcard(domain.into())),
        }
    }

    fn rank(&self, authority: &str) -> Option<DomainRank> {
        match self {
            Self::Any => Some(DomainRank::Any),
            Self::Exact(d) => authority
                .eq_ignore_ascii_case(d)
                .then_some(DomainRank::Exact),
            Self::Suffix(s) => (authority.len() > s.len()
                && authority.as_bytes()[authority.len() - s.len()..]
                    .eq_ignore_ascii_case(s.as_bytes()))
            .then_some(DomainRank::Suffix(s.len())),
            Self::Prefix(p) => (authority.len() > p.len()
                && authority.as_bytes()[..p.len()].eq_ignore_ascii_case(p.as_bytes()))
            .then_some(DomainRank::Prefix(p.len())),
        }
    }
}

/// A route [`RouteTable::find_indexed`] found, with its place in the table.
#[derive(Clone, Copy, Debug)]
pub struct FoundRoute<'a> {
    /// The virtual host's position in [`RouteTable::virtual_hosts`].
    pub host_index: usize,
    /// The route's position in the virtual host's [`VirtualHost::routes`].
    pub route_index: usize,
    /// The virtual host.
    pub host: &'a VirtualHost,
    /// The route.
    pub route: &'a Route,
}

/// A validated `VirtualHost`.
#[derive(Clone, Debug)]
pub struct VirtualHost {
    /// Name.
    pub name: Arc<str>,
    /// Domains it serves.
    pub domains: Box<[DomainMatcher]>,
    /// Routes in order; the first match wins.
    pub routes: Box<[Route]>,
    /// Retry policy for routes that carry none.
    pub retry: Option<Arc<RetryPolicy>>,
    /// Hedge policy for routes that carry none.
    pub hedge: Option<HedgePolicy>,
    /// Header mutations for every route of this host.
    pub headers: HeaderMutations,
    /// Per-filter overrides.
    pub filter_overrides: FilterOverrides,
    /// Mirrors for routes that carry none.
    pub mirrors: Box<[MirrorPolicy]>,
    /// Add `x-envoy-attempt-count` to upstream requests.
    pub include_attempt_count: bool,
}

/// A validated `Route`.
#[derive(Clone, Debug)]
pub struct Route {
    /// Name (may be empty).
    pub name: Arc<str>,
    /// When it applies.
    pub matcher: RouteMatcher,
    /// What it does.
    pub action: Action,
    /// Header mutations.
    pub headers: HeaderMutations,
    /// Per-filter overrides (`typed_per_filter_config`).
    pub filter_overrides: FilterOverrides,
}

/// What a matched route does.
#[derive(Clone, Debug)]
pub enum Action {
    /// Forward upstream.
    Forward(Box<ForwardAction>),
    /// Answer with a redirect.
    Redirect(Box<Redirect>),
    /// Answer directly.
    DirectResponse {
        /// Status code.
        status: http::StatusCode,
        /// Body, possibly empty.
        body: bytes::Bytes,
    },
    /// Match, but do not forward (Envoy's `non_forwarding_action`, used by inbound listeners).
    NonForwarding,
}

/// Where and how a request is forwarded (`RouteAction`).
#[derive(Clone, Debug)]
pub struct ForwardAction {
    /// Which cluster(s).
    pub cluster: ClusterSpecifier,
    /// Whole-request timeout across attempts; `None` disables it. Envoy's default is 15 s.
    pub timeout: Option<Duration>,
    /// Idle timeout for the stream.
    pub idle_timeout: Option<Duration>,
    /// Retries (route's own, else the virtual host's).
    pub retry: Option<Arc<RetryPolicy>>,
    /// Hedging.
    pub hedge: Option<HedgePolicy>,
    /// Hash policies for ring hash / maglev.
    pub hash_policies: Box<[HashPolicy]>,
    /// Shadow copies.
    pub mirrors: Box<[MirrorPolicy]>,
    /// Path prefix rewrite.
    pub prefix_rewrite: Option<Box<str>>,
    /// Regex path rewrite.
    pub regex_rewrite: Option<RegexRewrite>,
    /// Host rewrite.
    pub host_rewrite: Option<HostRewrite>,
    /// Stream duration limits, incl. the `grpc-timeout` header handling.
    pub max_stream_duration: Option<MaxStreamDuration>,
    /// Status when the named cluster does not exist (503 by default).
    pub cluster_not_found_status: http::StatusCode,
}

/// Which cluster a forwarded request goes to.
#[derive(Clone, Debug)]
pub enum ClusterSpecifier {
    /// One named cluster.
    Cluster(Arc<str>),
    /// A weighted split, chosen once per request.
    Weighted(WeightedClusters),
    /// The cluster named by this request header.
    Header(http::HeaderName),
}

/// `WeightedCluster`, with the total precomputed.
#[derive(Clone, Debug)]
pub struct WeightedClusters {
    /// The choices, each with a non-zero share.
    pub clusters: Box<[ClusterWeight]>,
    /// Sum of weights (> 0).
    pub total: u32,
}

impl WeightedClusters {
    /// The cluster for a uniform sample in `0..total`.
    pub fn pick(&self, sample: u32) -> &ClusterWeight {
        &self.clusters[self.pick_index(sample)]
    }

    /// The position in [`WeightedClusters::clusters`] of the cluster for a uniform sample in
    /// `0..total`.
    pub fn pick_index(&self, sample: u32) -> usize {
        let mut acc = 0u32;
        for (i, c) in self.clusters.iter().enumerate() {
            acc += c.weight;
            if sample < acc {
                return i;
            }
        }
        // Unreachable when sample < total; the last is the safe answer.
        self.clusters.len() - 1
    }
}

/// One weighted choice.
#[derive(Clone, Debug)]
pub struct ClusterWeight {
    /// Cluster name.
    pub name: Arc<str>,
    /// Weight.
    pub weight: u32,
    /// Header mutations when chosen.
    pub headers: HeaderMutations,
    /// Per-filter overrides when chosen.
    pub filter_overrides: FilterOverrides,
    /// Host rewrite when chosen.
    pub host_rewrite: Option<HostRewrite>,
}

/// Envoy `retry_on` conditions as a bit set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RetryOn(u32);

/// A `retry_on` condition Envoy does not define ([`RetryOn::parse`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown retry_on condition {0:?}")]
pub struct UnknownRetryOn(pub Box<str>);

impl RetryOn {
    /// Any 5xx, or a connect failure / reset.
    pub const FIVE_XX: Self = Self(1 << 0);
    /// 502, 503, 504, or a connect failure / reset.
    pub const GATEWAY_ERROR: Self = Self(1 << 1);
    /// The upstream reset the stream (incl. timeouts of a connection).
    pub const RESET: Self = Self(1 << 2);
    /// Connecting failed.
    pub const CONNECT_FAILURE: Self = Self(1 << 3);
    /// 409.
    pub const RETRIABLE_4XX: Self = Self(1 << 4);
    /// HTTP/2 REFUSED_STREAM.
    pub const REFUSED_STREAM: Self = Self(1 << 5);
    /// Status codes in `retriable_status_codes`.
    pub const RETRIABLE_STATUS_CODES: Self = Self(1 << 6);
    /// Response headers match `retriable_headers`.
    pub const RETRIABLE_HEADERS: Self = Self(1 << 7);
    /// HTTP/3 or h2 upstream told us to retry (`envoy-ratelimited`): kept for completeness.
    pub const ENVOY_RATELIMITED: Self = Self(1 << 8);
    /// gRPC CANCELLED.
    pub const GRPC_CANCELLED: Self = Self(1 << 9);
    /// gRPC DEADLINE_EXCEEDED.
    pub const GRPC_DEADLINE_EXCEEDED: Self = Self(1 << 10);
    /// gRPC INTERNAL.
    pub const GRPC_INTERNAL: Self = Self(1 << 11);
    /// gRPC RESOURCE_EXHAUSTED.
    pub const GRPC_RESOURCE_EXHAUSTED: Self = Self(1 << 12);
    /// gRPC UNAVAILABLE.
    pub const GRPC_UNAVAILABLE: Self = Self(1 << 13);
    /// Retry an attempt whose per-try timeout fired (Envoy's default behaviour with `5xx`
    /// and `gateway-error`; kept as its own bit so gRPC codes can express it too).
    pub const HTTP3_POST_CONNECT_FAILURE: Self = Self(1 << 14);

    /// No condition.
    pub const NONE: Self = Self(0);

    /// Parses Envoy's comma-separated list. Unknown names are errors: silently ignoring a typo
    /// would disable retries someone asked for.
    pub fn parse(list: &str) -> Result<Self, UnknownRetryOn> {
        let mut out = Self::NONE;
        for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            out.0 |= match name {
                "5xx" => Self::FIVE_XX,
                "gateway-error" => Self::GATEWAY_ERROR,
                "reset" | "reset-before-request" => Self::RESET,
                "connect-failure" => Self::CONNECT_FAILURE,
                "retriable-4xx" => Self::RETRIABLE_4XX,
                "refused-stream" => Self::REFUSED_STREAM,
                "retriable-status-codes" => Self::RETRIABLE_STATUS_CODES,
                "retriable-headers" => Self::RETRIABLE_HEADERS,
                "envoy-ratelimited" => Self::ENVOY_RATELIMITED,
                "cancelled" => Self::GRPC_CANCELLED,
                "deadline-exceeded" => Self::GRPC_DEADLINE_EXCEEDED,
                "internal" => Self::GRPC_INTERNAL,
                "resource-exhausted" => Self::GRPC_RESOURCE_EXHAUSTED,
                "unavailable" => Self::GRPC_UNAVAILABLE,
                "http3-post-connect-failure" => Self::HTTP3_POST_CONNECT_FAILURE,
                other => return Err(UnknownRetryOn(other.into())),
            }
            .0;
        }
        Ok(out)
    }

    /// Whether every condition in `other` is set.
    pub fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0 && other.0 != 0
    }

    /// Whether no condition is set.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl std::ops::BitOr for RetryOn {
    type Output = Self;
    fn bitor(self, rhs: Self) -> Self {
        Self(self.0 | rhs.0)
    }
}

/// A validated `RetryPolicy`.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Conditions that allow a retry.
    pub retry_on: RetryOn,
    /// Retries after the first attempt (Envoy's default: 1).
    pub num_retries: u32,
    /// Timeout of each attempt; `None` means only the route timeout applies.
    pub per_try_timeout: Option<Duration>,
    /// Idle timeout of each attempt.
    pub per_try_idle_timeout: Option<Duration>,
    /// Codes for `retriable-status-codes`.
    pub retriable_status_codes: Box<[u16]>,
    /// Response header matchers for `retriable-headers`.
    pub retriable_headers: Box<[HeaderMatcher]>,
    /// Retry only requests whose headers match all of these.
    pub retriable_request_headers: Box<[HeaderMatcher]>,
    /// Exponential backoff base (Envoy's default: 25 ms).
    pub backoff_base: Duration,
    /// Backoff cap (Envoy's default: 10 × base).
    pub backoff_max: Duration,
    /// Avoid hosts already tried (`envoy.retry_host_predicates.previous_hosts`).
    pub avoid_previous_hosts: bool,
    /// How many times host selection is retried to honour the predicate.
    pub host_selection_max_attempts: u32,
}

/// Envoy's defaults for a `RetryPolicy` that sets nothing: no condition (so no retry), one
/// retry, no per-try timeout, 25 ms backoff capped at 250 ms.
impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            retry_on: RetryOn::default(),
            num_retries: 1,
            per_try_timeout: None,
            per_try_idle_timeout: None,
            retriable_status_codes: Box::new([]),
            retriable_headers: Box::new([]),
            retriable_request_headers: Box::new([]),
            backoff_base: Duration::from_millis(25),
            backoff_max: Duration::from_millis(250),
            avoid_previous_hosts: false,
            host_selection_max_attempts: 1,
        }
    }
}

/// A validated `HedgePolicy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HedgePolicy {
    /// Send a second attempt when the per-try timeout fires, keeping the first in flight.
    pub on_per_try_timeout: bool,
}

/// A validated `RequestMirrorPolicy`.
#[derive(Clone, Debug)]
pub struct MirrorPolicy {
    /// Cluster that receives the copy.
    pub cluster: Arc<str>,
    /// Fraction of requests mirrored.
    pub fraction: Fraction,
    /// Do not append `-shadow` to the host.
    pub disable_shadow_host_suffix: bool,
}

/// A validated `HashPolicy`.
#[derive(Clone, Debug)]
pub struct HashPolicy {
    /// What is hashed.
    pub source: HashSource,
    /// Stop at this policy when it yields a hash.
    pub terminal: bool,
}

/// What a [`HashPolicy`] hashes.
#[derive(Clone, Debug)]
pub enum HashSource {
    /// A request header's value.
    Header(http::HeaderName),
    /// A cookie's value (generated with `ttl` when absent and a ttl is set).
    Cookie {
        /// Cookie name.
        name: Box<str>,
        /// TTL for a generated cookie.
        ttl: Option<Duration>,
        /// Path for a generated cookie.
        path: Box<str>,
    },
    /// The downstream source IP.
    SourceIp,
    /// A query parameter's value.
    QueryParameter(Box<str>),
    /// A filter state key (kept for fidelity; unused by HTTP clients).
    FilterState(Box<str>),
}

/// `RouteAction.regex_rewrite`.
#[derive(Clone, Debug)]
pub struct RegexRewrite {
    /// Pattern, matched anywhere.
    pub pattern: regex::Regex,
    /// Substitution (`\1` style groups are converted to `${1}`).
    pub substitution: Box<str>,
}

/// How the Host/authority is rewritten.
#[derive(Clone, Debug)]
pub enum HostRewrite {
    /// To this literal.
    Literal(Box<str>),
    /// To the chosen upstream host's address.
    Auto,
    /// To this request header's value.
    Header(http::HeaderName),
}

/// `RouteAction.max_stream_duration`.
#[derive(Clone, Copy, Debug, Default)]
pub struct MaxStreamDuration {
    /// Hard cap on the stream.
    pub max: Option<Duration>,
    /// When set, `grpc-timeout` is honoured, capped at this (zero = no cap).
    pub grpc_timeout_header_max: Option<Duration>,
    /// Subtracted from `grpc-timeout`.
    pub grpc_timeout_header_offset: Option<Duration>,
}

/// A validated `RedirectAction`.
#[derive(Clone, Debug)]
pub struct Redirect {
    /// New scheme.
    pub scheme: Option<Box<str>>,
    /// New host.
    pub host: Option<Box<str>>,
    /// New port.
    pub port: Option<u16>,
    /// New path or prefix.
    pub path: Option<RedirectPath>,
    /// Status (301, 302, 303, 307, 308).
    pub status: http::StatusCode,
    /// Drop the query string.
    pub strip_query: bool,
}

/// How a redirect changes the path.
#[derive(Clone, Debug)]
pub enum RedirectPath {
    /// Replace the whole path.
    Path(Box<str>),
    /// Replace the matched prefix.
    Prefix(Box<str>),
    /// Regex rewrite of the path.
    Regex(RegexRewrite),
}

/// Header additions and removals at one level (route table, virtual host, route, weight).
#[derive(Clone, Debug, Default)]
pub struct HeaderMutations {
    /// Added to the upstream request.
    pub request_add: Box<[HeaderAdd]>,
    /// Removed from the upstream request.
    pub request_remove: Box<[http::HeaderName]>,
    /// Added to the downstream response.
    pub response_add: Box<[HeaderAdd]>,
    /// Removed from the downstream response.
    pub response_remove: Box<[http::HeaderName]>,
}

impl HeaderMutations {
    /// Whether nothing is changed.
    pub fn is_empty(&self) -> bool {
        self.request_add.is_empty()
            && self.request_remove.is_empty()
            && self.response_add.is_empty()
            && self.response_remove.is_empty()
    }
}

/// One `HeaderValueOption`.
#[derive(Clone, Debug)]
pub struct HeaderAdd {
    /// Name.
    pub name: http::HeaderName,
    /// Value.
    pub value: http::HeaderValue,
    /// What to do when the header exists.
    pub append: AppendAction,
}

/// `HeaderValueOption.append_action`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppendAction {
    /// Add another value (Envoy's default).
    AppendIfExistsOrAdd,
    /// Add only when absent.
    AddIfAbsent,
    /// Replace existing values.
    OverwriteIfExistsOrAdd,
    /// Replace only when present.
    OverwriteIfExists,
}

/// The default used when the route sets no timeout (Envoy's).
pub const DEFAULT_ROUTE_TIMEOUT: Duration = Duration::from_secs(15);

#[cfg(test)]
mod tests {
    use super::*;

    fn vh(name: &str, domains: &[&str]) -> VirtualHost {
        VirtualHost {
            name: name.into(),
            domains: domains
                .iter()
                .map(|d| DomainMatcher::parse(d).unwrap())
                .collect(),
            routes: Box::new([]),
            retry: None,
            hedge: None,
            headers: HeaderMutations::default(),
            filter_overrides: FilterOverrides::default(),
            mirrors: Box::new([]),
            include_attempt_count: false,
        }
    }

    #[test]
    fn domain_precedence_follows_envoy() {
        let table = RouteTable {
            name: "r".into(),
            virtual_hosts: vec![
                vh("any", &["*"]),
                vh("prefix", &["api.*"]),
                vh("suffix", &["*.example.com"]),
                vh("longer-suffix", &["*.api.example.com"]),
                vh("exact", &["api.example.com"]),
            ]
            .into(),
            headers: HeaderMutations::default(),
        };
        let pick = |a: &str| table.virtual_host(a).map(|v| v.name.to_string());
        assert_eq!(pick("api.example.com").as_deref(), Some("exact"));
        assert_eq!(pick("v1.api.example.com").as_deref(), Some("longer-suffix"));
        assert_eq!(pick("www.example.com").as_deref(), Some("suffix"));
        assert_eq!(pick("api.other").as_deref(), Some("prefix"));
        assert_eq!(pick("zzz").as_deref(), Some("any"));
        assert_eq!(pick("API.EXAMPLE.COM").as_deref(), Some("exact"));
    }

    #[test]
    fn port_is_stripped_when_nothing_matches_with_it() {
        let table = RouteTable {
            name: "r".into(),
            virtual_hosts: vec![vh("reviews", &["reviews"])].into(),
            headers: HeaderMutations::default(),
        };
        assert!(table.virtual_host("reviews:9080").is_some());
        assert!(table.virtual_host("ratings:9080").is_none());
    }

    #[test]
    fn bad_wildcards_are_rejected() {
        assert!(DomainMatcher::parse("a.*.com").is_err());
        assert!(DomainMatcher::parse("").is_err());
    }

    #[test]
    fn retry_on_parses_envoy_names() {
        let r = RetryOn::parse("5xx, connect-failure,unavailable").unwrap();
        assert!(r.contains(RetryOn::FIVE_XX));
        assert!(r.contains(RetryOn::GRPC_UNAVAILABLE));
        assert!(!r.contains(RetryOn::RESET));
        assert_eq!(
            RetryOn::parse("5xxx").unwrap_err(),
            UnknownRetryOn("5xxx".into())
        );
    }

    #[test]
    fn weighted_pick_covers_the_range() {
        let w = WeightedClusters {
            clusters: vec![
                ClusterWeight {
                    name: "a".into(),
                    weight: 20,
                    headers: HeaderMutations::default(),
                    filter_overrides: FilterOverrides::default(),
                    host_rewrite: None,
                },
                ClusterWeight {
                    name: "b".into(),
                    weight: 80,
                    headers: HeaderMutations::default(),
                    filter_overrides: FilterOverrides::default(),
                    host_rewrite: None,
                },
            ]
            .into(),
            total: 100,
        };
        assert_eq!(&*w.pick(0).name, "a");
        assert_eq!(&*w.pick(19).name, "a");
        assert_eq!(&*w.pick(20).name, "b");
        assert_eq!(&*w.pick(99).name, "b");
    }
}
