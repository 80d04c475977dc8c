//! # mesh-grpc
//!
//! mesh for tonic. [`channel`] gives a tonic client an `xds:///` target served through the
//! mesh's outbound path; [`Server`] serves tonic services behind the mesh's inbound side.
//! Both take their configuration from the mesh's xDS, as gRPC's own proxyless xDS does.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let mesh = mesh_core::Mesh::from_env().await?;
//! let channel = mesh_grpc::channel(&mesh, "xds:///ratings:9080")?;
//! // let mut ratings = RatingsClient::new(channel);
//! // let reply = ratings.get(GetRequest { id: 0 }).await?;
//! # Ok(()) }
//! ```
//!
//! | feature | reference |
//! |---|---|
//! | `xds:///name[:port]` targets | gRFC A27 |
//! | routing, weighted clusters, header matches, timeouts | gRFC A28, A31 |
//! | retries on gRPC status codes (`cancelled`, `deadline-exceeded`, `internal`, `resource-exhausted`, `unavailable`) | gRFC A44 |
//! | fault injection (gRPC and HTTP status aborts, delays) | gRFC A33 |
//! | circuit breaking, outlier detection, ring hash, least request | gRFC A32, A50, A42, A48 |
//! | mTLS with SPIFFE identities | gRFC A29 |
//! | xDS-configured servers (not serving without a listener), RBAC | gRFC A36, A41 |
//! | graceful drain: `Server::serve_with_shutdown` (GOAWAY, started RPCs finish) | tonic's `serve_with_shutdown` |
#![forbid(unsafe_code)]

mod channel;
mod server;
mod uri;

pub use channel::{ChannelError, MeshChannel, channel};
pub use server::{Server, ServingState};
pub use uri::{XdsUri, XdsUriError};
