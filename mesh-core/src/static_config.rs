//! Static configuration: xDS resources from a JSON or YAML file, no control plane.
//!
//! The file uses Envoy's proto3 JSON mapping, in the shape of an Envoy bootstrap's
//! `static_resources` (listeners and clusters, with inline `load_assignment`s), plus a
//! `resources` list for any other resource type (`@type` required), as a `DiscoveryResponse`
//! would carry them:
//!
//! ```yaml
//! static_resources:
//!   listeners:
//!   - name: reviews:9080
//!     api_listener:
//!       api_listener:
//!         "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
//!         rds: { route_config_name: reviews }
//!         http_filters:
//!         - name: router
//!           typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }
//!   clusters:
//!   - name: reviews
//!     type: EDS
//! resources:
//! - "@type": type.googleapis.com/envoy.config.route.v3.RouteConfiguration
//!   name: reviews
//!   virtual_hosts: [{ name: reviews, domains: ["*"], routes: [{ match: { prefix: / }, route: { cluster: reviews } }] }]
//! - "@type": type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment
//!   cluster_name: reviews
//!   endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: 9080 } } } }] }]
//! ```
//!
//! Every resource goes through the same validation as one received over ADS; a bad one fails
//! the whole load with the file, the resource and the field path.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use envoy_types::pb::google::protobuf::Any;
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage};

use crate::xds::{
    FieldClass, Resource, ResourceState, ResourceStatus, ResourceType, UnappliedFields,
};

/// Why a static configuration was rejected.
#[derive(Debug, thiserror::Error)]
#[error("{origin}: {message}")]
pub struct StaticConfigError {
    origin: String,
    message: String,
}

impl StaticConfigError {
    fn new(origin: &str, message: impl Into<String>) -> Self {
        Self {
            origin: origin.to_owned(),
            message: message.into(),
        }
    }
}

/// The protobuf descriptors of the Envoy API, for the proto3 JSON mapping.
pub fn descriptor_pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        let mut pool = DescriptorPool::decode(crate::DESCRIPTORS)
            .expect("envoy-types ships a valid descriptor set");
        pool.add_file_descriptor_proto(typed_struct_file())
            .expect("TypedStruct descriptor is valid");
        pool
    })
}

/// `xds.type.v3.TypedStruct` (`type_url`, `value`), which envoy-types' descriptor set lacks.
/// We wrap configs of unknown types in it, as Envoy's own tooling does, so they survive the
/// JSON mapping and validation can report their real type.
fn typed_struct_file() -> prost_types::FileDescriptorProto {
    use prost_types::field_descriptor_proto::{Label, Type};
    use prost_types::{DescriptorProto, FieldDescriptorProto, FileDescriptorProto};
    let field = |name: &str, number: i32, ty: Type, type_name: Option<&str>| FieldDescriptorProto {
        name: Some(name.into()),
        json_name: Some(name.into()),
        number: Some(number),
        label: Some(Label::Optional as i32),
        r#type: Some(ty as i32),
        type_name: type_name.map(Into::into),
        ..Default::default()
    };
    FileDescriptorProto {
        name: Some("mesh/xds_typed_struct.proto".into()),
        package: Some("xds.type.v3".into()),
        dependency: vec!["google/protobuf/struct.proto".into()],
        message_type: vec![DescriptorProto {
            name: Some("TypedStruct".into()),
            field: vec![
                field("type_url", 1, Type::String, None),
                field("value", 2, Type::Message, Some(".google.protobuf.Struct")),
            ],
            ..Default::default()
        }],
        syntax: Some("proto3".into()),
        ..Default::default()
    }
}

/// A validated set of static resources.
#[derive(Clone, Debug, Default)]
pub struct StaticResources {
    resources: HashMap<(ResourceType, String), Resource>,
    /// Per resource: where it was defined, as received and what it sets that is not applied.
    details: HashMap<(ResourceType, String), Details>,
}

