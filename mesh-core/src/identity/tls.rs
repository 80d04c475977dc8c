//! rustls configurations over a [`CertificateProvider`]: the certificate presented and the
//! roots trusted are read from the provider at each handshake, so a rotation takes effect on
//! the next connection without rebuilding anything.
//!
//! Peers are verified the way Istio verifies them: the chain must lead to the mesh's roots,
//! and a server must carry a SAN matching one of the cluster's matchers (for Istio, the
//! SPIFFE IDs of the service's accounts). For mesh peers, DNS names are not checked against the
//! address dialled: they are named by SPIFFE ID, not by host name. A server vouched for by a CA
//! file or the system's roots is ([`client_config_with`] with `check_name`, [`system_client_config`]). webpki cannot match URI SANs
//! (rustls#1194), so the chain check is rustls's and the SAN check is ours.

use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, Error, SignatureScheme};

use super::CertificateProvider;
use crate::model::{SanKind, SanMatcher, TlsParams, TlsVersion};

/// The crypto provider every configuration uses (aws-lc-rs, like tonic's and ztunnel's).
pub fn crypto_provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .clone()
}

/// A client configuration presenting the provider's certificate (when it has one) and
/// accepting servers whose chain leads to its roots and whose SANs match `sans` (any SAN
/// when empty).
pub fn client_config(
    provider: &CertificateProvider,
    sans: Arc<[SanMatcher]>,
    alpn: Vec<Vec<u8>>,
) -> rustls::ClientConfig {
    client_config_with(provider, sans, alpn, false, &TlsParams::default())
        .expect("the default parameters are spoken")
}

/// [`client_config`] speaking only what `params` allow ([`crypto_for`]). With `check_name`,
/// for a server named by host name rather than by SPIFFE ID (a DestinationRule's `SIMPLE` or
/// `MUTUAL` with `caCertificates`, or `auto_san_validation`): when `sans` is empty, the
/// certificate must be valid for the name the client asks for (its SNI), so any other server
/// the CA has signed is refused.
pub fn client_config_with(
    provider: &CertificateProvider,
    sans: Arc<[SanMatcher]>,
    alpn: Vec<Vec<u8>>,
    check_name: bool,
    params: &TlsParams,
) -> Result<rustls::ClientConfig, TlsConfigError> {
    let (crypto, versions) = crypto_for(params)?;
    let mut config = rustls::ClientConfig::builder_with_provider(crypto.clone())
        .with_protocol_versions(&versions)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(MeshServerVerifier {
            roots: Roots::Provider(provider.clone()),
            sans,
            check_name,
            checks: SignatureChecks(crypto),
        }))
        .with_client_cert_resolver(Arc::new(Resolver(provider.clone())));
    config.alpn_protocols = alpn;
    Ok(config)
}

/// A client configuration trusting the system's roots ([`system_roots`]) and presenting no
/// certificate: the certificate must be valid for the name asked for, and match `sans` when
/// there are any (Envoy's `system_root_certs`, and what a `https` request to a host outside
/// the mesh is verified with).
pub fn system_client_config(
    sans: Arc<[SanMatcher]>,
    alpn: Vec<Vec<u8>>,
    params: &TlsParams,
) -> Result<rustls::ClientConfig, TlsConfigError> {
    let (crypto, versions) = crypto_for(params)?;
    let mut config = rustls::ClientConfig::builder_with_provider(crypto.clone())
        .with_protocol_versions(&versions)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(MeshServerVerifier {
            roots: Roots::Fixed(system_roots()?),
            sans,
            check_name: true,
            checks: SignatureChecks(crypto),
        }))
        .with_no_client_auth();
    config.alpn_protocols = alpn;
    Ok(config)
}

/// The system trust store holds no certificate rustls can use ([`system_roots`]).
#[derive(Clone, Debug, thiserror::Error)]
#[error(
    "the system trust store has no usable certificate (set SSL_CERT_FILE to a CA bundle){detail}"
)]
pub struct NoSystemRoots {
    /// What went wrong reading it, when something did (`": why; why"`).
    detail: String,
}

