//! The ADS worker: one task that owns the stream, the subscriptions and the cache.
//!
//! It follows the state-of-the-world protocol: one `DiscoveryRequest` per type naming every
//! subscribed resource; each response is ACKed with its version and nonce, or NACKed with the
//! previous version and an `error_detail` naming each bad resource and field. Valid resources of
//! a NACKed response are still applied (gRFC A46); invalid ones keep their last good value unless
//! the server has `fail_on_data_errors` (gRFC A88). Connectivity follows gRFC A57 (does-not-exist
//! timers run only while connected) and A71 (fall back to the next server while the primary is
//! unreachable and something is still missing; return to the primary once it answers).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::service::discovery::v3::{
    DiscoveryRequest, DiscoveryResponse,
    aggregated_discovery_service_client::AggregatedDiscoveryServiceClient,
};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::resource::{ResourceType, decode};
use super::state::{ResourceError, ResourceStatus};
use super::{Command, Registry, ResourceDump, SubSender, XdsClientConfig};
use crate::bootstrap::{Bootstrap, XdsServer};

/// Subscription changes are sent once none has arrived for this long ...
const SUBSCRIPTION_COALESCING: Duration = Duration::from_millis(2);
/// ... or this long after the first of a burst, whichever comes first.
const SUBSCRIPTION_COALESCING_MAX: Duration = Duration::from_millis(100);

struct Sub {
    tx: SubSender,
    /// When the does-not-exist timer fires; set only while connected and nothing is cached.
    dne_deadline: Option<Instant>,
    /// A listener never received was missing from a response that seemed to answer our
    /// latest subscription (see [`ABSENT_LISTENER_GRACE`]).
    seen_absent: bool,
}

/// How long a listener never received, missing from a response that seems to answer our
/// latest subscription, waits for another response before it is concluded absent. A push the
/// server sent before it read our request looks the same as its answer; its real answer
/// follows within a round trip, and a second response without the name concludes at once.
const ABSENT_LISTENER_GRACE: Duration = Duration::from_secs(1);

#[derive(Default)]
struct TypeState {
    subs: HashMap<String, Sub>,
    /// Last ACKed `version_info`.
    version: String,
    /// Nonce of the last response.
    nonce: String,
    /// Names in the last request sent on this stream.
    sent_names: Vec<String>,
    /// Requests that changed the names and have not been answered yet (a SotW server answers
    /// each such request once).
    changes_in_flight: u32,
}

pub(crate) struct Worker {
    bootstrap: Arc<Bootstrap>,
    config: XdsClientConfig,
    commands: mpsc::UnboundedReceiver<Command>,
    /// The subscriptions the handles see; one removed here is removed there too.
    registry: Registry,
    types: [TypeState; 4],
    node: core::Node,
    /// No does-not-exist deadline is earlier than this (`None`: there is none). Kept as a
    /// lower bound, lowered whenever a deadline is set and recomputed only when it fires:
    /// scanning every subscription for the earliest deadline on each event made a burst of
    /// N subscriptions cost N² (10k clusters with their endpoints took 1.8 s to load).
    dne_soonest: Option<Instant>,
}

/// How a session ended.
enum End {
    /// The stream lasted (`stable_after`) and had responses: reconnect soon, to the same
    /// server.
    Routine(String),
    /// The stream had responses but ended soon after it opened: reconnect to the same server
    /// after a backoff.
    Unstable(String),
    /// No response was received: the server is unreachable or broken.
    Failed(String),
    /// The primary is reachable again while we were on a fallback.
    PrimaryBack,
    /// The client was dropped.
    Shutdown,
}

impl Worker {
    pub(crate) fn new(
        bootstrap: Arc<Bootstrap>,
        config: XdsClientConfig,
        commands: mpsc::UnboundedReceiver<Command>,
        registry: Registry,
    ) -> Self {
        let node = node_proto(&bootstrap, &config);
        Self {
            bootstrap,
            config,
            commands,
            registry,
            types: Default::default(),
            dne_soonest: None,
            node,
        }
    }

