//! Each route's policy, resolved when a target's plan is built (when its configuration
//! changes), so that the request path only looks it up.
//!
//! What a route does is spread over the route, its virtual host and the clusters it names:
//! a route without a retry or hedge policy or mirrors takes its virtual host's, and its
//! clusters are names until they are resolved to their runtimes. [`RoutePolicies`] settles
//! all of that once per plan, one [`RoutePolicy`] per route, indexed as the table is
//! ([`RouteTable::find_indexed`]), with the stack of each cluster the route sends to
//! ([`stack`](super::stack)). What depends on the request itself (a retry policy's method and
//! header conditions, the weighted choice, `cluster_header`) is still decided per request.

use std::collections::HashMap;
use std::sync::Arc;

use mesh_core::model::{Action, ClusterSpecifier, HostRewrite, RetryPolicy, RouteTable};

use super::cluster::ClusterRuntime;
use super::stack::{self, Backend, RouteRef, StackEnv};
use super::upstream::{Upstream, UpstreamRoute};
use crate::layer::mirror::{MirrorLayer, MirrorTarget};

/// Every route's policy, by virtual host and route position.
#[derive(Debug, Default)]
pub(crate) struct RoutePolicies {
    hosts: Box<[Box<[RoutePolicy]>]>,
}

/// One route's policy, resolved.
#[derive(Debug, Default)]
pub(crate) struct RoutePolicy {
    /// The retry policy in force: the route's, else its virtual host's; `None` when it allows
    /// no retry.
    pub(crate) retry: Option<Arc<RetryPolicy>>,
    /// Send another attempt when the per-try timeout fires (the route's hedge policy, else
    /// its virtual host's).
    pub(crate) hedge_on_per_try_timeout: bool,
    /// Shadow copies: the route's mirrors, else its virtual host's (those whose cluster
    /// exists).
    pub(crate) mirror: MirrorLayer<Upstream>,
    /// The backend of each cluster the route names: its `cluster`, or each weighted choice in
    /// order (`None` where the cluster does not exist); empty for `cluster_header` and for
    /// routes that do not forward.
    pub(crate) backends: Box<[Option<Backend>]>,
}

impl RoutePolicies {
    /// Resolves every route of `table` against the plan's `clusters`, building each backend's
    /// stack in `env`.
    pub(crate) fn build(
        table: &RouteTable,
        clusters: &HashMap<Arc<str>, Arc<ClusterRuntime>>,
        env: &StackEnv,
    ) -> Self {
        let hosts = table
            .virtual_hosts
            .iter()
            .map(|vh| {
                vh.routes
                    .iter()
                    .map(|route| {
                        let Action::Forward(fwd) = &route.action else {
                            return RoutePolicy::default();
                        };
                        let mirrors = if fwd.mirrors.is_empty() {
                            &vh.mirrors
                        } else {
                            &fwd.mirrors
                        };
                        let mut policy = RoutePolicy {
                            retry: fwd
                                .retry
                                .as_ref()
                                .or(vh.retry.as_ref())
                                .filter(|p| p.num_retries > 0)
                                .cloned(),
                            hedge_on_per_try_timeout: fwd
                                .hedge
                                .or(vh.hedge)
                                .is_some_and(|h| h.on_per_try_timeout),
                            mirror: MirrorLayer::new(mirrors.iter().filter_map(|m| {
                                let cluster = clusters.get(&m.cluster)?;
                                Some(MirrorTarget {
                                    service: Upstream::new(UpstreamRoute {
                                        cluster: cluster.clone(),
                                        retry: None,
                                        hedge_on_per_try_timeout: false,
                                        auto_host: matches!(
                                            fwd.host_rewrite,
                                            Some(HostRewrite::Auto)
                                        ),
                                        attempt_count_header: vh.include_attempt_count,
                                        retry_budget: env.retry_budget,
                                    }),
                                    fraction: m.fraction,
                                    shadow_host_suffix: !m.disable_shadow_host_suffix,
                                })
                            })),
                            backends: Box::new([]),
                        };
                        let at = RouteRef {
                            table,
                            host: vh,
                            route,
                            forward: fwd,
                        };
                        let backend = |name: &Arc<str>, weight| {
                            clusters
                                .get(name)
                                .map(|c| stack::backend(env, at, &policy, c, weight))
                        };
                        let backends = match &fwd.cluster {
                            ClusterSpecifier::Cluster(c) => {
                                Box::new([backend(c, None)]) as Box<[_]>
                            }
                            ClusterSpecifier::Weighted(w) => w
                                .clusters
                                .iter()
                                .map(|c| backend(&c.name, Some(c)))
                                .collect(),
                            ClusterSpecifier::Header(_) => Box::new([]),
                        };
                        policy.backends = backends;
                        policy
                    })
                    .collect()
            })
            .collect();
        Self { hosts }
    }

