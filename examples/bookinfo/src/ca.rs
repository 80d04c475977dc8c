//! The certificate authority Bookinfo's launcher makes at start: a root and one SPIFFE
//! certificate per workload, written as istio-agent writes them (`cert-chain.pem`, `key.pem`,
//! `root-cert.pem`), which the workloads' `file_watcher` providers read.

use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

pub(crate) struct Ca {
    issuer: Issuer<'static, KeyPair>,
    root_pem: String,
}

impl Ca {
    pub(crate) fn new() -> anyhow::Result<Self> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, "Bookinfo root CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate()?;
        let root_pem = params.self_signed(&key)?.pem();
        Ok(Self {
            issuer: Issuer::new(params, key),
            root_pem,
        })
    }

    /// A certificate for `spiffe_id`, valid for a day, with its key and the root, in `dir`.
    pub(crate) fn write_workload_files(&self, spiffe_id: &str, dir: &Path) -> anyhow::Result<()> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .subject_alt_names
            .push(SanType::URI(spiffe_id.try_into()?));
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let now = std::time::SystemTime::now();
        params.not_before = (now - std::time::Duration::from_secs(60)).into();
        params.not_after = (now + std::time::Duration::from_secs(86_400)).into();
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("cert-chain.pem"), cert.pem())?;
        std::fs::write(dir.join("key.pem"), key.serialize_pem())?;
        std::fs::write(dir.join("root-cert.pem"), &self.root_pem)?;
        Ok(())
    }
}
