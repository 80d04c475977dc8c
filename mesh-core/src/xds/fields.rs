//! Field accounting: which fields of a received resource this client does not apply.
//!
//! Envoy rejects a field it does not know; gRPC's client skips what it does not implement
//! without a word. Here every field of every message the translator reads is classified once,
//! in one table (`fields.txt`, rendered as `docs/xds-support.md` by a test so the two cannot
//! drift):
//!
//! | class | meaning | reported | strict mode |
//! |---|---|---|---|
//! | [`Implemented`](FieldClass::Implemented) | applied (values it cannot apply are NACKed) | no | accepted |
//! | [`Rejected`](FieldClass::Rejected) | any value is NACKed by the translator | NACK | NACK |
//! | [`Inert`](FieldClass::Inert) | not applied, and traffic is the same without it (statistics names, descriptions...) | yes | accepted |
//! | [`Ignored`](FieldClass::Ignored) | not applied, and Envoy would treat traffic differently | yes | NACK |
//!
//! On arrival, [`unapplied`] walks the resource's encoded bytes against the table: every field
//! it sets whose class is inert or ignored is listed by its path
//! (`transport_socket_matches[1].match`), and so is any field number the descriptors do not
//! know (a newer API than this client's). The list travels with the resource's state to
//! `/config_dump`, the log and the admin metrics; with the bootstrap server feature
//! [`STRICT_FEATURE`] or [`XdsClientConfig::strict_fields`](super::XdsClientConfig), an
//! ignored field NACKs the resource instead, naming the field, so a control plane learns what
//! this client cannot do.
//!
//! Why a walk over the wire bytes rather than over decoded messages: it allocates nothing
//! unless a field is reported, it sees field numbers prost drops, and it needs no code per
//! message, only the table and the descriptors envoy-types ships.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt::{self, Write as _};
use std::sync::{Arc, OnceLock};

use prost_reflect::{Cardinality, DescriptorPool, Kind, MessageDescriptor};

use super::ResourceType;

/// The bootstrap `server_features` entry that turns strict field accounting on for a server:
/// a resource setting a field this client ignores is NACKed instead of applied without it.
pub const STRICT_FEATURE: &str = "fail_on_ignored_fields";

/// How this client treats one protobuf field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FieldClass {
    /// Applied. Values the model cannot express are NACKed with the field's path.
    Implemented,
    /// Refused: a resource that sets it is NACKed.
    Rejected,
    /// Not applied, without effect on traffic (statistics names, descriptions, settings of
    /// features that only observe).
    Inert,
    /// Not applied, although Envoy would treat traffic differently: reported, and NACKed in
    /// strict mode.
    Ignored,
}

impl FieldClass {
    /// The name used in the table, `/config_dump` and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Implemented => "implemented",
            Self::Rejected => "rejected",
            Self::Inert => "inert",
            Self::Ignored => "ignored",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [
            Self::Implemented,
            Self::Rejected,
            Self::Inert,
            Self::Ignored,
        ]
        .into_iter()
        .find(|c| c.as_str() == s)
    }
}

impl fmt::Display for FieldClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A field a resource sets that this client does not apply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnappliedField {
    /// Its path inside the resource, as in NACK details: `virtual_hosts[0].cors`. A repeated
    /// or map field is named once, without an index.
    pub path: Box<str>,
    /// [`FieldClass::Inert`] or [`FieldClass::Ignored`].
    pub class: FieldClass,
    /// What it would do, from the table.
    pub note: Cow<'static, str>,
}

impl fmt::Display for UnappliedField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}", self.path, self.class)?;
        if !self.note.is_empty() {
            write!(f, ": {}", self.note)?;
        }
        f.write_str(")")
    }
}

/// The unapplied fields of one resource (shared by every state that carries it).
pub type UnappliedFields = Arc<[UnappliedField]>;

