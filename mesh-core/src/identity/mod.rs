//! Workload identity: SPIFFE IDs, certificates and the trust bundle, from certificate
//! providers, as rustls configurations that verify peers by SPIFFE ID.
//!
//! - [`SpiffeId`], as in `spiffe://<trust-domain>/ns/<ns>/sa/<sa>`.
//! - [`Identity`], one certificate chain, its key and the trust roots, parsed and checked once.
//! - [`CertificateProvider`], where identities come from. `file_watcher` (the files istio-agent
//!   and cert-manager write, re-read when they change) or a static identity for tests and
//!   embedding. A bad or expired update is reported loudly and the last good identity keeps
//!   serving.
//! - [`tls`], rustls client and server configurations over a provider: new handshakes use the
//!   newest certificate, with no restart and no dropped connection.

mod peer;
mod provider;
pub mod tls;

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::SystemTime;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

pub use peer::PeerCertificate;
pub use provider::CertificateProvider;

/// A SPIFFE ID.
///
/// ```
/// use mesh_core::identity::SpiffeId;
/// let id: SpiffeId = "spiffe://cluster.local/ns/default/sa/reviews".parse().unwrap();
/// assert_eq!(id.trust_domain(), "cluster.local");
/// assert_eq!((id.namespace(), id.service_account()), (Some("default"), Some("reviews")));
/// assert!("https://x/y".parse::<SpiffeId>().is_err());
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SpiffeId {
    /// The whole ID, kept so authorization can match it per request without formatting it.
    uri: Box<str>,
    /// Where the path starts in `uri`.
    path_at: usize,
}

/// `spiffe://`.
const SCHEME_LEN: usize = "spiffe://".len();

impl SpiffeId {
    /// The trust domain.
    pub fn trust_domain(&self) -> &str {
        &self.uri[SCHEME_LEN..self.path_at]
    }

    /// The path, starting with `/` (may be empty).
    pub fn path(&self) -> &str {
        &self.uri[self.path_at..]
    }

    /// The whole ID, `spiffe://trust-domain/path`.
    pub fn as_str(&self) -> &str {
        &self.uri
    }

    /// The Kubernetes namespace of an Istio-style ID (`/ns/<ns>/sa/<sa>`).
    pub fn namespace(&self) -> Option<&str> {
        self.istio_parts().map(|(ns, _)| ns)
    }

    /// The service account of an Istio-style ID.
    pub fn service_account(&self) -> Option<&str> {
        self.istio_parts().map(|(_, sa)| sa)
    }

    fn istio_parts(&self) -> Option<(&str, &str)> {
        let mut it = self.path().strip_prefix('/')?.split('/');
        match (it.next(), it.next(), it.next(), it.next(), it.next()) {
            (Some("ns"), Some(ns), Some("sa"), Some(sa), None) => Some((ns, sa)),
            _ => None,
        }
    }
}

impl FromStr for SpiffeId {
    type Err = IdentityError;
    fn from_str(s: &str) -> Result<Self, IdentityError> {
        let bad = |why: &str| IdentityError::SpiffeId(format!("{s:?}: {why}"));
        let rest = s
            .strip_prefix("spiffe://")
            .ok_or_else(|| bad("must start with spiffe://"))?;
        let (td, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        if td.is_empty() {
            return Err(bad("empty trust domain"));
        }
        if !td
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b))
        {
            return Err(bad(
                "trust domain may only hold lowercase letters, digits, - . _",
            ));
        }
        if path.ends_with('/')
            || path.contains("//")
            || path.split('/').any(|p| p == "." || p == "..")
        {
            return Err(bad("invalid path"));
        }
        Ok(Self {
            uri: s.into(),
            path_at: SCHEME_LEN + td.len(),
        })
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri)
    }
}

/// Why an identity could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// PEM or X.509 content is unusable.
    #[error("{what}: {why}")]
    Invalid {
        /// Which input.
        what: String,
        /// Why.
        why: String,
    },
    /// The certificate has expired or is not valid yet.
    #[error("{what}: certificate is not valid now (valid from {not_before} to {not_after})")]
    Expired {
        /// Which input.
        what: String,
        /// Start of validity (RFC 2822 text).
        not_before: String,
        /// End of validity.
        not_after: String,
    },
    /// A malformed SPIFFE ID.
    #[error("invalid SPIFFE ID {0}")]
    SpiffeId(String),
}

