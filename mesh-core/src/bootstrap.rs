//! The gRPC xDS bootstrap (gRFC A27, A29, A47, A65, A71): where the control plane is, who we
//! are, and where our certificates come from.
//!
//! The same JSON file istio-agent writes for Istio's proxyless gRPC works unchanged. It is read
//! from the file named by `GRPC_XDS_BOOTSTRAP`, or from `GRPC_XDS_BOOTSTRAP_CONFIG` (inline), or
//! given to [`Bootstrap::from_json`]. Unknown fields are ignored (the format grows); a malformed
//! file fails at start-up with the JSON path of the bad field:
//!
//! ```
//! let err = mesh_core::Bootstrap::from_json(r#"{"xds_servers": [{"server_uri": 42}]}"#).unwrap_err();
//! assert!(err.to_string().contains("xds_servers[0].server_uri"), "{err}");
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// Environment variable naming the bootstrap file.
pub const BOOTSTRAP_PATH_ENV: &str = "GRPC_XDS_BOOTSTRAP";
/// Environment variable holding the bootstrap JSON inline.
pub const BOOTSTRAP_CONFIG_ENV: &str = "GRPC_XDS_BOOTSTRAP_CONFIG";

/// Why a bootstrap could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    /// Neither environment variable is set.
    #[error(
        "no xDS bootstrap: set {BOOTSTRAP_PATH_ENV} (a file) or {BOOTSTRAP_CONFIG_ENV} (inline JSON)"
    )]
    NotConfigured,
    /// The file could not be read.
    #[error("cannot read xDS bootstrap {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The JSON is malformed or a field has the wrong type.
    #[error("invalid xDS bootstrap{origin}: at {path}: {message}")]
    Json {
        /// Where it came from (` (file …)`), possibly empty.
        origin: String,
        /// JSON path of the bad field, e.g. `xds_servers[0].channel_creds`.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// The JSON is well-formed but its content is unusable.
    #[error("invalid xDS bootstrap{origin}: {path}: {message}")]
    Invalid {
        /// Where it came from.
        origin: String,
        /// JSON path of the bad field.
        path: String,
        /// What is wrong.
        message: String,
    },
}

/// A validated bootstrap.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Bootstrap {
    /// Control-plane servers in priority order (gRFC A71: later entries are fallbacks).
    pub xds_servers: Vec<XdsServer>,
    /// Who we are.
    pub node: Node,
    /// Certificate provider instances by name (gRFC A29).
    pub certificate_providers: BTreeMap<String, CertificateProviderConfig>,
    /// Template for the inbound listener name; `%s` is replaced by `ip:port`.
    pub server_listener_resource_name_template: Option<String>,
    /// Template for client listener names; `%s` is replaced by the target (default `%s`).
    pub client_default_listener_resource_name_template: String,
    /// Federation authorities (gRFC A47), parsed and kept; names in `xdstp://` form use them.
    pub authorities: BTreeMap<String, Authority>,
}

/// One `xds_servers` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XdsServer {
    /// Target: `host:port`, `dns:///host:port`, `http(s)://…` or `unix:///path`.
    pub server_uri: String,
    /// The first channel credential type we support.
    pub channel_creds: ChannelCreds,
    /// Server features (`xds_v3`, `ignore_resource_deletion`, `fail_on_data_errors`,
    /// `resource_timer_indicates_transient_failure`, `trusted_xds_server`).
    pub server_features: Vec<String>,
}

impl XdsServer {
    /// Whether the server lists `feature`.
    pub fn has_feature(&self, feature: &str) -> bool {
        self.server_features.iter().any(|f| f == feature)
    }
}

/// Channel credentials for the xDS connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChannelCreds {
    /// Plaintext.
    Insecure,
    /// TLS (gRFC A65 config): trust anchors and, for mTLS, our certificate.
    Tls {
        /// CA bundle PEM file; `None` uses the system roots.
        ca_certificate_file: Option<PathBuf>,
        /// Client certificate chain PEM file.
        certificate_file: Option<PathBuf>,
        /// Client key PEM file.
        private_key_file: Option<PathBuf>,
    },
}

/// `node`: sent to the control plane on every stream.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Node {
    /// Node id (Istio: `sidecar~IP~pod.namespace~namespace.svc.cluster.local`).
    pub id: String,
    /// Cluster.
    pub cluster: String,
    /// Locality.
    pub locality: Locality,
    /// Free-form metadata (Istio: NAMESPACE, LABELS, INSTANCE_IPS, GENERATOR…).
    pub metadata: serde_json::Map<String, serde_json::Value>,
}

/// Node locality.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct Locality {
    /// Region.
    pub region: String,
    /// Zone.
    pub zone: String,
    /// Sub-zone.
    pub sub_zone: String,
}