/// The system's trust store, read once: the bundle `SSL_CERT_FILE` names (or the directory
/// `SSL_CERT_DIR` names), else the platform's (on Linux, the distribution's CA bundle, as
/// OpenSSL finds it). An error when it holds no usable certificate, so that nothing is
/// ever trusted by default without roots.
pub fn system_roots() -> Result<Arc<rustls::RootCertStore>, NoSystemRoots> {
    static ROOTS: OnceLock<Result<Arc<rustls::RootCertStore>, NoSystemRoots>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            let mut roots = rustls::RootCertStore::empty();
            let (added, _ignored) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                let why: Vec<String> = found.errors.iter().map(ToString::to_string).collect();
                return Err(NoSystemRoots {
                    detail: if why.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", why.join("; "))
                    },
                });
            }
            Ok(Arc::new(roots))
        })
        .clone()
}

/// Why a TLS configuration cannot be made from `tls_params` (and a trust store).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsConfigError {
    /// The minimum version is above the maximum.
    #[error("the minimum version ({min:?}) is above the maximum ({max:?})")]
    Versions {
        /// `tls_minimum_protocol_version`.
        min: TlsVersion,
        /// `tls_maximum_protocol_version`.
        max: TlsVersion,
    },
    /// Only TLS 1.2 is allowed, and none of its cipher suites asked for is implemented.
    #[error(
        "none of the TLS 1.2 cipher suites {0:?} is implemented here (ECDHE with AES-GCM or CHACHA20-POLY1305 are)"
    )]
    NoCipherSuite(Box<[Box<str>]>),
    /// None of the curves asked for is implemented.
    #[error(
        "none of the curves {0:?} is implemented here (X25519, P-256, P-384, X25519MLKEM768 are)"
    )]
    NoCurve(Box<[Box<str>]>),
    /// Only TLS 1.2 is allowed, and the curves are TLS 1.3's only.
    #[error("the curves {0:?} leave TLS 1.2 nothing to agree keys with")]
    NoTls12Curve(Box<[Box<str>]>),
    /// rustls refused the configuration.
    #[error(transparent)]
    Rustls(#[from] rustls::Error),
    /// The system trust store could not be read.
    #[error(transparent)]
    SystemRoots(#[from] NoSystemRoots),
}

/// What a context's `tls_params` allow, as rustls takes it: the crypto provider (its TLS 1.2
/// cipher suites and key-exchange groups filtered to the allowed ones) and the versions. An
/// error names what leaves nothing to speak. Defaults share one provider.
///
/// ```
/// use mesh_core::identity::tls::crypto_for;
/// use mesh_core::model::{TlsParams, TlsVersion};
/// let only13 = TlsParams { min_version: Some(TlsVersion::V1_3), ..TlsParams::default() };
/// let (_, versions) = crypto_for(&only13).unwrap();
/// assert_eq!(versions.len(), 1);
/// let no_suite = TlsParams {
///     max_version: Some(TlsVersion::V1_2),
///     cipher_suites: vec!["AES128-SHA".into()].into(),
///     ..TlsParams::default()
/// };
/// assert!(crypto_for(&no_suite).is_err());
/// ```
pub fn crypto_for(
    params: &TlsParams,
) -> Result<
    (
        Arc<CryptoProvider>,
        Vec<&'static rustls::SupportedProtocolVersion>,
    ),
    TlsConfigError,
> {
    let min = params.min_version.unwrap_or(TlsVersion::V1_2);
    let max = params.max_version.unwrap_or(TlsVersion::V1_3);
    if min > max {
        return Err(TlsConfigError::Versions { min, max });
    }
    let mut tls12 = min <= TlsVersion::V1_2;
    let tls13 = max >= TlsVersion::V1_3;
    if params.cipher_suites.is_empty() && params.ecdh_curves.is_empty() {
        let mut versions = Vec::new();
        if tls13 {
            versions.push(&rustls::version::TLS13);
        }
        if tls12 {
            versions.push(&rustls::version::TLS12);
        }
        return Ok((crypto_provider(), versions));
    }
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    if !params.cipher_suites.is_empty() {
        // BoringSSL names, `[A|B]` equal-preference groups flattened.
        let allowed: Vec<&str> = params
            .cipher_suites
            .iter()
            .flat_map(|s| s.trim_matches(|c| c == '[' || c == ']').split('|'))
            .filter_map(rustls_suite_name)
            .collect();
        provider.cipher_suites.retain(|s| match s {
            rustls::SupportedCipherSuite::Tls13(_) => true,
            rustls::SupportedCipherSuite::Tls12(_) => {
                allowed.contains(&format!("{:?}", s.suite()).as_str())
            }
        });
        let any12 = provider
            .cipher_suites
            .iter()
            .any(|s| matches!(s, rustls::SupportedCipherSuite::Tls12(_)));
        if tls12 && !any12 {
            if !tls13 {
                return Err(TlsConfigError::NoCipherSuite(names(&params.cipher_suites)));
            }
            tls12 = false;
        }
    }
    if !params.ecdh_curves.is_empty() {
        provider.kx_groups.retain(|g| {
            let name = match g.name() {
                rustls::NamedGroup::X25519 => "X25519",
                rustls::NamedGroup::secp256r1 => "P-256",
                rustls::NamedGroup::secp384r1 => "P-384",
                rustls::NamedGroup::X25519MLKEM768 => "X25519MLKEM768",
                _ => return false,
            };
            params.ecdh_curves.iter().any(|c| &**c == name)
        });
        if provider.kx_groups.is_empty() {
            return Err(TlsConfigError::NoCurve(names(&params.ecdh_curves)));
        }
        // A post-quantum group alone is TLS 1.3's only: TLS 1.2 would fail every handshake.
        let any12 = provider
            .kx_groups
            .iter()
            .any(|g| g.usable_for_version(rustls::ProtocolVersion::TLSv1_2));
        if tls12 && !any12 {
            if !tls13 {
                return Err(TlsConfigError::NoTls12Curve(names(&params.ecdh_curves)));
            }
            tls12 = false;
        }
    }
    let mut versions = Vec::new();
    if tls13 {
        versions.push(&rustls::version::TLS13);
    }
    if tls12 {
        versions.push(&rustls::version::TLS12);
    }
    Ok((Arc::new(provider), versions))
}

/// rustls's name for a TLS 1.2 cipher suite Envoy names the BoringSSL way; `None` for suites
/// rustls does not implement (RSA key exchange, CBC), which are then not offered.
fn rustls_suite_name(boringssl: &str) -> Option<&'static str> {
    Some(match boringssl {
        "ECDHE-ECDSA-AES128-GCM-SHA256" => "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384" => "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305" => "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256" => "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
        "ECDHE-RSA-AES256-GCM-SHA384" => "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
        "ECDHE-RSA-CHACHA20-POLY1305" => "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
        _ => return None,
    })
}

