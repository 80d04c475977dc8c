//! A small mesh on loopback for tests: mesh-control serving a directory of Istio YAML, a test
//! CA, and workloads (each with its own SPIFFE identity) that serve with `mesh_tower::serve`
//! and call each other with `MeshClient`. Not tests itself.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mesh_test_support::TestCa;

/// A control plane, a CA and the configuration directory.
pub(crate) struct TestMesh {
    pub(crate) cp: Arc<mesh_control::control::ControlPlane>,
    pub(crate) xds: SocketAddr,
    pub(crate) ca: TestCa,
    dir: tempfile::TempDir,
    certs: tempfile::TempDir,
}

/// A workload: its name, namespace and service account.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Workload<'a> {
    pub(crate) app: &'a str,
    pub(crate) namespace: &'a str,
    pub(crate) service_account: &'a str,
}

impl<'a> Workload<'a> {
    /// A workload.
    pub(crate) const fn new(app: &'a str, namespace: &'a str, service_account: &'a str) -> Self {
        Self {
            app,
            namespace,
            service_account,
        }
    }
}

/// Bookinfo's workloads in `default`, with bookinfo.yaml's service accounts.
pub(crate) const PRODUCTPAGE: Workload<'static> =
    Workload::new("productpage", "default", "bookinfo-productpage");
/// Bookinfo's details.
pub(crate) const DETAILS: Workload<'static> =
    Workload::new("details", "default", "bookinfo-details");
/// Bookinfo's reviews.
pub(crate) const REVIEWS: Workload<'static> =
    Workload::new("reviews", "default", "bookinfo-reviews");
/// Bookinfo's ratings.
pub(crate) const RATINGS: Workload<'static> =
    Workload::new("ratings", "default", "bookinfo-ratings");

impl TestMesh {
    /// mesh-control serving `yaml` (one file, `mesh.yaml`).
    pub(crate) async fn start(yaml: &str) -> Self {
        Self::start_on(yaml, std::net::Ipv4Addr::LOCALHOST.into()).await
    }

    /// [`TestMesh::start`] with mesh-control listening on `ip` (`::1` for single-stack IPv6).
    pub(crate) async fn start_on(yaml: &str, ip: std::net::IpAddr) -> Self {
        let dir = tempfile::tempdir().expect("config dir");
        std::fs::write(dir.path().join("mesh.yaml"), yaml).expect("write config");
        let (cp, xds) = super::serve_control_plane_on(dir.path(), ip).await;
        Self {
            cp,
            xds,
            ca: TestCa::new("mesh root"),
            dir,
            certs: tempfile::tempdir().expect("cert dir"),
        }
    }

    /// Writes (or, with `""`, empties) `file` in the configuration directory and reloads;
    /// returns the new configuration version.
    pub(crate) fn apply(&self, file: &str, yaml: &str) -> u64 {
        std::fs::write(self.dir.path().join(file), yaml).expect("write config");
        self.cp.reload().unwrap_or_else(|e| panic!("{e:?}"))
    }

    /// A mesh for `w`, with its certificate (from the test CA) in istio-agent's files.
    pub(crate) async fn mesh(&self, w: Workload<'_>) -> mesh_core::Mesh {
        workload_mesh(self.xds, &self.ca, self.certs.path(), w).await
    }

    /// [`TestMesh::mesh`] for a workload in `locality` (`region/zone[/sub-zone]`), which its
    /// node reports as istio-agent does.
    pub(crate) async fn mesh_in(&self, w: Workload<'_>, locality: &str) -> mesh_core::Mesh {
        super::mesh_from_json(self.bootstrap(w, locality)).await
    }

    /// The xDS bootstrap (gRPC's format) of workload `w` in `locality` (`""`: none), with its
    /// certificate written: what [`TestMesh::mesh_in`] uses, for a peer in another process.
    pub(crate) fn bootstrap(&self, w: Workload<'_>, locality: &str) -> serde_json::Value {
        workload_bootstrap(self.xds, &self.ca, self.certs.path(), w, locality)
    }

    /// Serves `app` as workload `w` on `addr`, in the background.
    pub(crate) async fn serve<S, B>(
        &self,
        w: Workload<'_>,
        addr: SocketAddr,
        app: S,
    ) -> mesh_core::Mesh
    where
        S: tower::Service<http::Request<hyper::body::Incoming>, Response = http::Response<B>>
            + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
        S::Error: Into<mesh_tower::BoxError> + Send,
        B: hyper::body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<mesh_tower::BoxError>,
    {
        let mesh = self.mesh(w).await;
        let serving = mesh.clone();
        tokio::spawn(async move {
            mesh_tower::serve(&serving, addr, app)
                .await
                .expect("serving")
        });
        mesh
    }
}

/// A mesh for `w` on the control plane at `xds`, as istio-agent would set one up: node id
/// and metadata, the inbound listener template, and a certificate from `ca` written under
/// `certs` for the `file_watcher` provider.
pub(crate) async fn workload_mesh(
    xds: SocketAddr,
    ca: &TestCa,
    certs: &std::path::Path,
    w: Workload<'_>,
) -> mesh_core::Mesh {
    super::mesh_from_json(workload_bootstrap(xds, ca, certs, w, "")).await
}

/// The bootstrap istio-agent would write for `w` (in `locality`, unless empty), with its
/// certificate from `ca` written under `certs`.
fn workload_bootstrap(
    xds: SocketAddr,
    ca: &TestCa,
    certs: &std::path::Path,
    w: Workload<'_>,
    locality: &str,
) -> serde_json::Value {
    let id = format!(
        "spiffe://cluster.local/ns/{}/sa/{}",
        w.namespace, w.service_account
    );
    let dir = certs.join(format!("{}.{}", w.app, w.namespace));
    ca.write_istio_files(&ca.workload(&id), &dir);
    let mut b =
        mesh_control::dev::WorkloadBootstrap::new(&format!("{}-v1", w.app), w.namespace, &dir)
            .label("app", w.app);
    if !locality.is_empty() {
        b = b.locality(locality);
    }
    b.to_json(xds)
}

/// A loopback address nobody listens on yet ([`mesh_test_support::unused_port`]).
pub(crate) fn free_port() -> SocketAddr {
    mesh_test_support::unused_port()
}

/// A Kubernetes Service and the WorkloadEntry behind it (port name `http`).
pub(crate) fn service(w: Workload<'_>, port: u16, addr: SocketAddr) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {app}, namespace: {ns}}}\nspec:\n  ports: [{{port: {port}, name: http}}]\n  selector: {{app: {app}}}\n---\n\
         apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: {app}, namespace: {ns}}}\n\
         spec: {{address: 127.0.0.1, ports: {{http: {}}}, labels: {{app: {app}}}, serviceAccount: {sa}}}\n---\n",
        addr.port(),
        app = w.app,
        ns = w.namespace,
        sa = w.service_account,
    )
}

/// Polls `f` until `ok` holds for its answer, failing after 15 s with the last answer.
pub(crate) async fn eventually<T: std::fmt::Debug, F: std::future::Future<Output = T>>(
    what: &str,
    mut f: impl FnMut() -> F,
    ok: impl Fn(&T) -> bool,
) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let got = f().await;
        if ok(&got) {
            return got;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: still {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