/// At most this many fields of each class are listed per resource: indices of repeated
/// fields are kept in paths, so an endpoint list that sets an inert field on each of ten
/// thousand endpoints would otherwise list ten thousand. The classes are capped separately,
/// so inert fields can never crowd out the ignored one strict mode refuses.
const MAX_REPORTED: usize = 100;

/// Nesting deeper than this is not walked (prost decodes at most 100 levels; an `Any` the
/// translator never decodes could otherwise nest without bound, and the walk recurses).
const MAX_DEPTH: usize = 100;

/// The fields `bytes`, an encoded resource of type `ty`, sets without this client applying
/// them. Malformed bytes yield what could be read: the translator has decoded them already.
pub fn unapplied(ty: ResourceType, bytes: &[u8]) -> UnappliedFields {
    let table = table();
    let Some(&root) = table
        .by_name
        .get(ty.type_url().trim_start_matches(TYPE_PREFIX))
    else {
        return Arc::from([]);
    };
    let mut walk = Walk {
        table,
        context: Context::Resource(ty),
        path: Vec::new(),
        ignored: Vec::new(),
        inert: Vec::new(),
    };
    walk.message(root, bytes);
    walk.ignored.append(&mut walk.inert);
    walk.ignored.into()
}

/// Whether any of `fields` changes traffic (what strict mode refuses).
pub fn any_ignored(fields: &[UnappliedField]) -> Option<&UnappliedField> {
    fields.iter().find(|f| f.class == FieldClass::Ignored)
}

const TYPE_PREFIX: &str = "type.googleapis.com/";

/// The entry of a `load_balancing_policy` list: gRFC A52 has the client take the first type
/// it implements and pass over the others, so those are not reported.
const LB_POLICY_ENTRY: &str = "envoy.config.core.v3.TypedExtensionConfig";

/// Types the translator accepts in an `Any` that have no fields to classify.
const FIELDLESS_TYPES: &[&str] = &[
    "envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer",
    "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate",
];

/// Why an `Any` of type `ty` is reported: nothing here implements that type. Where the
/// translator refuses such a type (a required HTTP filter, a transport socket) the resource is
/// NACKed anyway; where it passes over it (an optional filter, a protocol options entry) this
/// is the only trace.
fn unimplemented_type(ty: &str) -> Cow<'static, str> {
    format!("{ty} is not implemented by this client").into()
}

/// The table as written in `fields.txt`: `[message]` sections of `field class note` lines.
pub(crate) const SOURCE: &str = include_str!("fields.txt");

/// The messages whose fields a resource can reach only through an `Any` (filter configs,
/// transport sockets, load-balancing policies, protocol options) or at its top: each must be
/// in the table, and every other message in it must be reachable from one of these.
pub(crate) const ROOTS: &[&str] = &[
    "envoy.config.listener.v3.Listener",
    "envoy.config.route.v3.RouteConfiguration",
    "envoy.config.cluster.v3.Cluster",
    "envoy.config.endpoint.v3.ClusterLoadAssignment",
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
    "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
    "envoy.extensions.filters.network.connection_limit.v3.ConnectionLimit",
    "envoy.extensions.filters.network.rbac.v3.RBAC",
    "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
    "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
    "envoy.extensions.transport_sockets.internal_upstream.v3.InternalUpstreamTransport",
    "envoy.extensions.filters.http.router.v3.Router",
    "envoy.extensions.filters.http.fault.v3.HTTPFault",
    "envoy.extensions.filters.http.rbac.v3.RBAC",
    "envoy.extensions.filters.http.rbac.v3.RBACPerRoute",
    "envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
    "envoy.extensions.filters.http.jwt_authn.v3.PerRouteConfig",
    "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
    "envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
    "envoy.config.route.v3.FilterConfig",
    "envoy.extensions.load_balancing_policies.round_robin.v3.RoundRobin",
    "envoy.extensions.load_balancing_policies.random.v3.Random",
    "envoy.extensions.load_balancing_policies.least_request.v3.LeastRequest",
    "envoy.extensions.load_balancing_policies.ring_hash.v3.RingHash",
    "envoy.extensions.load_balancing_policies.maglev.v3.Maglev",
    "envoy.extensions.load_balancing_policies.pick_first.v3.PickFirst",
    "envoy.extensions.load_balancing_policies.wrr_locality.v3.WrrLocality",
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
];