    pub(crate) async fn run(mut self) {
        let servers = self.bootstrap.xds_servers.clone();
        let mut backoff = Backoff::new(self.config.backoff_base, self.config.backoff_max);
        let mut index = 0usize;
        loop {
            let server = &servers[index];
            let end = self.session(server, index, &servers).await;
            match end {
                End::Shutdown => return,
                End::PrimaryBack => {
                    info!(server = %servers[0].server_uri, "primary xDS server is back; leaving the fallback");
                    index = 0;
                    backoff.reset();
                }
                End::Routine(why) => {
                    debug!(server = %server.server_uri, %why, "ADS stream ended; reconnecting");
                    backoff.reset();
                    if !self.wait(self.config.routine_reconnect_delay).await {
                        return;
                    }
                }
                End::Unstable(why) => {
                    // The server answered, then dropped the stream soon after: no failover
                    // (it works), but no reset either, so a flapping server is not stormed.
                    let delay = backoff.next();
                    warn!(server = %server.server_uri, %why, ?delay, "ADS stream ended soon after it opened; reconnecting after a backoff");
                    if !self.wait(delay).await {
                        return;
                    }
                }
                End::Failed(why) => {
                    warn!(server = %server.server_uri, %why, "xDS server unavailable");
                    // gRFC A71: move to the next server only while something is still missing;
                    // with everything cached, keep serving it and retry the same server.
                    if index + 1 < servers.len() && self.anything_missing() {
                        index += 1;
                        info!(server = %servers[index].server_uri, "falling back to the next xDS server");
                        continue;
                    }
                    if index + 1 >= servers.len() {
                        index = 0;
                    }
                    if !self.wait(backoff.next()).await {
                        return;
                    }
                }
            }
        }
    }

    fn anything_missing(&self) -> bool {
        self.types
            .iter()
            .flat_map(|t| t.subs.values())
            .any(|s| s.tx.borrow().value.is_none())
    }

