//! # Bookinfo, meshed
//!
//! Istio's Bookinfo sample (productpage, details, reviews v1/v2/v3, ratings) as Rust services
//! that use only mesh's public API: each serves with [`mesh_tower::serve`] behind its inbound
//! listener and calls the others with a [`mesh_tower::MeshClient`], with its own [`Mesh`]
//! (its own xDS stream, SPIFFE identity and certificate files, as a separate process would
//! have), all configured by mesh-control from Istio YAML.
//!
//! [`Bookinfo::start`] runs the whole application on loopback: a certificate authority made
//! at start, mesh-control watching a configuration directory (Bookinfo's services, and the
//! version subsets with Istio mutual TLS on every hop), and the six workloads. Dropping YAML
//! into the directory applies an Istio task, as `kubectl apply` would.
//!
//! ```no_run
//! # async fn run() -> anyhow::Result<()> {
//! let bookinfo = mesh_bookinfo::Bookinfo::start(mesh_bookinfo::Options::default()).await?;
//! println!("open {}", bookinfo.url("/productpage"));
//! bookinfo.apply("virtual-service-all-v1.yaml", mesh_bookinfo::networking::ALL_V1)?;
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

pub mod details;
pub mod fortio;
pub mod httpbin;
pub mod networking;
pub mod productpage;
pub mod ratings;
pub mod reviews;
pub mod web;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use mesh_core::{Bootstrap, Mesh};
use mesh_tower::MeshClient;

use reviews::Version;

/// The namespace Bookinfo runs in.
pub const NAMESPACE: &str = "default";

/// One of Bookinfo's workloads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Workload {
    /// Its name (the Deployment's): `reviews-v2`.
    pub name: &'static str,
    /// `app` label.
    pub app: &'static str,
    /// `version` label.
    pub version: &'static str,
    /// Service account.
    pub service_account: &'static str,
}

/// Every workload, in port order (productpage first, on the base port).
pub const WORKLOADS: [Workload; 6] = [
    Workload {
        name: "productpage-v1",
        app: "productpage",
        version: "v1",
        service_account: "bookinfo-productpage",
    },
    Workload {
        name: "details-v1",
        app: "details",
        version: "v1",
        service_account: "bookinfo-details",
    },
    Workload {
        name: "reviews-v1",
        app: "reviews",
        version: "v1",
        service_account: "bookinfo-reviews",
    },
    Workload {
        name: "reviews-v2",
        app: "reviews",
        version: "v2",
        service_account: "bookinfo-reviews",
    },
    Workload {
        name: "reviews-v3",
        app: "reviews",
        version: "v3",
        service_account: "bookinfo-reviews",
    },
    Workload {
        name: "ratings-v1",
        app: "ratings",
        version: "v1",
        service_account: "bookinfo-ratings",
    },
];

/// How to run Bookinfo.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Options {
    /// The first of the workloads' ports (productpage's; the others follow), or `None` for
    /// ports the system picks. Default: 19080 (productpage 19080 … ratings 19085).
    pub base_port: Option<u16>,
    /// Where mesh-control serves ADS (`None`: a port the system picks). Default: 15010.
    pub xds_port: Option<u16>,
    /// The first admin port (one per workload), or `None` for no admin endpoints. Default:
    /// 15100 (productpage 15100 … ratings 15105).
    pub admin_base_port: Option<u16>,
    /// Istio mutual TLS between the services (`destination-rule-all-mtls.yaml`); otherwise
    /// plain `destination-rule-all.yaml`. Default: on.
    pub mtls: bool,
    /// The configuration directory mesh-control watches (`None`: a temporary one).
    pub config_dir: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            base_port: Some(19080),
            xds_port: Some(15010),
            admin_base_port: Some(15100),
            mtls: true,
            config_dir: None,
        }
    }
}

impl Options {
    /// Every port picked by the system, no admin endpoints: what tests run.
    pub fn ephemeral() -> Self {
        Self {
            base_port: None,
            xds_port: None,
            admin_base_port: None,
            ..Self::default()
        }
    }
}

/// A running Bookinfo. Stops when dropped.
pub struct Bookinfo {
    /// The product page's address.
    pub productpage: SocketAddr,
    /// Where mesh-control serves ADS.
    pub xds: SocketAddr,
    /// Admin endpoints by workload.
    pub admins: Vec<(&'static str, SocketAddr)>,
    /// The control plane.
    pub control_plane: Arc<mesh_control::control::ControlPlane>,
    config_dir: PathBuf,
    meshes: Vec<Mesh>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    _state: tempfile::TempDir,
    _config: Option<tempfile::TempDir>,
}

impl Drop for Bookinfo {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn bind_addr(port: Option<u16>, offset: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port.map_or(0, |p| p + offset)))
}