/// One field of the table, resolved against the descriptors.
#[derive(Debug)]
pub(crate) struct Field {
    pub(crate) number: u32,
    pub(crate) name: &'static str,
    /// The class wherever the message is read...
    pub(crate) class: FieldClass,
    /// ... except in these contexts (`@Cluster=ignored,ApiListener=inert: why` in the table):
    /// a message both sides read (HTTP/2 options, the connection manager) may be applied by
    /// one only.
    pub(crate) exceptions: &'static [Exception],
    pub(crate) note: &'static str,
    shape: Shape,
    repeated: bool,
    /// A proto3 scalar without presence: its default value on the wire means "not set".
    implicit: bool,
}

/// A field's class in one context, where it differs from its class elsewhere.
pub(crate) type Exception = (Context, FieldClass);

/// Where in a resource a message is read, for the classes that depend on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Context {
    /// Anywhere in a resource of this type (a listener's filter chains, for listeners).
    Resource(ResourceType),
    /// Inside a listener's `api_listener`: the client side, where the connection manager's
    /// settings for downstream connections have no connection to apply to.
    ApiListener,
}

impl Context {
    fn name(self) -> &'static str {
        match self {
            Self::Resource(t) => t.short_name(),
            Self::ApiListener => "ApiListener",
        }
    }
}

/// What a field's bytes hold, as far as the walk cares.
#[derive(Debug, Clone, Copy)]
enum Shape {
    /// A scalar, or a message the walk does not enter (well-known types, messages reached only
    /// through fields that are not implemented).
    Leaf,
    /// A message of the table.
    Message(usize),
    /// `google.protobuf.Any`: entered when its type is in the table.
    Any,
    /// A map whose values are of this shape; keys name the entries.
    Map(MapValue),
}

#[derive(Debug, Clone, Copy)]
enum MapValue {
    Leaf,
    Message(usize),
    Any,
}

#[derive(Debug)]
pub(crate) struct Message {
    pub(crate) name: &'static str,
    /// Sorted by number.
    pub(crate) fields: Vec<Field>,
}

#[derive(Debug)]
pub(crate) struct Table {
    pub(crate) messages: Vec<Message>,
    pub(crate) by_name: HashMap<&'static str, usize>,
}

/// The table, parsed and resolved on first use.
pub(crate) fn table() -> &'static Table {
    static TABLE: OnceLock<Table> = OnceLock::new();
    TABLE.get_or_init(|| {
        // The table is compiled in and checked by this module's tests: failing here is a bug
        // in the table, not in any input.
        Table::compile(SOURCE, crate::static_config::descriptor_pool())
            .unwrap_or_else(|errors| panic!("fields.txt: {}", errors.join("; ")))
    })
}

