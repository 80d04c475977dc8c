//! The interop client: sends `EmptyCall` / `UnaryCall` at a constant rate over an `xds:///`
//! channel through the mesh, and reports what happened through the stats services the
//! driver calls (`LoadBalancerStatsService`, `XdsUpdateClientConfigureService`, CSDS).
//!
//! Every RPC's start and end go to one task that owns the counters, so nothing on the send
//! path takes a lock.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tonic::body::Body;
use tonic::{Request, Response, Status};

use crate::proto::{
    ClientConfigureRequest, ClientConfigureResponse, Empty, LoadBalancerAccumulatedStatsRequest,
    LoadBalancerAccumulatedStatsResponse, LoadBalancerStatsRequest, LoadBalancerStatsResponse,
    MethodStats, RpcType, SimpleRequest, SimpleResponse, path,
};
use crate::rpc::{Grpc, Methods, RspFuture, call, unary, unimplemented};

/// What the client sends: methods, their metadata, and the deadline. `Configure` replaces it.
#[derive(Clone, Debug)]
pub struct Workload {
    /// Methods sent on each tick (`--rpc`).
    pub rpcs: Vec<RpcType>,
    /// Metadata per method (`--metadata=METHOD:KEY:VALUE,...`).
    pub metadata: Vec<(RpcType, String, String)>,
    /// Per-RPC deadline (`--rpc_timeout_sec`).
    pub timeout: Duration,
}

impl Default for Workload {
    fn default() -> Self {
        Self {
            rpcs: vec![RpcType::UnaryCall],
            metadata: Vec::new(),
            timeout: Duration::from_secs(20),
        }
    }
}

/// How to run the client.
#[derive(Clone, Debug)]
pub struct Options {
    /// The target, `xds:///host[:port]` (`--server`).
    pub server: String,
    /// RPCs per second per method (`--qps`).
    pub qps: u32,
    /// What to send at first.
    pub workload: Workload,
    /// Where the stats services listen (`--stats_port`).
    pub stats: SocketAddr,
}

/// A running client; dropping it stops sending and serving stats.
#[derive(Debug)]
pub struct Running {
    /// Where the stats services listen.
    pub stats: SocketAddr,
    _tasks: crate::Tasks,
}

/// Why the client could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The target is not one the mesh can route.
    #[error("--server: {0}")]
    Target(#[from] mesh_grpc::ChannelError),
    /// The stats port could not be bound.
    #[error("--stats_port {addr}: {source}")]
    Stats {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// `--qps 0` would send nothing.
    #[error("--qps must be at least 1")]
    Qps,
}

/// Starts sending RPCs through `mesh` and serving the stats services.
pub async fn start(mesh: &mesh_core::Mesh, opts: Options) -> Result<Running, StartError> {
    if opts.qps == 0 {
        return Err(StartError::Qps);
    }
    // gRPC's retries have no budget unless the service config asks for retry throttling
    // (gRFC A6), and the contract's retry scenario fails every attempt but the last on every
    // RPC, which MeshClient's default budget (20 % of requests in flight, at least 3) is
    // there to shed. The interop client follows gRPC; the cluster's max_retries still holds.
    let client = mesh_tower::MeshClient::builder(mesh)
        .retry_budget(None)
        .build();
    let channel = mesh_grpc::MeshChannel::new(client, &opts.server)?;
    let listener = tokio::net::TcpListener::bind(opts.stats)
        .await
        .map_err(|source| StartError::Stats {
            addr: opts.stats,
            source,
        })?;
    let stats_addr = listener.local_addr().map_err(|source| StartError::Stats {
        addr: opts.stats,
        source,
    })?;
    let (events, rx) = mpsc::unbounded_channel();
    let (workload, workload_rx) = watch::channel(opts.workload);
    let counter = tokio::spawn(count(rx));
    let sender = tokio::spawn(send(channel, opts.qps, workload_rx, events.clone()));
    let services = tonic::transport::Server::builder()
        .add_service(Grpc(StatsService { events }))
        .add_service(Grpc(ConfigureService {
            workload: Arc::new(workload),
        }))
        .add_service(mesh_core::status::csds_service(mesh));
    let stats = tokio::spawn(async move {
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        if let Err(e) = services.serve_with_incoming(incoming).await {
            tracing::error!(error = %e, "stats server stopped");
        }
    });
    Ok(Running {
        stats: stats_addr,
        _tasks: crate::Tasks(vec![counter, sender, stats]),
    })
}

/// What the counting task hears.
#[derive(Debug)]
enum Event {
    Started {
        id: u64,
        method: RpcType,
    },
    Finished {
        id: u64,
        method: RpcType,
        peer: Option<String>,
        code: tonic::Code,
    },
    /// `GetClientStats`: the next `n` RPCs started, answered when done or at `deadline`.
    Watch {
        n: u64,
        deadline: tokio::time::Instant,
        reply: oneshot::Sender<LoadBalancerStatsResponse>,
    },
    Accumulated(oneshot::Sender<LoadBalancerAccumulatedStatsResponse>),
}

/// Sends the workload's methods `qps` times a second, each RPC in a task of its own (an open
/// loop: a slow server does not slow the sender).
async fn send(
    channel: mesh_grpc::MeshChannel,
    qps: u32,
    workload: watch::Receiver<Workload>,
    events: mpsc::UnboundedSender<Event>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1) / qps);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut id = 0u64;
    loop {
        tick.tick().await;
        let now = workload.borrow().clone();
        for &method in &now.rpcs {
            id += 1;
            let _ = events.send(Event::Started { id, method });
            let metadata: Vec<(String, String)> = now
                .metadata
                .iter()
                .filter(|(m, _, _)| *m == method)
                .map(|(_, k, v)| (k.clone(), v.clone()))
                .collect();
            let (channel, events, timeout) = (channel.clone(), events.clone(), now.timeout);
            tokio::spawn(async move {
                let (peer, code) = one(channel, method, &metadata, timeout).await;
                let _ = events.send(Event::Finished {
                    id,
                    method,
                    peer,
                    code,
                });
            });
        }
    }
}

