//! The interop server: `grpc.testing.TestService` behind the mesh's inbound side, obeying
//! the `rpc-behavior` request metadata, and `XdsUpdateHealthService` on the maintenance port.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tonic::body::Body;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

use crate::proto::{Empty, Payload, SimpleRequest, SimpleResponse, path};
use crate::rpc::{Grpc, Methods, RspFuture, unary, unimplemented};

/// Who a server says it is.
#[derive(Clone, Debug)]
pub struct Identity {
    /// Reported in `SimpleResponse.hostname` and the `hostname` response header; the
    /// interop client counts RPCs per host name, so servers on one machine need distinct
    /// ones (`--host_name_override`).
    pub hostname: String,
    /// Reported in `SimpleResponse.server_id` (`--server_id`).
    pub server_id: String,
}

/// `grpc.testing.TestService`.
#[derive(Clone, Debug)]
pub struct TestService {
    me: Arc<Identity>,
}

impl TestService {
    /// A test service answering as `me`.
    pub fn new(me: Identity) -> Self {
        Self { me: Arc::new(me) }
    }
}

impl Methods for TestService {
    const NAME: &'static str = "grpc.testing.TestService";

    fn route(&self, req: http::Request<Body>) -> RspFuture {
        let me = self.me.clone();
        match req.uri().path() {
            path::EMPTY_CALL => unary(req, move |r: Request<Empty>| {
                let me = me.clone();
                async move {
                    behave(&me, r.metadata()).await?;
                    Ok(with_hostname(&me, Empty {}))
                }
            }),
            path::UNARY_CALL => unary(req, move |r: Request<SimpleRequest>| {
                let me = me.clone();
                async move {
                    behave(&me, r.metadata()).await?;
                    let size = usize::try_from(r.get_ref().response_size).unwrap_or(0);
                    Ok(with_hostname(
                        &me,
                        SimpleResponse {
                            payload: (size > 0).then(|| Payload {
                                r#type: 0,
                                body: vec![0; size],
                            }),
                            server_id: me.server_id.clone(),
                            hostname: me.hostname.clone(),
                        },
                    ))
                }
            }),
            other => unimplemented(other),
        }
    }
}

fn with_hostname<T>(me: &Identity, msg: T) -> Response<T> {
    let mut rsp = Response::new(msg);
    if let Ok(v) = me.hostname.parse() {
        rsp.metadata_mut().insert("hostname", v);
    }
    rsp
}

/// One step of `rpc-behavior`.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Behavior {
    Sleep(Duration),
    KeepOpen,
    ErrorCode(i32),
    SucceedOnRetryAttempt(u32),
}

/// Parses one comma-separated item: `sleep-N`, `keep-open`, `error-code-N`,
/// `succeed-on-retry-attempt-N`, each optionally behind `hostname=H ` (then it applies only
/// on host H). Unknown items are an error, so a typo in a test fails the RPC loudly.
fn parse_behavior(item: &str, hostname: &str) -> Result<Option<Behavior>, Status> {
    let item = item.trim();
    let item = match item.strip_prefix("hostname=") {
        Some(rest) => {
            let (host, rest) = rest.split_once(' ').unwrap_or((rest, ""));
            if host != hostname {
                return Ok(None);
            }
            rest.trim()
        }
        None => item,
    };
    let number = |s: &str| {
        s.parse::<u64>()
            .map_err(|_| Status::invalid_argument(format!("rpc-behavior {item:?}: not a number")))
    };
    Ok(Some(if item == "keep-open" {
        Behavior::KeepOpen
    } else if let Some(n) = item.strip_prefix("sleep-") {
        Behavior::Sleep(Duration::from_secs(number(n)?))
    } else if let Some(n) = item.strip_prefix("error-code-") {
        Behavior::ErrorCode(i32::try_from(number(n)?).unwrap_or(i32::MAX))
    } else if let Some(n) = item.strip_prefix("succeed-on-retry-attempt-") {
        Behavior::SucceedOnRetryAttempt(u32::try_from(number(n)?).unwrap_or(u32::MAX))
    } else if item.is_empty() {
        return Ok(None);
    } else {
        return Err(Status::invalid_argument(format!(
            "rpc-behavior {item:?} is not one of sleep-N, keep-open, error-code-N, succeed-on-retry-attempt-N"
        )));
    }))
}

/// Applies the request's `rpc-behavior` steps in order: sleeps, never answers, fails with a
/// code, or (when `grpc-previous-rpc-attempts` equals N) succeeds at once.
async fn behave(me: &Identity, md: &MetadataMap) -> Result<(), Status> {
    let previous: u32 = md
        .get("grpc-previous-rpc-attempts")
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .unwrap_or(0);
    for value in md.get_all("rpc-behavior") {
        let value = value
            .to_str()
            .map_err(|_| Status::invalid_argument("rpc-behavior is not ASCII"))?;
        for item in value.split(',') {
            match parse_behavior(item, &me.hostname)? {
                None => {}
                Some(Behavior::Sleep(d)) => tokio::time::sleep(d).await,
                Some(Behavior::KeepOpen) => std::future::pending::<()>().await,
                Some(Behavior::ErrorCode(code)) => {
                    return Err(Status::new(
                        tonic::Code::from(code),
                        format!("rpc-behavior error-code-{code} on {}", me.hostname),
                    ));
                }
                Some(Behavior::SucceedOnRetryAttempt(n)) if n == previous => return Ok(()),
                Some(Behavior::SucceedOnRetryAttempt(_)) => {}
            }
        }
    }
    Ok(())
}

