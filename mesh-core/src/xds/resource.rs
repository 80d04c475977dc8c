//! The four resource types a client watches, and two-phase decoding: first the protobuf (so a
//! NACK can name the resource), then translation into the model.

use std::sync::Arc;

use bytes::Bytes;
use envoy_types::pb::envoy::config::{
    cluster::v3::Cluster as PbCluster, endpoint::v3::ClusterLoadAssignment,
    listener::v3::Listener as PbListener, route::v3::RouteConfiguration,
};
use envoy_types::pb::google::protobuf::Any;
use prost::Message;

use super::fields::{UnappliedField, UnappliedFields};
use super::translate::{self, FieldError};
use crate::model::{Cluster, EndpointSet, Listener, RouteTable};

/// An xDS resource type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ResourceType {
    /// LDS.
    Listener,
    /// RDS.
    RouteConfiguration,
    /// CDS.
    Cluster,
    /// EDS.
    ClusterLoadAssignment,
}

impl ResourceType {
    /// All types, in the order a client subscribes to them.
    pub const ALL: [ResourceType; 4] = [
        Self::Listener,
        Self::RouteConfiguration,
        Self::Cluster,
        Self::ClusterLoadAssignment,
    ];

    /// The v3 type URL.
    pub fn type_url(self) -> &'static str {
        match self {
            Self::Listener => type_urls::LISTENER,
            Self::RouteConfiguration => type_urls::ROUTE,
            Self::Cluster => type_urls::CLUSTER,
            Self::ClusterLoadAssignment => type_urls::ENDPOINTS,
        }
    }

    /// The type for a type URL.
    pub fn from_type_url(url: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.type_url() == url)
    }

    /// Whether a state-of-the-world response carries every subscribed resource, so that a
    /// missing one means it was deleted (LDS and CDS).
    pub fn all_resources_required_in_sotw(self) -> bool {
        matches!(self, Self::Listener | Self::Cluster)
    }

    /// Short name for logs and errors.
    pub fn short_name(self) -> &'static str {
        match self {
            Self::Listener => "Listener",
            Self::RouteConfiguration => "RouteConfiguration",
            Self::Cluster => "Cluster",
            Self::ClusterLoadAssignment => "ClusterLoadAssignment",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for ResourceType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.short_name())
    }
}

/// A validated resource of any type.
#[derive(Clone, Debug)]
pub enum Resource {
    /// LDS.
    Listener(Arc<Listener>),
    /// RDS.
    RouteConfiguration(Arc<RouteTable>),
    /// CDS.
    Cluster(Arc<Cluster>),
    /// EDS.
    ClusterLoadAssignment(Arc<EndpointSet>),
}

impl Resource {
    /// Its type.
    pub fn resource_type(&self) -> ResourceType {
        match self {
            Self::Listener(_) => ResourceType::Listener,
            Self::RouteConfiguration(_) => ResourceType::RouteConfiguration,
            Self::Cluster(_) => ResourceType::Cluster,
            Self::ClusterLoadAssignment(_) => ResourceType::ClusterLoadAssignment,
        }
    }
}

/// One resource out of a response: its name, its encoded bytes and the translation result.
pub(crate) struct Decoded {
    pub(crate) name: String,
    pub(crate) raw: Bytes,
    pub(crate) result: Result<Resource, FieldError>,
    /// The fields it sets that are not applied (empty when `result` is an error).
    pub(crate) unapplied: UnappliedFields,
}

const RESOURCE_WRAPPER: &str = "type.googleapis.com/envoy.service.discovery.v3.Resource";