/// One certificate provider instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CertificateProviderConfig {
    /// `file_watcher`: PEM files re-read on change and every `refresh_interval`.
    FileWatcher {
        /// Certificate chain.
        certificate_file: Option<PathBuf>,
        /// Private key.
        private_key_file: Option<PathBuf>,
        /// CA bundle.
        ca_certificate_file: Option<PathBuf>,
        /// SPIFFE trust bundle map (gRFC A87): when set, each peer is verified against its
        /// own trust domain's bundle from it, not the CA bundle.
        spiffe_trust_bundle_map_file: Option<PathBuf>,
        /// Re-read period (default 10 minutes; at least [`MIN_REFRESH_INTERVAL`]).
        refresh_interval: Duration,
    },
    /// A plugin this library does not know; an error only if a resource names the instance.
    Unknown {
        /// Plugin name.
        plugin_name: String,
    },
}

/// A federation authority (gRFC A47).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Authority {
    /// Listener name template for targets in this authority.
    pub client_listener_resource_name_template: Option<String>,
    /// Servers for this authority; empty means the top-level servers.
    pub xds_servers: Vec<XdsServer>,
}

// ---- raw serde shapes: lenient types, checked in `validate` ----

#[derive(Deserialize)]
struct RawBootstrap {
    #[serde(default)]
    xds_servers: Vec<RawServer>,
    #[serde(default)]
    node: Option<RawNode>,
    #[serde(default)]
    certificate_providers: BTreeMap<String, RawProvider>,
    #[serde(default)]
    server_listener_resource_name_template: Option<String>,
    #[serde(default)]
    client_default_listener_resource_name_template: Option<String>,
    #[serde(default)]
    authorities: BTreeMap<String, RawAuthority>,
}

#[derive(Deserialize)]
struct RawServer {
    server_uri: String,
    #[serde(default)]
    channel_creds: Vec<RawCreds>,
    #[serde(default)]
    server_features: Vec<String>,
}

#[derive(Deserialize)]
struct RawCreds {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    config: Option<RawTlsConfig>,
}

#[derive(Deserialize, Default)]
struct RawTlsConfig {
    ca_certificate_file: Option<PathBuf>,
    certificate_file: Option<PathBuf>,
    private_key_file: Option<PathBuf>,
}

#[derive(Deserialize)]
struct RawNode {
    #[serde(default)]
    id: String,
    #[serde(default)]
    cluster: String,
    #[serde(default)]
    locality: Locality,
    #[serde(default)]
    metadata: serde_json::Map<String, serde_json::Value>,
}

#[derive(Deserialize)]
struct RawProvider {
    plugin_name: String,
    #[serde(default)]
    config: serde_json::Value,
}

#[derive(Deserialize)]
struct RawFileWatcher {
    certificate_file: Option<PathBuf>,
    private_key_file: Option<PathBuf>,
    ca_certificate_file: Option<PathBuf>,
    spiffe_trust_bundle_map_file: Option<PathBuf>,
    refresh_interval: Option<String>,
}

#[derive(Deserialize)]
struct RawAuthority {
    client_listener_resource_name_template: Option<String>,
    #[serde(default)]
    xds_servers: Vec<RawServer>,
}

impl Bootstrap {
    /// Reads `GRPC_XDS_BOOTSTRAP` (a path), else `GRPC_XDS_BOOTSTRAP_CONFIG` (inline JSON).
    pub fn from_env() -> Result<Self, BootstrapError> {
        Self::from_env_values(
            std::env::var_os(BOOTSTRAP_PATH_ENV),
            std::env::var(BOOTSTRAP_CONFIG_ENV).ok(),
        )
    }

    /// [`Bootstrap::from_env`] with the two variables' values given (the path wins, as in gRPC).
    fn from_env_values(
        path: Option<std::ffi::OsString>,
        inline: Option<String>,
    ) -> Result<Self, BootstrapError> {
        if let Some(path) = path.filter(|p| !p.is_empty()) {
            return Self::from_file(path);
        }
        match inline {
            Some(json) if !json.is_empty() => {
                Self::parse(&json, format!(" (from {BOOTSTRAP_CONFIG_ENV})"))
            }
            _ => Err(BootstrapError::NotConfigured),
        }
    }

    /// Reads a bootstrap file.
    pub fn from_file(path: impl Into<PathBuf>) -> Result<Self, BootstrapError> {
        let path = path.into();
        let json = std::fs::read_to_string(&path).map_err(|source| BootstrapError::Read {
            path: path.clone(),
            source,
        })?;
        Self::parse(&json, format!(" {}", path.display()))
    }

    /// Parses bootstrap JSON.
    pub fn from_json(json: &str) -> Result<Self, BootstrapError> {
        Self::parse(json, String::new())
    }

    fn parse(json: &str, origin: String) -> Result<Self, BootstrapError> {
        let de = &mut serde_json::Deserializer::from_str(json);
        let raw: RawBootstrap =
            serde_path_to_error::deserialize(de).map_err(|e| BootstrapError::Json {
                origin: origin.clone(),
                path: e.path().to_string(),
                message: e.inner().to_string(),
            })?;
        validate(raw).map_err(|(path, message)| BootstrapError::Invalid {
            origin,
            path,
            message,
        })
    }

    /// The listener name a client uses for `target` (`reviews:9080`).
    pub fn client_listener_name(&self, target: &str) -> String {
        self.client_default_listener_resource_name_template
            .replace("%s", target)
    }

