//! Reading Istio configuration: YAML files (several documents each) into typed resources, with
//! every error located by file, line, column and field path, as `istioctl analyze` would.

mod duration;
pub mod istio;
pub mod kube;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use duration::{InvalidDuration, IstioDuration, parse_duration};

/// `metadata` of any object.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Metadata {
    /// Name.
    #[serde(default)]
    pub name: String,
    /// Namespace (default `default`).
    pub namespace: Option<String>,
    /// Labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

impl Metadata {
    /// The namespace, `default` when unset.
    pub fn namespace(&self) -> &str {
        self.namespace.as_deref().unwrap_or("default")
    }
}

/// One configuration object with where it came from.
#[derive(Clone, Debug)]
pub struct Object {
    /// Its metadata.
    pub metadata: Metadata,
    /// Its typed spec.
    pub spec: Spec,
    /// File and line of the document.
    pub origin: Origin,
}

/// A typed spec, by kind.
#[derive(Clone, Debug)]
#[allow(missing_docs)]
pub enum Spec {
    VirtualService(Box<istio::VirtualService>),
    DestinationRule(Box<istio::DestinationRule>),
    ServiceEntry(Box<istio::ServiceEntry>),
    WorkloadEntry(Box<istio::WorkloadEntry>),
    PeerAuthentication(Box<istio::PeerAuthentication>),
    AuthorizationPolicy(Box<istio::AuthorizationPolicy>),
    RequestAuthentication(Box<istio::RequestAuthentication>),
    Gateway(Box<istio::Gateway>),
    Service(Box<kube::Service>),
    Deployment(Box<kube::Deployment>),
    ServiceAccount,
    /// The `mesh` key of the `istio` ConfigMap.
    MeshConfig(Box<istio::MeshConfig>),
}

impl Spec {
    /// The kind's name.
    pub fn kind(&self) -> &'static str {
        match self {
            Spec::VirtualService(_) => "VirtualService",
            Spec::DestinationRule(_) => "DestinationRule",
            Spec::ServiceEntry(_) => "ServiceEntry",
            Spec::WorkloadEntry(_) => "WorkloadEntry",
            Spec::PeerAuthentication(_) => "PeerAuthentication",
            Spec::AuthorizationPolicy(_) => "AuthorizationPolicy",
            Spec::RequestAuthentication(_) => "RequestAuthentication",
            Spec::Gateway(_) => "Gateway",
            Spec::Service(_) => "Service",
            Spec::Deployment(_) => "Deployment",
            Spec::ServiceAccount => "ServiceAccount",
            Spec::MeshConfig(_) => "ConfigMap",
        }
    }
}

/// Where something is in the input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    /// File.
    pub file: PathBuf,
    /// Line (1-based).
    pub line: usize,
    /// Column (1-based).
    pub column: usize,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.column)
    }
}

/// A located problem: `file:line:column: field: message`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    /// Where.
    pub origin: Origin,
    /// The field path inside the document (`spec.http[0].route[1].weight`), if known.
    pub field: Option<String>,
    /// What is wrong.
    pub message: String,
    /// Errors stop `validate`; warnings are reported and served around.
    pub severity: Severity,
}

/// How bad a [`Diagnostic`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    /// The configuration is rejected.
    Error,
    /// Accepted; something in it has no effect.
    Warning,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let level = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        match &self.field {
            Some(field) => write!(f, "{}: {level}: {field}: {}", self.origin, self.message),
            None => write!(f, "{}: {level}: {}", self.origin, self.message),
        }
    }
}

/// Everything read from a set of files.
#[derive(Clone, Debug, Default)]
pub struct Config {
    /// The objects, in file order.
    pub objects: Vec<Object>,
    /// Warnings (errors make loading fail).
    pub warnings: Vec<Diagnostic>,
}