impl Table {
    /// Parses `source` and resolves it against `pool`. Every problem is listed: a message or
    /// field the descriptors lack, a field of a listed message missing from the table, an
    /// unknown class, a field listed twice.
    pub(crate) fn compile(
        source: &'static str,
        pool: &DescriptorPool,
    ) -> Result<Self, Vec<String>> {
        let mut errors = Vec::new();
        type Listed = (&'static str, FieldClass, &'static [Exception], &'static str);
        let mut sections: Vec<(&'static str, usize, Vec<Listed>)> = Vec::new();
        for (n, line) in source.lines().enumerate() {
            let line_no = n + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                sections.push((name, line_no, Vec::new()));
                continue;
            }
            let Some((_, _, fields)) = sections.last_mut() else {
                errors.push(format!("line {line_no}: a field before any [message]"));
                continue;
            };
            let mut parts = line.splitn(2, char::is_whitespace);
            let field = parts.next().unwrap_or_default();
            let rest = parts.next().unwrap_or_default().trim_start();
            let mut parts = rest.splitn(2, char::is_whitespace);
            let class = parts.next().unwrap_or_default();
            let note = parts.next().unwrap_or_default().trim();
            match FieldClass::parse(class) {
                Some(c) => {
                    let (exceptions, note) = match exceptions(note) {
                        Ok(x) => x,
                        Err(e) => {
                            errors.push(format!("line {line_no}: {field}: {e}"));
                            (&[][..], note)
                        }
                    };
                    if (c != FieldClass::Implemented || !exceptions.is_empty()) && note.is_empty() {
                        errors.push(format!("line {line_no}: {field}: a {c} field needs a note"));
                    }
                    fields.push((field, c, exceptions, note));
                }
                None => errors.push(format!("line {line_no}: {field}: unknown class {class:?}")),
            }
        }
        let mut by_name = HashMap::new();
        for (i, (name, line_no, _)) in sections.iter().enumerate() {
            if by_name.insert(*name, i).is_some() {
                errors.push(format!("line {line_no}: [{name}] is listed twice"));
            }
        }
        let mut messages = Vec::with_capacity(sections.len());
        for (name, line_no, listed) in &sections {
            let Some(desc) = pool.get_message_by_name(name) else {
                errors.push(format!(
                    "line {line_no}: no message {name} in the descriptors"
                ));
                continue;
            };
            let mut fields = Vec::with_capacity(listed.len());
            for &(field, class, exceptions, note) in listed {
                let Some(fd) = desc.get_field_by_name(field) else {
                    errors.push(format!("{name}: no field {field}"));
                    continue;
                };
                if fields.iter().any(|f: &Field| f.name == field) {
                    errors.push(format!("{name}.{field} is listed twice"));
                    continue;
                }
                let applied_somewhere = class == FieldClass::Implemented
                    || exceptions
                        .iter()
                        .any(|(_, c)| *c == FieldClass::Implemented);
                let shape = if applied_somewhere {
                    shape(&fd.kind(), fd.is_map(), &by_name)
                } else {
                    Shape::Leaf
                };
                fields.push(Field {
                    number: fd.number(),
                    name: field,
                    class,
                    exceptions,
                    note,
                    shape,
                    repeated: fd.cardinality() == Cardinality::Repeated,
                    implicit: !fd.supports_presence()
                        && fd.cardinality() != Cardinality::Repeated
                        && !matches!(fd.kind(), Kind::Message(_)),
                });
            }
            for fd in desc.fields() {
                if !listed.iter().any(|(f, ..)| *f == fd.name()) {
                    errors.push(format!("{name}.{} has no class", fd.name()));
                }
            }
            fields.sort_by_key(|f| f.number);
            messages.push(Message { name, fields });
        }
        if errors.is_empty() {
            Ok(Self { messages, by_name })
        } else {
            Err(errors)
        }
    }

    /// The messages an implemented field leads to that the table lacks, and the table's
    /// messages no root reaches: both mean the table is out of step with the translator.
    #[cfg(test)]
    pub(crate) fn closure_problems(&self, pool: &DescriptorPool) -> Vec<String> {
        let mut problems = Vec::new();
        let mut reached = vec![false; self.messages.len()];
        let mut stack: Vec<usize> = Vec::new();
        for root in ROOTS {
            match self.by_name.get(root) {
                Some(&i) => stack.push(i),
                None => problems.push(format!("root {root} is not in the table")),
            }
        }
        while let Some(i) = stack.pop() {
            if std::mem::replace(&mut reached[i], true) {
                continue;
            }
            let msg = &self.messages[i];
            let desc = pool.get_message_by_name(msg.name).expect("compiled");
            for f in &msg.fields {
                if !f.applied_somewhere() {
                    continue;
                }
                let fd = desc.get_field(f.number).expect("compiled");
                let target = match fd.kind() {
                    Kind::Message(m) if fd.is_map() => match map_value(&m) {
                        Kind::Message(v) => Some(v),
                        _ => None,
                    },
                    Kind::Message(m) => Some(m),
                    _ => None,
                };
                // A message without fields has nothing to classify.
                let Some(target) = target.filter(|t| !is_leaf_message(t) && t.fields().len() > 0)
                else {
                    continue;
                };
                match self.by_name.get(target.full_name()) {
                    Some(&t) => stack.push(t),
                    None => problems.push(format!(
                        "{}.{} is implemented but {} is not in the table",
                        msg.name,
                        f.name,
                        target.full_name()
                    )),
                }
            }
        }
        for (i, m) in self.messages.iter().enumerate() {
            if !reached[i] {
                problems.push(format!(
                    "{} is in the table but no implemented field reaches it",
                    m.name
                ));
            }
        }
        problems
    }
}

impl Table {
    /// The messages from each root in turn, depth first through implemented fields, each
    /// once: a message is read right after the field that leads to it.
    fn in_reading_order(&self) -> Vec<&Message> {
        let mut seen = vec![false; self.messages.len()];
        let mut out = Vec::with_capacity(self.messages.len());
        fn visit<'t>(t: &'t Table, i: usize, seen: &mut [bool], out: &mut Vec<&'t Message>) {
            if std::mem::replace(&mut seen[i], true) {
                return;
            }
            out.push(&t.messages[i]);
            for f in &t.messages[i].fields {
                match f.shape {
                    Shape::Message(m) | Shape::Map(MapValue::Message(m)) => visit(t, m, seen, out),
                    _ => {}
                }
            }
        }
        for root in ROOTS {
            if let Some(&i) = self.by_name.get(root) {
                visit(self, i, &mut seen, &mut out);
            }
        }
        // Anything no root reaches (a test refuses such a table) still appears.
        for (i, m) in self.messages.iter().enumerate() {
            if !seen[i] {
                out.push(m);
            }
        }
        out
    }
}