#[derive(Clone, Debug)]
struct Details {
    /// `file: static_resources.clusters[0]`.
    at: String,
    /// The encoded resource (for config dumps).
    raw: bytes::Bytes,
    unapplied: UnappliedFields,
}

impl StaticResources {
    /// Loads a `.json`, `.yaml` or `.yml` file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, StaticConfigError> {
        let path = path.as_ref();
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| StaticConfigError::new(&origin, format!("cannot read: {e}")))?;
        Self::from_str(&text, &origin)
    }

    /// Parses JSON or YAML text; `origin` names it in errors.
    pub fn from_str(text: &str, origin: &str) -> Result<Self, StaticConfigError> {
        // YAML is a superset of JSON, so one parser serves both and reports line and column.
        let doc: serde_json::Value = serde_norway::from_str(text)
            .map_err(|e| StaticConfigError::new(origin, e.to_string()))?;
        Self::from_value(&doc, origin)
    }

    /// Builds from an already parsed document.
    pub fn from_value(doc: &serde_json::Value, origin: &str) -> Result<Self, StaticConfigError> {
        let mut out = Self::default();
        let lists = [
            ("static_resources.listeners", ResourceType::Listener),
            ("static_resources.clusters", ResourceType::Cluster),
        ];
        for (path, ty) in lists {
            let (a, b) = path.split_once('.').expect("two-part path");
            for (i, v) in doc
                .get(a)
                .and_then(|s| s.get(b))
                .and_then(|l| l.as_array())
                .into_iter()
                .flatten()
                .enumerate()
            {
                let at = format!("{path}[{i}]");
                let r = parse_resource(v, Some(ty))
                    .map_err(|e| StaticConfigError::new(origin, format!("{at}{e}")))?;
                out.insert(r, origin, &at)?;
            }
        }
        for (i, v) in doc
            .get("resources")
            .and_then(|l| l.as_array())
            .into_iter()
            .flatten()
            .enumerate()
        {
            let at = format!("resources[{i}]");
            let r = parse_resource(v, None)
                .map_err(|e| StaticConfigError::new(origin, format!("{at}{e}")))?;
            out.insert(r, origin, &at)?;
        }
        if out.resources.is_empty() {
            return Err(StaticConfigError::new(
                origin,
                "no resources: expected static_resources.listeners/clusters or resources",
            ));
        }
        Ok(out)
    }

    fn insert(
        &mut self,
        parsed: ParsedResource,
        origin: &str,
        at: &str,
    ) -> Result<(), StaticConfigError> {
        let ParsedResource {
            resource_type: ty,
            name,
            resource,
            unapplied,
            raw,
        } = parsed;
        let key = (ty, name);
        if self.resources.insert(key.clone(), resource).is_some() {
            return Err(StaticConfigError::new(
                origin,
                format!("{at}: {ty} {:?} is defined twice", key.1),
            ));
        }
        let listed = unapplied
            .iter()
            .filter(|f| f.class == FieldClass::Ignored)
            .map(|f| format!("{at}.{f}"))
            .collect::<Vec<_>>();
        if !listed.is_empty() {
            tracing::warn!(
                file = origin,
                "fields not applied by this client: {}",
                listed.join(", ")
            );
        }
        self.details.insert(
            key,
            Details {
                at: format!("{origin}: {at}"),
                raw,
                unapplied,
            },
        );
        Ok(())
    }

    /// Strict field accounting: fails, naming the file and every field, when a resource sets
    /// a field this client ignores (one that would change traffic under Envoy). Inert fields
    /// pass.
    ///
    /// ```
    /// let yaml = r#"
    /// static_resources:
    ///   clusters:
    ///   - name: a
    ///     type: EDS
    ///     health_checks: [{ timeout: 1s, interval: 5s, http_health_check: { path: /healthz } }]
    /// "#;
    /// let loaded = mesh_core::StaticResources::from_str(yaml, "mesh.yaml").unwrap();
    /// let e = loaded.strict().unwrap_err().to_string();
    /// assert!(e.contains("static_resources.clusters[0].health_checks"), "{e}");
    /// ```
    pub fn strict(self) -> Result<Self, StaticConfigError> {
        let mut problems: Vec<String> = Vec::new();
        for d in self.details.values() {
            for f in d
                .unapplied
                .iter()
                .filter(|f| f.class == FieldClass::Ignored)
            {
                problems.push(format!("{}.{f}", d.at));
            }
        }
        if problems.is_empty() {
            return Ok(self);
        }
        problems.sort();
        Err(StaticConfigError {
            origin: "strict field accounting".into(),
            message: format!("fields this client does not apply: {}", problems.join("; ")),
        })
    }

    /// The fields a resource sets that this client does not apply.
    pub fn unapplied(&self, ty: ResourceType, name: &str) -> UnappliedFields {
        self.details
            .get(&(ty, name.to_owned()))
            .map_or_else(|| Arc::from([]), |d| d.unapplied.clone())
    }

    /// Every resource with its state, sorted by type and name (what `/config_dump` shows).
    pub(crate) fn dump(&self) -> Vec<crate::xds::ResourceDump> {
        let mut keys: Vec<_> = self.resources.keys().collect();
        keys.sort();
        keys.into_iter()
            .map(|(ty, name)| crate::xds::ResourceDump {
                resource_type: *ty,
                name: name.clone(),
                state: self.state(*ty, name),
            })
            .collect()
    }

    /// The resource of this type and name.
    pub fn get(&self, ty: ResourceType, name: &str) -> Option<&Resource> {
        self.resources.get(&(ty, name.to_owned()))
    }

    /// How many resources there are.
    pub fn len(&self) -> usize {
        self.resources.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.resources.is_empty()
    }

    pub(crate) fn state(&self, ty: ResourceType, name: &str) -> ResourceState {
        match self.get(ty, name) {
            Some(r) => ResourceState {
                value: Some(r.clone()),
                version: "static".into(),
                status: ResourceStatus::Acked,
                error: None,
                raw: self
                    .details
                    .get(&(ty, name.to_owned()))
                    .map(|d| d.raw.clone()),
                updated_at: Some(SystemTime::now()),
                unapplied: self.unapplied(ty, name),
            },
            None => ResourceState {
                status: ResourceStatus::DoesNotExist,
                ..ResourceState::requested()
            },
        }
    }
}

