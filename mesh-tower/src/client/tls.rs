//! TLS origination: clusters whose `UpstreamTlsContext` asks for it (Istio's `ISTIO_MUTUAL`,
//! `MUTUAL`, `SIMPLE`) connect with rustls, present the workload's certificate and verify the
//! peer against the trust bundle and the cluster's SAN matchers (SPIFFE IDs, for Istio).
//!
//! Certificates come from the mesh's certificate providers (the bootstrap's, gRFC A29) or
//! from the files a DestinationRule names. What cannot be honoured (SDS secrets, the system
//! trust store, no validation at all) makes the cluster fail closed: its requests get 503 `UF`
//! naming the reason, never a plaintext or unverified connection.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use mesh_core::Mesh;
use mesh_core::identity::{CertificateProvider, tls::client_config};
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
            (_, CertSource::System) => {
                return Err("the system trust store is not supported; name a CA".into());
            }
        };
        let alpn = t.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        let config = client_config(&provider, validation.san_matchers.clone().into(), alpn);
        // The peer is checked by SAN, not by name; SNI only tells the server what is wanted.
        let sni_text = t
            .sni
            .as_deref()
            .map(str::to_owned)
            .or_else(|| cluster.rsplit('|').next().map(str::to_owned))
            .unwrap_or_else(|| "mesh.invalid".into());
        let sni =
            ServerName::try_from(sni_text.clone()).map_err(|e| format!("SNI {sni_text:?}: {e}"))?;
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
