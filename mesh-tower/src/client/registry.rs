//! The mesh's clients, listed for the admin endpoint's `/clusters`: a `Mesh` extension, so
//! that every client built on one mesh shows its clusters, for as long as it lives.

use std::sync::{Arc, Weak};

use arc_swap::ArcSwap;
use mesh_core::Mesh;

use super::Outbound;

/// The clients of one mesh.
#[derive(Default)]
pub(crate) struct Clients {
    list: ArcSwap<Vec<Weak<Outbound>>>,
}

impl Clients {
    pub(crate) fn of(mesh: &Mesh) -> Arc<Self> {
        mesh.extension(Self::default)
    }

    /// Lists a client's clusters for as long as it lives.
    pub(crate) fn register(&self, client: &Arc<Outbound>) {
        crate::push_live(&self.list, client);
    }
}

/// Every live cluster of `mesh`'s clients, with its hosts and their counts: what the admin
/// endpoint serves at `/clusters`, as JSON.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let mesh = mesh_core::Mesh::builder().static_file("mesh.yaml")?.build().await?;
/// let client = mesh_tower::MeshClient::new(&mesh);
/// // ... requests ...
/// let clusters = mesh_tower::client::clusters(&mesh);
/// for c in clusters["clusters"].as_array().into_iter().flatten() {
///     println!("{}", c["name"]);
/// }
/// # drop(client);
/// # Ok(()) }
/// ```
pub fn clusters(mesh: &Mesh) -> serde_json::Value {
    let clusters: Vec<serde_json::Value> = Clients::of(mesh)
        .list
        .load()
        .iter()
        .filter_map(Weak::upgrade)
        .flat_map(|c| c.clusters.dump())
        .collect();
    serde_json::json!({ "clusters": clusters })
}
