//! The outbound data path: [`MeshClient`].

mod attempt;
mod cluster;
mod hedge;
pub(crate) mod host;
mod passthrough;
mod policy;
mod registry;
mod route;
mod router;
mod stack;
mod target;
mod tls;
mod upstream;

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::{Request, Response, StatusCode};
use http_body::Body;
use mesh_core::Mesh;
use tokio::sync::watch;

pub use crate::counters::RetryBudget;
pub use registry::clusters;

/// Marks a request the mesh itself sends over `https` (a JWKS fetch): the cluster it is sent
/// to must originate TLS or the request is refused (503 `UF`). Never sent in plaintext.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RequireTls;

use crate::FastMap;
use crate::body::{BoxError, DEFAULT_REPLAY_CAP, RspBody};
use crate::error::Error;
use crate::flags::ResponseFlags;
use crate::respond::{self, ResponseInfo};
use crate::telemetry::metrics::{Labels, Security};
use crate::telemetry::{Side, Telemetry, Watch};
use cluster::ClusterStore;
use target::{Plan, TargetRuntime};

/// What happens to requests for hosts the mesh does not know (Istio's
/// `meshConfig.outboundTrafficPolicy.mode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OutboundTrafficPolicy {
    /// Connect to the host directly, outside the mesh (Istio's default).
    #[default]
    AllowAny,
    /// Refuse: 502 with response flag `NR`.
    RegistryOnly,
}

/// The outbound side of the mesh: a [`tower::Service`] that sends each request to the service
/// named by its authority, as an Envoy sidecar would: routing, traffic splitting, fault
/// injection, timeouts, retries with a budget, circuit breaking, outlier detection and load
/// balancing, all configured by the mesh's xDS (or static) resources.
///
/// Cheap to clone; clones share connection pools, circuit breakers and host state. Local
/// failures are answered the way Envoy answers them (503 `no healthy upstream`, 504 `upstream
/// request timeout`, …) and every response carries a [`ResponseInfo`] with Envoy's response
/// flags. Only requests that cannot be routed at all (no authority, no configuration in time)
/// fail with an [`Error`].
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use http_body_util::Empty;
/// use tower::ServiceExt;
///
/// let mesh = mesh_core::Mesh::from_env().await?;
/// let client = mesh_tower::MeshClient::new(&mesh);
/// let req = http::Request::get("http://reviews:9080/reviews/0").body(Empty::<bytes::Bytes>::new())?;
/// let rsp = client.oneshot(req).await?;
/// let info = mesh_tower::ResponseInfo::of(&rsp).expect("always set");
/// println!("{} from {:?} in {} attempt(s), flags {}", rsp.status(), info.upstream, info.attempts, info.flags);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct MeshClient {
    inner: Arc<Outbound>,
}

/// Builds a [`MeshClient`].
#[derive(Debug)]
#[must_use]
pub struct MeshClientBuilder {
    mesh: Mesh,
    config: ClientConfig,
}

#[derive(Clone, Debug)]
pub(crate) struct ClientConfig {
    pub(crate) outbound_traffic_policy: OutboundTrafficPolicy,
    pub(crate) ready_timeout: Duration,
    pub(crate) replay_cap: usize,
    pub(crate) retry_budget: Option<RetryBudget>,
    pub(crate) source_ip: Option<IpAddr>,
}

impl MeshClientBuilder {
    /// Istio's outbound traffic policy for hosts the mesh does not know. Default: `AllowAny`.
    pub fn outbound_traffic_policy(mut self, p: OutboundTrafficPolicy) -> Self {
        self.config.outbound_traffic_policy = p;
        self
    }

    /// How long a request waits for its target's first configuration before failing with
    /// [`Error::NotReady`]. Default: 10 s.
    pub fn ready_timeout(mut self, d: Duration) -> Self {
        self.config.ready_timeout = d;
        self
    }

    /// How many request body bytes are kept so a request can be retried or mirrored; larger
    /// bodies are streamed and not retried. Default: 64 KiB.
    pub fn replay_cap(mut self, bytes: usize) -> Self {
        self.config.replay_cap = bytes;
        self
    }

    /// The client-wide retry budget, or `None` to rely on each cluster's circuit breakers
    /// alone. Default: [`RetryBudget::default`] (20 %, at least 3).
    pub fn retry_budget(mut self, b: Option<RetryBudget>) -> Self {
        self.config.retry_budget = b;
        self
    }

    /// The address hashed by `source_ip` hash policies (Envoy uses the downstream peer; an
    /// in-process client has none, so it is this process's address). Default: none, and such
    /// policies produce no hash.
    pub fn source_ip(mut self, ip: IpAddr) -> Self {
        self.config.source_ip = Some(ip);
        self
    }