/// `grpc.testing.XdsUpdateHealthService`: flips the server's serving state, which the
/// harness (or a control plane's health checks) turns into the endpoint's EDS health.
#[derive(Clone, Debug)]
pub struct HealthService {
    serving: Arc<tokio::sync::watch::Sender<bool>>,
}

impl HealthService {
    /// A health service starting SERVING.
    pub fn new() -> Self {
        Self {
            serving: Arc::new(tokio::sync::watch::Sender::new(true)),
        }
    }

    /// Follows the serving state.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<bool> {
        self.serving.subscribe()
    }
}

impl Default for HealthService {
    fn default() -> Self {
        Self::new()
    }
}

impl Methods for HealthService {
    const NAME: &'static str = "grpc.testing.XdsUpdateHealthService";

    fn route(&self, req: http::Request<Body>) -> RspFuture {
        let serving = self.serving.clone();
        let set = |to: bool| {
            move |_: Request<Empty>| {
                serving.send_replace(to);
                async { Ok(Response::new(Empty {})) }
            }
        };
        match req.uri().path() {
            path::SET_SERVING => unary(req, set(true)),
            path::SET_NOT_SERVING => unary(req, set(false)),
            other => unimplemented(other),
        }
    }
}

/// A running interop server. Dropping it stops it at once; [`Running::stop`] drains.
#[derive(Debug)]
pub struct Running {
    /// The maintenance port's health service.
    pub health: HealthService,
    stop: tokio::sync::oneshot::Sender<()>,
    /// The meshed server first, then the maintenance server.
    tasks: crate::Tasks,
}

impl Running {
    /// Stops gracefully: the meshed port closes, open connections get a GOAWAY, and RPCs
    /// already started finish (`keep-open` ones never do: bound this with a timeout; the
    /// rest is closed when the future is dropped). The maintenance port closes last.
    pub async fn stop(mut self) {
        let _ = self.stop.send(());
        let _ = (&mut self.tasks.0[0]).await;
    }
}

/// Serves `TestService` as `me` on `port` through `mesh` (inbound listener, mTLS and RBAC
/// from xDS), and `XdsUpdateHealthService` (plus `TestService`, as the contract's
/// maintenance port does) in plaintext on `maintenance`. Both ports are bound before this
/// returns.
pub async fn serve(
    mesh: &mesh_core::Mesh,
    me: Identity,
    port: SocketAddr,
    maintenance: SocketAddr,
) -> Result<Running, std::io::Error> {
    let port = tokio::net::TcpListener::bind(port).await?;
    let maintenance = tokio::net::TcpListener::bind(maintenance).await?;
    Ok(serve_on(mesh, me, port, maintenance))
}

/// [`serve`] on sockets already bound.
pub fn serve_on(
    mesh: &mesh_core::Mesh,
    me: Identity,
    listener: tokio::net::TcpListener,
    maintenance: tokio::net::TcpListener,
) -> Running {
    let test = TestService::new(me);
    let health = HealthService::new();
    let meshed = mesh_grpc::Server::builder(mesh).add_service(Grpc(test.clone()));
    let port = listener.local_addr().ok();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let main = tokio::spawn(async move {
        let signal = async {
            let _ = stopped.await;
        };
        if let Err(e) = meshed.serve_listener_with_shutdown(listener, signal).await {
            tracing::error!(?port, error = %e, "interop server stopped");
        }
    });
    let listener = maintenance;
    let maintenance = listener.local_addr().ok();
    let plain = tonic::transport::Server::builder()
        .add_service(Grpc(health.clone()))
        .add_service(Grpc(test));
    let maint = tokio::spawn(async move {
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        if let Err(e) = plain.serve_with_incoming(incoming).await {
            tracing::error!(?maintenance, error = %e, "maintenance server stopped");
        }
    });
    Running {
        health,
        stop,
        tasks: crate::Tasks(vec![main, maint]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behaviors_parse_and_filter_by_host() {
        let p = |s| parse_behavior(s, "server-0");
        assert_eq!(
            p("sleep-2").unwrap(),
            Some(Behavior::Sleep(Duration::from_secs(2)))
        );
        assert_eq!(p(" keep-open").unwrap(), Some(Behavior::KeepOpen));
        assert_eq!(p("error-code-14").unwrap(), Some(Behavior::ErrorCode(14)));
        assert_eq!(
            p("succeed-on-retry-attempt-4").unwrap(),
            Some(Behavior::SucceedOnRetryAttempt(4))
        );
        assert_eq!(
            p("hostname=server-0 error-code-2").unwrap(),
            Some(Behavior::ErrorCode(2))
        );
        assert_eq!(p("hostname=server-1 error-code-2").unwrap(), None);
        let e = p("sleep-soon").unwrap_err();
        assert!(e.message().contains("sleep-soon"), "{e:?}");
        assert!(p("explode").is_err());
    }
}