/// One RPC: the peer's host name (from the `hostname` header or the reply) and the status.
async fn one(
    channel: mesh_grpc::MeshChannel,
    method: RpcType,
    metadata: &[(String, String)],
    timeout: Duration,
) -> (Option<String>, tonic::Code) {
    fn prepare<T>(msg: T, metadata: &[(String, String)], timeout: Duration) -> Request<T> {
        let mut req = Request::new(msg);
        for (k, v) in metadata {
            if let (Ok(k), Ok(v)) = (
                k.parse::<tonic::metadata::MetadataKey<tonic::metadata::Ascii>>(),
                v.parse(),
            ) {
                req.metadata_mut().append(k, v);
            }
        }
        req.set_timeout(timeout);
        req
    }
    fn hostname(md: &tonic::metadata::MetadataMap) -> Option<String> {
        md.get("hostname")?.to_str().ok().map(str::to_owned)
    }
    let rpc = async {
        match method {
            RpcType::EmptyCall => {
                let req = prepare(Empty {}, metadata, timeout);
                call::<_, _, Empty>(channel, path::EMPTY_CALL, req)
                    .await
                    .map(|r| hostname(r.metadata()))
            }
            RpcType::UnaryCall => {
                let req = prepare(
                    SimpleRequest {
                        fill_server_id: true,
                        ..Default::default()
                    },
                    metadata,
                    timeout,
                );
                call::<_, _, SimpleResponse>(channel, path::UNARY_CALL, req)
                    .await
                    .map(|r| {
                        hostname(r.metadata()).or_else(|| {
                            let h = &r.get_ref().hostname;
                            (!h.is_empty()).then(|| h.clone())
                        })
                    })
            }
        }
    };
    // The mesh enforces the deadline it is given as grpc-timeout only when the route says
    // so (max_stream_duration.grpc_timeout_header_max); the application's own deadline
    // always holds, as in any gRPC client.
    match tokio::time::timeout(timeout, rpc).await {
        Err(_) => (None, tonic::Code::DeadlineExceeded),
        Ok(Ok(peer)) => (peer, tonic::Code::Ok),
        Ok(Err(status)) => (None, status.code()),
    }
}

/// A `GetClientStats` in progress.
struct Watcher {
    first: u64,
    last: u64,
    done: u64,
    deadline: tokio::time::Instant,
    reply: oneshot::Sender<LoadBalancerStatsResponse>,
    rsp: LoadBalancerStatsResponse,
}