    /// The policy of route `route` of virtual host `host`.
    pub(crate) fn get(&self, host: usize, route: usize) -> &RoutePolicy {
        &self.hosts[host][route]
    }
}

#[cfg(test)]
mod tests {
    use mesh_core::snapshot::ClusterEntry;
    use mesh_core::static_config::parse_typed;
    use mesh_core::xds::{Resource, ResourceType};
    use serde_json::json;

    use super::*;
    use crate::client::cluster::ClusterStore;
    use crate::layer::route::tests::table;

    fn runtimes(names: &[&str]) -> HashMap<Arc<str>, Arc<ClusterRuntime>> {
        let store = ClusterStore::default();
        names
            .iter()
            .map(|n| {
                let doc = json!({"name": n, "type": "EDS",
                    "eds_cluster_config": {"eds_config": {"ads": {}}}});
                let Ok((_, _, Resource::Cluster(cluster))) =
                    parse_typed(&doc, Some(ResourceType::Cluster))
                else {
                    panic!("a cluster");
                };
                let entry = ClusterEntry {
                    cluster,
                    endpoints: None,
                };
                (Arc::from(*n), store.get_or_create(&entry))
            })
            .collect()
    }

    /// A route's own retry, hedge and mirror policies win over its virtual host's, which
    /// apply to the routes that carry none; a policy that allows no retry is none; each
    /// cluster is resolved in the order of its weighted choice, and a missing one is `None`.
    #[test]
    fn routes_take_their_own_policy_else_their_virtual_hosts() {
        let t = table(json!({"name": "r", "virtual_hosts": [{
        "name": "vh", "domains": ["*"],
        "retry_policy": {"retry_on": "5xx", "num_retries": 2},
        "hedge_policy": {"hedge_on_per_try_timeout": true},
        "request_mirror_policies": [{"cluster": "shadow"}],
        "routes": [
            {"match": {"prefix": "/own"}, "route": {"cluster": "a",
                "retry_policy": {"retry_on": "reset", "num_retries": 0},
                "hedge_policy": {},
                "request_mirror_policies": [{"cluster": "missing"}]}},
            {"match": {"prefix": "/split"}, "route": {"weighted_clusters": {"clusters": [
                {"name": "b", "weight": 1}, {"name": "gone", "weight": 1}, {"name": "a", "weight": 1}]}}},
            {"match": {"prefix": "/"}, "direct_response": {"status": 200}}
        ]}]}));
        let clusters = runtimes(&["a", "b", "shadow"]);
        let p = RoutePolicies::build(&t, &clusters, &StackEnv::default());

        let own = p.get(0, 0);
        assert!(
            own.retry.is_none(),
            "the route's own policy allows no retry"
        );
        assert!(!own.hedge_on_per_try_timeout);
        assert!(
            own.mirror.is_empty(),
            "the route's own mirror, to a cluster that does not exist"
        );
        assert_eq!(&*own.backends[0].as_ref().unwrap().cluster.name, "a");

        let split = p.get(0, 1);
        assert_eq!(split.retry.as_ref().map(|r| r.num_retries), Some(2));
        assert!(split.hedge_on_per_try_timeout);
        assert_eq!(split.mirror.len(), 1, "the virtual host's mirror");
        let names: Vec<Option<&str>> = split
            .backends
            .iter()
            .map(|b| b.as_ref().map(|b| &*b.cluster.name))
            .collect();
        assert_eq!(names, [Some("b"), None, Some("a")]);

        let direct = p.get(0, 2);
        assert!(direct.backends.is_empty() && direct.retry.is_none());
    }
}
