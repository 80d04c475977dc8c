//! Per-authority plans: what the data path reads for a target, rebuilt by a background task
//! whenever the target's snapshot changes.
//!
//! The request path loads the current [`Plan`] with one atomic load and never waits for a
//! rebuild; a task per target turns each new snapshot into a plan (resolving each cluster name
//! to its [`ClusterRuntime`], each route's policy and backend stacks ([`RoutePolicies`]))
//! and swaps it in.

use std::collections::HashMap;
use std::sync::atomic::AtomicU32;
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use mesh_core::model::FilterConfig;
use mesh_core::{Target, TargetSnapshot};
use tokio::sync::watch;

use super::Outbound;
use super::cluster::ClusterRuntime;
use super::policy::RoutePolicies;
use super::stack::{FaultFilter, StackEnv};

/// What the data path does for one authority.
#[derive(Debug)]
pub(crate) enum Plan {
    /// Route by the snapshot.
    Routes(RoutePlan),
    /// The mesh does not know the authority (its listener does not exist).
    Unknown(Arc<str>),
    /// The target exists but cannot be served (e.g. its route configuration is missing).
    Failed(Arc<str>),
}

/// A snapshot with its clusters resolved to runtimes.
#[derive(Debug)]
pub(crate) struct RoutePlan {
    pub(crate) snapshot: Arc<TargetSnapshot>,
    pub(crate) clusters: HashMap<Arc<str>, Arc<ClusterRuntime>>,
    /// Each route's policy and backends, resolved against `clusters`.
    pub(crate) policies: RoutePolicies,
    /// What the route stacks share (also for those built per request).
    pub(crate) env: StackEnv,
}

/// One authority's live plan.
#[derive(Debug)]
pub(crate) struct TargetRuntime {
    plan: ArcSwapOption<Plan>,
    published: watch::Sender<u64>,
    /// Requests with an active fault (`max_active_faults`).
    pub(crate) active_faults: Arc<AtomicU32>,
}

impl TargetRuntime {
    /// Starts following `target`.
    pub(crate) fn spawn(
        outbound: Weak<Outbound>,
        target: Target,
        shutdown: watch::Receiver<()>,
    ) -> Arc<Self> {
        let rt = Arc::new(Self {
            plan: ArcSwapOption::empty(),
            published: watch::channel(0).0,
            active_faults: Arc::default(),
        });
        tokio::spawn(drive(Arc::downgrade(&rt), outbound, target, shutdown));
        rt
    }

    /// The current plan. Lock-free.
    pub(crate) fn plan(&self) -> Option<Arc<Plan>> {
        self.plan.load_full()
    }

    /// Waits up to `bound` for the first plan.
    pub(crate) async fn wait(&self, bound: Duration) -> Option<Arc<Plan>> {
        let mut rx = self.published.subscribe();
        let first = async {
            loop {
                if let Some(p) = self.plan() {
                    return p;
                }
                if rx.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::time::timeout(bound, first).await.ok()
    }
}

async fn drive(
    rt: Weak<TargetRuntime>,
    outbound: Weak<Outbound>,
    target: Target,
    mut shutdown: watch::Receiver<()>,
) {
    let mut status = target.status_receiver();
    loop {
        let st = status.borrow_and_update().clone();
        {
            let (Some(rt), Some(ob)) = (rt.upgrade(), outbound.upgrade()) else {
                return;
            };
            let plan = match (target.snapshot(), &st.error) {
                (Some(snapshot), None) => Some(Plan::Routes(
                    build(&ob, snapshot, rt.active_faults.clone()).await,
                )),
                (_, Some(e)) if st.unknown => Some(Plan::Unknown(e.clone())),
                (_, Some(e)) => Some(Plan::Failed(e.clone())),
                (None, None) => None,
            };
            if let Some(plan) = plan {
                rt.plan.store(Some(Arc::new(plan)));
                rt.published.send_modify(|n| *n += 1);
            }
        }
        tokio::select! {
            r = status.changed() => if r.is_err() { return },
            _ = shutdown.changed() => return,
        }
    }
}

async fn build(
    ob: &Outbound,
    snapshot: Arc<TargetSnapshot>,
    active_faults: Arc<AtomicU32>,
) -> RoutePlan {
    let mut clusters = HashMap::with_capacity(snapshot.clusters.len());
    for (name, entry) in &snapshot.clusters {
        let runtime = ob.clusters.get_or_create(entry);
        runtime.update(&ob.mesh, entry).await;
        clusters.insert(name.clone(), runtime);
    }
    let faults = snapshot
        .http
        .http_filters
        .iter()
        .filter_map(|f| match &f.config {
            FilterConfig::Fault(c) => Some(FaultFilter {
                name: f.name.clone(),
                config: c.clone(),
                disabled: f.disabled,
            }),
            _ => None,
        })
        .collect();
    let env = StackEnv {
        faults,
        active_faults,
        retry_budget: ob.config.retry_budget,
    };
    RoutePlan {
        policies: RoutePolicies::build(&snapshot.routes, &clusters, &env),
        snapshot,
        clusters,
        env,
    }
}
