//! HTTP backends on loopback that answer with their name, count requests, and can be told to
//! fail, delay or reset: the upstreams every data-path test talks to.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::watch;

/// What a backend does with each request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Behavior {
    /// 200 with the backend's name as the body.
    Ok,
    /// Answer with this status.
    Status(u16),
    /// Wait, then answer 200.
    Delay(Duration),
    /// Close the connection without answering.
    Reset,
    /// Answer 503 to this share of requests (per mille), at random; 200 otherwise.
    FailPerMille(u32),
}

#[derive(Debug)]
struct Shared {
    name: String,
    behavior: watch::Sender<Behavior>,
    requests: AtomicU64,
    /// Fail this many of the next requests with 503, then behave normally.
    fail_next: AtomicU32,
}

/// A running backend; stops when dropped.
#[derive(Debug)]
pub struct Backend {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Backend {
    /// Starts `name` on an ephemeral loopback port, speaking HTTP/1.1 and HTTP/2 (cleartext).
    pub async fn start(name: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind backend");
        let addr = listener.local_addr().expect("addr");
        let (behavior, _) = watch::channel(Behavior::Ok);
        let shared = Arc::new(Shared {
            name: name.to_owned(),
            behavior,
            requests: AtomicU64::new(0),
            fail_next: AtomicU32::new(0),
        });
        let s = shared.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let s = s.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| handle(s.clone(), req));
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self { addr, shared, task }
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its name (the body of a 200).
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Requests received so far.
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::Relaxed)
    }

    /// Changes what it does from now on.
    pub fn set(&self, b: Behavior) {
        self.shared.behavior.send_replace(b);
    }

    /// Answers the next `n` requests with 503.
    pub fn fail_next(&self, n: u32) {
        self.shared.fail_next.store(n, Ordering::Relaxed);
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What a request looks like to the application: `x-path` (path and query), `x-authority`
/// (`:authority` or `Host`), `x-version` (`HTTP/1.1`, `HTTP/2.0`), and every request header
/// `x-…` as `x-echo-…`.
fn seen<B>(req: &Request<B>) -> http::HeaderMap {
    let mut seen = http::HeaderMap::new();
    let authority = req
        .uri()
        .authority()
        .map(|a| a.to_string())
        .or_else(|| {
            req.headers()
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        })
        .unwrap_or_default();
    let echo = |v: &str| http::HeaderValue::from_str(v).ok();
    if let Some(v) = echo(req.uri().path_and_query().map_or("/", |p| p.as_str())) {
        seen.insert("x-path", v);
    }
    if let Some(v) = echo(&authority) {
        seen.insert("x-authority", v);
    }
    if let Some(v) = echo(&format!("{:?}", req.version())) {
        seen.insert("x-version", v);
    }
    for (name, value) in req.headers() {
        // Hop-by-hop headers too, so tests can check a proxy removed them.
        let hop_by_hop = matches!(name.as_str(), "keep-alive" | "proxy-connection" | "te");
        if (name.as_str().starts_with("x-") || hop_by_hop)
            && let Ok(n) = http::HeaderName::from_bytes(format!("x-echo-{name}").as_bytes())
        {
            seen.append(n, value.clone());
        }
    }
    seen
}

/// An application that answers 200 with `name` and echoes what it saw (as a [`Backend`]
/// does: `x-backend`, `x-path`, `x-echo-…`), to serve in-process behind the mesh.
pub fn echo<B>(name: &str, req: &Request<B>) -> Response<Full<Bytes>> {
    let mut rsp = Response::new(Full::new(Bytes::from(name.to_owned())));
    if let Ok(v) = http::HeaderValue::from_str(name) {
        rsp.headers_mut().insert("x-backend", v);
    }
    rsp.headers_mut().extend(seen(req));
    rsp
}

/// What the backend saw, echoed in response headers so tests can check what was sent
/// ([`seen`]: the path, authority and version, every `x-` header and the hop-by-hop
/// `keep-alive`, `proxy-connection` and `te` as `x-echo-<name>`), with `x-body-len`.
async fn handle(
    s: Arc<Shared>,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, std::io::Error> {
    use http_body_util::BodyExt;
    s.requests.fetch_add(1, Ordering::Relaxed);
    let mut seen = seen(&req);
    let body_len = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes().len())
        .unwrap_or(0);
    seen.insert("x-body-len", http::HeaderValue::from(body_len));
    let failing = s
        .fail_next
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
        .is_ok();
    let behavior = if failing {
        Behavior::Status(503)
    } else {
        s.behavior.borrow().clone()
    };
    let reply = |status: u16| {
        let mut rsp = Response::new(Full::new(Bytes::from(s.name.clone())));
        *rsp.status_mut() =
            hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
        rsp.headers_mut()
            .insert("x-backend", s.name.parse().expect("header-safe name"));
        rsp.headers_mut().extend(seen.clone());
        rsp
    };
    match behavior {
        Behavior::Ok => Ok(reply(200)),
        Behavior::FailPerMille(p) => Ok(reply(if fastrand::u32(0..1000) < p { 503 } else { 200 })),
        Behavior::Status(code) => Ok(reply(code)),
        Behavior::Delay(d) => {
            tokio::time::sleep(d).await;
            Ok(reply(200))
        }
        // An error from the service makes hyper drop the connection without a response.
        Behavior::Reset => Err(std::io::Error::other("reset by test backend")),
    }
}