/// Why a peer's certificate has no roots to chain to ([`Identity::roots_for`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PeerRootsError {
    /// With a SPIFFE bundle map, a peer must carry exactly one SPIFFE ID.
    #[error("a peer verified with a SPIFFE bundle map must carry exactly one SPIFFE ID, not {0}")]
    SpiffeIds(usize),
    /// Its SPIFFE ID is malformed.
    #[error(transparent)]
    SpiffeId(#[from] IdentityError),
    /// Its trust domain has no bundle.
    #[error("trust domain {0:?} is not in the SPIFFE bundle map")]
    UnknownTrustDomain(String),
}

/// A workload's certificate chain and key, with the roots it trusts. Immutable; providers
/// publish new ones.
#[derive(Debug)]
pub struct Identity {
    certified: Option<Arc<rustls::sign::CertifiedKey>>,
    roots: Arc<rustls::RootCertStore>,
    /// gRFC A87: roots per SPIFFE trust domain; when set, a peer is verified against its own
    /// trust domain's bundle, never `roots`.
    trust_bundles: Option<Arc<std::collections::HashMap<String, Arc<rustls::RootCertStore>>>>,
    spiffe_id: Option<SpiffeId>,
    not_after: Option<SystemTime>,
}

impl Identity {
    /// Parses PEM: a certificate chain and its key (both optional, but together), and a CA
    /// bundle. `origin` names the inputs in errors (file names, typically). An expired leaf is
    /// an error.
    pub fn from_pem(
        cert_chain: Option<&[u8]>,
        key: Option<&[u8]>,
        roots: Option<&[u8]>,
        origin: &str,
    ) -> Result<Self, IdentityError> {
        let invalid = |what: &str, why: String| IdentityError::Invalid {
            what: format!("{origin}: {what}"),
            why,
        };
        let chain: Vec<CertificateDer<'static>> = match cert_chain {
            Some(pem) => CertificateDer::pem_slice_iter(pem)
                .collect::<Result<_, _>>()
                .map_err(|e| invalid("certificate chain", e.to_string()))?,
            None => Vec::new(),
        };
        if cert_chain.is_some() && chain.is_empty() {
            return Err(invalid("certificate chain", "no CERTIFICATE block".into()));
        }
        let key = match key {
            Some(pem) => Some(
                PrivateKeyDer::from_pem_slice(pem)
                    .map_err(|e| invalid("private key", e.to_string()))?,
            ),
            None => None,
        };
        let mut store = rustls::RootCertStore::empty();
        if let Some(pem) = roots {
            for c in CertificateDer::pem_slice_iter(pem) {
                let c = c.map_err(|e| invalid("CA bundle", e.to_string()))?;
                store
                    .add(c)
                    .map_err(|e| invalid("CA bundle", e.to_string()))?;
            }
            if store.is_empty() {
                return Err(invalid("CA bundle", "no CERTIFICATE block".into()));
            }
        }
        let (spiffe_id, not_after) = match chain.first() {
            Some(leaf) => {
                let info = leaf_info(leaf).map_err(|why| invalid("certificate", why))?;
                let now = SystemTime::now();
                if now < info.not_before || now > info.not_after {
                    return Err(IdentityError::Expired {
                        what: format!("{origin}: certificate"),
                        not_before: httpdate(info.not_before),
                        not_after: httpdate(info.not_after),
                    });
                }
                (info.spiffe_id, Some(info.not_after))
            }
            None => (None, None),
        };
        let certified = match (chain.is_empty(), key) {
            (false, Some(key)) => Some(Arc::new(
                // Also checks that the key belongs to the certificate (a half-written rotation
                // would pair a new certificate with an old key).
                rustls::sign::CertifiedKey::from_der(chain, key, &tls::crypto_provider())
                    .map_err(|e| invalid("certificate and key", e.to_string()))?,
            )),
            (true, None) => None,
            _ => {
                return Err(invalid(
                    "certificate and key",
                    "a certificate chain needs its private key, and a key its chain".into(),
                ));
            }
        };
        Ok(Self {
            certified,
            roots: Arc::new(store),
            trust_bundles: None,
            spiffe_id,
            not_after,
        })
    }

    /// Verifies peers with a SPIFFE trust bundle map (gRFC A87) instead of the CA bundle: the
    /// JSON of SPIFFE bundles by trust domain (`{"trust_domains": {"TD": {"keys": [{"use":
    /// "x509-svid", "x5c": ["<base64 DER>"]}]}}}`). A peer must then carry one SPIFFE ID,
    /// and chain to its own trust domain's bundle; a trust domain not in the map is refused.
    pub fn with_spiffe_bundle_map(
        mut self,
        json: &[u8],
        origin: &str,
    ) -> Result<Self, IdentityError> {
        use base64::Engine;
        let invalid = |why: String| IdentityError::Invalid {
            what: format!("{origin}: SPIFFE trust bundle map"),
            why,
        };
        let doc: serde_json::Value =
            serde_json::from_slice(json).map_err(|e| invalid(e.to_string()))?;
        let domains = doc["trust_domains"]
            .as_object()
            .ok_or_else(|| invalid("no trust_domains object".into()))?;
        let mut map = std::collections::HashMap::new();
        for (domain, bundle) in domains {
            let mut store = rustls::RootCertStore::empty();
            for key in bundle["keys"].as_array().into_iter().flatten() {
                // Only X.509 SVID keys verify certificates (JWT ones are for tokens).
                if key["use"] != "x509-svid" {
                    continue;
                }
                let Some(der) = key["x5c"].get(0).and_then(serde_json::Value::as_str) else {
                    return Err(invalid(format!("{domain}: an x509-svid key without x5c")));
                };
                let der = base64::engine::general_purpose::STANDARD
                    .decode(der)
                    .map_err(|e| invalid(format!("{domain}: x5c: {e}")))?;
                store
                    .add(CertificateDer::from(der))
                    .map_err(|e| invalid(format!("{domain}: {e}")))?;
            }
            if !store.is_empty() {
                map.insert(domain.clone(), Arc::new(store));
            }
        }
        if map.is_empty() {
            return Err(invalid(
                "no trust domain has an x509-svid certificate".into(),
            ));
        }
        self.trust_bundles = Some(Arc::new(map));
        Ok(self)
    }

    /// The roots a peer presenting `leaf` must chain to: its trust domain's bundle when a
    /// SPIFFE bundle map is set (gRFC A87), else the CA bundle.
    pub fn roots_for(
        &self,
        leaf: &CertificateDer<'_>,
    ) -> Result<Arc<rustls::RootCertStore>, PeerRootsError> {
        let Some(bundles) = &self.trust_bundles else {
            return Ok(self.roots.clone());
        };
        let sans = certificate_uri_sans(leaf);
        let spiffe: Vec<&String> = sans.iter().filter(|s| s.starts_with("spiffe://")).collect();
        let [id] = spiffe.as_slice() else {
            return Err(PeerRootsError::SpiffeIds(spiffe.len()));
        };
        let domain = id.parse::<SpiffeId>()?.trust_domain().to_owned();
        bundles
            .get(&domain)
            .cloned()
            .ok_or(PeerRootsError::UnknownTrustDomain(domain))
    }

    /// The workload's SPIFFE ID (the leaf's URI SAN), if it has a certificate with one.
    pub fn spiffe_id(&self) -> Option<&SpiffeId> {
        self.spiffe_id.as_ref()
    }

    /// When the leaf certificate expires.
    pub fn not_after(&self) -> Option<SystemTime> {
        self.not_after
    }

    /// Whether it holds a certificate and key to present.
    pub fn has_certificate(&self) -> bool {
        self.certified.is_some()
    }

    /// The trust roots.
    pub fn roots(&self) -> &Arc<rustls::RootCertStore> {
        &self.roots
    }

    /// The certificate and signing key rustls presents.
    pub(crate) fn certified_key(&self) -> Option<Arc<rustls::sign::CertifiedKey>> {
        self.certified.clone()
    }
}

