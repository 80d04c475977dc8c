//! The rules the policies apply, shared by the public layers ([`crate::layer`]),
//! [`MeshClient`](crate::MeshClient)'s clusters and [`serve`](crate::serve): RBAC, JWT
//! verification and its key sets, local rate limits, outlier detection, and what a request
//! learns on the way in (its peer, its dynamic metadata).
//!
//! A leaf below both sides: nothing here imports `client`, `server` or `layer`, so the
//! layers can use these rules and each side can use the layers without an import circle.
//! Fetching a remote key set, the one rule that needs a client, goes through a trait
//! ([`FetchJwks`]) that [`MeshClient`](crate::MeshClient) implements.

pub(crate) mod balance;
pub(crate) mod jwks;
pub(crate) mod jwt;
pub(crate) mod metadata;
pub(crate) mod outlier;
pub(crate) mod rate_limit;
pub mod rbac;

pub use jwks::FetchJwks;

use std::net::SocketAddr;
use std::sync::Arc;

use mesh_core::identity::{PeerCertificate, SpiffeId};

/// Who called, as the inbound side verified it. Inserted into every request's extensions.
///
/// ```
/// # fn handler(req: http::Request<()>) {
/// if let Some(peer) = req.extensions().get::<mesh_tower::server::PeerIdentity>() {
///     println!("{} from {:?}", peer.addr, peer.spiffe_id);
/// }
/// # }
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct PeerIdentity {
    /// The peer's address.
    pub addr: SocketAddr,
    /// Its SPIFFE ID, when it presented a verified certificate (mTLS).
    pub spiffe_id: Option<SpiffeId>,
    /// The names in the verified certificate it presented, if any.
    pub certificate: Option<Arc<PeerCertificate>>,
    /// Whether the connection is TLS.
    pub tls: bool,
}

impl PeerIdentity {
    /// A plaintext peer at `addr`: no certificate, so no principal.
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            spiffe_id: None,
            certificate: None,
            tls: false,
        }
    }

    /// A TLS peer at `addr` whose certificate was verified, for services that terminate TLS
    /// themselves and then apply the mesh's [`AuthorizationLayer`](crate::layer::AuthorizationLayer).
    pub fn verified(addr: SocketAddr, certificate: Arc<PeerCertificate>) -> Self {
        Self {
            addr,
            // As the server reads it: the first URI SAN that is a SPIFFE ID.
            spiffe_id: certificate.uri_sans.iter().find_map(|u| u.parse().ok()),
            certificate: Some(certificate),
            tls: true,
        }
    }
}
