//! What a watcher sees of one resource: the last good value, its version, and the ACK/NACK
//! status of the latest update (what `/config_dump` and CSDS report).

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;

use super::fields::UnappliedFields;
use super::resource::Resource;

/// The client's view of one resource.
#[derive(Clone, Debug)]
pub struct ResourceState {
    /// The last valid version, still served after a NACK (gRFC A88's default).
    pub value: Option<Resource>,
    /// `version_info` of the response that delivered `value`.
    pub version: Arc<str>,
    /// Status of the latest update.
    pub status: ResourceStatus,
    /// The latest NACK for this resource, if its current value is older than a rejected update.
    pub error: Option<ResourceError>,
    /// The encoded resource as received (for config dumps).
    pub raw: Option<Bytes>,
    /// When `value` arrived.
    pub updated_at: Option<SystemTime>,
    /// The fields `value` sets that this client does not apply (see [`super::fields`]).
    pub unapplied: UnappliedFields,
}

impl ResourceState {
    pub(crate) fn requested() -> Self {
        Self {
            value: None,
            version: "".into(),
            status: ResourceStatus::Requested,
            error: None,
            raw: None,
            updated_at: None,
            unapplied: Arc::from([]),
        }
    }

    /// Whether the resource is known to be absent and there is nothing cached to serve.
    pub fn does_not_exist(&self) -> bool {
        self.status == ResourceStatus::DoesNotExist && self.value.is_none()
    }

    /// Whether a value or an authoritative absence is known (a config built on it is not torn).
    pub fn is_resolved(&self) -> bool {
        self.value.is_some() || self.status == ResourceStatus::DoesNotExist
    }
}

/// CSDS-style status of a resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResourceStatus {
    /// Subscribed, nothing received yet.
    Requested,
    /// The server says it does not exist (deleted, absent from an LDS/CDS response, or the
    /// does-not-exist timer fired). A cached value may still be served (gRFC A88).
    DoesNotExist,
    /// The latest update was accepted.
    Acked,
    /// The latest update was rejected; `value` is the last good one, if any.
    Nacked,
}

impl ResourceStatus {
    /// CSDS's `ClientResourceStatus` name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Requested => "REQUESTED",
            Self::DoesNotExist => "DOES_NOT_EXIST",
            Self::Acked => "ACKED",
            Self::Nacked => "NACKED",
        }
    }
}

/// A rejected update.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceError {
    /// The version that was rejected.
    pub version: Arc<str>,
    /// Why: `"<field path>: <reason>"`.
    pub detail: Arc<str>,
    /// When.
    pub at: SystemTime,
}
