//! Per-target snapshots: everything one client target needs, assembled only when complete.
//!
//! A target is a client listener name (`reviews:9080`). Its assembler follows the chain
//! LDS → RDS → CDS → EDS, subscribing to what each step names and dropping what it no longer
//! names, and publishes a new immutable [`TargetSnapshot`] only when every resource in the chain
//! has arrived or is known not to exist (gRFC A74: no torn config). The data path reads the
//! current snapshot with one atomic load; requests in flight keep the one they started with.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use futures_util::future::{FutureExt, select_all};
use tokio::sync::watch;

use crate::mesh::Source;
use crate::model::{
    Cluster, Discovery, EndpointSet, HttpConnectionManager, Listener, ListenerKind, RouteSource,
    RouteTable,
};
use crate::xds::{Resource, ResourceType, ResourceWatch};

/// Everything a client target needs, consistent and immutable.
#[derive(Debug)]
#[non_exhaustive]
pub struct TargetSnapshot {
    /// The listener name.
    pub name: Arc<str>,
    /// The listener.
    pub listener: Arc<Listener>,
    /// Its HTTP connection manager.
    pub http: Arc<HttpConnectionManager>,
    /// The routes.
    pub routes: Arc<RouteTable>,
    /// Clusters the routes reference that exist, with their endpoints.
    pub clusters: HashMap<Arc<str>, ClusterEntry>,
    /// Increases with every published snapshot of this target.
    pub generation: u64,
}

/// A cluster and its endpoints.
#[derive(Clone, Debug)]
pub struct ClusterEntry {
    /// The cluster.
    pub cluster: Arc<Cluster>,
    /// Its endpoints; `None` when EDS says the assignment does not exist.
    pub endpoints: Option<Arc<EndpointSet>>,
}

/// The state of a target besides its snapshot.
#[derive(Clone, Debug, Default)]
pub struct TargetStatus {
    /// Generation of the latest published snapshot (0: none yet).
    pub generation: u64,
    /// Why the target cannot be served, when it cannot (e.g. its listener does not exist).
    pub error: Option<Arc<str>>,
    /// The control plane says the target's listener does not exist: the authority is not a
    /// service of the mesh (Istio's outbound traffic policy then decides what happens).
    pub unknown: bool,
}

/// A handle to one target's live configuration. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Target {
    shared: Arc<TargetShared>,
}

#[derive(Debug)]
struct TargetShared {
    name: Arc<str>,
    snapshot: ArcSwapOption<TargetSnapshot>,
    status: watch::Receiver<TargetStatus>,
}

/// Where a target's listener comes from.
enum ListenerSource {
    /// A client listener resource, watched (`reviews:9080`).
    Watched(Arc<str>),
    /// Fixed at creation: a cluster target's listener, whose one route sends every request
    /// to the cluster.
    Fixed(Arc<Listener>),
}

impl Target {
    pub(crate) fn spawn(source: Source, name: Arc<str>) -> Self {
        Self::start(source, name.clone(), ListenerSource::Watched(name))
    }

    /// A target that sends every request to `cluster`, whatever its authority: what Envoy's
    /// asynchronous client does for a filter's own requests (a remote JWKS' `http_uri`, an
    /// authorization service), which name a cluster and not a route.
    pub(crate) fn spawn_cluster(source: Source, cluster: Arc<str>) -> Self {
        let listener = Arc::new(cluster_listener(&cluster));
        Self::start(source, cluster, ListenerSource::Fixed(listener))
    }

    fn start(source: Source, name: Arc<str>, listener: ListenerSource) -> Self {
        let (tx, rx) = watch::channel(TargetStatus::default());
        let shared = Arc::new(TargetShared {
            name: name.clone(),
            snapshot: ArcSwapOption::empty(),
            status: rx,
        });
        let weak = Arc::downgrade(&shared);
        tokio::spawn(async move {
            tokio::select! {
                _ = assemble(source, name, listener, weak, &tx) => {}
                _ = tx.closed() => {}
            }
        });
        Self { shared }
    }

    /// The listener name (the cluster's, for a cluster target).
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The current snapshot, if one is complete. Lock-free.
    pub fn snapshot(&self) -> Option<Arc<TargetSnapshot>> {
        self.shared.snapshot.load_full()
    }

    /// The current status.
    pub fn status(&self) -> TargetStatus {
        self.shared.status.borrow().clone()
    }

