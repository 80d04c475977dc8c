//! Serving generated configuration over ADS (state of the world).
//!
//! Each stream remembers its node and, per type, the names it subscribed to and a digest of
//! what it was last sent. A request with new names, or a new configuration snapshot, sends a
//! response only when the resources for that stream actually changed. NACKs are logged with the
//! node id and the client's detail; the stream keeps going.
//!
//! [`Ads::in_sync`] says when every connected client has been sent a configuration version
//! and has answered every response (ACK or NACK): what `istioctl proxy-status` calls SYNCED.

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use arc_swap::ArcSwap;

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
    aggregated_discovery_service_server::{
        AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
    },
};
use envoy_types::pb::google::protobuf::Any;
use tokio::sync::{mpsc, watch};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, warn};

use crate::generate::{
    ENVOY_OUTBOUND_ROUTES, Generator, INBOUND_PREFIX, NodeInfo, NodeKind, Policies,
};
use crate::registry::Registry;

/// Type URLs served.
pub use mesh_core::xds::type_urls as urls;

/// The order a configuration change is pushed in.
const PUSH_ORDER: [&str; 4] = [urls::CLUSTER, urls::ENDPOINTS, urls::LISTENER, urls::ROUTE];

/// One consistent configuration: what every stream is served from.
#[derive(Debug)]
pub struct Snapshot {
    /// Increases with every accepted configuration.
    pub version: u64,
    /// Services.
    pub registry: Registry,
    /// Policy.
    pub policies: Policies,
}

impl Snapshot {
    /// Generates the named resources of one type for a node (unknown names are left out: the
    /// client's does-not-exist handling applies).
    pub fn resources(&self, node: &NodeInfo, type_url: &str, names: &[String]) -> Vec<Any> {
        let g = Generator::new(&self.registry, &self.policies, &node.namespace);
        // Envoy subscribes to every listener and cluster (an empty list, or `*`).
        let wildcard = names.is_empty() || names.iter().any(|n| n == "*");
        if node.kind == NodeKind::Envoy {
            match type_url {
                urls::LISTENER if wildcard => return g.envoy_listeners(node),
                urls::CLUSTER if wildcard => return g.all_clusters(node),
                urls::ROUTE => {
                    return names
                        .iter()
                        .filter(|n| *n == ENVOY_OUTBOUND_ROUTES)
                        .map(|_| g.envoy_outbound_routes(node))
                        .collect();
                }
                _ => {}
            }
        }
        names
            .iter()
            .filter_map(|n| match type_url {
                urls::LISTENER if n.starts_with(INBOUND_PREFIX) => g.inbound_listener(node, n),
                urls::LISTENER => g.listener(node, n),
                urls::ROUTE => g.route_configuration(node, n),
                urls::CLUSTER => g.cluster(node, n),
                urls::ENDPOINTS => g.endpoints(node, n),
                _ => None,
            })
            .collect()
    }
}

/// The ADS service, fed by a watch of snapshots.
#[derive(Clone)]
pub struct Ads {
    snapshots: watch::Receiver<Arc<Snapshot>>,
    nonce: Arc<AtomicU64>,
    nacks: Arc<AtomicU64>,
    sync: Arc<SyncState>,
    /// Places for open streams: one more is refused (`RESOURCE_EXHAUSTED`), so clients that
    /// open streams without end cannot starve the control plane.
    streams: Arc<tokio::sync::Semaphore>,
}

/// How many ADS streams are served at once by default.
pub const DEFAULT_MAX_STREAMS: usize = 4096;

/// How many responses may wait for a slow client on one stream. State of the world needs
/// few (one per type); a client that stops reading holds back only its own stream.
const STREAM_QUEUE: usize = 16;

/// How long a new stream may take to send its first request (with its node).
const FIRST_REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// How long a response may wait for room in a stream's queue: a client that reads nothing
/// for that long is dropped, and its place freed.
const SEND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// A client stopped reading its responses.
struct Stalled;

/// The largest request a client may send (a subscription to every cluster of a large mesh
/// is well under it).
pub const MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;

/// The largest response sent (what the client decodes at most).
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

/// What [`Ads::in_sync`] reads: responses not yet answered, and the snapshot version each
/// stream has been served from. Copy-on-write: streams come and go rarely.
#[derive(Default)]
struct SyncState {
    unanswered: AtomicI64,
    streams: ArcSwap<Vec<(u64, Arc<AtomicU64>)>>,
    next_id: AtomicU64,
}

