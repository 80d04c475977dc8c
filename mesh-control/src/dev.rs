//! What istiod does besides xDS, for a development mesh on one machine: a certificate
//! authority that issues each workload its SPIFFE certificate, and the bootstrap
//! istio-agent would write next to it. Bookinfo's launcher and the examples use these; a
//! production mesh has istiod and istio-agent instead.
//!
//! ```no_run
//! # fn run() -> anyhow::Result<()> {
//! let ca = mesh_control::dev::DevCa::new("dev root")?;
//! let dir = std::path::Path::new("/tmp/mesh/ratings");
//! ca.write_workload_files("spiffe://cluster.local/ns/default/sa/ratings", dir)?;
//! let bootstrap = mesh_control::dev::WorkloadBootstrap::new("ratings", "default", dir)
//!     .label("version", "v1")
//!     .to_json("127.0.0.1:15010".parse()?);
//! let bootstrap = mesh_core::Bootstrap::from_json(&bootstrap.to_string())?;
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// The inbound listener names mesh-control (like istiod) serves proxyless servers.
pub const SERVER_LISTENER_TEMPLATE: &str = "xds.istio.io/grpc/lds/inbound/%s";

/// A root CA made at start, issuing workload certificates as istiod's CA does: one SPIFFE
/// URI SAN, client and server use, written as istio-agent writes them (`cert-chain.pem`,
/// `key.pem`, `root-cert.pem`) for the bootstrap's `file_watcher` certificate provider.
pub struct DevCa {
    issuer: Issuer<'static, KeyPair>,
    root_pem: String,
}

impl std::fmt::Debug for DevCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevCa").finish_non_exhaustive()
    }
}

impl DevCa {
    /// A new root, its common name `name`.
    pub fn new(name: &str) -> Result<Self, rcgen::Error> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate()?;
        let root_pem = params.self_signed(&key)?.pem();
        Ok(Self {
            issuer: Issuer::new(params, key),
            root_pem,
        })
    }

    /// The root certificate (PEM).
    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    /// A certificate for `spiffe_id`, valid for a day, its key and the root, written in
    /// `dir` (created if needed).
    pub fn write_workload_files(&self, spiffe_id: &str, dir: &Path) -> anyhow::Result<()> {
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

/// The bootstrap istio-agent writes for a proxyless workload (gRPC's JSON format): Istio's
/// node id and metadata (namespace, labels: they select policy), the inbound listener
/// template, and a `file_watcher` certificate provider named `default` over the files
/// [`DevCa::write_workload_files`] writes.
#[derive(Clone, Debug)]
pub struct WorkloadBootstrap {
    name: String,
    namespace: String,
    labels: BTreeMap<String, String>,
    locality: Option<serde_json::Value>,
    certs: PathBuf,
}

impl WorkloadBootstrap {
    /// Workload `name` (also its `app` label) in `namespace`, its certificate in `certs`.
    pub fn new(name: &str, namespace: &str, certs: &Path) -> Self {
        Self {
            name: name.into(),
            namespace: namespace.into(),
            labels: BTreeMap::from([("app".to_owned(), name.to_owned())]),
            locality: None,
            certs: certs.into(),
        }
    }

    /// Adds (or replaces) a workload label.
    #[must_use]
    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    /// Where the workload runs, `region/zone[/sub-zone]` (the node's locality, which
    /// locality failover ranks endpoints by).
    #[must_use]
    pub fn locality(mut self, locality: &str) -> Self {
        let mut l = locality.splitn(3, '/');
        self.locality = Some(serde_json::json!({
            "region": l.next().unwrap_or(""),
            "zone": l.next().unwrap_or(""),
            "sub_zone": l.next().unwrap_or(""),
        }));
        self
    }

    /// The bootstrap, for the control plane at `xds`.
    pub fn to_json(&self, xds: SocketAddr) -> serde_json::Value {
        let file = |n: &str| self.certs.join(n).to_string_lossy().into_owned();
        let ns = &self.namespace;
        let mut json = serde_json::json!({
            "xds_servers": [{"server_uri": xds.to_string(), "channel_creds": [{"type": "insecure"}], "server_features": ["xds_v3"]}],
            "node": {
                "id": format!("sidecar~127.0.0.1~{}.{ns}~{ns}.svc.cluster.local", self.name),
                "metadata": {"NAMESPACE": ns, "WORKLOAD_NAME": self.name, "LABELS": self.labels},
            },
            "server_listener_resource_name_template": SERVER_LISTENER_TEMPLATE,
            "certificate_providers": {"default": {"plugin_name": "file_watcher", "config": {
                "certificate_file": file("cert-chain.pem"),
                "private_key_file": file("key.pem"),
                "ca_certificate_file": file("root-cert.pem"),
                "refresh_interval": "900s",
            }}},
        });
        if let Some(l) = &self.locality {
            json["node"]["locality"] = l.clone();
        }
        json
    }
}