    /// Builds the client. Must run inside a Tokio runtime.
    pub fn build(self) -> MeshClient {
        let (shutdown, _) = watch::channel(());
        let telemetry = Telemetry::of(&self.mesh);
        let inner = Arc::new(Outbound {
            mesh: self.mesh,
            config: self.config,
            targets: ArcSwap::default(),
            cluster_targets: ArcSwap::default(),
            clusters: ClusterStore::default(),
            passthrough: passthrough::Passthrough::default(),
            telemetry: telemetry.clone(),
            labels: ArcSwap::default(),
            shutdown,
        });
        registry::Clients::of(&inner.mesh).register(&inner);
        MeshClient { inner }
    }
}

/// What telemetry keeps of a request once it is sent, for its labels: cheap copies (the
/// authority's bytes are shared, not copied).
struct Seen {
    authority: Option<http::uri::Authority>,
    host: Option<http::HeaderValue>,
}

impl Seen {
    fn of<B>(req: &Request<B>) -> Self {
        Self {
            authority: req.uri().authority().cloned(),
            host: req.headers().get(http::header::HOST).cloned(),
        }
    }

    fn authority(&self) -> &str {
        self.authority
            .as_ref()
            .map(|a| a.as_str())
            .or_else(|| self.host.as_ref().and_then(|h| h.to_str().ok()))
            .unwrap_or("")
    }
}

/// The shared state behind every clone of a [`MeshClient`].
#[derive(Debug)]
pub(crate) struct Outbound {
    pub(crate) mesh: Mesh,
    pub(crate) config: ClientConfig,
    targets: ArcSwap<FastMap<Arc<str>, Arc<TargetRuntime>>>,
    /// Targets that send every request to one cluster ([`MeshClient::send_to_cluster`]).
    cluster_targets: ArcSwap<FastMap<Arc<str>, Arc<TargetRuntime>>>,
    pub(crate) clusters: ClusterStore,
    passthrough: passthrough::Passthrough,
    telemetry: Arc<Telemetry>,
    /// Metric label sets by cluster (or, for requests no cluster took, by authority).
    labels: ArcSwap<FastMap<Box<str>, Arc<Labels>>>,
    /// Dropped with the client: the targets' tasks end.
    shutdown: watch::Sender<()>,
}

impl MeshClient {
    /// A client with the default settings.
    pub fn new(mesh: &Mesh) -> Self {
        Self::builder(mesh).build()
    }

    /// A builder.
    pub fn builder(mesh: &Mesh) -> MeshClientBuilder {
        MeshClientBuilder {
            mesh: mesh.clone(),
            config: ClientConfig {
                outbound_traffic_policy: OutboundTrafficPolicy::AllowAny,
                ready_timeout: Duration::from_secs(10),
                replay_cap: DEFAULT_REPLAY_CAP,
                retry_budget: Some(RetryBudget::default()),
                source_ip: None,
            },
        }
    }

    /// Sends one request (the same as `oneshot` on a clone).
    pub async fn send<B>(&self, req: Request<B>) -> Result<Response<RspBody>, Error>
    where
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        self.inner.clone().handle(req, None).await
    }

    /// Sends one request to the cluster named `cluster`, whatever its authority, with that
    /// cluster's balancing, circuit breaking, outlier detection and TLS, and no route policy:
    /// how Envoy's filters reach the cluster their configuration names (a remote JWKS'
    /// `http_uri.cluster`). The request keeps its authority (the upstream's `Host`). A cluster
    /// that does not exist answers 503 with response flag `NC`.
    ///
    /// ```no_run
    /// # async fn run(client: mesh_tower::MeshClient) -> Result<(), Box<dyn std::error::Error>> {
    /// let req = http::Request::get("http://idp.example.com/keys")
    ///     .body(http_body_util::Empty::<bytes::Bytes>::new())?;
    /// let rsp = client.send_to_cluster("outbound|80||idp.example.com", req).await?;
    /// # Ok(()) }
    /// ```
    pub async fn send_to_cluster<B>(
        &self,
        cluster: &str,
        req: Request<B>,
    ) -> Result<Response<RspBody>, Error>
    where
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        self.inner.clone().handle(req, Some(cluster)).await
    }
}

/// Remote key sets (`remote_jwks`) are fetched through the mesh, from the provider's cluster.
impl crate::rules::FetchJwks for MeshClient {
    fn fetch(
        &self,
        cluster: Arc<str>,
        mut req: Request<http_body_util::Empty<bytes::Bytes>>,
        tls: bool,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Response<RspBody>, BoxError>> + Send>,
    > {
        if tls {
            req.extensions_mut().insert(RequireTls);
        }
        let client = self.clone();
        Box::pin(async move {
            client
                .send_to_cluster(&cluster, req)
                .await
                .map_err(BoxError::from)
        })
    }
}

impl Outbound {
    /// The live plan of the target `key` in `map`, started by `make` the first time.
    fn runtime(
        self: &Arc<Self>,
        map: &ArcSwap<FastMap<Arc<str>, Arc<TargetRuntime>>>,
        key: &str,
        make: impl Fn() -> mesh_core::Target,
    ) -> Arc<TargetRuntime> {
        if let Some(t) = map.load().get(key) {
            return t.clone();
        }
        let mut found = None;
        // Rare (once per target); copy-on-write keeps the lookup above lock-free.
        map.rcu(|map| {
            if let Some(t) = map.get(key) {
                found = Some(t.clone());
                return Arc::clone(map);
            }
            let mut map = FastMap::clone(map);
            let t = TargetRuntime::spawn(Arc::downgrade(self), make(), self.shutdown.subscribe());
            map.insert(Arc::from(key), t.clone());
            found = Some(t);
            Arc::new(map)
        });
        found.expect("rcu ran")
    }