/// Owns every counter; answers the stats services.
async fn count(mut events: mpsc::UnboundedReceiver<Event>) {
    let mut started_last = 0u64;
    let mut accumulated: HashMap<RpcType, MethodStats> = HashMap::new();
    let mut watchers: Vec<Watcher> = Vec::new();
    loop {
        let next_deadline = watchers.iter().map(|w| w.deadline).min();
        let event = tokio::select! {
            e = events.recv() => match e { Some(e) => e, None => return },
            () = async {
                match next_deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            } => {
                let now = tokio::time::Instant::now();
                let (due, kept) = watchers.into_iter().partition(|w| w.deadline <= now);
                watchers = kept;
                for w in due {
                    let _ = w.reply.send(w.rsp);
                }
                continue;
            }
        };
        match event {
            Event::Started { id, method } => {
                started_last = id;
                accumulated.entry(method).or_default().rpcs_started += 1;
            }
            Event::Finished {
                id,
                method,
                peer,
                code,
            } => {
                *accumulated
                    .entry(method)
                    .or_default()
                    .result
                    .entry(code as i32)
                    .or_default() += 1;
                let mut i = 0;
                while i < watchers.len() {
                    let w = &mut watchers[i];
                    if (w.first..=w.last).contains(&id) {
                        w.done += 1;
                        match &peer {
                            Some(p) if code == tonic::Code::Ok => {
                                *w.rsp.rpcs_by_peer.entry(p.clone()).or_default() += 1;
                                *w.rsp
                                    .rpcs_by_method
                                    .entry(method.method().to_owned())
                                    .or_default()
                                    .rpcs_by_peer
                                    .entry(p.clone())
                                    .or_default() += 1;
                            }
                            _ => w.rsp.num_failures += 1,
                        }
                        if w.done > w.last - w.first {
                            let w = watchers.swap_remove(i);
                            let _ = w.reply.send(w.rsp);
                            continue;
                        }
                    }
                    i += 1;
                }
            }
            Event::Watch { n, deadline, reply } => {
                if n == 0 {
                    let _ = reply.send(LoadBalancerStatsResponse::default());
                    continue;
                }
                watchers.push(Watcher {
                    first: started_last + 1,
                    last: started_last + n,
                    done: 0,
                    deadline,
                    reply,
                    rsp: LoadBalancerStatsResponse::default(),
                });
            }
            Event::Accumulated(reply) => {
                let mut rsp = LoadBalancerAccumulatedStatsResponse::default();
                for (method, stats) in &accumulated {
                    let ok = stats.result.get(&0).copied().unwrap_or(0);
                    let done: i32 = stats.result.values().sum();
                    let name = method.enum_name().to_owned();
                    rsp.num_rpcs_started_by_method
                        .insert(name.clone(), stats.rpcs_started);
                    rsp.num_rpcs_succeeded_by_method.insert(name.clone(), ok);
                    rsp.num_rpcs_failed_by_method
                        .insert(name.clone(), done - ok);
                    rsp.stats_per_method.insert(name, stats.clone());
                }
                let _ = reply.send(rsp);
            }
        }
    }
}

/// `grpc.testing.LoadBalancerStatsService`.
#[derive(Clone, Debug)]
struct StatsService {
    events: mpsc::UnboundedSender<Event>,
}

impl Methods for StatsService {
    const NAME: &'static str = "grpc.testing.LoadBalancerStatsService";

    fn route(&self, req: http::Request<Body>) -> RspFuture {
        let events = self.events.clone();
        let gone = || Status::unavailable("the client is stopping");
        match req.uri().path() {
            path::GET_CLIENT_STATS => unary(req, move |r: Request<LoadBalancerStatsRequest>| {
                let events = events.clone();
                async move {
                    let r = r.into_inner();
                    let (reply, rx) = oneshot::channel();
                    let secs = u64::try_from(r.timeout_sec).unwrap_or(0);
                    events
                        .send(Event::Watch {
                            n: u64::try_from(r.num_rpcs).unwrap_or(0),
                            deadline: tokio::time::Instant::now() + Duration::from_secs(secs),
                            reply,
                        })
                        .map_err(|_| gone())?;
                    Ok(Response::new(rx.await.map_err(|_| gone())?))
                }
            }),
            path::GET_CLIENT_ACCUMULATED_STATS => unary(
                req,
                move |_: Request<LoadBalancerAccumulatedStatsRequest>| {
                    let events = events.clone();
                    async move {
                        let (reply, rx) = oneshot::channel();
                        events.send(Event::Accumulated(reply)).map_err(|_| gone())?;
                        Ok(Response::new(rx.await.map_err(|_| gone())?))
                    }
                },
            ),
            other => unimplemented(other),
        }
    }
}

/// `grpc.testing.XdsUpdateClientConfigureService`.
#[derive(Clone, Debug)]
struct ConfigureService {
    workload: Arc<watch::Sender<Workload>>,
}

impl Methods for ConfigureService {
    const NAME: &'static str = "grpc.testing.XdsUpdateClientConfigureService";

    fn route(&self, req: http::Request<Body>) -> RspFuture {
        let workload = self.workload.clone();
        match req.uri().path() {
            path::CONFIGURE => unary(req, move |r: Request<ClientConfigureRequest>| {
                let workload = workload.clone();
                async move {
                    let r = r.into_inner();
                    let kind = |t: i32| {
                        RpcType::try_from(t)
                            .map_err(|_| Status::invalid_argument(format!("unknown RpcType {t}")))
                    };
                    let rpcs = r.types.iter().map(|&t| kind(t)).collect::<Result<_, _>>()?;
                    let metadata = r
                        .metadata
                        .into_iter()
                        .map(|m| Ok((kind(m.r#type)?, m.key, m.value)))
                        .collect::<Result<_, Status>>()?;
                    workload.send_modify(|w| {
                        w.rpcs = rpcs;
                        w.metadata = metadata;
                        if r.timeout_sec > 0 {
                            w.timeout = Duration::from_secs(r.timeout_sec.unsigned_abs().into());
                        }
                    });
                    Ok(Response::new(ClientConfigureResponse {}))
                }
            }),
            other => unimplemented(other),
        }
    }
}
