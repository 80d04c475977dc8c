//! `UpstreamTlsContext` / `DownstreamTlsContext` → [`UpstreamTls`] / [`DownstreamTls`].

use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as pb;

use super::matcher::string_matcher;
use super::{At, FieldError, each, unpack};
use crate::model::*;

/// The upstream TLS settings of a cluster's transport socket; `None` for plaintext.
pub(crate) fn upstream_transport_socket(
    ts: &core::TransportSocket,
) -> Result<Option<UpstreamTls>, FieldError> {
    let Some(any) = typed(ts)? else {
        return Ok(None);
    };
    if any.type_url.ends_with("raw_buffer.v3.RawBuffer") {
        return Ok(None);
    }
    if any
        .type_url
        .ends_with("internal_upstream.v3.InternalUpstreamTransport")
    {
        // A wrapper that passes metadata to Envoy internal listeners; what matters to us is
        // the transport it wraps.
        use envoy_types::pb::envoy::extensions::transport_sockets::internal_upstream::v3::InternalUpstreamTransport;
        let inner: InternalUpstreamTransport = super::unpack(any).at("typed_config")?;
        return match inner.transport_socket.as_ref() {
            Some(t) => upstream_transport_socket(t).at("typed_config.transport_socket"),
            None => Ok(None),
        };
    }
    let ctx: pb::UpstreamTlsContext = unpack(any).at("typed_config")?;
    let common = ctx.common_tls_context.unwrap_or_default();
    let (identity, validation) = common_tls(&common).at("typed_config.common_tls_context")?;
    let params =
        tls_params(common.tls_params.as_ref()).at("typed_config.common_tls_context.tls_params")?;
    Ok(Some(UpstreamTls {
        params,
        verify_server_name: false,
        sni: (!ctx.sni.is_empty()).then(|| ctx.sni.as_str().into()),
        identity,
        validation,
        alpn: common
            .alpn_protocols
            .iter()
            .map(|s| s.as_str().into())
            .collect(),
    }))
}

/// The downstream TLS settings of a filter chain; `None` for plaintext.
pub(crate) fn downstream_transport_socket(
    ts: &core::TransportSocket,
) -> Result<Option<DownstreamTls>, FieldError> {
    let Some(any) = typed(ts)? else {
        return Ok(None);
    };
    if any.type_url.ends_with("raw_buffer.v3.RawBuffer") {
        return Ok(None);
    }
    let ctx: pb::DownstreamTlsContext = unpack(any).at("typed_config")?;
    let common = ctx.common_tls_context.unwrap_or_default();
    let (identity, validation) = common_tls(&common).at("typed_config.common_tls_context")?;
    let params =
        tls_params(common.tls_params.as_ref()).at("typed_config.common_tls_context.tls_params")?;
    let identity = identity.ok_or_else(|| {
        FieldError::new("a server certificate is required").at("typed_config.common_tls_context")
    })?;
    Ok(Some(DownstreamTls {
        params,
        identity,
        validation,
        require_client_certificate: ctx
            .require_client_certificate
            .as_ref()
            .is_some_and(|b| b.value),
        alpn: common
            .alpn_protocols
            .iter()
            .map(|s| s.as_str().into())
            .collect(),
    }))
}

fn typed(
    ts: &core::TransportSocket,
) -> Result<Option<&envoy_types::pb::google::protobuf::Any>, FieldError> {
    match &ts.config_type {
        Some(core::transport_socket::ConfigType::TypedConfig(any)) => Ok(Some(any)),
        None => Ok(None),
    }
}

