//! The Kubernetes shapes Bookinfo's manifests use, read for names, ports, labels and service
//! accounts. Only the fields a mesh needs are read; the rest of a manifest is ignored.

use std::collections::BTreeMap;

use serde::Deserialize;

/// `Service.spec`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Service {
    /// Ports.
    #[serde(default)]
    pub ports: Vec<ServicePort>,
    /// Pod (or WorkloadEntry) labels it selects.
    #[serde(default)]
    pub selector: BTreeMap<String, String>,
}

/// `ServicePort`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    /// Service port.
    pub port: u32,
    /// Name (`http`, `grpc-…`: Istio infers the protocol from it).
    pub name: Option<String>,
    /// Port on the workloads: a number or a container port name.
    pub target_port: Option<serde_json::Value>,
    /// `TCP`, `UDP`, `SCTP`.
    pub protocol: Option<String>,
    /// Application protocol (`http`, `grpc`, `kubernetes.io/h2c`…).
    pub app_protocol: Option<String>,
}

/// `Deployment.spec`, down to the pod template's labels and service account.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Deployment {
    /// Replicas.
    pub replicas: Option<u32>,
    /// Pod template.
    #[serde(default)]
    pub template: PodTemplate,
}

/// `PodTemplateSpec`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodTemplate {
    /// Pod metadata.
    #[serde(default)]
    pub metadata: super::Metadata,
    /// Pod spec.
    #[serde(default)]
    pub spec: PodSpec,
}

/// `PodSpec`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSpec {
    /// Service account.
    pub service_account_name: Option<String>,
    /// Containers.
    #[serde(default)]
    pub containers: Vec<Container>,
}

/// `Container`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Container {
    /// Name.
    #[serde(default)]
    pub name: String,
    /// Ports.
    #[serde(default)]
    pub ports: Vec<ContainerPort>,
}

/// `ContainerPort`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerPort {
    /// Port.
    pub container_port: u32,
    /// Name.
    pub name: Option<String>,
}
