//! [`Server`]: tonic services behind the mesh's inbound side.

use std::convert::Infallible;
use std::net::SocketAddr;

use tonic::body::Body;
use tonic::server::NamedService;
use tonic::service::Routes;

pub use mesh_tower::server::ServingState;

/// A meshed gRPC server: tonic services served by [`mesh_tower::serve`], so they get the
/// inbound listener the control plane sends (`server_listener_resource_name_template`,
/// gRFC A36: nothing is served before it arrives): STRICT / PERMISSIVE mTLS, the caller's
/// SPIFFE identity in each request's extensions, AuthorizationPolicy, RequestAuthentication,
/// rate limits and telemetry. Local refusals are gRPC statuses (`PERMISSION_DENIED` for
/// RBAC, `UNAUTHENTICATED` for a bad token, `UNAVAILABLE` for a rate limit).
///
/// ```no_run
/// # async fn run(mesh: mesh_core::Mesh) -> Result<(), Box<dyn std::error::Error>> {
/// # let ratings = tonic::service::Routes::default();
/// mesh_grpc::Server::builder(&mesh)
///     // .add_service(RatingsServer::new(ratings))   // any tonic-generated server
///     .serve("0.0.0.0:9080".parse()?)
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
#[must_use = "a server does nothing until `serve` is awaited"]
pub struct Server {
    mesh: mesh_core::Mesh,
    routes: Routes,
    state: tokio::sync::watch::Sender<ServingState>,
}

impl Server {
    /// A server for `mesh`, with no services yet.
    pub fn builder(mesh: &mesh_core::Mesh) -> Self {
        Self {
            mesh: mesh.clone(),
            routes: Routes::default(),
            state: tokio::sync::watch::channel(ServingState::Starting).0,
        }
    }

    /// The server's serving state as it changes (gRFC A36's serving-state callback):
    /// [`ServingState::NotServing`] says why, for example that the control plane has no
    /// inbound listener for the port. Take it before `serve`.
    ///
    /// ```no_run
    /// # async fn run(mesh: mesh_core::Mesh) -> Result<(), Box<dyn std::error::Error>> {
    /// let server = mesh_grpc::Server::builder(&mesh);
    /// let mut state = server.serving_state();
    /// tokio::spawn(async move {
    ///     while state.changed().await.is_ok() {
    ///         println!("{:?}", *state.borrow());
    ///     }
    /// });
    /// server.serve("0.0.0.0:9080".parse()?).await?;
    /// # Ok(()) }
    /// ```
    pub fn serving_state(&self) -> tokio::sync::watch::Receiver<ServingState> {
        self.state.subscribe()
    }

    /// Adds a tonic service (a generated `…Server`).
    pub fn add_service<S>(mut self, svc: S) -> Self
    where
        S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        self.routes = self.routes.add_service(svc);
        self
    }

    /// Serves on `addr` until an error.
    pub async fn serve(self, addr: SocketAddr) -> Result<(), mesh_tower::server::ServeError> {
        self.serve_with_shutdown(addr, std::future::pending()).await
    }

    /// Serves on `addr` until `signal` completes, then drains gracefully: new connections
    /// are refused, open ones get an HTTP/2 GOAWAY, RPCs already started finish (see
    /// [`mesh_tower::serve_with_shutdown`]). Like tonic's `serve_with_shutdown`.
    ///
    /// ```no_run
    /// # async fn run(mesh: mesh_core::Mesh) -> Result<(), Box<dyn std::error::Error>> {
    /// mesh_grpc::Server::builder(&mesh)
    ///     // .add_service(RatingsServer::new(ratings))
    ///     .serve_with_shutdown("0.0.0.0:9080".parse()?, async {
    ///         let _ = tokio::signal::ctrl_c().await;
    ///     })
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn serve_with_shutdown(
        self,
        addr: SocketAddr,
        signal: impl Future<Output = ()>,
    ) -> Result<(), mesh_tower::server::ServeError> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| mesh_tower::server::ServeError::Bind { addr, source })?;
        self.serve_listener_with_shutdown(listener, signal).await
    }

    /// [`Server::serve_with_shutdown`] on a socket already bound.
    pub async fn serve_listener_with_shutdown(
        self,
        listener: tokio::net::TcpListener,
        signal: impl Future<Output = ()>,
    ) -> Result<(), mesh_tower::server::ServeError> {
        let app = self.routes.prepare();
        mesh_tower::server::serve_observed(&self.mesh, listener, app, signal, self.state).await
    }
}