impl SyncState {
    fn register(&self, version: u64) -> (u64, Arc<AtomicU64>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let served = Arc::new(AtomicU64::new(version));
        self.streams.rcu(|v| {
            let mut v = Vec::clone(v);
            v.push((id, served.clone()));
            v
        });
        (id, served)
    }

    fn unregister(&self, id: u64, unanswered: usize) {
        self.streams.rcu(|v| {
            v.iter()
                .filter(|(i, _)| *i != id)
                .cloned()
                .collect::<Vec<_>>()
        });
        self.unanswered
            .fetch_sub(unanswered as i64, Ordering::AcqRel);
    }
}

impl Ads {
    /// Serves the snapshots `rx` publishes.
    pub fn new(snapshots: watch::Receiver<Arc<Snapshot>>) -> Self {
        Self {
            snapshots,
            nonce: Arc::default(),
            nacks: Arc::default(),
            sync: Arc::default(),
            streams: Arc::new(tokio::sync::Semaphore::new(DEFAULT_MAX_STREAMS)),
        }
    }

    /// Serves at most `max` streams at once (default [`DEFAULT_MAX_STREAMS`]).
    pub fn with_max_streams(mut self, max: usize) -> Self {
        self.streams = Arc::new(tokio::sync::Semaphore::new(max));
        self
    }

    /// Whether every connected client has been served configuration `version` (or newer)
    /// and has answered (ACK or NACK) every response sent to it.
    pub fn in_sync(&self, version: u64) -> bool {
        // Versions first: a stream stores its version after counting the responses made
        // from it, so a version seen here comes with those responses' counts.
        let served = self
            .sync
            .streams
            .load()
            .iter()
            .all(|(_, served)| served.load(Ordering::Acquire) >= version);
        served && self.sync.unanswered.load(Ordering::Acquire) == 0
    }

    /// How many NACKs clients have sent.
    pub fn nack_count(&self) -> u64 {
        self.nacks.load(Ordering::Relaxed)
    }

    /// The tonic service.
    pub fn into_service(self) -> AggregatedDiscoveryServiceServer<Self> {
        AggregatedDiscoveryServiceServer::new(self)
            .max_decoding_message_size(MAX_REQUEST_BYTES)
            .max_encoding_message_size(MAX_RESPONSE_BYTES)
    }
}

type RespStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<DiscoveryResponse, Status>> + Send>>;
type DeltaStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<DeltaDiscoveryResponse, Status>> + Send>>;

