//! Following the inbound listener: the control plane's current answer about it, as the
//! configuration to serve with, or not serving (gRFC A36).

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
    watch: mesh_core::xds::ResourceWatch,
    shared: Arc<ServerShared>,
    serving: bool,
}

impl Follow {
    /// Subscribes to `name` and waits until the control plane has answered (a listener or
    /// its absence).
    pub(super) async fn start(mesh: &Mesh, name: String) -> Result<Self, ServeError> {
        let mut watch = mesh
            .watch_listener(&name)
            .await
            .map_err(|_| ServeError::Stopped)?;
        watch
            .wait_for(|st| st.value.is_some() || st.does_not_exist())
            .await;
        Ok(Self {
            name,
            watch,
            shared: Arc::new(ServerShared::new(mesh)),
            serving: true,
        })
    }

    /// The configuration to serve with now; `None` means not serving. An update that is
    /// neither (a NACK with a cached value) keeps the last one, so it is built again only
    /// from the value the state carries.
    pub(super) fn next_state(&mut self) -> Option<Arc<Inbound>> {
        let st = self.watch.current();
        let next = match &st.value {
            Some(Resource::Listener(l)) => Some(Arc::new(self.shared.build(l))),
            _ => None,
        };
        match (self.serving, next.is_some()) {
            (true, false) => {
                tracing::warn!(listener = %self.name, "inbound listener does not exist on the control plane: not serving (gRFC A36)")
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
            ServingState::NotServing(format!(
                "inbound listener {:?} does not exist on the control plane",
                self.name
            ))
        }
    }
}
