//! External authorizers like Istio's `ext-authz` sample, over HTTP and over gRPC
//! (`envoy.service.auth.v3.Authorization`): they allow requests carrying `x-ext-authz: allow`
//! and deny the others with 403, `x-ext-authz-check-result: denied` and the body
//! `denied by ext_authz`. Each counts the checks it answers and remembers the last one.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use envoy_types::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
use envoy_types::pb::envoy::service::auth::v3::{
    CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse,
    authorization_server::{Authorization, AuthorizationServer},
    check_response::HttpResponse,
};
use envoy_types::pb::envoy::r#type::v3::HttpStatus;

/// What an authorizer saw.
#[derive(Clone, Debug, Default)]
pub struct Check {
    /// Method.
    pub method: String,
    /// Path (with query).
    pub path: String,
    /// Headers, lower-case.
    pub headers: Vec<(String, String)>,
    /// The caller's principal (gRPC checks only).
    pub principal: String,
}

/// A running authorizer.
#[derive(Clone)]
pub struct Authorizer {
    /// Where it listens.
    pub addr: SocketAddr,
    checks: Arc<AtomicU32>,
    last: Arc<Mutex<Option<Check>>>,
}

impl Authorizer {
    /// How many checks it has answered.
    pub fn checks(&self) -> u32 {
        self.checks.load(Ordering::Relaxed)
    }

    /// The last check.
    pub fn last(&self) -> Option<Check> {
        self.last.lock().expect("lock").clone()
    }

    fn record(&self, c: Check) -> bool {
        self.checks.fetch_add(1, Ordering::Relaxed);
        let allow = c
            .headers
            .iter()
            .any(|(k, v)| k == "x-ext-authz" && v == "allow");
        *self.last.lock().expect("lock") = Some(c);
        allow
    }

    async fn bind() -> (tokio::net::TcpListener, Self) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let me = Self {
            addr: listener.local_addr().expect("addr"),
            checks: Arc::default(),
            last: Arc::default(),
        };
        (listener, me)
    }

    /// The HTTP flavour (`envoyExtAuthzHttp`): 200 with `x-ext-authz-check-result: allowed`
    /// to allow (a provider may pass that header upstream).
    pub async fn http() -> Self {
        let (listener, me) = Self::bind().await;
        let this = me.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let this = this.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| {
                            let check = Check {
                                method: req.method().to_string(),
                                path: req.uri().to_string(),
                                headers: req
                                    .headers()
                                    .iter()
                                    .map(|(k, v)| {
                                        (k.to_string(), v.to_str().unwrap_or("").to_owned())
                                    })
                                    .collect(),
                                principal: String::new(),
                            };
                            let allow = this.record(check);
                            async move {
                                let mut rsp = hyper::Response::new(http_body_util::Full::new(
                                    bytes::Bytes::from(if allow {
                                        ""
                                    } else {
                                        "denied by ext_authz"
                                    }),
                                ));
                                if allow {
                                    rsp.headers_mut().insert(
                                        "x-ext-authz-check-result",
                                        "allowed".parse().expect("value"),
                                    );
                                } else {
                                    *rsp.status_mut() = hyper::StatusCode::FORBIDDEN;
                                    rsp.headers_mut().insert(
                                        "x-ext-authz-check-result",
                                        "denied".parse().expect("value"),
                                    );
                                }
                                Ok::<_, std::convert::Infallible>(rsp)
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        me
    }

    /// The gRPC flavour (`envoyExtAuthzGrpc`): an OK answer adds `x-ext-authz-check-result:
    /// allowed` to the request; a denial is a 403 with the header and body above.
    pub async fn grpc() -> Self {
        let (listener, me) = Self::bind().await;
        let svc = AuthorizationServer::new(GrpcAuthorizer(me.clone()));
        tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await;
        });
        me
    }
}

struct GrpcAuthorizer(Authorizer);

fn header(k: &str, v: &str) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: k.into(),
            value: v.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[tonic::async_trait]
impl Authorization for GrpcAuthorizer {
    async fn check(
        &self,
        req: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        let attrs = req.into_inner().attributes.unwrap_or_default();
        let http = attrs.request.and_then(|r| r.http).unwrap_or_default();
        let allow = self.0.record(Check {
            method: http.method,
            path: http.path,
            headers: http.headers.into_iter().collect(),
            principal: attrs.source.map(|s| s.principal).unwrap_or_default(),
        });
        let rsp = if allow {
            CheckResponse {
                status: Some(Default::default()),
                http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
                    headers: vec![header("x-ext-authz-check-result", "allowed")],
                    ..Default::default()
                })),
                ..Default::default()
            }
        } else {
            CheckResponse {
                status: Some(envoy_types::pb::google::rpc::Status {
                    code: 7,
                    ..Default::default()
                }),
                http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
                    status: Some(HttpStatus { code: 403 }),
                    headers: vec![header("x-ext-authz-check-result", "denied")],
                    body: "denied by ext_authz".into(),
                })),
                ..Default::default()
            }
        };
        Ok(tonic::Response::new(rsp))
    }
}