/// Decodes one `Any` of a response. `Err` means not even the name could be read. In `strict`
/// mode a resource that sets an [ignored](super::FieldClass::Ignored) field is refused.
pub(crate) fn decode(ty: ResourceType, any: &Any, strict: bool) -> Result<Decoded, String> {
    // Some servers wrap each resource in `discovery.v3.Resource` (name + resource).
    let unwrapped;
    let any = if any.type_url == RESOURCE_WRAPPER {
        let r =
            envoy_types::pb::envoy::service::discovery::v3::Resource::decode(any.value.as_slice())
                .map_err(|e| format!("cannot decode {RESOURCE_WRAPPER}: {e}"))?;
        unwrapped = r
            .resource
            .ok_or("discovery.v3.Resource without a resource")?;
        &unwrapped
    } else {
        any
    };
    if any.type_url != ty.type_url() {
        return Err(format!(
            "type {} in a {} response",
            any.type_url,
            ty.short_name()
        ));
    }
    let raw = Bytes::copy_from_slice(&any.value);
    fn pb<T: Message + Default>(raw: &Bytes) -> Result<T, String> {
        T::decode(raw.as_ref()).map_err(|e| format!("cannot decode: {e}"))
    }
    let (name, result) = match ty {
        ResourceType::Listener => {
            let l: PbListener = pb(&raw)?;
            (
                l.name.clone(),
                translate::listener(&l).map(|x| Resource::Listener(Arc::new(x))),
            )
        }
        ResourceType::RouteConfiguration => {
            let r: RouteConfiguration = pb(&raw)?;
            (
                r.name.clone(),
                translate::route_configuration(&r)
                    .map(|x| Resource::RouteConfiguration(Arc::new(x))),
            )
        }
        ResourceType::Cluster => {
            let c: PbCluster = pb(&raw)?;
            (
                c.name.clone(),
                translate::cluster(&c).map(|x| Resource::Cluster(Arc::new(x))),
            )
        }
        ResourceType::ClusterLoadAssignment => {
            let e: ClusterLoadAssignment = pb(&raw)?;
            (
                e.cluster_name.clone(),
                translate::cluster_load_assignment(&e)
                    .map(|x| Resource::ClusterLoadAssignment(Arc::new(x))),
            )
        }
    };
    if name.is_empty() {
        return Err("resource has no name".into());
    }
    let (result, unapplied) = match result {
        Ok(r) => {
            let unapplied = super::fields::unapplied(ty, &raw);
            match super::fields::any_ignored(&unapplied) {
                Some(first) if strict => (Err(strict_error(first, &unapplied)), Arc::from([])),
                _ => (Ok(r), unapplied),
            }
        }
        Err(e) => (Err(e), Arc::from([])),
    };
    Ok(Decoded {
        name,
        raw,
        result,
        unapplied,
    })
}

/// The NACK detail of strict mode: the first ignored field by path, and how many more.
fn strict_error(first: &UnappliedField, all: &[UnappliedField]) -> FieldError {
    let more = all
        .iter()
        .filter(|f| f.class == super::FieldClass::Ignored)
        .count()
        - 1;
    let mut reason = format!(
        "is not applied by this client ({}), and strict field accounting refuses it",
        first.note
    );
    if more > 0 {
        reason.push_str(&format!(" ({more} more ignored field(s))"));
    }
    FieldError::new(reason).at(&first.path)
}

/// Decodes a resource given as an `Any` of a known type (used by the static loader).
pub(crate) fn decode_any(any: &Any, strict: bool) -> Result<(ResourceType, Decoded), String> {
    let ty = ResourceType::from_type_url(&any.type_url)
        .ok_or_else(|| format!("{} is not an xDS resource type", any.type_url))?;
    decode(ty, any, strict).map(|d| (ty, d))
}

#[cfg(test)]
mod tests {

    /// The test support's table (which cannot use this crate's) says the same.
    #[test]
    fn the_test_supports_type_urls_agree() {
        use mesh_test_support::resources::urls;
        assert_eq!(
            [urls::LISTENER, urls::ROUTE, urls::CLUSTER, urls::ENDPOINTS],
            [
                type_urls::LISTENER,
                type_urls::ROUTE,
                type_urls::CLUSTER,
                type_urls::ENDPOINTS
            ]
        );
    }

    use super::*;
    use prost::Name;

    #[test]
    fn type_urls_match_envoy_types() {
        assert_eq!(ResourceType::Listener.type_url(), PbListener::type_url());
        assert_eq!(
            ResourceType::RouteConfiguration.type_url(),
            RouteConfiguration::type_url()
        );
        assert_eq!(ResourceType::Cluster.type_url(), PbCluster::type_url());
        assert_eq!(
            ResourceType::ClusterLoadAssignment.type_url(),
            ClusterLoadAssignment::type_url()
        );
    }
}

/// The type URLs of the four resource types, for the crates that speak xDS with this one
/// (mesh-control, the test support): defined once, here.
pub mod type_urls {
    /// LDS: `envoy.config.listener.v3.Listener`.
    pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
    /// RDS: `envoy.config.route.v3.RouteConfiguration`.
    pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
    /// CDS: `envoy.config.cluster.v3.Cluster`.
    pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
    /// EDS: `envoy.config.endpoint.v3.ClusterLoadAssignment`.
    pub const ENDPOINTS: &str =
        "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
}