    /// The inbound listener name for a server on `addr`, if the bootstrap has a template.
    pub fn server_listener_name(&self, addr: std::net::SocketAddr) -> Option<String> {
        self.server_listener_resource_name_template
            .as_ref()
            .map(|t| t.replace("%s", &addr.to_string()))
    }
}

type Invalid = (String, String);

fn validate(raw: RawBootstrap) -> Result<Bootstrap, Invalid> {
    let xds_servers = servers(raw.xds_servers, "xds_servers")?;
    let mut certificate_providers = BTreeMap::new();
    for (name, p) in raw.certificate_providers {
        let at = format!("certificate_providers.{name}");
        let cfg = match p.plugin_name.as_str() {
            "file_watcher" => {
                let fw: RawFileWatcher = serde_path_to_error::deserialize(p.config)
                    .map_err(|e| (format!("{at}.config.{}", e.path()), e.inner().to_string()))?;
                if fw.certificate_file.is_some() != fw.private_key_file.is_some() {
                    return Err((
                        format!("{at}.config"),
                        "certificate_file and private_key_file go together".into(),
                    ));
                }
                if fw.certificate_file.is_none()
                    && fw.ca_certificate_file.is_none()
                    && fw.spiffe_trust_bundle_map_file.is_none()
                {
                    return Err((format!("{at}.config"), "names no file: set certificate_file/private_key_file and/or ca_certificate_file".into()));
                }
                let refresh_interval = match fw.refresh_interval {
                    // A floor, so a zero or tiny value cannot make the watcher re-read the
                    // files in a loop.
                    Some(s) => parse_duration(&s)
                        .map_err(|m| (format!("{at}.config.refresh_interval"), m))?
                        .max(MIN_REFRESH_INTERVAL),
                    None => Duration::from_secs(600),
                };
                CertificateProviderConfig::FileWatcher {
                    certificate_file: fw.certificate_file,
                    private_key_file: fw.private_key_file,
                    ca_certificate_file: fw.ca_certificate_file,
                    spiffe_trust_bundle_map_file: fw.spiffe_trust_bundle_map_file,
                    refresh_interval,
                }
            }
            other => CertificateProviderConfig::Unknown {
                plugin_name: other.to_owned(),
            },
        };
        certificate_providers.insert(name, cfg);
    }
    let mut authorities = BTreeMap::new();
    for (name, a) in raw.authorities {
        let at = format!("authorities.{name}");
        if let Some(t) = &a.client_listener_resource_name_template
            && !t.starts_with(&format!("xdstp://{name}/"))
        {
            return Err((
                format!("{at}.client_listener_resource_name_template"),
                format!("must start with \"xdstp://{name}/\""),
            ));
        }
        authorities.insert(
            name,
            Authority {
                client_listener_resource_name_template: a.client_listener_resource_name_template,
                xds_servers: servers(a.xds_servers, &format!("{at}.xds_servers"))?,
            },
        );
    }
    let node = raw
        .node
        .map(|n| Node {
            id: n.id,
            cluster: n.cluster,
            locality: n.locality,
            metadata: n.metadata,
        })
        .unwrap_or_default();
    Ok(Bootstrap {
        xds_servers,
        node,
        certificate_providers,
        server_listener_resource_name_template: raw.server_listener_resource_name_template,
        client_default_listener_resource_name_template: raw
            .client_default_listener_resource_name_template
            .unwrap_or_else(|| "%s".into()),
        authorities,
    })
}

fn servers(raw: Vec<RawServer>, at: &str) -> Result<Vec<XdsServer>, Invalid> {
    raw.into_iter()
        .enumerate()
        .map(|(i, s)| {
            let at = format!("{at}[{i}]");
            if s.server_uri.trim().is_empty() {
                return Err((format!("{at}.server_uri"), "must not be empty".into()));
            }
            // gRFC A27: use the first credential type we support.
            let creds = s
                .channel_creds
                .into_iter()
                .find_map(|c| match c.kind.as_str() {
                    "insecure" => Some(ChannelCreds::Insecure),
                    "tls" => {
                        let cfg = c.config.unwrap_or_default();
                        Some(ChannelCreds::Tls {
                            ca_certificate_file: cfg.ca_certificate_file,
                            certificate_file: cfg.certificate_file,
                            private_key_file: cfg.private_key_file,
                        })
                    }
                    _ => None,
                })
                .ok_or_else(|| {
                    (
                        format!("{at}.channel_creds"),
                        "no supported type (insecure or tls)".to_owned(),
                    )
                })?;
            Ok(XdsServer {
                server_uri: s.server_uri,
                channel_creds: creds,
                server_features: s.server_features,
            })
        })
        .collect()
}

/// The shortest `refresh_interval` a certificate provider is given (shorter ones are raised).
pub const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(1);

/// Parses a proto3 JSON duration (`"1.5s"`).
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?} is not a duration like \"600s\" or \"0.5s\"");
    let secs = s.strip_suffix('s').ok_or_else(bad)?;
    let v: f64 = secs.parse().map_err(|_| bad())?;
    crate::model::duration_from_secs_f64(v).map_err(|why| format!("{s:?} {why}"))
}

#[cfg(test)]
mod tests;