/// Reads every `.yaml`/`.yml` file under `dir` (recursively, in name order).
pub fn load_dir(dir: &Path) -> Result<Config, Vec<Diagnostic>> {
    let mut files = Vec::new();
    collect(dir, &mut files).map_err(|e| vec![io_diagnostic(dir, e)])?;
    files.sort();
    load_files(&files)
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect(&path, out)?;
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        ) {
            out.push(path);
        }
    }
    Ok(())
}

fn io_diagnostic(path: &Path, e: std::io::Error) -> Diagnostic {
    Diagnostic {
        origin: Origin {
            file: path.to_owned(),
            line: 1,
            column: 1,
        },
        field: None,
        message: format!("cannot read: {e}"),
        severity: Severity::Error,
    }
}

/// Reads the given files; all errors are collected, not just the first.
///
/// An object defined again in another file replaces the earlier definition when its file
/// was written more recently (the same name order breaks a tie), with a warning: dropping an
/// Istio task's file into the directory applies it over what is there, as `kubectl apply`
/// would. Twice in one file is an error.
pub fn load_files(files: &[PathBuf]) -> Result<Config, Vec<Diagnostic>> {
    let mut config = Config::default();
    let mut errors = Vec::new();
    let mut written = Vec::new();
    for file in files {
        match std::fs::read_to_string(file) {
            Ok(text) => {
                let before = config.objects.len();
                parse_into(&text, file, &mut config, &mut errors);
                let mtime = std::fs::metadata(file)
                    .and_then(|m| m.modified())
                    .unwrap_or(std::time::SystemTime::UNIX_EPOCH);
                written.extend(std::iter::repeat_n(mtime, config.objects.len() - before));
            }
            Err(e) => errors.push(io_diagnostic(file, e)),
        }
    }
    errors.extend(resolve_duplicates(&mut config, &written));
    if errors.is_empty() {
        Ok(config)
    } else {
        Err(errors)
    }
}

/// The same kind, namespace and name twice: in one file an error; across files the most
/// recently written definition stays, with a warning naming the one it replaces.
fn resolve_duplicates(config: &mut Config, written: &[std::time::SystemTime]) -> Vec<Diagnostic> {
    let mut winner: BTreeMap<(String, String, String), usize> = BTreeMap::new();
    let mut errors = Vec::new();
    let mut dropped = vec![false; config.objects.len()];
    for (i, o) in config.objects.iter().enumerate() {
        let key = (
            o.spec.kind().to_owned(),
            o.metadata.namespace().to_owned(),
            o.metadata.name.clone(),
        );
        let Some(&j) = winner.get(&key) else {
            winner.insert(key, i);
            continue;
        };
        let first = &config.objects[j];
        if first.origin.file == o.origin.file {
            errors.push(Diagnostic {
                origin: o.origin.clone(),
                field: Some("metadata.name".into()),
                message: format!(
                    "{} {}/{} is already defined at {}",
                    key.0, key.1, key.2, first.origin
                ),
                severity: Severity::Error,
            });
            continue;
        }
        // Files come in name order, so a tie goes to the later one.
        let (keep, lose) = if written[i] >= written[j] {
            (i, j)
        } else {
            (j, i)
        };
        dropped[lose] = true;
        winner.insert(key.clone(), keep);
        config.warnings.push(Diagnostic {
            origin: config.objects[lose].origin.clone(),
            field: Some("metadata.name".into()),
            message: format!(
                "{} {}/{} is replaced by the more recently written {}",
                key.0, key.1, key.2, config.objects[keep].origin
            ),
            severity: Severity::Warning,
        });
    }
    let mut i = 0;
    config.objects.retain(|_| {
        i += 1;
        !dropped[i - 1]
    });
    errors
}

/// Parses YAML text (several documents allowed) named `file` in diagnostics.
pub fn parse_str(text: &str, file: &Path) -> Result<Config, Vec<Diagnostic>> {
    let mut config = Config::default();
    let mut errors = Vec::new();
    parse_into(text, file, &mut config, &mut errors);
    if errors.is_empty() {
        Ok(config)
    } else {
        Err(errors)
    }
}

