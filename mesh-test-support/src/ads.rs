//! A scriptable ADS (state-of-the-world) server on 127.0.0.1, speaking the real protocol over
//! real TCP, so the client is tested the way it runs.
//!
//! Tests set resources per type; every open stream subscribed to that type gets a response with
//! the resources it asked for. Every request the client sends (ACKs and NACKs included) is
//! recorded and can be awaited.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
    aggregated_discovery_service_server::{
        AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
    },
};
use envoy_types::pb::google::protobuf::Any;
use futures_util::Stream;
use tokio::sync::{Notify, broadcast, mpsc, oneshot};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::{TcpListenerStream, UnboundedReceiverStream};
use tonic::{Request, Response, Status, Streaming};

#[derive(Default)]
struct State {
    /// type URL → (version, name → resource)
    resources: BTreeMap<String, (u64, BTreeMap<String, Any>)>,
    requests: Vec<DiscoveryRequest>,
    nonce: u64,
    streams_opened: usize,
    /// Record requests (on by default; benchmarks turn it off so the log does not count).
    quiet: bool,
    /// Answer an empty listener or cluster subscription with every resource (Envoy's wildcard).
    wildcard: bool,
    /// End every stream right after its first response (a flapping control plane).
    flap: bool,
    /// Before answering a changed subscription, push what the previous one named, as a
    /// server does when a push crosses the client's request; then answer after this delay.
    cross_pushes: Option<std::time::Duration>,
}

struct Shared {
    state: Mutex<State>,
    /// Wakes stream tasks when resources change (the type URL).
    push: broadcast::Sender<String>,
    /// Wakes tests waiting for requests.
    request_seen: Notify,
    /// Ends every open stream (server "crash").
    kill: broadcast::Sender<()>,
}

/// The server. Dropping it stops it.
pub struct AdsServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    unix: Option<std::path::PathBuf>,
}

impl Shared {
    fn new() -> Arc<Self> {
        let (push, _) = broadcast::channel(1024);
        let (kill, _) = broadcast::channel(4);
        Arc::new(Shared {
            state: Mutex::default(),
            push,
            request_seen: Notify::new(),
            kill,
        })
    }
}

impl AdsServer {
    /// Starts on an ephemeral loopback port.
    pub async fn start() -> Self {
        Self::start_on("127.0.0.1:0".parse().expect("loopback")).await
    }

    /// Starts on `addr` (to restart a server where a client expects it).
    pub async fn start_on(addr: SocketAddr) -> Self {
        let shared = Shared::new();
        let (addr, stop) = serve(addr, shared.clone()).await;
        Self {
            addr,
            shared,
            stop: Some(stop),
            unix: None,
        }
    }

    /// Starts with TLS on an ephemeral loopback port; with `client_ca`, clients must present a
    /// certificate it signed (mTLS).
    pub async fn start_tls(server: &crate::CertifiedKey, client_ca: Option<&str>) -> Self {
        use tonic::transport::{Certificate, Identity, ServerTlsConfig};
        let shared = Shared::new();
        let listener = bind_retrying("127.0.0.1:0".parse().expect("loopback")).await;
        let addr = listener.local_addr().expect("local addr");
        let mut tls =
            ServerTlsConfig::new().identity(Identity::from_pem(&server.cert_pem, &server.key_pem));
        if let Some(ca) = client_ca {
            tls = tls.client_ca_root(Certificate::from_pem(ca));
        }
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let svc = AggregatedDiscoveryServiceServer::new(Ads {
            shared: shared.clone(),
        });
        let router = tonic::transport::Server::builder()
            .tls_config(tls)
            .expect("server TLS")
            .add_service(svc);
        tokio::spawn(async move {
            let _ = router
                .serve_with_incoming_shutdown(nodelay(listener), async {
                    let _ = stop_rx.await;
                })
                .await;
        });
        Self {
            addr,
            shared,
            stop: Some(stop_tx),
            unix: None,
        }
    }