impl Field {
    /// Its class in context `cx`.
    fn class_in(&self, cx: Context) -> FieldClass {
        self.exceptions
            .iter()
            .find(|(c, _)| *c == cx)
            .map_or(self.class, |(_, class)| *class)
    }

    #[cfg(test)]
    fn applied_somewhere(&self) -> bool {
        self.class == FieldClass::Implemented
            || self
                .exceptions
                .iter()
                .any(|(_, c)| *c == FieldClass::Implemented)
    }
}

/// Splits `@Cluster=ignored,ApiListener=inert: why` off a note: the class in those contexts.
/// The list is leaked once, when the table is compiled (it lives as long as the table).
fn exceptions(note: &'static str) -> Result<(&'static [Exception], &'static str), String> {
    const FORM: &str = "exceptions are written `@Context=class,Context=class: why`";
    let Some(rest) = note.strip_prefix('@') else {
        return Ok((&[], note));
    };
    let (head, why) = rest.split_once(':').ok_or(FORM)?;
    let mut out = Vec::new();
    for item in head.split(',') {
        let (cx, class) = item.trim().split_once('=').ok_or(FORM)?;
        let cx = ResourceType::ALL
            .into_iter()
            .map(Context::Resource)
            .chain([Context::ApiListener])
            .find(|c| c.name() == cx)
            .ok_or_else(|| format!("unknown context {cx:?}"))?;
        let class = FieldClass::parse(class).ok_or_else(|| format!("unknown class {class:?}"))?;
        out.push((cx, class));
    }
    Ok((Vec::leak(out), why.trim()))
}

