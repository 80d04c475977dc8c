//! "Is my config applied?": every xDS resource this mesh subscribes to, with its version, its
//! ACK/NACK status and the last error, as JSON for an admin `/config_dump` and as Envoy's
//! Client Status Discovery Service (`envoy.service.status.v3.ClientStatusDiscoveryService`,
//! what `istioctl proxy-status` and grpcdebug read).
//!
//! ```no_run
//! # async fn run(mesh: mesh_core::Mesh) {
//! let dump = mesh_core::status::config_dump(&mesh).await;
//! for r in dump["resources"].as_array().unwrap() {
//!     println!("{} {} {}", r["type"], r["name"], r["status"]);
//! }
//! # }
//! ```

use std::pin::Pin;
use std::time::SystemTime;

use envoy_types::pb::envoy::admin::v3 as admin;
use envoy_types::pb::envoy::service::status::v3 as csds;
use envoy_types::pb::google::protobuf::{Any, Timestamp};
use prost_reflect::{DynamicMessage, SerializeOptions};

use crate::Mesh;
use crate::xds::{ResourceDump, ResourceStatus};

/// Why a resource could not be rendered as JSON ([`resource_json`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DumpError {
    /// No descriptor for the resource's type (the type URL names a message this library does
    /// not carry).
    #[error("no descriptor for {0}")]
    UnknownType(Box<str>),
    /// The bytes do not decode as that message.
    #[error("{message}: {source}")]
    Decode {
        /// The message's full name.
        message: Box<str>,
        /// Why.
        source: prost::DecodeError,
    },
    /// The message cannot be written as JSON.
    #[error("{message}: {source}")]
    Json {
        /// The message's full name.
        message: Box<str>,
        /// Why.
        source: serde_json::Error,
    },
}

/// A resource's encoded form as proto3 JSON with its `@type`, field names as the proto spells
/// them (`virtual_hosts`), as Envoy's config dumps print them.
pub fn resource_json(type_url: &str, bytes: &[u8]) -> Result<serde_json::Value, DumpError> {
    let pool = crate::static_config::descriptor_pool();
    let name = type_url.trim_start_matches("type.googleapis.com/");
    let desc = pool
        .get_message_by_name(name)
        .ok_or_else(|| DumpError::UnknownType(name.into()))?;
    let msg = DynamicMessage::decode(desc, bytes).map_err(|e| DumpError::Decode {
        message: name.into(),
        source: e,
    })?;
    let mut v = msg
        .serialize_with_options(
            serde_json::value::Serializer,
            &SerializeOptions::new()
                .skip_default_fields(true)
                .use_proto_field_name(true),
        )
        .map_err(|e| DumpError::Json {
            message: name.into(),
            source: e,
        })?;
    if let Some(obj) = v.as_object_mut() {
        obj.insert("@type".into(), type_url.into());
    }
    Ok(v)
}

/// RFC 3339 (UTC, milliseconds), as Envoy's access logs print `START_TIME`.
///
/// ```
/// let t = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_500);
/// assert_eq!(mesh_core::status::rfc3339_millis(t), "1970-01-01T00:00:01.500Z");
/// ```
pub fn rfc3339_millis(t: SystemTime) -> String {
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    time::OffsetDateTime::from(t)
        .format(format)
        .unwrap_or_default()
}

/// RFC 3339 (UTC, seconds) for a time, as config dumps show times.
fn rfc3339(t: SystemTime) -> String {
    let format =
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    time::OffsetDateTime::from(t)
        .format(format)
        .unwrap_or_default()
}

/// Every subscribed resource as JSON: `{"node": …, "resources": [{"type", "name",
/// "status", "version", "last_updated", "error": {"detail", "version", "at"},
/// "unapplied_fields": [{"field", "class", "note"}], "resource"}]}`.
/// After a NACK, `status` is `NACKED`, `error` says why and which version was refused, and
/// `version` / `resource` are what is still served. `unapplied_fields` lists what the served
/// resource sets that this client does not apply ([`crate::xds::fields`]).
pub async fn config_dump(mesh: &Mesh) -> serde_json::Value {
    let resources = mesh.dump().await.unwrap_or_default();
    let node = &mesh.bootstrap().node;
    serde_json::json!({
        "node": {"id": node.id, "cluster": node.cluster, "metadata": node.metadata},
        "resources": resources.iter().map(dump_json).collect::<Vec<_>>(),
    })
}

