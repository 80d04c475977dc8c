//! A test certificate authority: real keys and certificates made with rcgen, for real rustls
//! handshakes in tests (the xDS channel now; workload mTLS with SPIFFE IDs later).

use std::path::PathBuf;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// A PEM certificate chain and its key.
#[derive(Clone, Debug)]
pub struct CertifiedKey {
    /// Certificate (leaf first) PEM.
    pub cert_pem: String,
    /// PKCS#8 private key PEM.
    pub key_pem: String,
}

impl CertifiedKey {
    /// A rustls server configuration presenting this certificate, asking no client
    /// certificate: for plain TLS servers in tests (a JWKS host, an external API).
    pub fn server_config(&self) -> rustls::ServerConfig {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let chain = CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .expect("certificate PEM");
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).expect("key PEM");
        rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("default versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("certificate and key")
    }
}

/// A root CA that issues leaf certificates.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    /// The root certificate PEM (the trust bundle).
    pub root_pem: String,
}

impl TestCa {
    /// A fresh CA named `name`.
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("self-signed CA");
        let root_pem = cert.pem();
        Self {
            issuer: Issuer::new(params, key),
            root_pem,
        }
    }

    /// A server certificate for `localhost` and 127.0.0.1 (and `dns_names`).
    pub fn server(&self, dns_names: &[&str]) -> CertifiedKey {
        let mut names: Vec<String> = vec!["localhost".into()];
        names.extend(dns_names.iter().map(|s| s.to_string()));
        let mut params = CertificateParams::new(names).expect("params");
        params
            .subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(params)
    }

    /// A client certificate with the URI SAN `uri` (a SPIFFE ID, typically).
    pub fn client(&self, uri: &str) -> CertifiedKey {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params
            .subject_alt_names
            .push(SanType::URI(uri.try_into().expect("URI SAN")));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(params)
    }

    /// A workload certificate as Istio issues them: the SPIFFE ID as URI SAN, usable for
    /// both ends of mTLS.
    pub fn workload(&self, spiffe_id: &str) -> CertifiedKey {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params
            .subject_alt_names
            .push(SanType::URI(spiffe_id.try_into().expect("URI SAN")));
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        self.issue(params)
    }

    /// A workload certificate that expired yesterday.
    pub fn expired_workload(&self, spiffe_id: &str) -> CertifiedKey {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params
            .subject_alt_names
            .push(SanType::URI(spiffe_id.try_into().expect("URI SAN")));
        let now = std::time::SystemTime::now();
        params.not_before = (now - std::time::Duration::from_secs(2 * 86_400)).into();
        params.not_after = (now - std::time::Duration::from_secs(86_400)).into();
        self.issue(params)
    }

    /// Writes `key`'s certificate, its private key and this CA's root into `dir` under
    /// istio-agent's file names (`cert-chain.pem`, `key.pem`, `root-cert.pem`).
    pub fn write_istio_files(&self, key: &CertifiedKey, dir: &std::path::Path) {
        std::fs::create_dir_all(dir).expect("cert dir");
        std::fs::write(dir.join("cert-chain.pem"), &key.cert_pem).expect("cert");
        std::fs::write(dir.join("key.pem"), &key.key_pem).expect("key");
        std::fs::write(dir.join("root-cert.pem"), &self.root_pem).expect("root");
    }

    fn issue(&self, params: CertificateParams) -> CertifiedKey {
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("signed leaf");
        CertifiedKey {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

/// Files in a temporary directory, removed on drop.
pub struct TempFiles {
    dir: tempfile::TempDir,
}

impl TempFiles {
    /// A new empty directory.
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    /// Writes `contents` to `name` and returns its path.
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents).expect("write temp file");
        path
    }

    /// A path in the directory (not created).
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Default for TempFiles {
    fn default() -> Self {
        Self::new()
    }
}
