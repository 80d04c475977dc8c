//! Routes requests through `mesh_tower::MeshClient` by a static mesh configuration.
//!
//! Two backends play reviews v1 and v2 on 127.0.0.1:19081/19082; `mesh.yaml` routes the user
//! `jason` to v2 and splits everyone else 90/10. Each line shows what the mesh decided.
//!
//! Run: `cargo run -p mesh-examples --bin static-route [-- path/to/mesh.yaml]`

use std::collections::BTreeMap;
use std::net::SocketAddr;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use mesh_core::Mesh;
use mesh_tower::{MeshClient, ResponseInfo};
use tower::ServiceExt;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/static-route/mesh.yaml").into());
    for (version, port) in [("v1", 19081), ("v2", 19082)] {
        serve_backend(version, SocketAddr::from(([127, 0, 0, 1], port))).await?;
    }
    let mesh = Mesh::builder().static_file(&path)?.build().await?;
    let client = MeshClient::new(&mesh);
    println!("loaded {path}");

    let mut seen = BTreeMap::new();
    for i in 0..20 {
        let user = (i % 5 == 0).then_some("jason");
        let mut req = Request::get("http://reviews:9080/reviews/0");
        if let Some(u) = user {
            req = req.header("end-user", u);
        }
        let rsp = client
            .clone()
            .oneshot(req.body(Empty::<Bytes>::new())?)
            .await?;
        let info = ResponseInfo::of(&rsp).cloned().unwrap_or_default();
        let status = rsp.status();
        let body = rsp
            .into_body()
            .collect()
            .await
            .map_err(anyhow::Error::msg)?
            .to_bytes();
        let body = String::from_utf8_lossy(&body).into_owned();
        println!(
            "{i:>2} user={:<6} -> {status} {} @ {} flags={}: {body}",
            user.unwrap_or("-"),
            info.cluster.as_deref().unwrap_or("-"),
            info.upstream.map_or_else(|| "-".into(), |a| a.to_string()),
            info.flags,
        );
        *seen.entry(body).or_insert(0) += 1;
    }
    println!("answers: {seen:?}");
    Ok(())
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
