//! Two tonic services calling each other over `xds:///` with mutual TLS.
//!
//! `front` and `back` both serve `hello.Greeter/SayHello`. `front` answers by asking `back`,
//! through `mesh_grpc::channel(&mesh, "xds:///back:50051")`; both serve with
//! `mesh_grpc::Server`. mesh-control runs in-process on `mesh.yaml` (STRICT mTLS, and an
//! AuthorizationPolicy that lets only `front` call `back`), and a development CA gives each
//! workload its SPIFFE certificate, as istiod would. Each answer says who called whom, as
//! the mesh verified it from the peer's certificate.
//!
//! Run: `cargo run -p mesh-examples --bin grpc-hello`
//!
//! ```text
//! client → front: front heard "world" from spiffe://cluster.local/ns/default/sa/client; back says: hello world, spiffe://cluster.local/ns/default/sa/front
//! client → back: PermissionDenied: RBAC: access denied
//! ```

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use mesh_control::dev::{DevCa, WorkloadBootstrap};
use mesh_core::{Bootstrap, Mesh};
use mesh_tower::server::PeerIdentity;
use tonic::{Request, Response, Status};

use hello::{Greeter, GreeterServer, HelloReply, HelloRequest};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // `RUST_LOG=info` (or `debug`) shows what the mesh does.
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let config = tempfile::tempdir()?;
    let certs = tempfile::tempdir()?;
    // Both ports first: the registry names them before anything serves.
    let front_port = std::net::TcpListener::bind("127.0.0.1:0")?;
    let back_port = std::net::TcpListener::bind("127.0.0.1:0")?;
    std::fs::write(config.path().join("mesh.yaml"), include_str!("mesh.yaml"))?;
    std::fs::write(
        config.path().join("workloads.yaml"),
        workload_entries(&[
            ("front", front_port.local_addr()?),
            ("back", back_port.local_addr()?),
        ]),
    )?;

    // The control plane (istiod's part): xDS from the YAML, and a CA.
    let cp = Arc::new(
        mesh_control::control::ControlPlane::new(config.path())
            .map_err(|d| anyhow::anyhow!("{d:?}"))?,
    );
    let ads = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let xds = ads.local_addr()?;
    tokio::spawn(cp.clone().serve_tcp(ads));
    let ca = DevCa::new("grpc-hello root")?;
    let mesh = |name: &'static str| workload_mesh(&ca, certs.path(), xds, name);

    // back: says hello to whoever asks.
    let back_mesh = mesh("back").await?;
    let back = GreeterServer::new(Back);
    let server = mesh_grpc::Server::builder(&back_mesh).add_service(back);
    tokio::spawn(server.serve_listener_with_shutdown(listener(back_port)?, std::future::pending()));

    // front: asks back, over xds:/// with mTLS, and says what it heard.
    let front_mesh = mesh("front").await?;
    let to_back = mesh_grpc::channel(&front_mesh, "xds:///back:50051")?;
    let front = GreeterServer::new(Front { back: to_back });
    let server = mesh_grpc::Server::builder(&front_mesh).add_service(front);
    tokio::spawn(
        server.serve_listener_with_shutdown(listener(front_port)?, std::future::pending()),
    );

    // A third workload calls both.
    let client_mesh = mesh("client").await?;
    for target in ["front", "back"] {
        let channel = mesh_grpc::channel(&client_mesh, &format!("xds:///{target}:50051"))?;
        let req = HelloRequest {
            name: "world".into(),
        };
        let answer = call_until_served(channel, req).await;
        match answer {
            Ok(rsp) => println!("client → {target}: {}", rsp.into_inner().message),
            Err(s) => println!("client → {target}: {:?}: {}", s.code(), s.message()),
        }
    }
    Ok(())
}

/// Calls `SayHello`, waiting out the first moments when the servers may not have their
/// inbound listeners yet (gRFC A36: not serving until then).
async fn call_until_served(
    channel: mesh_grpc::MeshChannel,
    req: HelloRequest,
) -> Result<Response<HelloReply>, Status> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let got = hello::say_hello(channel.clone(), Request::new(req.clone())).await;
        match &got {
            Err(s)
                if s.code() == tonic::Code::Unavailable
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            _ => return got,
        }
    }
}

/// `back`'s greeter.
struct Back;

impl Greeter for Back {
    async fn say_hello(&self, req: Request<HelloRequest>) -> Result<Response<HelloReply>, Status> {
        let caller = caller(&req);
        Ok(Response::new(HelloReply {
            message: format!("hello {}, {caller}", req.get_ref().name),
        }))
    }
}

/// `front`'s greeter: asks `back`.
struct Front {
    back: mesh_grpc::MeshChannel,
}

impl Greeter for Front {
    async fn say_hello(&self, req: Request<HelloRequest>) -> Result<Response<HelloReply>, Status> {
        let caller = caller(&req);
        let name = req.into_inner().name;
        let ask = HelloRequest { name: name.clone() };
        let back = hello::say_hello(self.back.clone(), Request::new(ask)).await?;
        Ok(Response::new(HelloReply {
            message: format!(
                "front heard {name:?} from {caller}; back says: {}",
                back.into_inner().message
            ),
        }))
    }
}