/// The envelope of every document.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope {
    api_version: Option<String>,
    kind: Option<String>,
    #[serde(default)]
    metadata: Metadata,
}

/// A document read again with its spec typed, so errors keep their YAML position.
#[derive(Deserialize)]
struct WithSpec<T> {
    #[serde(default = "Option::default")]
    spec: Option<T>,
}

fn parse_into(text: &str, file: &Path, config: &mut Config, errors: &mut Vec<Diagnostic>) {
    for (offset, doc) in documents(text) {
        let at = |line: usize, column: usize| Origin {
            file: file.to_owned(),
            line: line + offset,
            column,
        };
        let located =
            |e: &serde_norway::Error| e.location().map_or((1, 1), |l| (l.line(), l.column()));
        let env: Option<Envelope> = match serde_norway::from_str(doc) {
            Ok(e) => e,
            Err(e) => {
                let (line, column) = located(&e);
                errors.push(Diagnostic {
                    origin: at(line, column),
                    field: None,
                    message: strip_location(&e.to_string()),
                    severity: Severity::Error,
                });
                continue;
            }
        };
        // An empty document (a trailing `---`) is fine.
        let Some(env) = env else { continue };
        let origin = at(1, 1);
        let (Some(api), Some(kind)) = (env.api_version.as_deref(), env.kind.as_deref()) else {
            errors.push(Diagnostic {
                origin,
                field: None,
                message: "apiVersion and kind are required".into(),
                severity: Severity::Error,
            });
            continue;
        };
        let group = api.split('/').next().unwrap_or(api);
        let typed = match (group, kind) {
            ("networking.istio.io", "VirtualService") => {
                typed(doc).map(|x| Spec::VirtualService(Box::new(x)))
            }
            ("networking.istio.io", "DestinationRule") => {
                typed(doc).map(|x| Spec::DestinationRule(Box::new(x)))
            }
            ("networking.istio.io", "ServiceEntry") => {
                typed(doc).map(|x| Spec::ServiceEntry(Box::new(x)))
            }
            ("networking.istio.io", "WorkloadEntry") => {
                typed(doc).map(|mut x: istio::WorkloadEntry| {
                    x.healthy = health_condition(doc);
                    Spec::WorkloadEntry(Box::new(x))
                })
            }
            ("networking.istio.io", "Gateway") => typed(doc).map(|x| Spec::Gateway(Box::new(x))),
            ("security.istio.io", "PeerAuthentication") => {
                typed(doc).map(|x| Spec::PeerAuthentication(Box::new(x)))
            }
            ("security.istio.io", "AuthorizationPolicy") => {
                typed(doc).map(|x| Spec::AuthorizationPolicy(Box::new(x)))
            }
            ("security.istio.io", "RequestAuthentication") => {
                typed(doc).map(|x| Spec::RequestAuthentication(Box::new(x)))
            }
            ("v1", "Service") => typed(doc).map(|x| Spec::Service(Box::new(x))),
            ("apps", "Deployment") => typed(doc).map(|x| Spec::Deployment(Box::new(x))),
            ("v1", "ServiceAccount") => Ok(Spec::ServiceAccount),
            ("v1", "ConfigMap") if env.metadata.name == "istio" => {
                mesh_config(doc).map(|x| Spec::MeshConfig(Box::new(x)))
            }
            _ => {
                config.warnings.push(Diagnostic {
                    origin,
                    field: None,
                    message: format!(
                        "{kind} ({api}) is not a resource mesh-control serves; ignored"
                    ),
                    severity: Severity::Warning,
                });
                continue;
            }
        };
        match typed {
            Ok(spec) => {
                if env.metadata.name.is_empty() {
                    errors.push(Diagnostic {
                        origin,
                        field: Some("metadata.name".into()),
                        message: "is required".into(),
                        severity: Severity::Error,
                    });
                    continue;
                }
                config.objects.push(Object {
                    metadata: env.metadata,
                    spec,
                    origin,
                });
            }
            Err((path, message, (line, column))) => errors.push(Diagnostic {
                origin: at(line, column),
                field: Some(path),
                message: format!("{kind} {}: {message}", env.metadata.name),
                severity: Severity::Error,
            }),
        }
    }
}

