//! HTTP filters of an HttpConnectionManager and their per-route overrides.

use std::sync::Arc;
use std::time::Duration;

use super::authz::{MetadataMatcher, RbacFilter};
use super::matcher::{Fraction, HeaderMatcher, RouteMatcher, StringMatcher};

/// Well-known filter type URLs, as Envoy and istiod send them.
pub mod type_urls {
    /// The router: the terminal filter.
    pub const ROUTER: &str = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router";
    /// Fault injection.
    pub const FAULT: &str = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault";
    /// RBAC (listener level).
    pub const RBAC: &str = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC";
    /// RBAC per route.
    pub const RBAC_PER_ROUTE: &str =
        "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute";
    /// JWT authentication.
    pub const JWT: &str =
        "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication";
    /// JWT per route.
    pub const JWT_PER_ROUTE: &str =
        "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.PerRouteConfig";
    /// External authorization.
    pub const EXT_AUTHZ: &str =
        "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz";
    /// Local rate limit.
    pub const LOCAL_RATE_LIMIT: &str =
        "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit";
    /// Generic per-route override that disables a filter or replaces its config.
    pub const FILTER_CONFIG: &str = "type.googleapis.com/envoy.config.route.v3.FilterConfig";
    /// A typed struct wrapping a config the descriptor pool does not know.
    pub const TYPED_STRUCT: &str = "type.googleapis.com/xds.type.v3.TypedStruct";
    /// The older typed struct.
    pub const UDPA_TYPED_STRUCT: &str = "type.googleapis.com/udpa.type.v1.TypedStruct";
}

/// One entry of `http_filters`.
#[derive(Clone, Debug)]
pub struct HttpFilter {
    /// Filter instance name, the key for per-route overrides.
    pub name: Arc<str>,
    /// Its configuration.
    pub config: FilterConfig,
    /// Disabled unless a route enables it.
    pub disabled: bool,
}

/// A filter's configuration.
#[derive(Clone, Debug)]
pub enum FilterConfig {
    /// Forward to the route's cluster.
    Router,
    /// Fault injection.
    Fault(Arc<FaultConfig>),
    /// Role-based access control.
    Rbac(Arc<RbacFilter>),
    /// JWT authentication.
    Jwt(Arc<JwtConfig>),
    /// Per-route JWT requirement.
    JwtPerRoute(Arc<JwtPerRoute>),
    /// Local token-bucket rate limit.
    LocalRateLimit(Arc<LocalRateLimit>),
    /// External authorization (Istio's AuthorizationPolicy CUSTOM).
    ExtAuthz(Arc<ExtAuthz>),
    /// An optional filter (or override) this library does not implement; ignored on the data
    /// path, kept so `/config_dump` can say what was skipped.
    Unsupported {
        /// The filter's type URL.
        type_url: Arc<str>,
    },
}

impl FilterConfig {
    /// A short name for logs and dumps.
    pub fn kind(&self) -> &str {
        match self {
            Self::Router => "router",
            Self::Fault(_) => "fault",
            Self::Rbac(_) => "rbac",
            Self::Jwt(_) => "jwt_authn",
            Self::JwtPerRoute(_) => "jwt_authn.per_route",
            Self::LocalRateLimit(_) => "local_ratelimit",
            Self::ExtAuthz(_) => "ext_authz",
            Self::Unsupported { type_url } => type_url,
        }
    }
}

/// Per-route (or per-host, per-weight) filter overrides, keyed by filter name.
#[derive(Clone, Debug, Default)]
pub struct FilterOverrides(pub Box<[(Arc<str>, FilterOverride)]>);