/// A listener on `addr`, released at once: serve binds it again. (Fixed ports are used as
/// they are; port 0 asks the system for one.)
fn reserve(addr: SocketAddr) -> anyhow::Result<std::net::TcpListener> {
    let l = std::net::TcpListener::bind(addr).with_context(|| format!("port {addr} is taken"))?;
    // Kept bound until the workload serves on it: a port released and bound again later can
    // be taken in between by anything on the machine (a parallel test's own port 0, an
    // outgoing connection's source port).
    l.set_nonblocking(true)?;
    Ok(l)
}

impl Bookinfo {
    /// Starts mesh-control and every workload; returns once the product page answers.
    pub async fn start(opts: Options) -> anyhow::Result<Self> {
        let state = tempfile::tempdir()?;
        let (config_dir, config_tmp) = match &opts.config_dir {
            Some(d) => {
                std::fs::create_dir_all(d)?;
                (d.clone(), None)
            }
            None => {
                let t = tempfile::tempdir()?;
                (t.path().to_owned(), Some(t))
            }
        };
        let listeners: Vec<std::net::TcpListener> = (0..WORKLOADS.len() as u16)
            .map(|i| reserve(bind_addr(opts.base_port, i)))
            .collect::<anyhow::Result<_>>()?;
        let addrs: Vec<SocketAddr> = listeners
            .iter()
            .map(std::net::TcpListener::local_addr)
            .collect::<std::io::Result<_>>()?;
        std::fs::write(
            config_dir.join("bookinfo.yaml"),
            networking::services(&addrs),
        )?;
        let rules = if opts.mtls {
            networking::DESTINATION_RULE_ALL_MTLS
        } else {
            networking::DESTINATION_RULE_ALL
        };
        std::fs::write(config_dir.join("destination-rule-all.yaml"), rules)?;

        let control_plane =
            Arc::new(mesh_control::control::ControlPlane::new(&config_dir).map_err(rejected)?);
        let listener = tokio::net::TcpListener::bind(bind_addr(opts.xds_port, 0))
            .await
            .context("binding the ADS port")?;
        let xds = listener.local_addr()?;
        let mut tasks = vec![
            tokio::spawn({
                let cp = control_plane.clone();
                async move {
                    if let Err(e) = cp.serve_tcp(listener).await {
                        tracing::error!(error = %e, "mesh-control stopped");
                    }
                }
            }),
            tokio::spawn(control_plane.clone().watch(Duration::from_millis(40))),
        ];

        let ca = mesh_control::dev::DevCa::new("Bookinfo root CA")?;
        let mut meshes = Vec::new();
        let mut admins = Vec::new();
        for (i, (w, listener)) in WORKLOADS.iter().zip(listeners).enumerate() {
            let certs = state.path().join(w.name);
            ca.write_workload_files(
                &format!(
                    "spiffe://cluster.local/ns/{NAMESPACE}/sa/{}",
                    w.service_account
                ),
                &certs,
            )?;
            let mesh = workload_mesh(w, xds, &certs).await?;
            if let Some(base) = opts.admin_base_port {
                let admin = mesh_tower::admin::Admin::bind(&mesh, bind_addr(Some(base), i as u16))
                    .await
                    .with_context(|| format!("admin port of {}", w.name))?;
                admins.push((w.name, admin.local_addr()));
                tasks.push(tokio::spawn(admin.run()));
            }
            tasks.push(serve(
                w,
                &mesh,
                tokio::net::TcpListener::from_std(listener)?,
            ));
            meshes.push(mesh);
        }
        let bookinfo = Self {
            productpage: addrs[0],
            xds,
            admins,
            control_plane,
            config_dir,
            meshes,
            tasks,
            _state: state,
            _config: config_tmp,
        };
        bookinfo.wait_until_serving().await?;
        Ok(bookinfo)
    }