    /// Sleeps while still serving commands; `false` when the client is gone.
    async fn wait(&mut self, d: Duration) -> bool {
        let deadline = Instant::now() + d;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return true,
                cmd = self.commands.recv() => match cmd {
                    None => return false,
                    Some(cmd) => { self.command(cmd, None); }
                },
            }
        }
    }

    async fn session(&mut self, server: &XdsServer, index: usize, servers: &[XdsServer]) -> End {
        let timeout = self.config.connect_timeout;
        let channel = tokio::select! {
            c = super::transport::connect(server, timeout) => match c {
                Ok(c) => c,
                Err(e) => return End::Failed(e),
            },
            // Keep serving watch commands while connecting.
            end = self.commands_until_closed() => return end,
        };
        let (tx, rx) = mpsc::unbounded_channel::<DiscoveryRequest>();
        // A fresh stream starts from nothing: every type is re-requested with the last ACKed
        // version (the server may then skip unchanged resources) and an empty nonce.
        let mut first = true;
        for t in &mut self.types {
            t.sent_names.clear();
            t.changes_in_flight = 0;
            for s in t.subs.values_mut() {
                s.seen_absent = false;
            }
        }
        for ty in ResourceType::ALL {
            if !self.types[ty.index()].subs.is_empty() {
                let _ = tx.send(self.request(ty, first, None));
                first = false;
            }
        }
        let mut sent_node = !first;
        let mut client = AggregatedDiscoveryServiceClient::new(channel)
            .max_decoding_message_size(64 * 1024 * 1024);
        let stream = tokio_stream::wrappers::UnboundedReceiverStream::new(rx);
        let mut inbound = match client.stream_aggregated_resources(stream).await {
            Ok(r) => r.into_inner(),
            Err(s) => return End::Failed(format!("ADS stream refused: {}", s.message())),
        };
        info!(server = %server.server_uri, "ADS stream open");
        let opened = Instant::now();
        self.start_dne_timers();
        let mut got_response = false;
        let mut sweep = tokio::time::interval(Duration::from_secs(1));
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // gRFC A71: while on a fallback, keep dialling the primary in the background.
        let primary = servers[0].clone();
        let period = self.config.backoff_base.max(Duration::from_millis(100));
        let mut probe = std::pin::pin!(async move {
            if index == 0 {
                return std::future::pending().await;
            }
            loop {
                tokio::time::sleep(period).await;
                if super::transport::connect(&primary, timeout).await.is_ok() {
                    return;
                }
            }
        });
        let mut dirty = [false; 4];
        let mut flush_at: Option<Instant> = None;
        let mut burst_start: Option<Instant> = None;
        let end = loop {
            let next_dne = self.dne_soonest;
            tokio::select! {
                msg = inbound.message() => match msg {
                    Ok(Some(resp)) => {
                        got_response = true;
                        let reply = self.response(resp, server);
                        let _ = tx.send(reply);
                    }
                    Ok(None) => break "the server closed the stream".to_owned(),
                    Err(status) => break format!("stream error: {} {}", status.code(), status.message()),
                },
                cmd = self.commands.recv() => match cmd {
                    None => return End::Shutdown,
                    Some(cmd) => {
                        if let Some(ty) = self.command(cmd, Some(Instant::now() + self.config.does_not_exist_timeout)) {
                            // Subscriptions often come in bursts (a snapshot naming many
                            // clusters, a client warming up): coalesce them into one request
                            // per type instead of one per name, which would make a burst of
                            // N subscriptions cost N requests of up to N names each.
                            dirty[ty.index()] = true;
                            let now = Instant::now();
                            let first = *burst_start.get_or_insert(now);
                            flush_at = Some((now + SUBSCRIPTION_COALESCING).min(first + SUBSCRIPTION_COALESCING_MAX));
                        }
                    }
                },
                _ = sleep_until_opt(flush_at) => {
                    flush_at = None;
                    burst_start = None;
                    for ty in ResourceType::ALL {
                        if std::mem::take(&mut dirty[ty.index()]) {
                            let _ = tx.send(self.request(ty, !sent_node, None));
                            sent_node = true;
                        }
                    }
                }
                _ = sleep_until_opt(next_dne) => self.fire_dne_timers(),
                _ = sweep.tick() => {
                    for ty in self.sweep_unwatched() {
                        let _ = tx.send(self.request(ty, !sent_node, None));
                        sent_node = true;
                    }
                }
                _ = &mut probe => return End::PrimaryBack,
            }
        };
        // gRFC A57: timers only run while connected.
        for t in &mut self.types {
            for s in t.subs.values_mut() {
                s.dne_deadline = None;
            }
        }
        self.dne_soonest = None;
        match (got_response, opened.elapsed() >= self.config.stable_after) {
            (true, true) => End::Routine(end),
            (true, false) => End::Unstable(end),
            (false, _) => End::Failed(end),
        }
    }

    /// Serves commands until the client is dropped (used while connecting).
    async fn commands_until_closed(&mut self) -> End {
        while let Some(cmd) = self.commands.recv().await {
            self.command(cmd, None);
        }
        End::Shutdown
    }

    /// Applies a command; returns a type whose subscription list changed.
    fn command(&mut self, cmd: Command, dne_deadline: Option<Instant>) -> Option<ResourceType> {
        match cmd {
            Command::Watch { ty, name, tx } => {
                let t = &mut self.types[ty.index()];
                // The registry makes each subscription once, so the name is new here.
                self.dne_soonest = earliest(self.dne_soonest, dne_deadline);
                t.subs.insert(
                    name,
                    Sub {
                        tx,
                        dne_deadline,
                        seen_absent: false,
                    },
                );
                Some(ty)
            }
            Command::Dump { reply } => {
                let _ = reply.send(self.dump());
                None
            }
        }
    }

    fn dump(&self) -> Vec<ResourceDump> {
        let mut out = Vec::new();
        for ty in ResourceType::ALL {
            for (name, sub) in &self.types[ty.index()].subs {
                out.push(ResourceDump {
                    resource_type: ty,
                    name: name.clone(),
                    state: sub.tx.borrow().clone(),
                });
            }
        }
        out.sort_by(|a, b| (a.resource_type, &a.name).cmp(&(b.resource_type, &b.name)));
        out
    }

    /// Drops subscriptions nobody watches any more; returns the types to re-request.
    fn sweep_unwatched(&mut self) -> Vec<ResourceType> {
        let mut changed = Vec::new();
        for ty in ResourceType::ALL {
            let t = &mut self.types[ty.index()];
            let before = t.subs.len();
            // Under the registry's lock, where receivers are made: none can appear meanwhile.
            let mut registry = self.registry.lock().expect("subscription registry");
            t.subs.retain(|name, s| {
                let watched = s.tx.receiver_count() > 0;
                if !watched {
                    registry[ty.index()].remove(name);
                }
                watched
            });
            if t.subs.len() != before {
                changed.push(ty);
            }
        }
        changed
    }

    fn request(
        &mut self,
        ty: ResourceType,
        with_node: bool,
        error: Option<(String, String)>,
    ) -> DiscoveryRequest {
        let t = &mut self.types[ty.index()];
        let mut names: Vec<String> = t.subs.keys().cloned().collect();
        names.sort();
        if names != t.sent_names {
            t.changes_in_flight += 1;
            t.sent_names.clone_from(&names);
        }
        let t = &self.types[ty.index()];
        DiscoveryRequest {
            version_info: t.version.clone(),
            node: with_node.then(|| self.node.clone()),
            resource_names: names,
            type_url: ty.type_url().to_owned(),
            response_nonce: error
                .as_ref()
                .map_or_else(|| t.nonce.clone(), |(n, _)| n.clone()),
            error_detail: error.map(|(_, detail)| RpcStatus {
                code: tonic::Code::InvalidArgument as i32,
                message: detail,
                details: vec![],
            }),
            ..Default::default()
        }
    }

    fn start_dne_timers(&mut self) {
        let deadline = Instant::now() + self.config.does_not_exist_timeout;
        for t in &mut self.types {
            for s in t.subs.values_mut() {
                if !s.tx.borrow().is_resolved() {
                    s.dne_deadline = Some(deadline);
                    self.dne_soonest = earliest(self.dne_soonest, Some(deadline));
                }
            }
        }
    }

    fn next_dne_deadline(&self) -> Option<Instant> {
        self.types
            .iter()
            .flat_map(|t| t.subs.values())
            .filter_map(|s| s.dne_deadline)
            .min()
    }

    /// Fires the timers that are due, and finds the next.
    fn fire_dne_timers(&mut self) {
        self.fire_due_dne_timers();
        self.dne_soonest = self.next_dne_deadline();
    }

    fn fire_due_dne_timers(&mut self) {
        let now = Instant::now();
        for ty in ResourceType::ALL {
            for (name, s) in &mut self.types[ty.index()].subs {
                if s.dne_deadline.is_some_and(|d| d <= now) {
                    s.dne_deadline = None;
                    if s.seen_absent {
                        info!(resource_type = %ty, %name, "resource does not exist (absent from the answer to our subscription)");
                    } else {
                        warn!(resource_type = %ty, %name, timeout = ?self.config.does_not_exist_timeout, "resource does not exist (no response in time)");
                    }
                    s.tx.send_modify(|st| st.status = ResourceStatus::DoesNotExist);
                }
            }
        }
    }

    /// Handles a response and returns the ACK or NACK.
    fn response(&mut self, resp: DiscoveryResponse, server: &XdsServer) -> DiscoveryRequest {
        let Some(ty) = ResourceType::from_type_url(&resp.type_url) else {
            warn!(type_url = %resp.type_url, "response for a type we never asked for");
            // There is no per-type state to NACK against; answering keeps the stream healthy.
            return DiscoveryRequest {
                type_url: resp.type_url.clone(),
                response_nonce: resp.nonce.clone(),
                node: None,
                error_detail: Some(RpcStatus {
                    code: tonic::Code::InvalidArgument as i32,
                    message: format!("unsupported type {}", resp.type_url),
                    details: vec![],
                }),
                ..Default::default()
            };
        };
        let fail_on_data_errors = server.has_feature("fail_on_data_errors");
        let strict = self.config.strict_fields || server.has_feature(super::fields::STRICT_FEATURE);
        let version: Arc<str> = resp.version_info.as_str().into();
        let now = SystemTime::now();
        let mut errors: Vec<String> = Vec::new();
        let mut seen: HashSet<String> = HashSet::new();
        let t = &mut self.types[ty.index()];
        t.changes_in_flight = t.changes_in_flight.saturating_sub(1);
        // Whether this response answers our latest subscription. A response to an earlier
        // request (or a push crossing our request) lacks names we only just asked for, so
        // their absence proves nothing.
        let settled = t.changes_in_flight == 0;
        for (i, any) in resp.resources.iter().enumerate() {
            let decoded = match decode(ty, any, strict) {
                Ok(d) => d,
                Err(e) => {
                    errors.push(format!("{ty} #{i}: {e}"));
                    continue;
                }
            };
            if !seen.insert(decoded.name.clone()) {
                errors.push(format!(
                    "{ty} {}: appears twice in one response",
                    decoded.name
                ));
                continue;
            }
            let Some(sub) = t.subs.get_mut(&decoded.name) else {
                // Not subscribed (e.g. a wildcard-happy server): ignore, as gRPC does.
                continue;
            };
            sub.dne_deadline = None;
            sub.seen_absent = false;
            match decoded.result {
                Ok(value) => {
                    let raw = decoded.raw;
                    let unapplied = decoded.unapplied;
                    sub.tx.send_if_modified(|st| {
                        let same =
                            st.raw.as_ref() == Some(&raw) && st.status == ResourceStatus::Acked;
                        st.version = version.clone();
                        if same {
                            return false;
                        }
                        if st.unapplied != unapplied {
                            log_unapplied(ty, &decoded.name, &unapplied);
                        }
                        st.value = Some(value);
                        st.raw = Some(raw);
                        st.unapplied = unapplied;
                        st.status = ResourceStatus::Acked;
                        st.error = None;
                        st.updated_at = Some(now);
                        true
                    });
                }
                Err(field_error) => {
                    let detail = format!("{ty} {}: {field_error}", decoded.name);
                    warn!(server = %server.server_uri, version = %version, "NACK: {detail}");
                    errors.push(detail.clone());
                    sub.tx.send_modify(|st| {
                        st.status = ResourceStatus::Nacked;
                        st.error = Some(ResourceError {
                            version: version.clone(),
                            detail: detail.into(),
                            at: now,
                        });
                        if fail_on_data_errors {
                            st.value = None;
                            st.raw = None;
                            st.unapplied = Arc::from([]);
                        }
                    });
                }
            }
        }
        if ty.all_resources_required_in_sotw() {
            for (name, sub) in t.subs.iter_mut() {
                if seen.contains(name) {
                    continue;
                }
                let (had_value, known_missing) = {
                    let st = sub.tx.borrow();
                    (
                        st.value.is_some(),
                        st.status == ResourceStatus::DoesNotExist,
                    )
                };
                // A name never received is concluded absent early only for listeners, from
                // responses to our latest subscription (so an unknown host is answered
                // quickly): the second such response without it, or `ABSENT_LISTENER_GRACE`
                // after the first; otherwise the does-not-exist timer decides, as in gRPC's
                // client. Clusters always wait for the timer: routes name new clusters while
                // pushes are in flight, and a false "does not exist" would fail requests.
                let early = ty == ResourceType::Listener && settled;
                let conclusive = had_value || known_missing || (early && sub.seen_absent);
                if !conclusive {
                    if early {
                        sub.seen_absent = true;
                        let grace = Instant::now() + ABSENT_LISTENER_GRACE;
                        sub.dne_deadline = Some(sub.dne_deadline.map_or(grace, |d| d.min(grace)));
                        self.dne_soonest = earliest(self.dne_soonest, Some(grace));
                    }
                    continue;
                }
                sub.dne_deadline = None;
                if had_value && !fail_on_data_errors {
                    // gRFC A88 (default): a deletion is a data error; keep serving the cache.
                    warn!(resource_type = %ty, %name, "server deleted a resource in use; keeping the last good version (gRFC A88)");
                } else {
                    info!(resource_type = %ty, %name, "resource does not exist");
                }
                sub.tx.send_if_modified(|st| {
                    if st.status == ResourceStatus::DoesNotExist
                        && (st.value.is_none() || !fail_on_data_errors)
                    {
                        return false;
                    }
                    st.status = ResourceStatus::DoesNotExist;
                    if fail_on_data_errors {
                        st.value = None;
                        st.raw = None;
                        st.unapplied = Arc::from([]);
                    }
                    true
                });
            }
        }
        t.nonce = resp.nonce.clone();
        if errors.is_empty() {
            t.version = resp.version_info.clone();
            debug!(resource_type = %ty, version = %resp.version_info, "ACK");
            self.request(ty, false, None)
        } else {
            let detail = errors.join("; ");
            self.request(ty, false, Some((resp.nonce, detail)))
        }
    }
}

