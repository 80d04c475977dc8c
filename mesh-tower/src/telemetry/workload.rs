//! What this process is, for the `source_*` / `destination_*` labels: read once from the
//! bootstrap's node (the metadata istio-agent writes: `NAMESPACE`, `WORKLOAD_NAME`, `LABELS`,
//! `CLUSTER_ID`; else the Istio node id `sidecar~IP~POD.NAMESPACE~…`) and the workload
//! certificate's SPIFFE ID.

use std::sync::Arc;

use mesh_core::Mesh;

/// Istio's value for a label nobody knows.
pub(crate) const UNKNOWN: &str = "unknown";

/// One side of a request, as Istio's labels describe a workload.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Peer {
    pub(crate) workload: Arc<str>,
    pub(crate) namespace: Arc<str>,
    pub(crate) principal: Arc<str>,
    pub(crate) app: Arc<str>,
    pub(crate) version: Arc<str>,
    pub(crate) canonical_service: Arc<str>,
    pub(crate) canonical_revision: Arc<str>,
    pub(crate) cluster: Arc<str>,
}

impl Peer {
    /// A peer nothing is known about.
    pub(crate) fn unknown() -> Self {
        let u: Arc<str> = UNKNOWN.into();
        Self {
            workload: u.clone(),
            namespace: u.clone(),
            principal: u.clone(),
            app: u.clone(),
            version: u.clone(),
            canonical_service: u.clone(),
            canonical_revision: u.clone(),
            cluster: u,
        }
    }

    /// A caller known only by its SPIFFE ID (`…/ns/NS/sa/SA`).
    pub(crate) fn from_principal(id: &mesh_core::identity::SpiffeId) -> Self {
        Self {
            principal: id.as_str().into(),
            namespace: id.namespace().unwrap_or(UNKNOWN).into(),
            ..Self::unknown()
        }
    }

    /// This process, from the mesh's bootstrap and certificates.
    pub(crate) fn local(mesh: &Mesh) -> Self {
        let node = &mesh.bootstrap().node;
        let meta = |k: &str| node.metadata.get(k).and_then(|v| v.as_str());
        let labels = node.metadata.get("LABELS").and_then(|v| v.as_object());
        let label = |k: &str| labels.and_then(|l| l.get(k)).and_then(|v| v.as_str());
        // sidecar~10.0.0.1~productpage-v1-6b746f74dc-9stvs.default~default.svc.cluster.local
        let pod_ns = node.id.split('~').nth(2).and_then(|p| p.split_once('.'));
        let namespace = meta("NAMESPACE").or(pod_ns.map(|(_, ns)| ns));
        let workload = meta("WORKLOAD_NAME")
            .map(str::to_owned)
            .or_else(|| pod_ns.map(|(pod, _)| workload_of_pod(pod)));
        let app = label("app").or(label("app.kubernetes.io/name"));
        let version = label("version").or(label("app.kubernetes.io/version"));
        let canonical_service = label("service.istio.io/canonical-name")
            .or(app)
            .map(str::to_owned)
            .or_else(|| workload.clone());
        let canonical_revision = label("service.istio.io/canonical-revision")
            .or(version)
            .unwrap_or("latest");
        let principal = mesh
            .certificate_provider("default")
            .and_then(|p| p.current().spiffe_id().map(|id| id.to_string()));
        let text = |v: Option<&str>| -> Arc<str> { v.unwrap_or(UNKNOWN).into() };
        Self {
            workload: text(workload.as_deref()),
            namespace: text(namespace),
            principal: text(principal.as_deref()),
            app: text(app),
            version: text(version),
            canonical_service: text(canonical_service.as_deref()),
            canonical_revision: canonical_revision.into(),
            cluster: meta("CLUSTER_ID").unwrap_or("Kubernetes").into(),
        }
    }
}

/// A Deployment's pod name without the ReplicaSet and pod suffixes
/// (`productpage-v1-6b746f74dc-9stvs` → `productpage-v1`); other names as they are.
fn workload_of_pod(pod: &str) -> String {
    let parts: Vec<&str> = pod.rsplitn(3, '-').collect();
    let hashy = |s: &str, lens: std::ops::RangeInclusive<usize>| {
        lens.contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    };
    match parts.as_slice() {
        [pod_id, rs, name] if hashy(pod_id, 5..=5) && hashy(rs, 8..=10) => (*name).to_owned(),
        _ => pod.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deployment_pods_name_their_workload() {
        assert_eq!(
            workload_of_pod("productpage-v1-6b746f74dc-9stvs"),
            "productpage-v1"
        );
        assert_eq!(workload_of_pod("reviews-v2"), "reviews-v2");
        assert_eq!(workload_of_pod("echo"), "echo");
    }
}