impl FilterOverrides {
    /// The override for the filter named `name`.
    pub fn get(&self, name: &str) -> Option<&FilterOverride> {
        self.0.iter().find(|(n, _)| &**n == name).map(|(_, o)| o)
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// What an override does.
#[derive(Clone, Debug)]
pub enum FilterOverride {
    /// Replace the filter's config for this route.
    Config(FilterConfig),
    /// Disable the filter for this route.
    Disabled,
}

/// `HTTPFault`.
#[derive(Clone, Debug, Default)]
pub struct FaultConfig {
    /// Delay injection.
    pub delay: Option<FaultDelay>,
    /// Abort injection.
    pub abort: Option<FaultAbort>,
    /// Apply only to requests whose headers all match.
    pub headers: Box<[HeaderMatcher]>,
    /// Apply only when the upstream cluster is this one.
    pub upstream_cluster: Option<Arc<str>>,
    /// Cap on concurrently active faults.
    pub max_active_faults: Option<u32>,
}

/// Delay part of a fault.
#[derive(Clone, Debug)]
pub struct FaultDelay {
    /// Fixed delay, or taken from the `x-envoy-fault-delay-request` header.
    pub kind: DelayKind,
    /// Share of requests delayed.
    pub fraction: Fraction,
}

/// Where the delay comes from.
#[derive(Clone, Copy, Debug)]
pub enum DelayKind {
    /// A fixed delay.
    Fixed(Duration),
    /// Milliseconds from the `x-envoy-fault-delay-request` header.
    Header,
}

/// Abort part of a fault.
#[derive(Clone, Debug)]
pub struct FaultAbort {
    /// What the aborted request gets.
    pub kind: AbortKind,
    /// Share of requests aborted.
    pub fraction: Fraction,
}

/// The answer to an aborted request.
#[derive(Clone, Copy, Debug)]
pub enum AbortKind {
    /// This HTTP status.
    Http(http::StatusCode),
    /// This gRPC status (HTTP 200 with `grpc-status`).
    Grpc(u32),
    /// From the `x-envoy-fault-abort-request` / `-grpc-request` headers.
    Header,
}

/// `ExtAuthz`: ask an authorization service about each request.
#[derive(Clone, Debug)]
pub struct ExtAuthz {
    /// The service and how to call it.
    pub service: ExtAuthzService,
    /// Per-check timeout (Envoy's default: 200 ms).
    pub timeout: Duration,
    /// Let requests through when the service cannot be reached (Istio's `failOpen`).
    pub failure_mode_allow: bool,
    /// Status for requests denied because the check failed (403 by default).
    pub status_on_error: http::StatusCode,
    /// Request headers sent in the check (empty: Envoy's defaults).
    pub allowed_headers: Box<[StringMatcher]>,
    /// Headers added to the check request.
    pub headers_to_add: Box<[(http::HeaderName, http::HeaderValue)]>,
    /// Headers of an OK answer copied to the upstream request.
    pub allowed_upstream_headers: Box<[StringMatcher]>,
    /// Headers of a denial copied to the client's response.
    pub allowed_client_headers: Box<[StringMatcher]>,
    /// Headers of an OK answer copied to the client's response.
    pub allowed_client_headers_on_success: Box<[StringMatcher]>,
    /// Send the request body too, buffered up to this many bytes.
    pub with_request_body: Option<BodyBuffering>,
    /// Check only requests whose dynamic metadata matches (Istio: the shadow RBAC rules of
    /// CUSTOM policies mark the requests to check).
    pub enabled_metadata: Option<MetadataMatcher>,
    /// Check only this share of requests.
    pub filter_enabled: Option<Fraction>,
}

/// Where the authorization service is.
#[derive(Clone, Debug)]
pub enum ExtAuthzService {
    /// Plain HTTP: the original request's method and headers go to `uri` + path prefix;
    /// a 200 answer allows it.
    Http {
        /// Cluster that reaches the service.
        cluster: Arc<str>,
        /// The service's URI (host and port; its path is not used).
        uri: Box<str>,
        /// Prepended to the request path.
        path_prefix: Box<str>,
    },
    /// Envoy's `envoy.service.auth.v3.Authorization/Check` over gRPC.
    Grpc {
        /// Cluster that reaches the service.
        cluster: Arc<str>,
        /// `:authority` for the calls.
        authority: Option<Box<str>>,
    },
}

/// `BufferSettings` of the ext_authz filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BodyBuffering {
    /// Most bytes buffered.
    pub max_bytes: u32,
    /// Send what fits instead of answering 413.
    pub allow_partial: bool,
}

/// `LocalRateLimit`.
#[derive(Clone, Debug)]
pub struct LocalRateLimit {
    /// The bucket; `None` means the filter passes everything (a listener-level filter enabled
    /// per route, as Istio does).
    pub bucket: Option<TokenBucket>,
    /// Share of requests for which the limit is checked.
    pub enabled: Fraction,
    /// Share of checked requests for which it is enforced (the rest are only counted).
    pub enforced: Fraction,
    /// Status on rejection (429 by default).
    pub status: http::StatusCode,
    /// Headers added to rejected responses.
    pub response_headers: Box<[(http::HeaderName, http::HeaderValue)]>,
}

impl LocalRateLimit {
    /// A limit enforced on every request, answered with 429 and no extra headers. (Envoy's
    /// filter, unconfigured, enables and enforces nothing; a limit built in code means it.)
    pub fn new(bucket: TokenBucket) -> Self {
        Self {
            bucket: Some(bucket),
            enabled: Fraction::ALWAYS,
            enforced: Fraction::ALWAYS,
            status: http::StatusCode::TOO_MANY_REQUESTS,
            response_headers: Box::new([]),
        }
    }
}

/// A token bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenBucket {
    /// Bucket size.
    pub max_tokens: u32,
    /// Tokens added each interval.
    pub tokens_per_fill: u32,
    /// Interval.
    pub fill_interval: Duration,
}

