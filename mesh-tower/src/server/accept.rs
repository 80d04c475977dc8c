//! The server's loop: accepting connections, following the inbound listener (serving or not,
//! gRFC A36), and draining on shutdown. Each connection is served by [`http_connection`](super::http_connection).

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use mesh_core::Mesh;

use super::follow::{Follow, changed};
use super::http_connection::{Accepted, connection};
use super::listener::Inbound;
use super::{App, ServeError, ServingState};
use crate::telemetry::Telemetry;

/// [`serve_with_shutdown`](crate::serve_with_shutdown), publishing each change of its [`ServingState`] on `state`: the
/// serving-state callback gRFC A36 asks xDS servers to offer.
///
/// ```no_run
/// # async fn run(mesh: mesh_core::Mesh, app: tower::util::BoxCloneService<http::Request<hyper::body::Incoming>, http::Response<String>, std::convert::Infallible>) -> Result<(), Box<dyn std::error::Error>> {
/// use mesh_tower::server::ServingState;
/// let (state, mut watch) = tokio::sync::watch::channel(ServingState::Starting);
/// tokio::spawn(async move {
///     while watch.changed().await.is_ok() {
///         if let ServingState::NotServing(why) = &*watch.borrow() {
///             eprintln!("not serving: {why}");
///         }
///     }
/// });
/// let listener = tokio::net::TcpListener::bind("0.0.0.0:9080").await?;
/// mesh_tower::server::serve_observed(&mesh, listener, app, std::future::pending(), state).await?;
/// # Ok(()) }
/// ```
pub async fn serve_observed<S: App>(
    mesh: &Mesh,
    listener: tokio::net::TcpListener,
    app: S,
    signal: impl Future<Output = ()>,
    state: tokio::sync::watch::Sender<ServingState>,
) -> Result<(), ServeError> {
    let local = listener.local_addr().map_err(|source| ServeError::Bind {
        addr: SocketAddr::from(([0, 0, 0, 0], 0)),
        source,
    })?;
    let config: Arc<ArcSwapOption<Inbound>> = Arc::default();
    let telemetry = Telemetry::of(mesh);
    let mut follow = match mesh.bootstrap().server_listener_name(local) {
        Some(name) => {
            let mut f = Follow::start(mesh, name, local).await?;
            let next = f.next_state();
            state.send_replace(f.serving_state(next.is_some()));
            config.store(next);
            Some(f)
        }
        None if !mesh.serves_without_inbound_policy() => {
            return Err(ServeError::NoInboundPolicy { addr: local });
        }
        None => {
            tracing::warn!(%local, "no server listener template in the bootstrap: serving plaintext without policy, as asked");
            config.store(Some(Arc::new(Inbound::plaintext())));
            state.send_replace(ServingState::Serving);
            None
        }
    };
    // Bumped to make every open connection drain: on shutdown, and on going not-serving.
    let (drain, _) = tokio::sync::watch::channel(0u64);
    // Owned here, so dropping this future closes every connection it accepted.
    let mut connections = tokio::task::JoinSet::new();
    let mut signal = std::pin::pin!(signal);
    let mut accept_backoff = ACCEPT_BACKOFF_MIN;
    loop {
        tokio::select! {
            biased;
            () = &mut signal => break,
            () = changed(&mut follow) => {
                let Some(f) = follow.as_mut() else { continue };
                let next = f.next_state();
                if next.is_none() && config.load().is_some() {
                    drain.send_modify(|n| *n += 1);
                }
                let now = f.serving_state(next.is_some());
                config.store(next);
                state.send_if_modified(|s| {
                    let changed = *s != now;
                    *s = now;
                    changed
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => {
                let (tcp, peer) = match accepted {
                    Ok(a) => {
                        accept_backoff = ACCEPT_BACKOFF_MIN;
                        a
                    }
                    Err(e) if connection_error(&e) => {
                        tracing::debug!(%local, error = %e, "accept failed for one connection");
                        continue;
                    }
                    Err(e) => {
                        // Out of file descriptors or memory: accepting again at once would
                        // spin. Wait (doubling, up to a second), serving open connections.
                        tracing::warn!(%local, error = %e, backoff = ?accept_backoff, "accept failed; backing off");
                        let pause = tokio::time::sleep(accept_backoff);
                        tokio::pin!(pause);
                        loop {
                            tokio::select! {
                                () = &mut pause => break,
                                Some(_) = connections.join_next(), if !connections.is_empty() => {}
                            }
                        }
                        accept_backoff = (accept_backoff * 2).min(ACCEPT_BACKOFF_MAX);
                        continue;
                    }
                };
                // Not serving: closed before anything is sent (gRFC A36).
                let Some(inbound) = config.load_full() else { continue };
                let _ = tcp.set_nodelay(true);
                let accepted = Accepted {
                    inbound,
                    live: config.clone(),
                    telemetry: telemetry.clone(),
                    peer,
                    local,
                    drained: drain.subscribe(),
                };
                connections.spawn(connection(accepted, tcp, app.clone()));
            }
        }
    }
    drop(listener);
    drain.send_modify(|n| *n += 1);
    state.send_replace(ServingState::Draining);
    tracing::info!(%local, connections = connections.len(), "draining");
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// The first wait after an `accept` that failed for want of resources.
const ACCEPT_BACKOFF_MIN: std::time::Duration = std::time::Duration::from_millis(5);
/// The longest.
const ACCEPT_BACKOFF_MAX: std::time::Duration = std::time::Duration::from_secs(1);

/// Whether an `accept` error concerns only the connection being accepted (it went away
/// first), not the listener: then the next one is accepted at once.
fn connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind as K;
    matches!(
        e.kind(),
        K::ConnectionAborted | K::ConnectionReset | K::ConnectionRefused | K::Interrupted
    )
}