fn common_tls(
    c: &pb::CommonTlsContext,
) -> Result<(Option<CertSource>, Option<CertValidation>), FieldError> {
    let identity = if let Some(p) = &c.tls_certificate_provider_instance {
        Some(provider(p).at("tls_certificate_provider_instance")?)
    } else if let Some(p) = &c.tls_certificate_certificate_provider_instance {
        Some(CertSource::Provider {
            instance: p.instance_name.as_str().into(),
            certificate_name: p.certificate_name.as_str().into(),
        })
    } else if let Some(s) = c.tls_certificate_sds_secret_configs.first() {
        Some(CertSource::Sds(s.name.as_str().into()))
    } else if let Some(t) = c.tls_certificates.first() {
        let cert = data_source_file(t.certificate_chain.as_ref())
            .at("tls_certificates[0].certificate_chain")?;
        let key = data_source_file(t.private_key.as_ref()).at("tls_certificates[0].private_key")?;
        Some(CertSource::Files {
            cert,
            key: Some(key),
        })
    } else {
        None
    };
    use pb::common_tls_context::ValidationContextType as V;
    let validation = match &c.validation_context_type {
        None => None,
        Some(V::ValidationContext(v)) => {
            Some(validation_context(v, None).at("validation_context")?)
        }
        Some(V::ValidationContextSdsSecretConfig(s)) => Some(CertValidation {
            ca: CertSource::Sds(s.name.as_str().into()),
            san_matchers: Box::new([]),
        }),
        Some(V::CombinedValidationContext(cv)) => {
            let from_sds = cv
                .validation_context_sds_secret_config
                .as_ref()
                .map(|s| CertSource::Sds(s.name.as_str().into()));
            let from_provider = cv
                .validation_context_certificate_provider_instance
                .as_ref()
                .map(|p| CertSource::Provider {
                    instance: p.instance_name.as_str().into(),
                    certificate_name: p.certificate_name.as_str().into(),
                });
            let default = cv.default_validation_context.clone().unwrap_or_default();
            Some(
                validation_context(&default, from_sds.or(from_provider))
                    .at("combined_validation_context.default_validation_context")?,
            )
        }
        Some(V::ValidationContextCertificateProviderInstance(p)) => Some(CertValidation {
            ca: CertSource::Provider {
                instance: p.instance_name.as_str().into(),
                certificate_name: p.certificate_name.as_str().into(),
            },
            san_matchers: Box::new([]),
        }),
        Some(V::ValidationContextCertificateProvider(_)) => {
            return Err(FieldError::new(
                "validation_context_certificate_provider is not supported; use the provider instance form",
            ));
        }
    };
    Ok((identity, validation))
}

fn provider(p: &pb::CertificateProviderPluginInstance) -> Result<CertSource, FieldError> {
    let instance = if p.instance_name.is_empty() {
        "default"
    } else {
        p.instance_name.as_str()
    };
    Ok(CertSource::Provider {
        instance: instance.into(),
        certificate_name: p.certificate_name.as_str().into(),
    })
}

/// `tls_params`, checked against what this library can speak: a context it would have to
/// weaken, or could not speak at all, is refused.
fn tls_params(p: Option<&pb::TlsParameters>) -> Result<TlsParams, FieldError> {
    use pb::tls_parameters::TlsProtocol as P;
    let Some(p) = p else {
        return Ok(TlsParams::default());
    };
    let version = |v: i32, field: &str, max: bool| -> Result<Option<TlsVersion>, FieldError> {
        match P::try_from(v) {
            Ok(P::TlsAuto) => Ok(None),
            // Below 1.2 is not spoken here: as a minimum it means 1.2 (stricter); as a
            // maximum there would be nothing to speak.
            Ok(P::TlSv10 | P::TlSv11) if !max => Ok(Some(TlsVersion::V1_2)),
            Ok(P::TlSv10 | P::TlSv11) => Err(FieldError::new(
                "TLS below 1.2 is not supported; a maximum below 1.2 leaves nothing to speak",
            )
            .at(field.to_owned())),
            Ok(P::TlSv12) => Ok(Some(TlsVersion::V1_2)),
            Ok(P::TlSv13) => Ok(Some(TlsVersion::V1_3)),
            Err(_) => Err(FieldError::new(format!("unknown TLS version {v}")).at(field.to_owned())),
        }
    };
    if !p.signature_algorithms.is_empty() {
        return Err(FieldError::new("is not supported").at("signature_algorithms"));
    }
    if !p.compliance_policies.is_empty() {
        return Err(FieldError::new("is not supported").at("compliance_policies"));
    }
    let params = TlsParams {
        min_version: version(
            p.tls_minimum_protocol_version,
            "tls_minimum_protocol_version",
            false,
        )?,
        max_version: version(
            p.tls_maximum_protocol_version,
            "tls_maximum_protocol_version",
            true,
        )?,
        cipher_suites: p.cipher_suites.iter().map(|s| s.as_str().into()).collect(),
        ecdh_curves: p.ecdh_curves.iter().map(|s| s.as_str().into()).collect(),
    };
    crate::identity::tls::crypto_for(&params).map_err(|e| FieldError::new(e.to_string()))?;
    Ok(params)
}

