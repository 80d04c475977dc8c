//! The service registry: which services exist, on which ports, and which endpoints back them.
//!
//! Sources are Istio's own non-Kubernetes registry (ServiceEntry, WorkloadEntry) and the shapes
//! of Kubernetes manifests: a `Service` selects WorkloadEntries by labels, as Istio does for VMs,
//! which is how Bookinfo runs on one machine. Deployments contribute nothing but names.

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::config::{Config, Diagnostic, Object, Severity, Spec, istio, kube};

/// The mesh's DNS suffix for Kubernetes services.
pub const DOMAIN_SUFFIX: &str = "svc.cluster.local";
/// The SPIFFE trust domain.
pub const TRUST_DOMAIN: &str = "cluster.local";

/// A service.
#[derive(Clone, Debug, PartialEq)]
pub struct Service {
    /// Fully qualified host (`reviews.default.svc.cluster.local`, or a ServiceEntry host).
    pub hostname: String,
    /// Namespace.
    pub namespace: String,
    /// Ports.
    pub ports: Vec<Port>,
    /// Endpoints.
    pub endpoints: Vec<Endpoint>,
    /// Whether it is outside the mesh (ServiceEntry `MESH_EXTERNAL`): no mTLS to it.
    pub external: bool,
    /// For ServiceEntry `resolution: DNS` / `DNS_ROUND_ROBIN`: names the client resolves
    /// itself, instead of `endpoints` served over EDS.
    pub dns: Option<DnsTargets>,
}

/// Host names resolved by the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsTargets {
    /// `DNS_ROUND_ROBIN`: use one address at a time (Envoy's LOGICAL_DNS).
    pub logical: bool,
    /// Host and its port per service port number.
    pub targets: Vec<(String, BTreeMap<u16, u16>)>,
}

/// A service port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Port {
    /// Number.
    pub number: u16,
    /// Name (`http`, `grpc-web`…).
    pub name: String,
    /// Protocol, upper case (`HTTP`, `HTTP2`, `GRPC`, `TCP`…), from the protocol field or the
    /// name prefix, as Istio infers it.
    pub protocol: String,
    /// Default port on the endpoints.
    pub target_port: u16,
}

impl Port {
    /// Whether the port carries HTTP (and so gets listeners and routes).
    pub fn is_http(&self) -> bool {
        matches!(
            self.protocol.as_str(),
            "HTTP" | "HTTP2" | "GRPC" | "GRPC-WEB"
        )
    }

    /// Whether the upstream speaks HTTP/2.
    pub fn is_h2(&self) -> bool {
        matches!(self.protocol.as_str(), "HTTP2" | "GRPC")
    }
}

/// An endpoint of a service.
#[derive(Clone, Debug, PartialEq)]
pub struct Endpoint {
    /// IP address.
    pub address: IpAddr,
    /// Port per service port number.
    pub ports: BTreeMap<u16, u16>,
    /// Labels (subsets select on them).
    pub labels: BTreeMap<String, String>,
    /// `region/zone/subzone`.
    pub locality: (String, String, String),
    /// LB weight.
    pub weight: u32,
    /// Service account (for SPIFFE SAN checks).
    pub service_account: Option<String>,
    /// Namespace of the workload.
    pub namespace: String,
}

impl Endpoint {
    /// The SPIFFE ID of the workload, when it has a service account.
    pub fn spiffe_id(&self) -> Option<String> {
        self.service_account
            .as_ref()
            .map(|sa| format!("spiffe://{TRUST_DOMAIN}/ns/{}/sa/{sa}", self.namespace))
    }
}

/// All services by hostname.
#[derive(Clone, Debug, Default)]
pub struct Registry {
    services: BTreeMap<String, Service>,
}

impl Registry {
    /// Builds the registry from loaded configuration. Problems that make an object useless are
    /// errors; the registry is only built when there are none.
    pub fn build(config: &Config) -> Result<Self, Vec<Diagnostic>> {
        let mut errors = Vec::new();
        let entries: Vec<(&Object, &istio::WorkloadEntry)> = config
            .objects
            .iter()
            .filter_map(|o| match &o.spec {
                Spec::WorkloadEntry(w) => Some((o, &**w)),
                _ => None,
            })
            .collect();
        for (o, w) in &entries {
            if w.address.parse::<IpAddr>().is_err() {
                errors.push(diag(
                    o,
                    "spec.address",
                    format!(
                        "{:?} is not an IP address (mesh-control serves EDS with IPs)",
                        w.address
                    ),
                ));
            }
        }
        let mut services = BTreeMap::new();
        for o in &config.objects {
            match &o.spec {
                Spec::Service(s) => match kube_service(o, s, &entries) {
                    Ok(svc) => {
                        services.insert(svc.hostname.clone(), svc);
                    }
                    Err(e) => errors.push(e),
                },
                Spec::ServiceEntry(se) => match service_entry(o, se, &entries) {
                    Ok(list) => {
                        for svc in list {
                            services.insert(svc.hostname.clone(), svc);
                        }
                    }
                    Err(e) => errors.push(e),
                },
                _ => {}
            }
        }
        if errors.is_empty() {
            Ok(Self { services })
        } else {
            Err(errors)
        }
    }

