//! The little glue protoc-generated code would give: serving a unary method from a closure,
//! and calling one by path. Hand-written because the contract has six unary methods and
//! codegen would bring protoc and prost-build into the build.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tonic::body::Body;
use tonic::codegen::StdError;
use tonic::{Request, Response, Status};

/// A boxed response future, as the services below return.
pub(crate) type RspFuture =
    Pin<Box<dyn Future<Output = Result<http::Response<Body>, Infallible>> + Send>>;

/// A gRPC service's methods: its name, and which handler answers a request's path.
pub(crate) trait Methods: Clone + Send + Sync + 'static {
    /// The fully qualified service name (`grpc.testing.TestService`).
    const NAME: &'static str;
    /// Answers one request (usually a `match` on the path over [`unary`] calls).
    fn route(&self, req: http::Request<Body>) -> RspFuture;
}

/// A [`Methods`] as the tower service tonic's router takes.
#[derive(Clone, Debug)]
pub(crate) struct Grpc<M>(pub(crate) M);

impl<M: Methods> tonic::server::NamedService for Grpc<M> {
    const NAME: &'static str = M::NAME;
}

impl<M: Methods> tower::Service<http::Request<Body>> for Grpc<M> {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = RspFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> RspFuture {
        self.0.route(req)
    }
}

/// Serves `req` as a unary call answered by `handle`.
pub(crate) fn unary<Req, Rsp, F, Fut>(req: http::Request<Body>, handle: F) -> RspFuture
where
    Req: prost::Message + Default + Send + 'static,
    Rsp: prost::Message + Send + 'static,
    F: FnMut(Request<Req>) -> Fut + Send + 'static,
    Fut: Future<Output = Result<Response<Rsp>, Status>> + Send + 'static,
{
    struct Handler<F>(F);
    impl<Req, Rsp, F, Fut> tonic::server::UnaryService<Req> for Handler<F>
    where
        F: FnMut(Request<Req>) -> Fut,
        Fut: Future<Output = Result<Response<Rsp>, Status>>,
    {
        type Response = Rsp;
        type Future = Fut;
        fn call(&mut self, request: Request<Req>) -> Fut {
            (self.0)(request)
        }
    }
    Box::pin(async move {
        let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::<Rsp, Req>::default());
        Ok(grpc.unary(Handler(handle), req).await)
    })
}

/// The answer for a path no method of the service has.
pub(crate) fn unimplemented(path: &str) -> RspFuture {
    let rsp = Status::unimplemented(format!("no method {path}")).into_http();
    Box::pin(async move { Ok(rsp) })
}

/// Calls the unary method at `path` on `channel`.
pub async fn call<T, Req, Rsp>(
    channel: T,
    path: &'static str,
    req: Request<Req>,
) -> Result<Response<Rsp>, Status>
where
    T: tonic::client::GrpcService<Body>,
    T::Error: Into<StdError>,
    T::ResponseBody: http_body::Body<Data = tonic::codegen::Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error: Into<StdError> + Send,
    Req: prost::Message + Send + Sync + 'static,
    Rsp: prost::Message + Default + Send + Sync + 'static,
{
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(format!("channel not ready: {}", e.into())))?;
    grpc.unary(
        req,
        http::uri::PathAndQuery::from_static(path),
        tonic_prost::ProstCodec::<Req, Rsp>::default(),
    )
    .await
}