    /// `cluster`: send to that cluster ([`MeshClient::send_to_cluster`]); `None`: route by
    /// the request's authority.
    async fn handle<B>(
        self: Arc<Self>,
        mut req: Request<B>,
        cluster: Option<&str>,
    ) -> Result<Response<RspBody>, Error>
    where
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let mut watch = Watch::begin(
            &self.telemetry,
            Side::Client,
            &mut req,
            std::time::Instant::now(),
            |_| {},
            || None,
        );
        let seen = Seen::of(&req);
        let rsp = self.clone().dispatch(req, cluster).await?;
        Ok(self.observe(seen, &mut watch, rsp))
    }

    async fn dispatch<B>(
        self: Arc<Self>,
        req: Request<B>,
        cluster: Option<&str>,
    ) -> Result<Response<RspBody>, Error>
    where
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let rt = match (cluster, route::authority(&req)) {
            (Some(c), _) => self.runtime(&self.cluster_targets, c, || self.mesh.cluster_target(c)),
            (None, Some(a)) => self.runtime(&self.targets, &a, || self.mesh.target(&a)),
            (None, None) => return Err(Error::NoAuthority),
        };
        let plan = match rt.plan() {
            Some(p) => p,
            None => rt
                .wait(self.config.ready_timeout)
                .await
                .ok_or_else(|| Error::NotReady {
                    authority: route::authority(&req).unwrap_or_default().into_owned(),
                    waited: self.config.ready_timeout,
                })?,
        };
        if let Plan::Routes(p) = &*plan {
            return Ok(router::forward(&self, p, req).await);
        }
        let authority = route::authority(&req).unwrap_or_default().into_owned();
        let grpc = respond::is_grpc(req.headers());
        Ok(match &*plan {
            Plan::Routes(_) => unreachable!("handled above"),
            Plan::Unknown(_)
                if self.config.outbound_traffic_policy == OutboundTrafficPolicy::AllowAny =>
            {
                self.passthrough.forward(&authority, req).await
            }
            Plan::Unknown(why) => respond::local(
                StatusCode::BAD_GATEWAY,
                format!(
                    "host {authority} is not in the mesh registry and the outbound traffic policy is REGISTRY_ONLY ({why})"
                ),
                grpc,
                ResponseInfo {
                    flags: ResponseFlags::NO_ROUTE_FOUND,
                    ..ResponseInfo::default()
                },
            ),
            Plan::Failed(why) => respond::local(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("no configuration for {authority}: {why}"),
                grpc,
                ResponseInfo {
                    flags: ResponseFlags::NO_ROUTE_FOUND,
                    ..ResponseInfo::default()
                },
            ),
        })
    }
}

impl<B> tower::Service<Request<B>> for MeshClient
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Response = Response<RspBody>;
    type Error = Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<RspBody>, Error>> + Send>>;

    /// Always ready: like Envoy, the client sheds load per cluster (circuit breakers answer at
    /// once) rather than applying backpressure to every destination at once.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        Box::pin(self.inner.clone().handle(req, None))
    }
}

impl Outbound {
    /// The metric labels of requests that went to `cluster` (or reached `authority`).
    fn labels(&self, cluster: Option<&str>, authority: &str) -> Arc<Labels> {
        let key = cluster.unwrap_or(authority);
        if let Some(l) = self.labels.load().get(key) {
            return l.clone();
        }
        let made = self.telemetry.outbound_labels(cluster, authority);
        // Rare (once per cluster): copy-on-write keeps the lookup above lock-free.
        self.labels.rcu(|map| {
            let mut map = FastMap::clone(map);
            map.insert(key.into(), made.clone());
            map
        });
        made
    }

    /// Has telemetry observe a response until its body ends.
    fn observe(
        &self,
        seen: Seen,
        watch: &mut Watch,
        mut rsp: Response<RspBody>,
    ) -> Response<RspBody> {
        let (flags, cluster, upstream) = ResponseInfo::of(&rsp)
            .map_or((ResponseFlags::NONE, None, None), |i| {
                (i.flags, i.cluster.clone(), i.upstream)
            });
        let labels = self.labels(cluster.as_deref(), seen.authority());
        let exchange = watch.answer(
            labels,
            rsp.status(),
            rsp.headers(),
            flags,
            Security::Unknown,
            Some((cluster, upstream)),
        );
        rsp.body_mut().observe(exchange);
        rsp
    }
}