    /// The service for `host` as a client in `namespace` names it: a full hostname, or a
    /// Kubernetes short name (`reviews`, `reviews.default`, `reviews.default.svc`).
    pub fn resolve(&self, host: &str, namespace: &str) -> Option<&Service> {
        if let Some(s) = self.services.get(host) {
            return Some(s);
        }
        let candidates = match host.matches('.').count() {
            0 => vec![format!("{host}.{namespace}.{DOMAIN_SUFFIX}")],
            1 => vec![format!("{host}.{DOMAIN_SUFFIX}")],
            2 if host.ends_with(".svc") => vec![format!("{host}.cluster.local")],
            _ => vec![],
        };
        candidates.iter().find_map(|c| self.services.get(c))
    }

    /// Every service.
    pub fn services(&self) -> impl Iterator<Item = &Service> {
        self.services.values()
    }
}

fn diag(o: &Object, field: &str, message: String) -> Diagnostic {
    Diagnostic {
        origin: o.origin.clone(),
        field: Some(field.into()),
        message: format!("{} {}: {message}", o.spec.kind(), o.metadata.name),
        severity: Severity::Error,
    }
}

/// Istio's protocol selection: an explicit application protocol (ServiceEntry `protocol`,
/// Kubernetes `appProtocol`), else the port name's prefix (`http-web` → HTTP), else TCP.
fn protocol(explicit: Option<&str>, name: &str) -> String {
    let from = |p: &str| match p.to_ascii_lowercase().as_str() {
        "http" | "http1" => Some("HTTP"),
        "http2" | "kubernetes.io/h2c" | "h2c" => Some("HTTP2"),
        "grpc" => Some("GRPC"),
        "grpc-web" => Some("GRPC-WEB"),
        "https" => Some("HTTPS"),
        "tls" => Some("TLS"),
        "tcp" => Some("TCP"),
        "mongo" => Some("MONGO"),
        "mysql" => Some("MYSQL"),
        "redis" => Some("REDIS"),
        "udp" => Some("UDP"),
        _ => None,
    };
    explicit
        .and_then(from)
        .or_else(|| from(name.split('-').next().unwrap_or("")))
        .unwrap_or("TCP")
        .to_owned()
}

fn endpoint_from(w: &istio::WorkloadEntry, ns: &str, ports: &[Port]) -> Option<Endpoint> {
    if w.healthy == Some(false) {
        // istiod's default (PILOT_SEND_UNHEALTHY_ENDPOINTS off): unhealthy endpoints are
        // not sent at all.
        return None;
    }
    let address = w.address.parse().ok()?;
    let ports = ports
        .iter()
        .map(|p| {
            (
                p.number,
                w.ports
                    .get(&p.name)
                    .and_then(|n| u16::try_from(*n).ok())
                    .unwrap_or(p.target_port),
            )
        })
        .collect();
    let mut loc = w
        .locality
        .as_deref()
        .unwrap_or("")
        .splitn(3, '/')
        .map(str::to_owned);
    Some(Endpoint {
        address,
        ports,
        labels: w.labels.clone(),
        locality: (
            loc.next().unwrap_or_default(),
            loc.next().unwrap_or_default(),
            loc.next().unwrap_or_default(),
        ),
        weight: w.weight.filter(|w| *w > 0).unwrap_or(1),
        service_account: w.service_account.clone(),
        namespace: ns.to_owned(),
    })
}

fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn port_u16(o: &Object, field: String, n: u32) -> Result<u16, Diagnostic> {
    u16::try_from(n)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| diag(o, &field, format!("{n} is not a port")))
}