/// Who called, as the mesh verified it (the peer certificate's SPIFFE ID).
fn caller<T>(req: &Request<T>) -> String {
    match req.extensions().get::<PeerIdentity>() {
        Some(PeerIdentity {
            spiffe_id: Some(id),
            ..
        }) => id.to_string(),
        Some(p) => format!("{} (no certificate)", p.addr),
        None => "unknown".into(),
    }
}

/// The workload `name`'s mesh: its certificate from the CA, and the bootstrap istio-agent
/// would write (service account = name).
async fn workload_mesh(
    ca: &DevCa,
    certs: &Path,
    xds: SocketAddr,
    name: &str,
) -> anyhow::Result<Mesh> {
    let dir = certs.join(name);
    ca.write_workload_files(
        &format!("spiffe://cluster.local/ns/default/sa/{name}"),
        &dir,
    )?;
    let json = WorkloadBootstrap::new(name, "default", &dir).to_json(xds);
    let bootstrap = Bootstrap::from_json(&json.to_string()).context("bootstrap")?;
    Ok(Mesh::builder().bootstrap(bootstrap).build().await?)
}

/// The registry: one WorkloadEntry per workload at its address.
fn workload_entries(workloads: &[(&str, SocketAddr)]) -> String {
    workloads
        .iter()
        .map(|(name, addr)| {
            format!(
                "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: {name}, namespace: default}}\nspec: {{address: 127.0.0.1, ports: {{grpc: {}}}, labels: {{app: {name}}}, serviceAccount: {name}}}\n---\n",
                addr.port()
            )
        })
        .collect()
}

fn listener(l: std::net::TcpListener) -> std::io::Result<tokio::net::TcpListener> {
    l.set_nonblocking(true)?;
    tokio::net::TcpListener::from_std(l)
}

/// What `tonic-prost-build` generates for
/// `service Greeter { rpc SayHello(HelloRequest) returns (HelloReply); }`, written out so
/// the example builds without protoc. A real service uses the generated `GreeterServer` and
/// `GreeterClient` the same way: `GreeterClient::new(mesh_grpc::channel(..)?)`, and
/// `mesh_grpc::Server::builder(&mesh).add_service(GreeterServer::new(..))`.
mod hello {
    use std::convert::Infallible;
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::Arc;
    use std::task::{Context, Poll};

    use tonic::body::Body;
    use tonic::{Request, Response, Status};

    /// `hello.HelloRequest`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub(crate) struct HelloRequest {
        /// Who to greet.
        #[prost(string, tag = "1")]
        pub(crate) name: String,
    }

    /// `hello.HelloReply`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub(crate) struct HelloReply {
        /// The greeting.
        #[prost(string, tag = "1")]
        pub(crate) message: String,
    }

    const SAY_HELLO: &str = "/hello.Greeter/SayHello";

    /// The client: one unary call over any tonic channel.
    pub(crate) async fn say_hello(
        channel: mesh_grpc::MeshChannel,
        req: Request<HelloRequest>,
    ) -> Result<Response<HelloReply>, Status> {
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let codec = tonic_prost::ProstCodec::<HelloRequest, HelloReply>::default();
        grpc.unary(req, http::uri::PathAndQuery::from_static(SAY_HELLO), codec)
            .await
    }

    /// The service's methods.
    pub(crate) trait Greeter: Send + Sync + 'static {
        fn say_hello(
            &self,
            req: Request<HelloRequest>,
        ) -> impl Future<Output = Result<Response<HelloReply>, Status>> + Send;
    }

    type RspFuture = Pin<Box<dyn Future<Output = Result<http::Response<Body>, Infallible>> + Send>>;

    /// The server: routes `hello.Greeter`'s paths to a [`Greeter`].
    pub(crate) struct GreeterServer<T>(Arc<T>);

    impl<T> GreeterServer<T> {
        pub(crate) fn new(greeter: T) -> Self {
            Self(Arc::new(greeter))
        }
    }

    impl<T> Clone for GreeterServer<T> {
        fn clone(&self) -> Self {
            Self(self.0.clone())
        }
    }

    impl<T> tonic::server::NamedService for GreeterServer<T> {
        const NAME: &'static str = "hello.Greeter";
    }

    impl<T: Greeter> tower::Service<http::Request<Body>> for GreeterServer<T> {
        type Response = http::Response<Body>;
        type Error = Infallible;
        type Future = RspFuture;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, req: http::Request<Body>) -> RspFuture {
            struct SayHello<T>(Arc<T>);
            impl<T: Greeter> tonic::server::UnaryService<HelloRequest> for SayHello<T> {
                type Response = HelloReply;
                type Future =
                    Pin<Box<dyn Future<Output = Result<Response<HelloReply>, Status>> + Send>>;
                fn call(&mut self, req: Request<HelloRequest>) -> Self::Future {
                    let greeter = self.0.clone();
                    Box::pin(async move { greeter.say_hello(req).await })
                }
            }
            let greeter = self.0.clone();
            Box::pin(async move {
                if req.uri().path() != SAY_HELLO {
                    return Ok(Status::unimplemented(req.uri().path().to_owned()).into_http());
                }
                let codec = tonic_prost::ProstCodec::<HelloReply, HelloRequest>::default();
                Ok(tonic::server::Grpc::new(codec)
                    .unary(SayHello(greeter), req)
                    .await)
            })
        }
    }
}
