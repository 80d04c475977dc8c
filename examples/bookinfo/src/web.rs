//! What the four services share: responses, the headers Bookinfo propagates, and calls to
//! other services through the mesh with the apps' own timeouts.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use mesh_tower::MeshClient;

/// A response body.
pub type Body = Full<Bytes>;
/// What the services' handlers return.
pub type Reply = Result<Response<Body>, Infallible>;

/// A JSON answer.
pub fn json(status: StatusCode, v: &serde_json::Value) -> Reply {
    let mut rsp = Response::new(Full::new(Bytes::from(v.to_string())));
    *rsp.status_mut() = status;
    rsp.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    Ok(rsp)
}

/// A plain-text or HTML answer.
pub fn text(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Reply {
    let mut rsp = Response::new(Full::new(body.into()));
    *rsp.status_mut() = status;
    rsp.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    Ok(rsp)
}

/// The headers all of Bookinfo's services copy from a request onto the calls it causes
/// (tracing, request id, the user, and what the original apps forward).
pub const PROPAGATED: &[&str] = &[
    "x-request-id",
    "x-ot-span-context",
    "x-datadog-trace-id",
    "x-datadog-parent-id",
    "x-datadog-sampling-priority",
    "traceparent",
    "tracestate",
    "x-cloud-trace-context",
    "grpc-trace-bin",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
    "b3",
    "sw8",
    "end-user",
    "user-agent",
    "cookie",
    "authorization",
    "jwt",
];

/// The propagated headers of `from`.
pub fn propagated(from: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    for name in PROPAGATED {
        for v in from.get_all(*name) {
            out.append(*name, v.clone());
        }
    }
    out
}

/// What a call to another service came back with.
#[derive(Debug)]
pub enum Called {
    /// An answer (any status).
    Answer(StatusCode, Bytes),
    /// No answer in time, or no answer at all.
    Failed,
}

/// GET `url` through the mesh with `headers`, giving up after `timeout` (the apps' own
/// timeouts, which the Istio tasks' outcomes depend on).
pub async fn get(client: &MeshClient, url: &str, headers: &HeaderMap, timeout: Duration) -> Called {
    let Ok(mut req) = Request::get(url).body(Full::<Bytes>::default()) else {
        return Called::Failed;
    };
    *req.headers_mut() = headers.clone();
    let call = async {
        let rsp = client.send(req).await.ok()?;
        let status = rsp.status();
        let body = rsp.into_body().collect().await.ok()?.to_bytes();
        Some((status, body))
    };
    match tokio::time::timeout(timeout, call).await {
        Ok(Some((status, body))) => Called::Answer(status, body),
        _ => Called::Failed,
    }
}

/// The product id of `/prefix/{id}…`, or the status and JSON error to answer instead: 400
/// with `{"error": not_numeric}` (each original app has its own wording), 404 when the path
/// is not `/prefix/…`.
pub fn product_id(
    path: &str,
    prefix: &str,
    not_numeric: &str,
) -> Result<u32, (StatusCode, serde_json::Value)> {
    let Some(rest) = path.strip_prefix(prefix) else {
        return Err((
            StatusCode::NOT_FOUND,
            serde_json::json!({"error": "not found"}),
        ));
    };
    let id = rest.split('/').next().unwrap_or(rest);
    id.parse().map_err(|_| {
        (
            StatusCode::BAD_REQUEST,
            serde_json::json!({"error": not_numeric}),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn product_ids_are_numbers_after_the_prefix() {
        assert_eq!(product_id("/ratings/7", "/ratings/", "x").unwrap(), 7);
        assert_eq!(product_id("/reviews/0/extra", "/reviews/", "x").unwrap(), 0);
        let (status, body) = product_id(
            "/ratings/abc",
            "/ratings/",
            "please provide numeric product ID",
        )
        .unwrap_err();
        assert_eq!(
            (status, body["error"].as_str()),
            (
                StatusCode::BAD_REQUEST,
                Some("please provide numeric product ID")
            )
        );
        assert_eq!(
            product_id("/other", "/ratings/", "x").unwrap_err().0,
            StatusCode::NOT_FOUND
        );
    }
}