/// One resource parsed from proto3 JSON by [`parse_resource`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ParsedResource {
    /// Its type.
    pub resource_type: ResourceType,
    /// Its name.
    pub name: String,
    /// The validated model.
    pub resource: Resource,
    /// The fields it sets that this client does not apply ([`crate::xds::fields`]).
    pub unapplied: UnappliedFields,
    /// The resource in protobuf encoding.
    pub raw: bytes::Bytes,
}

/// Parses one resource in proto3 JSON (with `@type`, or of type `ty`) and validates it, as
/// [`parse_resource`] does, without the list of unapplied fields.
pub fn parse_typed(
    value: &serde_json::Value,
    ty: Option<ResourceType>,
) -> Result<(ResourceType, String, Resource), InvalidJson> {
    parse_resource(value, ty).map(|p| (p.resource_type, p.name, p.resource))
}

/// Parses one resource in proto3 JSON (with `@type`, or of type `ty`), validates it and lists
/// the fields it sets that this client does not apply.
///
/// Errors start with the field path inside the value (`.virtual_hosts[0]…: why`), so callers
/// can prefix where the value came from. Any `@type` the descriptor pool does not know (say,
/// Istio's own filters) is wrapped in a `TypedStruct` so that validation can say which filter
/// is unsupported, or skip it when it is optional.
pub fn parse_resource(
    value: &serde_json::Value,
    ty: Option<ResourceType>,
) -> Result<ParsedResource, InvalidJson> {
    let (ty, bytes) = encode_resource(value, ty)?;
    let any = Any {
        type_url: ty.type_url().to_owned(),
        value: bytes,
    };
    let decoded = crate::xds::decode_any(&any, false).map_err(|e| InvalidJson::new("", e))?;
    debug_assert_eq!(decoded.0, ty);
    let d = decoded.1;
    let resource = d
        .result
        .map_err(|e| InvalidJson::new(format!(" ({ty} {})", d.name), e.to_string()))?;
    Ok(ParsedResource {
        resource_type: ty,
        name: d.name,
        resource,
        unapplied: d.unapplied,
        raw: d.raw,
    })
}