/// Says once, when a resource's list changes, which fields it sets that are not applied:
/// ignored ones as a warning (traffic differs from Envoy's), inert ones at debug level.
fn log_unapplied(ty: ResourceType, name: &str, fields: &[super::UnappliedField]) {
    use super::FieldClass;
    let list = |class| {
        fields
            .iter()
            .filter(|f| f.class == class)
            .map(ToString::to_string)
            .collect::<Vec<_>>()
    };
    let ignored = list(FieldClass::Ignored);
    if !ignored.is_empty() {
        warn!(
            resource_type = %ty,
            %name,
            "fields not applied by this client: {}",
            ignored.join(", ")
        );
    }
    let inert = list(FieldClass::Inert);
    if !inert.is_empty() {
        debug!(resource_type = %ty, %name, "inert fields not applied: {}", inert.join(", "));
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

fn node_proto(b: &Bootstrap, config: &XdsClientConfig) -> core::Node {
    core::Node {
        id: b.node.id.clone(),
        cluster: b.node.cluster.clone(),
        metadata: Some(json_to_struct(&b.node.metadata)),
        locality: Some(core::Locality {
            region: b.node.locality.region.clone(),
            zone: b.node.locality.zone.clone(),
            sub_zone: b.node.locality.sub_zone.clone(),
        }),
        user_agent_name: config.user_agent_name.clone(),
        user_agent_version_type: Some(core::node::UserAgentVersionType::UserAgentVersion(
            env!("CARGO_PKG_VERSION").to_owned(),
        )),
        // We honour overprovisioning_factor, so we do not send
        // "envoy.lb.does_not_support_overprovisioning".
        client_features: vec!["xds.config.resource-in-sotw".to_owned()],
        ..Default::default()
    }
}

/// JSON object → `google.protobuf.Struct`.
fn json_to_struct(
    map: &serde_json::Map<String, serde_json::Value>,
) -> envoy_types::pb::google::protobuf::Struct {
    use envoy_types::pb::google::protobuf::{ListValue, Struct, Value, value::Kind};
    fn value(v: &serde_json::Value) -> Value {
        let kind = match v {
            serde_json::Value::Null => Kind::NullValue(0),
            serde_json::Value::Bool(b) => Kind::BoolValue(*b),
            serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
            serde_json::Value::String(s) => Kind::StringValue(s.clone()),
            serde_json::Value::Array(a) => Kind::ListValue(ListValue {
                values: a.iter().map(value).collect(),
            }),
            serde_json::Value::Object(o) => Kind::StructValue(json_to_struct(o)),
        };
        Value { kind: Some(kind) }
    }
    Struct {
        fields: map.iter().map(|(k, v)| (k.clone(), value(v))).collect(),
    }
}

/// Jittered exponential backoff (gRPC's connection-backoff parameters: ×1.6, ±20 %).
struct Backoff {
    base: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max,
            current: base,
        }
    }

    fn reset(&mut self) {
        self.current = self.base;
    }

    fn next(&mut self) -> Duration {
        let d = self.current;
        self.current = self.current.mul_f64(1.6).min(self.max);
        d.mul_f64(0.8 + fastrand::f64() * 0.4)
    }
}

/// The earlier of two optional deadlines.
fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}