    /// `http://<productpage>/<path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.productpage)
    }

    /// The configuration directory mesh-control watches.
    pub fn config_dir(&self) -> &Path {
        &self.config_dir
    }

    /// The meshes of the workloads, in [`WORKLOADS`] order.
    pub fn meshes(&self) -> &[Mesh] {
        &self.meshes
    }

    /// Writes `yaml` as `file` in the configuration directory and applies it now (the
    /// directory watch would within ~100 ms); an invalid file is refused with its errors.
    pub fn apply(&self, file: &str, yaml: &str) -> anyhow::Result<u64> {
        std::fs::write(self.config_dir.join(file), yaml)?;
        self.reload()
    }

    /// Removes `file` from the configuration directory and applies that.
    pub fn remove(&self, file: &str) -> anyhow::Result<u64> {
        std::fs::remove_file(self.config_dir.join(file))?;
        self.reload()
    }

    /// Waits until every workload has been sent configuration `version` (what
    /// [`apply`](Self::apply) returns) and has answered it, and has stayed so for 20 ms: what
    /// `istioctl proxy-status` shows as SYNCED. The quiet period covers the subscriptions a
    /// change sets off (a route to new clusters makes the client ask for them, and then for
    /// their endpoints, after it has ACKed the route). Fails after 10 s.
    pub async fn synced(&self, version: u64) -> anyhow::Result<()> {
        const QUIET: Duration = Duration::from_millis(20);
        let ads = self.control_plane.ads();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let mut since = None;
        loop {
            let now = tokio::time::Instant::now();
            if ads.in_sync(version) {
                let t = *since.get_or_insert(now);
                if now - t >= QUIET {
                    return Ok(());
                }
            } else {
                since = None;
            }
            if now > deadline {
                anyhow::bail!(
                    "the workloads did not take configuration version {version} within 10 s"
                );
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    fn reload(&self) -> anyhow::Result<u64> {
        self.control_plane.reload().map_err(rejected)
    }

    async fn wait_until_serving(&self) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let client = MeshClient::new(&self.meshes[0]);
        loop {
            // Through the mesh, as the services call each other: the page is up once
            // productpage answers and reaches both details and reviews.
            let page = web::get(
                &client,
                "http://productpage:9080/productpage",
                &http::HeaderMap::new(),
                Duration::from_secs(5),
            )
            .await;
            if let web::Called::Answer(http::StatusCode::OK, body) = &page
                && body.windows(12).any(|w| w == b"Book Reviews")
                && body.windows(12).any(|w| w == b"Book Details")
            {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                anyhow::bail!("Bookinfo did not come up within 30 s (last answer: {page:?})");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// mesh-control's diagnostics (each `file:line:column: field: why`) as one error.
fn rejected(diags: Vec<mesh_control::config::Diagnostic>) -> anyhow::Error {
    let lines: Vec<String> = diags.iter().map(ToString::to_string).collect();
    anyhow::anyhow!("{}", lines.join("\n"))
}

/// A workload's mesh: the bootstrap istio-agent would write for it.
async fn workload_mesh(w: &Workload, xds: SocketAddr, certs: &Path) -> anyhow::Result<Mesh> {
    let bootstrap = mesh_control::dev::WorkloadBootstrap::new(w.name, NAMESPACE, certs)
        .label("app", w.app)
        .label("version", w.version)
        .to_json(xds);
    let bootstrap = Bootstrap::from_json(&bootstrap.to_string())?;
    Ok(Mesh::builder().bootstrap(bootstrap).build().await?)
}

/// Serves one workload in the background.
fn serve(
    w: &Workload,
    mesh: &Mesh,
    listener: tokio::net::TcpListener,
) -> tokio::task::JoinHandle<()> {
    let mesh = mesh.clone();
    let name = w.name;
    let client = MeshClient::new(&mesh);
    macro_rules! run {
        ($svc:expr) => {
            tokio::spawn(async move {
                if let Err(e) = mesh_tower::serve_listener(&mesh, listener, $svc).await {
                    tracing::error!(workload = name, error = %e, "stopped serving");
                }
            })
        };
    }
    match w.app {
        "productpage" => {
            let page = productpage::ProductPage::new(client);
            run!(tower::service_fn(move |req| {
                let page = page.clone();
                async move { page.handle(req).await }
            }))
        }
        "details" => run!(tower::service_fn(details::handle)),
        "reviews" => {
            let version = match w.version {
                "v1" => Version::V1,
                "v2" => Version::V2,
                _ => Version::V3,
            };
            let reviews = reviews::Reviews {
                version,
                podname: format!("{name}-{:08x}", fastrand::u32(..)),
                client,
            };
            run!(tower::service_fn(move |req| {
                let reviews = reviews.clone();
                async move { reviews.handle(req).await }
            }))
        }
        _ => {
            let ratings = ratings::Ratings::default();
            run!(tower::service_fn(move |req| {
                let ratings = ratings.clone();
                async move { ratings.handle(req).await }
            }))
        }
    }
}