    /// Starts on a Unix domain socket at `path`.
    pub async fn start_unix(path: &std::path::Path) -> Self {
        let shared = Shared::new();
        let listener = tokio::net::UnixListener::bind(path).expect("bind unix socket");
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let svc = AggregatedDiscoveryServiceServer::new(Ads {
            shared: shared.clone(),
        });
        tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::UnixListenerStream::new(listener),
                    async {
                        let _ = stop_rx.await;
                    },
                )
                .await;
        });
        let addr = "0.0.0.0:0".parse().expect("placeholder");
        Self {
            addr,
            shared,
            stop: Some(stop_tx),
            unix: Some(path.to_owned()),
        }
    }

    /// The server URI for a bootstrap: `127.0.0.1:PORT` or `unix:///path`.
    pub fn server_uri(&self) -> String {
        match &self.unix {
            Some(p) => format!("unix://{}", p.display()),
            None => self.addr.to_string(),
        }
    }

    /// Stops the server and breaks every stream, keeping the resources and recorded requests;
    /// [`AdsServer::restart`] brings it back on the same port.
    pub async fn stop(&mut self) {
        let _ = self.shared.kill.send(());
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        // Let the listener close before a restart binds the port again.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    /// Starts again on the same address with the same resources.
    pub async fn restart(&mut self) {
        self.stop().await;
        let (_, stop) = serve(self.addr, self.shared.clone()).await;
        self.stop = Some(stop);
    }

    /// The address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A bootstrap JSON naming this server (insecure), with `features` as server features.
    pub fn bootstrap_json(&self, features: &[&str]) -> String {
        serde_json::json!({
            "xds_servers": [{"server_uri": self.server_uri(), "channel_creds": [{"type": "insecure"}], "server_features": features}],
            "node": {"id": "test-node", "cluster": "test", "metadata": {"NAMESPACE": "default"}},
        })
        .to_string()
    }

    /// Sets (adds or replaces) one resource and pushes its type.
    pub fn set(&self, resource: Any) {
        let name = crate::resources::name_of(&resource);
        let url = resource.type_url.clone();
        self.edit(&url, |m| {
            m.insert(name, resource);
        });
    }

    /// Sets many resources of one type with a single version bump and push, as a control plane
    /// that debounces changes would.
    pub fn set_many(&self, resources: impl IntoIterator<Item = Any>) {
        let mut by_type: BTreeMap<String, Vec<Any>> = BTreeMap::new();
        for r in resources {
            by_type.entry(r.type_url.clone()).or_default().push(r);
        }
        for (url, list) in by_type {
            self.edit(&url, |m| {
                for r in list {
                    m.insert(crate::resources::name_of(&r), r);
                }
            });
        }
    }

    /// Removes one resource and pushes its type.
    pub fn remove(&self, type_url: &str, name: &str) {
        self.edit(type_url, |m| {
            m.remove(name);
        });
    }

    fn edit(&self, type_url: &str, f: impl FnOnce(&mut BTreeMap<String, Any>)) {
        {
            let mut st = self.shared.state.lock().expect("state");
            let entry = st.resources.entry(type_url.to_owned()).or_default();
            entry.0 += 1;
            f(&mut entry.1);
        }
        let _ = self.shared.push.send(type_url.to_owned());
    }

    /// Answers empty listener and cluster subscriptions with every resource of the type, as
    /// Envoy's wildcard subscriptions expect. Off by default: for our client an empty list
    /// means it wants none.
    pub fn serve_wildcard(&self) {
        self.shared.state.lock().expect("state").wildcard = true;
    }

    /// Stops recording requests and forgets those recorded (for memory measurements).
    pub fn stop_recording(&self) {
        let mut st = self.shared.state.lock().expect("state");
        st.quiet = true;
        st.requests = Vec::new();
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<DiscoveryRequest> {
        self.shared.state.lock().expect("state").requests.clone()
    }

    /// How many ADS streams have been opened.
    /// From now on, ends every stream right after its first response, as a control plane
    /// that crashes in a loop would.
    pub fn flap(&self, on: bool) {
        self.shared.state.lock().expect("state").flap = on;
    }

    /// From now on (`Some`), answers each changed subscription `delay` after a push of what
    /// the stream named before: the order a client sees when the server pushed just before it
    /// read the client's request (a response that lacks the names just asked for, yet
    /// follows them), on a slow path.
    pub fn cross_pushes(&self, delay: Option<std::time::Duration>) {
        self.shared.state.lock().expect("state").cross_pushes = delay;
    }

    /// Streams opened so far.
    pub fn streams_opened(&self) -> usize {
        self.shared.state.lock().expect("state").streams_opened
    }

    /// Waits (up to 10 s) for a request satisfying `pred`, counting from the start.
    pub async fn wait_request(
        &self,
        what: &str,
        mut pred: impl FnMut(&DiscoveryRequest) -> bool,
    ) -> DiscoveryRequest {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let notified = self.shared.request_seen.notified();
            if let Some(r) = self.requests().into_iter().find(|r| pred(r)) {
                return r;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!(
                    "no request matching {what:?} within 10 s; got {:#?}",
                    self.requests()
                );
            }
        }
    }
}

impl Drop for AdsServer {
    fn drop(&mut self) {
        let _ = self.shared.kill.send(());
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn serve(addr: SocketAddr, shared: Arc<Shared>) -> (SocketAddr, oneshot::Sender<()>) {
    let listener = bind_retrying(addr).await;
    let addr = listener.local_addr().expect("local addr");
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let svc = AggregatedDiscoveryServiceServer::new(Ads { shared });
    tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming_shutdown(nodelay(listener), async {
                let _ = stop_rx.await;
            })
            .await;
    });
    (addr, stop_tx)
}

