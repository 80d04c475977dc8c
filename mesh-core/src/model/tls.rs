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
    /// Versions, cipher suites and curves allowed (`tls_params`).
    pub params: TlsParams,
    /// With no SAN matcher, the server's certificate must be valid for the SNI
    /// (`auto_san_validation`; always so for a CA from files or the system's roots).
    pub verify_server_name: bool,
}

/// `TlsParameters`: the TLS versions a context allows and, for TLS 1.2, its cipher suites
/// and key-exchange curves. Enforced as an allow list: names this library does not implement
/// are not offered (never a weaker choice); a context left with nothing it can speak is
/// refused when it loads.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct TlsParams {
    /// The lowest version (`tls_minimum_protocol_version`); unset: TLS 1.2, the lowest this
    /// library speaks.
    pub min_version: Option<TlsVersion>,
    /// The highest version (`tls_maximum_protocol_version`); unset: TLS 1.3.
    pub max_version: Option<TlsVersion>,
    /// TLS 1.2 cipher suites by their BoringSSL names (`cipher_suites`, `[A|B]` groups
    /// allowed); empty: the defaults. TLS 1.3's suites are not configurable, as in Envoy.
    pub cipher_suites: Box<[Box<str>]>,
    /// Key-exchange groups (`ecdh_curves`: `X25519`, `P-256`, `P-384`, `X25519MLKEM768`);
    /// empty: the defaults.
    pub ecdh_curves: Box<[Box<str>]>,
}

/// A TLS version this library speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TlsVersion {
    /// TLS 1.2.
    V1_2,
    /// TLS 1.3.
    V1_3,
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
    /// Versions, cipher suites and curves allowed (`tls_params`).
    pub params: TlsParams,
}
