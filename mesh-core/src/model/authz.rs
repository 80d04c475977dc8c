//! Role-based access control (Envoy's RBAC filter), as istiod generates it from
//! AuthorizationPolicy: DENY policies are a filter placed before the ALLOW filter.

use std::sync::Arc;

use super::matcher::{Cidr, HeaderMatcher, StringMatcher};

/// The RBAC HTTP filter's config: enforced rules plus optional shadow (dry-run) rules.
#[derive(Clone, Debug)]
pub struct RbacFilter {
    /// Enforced rules; `None` means the filter enforces nothing.
    pub rules: Option<RbacPolicies>,
    /// Rules only evaluated and reported.
    pub shadow_rules: Option<RbacPolicies>,
    /// Stat prefix for enforced rules (Istio uses it to tell DENY from ALLOW filters).
    pub stat_prefix: Arc<str>,
    /// Stat prefix for shadow rules.
    pub shadow_stat_prefix: Arc<str>,
}

/// A set of named policies with one action.
#[derive(Clone, Debug)]
pub struct RbacPolicies {
    /// What a match means.
    pub action: RbacAction,
    /// Policies by name, sorted by name for deterministic evaluation.
    pub policies: Box<[(Arc<str>, RbacPolicy)]>,
}

/// What a policy match means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RbacAction {
    /// Allow when a policy matches, deny otherwise.
    Allow,
    /// Deny when a policy matches, allow otherwise.
    Deny,
    /// Allow always; a match is only logged (Istio's AUDIT).
    Log,
}

/// One policy: it matches when any permission and any principal match.
#[derive(Clone, Debug)]
pub struct RbacPolicy {
    /// What is being done.
    pub permissions: Box<[Permission]>,
    /// Who is doing it.
    pub principals: Box<[Principal]>,
}

/// A permission rule.
#[derive(Clone, Debug)]
pub enum Permission {
    /// All must match.
    And(Box<[Permission]>),
    /// Any must match.
    Or(Box<[Permission]>),
    /// Always matches.
    Any,
    /// A request header.
    Header(HeaderMatcher),
    /// The path (without query).
    UrlPath(StringMatcher),
    /// Destination IP.
    DestinationIp(Cidr),
    /// Destination port.
    DestinationPort(u16),
    /// Destination port range `[start, end)`.
    DestinationPortRange(u16, u16),
    /// Dynamic metadata (Istio: JWT claims, request principals).
    Metadata(MetadataMatcher),
    /// Negation.
    Not(Box<Permission>),
    /// TLS SNI.
    RequestedServerName(StringMatcher),
}

/// A principal rule.
#[derive(Clone, Debug)]
pub enum Principal {
    /// All must match.
    And(Box<[Principal]>),
    /// Any must match.
    Or(Box<[Principal]>),
    /// Always matches.
    Any,
    /// An authenticated peer whose principal (SPIFFE URI SAN, else subject) matches; `None`
    /// matches any authenticated peer.
    Authenticated(Option<StringMatcher>),
    /// The connection's source IP.
    SourceIp(Cidr),
    /// The direct peer's IP.
    DirectRemoteIp(Cidr),
    /// The original client IP (x-forwarded-for aware).
    RemoteIp(Cidr),
    /// A request header.
    Header(HeaderMatcher),
    /// The path.
    UrlPath(StringMatcher),
    /// Dynamic metadata.
    Metadata(MetadataMatcher),
    /// Filter state (Istio: `io.istio.peer_principal`).
    FilterState {
        /// Key.
        key: Box<str>,
        /// Value matcher.
        value: StringMatcher,
    },
    /// Negation.
    Not(Box<Principal>),
}

/// A dynamic-metadata matcher, as Istio uses for request principals and JWT claims.
#[derive(Clone, Debug)]
pub struct MetadataMatcher {
    /// Filter namespace (e.g. `istio_authn`).
    pub filter: Box<str>,
    /// Path of keys inside it (e.g. `["request.auth.claims", "groups"]`).
    pub path: Box<[Box<str>]>,
    /// The value check.
    pub value: ValueMatch,
    /// Negate.
    pub invert: bool,
}

/// A value check inside metadata.
#[derive(Clone, Debug)]
pub enum ValueMatch {
    /// A string value matching.
    String(StringMatcher),
    /// A list with at least one element matching.
    ListAny(Box<ValueMatch>),
    /// Present (non-null).
    Present,
    /// A boolean equal to this.
    Bool(bool),
    /// A number in `[start, end)`.
    DoubleRange(f64, f64),
    /// Exactly null.
    Null,
    /// Any of these.
    Or(Box<[ValueMatch]>),
}
