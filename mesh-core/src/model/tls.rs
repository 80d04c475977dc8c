//! TLS settings carried by clusters (origination) and filter chains (termination).

use std::sync::Arc;

use super::matcher::StringMatcher;

/// Where a certificate (or a trust bundle) comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CertSource {
    /// A certificate-provider instance named in the bootstrap (gRFC A29, what istiod sends
    /// proxyless clients: instance `default`, certificate names `default` and `ROOTCA`).
    Provider {
        /// Instance name in `certificate_providers`.
        instance: Arc<str>,
        /// Certificate name inside the instance.
        certificate_name: Arc<str>,
    },
    /// An SDS secret by name (what istiod sends Envoy sidecars: `default`, `ROOTCA`).
    Sds(Arc<str>),
    /// Files (Envoy's inline `filename` data sources).
    Files {
        /// Certificate chain (or CA bundle) PEM.
        cert: Arc<str>,
        /// Private key PEM (empty for a trust bundle).
        key: Option<Arc<str>>,
    },
    /// The platform's trust store.
    System,
}

/// `SubjectAltNameMatcher` / `match_subject_alt_names`.
#[derive(Clone, Debug)]
pub struct SanMatcher {
    /// Which SAN kind is checked.
    pub kind: SanKind,
    /// How.
    pub matcher: StringMatcher,
}

/// SAN kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SanKind {
    /// Any kind (the legacy `match_subject_alt_names`).
    Any,
    /// DNS name.
    Dns,
    /// URI (SPIFFE IDs).
    Uri,
    /// Email.
    Email,
    /// IP address.
    Ip,
}

/// How a peer certificate is validated.
#[derive(Clone, Debug)]
pub struct CertValidation {
    /// Trust anchors.
    pub ca: CertSource,
    /// Accept the peer only when a SAN matches one of these (empty: any).
    pub san_matchers: Box<[SanMatcher]>,
}

/// `UpstreamTlsContext`.
#[derive(Clone, Debug)]
pub struct UpstreamTls {
    /// SNI to send.
    pub sni: Option<Arc<str>>,
    /// Our certificate (for mTLS).
    pub identity: Option<CertSource>,
    /// Peer validation; `None` means the peer is not verified (never from Istio configs).
    pub validation: Option<CertValidation>,
    /// ALPN protocols to offer.
    pub alpn: Box<[Arc<str>]>,
}

/// `DownstreamTlsContext`.
#[derive(Clone, Debug)]
pub struct DownstreamTls {
    /// Our certificate.
    pub identity: CertSource,
    /// Client validation.
    pub validation: Option<CertValidation>,
    /// Require a client certificate (Istio STRICT).
    pub require_client_certificate: bool,
    /// ALPN protocols to accept.
    pub alpn: Box<[Arc<str>]>,
}
