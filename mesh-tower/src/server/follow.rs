//! Following the inbound listener: the control plane's current answer about it, as the
//! configuration to serve with, or not serving (gRFC A36).

use std::net::SocketAddr;
use std::sync::Arc;

use mesh_core::Mesh;
use mesh_core::xds::Resource;

use super::listener::{Inbound, ServerShared};
use super::{ServeError, ServingState};

/// Waits for the watched listener to change; never, without one.
pub(super) async fn changed(follow: &mut Option<Follow>) {
    match follow {
        Some(f) => f.watch.changed().await,
        None => std::future::pending().await,
    }
}

/// The watched inbound listener, and what serving state it implies.
pub(super) struct Follow {
    name: String,
    /// The address this server listens on, which the listener's must match (gRFC A36).
    local: SocketAddr,
    watch: mesh_core::xds::ResourceWatch,
    shared: Arc<ServerShared>,
    serving: bool,
    /// Why not serving, when not.
    reason: String,
}

impl Follow {
    /// Subscribes to `name` and waits until the control plane has answered (a listener or
    /// its absence).
    pub(super) async fn start(
        mesh: &Mesh,
        name: String,
        local: SocketAddr,
    ) -> Result<Self, ServeError> {
        let mut watch = mesh
            .watch_listener(&name)
            .await
            .map_err(|_| ServeError::Stopped)?;
        watch
            .wait_for(|st| st.value.is_some() || st.does_not_exist())
            .await;
        Ok(Self {
            name,
            local,
            watch,
            shared: Arc::new(ServerShared::new(mesh)),
            serving: true,
            reason: String::new(),
        })
    }

    /// The configuration to serve with now; `None` means not serving. An update that is
    /// neither (a NACK with a cached value) keeps the last one, so it is built again only
    /// from the value the state carries.
    pub(super) fn next_state(&mut self) -> Option<Arc<Inbound>> {
        let st = self.watch.current();
        let next = match &st.value {
            Some(Resource::Listener(l)) => match mismatch(l, self.local) {
                None => Some(Arc::new(self.shared.build(l))),
                Some(reason) => {
                    self.reason = reason;
                    None
                }
            },
            _ => {
                self.reason = format!(
                    "inbound listener {:?} does not exist on the control plane",
                    self.name
                );
                None
            }
        };
        match (self.serving, next.is_some()) {
            (true, false) => {
                tracing::warn!(listener = %self.name, "{}: not serving (gRFC A36)", self.reason)
            }
            (false, true) => {
                tracing::warn!(listener = %self.name, "inbound listener is back: serving")
            }
            (true, true) => tracing::info!(listener = %self.name, "inbound configuration updated"),
            (false, false) => {}
        }
        self.serving = next.is_some();
        next
    }

    pub(super) fn serving_state(&self, serving: bool) -> ServingState {
        if serving {
            ServingState::Serving
        } else {
            ServingState::NotServing(self.reason.clone())
        }
    }
}

/// Why a listener cannot be served on `local`: its address names another port or host (gRFC
/// A36 has the server check it, since the configuration was written for that address). An
/// unspecified IP matches any, and a listener without an address (internal) is not checked.
fn mismatch(l: &mesh_core::model::Listener, local: SocketAddr) -> Option<String> {
    let mesh_core::model::ListenerKind::Socket(s) = &l.kind else {
        return Some(format!("{} is an API listener, not a server's", l.name));
    };
    let want = s.address?;
    // An IPv4-mapped IPv6 address is its IPv4 address.
    let ip_matches =
        want.ip().to_canonical() == local.ip().to_canonical() || want.ip().is_unspecified();
    (want.port() != local.port() || !ip_matches).then(|| {
        format!(
            "inbound listener {} is for {want}, but this server listens on {local}",
            l.name
        )
    })
}
