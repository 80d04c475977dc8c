//! httpbin, the part Istio's tasks use (circuit breaking, mirroring, mTLS migration, JWT):
//! `/get`, `/headers`, `/ip`, `/status/{code}`, `/delay/{seconds}`. Every request is logged
//! (method, path, `Host`), as httpbin's access log is what the mirroring task reads.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::{Request, StatusCode};
use serde_json::{Map, Value, json};

use crate::web::{self, Reply};

/// One logged request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Logged {
    /// Method.
    pub method: String,
    /// Path with query.
    pub path: String,
    /// The `Host` (or `:authority`) it was sent to.
    pub host: String,
}

/// An httpbin, with its request log.
#[derive(Clone, Default)]
pub struct Httpbin {
    log: Arc<ArcSwap<Vec<Logged>>>,
}

impl Httpbin {
    /// The requests served so far.
    pub fn log(&self) -> Vec<Logged> {
        self.log.load().to_vec()
    }

    /// Serves a request.
    pub async fn handle<B>(&self, req: Request<B>) -> Reply {
        let path = req.uri().path().to_owned();
        let host = mesh_core::model::authority_of(&req).to_owned();
        let entry = Logged {
            method: req.method().to_string(),
            path: req
                .uri()
                .path_and_query()
                .map_or(path.clone(), |p| p.to_string()),
            host: host.clone(),
        };
        // Off the request path's hot loop: a test service's log, copied on write.
        self.log.rcu(|l| {
            let mut l = Vec::clone(l);
            l.push(entry.clone());
            l
        });
        let headers: Map<String, Value> = req
            .headers()
            .iter()
            .map(|(k, v)| (title_case(k.as_str()), json!(v.to_str().unwrap_or(""))))
            .collect();
        let origin = req
            .extensions()
            .get::<mesh_tower::server::PeerIdentity>()
            .map_or("unknown".to_owned(), |p| p.addr.ip().to_string());
        match path.as_str() {
            "/get" => web::json(
                StatusCode::OK,
                &json!({"args": {}, "headers": headers, "origin": origin, "url": format!("http://{host}{path}")}),
            ),
            "/headers" => web::json(StatusCode::OK, &json!({"headers": headers})),
            "/ip" => web::json(StatusCode::OK, &json!({"origin": origin})),
            p if p.starts_with("/status/") => {
                let code = p["/status/".len()..]
                    .parse::<u16>()
                    .ok()
                    .and_then(|c| StatusCode::from_u16(c).ok())
                    .unwrap_or(StatusCode::BAD_REQUEST);
                web::text(code, "text/plain", "")
            }
            p if p.starts_with("/delay/") => {
                let secs: f64 = p["/delay/".len()..].parse().unwrap_or(0.0);
                tokio::time::sleep(Duration::from_secs_f64(secs.clamp(0.0, 10.0))).await;
                web::json(
                    StatusCode::OK,
                    &json!({"headers": headers, "origin": origin}),
                )
            }
            _ => web::text(StatusCode::NOT_FOUND, "text/plain", "Not Found"),
        }
    }

    /// As a tower service (sharing this httpbin's log).
    pub fn service<B: Send + 'static>(
        self,
    ) -> impl tower::Service<
        Request<B>,
        Response = http::Response<web::Body>,
        Error = Infallible,
        Future = impl Send,
    > + Clone
    + Send
    + 'static {
        let me = self;
        tower::service_fn(move |req: Request<B>| {
            let me = me.clone();
            async move { me.handle(req).await }
        })
    }
}

/// `x-request-id` → `X-Request-Id`, as httpbin shows header names.
fn title_case(name: &str) -> String {
    name.split('-')
        .map(|part| {
            let mut c = part.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect::<Vec<_>>()
        .join("-")
}
