//! [`MeshChannel`]: what a tonic client is given instead of a `tonic::transport::Channel`.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri};
use mesh_tower::{MeshClient, RspBody};

use crate::XdsUri;

/// A tonic channel to an `xds:` target through the mesh: every call takes the mesh's
/// outbound path (routing, traffic splitting, faults, timeouts, retries on gRPC codes,
/// circuit breaking, outlier detection, load balancing, mTLS) over HTTP/2. Local failures
/// come back as gRPC statuses (`UNAVAILABLE` for no healthy upstream, `DEADLINE_EXCEEDED`
/// for a route timeout, the mapping gRPC applies to HTTP statuses for injected faults).
///
/// Cheap to clone; clones share connections.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let mesh = mesh_core::Mesh::from_env().await?;
/// let channel = mesh_grpc::channel(&mesh, "xds:///ratings:9080")?;
/// // let mut client = RatingsClient::new(channel);   // any tonic-generated client
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct MeshChannel {
    client: MeshClient,
    authority: Authority,
}

/// Why a channel could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChannelError {
    /// The target is not an `xds:` URI.
    #[error(transparent)]
    Target(#[from] crate::XdsUriError),
    /// The target names a federation authority; only the default one is supported.
    #[error("xds target {0}: federation authorities are not supported yet; use xds:///name")]
    Authority(XdsUri),
    /// The name is not a valid HTTP authority.
    #[error("xds target {0}: the name is not a valid authority")]
    Name(XdsUri),
}

/// A channel for `target` (`xds:///name[:port]`) through `mesh`.
pub fn channel(mesh: &mesh_core::Mesh, target: &str) -> Result<MeshChannel, ChannelError> {
    MeshChannel::new(MeshClient::new(mesh), target)
}

impl MeshChannel {
    /// A channel over an existing client (to share its pools with other channels and with
    /// HTTP calls).
    pub fn new(client: MeshClient, target: &str) -> Result<Self, ChannelError> {
        let uri: XdsUri = target.parse()?;
        if uri.authority().is_some() {
            return Err(ChannelError::Authority(uri));
        }
        let authority = uri
            .http_authority()
            .parse()
            .map_err(|_| ChannelError::Name(uri.clone()))?;
        Ok(Self { client, authority })
    }
}

impl<B> tower::Service<Request<B>> for MeshChannel
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<mesh_tower::BoxError>,
{
    type Response = Response<RspBody>;
    type Error = mesh_tower::Error;
    type Future =
        Pin<Box<dyn Future<Output = Result<Response<RspBody>, mesh_tower::Error>> + Send>>;

    /// Always ready: the mesh sheds load per cluster, as its client does.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        // tonic's generated clients send the path only; the target supplies the authority.
        let path = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(Scheme::HTTP);
        parts.authority = Some(self.authority.clone());
        parts.path_and_query = Some(path);
        if let Ok(uri) = Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
        *req.version_mut() = http::Version::HTTP_2;
        let client = self.client.clone();
        Box::pin(async move {
            let mut rsp = client.send(req).await?;
            deadline_is_deadline_exceeded(&mut rsp);
            Ok(rsp)
        })
    }
}

/// A route timeout or stream duration that ran out is a deadline to a gRPC caller:
/// `DEADLINE_EXCEEDED`, as gRPC's own xDS client reports `max_stream_duration` (gRFC A31).
/// MeshClient answers it as Envoy does (504, so `UNAVAILABLE`), which would make a tonic
/// caller retry or fail over where it should give up.
fn deadline_is_deadline_exceeded(rsp: &mut Response<RspBody>) {
    use mesh_tower::{ResponseFlags, ResponseInfo};
    let timed_out = rsp.extensions().get::<ResponseInfo>().is_some_and(|i| {
        i.flags.contains(ResponseFlags::UPSTREAM_REQUEST_TIMEOUT)
            || i.flags
                .contains(ResponseFlags::UPSTREAM_MAX_STREAM_DURATION_REACHED)
    });
    if timed_out && rsp.headers().contains_key("grpc-status") {
        let h = rsp.headers_mut();
        h.insert("grpc-status", http::HeaderValue::from_static("4"));
        h.insert(
            "grpc-message",
            http::HeaderValue::from_static("deadline exceeded (route timeout)"),
        );
    }
}