fn kube_service(
    o: &Object,
    s: &kube::Service,
    entries: &[(&Object, &istio::WorkloadEntry)],
) -> Result<Service, Diagnostic> {
    let ns = o.metadata.namespace();
    let mut ports = Vec::new();
    for (i, p) in s.ports.iter().enumerate() {
        let number = port_u16(o, format!("spec.ports[{i}].port"), p.port)?;
        let target_port = match &p.target_port {
            Some(serde_json::Value::Number(n)) => port_u16(
                o,
                format!("spec.ports[{i}].targetPort"),
                n.as_u64().unwrap_or(0) as u32,
            )?,
            _ => number,
        };
        let name = p.name.clone().unwrap_or_default();
        ports.push(Port {
            number,
            protocol: protocol(p.app_protocol.as_deref(), &name),
            name,
            target_port,
        });
    }
    let endpoints = entries
        .iter()
        .filter(|(eo, w)| eo.metadata.namespace() == ns && selects(&s.selector, &w.labels))
        .filter_map(|(eo, w)| endpoint_from(w, eo.metadata.namespace(), &ports))
        .collect();
    Ok(Service {
        hostname: format!("{}.{ns}.{DOMAIN_SUFFIX}", o.metadata.name),
        namespace: ns.to_owned(),
        ports,
        endpoints,
        external: false,
        dns: None,
    })
}

fn service_entry(
    o: &Object,
    se: &istio::ServiceEntry,
    entries: &[(&Object, &istio::WorkloadEntry)],
) -> Result<Vec<Service>, Diagnostic> {
    let ns = o.metadata.namespace();
    if se.hosts.is_empty() {
        return Err(diag(
            o,
            "spec.hosts",
            "at least one host is required".into(),
        ));
    }
    let mut ports = Vec::new();
    for (i, p) in se.ports.iter().enumerate() {
        let number = port_u16(o, format!("spec.ports[{i}].number"), p.number)?;
        let target_port = match p.target_port {
            Some(t) => port_u16(o, format!("spec.ports[{i}].targetPort"), t)?,
            None => number,
        };
        let name = p.name.clone().unwrap_or_default();
        ports.push(Port {
            number,
            protocol: protocol(p.protocol.as_deref(), &name),
            name,
            target_port,
        });
    }
    let resolution = se.resolution.as_deref().unwrap_or("NONE");
    if matches!(resolution, "DNS" | "DNS_ROUND_ROBIN") {
        return Ok(dns_service_entry(
            o,
            se,
            ports,
            resolution == "DNS_ROUND_ROBIN",
        ));
    }
    let mut endpoints = Vec::new();
    for (i, w) in se.endpoints.iter().enumerate() {
        match endpoint_from(w, ns, &ports) {
            Some(e) => endpoints.push(e),
            None => {
                return Err(diag(
                    o,
                    &format!("spec.endpoints[{i}].address"),
                    format!("{:?} is not an IP address", w.address),
                ));
            }
        }
    }
    if let Some(sel) = &se.workload_selector {
        endpoints.extend(
            entries
                .iter()
                .filter(|(eo, w)| eo.metadata.namespace() == ns && selects(&sel.labels, &w.labels))
                .filter_map(|(eo, w)| endpoint_from(w, eo.metadata.namespace(), &ports)),
        );
    }
    let external = se.location.as_deref() == Some("MESH_EXTERNAL");
    Ok(se
        .hosts
        .iter()
        .map(|h| Service {
            hostname: h.clone(),
            namespace: ns.to_owned(),
            ports: ports.clone(),
            endpoints: endpoints.clone(),
            external,
            dns: None,
        })
        .collect())
}

/// A DNS-resolved ServiceEntry: its endpoints' addresses (names or IPs), or, with no
/// endpoints, each host resolved on its own (Istio's behaviour).
fn dns_service_entry(
    o: &Object,
    se: &istio::ServiceEntry,
    ports: Vec<Port>,
    logical: bool,
) -> Vec<Service> {
    let port_map = |w: Option<&istio::WorkloadEntry>| -> BTreeMap<u16, u16> {
        ports
            .iter()
            .map(|p| {
                (
                    p.number,
                    w.and_then(|w| w.ports.get(&p.name))
                        .and_then(|n| u16::try_from(*n).ok())
                        .unwrap_or(p.target_port),
                )
            })
            .collect()
    };
    let from_endpoints: Vec<(String, BTreeMap<u16, u16>)> = se
        .endpoints
        .iter()
        .map(|w| (w.address.clone(), port_map(Some(w))))
        .collect();
    let external = se.location.as_deref() == Some("MESH_EXTERNAL");
    se.hosts
        .iter()
        .map(|h| Service {
            hostname: h.clone(),
            namespace: o.metadata.namespace().to_owned(),
            ports: ports.clone(),
            endpoints: Vec::new(),
            external,
            dns: Some(DnsTargets {
                logical,
                targets: if from_endpoints.is_empty() {
                    vec![(h.clone(), port_map(None))]
                } else {
                    from_endpoints.clone()
                },
            }),
        })
        .collect()
}