/// Encodes one resource in proto3 JSON (with `@type`, or of type `ty`) as protobuf, without
/// validating it: for tools that look at a resource the client would refuse (what fields does
/// it set that are not applied?).
pub fn encode_resource(
    value: &serde_json::Value,
    ty: Option<ResourceType>,
) -> Result<(ResourceType, Vec<u8>), InvalidJson> {
    let pool = descriptor_pool();
    let mut value = value.clone();
    let type_url = match ty {
        Some(t) => {
            if let Some(obj) = value.as_object_mut() {
                obj.remove("@type");
            }
            t.type_url().to_owned()
        }
        None => {
            let url = value
                .get("@type")
                .and_then(|t| t.as_str())
                .ok_or_else(|| InvalidJson::new("", "\"@type\" is required"))?
                .to_owned();
            value.as_object_mut().map(|o| o.remove("@type"));
            url
        }
    };
    let ty = ResourceType::from_type_url(&type_url).ok_or_else(|| {
        InvalidJson::new(".@type", format!("{type_url} is not an xDS resource type"))
    })?;
    wrap_unknown_any(&mut value, pool);
    let desc = pool
        .get_message_by_name(type_url.trim_start_matches("type.googleapis.com/"))
        .ok_or_else(|| InvalidJson::new("", format!("descriptor for {type_url} missing")))?;
    let mut track = serde_path_to_error::Track::new();
    let de = serde_path_to_error::Deserializer::new(&value, &mut track);
    let msg = DynamicMessage::deserialize(desc, de)
        .map_err(|e| InvalidJson::new(format!(".{}", track.path()), e.to_string()))?;
    Ok((ty, msg.encode_to_vec()))
}

/// Why [`parse_typed`] refuses a value: where in it (a field path such as
/// `.virtual_hosts[0].routes[1]`, empty for the value itself) and why. Displayed as
/// `{path}: {reason}`, so a caller can put where the value came from in front.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct InvalidJson {
    /// The field path inside the value.
    pub path: String,
    /// Why.
    pub reason: String,
}

impl InvalidJson {
    fn new(path: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            reason: reason.into(),
        }
    }
}

/// Replaces `{"@type": unknown, …}` objects by `TypedStruct`s carrying the type URL.
fn wrap_unknown_any(v: &mut serde_json::Value, pool: &DescriptorPool) {
    match v {
        serde_json::Value::Object(map) => {
            if let Some(url) = map.get("@type").and_then(|t| t.as_str()) {
                let name = url.rsplit('/').next().unwrap_or(url);
                if name == "udpa.type.v1.TypedStruct" {
                    // Same shape as xds.type.v3's, which the pool knows.
                    map.insert(
                        "@type".into(),
                        "type.googleapis.com/xds.type.v3.TypedStruct".into(),
                    );
                    return;
                }
                if pool.get_message_by_name(name).is_none() {
                    let url = url.to_owned();
                    map.remove("@type");
                    let inner = serde_json::Value::Object(std::mem::take(map));
                    map.insert(
                        "@type".into(),
                        "type.googleapis.com/xds.type.v3.TypedStruct".into(),
                    );
                    map.insert("type_url".into(), url.into());
                    map.insert("value".into(), inner);
                    return;
                }
            }
            for (_, child) in map.iter_mut() {
                wrap_unknown_any(child, pool);
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(|c| wrap_unknown_any(c, pool)),
        _ => {}
    }
}