fn dump_json(r: &ResourceDump) -> serde_json::Value {
    let st = &r.state;
    let mut out = serde_json::json!({
        "type": format!("{:?}", r.resource_type),
        "type_url": r.resource_type.type_url(),
        "name": r.name,
        "status": st.status.as_str(),
        "version": &*st.version,
    });
    if let Some(t) = st.updated_at {
        out["last_updated"] = rfc3339(t).into();
    }
    if let Some(e) = &st.error {
        out["error"] = serde_json::json!({
            "detail": &*e.detail,
            "version": &*e.version,
            "at": rfc3339(e.at),
        });
    }
    if !st.unapplied.is_empty() {
        out["unapplied_fields"] = st
            .unapplied
            .iter()
            .map(|f| serde_json::json!({"field": &*f.path, "class": f.class.as_str(), "note": f.note}))
            .collect();
    }
    if let Some(raw) = &st.raw {
        out["resource"] = resource_json(r.resource_type.type_url(), raw)
            .unwrap_or_else(|e| serde_json::json!({"error": e.to_string()}));
    }
    out
}

fn timestamp(t: SystemTime) -> Timestamp {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

/// This mesh's status as a CSDS `ClientConfig` (generic xDS configs, one per resource).
pub async fn client_config(mesh: &Mesh) -> csds::ClientConfig {
    let resources = mesh.dump().await.unwrap_or_default();
    let b = mesh.bootstrap();
    csds::ClientConfig {
        node: Some(envoy_types::pb::envoy::config::core::v3::Node {
            id: b.node.id.clone(),
            cluster: b.node.cluster.clone(),
            ..Default::default()
        }),
        generic_xds_configs: resources
            .iter()
            .map(|r| {
                let st = &r.state;
                let type_url = r.resource_type.type_url().to_owned();
                csds::client_config::GenericXdsConfig {
                    name: r.name.clone(),
                    version_info: st.version.to_string(),
                    xds_config: st.raw.as_ref().map(|raw| Any {
                        type_url: type_url.clone(),
                        value: raw.to_vec(),
                    }),
                    last_updated: st.updated_at.map(timestamp),
                    client_status: match st.status {
                        ResourceStatus::Requested => admin::ClientResourceStatus::Requested,
                        ResourceStatus::DoesNotExist => admin::ClientResourceStatus::DoesNotExist,
                        ResourceStatus::Acked => admin::ClientResourceStatus::Acked,
                        ResourceStatus::Nacked => admin::ClientResourceStatus::Nacked,
                    } as i32,
                    error_state: st.error.as_ref().map(|e| admin::UpdateFailureState {
                        last_update_attempt: Some(timestamp(e.at)),
                        details: e.detail.to_string(),
                        version_info: e.version.to_string(),
                        ..Default::default()
                    }),
                    type_url,
                    ..Default::default()
                }
            })
            .collect(),
        ..Default::default()
    }
}

/// The CSDS gRPC service for a mesh: a tower service that an HTTP/2 server (mesh-tower's
/// admin endpoint, or a tonic server) can serve.
pub fn csds_service(
    mesh: &Mesh,
) -> csds::client_status_discovery_service_server::ClientStatusDiscoveryServiceServer<Csds> {
    csds::client_status_discovery_service_server::ClientStatusDiscoveryServiceServer::new(Csds {
        mesh: mesh.clone(),
    })
}

/// The CSDS implementation: answers every request with this mesh's one client config.
#[derive(Debug)]
pub struct Csds {
    mesh: Mesh,
}

type StatusStream = Pin<
    Box<dyn futures_util::Stream<Item = Result<csds::ClientStatusResponse, tonic::Status>> + Send>,
>;

#[tonic::async_trait]
impl csds::client_status_discovery_service_server::ClientStatusDiscoveryService for Csds {
    type StreamClientStatusStream = StatusStream;

    async fn stream_client_status(
        &self,
        request: tonic::Request<tonic::Streaming<csds::ClientStatusRequest>>,
    ) -> Result<tonic::Response<StatusStream>, tonic::Status> {
        use futures_util::StreamExt;
        let mesh = self.mesh.clone();
        let stream = request.into_inner().then(move |req| {
            let mesh = mesh.clone();
            async move {
                req?;
                Ok(csds::ClientStatusResponse {
                    config: vec![client_config(&mesh).await],
                })
            }
        });
        Ok(tonic::Response::new(Box::pin(stream)))
    }

    async fn fetch_client_status(
        &self,
        _request: tonic::Request<csds::ClientStatusRequest>,
    ) -> Result<tonic::Response<csds::ClientStatusResponse>, tonic::Status> {
        Ok(tonic::Response::new(csds::ClientStatusResponse {
            config: vec![client_config(&self.mesh).await],
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_796_151_683);
        assert_eq!(rfc3339(t), "2026-12-01T19:01:23Z");
        let leap = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_709_164_800);
        assert_eq!(rfc3339(leap), "2024-02-29T00:00:00Z");
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00Z");
    }
}