async fn bind_retrying(addr: SocketAddr) -> tokio::net::TcpListener {
    let mut last = None;
    for _ in 0..100 {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => return l,
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("cannot bind {addr}: {last:?}");
}

struct Ads {
    shared: Arc<Shared>,
}

type RespStream = Pin<Box<dyn Stream<Item = Result<DiscoveryResponse, Status>> + Send>>;
type DeltaStream = Pin<Box<dyn Stream<Item = Result<DeltaDiscoveryResponse, Status>> + Send>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for Ads {
    type StreamAggregatedResourcesStream = RespStream;
    type DeltaAggregatedResourcesStream = DeltaStream;

    async fn stream_aggregated_resources(
        &self,
        req: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<RespStream>, Status> {
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::unbounded_channel::<Result<DiscoveryResponse, Status>>();
        let shared = self.shared.clone();
        shared.state.lock().expect("state").streams_opened += 1;
        let mut push = shared.push.subscribe();
        let mut kill = shared.kill.subscribe();
        tokio::spawn(async move {
            // Per type: the names this stream subscribed to, and the version last sent.
            let mut subs: HashMap<String, (Vec<String>, Option<u64>)> = HashMap::new();
            loop {
                tokio::select! {
                    _ = kill.recv() => {
                        let _ = tx.send(Err(Status::unavailable("server stopped")));
                        return;
                    }
                    msg = inbound.next() => {
                        let Some(Ok(req)) = msg else { return };
                        let url = req.type_url.clone();
                        {
                            let mut st = shared.state.lock().expect("state");
                            if !st.quiet {
                                st.requests.push(req.clone());
                            }
                        }
                        shared.request_seen.notify_waiters();
                        let mut names = req.resource_names.clone();
                        names.sort();
                        let entry = subs.entry(url.clone()).or_insert((Vec::new(), None));
                        let names_changed = entry.0 != names;
                        let crossing = shared.state.lock().expect("state").cross_pushes;
                        if let Some(delay) = crossing.filter(|_| names_changed && entry.1.is_some()) {
                            let mut before = (entry.0.clone(), None);
                            if let Some(resp) = respond(&shared, &url, &mut before) {
                                let _ = tx.send(Ok(resp));
                            }
                            tokio::time::sleep(delay).await;
                        }
                        entry.0 = names;
                        // Answer new or changed subscriptions; ACKs and NACKs get no answer.
                        if (names_changed || entry.1.is_none())
                            && let Some(resp) = respond(&shared, &url, entry) {
                                let _ = tx.send(Ok(resp));
                                if shared.state.lock().expect("state").flap {
                                    let _ = tx.send(Err(Status::unavailable("flapping")));
                                    return;
                                }
                            }
                    }
                    url = push.recv() => {
                        let Ok(url) = url else { continue };
                        if let Some(entry) = subs.get_mut(&url)
                            && let Some(resp) = respond(&shared, &url, entry) {
                                let _ = tx.send(Ok(resp));
                            }
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(UnboundedReceiverStream::new(rx))))
    }

    async fn delta_aggregated_resources(
        &self,
        _: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<DeltaStream>, Status> {
        Err(Status::unimplemented("delta xDS"))
    }
}

fn respond(
    shared: &Shared,
    url: &str,
    entry: &mut (Vec<String>, Option<u64>),
) -> Option<DiscoveryResponse> {
    let mut st = shared.state.lock().expect("state");
    let (version, resources) = st
        .resources
        .get(url)
        .map(|(v, m)| (*v, m.clone()))
        .unwrap_or_default();
    let wildcard = st.wildcard
        && entry.0.is_empty()
        && (url.ends_with(".Listener") || url.ends_with(".Cluster"));
    if entry.1 == Some(version) && version != 0 && (entry.0.is_empty() || wildcard) {
        return None;
    }
    entry.1 = Some(version);
    st.nonce += 1;
    let nonce = st.nonce;
    let names: std::collections::HashSet<&String> = entry.0.iter().collect();
    let resources = resources
        .into_iter()
        .filter(|(n, _)| wildcard || names.contains(n))
        .map(|(_, a)| a)
        .collect();
    Some(DiscoveryResponse {
        version_info: version.to_string(),
        resources,
        type_url: url.to_owned(),
        nonce: nonce.to_string(),
        ..Default::default()
    })
}

/// Accepted connections with Nagle's algorithm off: a push is one small write the client must
/// see at once (with Nagle, it can wait 40 ms for the client's delayed ACK).
fn nodelay(
    listener: tokio::net::TcpListener,
) -> impl Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    TcpListenerStream::new(listener).map(|accepted| {
        accepted.inspect(|tcp| {
            let _ = tcp.set_nodelay(true);
        })
    })
}
