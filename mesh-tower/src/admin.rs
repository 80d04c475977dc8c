//! The admin endpoint: an HTTP listener an application opts into, answering what Envoy's admin
//! port answers for a sidecar.
//!
//! | path | answers |
//! |---|---|
//! | `/stats/prometheus` | Istio's standard metrics, and `mesh_xds_unapplied_fields`, Prometheus text |
//! | `/config_dump` | every xDS resource with its version, ACK/NACK status, last error and the fields it sets that are not applied (JSON) |
//! | `/clusters` | the clients' clusters: hosts, health, ejection, requests in flight (JSON) |
//! | `/ready` | 200 `LIVE` once every subscribed resource has an answer, else 503 |
//! | `/healthz` | 200 `OK` while the process serves |
//! | `envoy.service.status.v3.ClientStatusDiscoveryService` | CSDS over gRPC, on the same port |
//!
//! ```no_run
//! # async fn run(mesh: mesh_core::Mesh) -> Result<(), Box<dyn std::error::Error>> {
//! let admin = mesh_tower::admin::Admin::bind(&mesh, "127.0.0.1:15000".parse()?).await?;
//! println!("admin on http://{}/", admin.local_addr());
//! tokio::spawn(admin.run());
//! # Ok(()) }
//! ```

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_core::Mesh;
use mesh_core::xds::ResourceStatus;

use crate::body::BoxError;
use crate::telemetry::Telemetry;

const CSDS_PREFIX: &str = "/envoy.service.status.v3.ClientStatusDiscoveryService/";

/// A bound admin listener.
#[derive(Debug)]
#[must_use = "an admin endpoint does nothing until `run` is awaited"]
pub struct Admin {
    mesh: Mesh,
    listener: tokio::net::TcpListener,
}

type AdminBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

impl Admin {
    /// Binds `addr` (port 0 picks one; see [`Admin::local_addr`]).
    pub async fn bind(mesh: &Mesh, addr: SocketAddr) -> std::io::Result<Self> {
        Ok(Self {
            mesh: mesh.clone(),
            listener: tokio::net::TcpListener::bind(addr).await?,
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Serves until the process ends. HTTP/1.1 and HTTP/2 (CSDS needs HTTP/2).
    pub async fn run(self) {
        let csds = mesh_core::status::csds_service(&self.mesh);
        loop {
            let Ok((tcp, _)) = self.listener.accept().await else {
                continue;
            };
            let mesh = self.mesh.clone();
            let csds = csds.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let mesh = mesh.clone();
                    let mut csds = csds.clone();
                    async move {
                        if req.uri().path().starts_with(CSDS_PREFIX) {
                            let rsp = tower::Service::call(&mut csds, req).await;
                            return Ok::<_, Infallible>(match rsp {
                                Ok(rsp) => rsp.map(|b| b.map_err(Into::into).boxed_unsync()),
                                Err(never) => match never {},
                            });
                        }
                        Ok(handle(&mesh, req.uri().path()).await)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    }
}

fn reply(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<AdminBody> {
    let mut rsp = Response::new(
        Full::new(body.into())
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *rsp.status_mut() = status;
    rsp.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    rsp
}

fn json(v: &serde_json::Value) -> Response<AdminBody> {
    let text = serde_json::to_string_pretty(v).unwrap_or_default();
    reply(StatusCode::OK, "application/json", text)
}

/// `mesh_xds_unapplied_fields`: how many fields the resources in force set that this client
/// does not apply, by resource type and class (every series always present, so a rule can
/// alert on `class="ignored" > 0`).
async fn unapplied_fields_metric(mesh: &Mesh, out: &mut String) {
    use mesh_core::xds::{FieldClass, ResourceType};
    use std::fmt::Write as _;
    let mut counts = [[0usize; 2]; 4];
    for r in mesh.dump().await.unwrap_or_default() {
        for f in r.state.unapplied.iter() {
            let class = usize::from(f.class == FieldClass::Ignored);
            counts[r.resource_type as usize][class] += 1;
        }
    }
    out.push_str(
        "# HELP mesh_xds_unapplied_fields Fields of the xDS resources in force that this client \
         does not apply (docs/xds-support.md).\n# TYPE mesh_xds_unapplied_fields gauge\n",
    );
    for ty in ResourceType::ALL {
        for (class, name) in [(FieldClass::Inert, 0), (FieldClass::Ignored, 1)] {
            let _ = writeln!(
                out,
                "mesh_xds_unapplied_fields{{type=\"{ty}\",class=\"{class}\"}} {}",
                counts[ty as usize][name]
            );
        }
    }
}

async fn handle(mesh: &Mesh, path: &str) -> Response<AdminBody> {
    match path {
        "/stats/prometheus" => {
            let mut text = Telemetry::of(mesh).prometheus();
            unapplied_fields_metric(mesh, &mut text).await;
            reply(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                text,
            )
        }
        "/config_dump" => json(&mesh_core::status::config_dump(mesh).await),
        "/clusters" => json(&crate::client::clusters(mesh)),
        "/ready" => {
            let resources = mesh.dump().await.unwrap_or_default();
            let waiting = resources
                .iter()
                .filter(|r| r.state.status == ResourceStatus::Requested)
                .count();
            if waiting == 0 {
                reply(StatusCode::OK, "text/plain", "LIVE\n")
            } else {
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    format!("PRE_INITIALIZING: {waiting} resource(s) have no answer yet\n"),
                )
            }
        }
        "/healthz" => reply(StatusCode::OK, "text/plain", "OK\n"),
        "/" => reply(
            StatusCode::OK,
            "text/plain",
            "/stats/prometheus\n/config_dump\n/clusters\n/ready\n/healthz\nCSDS: envoy.service.status.v3.ClientStatusDiscoveryService\n",
        ),
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    }
}
