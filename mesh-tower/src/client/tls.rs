//! TLS origination: clusters whose `UpstreamTlsContext` asks for it (Istio's `ISTIO_MUTUAL`,
//! `MUTUAL`, `SIMPLE`) connect with rustls, present the workload's certificate and verify the
//! peer against the trust bundle and the cluster's SAN matchers (SPIFFE IDs, for Istio).
//!
//! Certificates come from the mesh's certificate providers (the bootstrap's, gRFC A29) or
//! from the files a DestinationRule names, or the system trust store (`system_root_certs`);
//! a server vouched for by a CA file or the system's roots must be valid for the name asked
//! for when no SAN is given. What cannot be honoured (SDS secrets, no validation at all)
//! makes the cluster fail closed: its requests get 503 `UF` naming the reason, never a
//! plaintext or unverified connection.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use mesh_core::Mesh;
use mesh_core::identity::CertificateProvider;
use mesh_core::identity::tls::{client_config_with, system_client_config};
use mesh_core::model::{CertSource, UpstreamTls};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// How a cluster's connections are secured.
#[derive(Clone)]
pub(crate) struct Origination {
    connector: tokio_rustls::TlsConnector,
    sni: ServerName<'static>,
}

impl std::fmt::Debug for Origination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Origination")
            .field("sni", &self.sni)
            .finish()
    }
}

impl Origination {
    /// Builds the cluster's TLS settings, or says why they cannot be honoured.
    pub(crate) async fn new(mesh: &Mesh, t: &UpstreamTls, cluster: &str) -> Result<Self, String> {
        let validation = t.validation.as_ref().ok_or(
            "TLS without peer validation is not supported (set a CA: ISTIO_MUTUAL, or caCertificates)",
        )?;
        let provider = match (&t.identity, &validation.ca) {
            (
                Some(CertSource::Provider { instance: a, .. }),
                CertSource::Provider { instance: b, .. },
            ) if a != b => {
                return Err(format!(
                    "certificate provider instances {a:?} (certificate) and {b:?} (CA) differ; one instance must hold both"
                ));
            }
            (Some(CertSource::Provider { .. }) | None, CertSource::Provider { instance, .. }) => {
                mesh.certificate_provider(instance)
                    .cloned()
                    .ok_or_else(|| {
                        format!(
                            "certificate provider instance {instance:?} is not in the bootstrap"
                        )
                    })?
            }
            (Some(other), CertSource::Provider { .. }) => {
                return Err(format!(
                    "client certificate source {other:?} is not supported with a certificate provider CA"
                ));
            }
            (identity, CertSource::Files { cert: ca, .. }) => {
                let (cert, key) = match identity {
                    Some(CertSource::Files { cert, key }) => (Some(cert.clone()), key.clone()),
                    None => (None, None),
                    Some(other) => {
                        return Err(format!(
                            "client certificate source {other:?} is not supported with a CA file"
                        ));
                    }
                };
                CertificateProvider::file_watcher(
                    cluster,
                    cert.as_deref().map(std::path::Path::new),
                    key.as_deref().map(std::path::Path::new),
                    Some(std::path::Path::new(&**ca)),
                    std::time::Duration::from_secs(600),
                )
                .await
                .map_err(|e| e.to_string())?
            }
            (_, CertSource::Sds(name)) => {
                return Err(format!(
                    "SDS secret {name:?}: proxyless clients take certificates from certificate providers, not SDS"
                ));
            }
            (None, CertSource::System) => {
                // Envoy's `system_root_certs` (a DestinationRule's SIMPLE without
                // caCertificates): the platform's roots, and the server's name checked.
                let alpn = t.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
                let config =
                    system_client_config(validation.san_matchers.clone().into(), alpn, &t.params)
                        .map_err(|e| e.to_string())?;
                return Ok(Self {
                    connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
                    sni: sni(t, cluster)?,
                });
            }
            (Some(_), CertSource::System) => {
                return Err(
                    "a client certificate with the system trust store is not supported; name a CA"
                        .into(),
                );
            }
        };
        let alpn = t.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        let sans = validation.san_matchers.clone().into();
        // Mesh peers (a certificate provider's CA: ISTIO_MUTUAL) are named by SPIFFE ID, not
        // by host name; a server a CA file vouches for (SIMPLE, MUTUAL) must be valid for the
        // name asked for when no SAN is given, or any server of that CA would pass.
        let check_name = t.verify_server_name || matches!(validation.ca, CertSource::Files { .. });
        let config = client_config_with(&provider, sans, alpn, check_name, &t.params)
            .map_err(|e| e.to_string())?;
        Ok(Self {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
            sni: sni(t, cluster)?,
        })
    }

    /// TLS to `host`, a host outside the mesh, verified against the system's roots and for
    /// that name (an `https` request through the passthrough).
    pub(crate) fn system(host: &str, alpn: &[u8]) -> Result<Self, String> {
        let config = system_client_config(
            Arc::new([]),
            vec![alpn.to_vec()],
            &mesh_core::model::TlsParams::default(),
        )
        .map_err(|e| e.to_string())?;
        let sni = ServerName::try_from(host.to_owned()).map_err(|e| format!("{host:?}: {e}"))?;
        Ok(Self {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
            sni,
        })
    }

    /// Runs the handshake over `tcp`.
    pub(crate) async fn connect(&self, tcp: TcpStream) -> io::Result<Io> {
        let tls = self.connector.connect(self.sni.clone(), tcp).await?;
        Ok(Io::Tls(Box::new(tls)))
    }
}

/// The name a cluster's connections ask for: the context's `sni`, else the cluster's host.
fn sni(t: &UpstreamTls, cluster: &str) -> Result<ServerName<'static>, String> {
    let text = t
        .sni
        .as_deref()
        .map(str::to_owned)
        .or_else(|| cluster.rsplit('|').next().map(str::to_owned))
        .unwrap_or_else(|| "mesh.invalid".into());
    ServerName::try_from(text.clone()).map_err(|e| format!("SNI {text:?}: {e}"))
}

/// A connection's byte stream: plain TCP or TLS over it.
#[derive(Debug)]
pub(crate) enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