    /// Waits for the first complete snapshot.
    pub async fn ready(&self) -> Arc<TargetSnapshot> {
        let mut rx = self.shared.status.clone();
        loop {
            if let Some(s) = self.snapshot() {
                return s;
            }
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Waits until a snapshot newer than `generation` is published.
    pub async fn changed_since(&self, generation: u64) -> Arc<TargetSnapshot> {
        let mut rx = self.shared.status.clone();
        loop {
            if let Some(s) = self.snapshot().filter(|s| s.generation > generation) {
                return s;
            }
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// A receiver that changes whenever the status (and so the snapshot) changes.
    pub fn status_receiver(&self) -> watch::Receiver<TargetStatus> {
        self.shared.status.clone()
    }
}

/// A cluster target's listener: an API listener whose one route sends everything to
/// `cluster`, with no route timeout (the caller bounds its own request) and no retries.
/// Built as the Envoy resource and translated, so it is exactly what that resource means.
fn cluster_listener(cluster: &str) -> Listener {
    use envoy_types::pb::envoy::config::listener::v3 as listener;
    use envoy_types::pb::envoy::config::route::v3 as route;
    use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
    use prost::Name;
    fn any<T: prost::Message + Name>(m: &T) -> envoy_types::pb::google::protobuf::Any {
        envoy_types::pb::google::protobuf::Any {
            type_url: T::type_url(),
            value: m.encode_to_vec(),
        }
    }
    let routes = route::RouteConfiguration {
        name: format!("cluster:{cluster}"),
        virtual_hosts: vec![route::VirtualHost {
            name: "cluster".into(),
            domains: vec!["*".into()],
            routes: vec![route::Route {
                r#match: Some(route::RouteMatch {
                    path_specifier: Some(route::route_match::PathSpecifier::Prefix("/".into())),
                    ..Default::default()
                }),
                action: Some(route::route::Action::Route(route::RouteAction {
                    cluster_specifier: Some(route::route_action::ClusterSpecifier::Cluster(
                        cluster.into(),
                    )),
                    timeout: Some(Default::default()),
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    let manager = hcm::HttpConnectionManager {
        route_specifier: Some(hcm::http_connection_manager::RouteSpecifier::RouteConfig(
            routes,
        )),
        http_filters: vec![hcm::HttpFilter {
            name: "envoy.filters.http.router".into(),
            config_type: Some(hcm::http_filter::ConfigType::TypedConfig(any(
                &Router::default(),
            ))),
            ..Default::default()
        }],
        ..Default::default()
    };
    let resource = listener::Listener {
        name: format!("cluster:{cluster}"),
        api_listener: Some(listener::ApiListener {
            api_listener: Some(any(&manager)),
        }),
        ..Default::default()
    };
    crate::xds::translate::listener(&resource)
        .expect("a listener routing to one cluster is always valid")
}

async fn assemble(
    source: Source,
    name: Arc<str>,
    listener: ListenerSource,
    shared: std::sync::Weak<TargetShared>,
    status: &watch::Sender<TargetStatus>,
) {
    let mut lw = match listener {
        ListenerSource::Watched(name) => {
            let Ok(w) = source.watch(ResourceType::Listener, &name).await else {
                return;
            };
            Watched::Listener(w)
        }
        ListenerSource::Fixed(l) => Watched::Fixed(l),
    };
    let mut rw: Option<(Arc<str>, ResourceWatch)> = None;
    let mut cws: HashMap<Arc<str>, ResourceWatch> = HashMap::new();
    let mut ews: HashMap<Arc<str>, ResourceWatch> = HashMap::new();
    let mut generation = 0u64;
    loop {
        match evaluate(&source, &name, &lw, &mut rw, &mut cws, &mut ews).await {
            Step::Complete(mut snap) => {
                let Some(shared) = shared.upgrade() else {
                    return;
                };
                let current = shared.snapshot.load();
                if !current.as_ref().is_some_and(|c| same_config(c, &snap)) {
                    generation += 1;
                    snap.generation = generation;
                    shared.snapshot.store(Some(Arc::new(snap)));
                    status.send_replace(TargetStatus {
                        generation,
                        error: None,
                        unknown: false,
                    });
                }
            }
            Step::Failed { why, unknown } => {
                tracing::warn!(target = %name, %why, "target cannot be served");
                if let Some(shared) = shared.upgrade() {
                    shared.snapshot.store(None);
                }
                status.send_replace(TargetStatus {
                    generation,
                    error: Some(why.into()),
                    unknown,
                });
            }
            Step::Waiting => {}
            Step::Stopped => return,
        }
        // Wait for any watched resource to change.
        let mut futs = Vec::new();
        if let Watched::Listener(w) = &mut lw {
            futs.push(w.changed().boxed());
        }
        if let Some((_, w)) = rw.as_mut() {
            futs.push(w.changed().boxed());
        }
        futs.extend(cws.values_mut().map(|w| w.changed().boxed()));
        futs.extend(ews.values_mut().map(|w| w.changed().boxed()));
        if futs.is_empty() {
            // A fixed listener whose routes name nothing: nothing can change.
            std::future::pending::<()>().await;
        }
        select_all(futs).await;
    }
}

/// The listener as the assembler holds it.
enum Watched {
    Listener(ResourceWatch),
    Fixed(Arc<Listener>),
}

enum Step {
    Complete(TargetSnapshot),
    Failed { why: String, unknown: bool },
    Waiting,
    Stopped,
}

/// Whether two snapshots hold the very same resources (so publishing would change nothing).
fn same_config(a: &TargetSnapshot, b: &TargetSnapshot) -> bool {
    Arc::ptr_eq(&a.listener, &b.listener)
        && Arc::ptr_eq(&a.routes, &b.routes)
        && a.clusters.len() == b.clusters.len()
        && a.clusters.iter().all(|(k, v)| {
            b.clusters.get(k).is_some_and(|w| {
                Arc::ptr_eq(&v.cluster, &w.cluster)
                    && match (&v.endpoints, &w.endpoints) {
                        (Some(x), Some(y)) => Arc::ptr_eq(x, y),
                        (None, None) => true,
                        _ => false,
                    }
            })
        })
}

async fn evaluate(
    source: &Source,
    name: &Arc<str>,
    lw: &Watched,
    rw: &mut Option<(Arc<str>, ResourceWatch)>,
    cws: &mut HashMap<Arc<str>, ResourceWatch>,
    ews: &mut HashMap<Arc<str>, ResourceWatch>,
) -> Step {
    let listener = match lw {
        Watched::Fixed(l) => l.clone(),
        Watched::Listener(w) => {
            let l = w.current();
            match l.value {
                Some(Resource::Listener(l)) => l,
                _ if l.does_not_exist() => {
                    return Step::Failed {
                        why: format!("listener {name:?} does not exist"),
                        unknown: true,
                    };
                }
                _ => return Step::Waiting,
            }
        }
    };
    let http = match &listener.kind {
        ListenerKind::Api(h) => h.clone(),
        ListenerKind::Socket(_) => {
            return Step::Failed {
                why: format!("listener {name:?} is not an API listener"),
                unknown: false,
            };
        }
    };
    let routes: Arc<RouteTable> = match &http.routes {
        RouteSource::Inline(t) => {
            *rw = None;
            t.clone()
        }
        RouteSource::Rds(rds) => {
            if rw.as_ref().is_none_or(|(n, _)| n != rds) {
                let Ok(w) = source.watch(ResourceType::RouteConfiguration, rds).await else {
                    return Step::Stopped;
                };
                *rw = Some((rds.clone(), w));
            }
            let st = rw.as_ref().expect("just set").1.current();
            match st.value {
                Some(Resource::RouteConfiguration(t)) => t,
                _ if st.does_not_exist() => {
                    return Step::Failed {
                        why: format!("route configuration {rds:?} does not exist"),
                        unknown: false,
                    };
                }
                _ => return Step::Waiting,
            }
        }
    };
    let wanted = routes.referenced_clusters();
    cws.retain(|k, _| wanted.contains(k));
    for c in &wanted {
        if !cws.contains_key(c) {
            let Ok(w) = source.watch(ResourceType::Cluster, c).await else {
                return Step::Stopped;
            };
            cws.insert(c.clone(), w);
        }
    }
    let mut clusters = HashMap::with_capacity(wanted.len());
    let mut eds_wanted: Vec<Arc<str>> = Vec::new();
    let mut complete = true;
    for (cname, w) in cws.iter() {
        let st = w.current();
        match st.value {
            Some(Resource::Cluster(c)) => {
                if let Some(svc) = c.eds_name() {
                    eds_wanted.push(svc.clone());
                }
                clusters.insert(
                    cname.clone(),
                    ClusterEntry {
                        endpoints: static_endpoints(&c),
                        cluster: c,
                    },
                );
            }
            // A cluster that does not exist is left out; routes to it fail per request.
            _ if st.is_resolved() => {}
            _ => complete = false,
        }
    }
    ews.retain(|k, _| eds_wanted.contains(k));
    for e in &eds_wanted {
        if !ews.contains_key(e) {
            let Ok(w) = source.watch(ResourceType::ClusterLoadAssignment, e).await else {
                return Step::Stopped;
            };
            ews.insert(e.clone(), w);
        }
    }
    for entry in clusters.values_mut() {
        if let Some(svc) = entry.cluster.eds_name() {
            let st = ews[svc].current();
            match st.value {
                Some(Resource::ClusterLoadAssignment(e)) => entry.endpoints = Some(e),
                _ if st.is_resolved() => entry.endpoints = None,
                _ => complete = false,
            }
        }
    }
    if !complete {
        return Step::Waiting;
    }
    Step::Complete(TargetSnapshot {
        name: name.clone(),
        listener,
        http,
        routes,
        clusters,
        generation: 0,
    })
}

fn static_endpoints(c: &Cluster) -> Option<Arc<EndpointSet>> {
    match &c.discovery {
        Discovery::Static(e) => Some(e.clone()),
        _ => None,
    }
}
