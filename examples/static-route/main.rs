//! Loads a static mesh configuration and routes requests by it.
//!
//! Two backends play reviews v1 and v2 on 127.0.0.1:19081/19082; `mesh.yaml` routes the user
//! `jason` to v2 and splits everyone else 90/10. Until `mesh_tower::MeshClient` lands, the steps
//! it will do inside one `Service::call` are spelled out here: match the route in the current
//! snapshot, pick the weighted cluster, pick an endpoint, send.
//!
//! Run: `cargo run -p mesh-examples --bin static-route [-- path/to/mesh.yaml]`

use std::collections::BTreeMap;
use std::net::SocketAddr;

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use mesh_core::model::{Action, ClusterSpecifier, RequestView};
use mesh_core::{Mesh, TargetSnapshot};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/static-route/mesh.yaml").into());
    for (version, port) in [("v1", 19081), ("v2", 19082)] {
        serve_backend(version, SocketAddr::from(([127, 0, 0, 1], port))).await?;
    }
    let mesh = Mesh::builder().static_file(&path)?.build().await?;
    let snapshot = mesh.target("reviews:9080").ready().await;
    println!(
        "loaded {path}: target reviews:9080 with {} clusters",
        snapshot.clusters.len()
    );

    let mut seen = BTreeMap::new();
    for i in 0..20 {
        let user = if i % 5 == 0 { Some("jason") } else { None };
        let mut req = Request::get("http://reviews:9080/reviews/0");
        if let Some(u) = user {
            req = req.header("end-user", u);
        }
        let req = req.body(Empty::<Bytes>::new())?;
        let (cluster, upstream) = route(&snapshot, &req, i)?;
        let body = send(upstream, req).await?;
        println!(
            "{:>2} user={:<6} -> {cluster} @ {upstream}: {body}",
            i,
            user.unwrap_or("-")
        );
        *seen.entry(body).or_insert(0) += 1;
    }
    println!("answers: {seen:?}");
    Ok(())
}

/// The routing decision: route, weighted cluster, endpoint.
fn route<B>(
    snapshot: &TargetSnapshot,
    req: &Request<B>,
    n: u32,
) -> anyhow::Result<(String, SocketAddr)> {
    let view = RequestView::from_request(req);
    let Some((_, route)) = snapshot.routes.find(&view, fastrand::u32(0..1_000_000)) else {
        bail!("no route (404 NR)")
    };
    let Action::Forward(fwd) = &route.action else {
        bail!("route does not forward")
    };
    let cluster = match &fwd.cluster {
        ClusterSpecifier::Cluster(c) => c.clone(),
        ClusterSpecifier::Weighted(w) => w.pick(fastrand::u32(0..w.total)).name.clone(),
        ClusterSpecifier::Header(_) => bail!("cluster_header is not used here"),
    };
    let entry = snapshot
        .clusters
        .get(&cluster)
        .context("cluster not loaded (503 NR)")?;
    let endpoints: Vec<_> = entry
        .endpoints
        .iter()
        .flat_map(|e| e.endpoints())
        .filter(|e| e.health.is_healthy())
        .collect();
    let endpoint = endpoints
        .get(n as usize % endpoints.len().max(1))
        .context("no healthy upstream (503 UH)")?;
    Ok((cluster.to_string(), endpoint.address))
}

async fn send(addr: SocketAddr, req: Request<Empty<Bytes>>) -> anyhow::Result<String> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connect {addr}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let rsp = sender.send_request(req).await?;
    let body = rsp.into_body().collect().await?.to_bytes();
    Ok(String::from_utf8_lossy(&body).into_owned())
}

async fn serve_backend(version: &'static str, addr: SocketAddr) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("bind {addr} (is another example running?)"))?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let svc = hyper::service::service_fn(
                move |_req: Request<hyper::body::Incoming>| async move {
                    Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(
                        format!("reviews-{version}"),
                    ))))
                },
            );
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc),
            );
        }
    });
    Ok(())
}
