//! Opening a gRPC channel to an xDS server: TCP (`host:port`, `dns:///host:port`, `http(s)://`)
//! or a Unix socket (`unix:///path`), plaintext or TLS per the bootstrap's `channel_creds`.

use std::time::Duration;

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::bootstrap::{ChannelCreds, XdsServer};

/// Connects to `server`, failing after `timeout`.
pub(crate) async fn connect(server: &XdsServer, timeout: Duration) -> Result<Channel, String> {
    let uri = server.server_uri.as_str();
    let tls = matches!(server.channel_creds, ChannelCreds::Tls { .. });
    if let Some(path) = uri
        .strip_prefix("unix://")
        .or_else(|| uri.strip_prefix("unix:"))
    {
        let path = path.to_owned();
        // The URI is a placeholder: the connector ignores it and dials the socket.
        let endpoint = Endpoint::from_static("http://xds.local").connect_timeout(timeout);
        let endpoint = configure_tls(endpoint, &server.channel_creds, "xds.local").await?;
        let connector = tower::service_fn(move |_: http::Uri| {
            let path = path.clone();
            async move {
                tokio::net::UnixStream::connect(path)
                    .await
                    .map(hyper_util::rt::TokioIo::new)
            }
        });
        return tokio::time::timeout(timeout, endpoint.connect_with_connector(connector))
            .await
            .map_err(|_| format!("connecting to {uri} timed out"))?
            .map_err(|e| format!("cannot connect to {uri}: {}", error_chain(&e)));
    }
    let authority = uri.strip_prefix("dns:///").unwrap_or(uri);
    let target = if authority.contains("://") {
        authority.to_owned()
    } else if tls {
        format!("https://{authority}")
    } else {
        format!("http://{authority}")
    };
    let host = target
        .split("://")
        .nth(1)
        .unwrap_or("")
        .split([':', '/'])
        .next()
        .unwrap_or("")
        .to_owned();
    let endpoint = Endpoint::from_shared(target.clone())
        .map_err(|e| format!("invalid server_uri {uri:?}: {e}"))?
        .connect_timeout(timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10));
    let endpoint = configure_tls(endpoint, &server.channel_creds, &host).await?;
    tokio::time::timeout(timeout, endpoint.connect())
        .await
        .map_err(|_| format!("connecting to {uri} timed out"))?
        .map_err(|e| format!("cannot connect to {uri}: {}", error_chain(&e)))
}

async fn configure_tls(
    endpoint: Endpoint,
    creds: &ChannelCreds,
    host: &str,
) -> Result<Endpoint, String> {
    let ChannelCreds::Tls {
        ca_certificate_file,
        certificate_file,
        private_key_file,
    } = creds
    else {
        return Ok(endpoint);
    };
    let read = |p: &std::path::PathBuf| {
        let p = p.clone();
        async move {
            tokio::fs::read(&p)
                .await
                .map_err(|e| format!("cannot read {}: {e}", p.display()))
        }
    };
    let mut tls = ClientTlsConfig::new().domain_name(host);
    if let Some(ca) = ca_certificate_file {
        tls = tls.ca_certificate(Certificate::from_pem(read(ca).await?));
    }
    if let (Some(cert), Some(key)) = (certificate_file, private_key_file) {
        tls = tls.identity(Identity::from_pem(read(cert).await?, read(key).await?));
    }
    endpoint
        .tls_config(tls)
        .map_err(|e| format!("invalid TLS settings: {e}"))
}

/// Joins an error with its sources: tonic's top-level transport errors say little alone.
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}
