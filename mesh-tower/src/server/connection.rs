//! One inbound connection, from accept to the point where HTTP starts: Envoy's filter-chain
//! selection (reading the TLS ClientHello first when chains differ by transport, server name
//! or ALPN), the chain's TLS handshake and peer identity, and its network filters (network
//! RBAC). A connection that no chain takes, whose chain cannot serve, or that a network
//! filter denies is closed before a byte of it reaches the application.

use std::net::SocketAddr;
use std::sync::Arc;

use mesh_core::identity::PeerCertificate;
use mesh_core::model::{ConnectionFacts, NetworkPolicy};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use super::listener::{Chain, ConnectionSlot, Inbound};
use super::{PeerIdentity, rbac};
use crate::body::BoxError;
use crate::rules::metadata::Metadata;

/// The connection's bytes, decrypted or not.
pub(crate) enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// A connection ready for HTTP: its chain, its stream and who is at the other end.
pub(crate) struct Opened<'a> {
    pub(crate) chain: &'a Chain,
    pub(crate) io: Io,
    pub(crate) identity: PeerIdentity,
    pub(crate) sni: Option<Arc<str>>,
    /// The connection's places under its chain's connection limits, given back when it
    /// closes.
    pub(crate) slots: Vec<ConnectionSlot>,
}

/// Chooses the connection's chain, runs its TLS handshake and its network filters.
pub(crate) async fn open(
    inbound: &Inbound,
    tcp: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
) -> Result<Opened<'_>, BoxError> {
    let facts = |server_name, transport, alpn| ConnectionFacts {
        local,
        peer,
        server_name,
        transport,
        alpn,
    };
    // A peer that never shows its first bytes (or trickles a ClientHello) is closed after
    // the listener's `listener_filters_timeout`, as Envoy closes it, rather than held open.
    let tls = if inbound.inspect {
        match bounded(inbound.inspect_timeout, starts_tls(&tcp)).await {
            Some(first) => first?,
            None if inbound.continue_on_inspect_timeout => false,
            None => return Err("no first byte within the listener's filters timeout".into()),
        }
    } else {
        false
    };
    let slots;
    let (chain, io) = if tls {
        // Read the ClientHello (as Envoy's TLS inspector does) to learn the server name and
        // the protocols offered, then finish the handshake with the chosen chain's config.
        let hello = tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp);
        let hello = bounded(inbound.inspect_timeout, hello)
            .await
            .ok_or("no complete ClientHello within the listener's filters timeout")??;
        let sni = hello
            .client_hello()
            .server_name()
            .map(str::to_ascii_lowercase);
        let alpn: Vec<Vec<u8>> = hello
            .client_hello()
            .alpn()
            .map(|protocols| protocols.map(<[u8]>::to_vec).collect())
            .unwrap_or_default();
        let alpn: Vec<&[u8]> = alpn.iter().map(Vec::as_slice).collect();
        let chain = chosen(inbound, &facts(sni.as_deref(), "tls", &alpn))?;
        slots = admit(chain).await?;
        let Some(config) = &chain.tls else {
            // The handshake has begun and cannot be handed to a plaintext chain; Envoy's
            // HTTP codec would fail on it the same way.
            return Err(format!(
                "a TLS connection matched filter chain {:?}, which has no TLS",
                chain.config.name
            )
            .into());
        };
        let tls = bounded(
            chain.config.handshake_timeout,
            hello.into_stream(config.clone()),
        )
        .await
        .ok_or_else(|| BoxError::from(HANDSHAKE_TIMEOUT))??;
        (chain, Io::Tls(Box::new(tls)))
    } else {
        let transport = if inbound.inspect {
            "raw_buffer"
        } else {
            // No chain asks: what a first byte would say does not matter.
            ""
        };
        let chain = chosen(inbound, &facts(None, transport, &[]))?;
        slots = admit(chain).await?;
        match &chain.tls {
            None => (chain, Io::Plain(tcp)),
            Some(config) => {
                let accept = tokio_rustls::TlsAcceptor::from(config.clone()).accept(tcp);
                let tls = bounded(chain.config.handshake_timeout, accept)
                    .await
                    .ok_or_else(|| BoxError::from(HANDSHAKE_TIMEOUT))??;
                (chain, Io::Tls(Box::new(tls)))
            }
        }
    };
    let (identity, sni) = match &io {
        Io::Plain(_) => (
            PeerIdentity {
                addr: peer,
                spiffe_id: None,
                certificate: None,
                tls: false,
            },
            None,
        ),
        Io::Tls(tls) => {
            let (_, session) = tls.get_ref();
            let certs = session.peer_certificates();
            let identity = PeerIdentity {
                addr: peer,
                spiffe_id: certs.and_then(mesh_core::identity::tls::peer_spiffe_id),
                certificate: certs
                    .and_then(|c| c.first())
                    .and_then(|leaf| PeerCertificate::from_der(leaf))
                    .map(Arc::new),
                tls: true,
            };
            (identity, session.server_name().map(Arc::from))
        }
    };
    for policy in chain.config.network_filters.iter() {
        match policy {
            // Taken before the handshake (`admit`).
            NetworkPolicy::ConnectionLimit { .. } => {}
            NetworkPolicy::Rbac(filter) => {
                let conn = rbac::Connection {
                    peer,
                    // A connection has no x-forwarded-for: its client is its peer.
                    client: peer.ip(),
                    local,
                    spiffe_id: identity.spiffe_id.as_ref(),
                    certificate: identity.certificate.as_deref(),
                    sni: sni.as_deref(),
                    metadata: &Metadata::default(),
                };
                if let rbac::Verdict::Deny(policy) = rbac::evaluate_connection(filter, &conn) {
                    return Err(
                        format!("network RBAC denied the connection (policy {policy:?})").into(),
                    );
                }
            }
        }
    }
    Ok(Opened {
        chain,
        io,
        identity,
        sni,
        slots,
    })
}