/// Messages the walk never enters: Google's well-known types (durations, wrappers, `Struct`)
/// are values, not configuration trees. `Any` is entered by type, separately.
fn is_leaf_message(m: &MessageDescriptor) -> bool {
    m.full_name().starts_with("google.protobuf.")
}

fn map_value(entry: &MessageDescriptor) -> Kind {
    entry.get_field(2).map(|f| f.kind()).unwrap_or(Kind::Bool)
}

fn shape(kind: &Kind, is_map: bool, by_name: &HashMap<&'static str, usize>) -> Shape {
    let message = |m: &MessageDescriptor| {
        if m.full_name() == "google.protobuf.Any" {
            Some(MapValue::Any)
        } else if is_leaf_message(m) {
            None
        } else {
            by_name.get(m.full_name()).map(|&i| MapValue::Message(i))
        }
    };
    match kind {
        Kind::Message(entry) if is_map => Shape::Map(match map_value(entry) {
            Kind::Message(v) => message(&v).unwrap_or(MapValue::Leaf),
            _ => MapValue::Leaf,
        }),
        Kind::Message(m) => match message(m) {
            Some(MapValue::Any) => Shape::Any,
            Some(MapValue::Message(i)) => Shape::Message(i),
            _ => Shape::Leaf,
        },
        _ => Shape::Leaf,
    }
}

/// One segment of the path being walked.
#[derive(Clone)]
enum Segment {
    Field(&'static str),
    /// A field number the descriptors do not know.
    Number(u32),
    Index(u32),
    Key(String),
}

struct Walk<'t> {
    table: &'t Table,
    /// Where the walk is (see [`Field::exceptions`]).
    context: Context,
    path: Vec<Segment>,
    ignored: Vec<UnappliedField>,
    inert: Vec<UnappliedField>,
}

/// One field occurrence on the wire.
struct Occurrence<'b> {
    number: u32,
    /// The payload of a length-delimited field.
    bytes: Option<&'b [u8]>,
    /// Whether a scalar holds its type's default (zero, empty).
    is_default: bool,
}

/// Reads the next field of `buf`, or `None` at the end or on malformed input.
fn next_field<'b>(buf: &mut &'b [u8]) -> Option<Occurrence<'b>> {
    if buf.is_empty() {
        return None;
    }
    let key = prost::encoding::decode_varint(buf).ok()?;
    let number = u32::try_from(key >> 3).ok()?;
    let (bytes, is_default) = match key & 7 {
        0 => (None, prost::encoding::decode_varint(buf).ok()? == 0),
        1 | 5 => {
            let n = if key & 7 == 1 { 8 } else { 4 };
            let (v, rest) = buf.split_at_checked(n)?;
            *buf = rest;
            (None, v.iter().all(|b| *b == 0))
        }
        2 => {
            let len = usize::try_from(prost::encoding::decode_varint(buf).ok()?).ok()?;
            let (v, rest) = buf.split_at_checked(len)?;
            *buf = rest;
            (Some(v), v.is_empty())
        }
        // Groups (3, 4) are proto2-only and absent from the xDS API; anything else is malformed.
        _ => return None,
    };
    Some(Occurrence {
        number,
        bytes,
        is_default,
    })
}