struct LeafInfo {
    spiffe_id: Option<SpiffeId>,
    not_before: SystemTime,
    not_after: SystemTime,
}

fn leaf_info(der: &CertificateDer<'_>) -> Result<LeafInfo, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| e.to_string())?;
    let validity = cert.validity();
    let to_time = |t: &x509_parser::time::ASN1Time| {
        SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(t.timestamp().max(0) as u64)
    };
    Ok(LeafInfo {
        spiffe_id: uri_sans(&cert)
            .into_iter()
            .find_map(|u| u.parse::<SpiffeId>().ok()),
        not_before: to_time(&validity.not_before),
        not_after: to_time(&validity.not_after),
    })
}

/// The URI SANs of a certificate (rustls/webpki does not expose them: rustls#1194).
pub(crate) fn uri_sans(cert: &x509_parser::certificate::X509Certificate<'_>) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    cert.subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::URI(u) => Some((*u).to_owned()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The URI SANs of a DER certificate.
pub fn certificate_uri_sans(der: &[u8]) -> Vec<String> {
    x509_parser::parse_x509_certificate(der)
        .map(|(_, c)| uri_sans(&c))
        .unwrap_or_default()
}

fn httpdate(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!("{secs} s after the epoch")
}

#[cfg(test)]
mod tests;