/// `JwtAuthentication`.
#[derive(Clone, Debug)]
pub struct JwtConfig {
    /// Providers by name.
    pub providers: Box<[(Arc<str>, Arc<JwtProvider>)]>,
    /// Rules: the first whose matcher matches gives the requirement.
    pub rules: Box<[(RouteMatcher, JwtRequirement)]>,
    /// Named requirements for per-route configs.
    pub requirement_map: Box<[(Arc<str>, JwtRequirement)]>,
}

/// `PerRouteConfig` of the JWT filter.
#[derive(Clone, Debug)]
pub enum JwtPerRoute {
    /// Skip JWT checks on this route.
    Disabled,
    /// Use the named requirement of the filter's `requirement_map`.
    RequirementName(Arc<str>),
}

/// A JWT issuer the filter trusts.
#[derive(Clone, Debug)]
pub struct JwtProvider {
    /// Expected `iss`.
    pub issuer: Box<str>,
    /// Accepted `aud` values (empty: any).
    pub audiences: Box<[Box<str>]>,
    /// Where the keys come from.
    pub jwks: JwksSource,
    /// Headers carrying the token (default `Authorization: Bearer`).
    pub from_headers: Box<[(http::HeaderName, Box<str>)]>,
    /// Query parameters carrying the token (default `access_token`).
    pub from_params: Box<[Box<str>]>,
    /// Cookies carrying the token (none by default).
    pub from_cookies: Box<[Box<str>]>,
    /// Keep the token in the request forwarded upstream.
    pub forward: bool,
    /// Put the base64url payload in this header.
    pub forward_payload_header: Option<http::HeaderName>,
    /// Claims copied to headers: (claim name, header).
    pub claim_to_headers: Box<[(Box<str>, http::HeaderName)]>,
    /// Name under which the payload is published as metadata (Istio: the issuer).
    pub payload_in_metadata: Option<Box<str>>,
    /// Allowed clock skew.
    pub clock_skew: Duration,
}

impl JwtProvider {
    /// A provider for `issuer` with keys from `jwks` and Envoy's defaults otherwise: tokens
    /// in `Authorization: Bearer` or `access_token`, any audience, stripped once verified,
    /// 60 s of clock skew.
    pub fn new(issuer: impl Into<Box<str>>, jwks: JwksSource) -> Self {
        Self {
            issuer: issuer.into(),
            audiences: Box::new([]),
            jwks,
            from_headers: Box::new([]),
            from_params: Box::new([]),
            from_cookies: Box::new([]),
            forward: false,
            forward_payload_header: None,
            claim_to_headers: Box::new([]),
            payload_in_metadata: None,
            clock_skew: Duration::from_secs(60),
        }
    }
}

/// Where a provider's keys come from.
#[derive(Clone, Debug)]
pub enum JwksSource {
    /// Inline JWKS JSON.
    Local(Arc<str>),
    /// Fetched over HTTP and cached.
    Remote {
        /// URI.
        uri: Box<str>,
        /// Cluster used to reach it.
        cluster: Arc<str>,
        /// Fetch timeout.
        timeout: Duration,
        /// Cache duration (Envoy's default is 5 minutes).
        cache_duration: Duration,
    },
}

/// A JWT requirement.
#[derive(Clone, Debug)]
pub enum JwtRequirement {
    /// A valid token from this provider.
    Provider(Arc<str>),
    /// A valid token from this provider with one of these audiences.
    ProviderAudiences(Arc<str>, Box<[Box<str>]>),
    /// Any of these.
    Any(Box<[JwtRequirement]>),
    /// All of these.
    All(Box<[JwtRequirement]>),
    /// A token is verified when present; a missing or bad one passes.
    AllowMissingOrFailed,
    /// A missing token passes; a bad one fails.
    AllowMissing,
}