impl Walk<'_> {
    fn message(&mut self, index: usize, mut buf: &[u8]) {
        if self.path.len() > MAX_DEPTH {
            return;
        }
        let msg = &self.table.messages[index];
        // Occurrences so far of each field number, for the indices of repeated fields.
        let mut counts: Vec<(u32, u32)> = Vec::new();

        while let Some(occ) = next_field(&mut buf) {
            let seen = match counts.iter_mut().find(|(n, _)| *n == occ.number) {
                Some((_, c)) => {
                    *c += 1;
                    *c - 1
                }
                None => {
                    counts.push((occ.number, 1));
                    0
                }
            };
            let Ok(at) = msg.fields.binary_search_by_key(&occ.number, |f| f.number) else {
                if seen == 0 {
                    self.report(
                        FieldClass::Ignored,
                        "a field this client's API version does not know".into(),
                        Segment::Number(occ.number),
                    );
                }
                continue;
            };
            let field = &msg.fields[at];
            if field.implicit && occ.is_default {
                continue;
            }
            match field.class_in(self.context) {
                FieldClass::Implemented | FieldClass::Rejected => {}
                class => {
                    if seen == 0 {
                        self.report(class, field.note.into(), Segment::Field(field.name));
                    }
                    continue;
                }
            }
            let Some(bytes) = occ.bytes else { continue };
            let descend = match field.shape {
                Shape::Leaf => continue,
                Shape::Message(_) | Shape::Any | Shape::Map(_) => field.shape,
            };
            self.path.push(Segment::Field(field.name));
            // Entering the client side of a listener.
            let outer = self.context;
            if msg.name == "envoy.config.listener.v3.Listener" && field.name == "api_listener" {
                self.context = Context::ApiListener;
            }
            match descend {
                Shape::Map(value) => self.map_entry(value, bytes),
                shape => {
                    if field.repeated {
                        self.path.push(Segment::Index(seen));
                    }
                    match shape {
                        Shape::Message(m) => self.message(m, bytes),
                        _ => {
                            let skipped_by_design = msg.name == LB_POLICY_ENTRY;
                            if let (Some(ty), false) = (self.any(bytes), skipped_by_design) {
                                let at = self.path.pop().expect("pushed");
                                self.report(
                                    FieldClass::Ignored,
                                    unimplemented_type(&ty),
                                    at.clone(),
                                );
                                self.path.push(at);
                            }
                        }
                    }
                    if field.repeated {
                        self.path.pop();
                    }
                }
            }
            self.context = outer;
            self.path.pop();
        }
    }

    /// Enters an `Any` whose type the table lists; otherwise returns its type (looking
    /// through `TypedStruct` wrappers), for the caller to report where that is a drop.
    fn any(&mut self, mut buf: &[u8]) -> Option<String> {
        let (mut url, mut value): (&[u8], &[u8]) = (&[], &[]);
        while let Some(occ) = next_field(&mut buf) {
            match (occ.number, occ.bytes) {
                (1, Some(b)) => url = b,
                (2, Some(b)) => value = b,
                _ => {}
            }
        }
        let url = String::from_utf8_lossy(url);
        let name = url.rsplit('/').next().unwrap_or(&url);
        if let Some(&m) = self.table.by_name.get(name) {
            self.message(m, value);
            return None;
        }
        if FIELDLESS_TYPES.contains(&name) {
            return None;
        }
        if matches!(name, "xds.type.v3.TypedStruct" | "udpa.type.v1.TypedStruct") {
            let mut buf = value;
            while let Some(occ) = next_field(&mut buf) {
                if let (1, Some(b)) = (occ.number, occ.bytes) {
                    return Some(String::from_utf8_lossy(b).into_owned());
                }
            }
        }
        Some(url.into_owned())
    }

    /// Enters one entry of a map field, keyed by its key. A value of a type the table lacks
    /// is reported: the translator reads a map's entries by the types it knows (protocol
    /// options, per-route filter configs) and passes over the others.
    fn map_entry(&mut self, value_shape: MapValue, mut buf: &[u8]) {
        let (mut key, mut value): (Option<Segment>, &[u8]) = (None, &[]);
        while let Some(occ) = next_field(&mut buf) {
            match (occ.number, occ.bytes) {
                (1, Some(b)) => {
                    key = Some(Segment::Key(format!("{:?}", String::from_utf8_lossy(b))));
                }
                (1, None) => key = Some(Segment::Key("[…]".into())),
                (2, Some(b)) => value = b,
                _ => {}
            }
        }
        let key = key.unwrap_or(Segment::Key("\"\"".into()));
        match value_shape {
            MapValue::Message(m) => {
                self.path.push(key);
                self.message(m, value);
                self.path.pop();
            }
            MapValue::Any => {
                self.path.push(key);
                let unknown = self.any(value);
                let key = self.path.pop().expect("pushed");
                if let Some(ty) = unknown {
                    self.report(FieldClass::Ignored, unimplemented_type(&ty), key);
                }
            }
            MapValue::Leaf => {}
        }
    }

    fn report(&mut self, class: FieldClass, note: Cow<'static, str>, last: Segment) {
        let full = path_text(&self.path, &last);
        let out = if class == FieldClass::Ignored {
            &mut self.ignored
        } else {
            &mut self.inert
        };
        if out.len() < MAX_REPORTED {
            out.push(UnappliedField {
                path: full.into(),
                class,
                note,
            });
        }
    }
}