/// How a server treats client certificates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// A certificate chaining to the roots is required (Istio STRICT).
    Required,
    /// A certificate is verified when presented (PERMISSIVE's TLS half).
    Optional,
}

/// A server configuration presenting the provider's certificate and verifying clients against
/// its roots.
pub fn server_config(
    provider: &CertificateProvider,
    client_auth: ClientAuth,
    alpn: Vec<Vec<u8>>,
) -> rustls::ServerConfig {
    let clients = ClientValidation {
        roots: provider.clone(),
        sans: Arc::new([]),
    };
    server_config_with(provider, &clients, client_auth, alpn, &TlsParams::default())
        .expect("the default parameters are spoken")
}

/// How a server verifies client certificates (a chain's `validation_context`).
#[derive(Clone, Debug)]
pub struct ClientValidation {
    /// The provider whose roots a client certificate must chain to.
    pub roots: CertificateProvider,
    /// A client certificate must carry a SAN matching one of these (empty: any).
    pub sans: Arc<[SanMatcher]>,
}

/// [`server_config`] verifying clients as `clients` says and speaking only what `params`
/// allow ([`crypto_for`]).
pub fn server_config_with(
    provider: &CertificateProvider,
    clients: &ClientValidation,
    client_auth: ClientAuth,
    alpn: Vec<Vec<u8>>,
    params: &TlsParams,
) -> Result<rustls::ServerConfig, TlsConfigError> {
    let (crypto, versions) = crypto_for(params)?;
    let mut config = rustls::ServerConfig::builder_with_provider(crypto.clone())
        .with_protocol_versions(&versions)?
        .with_client_cert_verifier(Arc::new(MeshClientVerifier {
            provider: clients.roots.clone(),
            sans: clients.sans.clone(),
            mandatory: client_auth == ClientAuth::Required,
            checks: SignatureChecks(crypto),
        }))
        .with_cert_resolver(Arc::new(Resolver(provider.clone())));
    config.alpn_protocols = alpn;
    Ok(config)
}

/// Presents the provider's current certificate.
#[derive(Debug)]
struct Resolver(CertificateProvider);

impl rustls::client::ResolvesClientCert for Resolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        self.0.current().certified_key()
    }

    fn has_certs(&self) -> bool {
        self.0.current().has_certificate()
    }
}

impl rustls::server::ResolvesServerCert for Resolver {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        self.0.current().certified_key()
    }
}