fn validation_context(
    v: &pb::CertificateValidationContext,
    ca_override: Option<CertSource>,
) -> Result<CertValidation, FieldError> {
    // Checks this library does not make: ignoring them would accept peers Envoy refuses.
    let refused = |what: &str| Err(FieldError::new("is not supported").at(what.to_owned()));
    if !v.verify_certificate_spki.is_empty() {
        return refused("verify_certificate_spki");
    }
    if !v.verify_certificate_hash.is_empty() {
        return refused("verify_certificate_hash");
    }
    if v.crl.is_some() {
        return refused("crl");
    }
    if v.custom_validator_config.is_some() {
        return refused("custom_validator_config");
    }
    if v.max_verify_depth.is_some() {
        return refused("max_verify_depth");
    }
    if v.allow_expired_certificate {
        return refused("allow_expired_certificate");
    }
    if v.trust_chain_verification != 0 {
        // ACCEPT_UNTRUSTED: no verification at all.
        return refused("trust_chain_verification");
    }
    let ca = if let Some(ca) = ca_override {
        ca
    } else if let Some(p) = &v.ca_certificate_provider_instance {
        provider(p).at("ca_certificate_provider_instance")?
    } else if v.trusted_ca.is_some() {
        CertSource::Files {
            cert: data_source_file(v.trusted_ca.as_ref()).at("trusted_ca")?,
            key: None,
        }
    } else if v.system_root_certs.is_some() {
        CertSource::System
    } else {
        return Err(FieldError::new(
            "no trust anchors: set ca_certificate_provider_instance, trusted_ca or system_root_certs",
        ));
    };
    let mut san_matchers: Vec<SanMatcher> = each(
        "match_typed_subject_alt_names",
        &v.match_typed_subject_alt_names,
        |m| {
            let kind = match m.san_type {
                1 => SanKind::Email,
                2 => SanKind::Dns,
                3 => SanKind::Uri,
                4 => SanKind::Ip,
                t => {
                    return Err(FieldError::new(format!("unsupported san_type {t}")).at("san_type"));
                }
            };
            let matcher = string_matcher(
                m.matcher
                    .as_ref()
                    .ok_or_else(|| FieldError::new("is required").at("matcher"))?,
            )
            .at("matcher")?;
            Ok(SanMatcher { kind, matcher })
        },
    )?
    .into_vec();
    san_matchers.extend(
        each("match_subject_alt_names", &v.match_subject_alt_names, |m| {
            Ok(SanMatcher {
                kind: SanKind::Any,
                matcher: string_matcher(m)?,
            })
        })?
        .into_vec(),
    );
    Ok(CertValidation {
        ca,
        san_matchers: san_matchers.into(),
    })
}

fn data_source_file(d: Option<&core::DataSource>) -> Result<Arc<str>, FieldError> {
    use core::data_source::Specifier as S;
    match d.and_then(|d| d.specifier.as_ref()) {
        Some(S::Filename(f)) => Ok(f.as_str().into()),
        Some(_) => Err(FieldError::new(
            "only filename data sources are supported for certificates",
        )),
        None => Err(FieldError::new("is required")),
    }
}