#[derive(Default)]
struct Subscription {
    names: Vec<String>,
    /// Digest of the last response's resources; `None` before the first response.
    sent: Option<u64>,
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for Ads {
    type StreamAggregatedResourcesStream = RespStream;
    type DeltaAggregatedResourcesStream = DeltaStream;

    async fn stream_aggregated_resources(
        &self,
        req: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<RespStream>, Status> {
        let peer = req.remote_addr();
        let Ok(place) = self.streams.clone().try_acquire_owned() else {
            warn!(?peer, "ADS stream refused: too many streams");
            return Err(Status::resource_exhausted("too many ADS streams"));
        };
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        let mut snapshots = self.snapshots.clone();
        let nonce = self.nonce.clone();
        let nacks = self.nacks.clone();
        let sync = self.sync.clone();
        tokio::spawn(async move {
            let _place = place;
            let mut node: Option<NodeInfo> = None;
            let mut subs: HashMap<String, Subscription> = HashMap::new();
            // Nonces sent and not answered yet, and this stream's entry in `sync`.
            let mut unanswered: std::collections::HashSet<u64> = Default::default();
            let mut entry: Option<(u64, Arc<AtomicU64>)> = None;
            let sent = |n: Option<u64>, unanswered: &mut std::collections::HashSet<u64>| {
                if let Some(n) = n {
                    unanswered.insert(n);
                    sync.unanswered.fetch_add(1, Ordering::AcqRel);
                }
            };
            // A stream that never says who it is holds a place for nothing.
            let mut stalled = false;
            let first_request = tokio::time::sleep(FIRST_REQUEST_TIMEOUT);
            tokio::pin!(first_request);
            loop {
                tokio::select! {
                    () = &mut first_request, if node.is_none() => {
                        debug!(?peer, "no first request in time; closing the stream");
                        break;
                    }
                    msg = inbound.next() => {
                        let req = match msg {
                            Some(Ok(r)) => r,
                            Some(Err(e)) => { debug!(?peer, "stream error: {e}"); break; }
                            None => break,
                        };
                        if let Ok(n) = req.response_nonce.parse::<u64>()
                            && unanswered.remove(&n)
                        {
                            sync.unanswered.fetch_sub(1, Ordering::AcqRel);
                        }
                        if node.is_none() {
                            let Some(n) = req.node.as_ref() else {
                                let _ = tx.send(Err(Status::invalid_argument("the first request must carry a node"))).await;
                                break;
                            };
                            let info = NodeInfo::from_node(n);
                            info!(node = %info.id, namespace = %info.namespace, ?peer, "ADS stream");
                            node = Some(info);
                        }
                        // Registered once its first response is counted (below), at a version
                        // no newer than the one that response is made from.
                        let first_version = entry.is_none().then(|| snapshots.borrow().version);
                        let node = node.as_ref().expect("set above");
                        if let Some(err) = &req.error_detail {
                            nacks.fetch_add(1, Ordering::Relaxed);
                            warn!(node = %node.id, type_url = %req.type_url, version = %req.version_info, nonce = %req.response_nonce, "NACK: {}", err.message);
                        }
                        let mut names = req.resource_names.clone();
                        names.sort();
                        names.dedup();
                        let sub = subs.entry(req.type_url.clone()).or_default();
                        if sub.names != names || sub.sent.is_none() {
                            sub.names = names;
                            let snap = snapshots.borrow().clone();
                            let Ok(n) = respond(&snap, node, &req.type_url, sub, &nonce, &tx, true).await else {
                                warn!(node = %node.id, "client does not read its responses; closing the stream");
                                break;
                            };
                            sent(n, &mut unanswered);
                        }
                        if let Some(v) = first_version {
                            entry = Some(sync.register(v));
                        }
                    }
                    changed = snapshots.changed() => {
                        if changed.is_err() { break; }
                        let Some(node) = node.as_ref() else { continue };
                        let snap = snapshots.borrow_and_update().clone();
                        // Make before break (the xDS protocol's ordering): clusters and
                        // endpoints exist before listeners and routes point at them.
                        for type_url in PUSH_ORDER {
                            if let Some(sub) = subs.get_mut(type_url) {
                                let Ok(n) = respond(&snap, node, type_url, sub, &nonce, &tx, false).await else {
                                    stalled = true;
                                    break;
                                };
                                sent(n, &mut unanswered);
                            }
                        }
                        if stalled {
                            warn!(node = %node.id, "client does not read its responses; closing the stream");
                            break;
                        }
                        // After the responses are counted: `in_sync` reads versions first.
                        if let Some((_, served)) = &entry {
                            served.store(snap.version, Ordering::Release);
                        }
                    }
                }
            }
            if let Some((id, _)) = entry {
                sync.unregister(id, unanswered.len());
            } else {
                sync.unanswered
                    .fetch_sub(unanswered.len() as i64, Ordering::AcqRel);
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn delta_aggregated_resources(
        &self,
        _: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<DeltaStream>, Status> {
        Err(Status::unimplemented(
            "incremental xDS is not served; use state of the world",
        ))
    }
}

/// Sends the resources for one subscription when they changed (or when `force`d by a new
/// subscription list, which the protocol requires an answer to); the nonce of what it sent.
/// Waits while the stream's queue is full (the client reads slowly), at most
/// [`SEND_TIMEOUT`]: `Err` when the client has stopped reading.
async fn respond(
    snap: &Snapshot,
    node: &NodeInfo,
    type_url: &str,
    sub: &mut Subscription,
    nonce: &AtomicU64,
    tx: &mpsc::Sender<Result<DiscoveryResponse, Status>>,
    force: bool,
) -> Result<Option<u64>, Stalled> {
    let resources = snap.resources(node, type_url, &sub.names);
    let mut h = DefaultHasher::new();
    for r in &resources {
        r.type_url.hash(&mut h);
        r.value.hash(&mut h);
    }
    let digest = h.finish();
    if !force && sub.sent == Some(digest) {
        return Ok(None);
    }
    sub.sent = Some(digest);
    let n = nonce.fetch_add(1, Ordering::Relaxed) + 1;
    debug!(node = %node.id, %type_url, count = resources.len(), version = snap.version, "push");
    let response = DiscoveryResponse {
        version_info: snap.version.to_string(),
        resources,
        type_url: type_url.to_owned(),
        nonce: n.to_string(),
        ..Default::default()
    };
    match tokio::time::timeout(SEND_TIMEOUT, tx.send(Ok(response))).await {
        // A closed stream is noticed by the next read.
        Ok(_) => Ok(Some(n)),
        Err(_) => Err(Stalled),
    }
}
