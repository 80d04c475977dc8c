//! The application server of a scenario, in its own process pinned to the server's CPU: hyper
//! or tonic, bare or behind the mesh's inbound side. It answers `ok` (or an empty
//! `CheckResponse`), failing `fail_per_mille` of the requests with 503 for `faulty`.
//!
//! It prints `READY` once it is serving, then answers each `cpu` line on stdin with
//! `CPU <µs>`, its own CPU time so far, and exits when stdin closes.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use envoy_types::pb::envoy::service::auth::v3::authorization_server::{
    Authorization, AuthorizationServer,
};
use envoy_types::pb::envoy::service::auth::v3::{CheckRequest, CheckResponse};
use http_body_util::Full;
use tokio::io::AsyncBufReadExt;

use crate::scenario::Scenario;

/// What the server process is told.
pub(crate) struct ServerArgs {
    pub(crate) scenario: Scenario,
    pub(crate) ports: Vec<u16>,
    pub(crate) bootstrap: Option<std::path::PathBuf>,
    pub(crate) otlp: Option<SocketAddr>,
}

fn answer(fail_per_mille: u32) -> http::Response<Full<Bytes>> {
    if fail_per_mille > 0 && fastrand::u32(0..1000) < fail_per_mille {
        let mut rsp = http::Response::new(Full::new(Bytes::from_static(b"unavailable")));
        *rsp.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
        return rsp;
    }
    http::Response::new(Full::new(Bytes::from_static(b"ok")))
}

#[derive(Clone, Copy)]
struct Check;

#[tonic::async_trait]
impl Authorization for Check {
    async fn check(
        &self,
        _req: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        Ok(tonic::Response::new(CheckResponse::default()))
    }
}

/// Serves until stdin closes.
pub(crate) async fn run(args: ServerArgs) {
    start(&args).await;
    println!("READY");
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if line.trim() == "cpu" {
            println!("CPU {}", crate::sys::own_cpu().as_micros());
        }
    }
}

/// Starts serving, in tasks of the current runtime.
pub(crate) async fn start(args: &ServerArgs) {
    let s = args.scenario;
    let addrs: Vec<SocketAddr> = args
        .ports
        .iter()
        .map(|p| SocketAddr::from(([127, 0, 0, 1], *p)))
        .collect();
    let mesh = match &args.bootstrap {
        Some(path) => Some(crate::client::mesh(path, s.sampling, args.otlp).await),
        None => None,
    };
    for addr in addrs {
        match (&mesh, s.grpc) {
            (Some(mesh), true) => {
                let server =
                    mesh_grpc::Server::builder(mesh).add_service(AuthorizationServer::new(Check));
                tokio::spawn(async move { server.serve(addr).await.expect("meshed gRPC server") });
            }
            (Some(mesh), false) => {
                let (mesh, fail) = (mesh.clone(), s.fail_per_mille);
                let app = tower::service_fn(
                    move |_req: http::Request<hyper::body::Incoming>| async move {
                        Ok::<_, Infallible>(answer(fail))
                    },
                );
                tokio::spawn(async move {
                    mesh_tower::serve(&mesh, addr, app)
                        .await
                        .expect("meshed server")
                });
            }
            (None, true) => {
                let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
                let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
                tokio::spawn(
                    tonic::transport::Server::builder()
                        .add_service(AuthorizationServer::new(Check))
                        .serve_with_incoming(incoming),
                );
            }
            (None, false) => {
                let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
                tokio::spawn(serve_hyper(listener, s.fail_per_mille));
            }
        }
    }
}

async fn serve_hyper(listener: tokio::net::TcpListener, fail_per_mille: u32) {
    while let Ok((tcp, _)) = listener.accept().await {
        let _ = tcp.set_nodelay(true);
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |_req| async move {
                Ok::<_, Infallible>(answer(fail_per_mille))
            });
            let _ =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                    .await;
        });
    }
}