#[derive(Debug)]
struct MeshServerVerifier {
    roots: Roots,
    sans: Arc<[SanMatcher]>,
    /// With no `sans`, whether the certificate must be valid for the server name asked for.
    check_name: bool,
    checks: SignatureChecks,
}

/// Where a verifier's roots come from.
#[derive(Debug)]
enum Roots {
    /// The provider's current ones (they rotate with it).
    Provider(CertificateProvider),
    /// A fixed set (the system's).
    Fixed(Arc<rustls::RootCertStore>),
}

impl ServerCertVerifier for MeshServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
        let roots = match &self.roots {
            // The provider's roots, or the peer's trust domain's with a SPIFFE bundle map.
            Roots::Provider(p) => p
                .current()
                .roots_for(end_entity)
                .map_err(|e| Error::General(e.to_string()))?,
            Roots::Fixed(roots) => roots.clone(),
        };
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &roots,
            intermediates,
            now,
            self.checks.0.signature_verification_algorithms.all,
        )?;
        if self.sans.is_empty() && self.check_name {
            rustls::client::verify_server_name(&cert, server_name)?;
        }
        if !self.sans.is_empty() && !san_matches(end_entity, &self.sans) {
            return Err(Error::General(format!(
                "peer certificate SANs {:?} match none of {:?}",
                super::certificate_uri_sans(end_entity),
                self.sans.iter().map(|m| &m.matcher).collect::<Vec<_>>()
            )));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.checks.tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.checks.tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.checks.schemes()
    }
}

/// The handshake signature checks both verifiers make, with the configuration's provider.
#[derive(Debug)]
struct SignatureChecks(Arc<CryptoProvider>);

impl SignatureChecks {
    fn tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Whether a SAN of the certificate matches one of `matchers`.
fn san_matches(der: &CertificateDer<'_>, matchers: &[SanMatcher]) -> bool {
    use x509_parser::extensions::GeneralName;
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return false;
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return false;
    };
    san.value.general_names.iter().any(|name| {
        let (kind, value): (SanKind, String) = match name {
            GeneralName::URI(u) => (SanKind::Uri, (*u).to_owned()),
            GeneralName::DNSName(d) => (SanKind::Dns, (*d).to_owned()),
            GeneralName::RFC822Name(e) => (SanKind::Email, (*e).to_owned()),
            GeneralName::IPAddress(ip) => match ip.len() {
                4 => (
                    SanKind::Ip,
                    std::net::Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3]).to_string(),
                ),
                16 => {
                    let mut b = [0u8; 16];
                    b.copy_from_slice(ip);
                    (SanKind::Ip, std::net::Ipv6Addr::from(b).to_string())
                }
                _ => return false,
            },
            _ => return false,
        };
        matchers
            .iter()
            .any(|m| (m.kind == SanKind::Any || m.kind == kind) && m.matcher.matches(&value))
    })
}

#[derive(Debug)]
struct MeshClientVerifier {
    /// Whose roots client certificates must chain to.
    provider: CertificateProvider,
    /// A client certificate must carry a SAN matching one of these (empty: any).
    sans: Arc<[SanMatcher]>,
    mandatory: bool,
    checks: SignatureChecks,
}

impl ClientCertVerifier for MeshClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        // webpki's client verifier checks the chain and the clientAuth usage; it is cheap to
        // build, and building it per handshake follows root rotation with no cache to expire.
        let roots = self
            .provider
            .current()
            .roots_for(end_entity)
            .map_err(|e| Error::General(e.to_string()))?;
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            roots,
            self.checks.0.clone(),
        )
        .build()
        .map_err(|e| Error::General(format!("no usable trust roots: {e}")))?;
        let verified = verifier.verify_client_cert(end_entity, intermediates, now)?;
        if !self.sans.is_empty() && !san_matches(end_entity, &self.sans) {
            return Err(Error::General(format!(
                "client certificate SANs {:?} match none of the chain's",
                super::certificate_uri_sans(end_entity)
            )));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.checks.tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.checks.tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.checks.schemes()
    }
}

/// The verified SPIFFE ID of a peer's certificate chain (its leaf's URI SAN).
pub fn peer_spiffe_id(chain: &[CertificateDer<'_>]) -> Option<super::SpiffeId> {
    super::certificate_uri_sans(chain.first()?)
        .into_iter()
        .find_map(|u| u.parse().ok())
}

/// The names a `tls_params` list gives, for an error.
fn names(list: &[impl AsRef<str>]) -> Box<[Box<str>]> {
    list.iter().map(|n| n.as_ref().into()).collect()
}