/// `a.b[2]["key"].#9`: the walked path, then `last`.
fn path_text(path: &[Segment], last: &Segment) -> String {
    let mut out = String::new();
    for seg in path.iter().chain(std::iter::once(last)) {
        match seg {
            Segment::Field(_) | Segment::Number(_) if !out.is_empty() => out.push('.'),
            _ => {}
        }
        let _ = match seg {
            Segment::Field(f) => write!(out, "{f}"),
            Segment::Number(n) => write!(out, "#{n}"),
            Segment::Index(i) => write!(out, "[{i}]"),
            Segment::Key(k) => write!(out, "[{k}]"),
        };
    }
    out
}

/// The support table as Markdown (`docs/xds-support.md`).
#[doc(hidden)]
pub fn support_table_markdown() -> String {
    let table = table();
    let mut out = String::new();
    let mut totals = [0usize; 4];
    for m in &table.messages {
        for f in &m.fields {
            totals[f.class as usize] += 1;
        }
    }
    let _ = writeln!(
        out,
        "# xDS field support\n\n\
         Generated from `mesh-core/src/xds/fields.txt` by `cargo test -p mesh-core \
         support_table`; do not edit by hand.\n\n\
         Every field of every message mesh's xDS client reads, with what the client does with \
         it. A resource that sets an *inert* or *ignored* field is accepted and the field is \
         listed beside the resource in `/config_dump`, in the log and in \
         `mesh_xds_unapplied_fields`; with the server feature `{STRICT_FEATURE}` (or \
         `XdsClientConfig::strict_fields`) a resource that sets an *ignored* field is NACKed \
         with the field's path.\n\n\
         | class | fields | meaning |\n|---|---|---|\n\
         | implemented | {} | applied; values the client cannot apply are NACKed |\n\
         | rejected | {} | any value is NACKed |\n\
         | inert | {} | not applied; traffic is the same without it |\n\
         | ignored | {} | not applied although Envoy would treat traffic differently: reported, NACKed in strict mode |\n",
        totals[0], totals[1], totals[2], totals[3]
    );
    let pool = crate::static_config::descriptor_pool();
    for m in table.in_reading_order() {
        let _ = writeln!(
            out,
            "\n## `{}`\n\n| field | class | note |\n|---|---|---|",
            m.name
        );
        let desc = pool.get_message_by_name(m.name).expect("compiled");
        // Declaration order reads like the proto file.
        for fd in desc.fields() {
            if let Some(f) = m.fields.iter().find(|f| f.number == fd.number()) {
                let mut class = f.class.to_string();
                if !f.exceptions.is_empty() {
                    let list: Vec<String> = f
                        .exceptions
                        .iter()
                        .map(|(cx, c)| format!("{}: {c}", cx.name()))
                        .collect();
                    class = format!("{class} ({})", list.join(", "));
                }
                let _ = writeln!(
                    out,
                    "| `{}` | {class} | {} |",
                    f.name,
                    f.note.replace('|', "\\|")
                );
            }
        }
    }
    out
}

#[cfg(test)]
mod tests;
