//! Where a node's workload certificate and the mesh's root certificate come from, in the TLS
//! contexts mesh-control generates for it (DestinationRule `ISTIO_MUTUAL`, PeerAuthentication
//! `STRICT` / `PERMISSIVE`).
//!
//! - Proxyless clients (mesh, gRPC): the bootstrap's certificate providers, instance `default`
//!   with certificates `default` and `ROOTCA`, as istiod's grpcgen sends them (gRFC A29).
//! - Envoy nodes whose metadata names `MESH_CERT_DIR`: the files in it, under the names
//!   istio-agent and Istio's file-mounted certificates use (`cert-chain.pem`, `key.pem`,
//!   `root-cert.pem`); Envoy re-reads them when they change.
//! - Other Envoy nodes: SDS secrets `default` and `ROOTCA` over ADS, as istiod sends sidecars.
//!   mesh-control issues no certificates, so such clusters stay warming: mTLS fails closed
//!   rather than falling back to plaintext.

use std::path::PathBuf;

use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as tls;

use super::{NodeInfo, NodeKind};

/// A node's certificate source.
pub(crate) enum CertSource {
    Providers,
    Files(PathBuf),
    Sds,
}

impl CertSource {
    pub(crate) fn for_node(node: &NodeInfo) -> Self {
        match (node.kind, &node.cert_dir) {
            (NodeKind::Proxyless, _) => Self::Providers,
            (NodeKind::Envoy, Some(dir)) => Self::Files(dir.clone()),
            (NodeKind::Envoy, None) => Self::Sds,
        }
    }

    /// A common TLS context presenting the workload certificate and validating peers against
    /// the mesh root, with `sans` (URI SANs) required of the peer when not empty.
    pub(crate) fn common_context(&self, sans: Vec<String>) -> tls::CommonTlsContext {
        let san = |s: String| {
            tls::SubjectAltNameMatcher {
            san_type: tls::subject_alt_name_matcher::SanType::Uri as i32,
            matcher: Some(envoy_types::pb::envoy::r#type::matcher::v3::StringMatcher {
                match_pattern: Some(
                    envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern::Exact(s),
                ),
                ignore_case: false,
            }),
            ..Default::default()
        }
        };
        let mut validation = tls::CertificateValidationContext {
            match_typed_subject_alt_names: sans.into_iter().map(san).collect(),
            ..Default::default()
        };
        let mut common = tls::CommonTlsContext::default();
        match self {
            Self::Providers => {
                let provider = |cert: &str| tls::CertificateProviderPluginInstance {
                    instance_name: "default".into(),
                    certificate_name: cert.into(),
                };
                common.tls_certificate_provider_instance = Some(provider("default"));
                validation.ca_certificate_provider_instance = Some(provider("ROOTCA"));
            }
            Self::Files(dir) => {
                let file = |name: &str| core::DataSource {
                    specifier: Some(core::data_source::Specifier::Filename(
                        dir.join(name).to_string_lossy().into_owned(),
                    )),
                    ..Default::default()
                };
                common.tls_certificates = vec![tls::TlsCertificate {
                    certificate_chain: Some(file("cert-chain.pem")),
                    private_key: Some(file("key.pem")),
                    ..Default::default()
                }];
                validation.trusted_ca = Some(file("root-cert.pem"));
            }
            Self::Sds => {
                let ads = || tls::SdsSecretConfig {
                    name: String::new(),
                    sds_config: Some(core::ConfigSource {
                        config_source_specifier: Some(
                            core::config_source::ConfigSourceSpecifier::Ads(Default::default()),
                        ),
                        resource_api_version: core::ApiVersion::V3 as i32,
                        ..Default::default()
                    }),
                };
                common.tls_certificate_sds_secret_configs = vec![tls::SdsSecretConfig {
                    name: "default".into(),
                    ..ads()
                }];
                common.validation_context_type = Some(
                    tls::common_tls_context::ValidationContextType::CombinedValidationContext(
                        tls::common_tls_context::CombinedCertificateValidationContext {
                            default_validation_context: Some(validation),
                            validation_context_sds_secret_config: Some(tls::SdsSecretConfig {
                                name: "ROOTCA".into(),
                                ..ads()
                            }),
                            ..Default::default()
                        },
                    ),
                );
                return common;
            }
        }
        common.validation_context_type =
            Some(tls::common_tls_context::ValidationContextType::ValidationContext(validation));
        common
    }

    /// The transport socket of an inbound mTLS filter chain (a client certificate required).
    pub(crate) fn inbound_mtls(&self) -> core::TransportSocket {
        let ctx = tls::DownstreamTlsContext {
            common_tls_context: Some(self.common_context(Vec::new())),
            require_client_certificate: Some(envoy_types::pb::google::protobuf::BoolValue {
                value: true,
            }),
            ..Default::default()
        };
        core::TransportSocket {
            name: "envoy.transport_sockets.tls".into(),
            config_type: Some(core::transport_socket::ConfigType::TypedConfig(
                envoy_types::util::pack_any(ctx),
            )),
        }
    }
}