type TypedError = (String, String, (usize, usize));

/// The `Healthy` condition in an object's `status`, if it has one. Status is written by
/// controllers, not people, so anything unexpected in it is ignored rather than rejected.
fn health_condition(doc: &str) -> Option<bool> {
    #[derive(Deserialize)]
    struct WithStatus {
        status: Option<Status>,
    }
    #[derive(Deserialize)]
    struct Status {
        #[serde(default)]
        conditions: Vec<Condition>,
    }
    #[derive(Deserialize)]
    struct Condition {
        #[serde(rename = "type")]
        kind: String,
        status: String,
    }
    let parsed: WithStatus = serde_norway::from_str(doc).ok()?;
    parsed
        .status?
        .conditions
        .iter()
        .find(|c| c.kind == "Healthy")
        .map(|c| c.status.eq_ignore_ascii_case("true"))
}

/// Istio's mesh config: the YAML text in `data.mesh` of the `istio` ConfigMap. Errors point
/// into that text (line numbers counted from the document).
fn mesh_config(doc: &str) -> Result<istio::MeshConfig, TypedError> {
    #[derive(Deserialize)]
    struct ConfigMap {
        #[serde(default)]
        data: BTreeMap<String, String>,
    }
    let cm: ConfigMap = serde_norway::from_str(doc)
        .map_err(|e| ("data".to_owned(), strip_location(&e.to_string()), (1, 1)))?;
    let Some(text) = cm.data.get("mesh") else {
        return Ok(istio::MeshConfig::default());
    };
    // Where the block starts: the line after `mesh: |`.
    let start = doc
        .lines()
        .position(|l| l.trim_start().starts_with("mesh:"))
        .map_or(0, |i| i + 1);
    let de = serde_norway::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let (line, column) = e
            .inner()
            .location()
            .map_or((1, 1), |l| (l.line() + start, l.column()));
        (
            format!("data.mesh.{}", e.path()),
            strip_location(&e.inner().to_string()),
            (line, column),
        )
    })
}

/// Deserializes a document's spec, keeping the YAML position and path of errors.
fn typed<T: serde::de::DeserializeOwned + Default>(doc: &str) -> Result<T, TypedError> {
    let de = serde_norway::Deserializer::from_str(doc);
    let parsed: Result<WithSpec<T>, _> = serde_path_to_error::deserialize(de);
    match parsed {
        Ok(w) => Ok(w.spec.unwrap_or_default()),
        Err(e) => {
            let loc = e
                .inner()
                .location()
                .map_or((1, 1), |l| (l.line(), l.column()));
            let path = e.path().to_string();
            let mut message = strip_location(&e.inner().to_string());
            // serde_norway prefixes some messages with the enclosing path; we print the full
            // path separately.
            if let Some((prefix, rest)) = message.split_once(": ")
                && path.starts_with(prefix)
            {
                message = rest.to_owned();
            }
            Err((path, message, loc))
        }
    }
}

/// Splits a multi-document YAML file into (line offset, text) per document.
fn documents(text: &str) -> Vec<(usize, &str)> {
    let mut docs = Vec::new();
    let mut start_byte = 0;
    let mut start_line = 0;
    let mut byte = 0;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let trimmed = line.trim_end();
        if trimmed == "---" || trimmed.starts_with("--- ") {
            docs.push((start_line, &text[start_byte..byte]));
            start_byte = byte + line.len();
            start_line = i + 1;
        }
        byte += line.len();
    }
    docs.push((start_line, &text[start_byte..]));
    docs
}

/// serde_norway appends " at line L column C"; we print the location first instead.
fn strip_location(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_owned(),
        None => msg.to_owned(),
    }
}
