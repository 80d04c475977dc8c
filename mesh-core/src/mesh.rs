//! [`Mesh`]: one per process; the handle everything else is built from.

use std::any::Any;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::bootstrap::{Bootstrap, BootstrapError, CertificateProviderConfig};
use crate::identity::CertificateProvider;
use crate::snapshot::Target;
use crate::static_config::{StaticConfigError, StaticResources};
use crate::xds::{
    ClientStopped, ResourceDump, ResourceType, ResourceWatch, XdsClient, XdsClientConfig,
};

/// Errors building a [`Mesh`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The bootstrap is missing or invalid.
    #[error(transparent)]
    Bootstrap(#[from] BootstrapError),
    /// The static configuration is invalid.
    #[error("invalid static configuration: {0}")]
    Static(#[from] StaticConfigError),
    /// Neither a bootstrap with `xds_servers` nor static resources were given.
    #[error("no configuration source: give a bootstrap with xds_servers, or static resources")]
    NoSource,
    /// A certificate provider of the bootstrap could not load its certificates.
    #[error("certificate provider {name:?}: {source}")]
    Certificates {
        /// The provider instance.
        name: String,
        /// Why.
        source: crate::identity::IdentityError,
    },
}

/// Where resources come from.
#[derive(Clone, Debug)]
pub(crate) enum Source {
    Ads(XdsClient),
    Static(Arc<StaticResources>),
}

impl Source {
    pub(crate) async fn watch(
        &self,
        ty: ResourceType,
        name: &str,
    ) -> Result<ResourceWatch, ClientStopped> {
        match self {
            Source::Ads(c) => c.watch(ty, name).await,
            Source::Static(s) => {
                // The sender is dropped at once: static resources never change, and
                // `ResourceWatch::changed` then waits forever.
                let (_tx, rx) = watch::channel(s.state(ty, name));
                Ok(ResourceWatch::from_receiver(rx))
            }
        }
    }
}

/// The mesh: configuration source, bootstrap and the targets in use. Cheap to clone.
///
/// ```no_run
/// # async fn run() -> Result<(), mesh_core::Error> {
/// // Reads GRPC_XDS_BOOTSTRAP or GRPC_XDS_BOOTSTRAP_CONFIG and connects to the control plane.
/// let mesh = mesh_core::Mesh::from_env().await?;
/// let reviews = mesh.target("reviews:9080");
/// let snapshot = reviews.ready().await;
/// println!("{} virtual hosts", snapshot.routes.virtual_hosts.len());
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Mesh {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    bootstrap: Arc<Bootstrap>,
    source: Source,
    targets: ArcSwap<HashMap<Arc<str>, Target>>,
    cluster_targets: ArcSwap<HashMap<Arc<str>, Target>>,
    certificates: HashMap<String, CertificateProvider>,
    extensions: ArcSwap<Vec<Arc<dyn Any + Send + Sync>>>,
    serve_without_inbound_policy: bool,
}

impl Mesh {
    /// A builder.
    pub fn builder() -> MeshBuilder {
        MeshBuilder::default()
    }

    /// Builds from `GRPC_XDS_BOOTSTRAP` / `GRPC_XDS_BOOTSTRAP_CONFIG`.
    pub async fn from_env() -> Result<Self, Error> {
        Self::builder().bootstrap_from_env()?.build().await
    }

    /// The bootstrap in use (an empty one in static mode).
    pub fn bootstrap(&self) -> &Bootstrap {
        &self.inner.bootstrap
    }

    /// The xDS client, unless the mesh runs on static configuration.
    pub fn xds_client(&self) -> Option<&XdsClient> {
        match &self.inner.source {
            Source::Ads(c) => Some(c),
            Source::Static(_) => None,
        }
    }

    /// The target for a client authority such as `reviews:9080` (the listener name comes from
    /// the bootstrap's `client_default_listener_resource_name_template`). The first call starts
    /// watching it; later calls return the same handle.
    pub fn target(&self, authority: &str) -> Target {
        if let Some(t) = self.inner.targets.load().get(authority) {
            return t.clone();
        }
        let listener: Arc<str> = self.inner.bootstrap.client_listener_name(authority).into();
        let mut result = None;
        // Rare (once per authority): copy-on-write keeps the lookup above lock-free. Should a
        // race run this twice, the losing target is dropped and its task ends.
        self.inner.targets.rcu(|map| {
            let mut map = HashMap::clone(map);
            let t = map
                .entry(Arc::from(authority))
                .or_insert_with(|| Target::spawn(self.inner.source.clone(), listener.clone()))
                .clone();
            result = Some(t);
            map
        });
        result.expect("rcu ran at least once")
    }

    /// A target that sends every request to the cluster named `cluster`, whatever the
    /// request's authority: how a filter's own requests reach the cluster their configuration
    /// names (a remote JWKS' `http_uri.cluster`, an authorization service's cluster), as
    /// Envoy's asynchronous client sends them. A cluster that does not exist makes its requests
    /// fail (503 `NC`); nothing falls back to routing by authority. The first call starts
    /// watching the cluster; later calls return the same handle.
    pub fn cluster_target(&self, cluster: &str) -> Target {
        if let Some(t) = self.inner.cluster_targets.load().get(cluster) {
            return t.clone();
        }
        let mut result = None;
        // Rare (once per cluster), as in `target`.
        self.inner.cluster_targets.rcu(|map| {
            let mut map = HashMap::clone(map);
            let t = map
                .entry(Arc::from(cluster))
                .or_insert_with(|| {
                    Target::spawn_cluster(self.inner.source.clone(), Arc::from(cluster))
                })
                .clone();
            result = Some(t);
            map
        });
        result.expect("rcu ran at least once")
    }

    /// A certificate provider instance by its bootstrap name (gRFC A29; istio-agent's is
    /// `default`), or one given to [`MeshBuilder::certificate_provider`].
    pub fn certificate_provider(&self, instance: &str) -> Option<&CertificateProvider> {
        self.inner.certificates.get(instance)
    }

    /// Watches one listener resource by name, such as a server's inbound listener
    /// (`xds.istio.io/grpc/lds/inbound/0.0.0.0:9080`, from the bootstrap's
    /// `server_listener_resource_name_template`).
    pub async fn watch_listener(&self, name: &str) -> Result<ResourceWatch, ClientStopped> {
        self.inner.source.watch(ResourceType::Listener, name).await
    }

    /// State that another crate keeps with this mesh, one value per type (mesh-tower keeps its
    /// telemetry here, so every client and server of the mesh reports to the same place).
    /// The first call for a type stores what `init` makes; later calls return that value.
    ///
    /// ```
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// # let mesh = mesh_core::Mesh::builder().static_resources(mesh_core::StaticResources::default()).build().await?;
    /// struct Counter(std::sync::atomic::AtomicU32);
    /// let a = mesh.extension(|| Counter(0.into()));
    /// let b = mesh.extension(|| Counter(7.into()));
    /// assert!(std::sync::Arc::ptr_eq(&a, &b));
    /// # Ok(()) }
    /// ```
    pub fn extension<T: Any + Send + Sync>(&self, init: impl FnOnce() -> T) -> Arc<T> {
        let find = |list: &Vec<Arc<dyn Any + Send + Sync>>| {
            list.iter().find_map(|e| e.clone().downcast::<T>().ok())
        };
        if let Some(found) = find(&self.inner.extensions.load()) {
            return found;
        }
        let made: Arc<dyn Any + Send + Sync> = Arc::new(init());
        // Rare (once per type): copy-on-write keeps the lookup above lock-free.
        self.inner.extensions.rcu(|list| {
            let mut list = Vec::clone(list);
            if find(&list).is_none() {
                list.push(made.clone());
            }
            list
        });
        find(&self.inner.extensions.load()).expect("stored above")
    }

    /// Whether this mesh's servers may serve without an inbound listener (plaintext, no
    /// policy) when the bootstrap names none: only when asked with
    /// [`DangerousMeshBuilder::serve_without_inbound_policy`].
    pub fn serves_without_inbound_policy(&self) -> bool {
        self.inner.serve_without_inbound_policy
    }

    /// Every subscribed resource and its state (in static mode, every resource).
    pub async fn dump(&self) -> Result<Vec<ResourceDump>, ClientStopped> {
        match &self.inner.source {
            Source::Ads(c) => c.dump().await,
            Source::Static(s) => Ok(s.dump()),
        }
    }
}

/// Builds a [`Mesh`]. Defaults: no bootstrap, no static resources (one of them is required),
/// [`XdsClientConfig::default`].
#[derive(Debug, Default)]
#[must_use]
pub struct MeshBuilder {
    bootstrap: Option<Bootstrap>,
    static_resources: Option<StaticResources>,
    xds: XdsClientConfig,
    certificates: HashMap<String, CertificateProvider>,
    serve_without_inbound_policy: bool,
    strict_fields: bool,
}

impl MeshBuilder {
    /// Switches that give up a guarantee of the mesh, for tests and local experiments.
    pub fn dangerous(self) -> DangerousMeshBuilder {
        DangerousMeshBuilder(self)
    }

    /// Uses this bootstrap.
    pub fn bootstrap(mut self, b: Bootstrap) -> Self {
        self.bootstrap = Some(b);
        self
    }

    /// Reads the bootstrap from the environment.
    pub fn bootstrap_from_env(self) -> Result<Self, BootstrapError> {
        Ok(self.bootstrap(Bootstrap::from_env()?))
    }

    /// Reads the bootstrap from a file.
    pub fn bootstrap_file(self, path: impl Into<PathBuf>) -> Result<Self, BootstrapError> {
        Ok(self.bootstrap(Bootstrap::from_file(path)?))
    }

    /// Serves these resources instead of connecting to a control plane.
    pub fn static_resources(mut self, r: StaticResources) -> Self {
        self.static_resources = Some(r);
        self
    }

    /// Loads static resources from a JSON or YAML file.
    pub fn static_file(self, path: impl AsRef<std::path::Path>) -> Result<Self, StaticConfigError> {
        Ok(self.static_resources(StaticResources::from_file(path)?))
    }

    /// Uses `provider` for certificate provider instance `name`, in place of (or besides) the
    /// bootstrap's: an in-memory identity for tests or for processes that manage their own.
    pub fn certificate_provider(mut self, name: &str, provider: CertificateProvider) -> Self {
        self.certificates.insert(name.to_owned(), provider);
        self
    }

    /// xDS client tunables.
    pub fn xds_config(mut self, c: XdsClientConfig) -> Self {
        self.xds = c;
        self
    }

    /// Strict field accounting: a resource that sets a field this client does not apply,
    /// where Envoy would treat traffic differently, is refused instead of served without it
    /// (NACKed with the field's path over xDS; a [`build`](Self::build) error for static
    /// resources). See [`crate::xds::fields`] and `docs/xds-support.md`.
    ///
    /// ```
    /// # async fn run() -> Result<(), mesh_core::Error> {
    /// let mesh = mesh_core::Mesh::builder()
    ///     .static_file("mesh.yaml")?
    ///     .strict_fields()
    ///     .build()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn strict_fields(mut self) -> Self {
        self.strict_fields = true;
        self
    }

    /// Starts the mesh on the current Tokio runtime. The bootstrap's `file_watcher`
    /// certificate providers read their files here: unusable certificates fail the build.
    pub async fn build(mut self) -> Result<Mesh, Error> {
        let bootstrap = Arc::new(match self.bootstrap {
            Some(b) => b,
            None => Bootstrap::from_json("{}")?,
        });
        for (name, config) in &bootstrap.certificate_providers {
            if self.certificates.contains_key(name) {
                continue;
            }
            if let CertificateProviderConfig::FileWatcher {
                certificate_file,
                private_key_file,
                ca_certificate_file,
                spiffe_trust_bundle_map_file,
                refresh_interval,
            } = config
            {
                let provider = CertificateProvider::file_watcher_with_bundle_map(
                    name,
                    certificate_file.as_deref(),
                    private_key_file.as_deref(),
                    ca_certificate_file.as_deref(),
                    spiffe_trust_bundle_map_file.as_deref(),
                    *refresh_interval,
                )
                .await
                .map_err(|source| Error::Certificates {
                    name: name.clone(),
                    source,
                })?;
                self.certificates.insert(name.clone(), provider);
            }
        }
        self.xds.strict_fields |= self.strict_fields;
        let source = match self.static_resources {
            Some(r) if self.strict_fields => Source::Static(Arc::new(r.strict()?)),
            Some(r) => Source::Static(Arc::new(r)),
            None if !bootstrap.xds_servers.is_empty() => {
                Source::Ads(XdsClient::start(bootstrap.clone(), self.xds))
            }
            None => return Err(Error::NoSource),
        };
        Ok(Mesh {
            inner: Arc::new(Inner {
                bootstrap,
                source,
                targets: ArcSwap::default(),
                cluster_targets: ArcSwap::default(),
                certificates: self.certificates,
                extensions: ArcSwap::default(),
                serve_without_inbound_policy: self.serve_without_inbound_policy,
            }),
        })
    }
}

/// [`MeshBuilder`] switches that weaken what the mesh guarantees, each named for what it gives
/// up (the pattern of rustls's `dangerous()`).
#[derive(Debug)]
#[must_use]
pub struct DangerousMeshBuilder(MeshBuilder);

impl DangerousMeshBuilder {
    /// Lets this mesh's servers serve plaintext with no policy at all (no mTLS, no
    /// authorization, no path normalization) when the bootstrap has no
    /// `server_listener_resource_name_template`, instead of refusing to serve. For local
    /// experiments and tests without a control plane.
    ///
    /// ```
    /// # async fn run() -> Result<(), mesh_core::Error> {
    /// let mesh = mesh_core::Mesh::builder()
    ///     .static_resources(mesh_core::StaticResources::default())
    ///     .dangerous()
    ///     .serve_without_inbound_policy()
    ///     .build()
    ///     .await?;
    /// assert!(mesh.serves_without_inbound_policy());
    /// # Ok(()) }
    /// ```
    pub fn serve_without_inbound_policy(mut self) -> MeshBuilder {
        self.0.serve_without_inbound_policy = true;
        self.0
    }
}