/// Why a handshake was abandoned.
const HANDSHAKE_TIMEOUT: &str =
    "the TLS handshake did not finish within the chain's transport_socket_connect_timeout";

/// A place for the connection under its chain's connection limit
/// (`envoy.filters.network.connection_limit`), taken as Envoy takes it: when the chain is
/// chosen, before the handshake, so connections over the limit cost no handshake.
async fn admit(chain: &Chain) -> Result<Vec<ConnectionSlot>, BoxError> {
    let mut slots = Vec::new();
    for (i, policy) in chain.config.network_filters.iter().enumerate() {
        if let NetworkPolicy::ConnectionLimit {
            max_connections,
            delay,
        } = policy
        {
            // Each limit filter counts on its own.
            match chain.connections[i].try_open(*max_connections) {
                Some(s) => slots.push(s),
                None => {
                    // Envoy holds an overflowing connection for `delay` without reading it
                    // (slowing a client that reconnects in a loop), then closes it.
                    if let Some(d) = delay {
                        tokio::time::sleep(*d).await;
                    }
                    return Err(format!(
                        "over the filter chain's connection limit ({max_connections})"
                    )
                    .into());
                }
            }
        }
    }
    Ok(slots)
}

/// `f`, unless it takes longer than `limit`.
async fn bounded<F: std::future::Future>(
    limit: Option<std::time::Duration>,
    f: F,
) -> Option<F::Output> {
    match limit {
        Some(limit) => tokio::time::timeout(limit, f).await.ok(),
        None => Some(f.await),
    }
}

/// The chain for a connection; closed unserved when there is none or it cannot serve.
fn chosen<'a>(inbound: &'a Inbound, facts: &ConnectionFacts<'_>) -> Result<&'a Chain, BoxError> {
    let chain = inbound
        .select(facts)
        .ok_or("no filter chain matches the connection")?;
    match &chain.refuse {
        Some(why) => Err(why.clone().into()),
        None => Ok(chain),
    }
}

/// Whether the connection's first byte starts a TLS handshake record (0x16), as Envoy's TLS
/// inspector decides (it then parses the ClientHello, which rustls does here).
pub(crate) async fn starts_tls(tcp: &TcpStream) -> std::io::Result<bool> {
    let mut first = [0u8; 1];
    Ok(tcp.peek(&mut first).await? == 1 && looks_like_tls(&first))
}

/// The PERMISSIVE sniffer's decision on a connection's first bytes: whether they start a
/// TLS handshake record (then the ClientHello is read to choose the chain).
///
/// ```
/// assert!(mesh_tower::server::looks_like_tls(&[0x16, 0x03, 0x01]));
/// assert!(!mesh_tower::server::looks_like_tls(b"GET / HTTP/1.1"));
/// ```
pub fn looks_like_tls(first: &[u8]) -> bool {
    first.first() == Some(&0x16)
}
