//! The control plane: load a configuration directory, watch it, publish snapshots, serve them.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tracing::{error, info};

use crate::config::{self, Diagnostic};
use crate::generate::Policies;
use crate::registry::Registry;
use crate::server::{Ads, Snapshot};

/// Loads and checks a configuration directory into a snapshot with `version`.
pub fn load(dir: &Path, version: u64) -> Result<Snapshot, Vec<Diagnostic>> {
    let config = config::load_dir(dir)?;
    for w in &config.warnings {
        tracing::warn!("{w}");
    }
    let registry = Registry::build(&config)?;
    let (errors, warnings): (Vec<_>, Vec<_>) = crate::analyze::analyze(&config, &registry)
        .into_iter()
        .partition(|d| d.severity == crate::config::Severity::Error);
    if !errors.is_empty() {
        return Err(errors);
    }
    for w in &warnings {
        tracing::warn!("{w}");
    }
    let policies = Policies::new(&config);
    Ok(Snapshot {
        version,
        registry,
        policies,
    })
}

/// Where to listen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListenAddr {
    /// TCP.
    Tcp(std::net::SocketAddr),
    /// A Unix domain socket path.
    Unix(PathBuf),
}

impl std::str::FromStr for ListenAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(p) = s
            .strip_prefix("unix://")
            .or_else(|| s.strip_prefix("unix:"))
        {
            return Ok(Self::Unix(p.into()));
        }
        s.parse()
            .map(Self::Tcp)
            .map_err(|_| format!("{s:?} is neither host:port nor unix:///path"))
    }
}

/// A running control plane over one configuration directory.
pub struct ControlPlane {
    snapshots: watch::Sender<Arc<Snapshot>>,
    /// One ADS service for every listener: its NACK count and sync state cover every stream.
    ads: Ads,
    dir: PathBuf,
}

impl ControlPlane {
    /// Loads `dir`; fails with every diagnostic if it is invalid.
    pub fn new(dir: impl Into<PathBuf>) -> Result<Self, Vec<Diagnostic>> {
        let dir = dir.into();
        let first = load(&dir, 1)?;
        let (tx, rx) = watch::channel(Arc::new(first));
        Ok(Self {
            ads: Ads::new(rx),
            snapshots: tx,
            dir,
        })
    }

    /// The ADS service for these snapshots (clones share its streams' counts and state).
    pub fn ads(&self) -> Ads {
        self.ads.clone()
    }

    /// The current snapshot.
    pub fn current(&self) -> Arc<Snapshot> {
        self.snapshots.borrow().clone()
    }

    /// Reloads now; on error the last good snapshot stays and the diagnostics are returned.
    pub fn reload(&self) -> Result<u64, Vec<Diagnostic>> {
        let version = self.snapshots.borrow().version + 1;
        let snap = load(&self.dir, version)?;
        self.snapshots.send_replace(Arc::new(snap));
        Ok(version)
    }

    /// Watches the directory and reloads on change: polled every `poll`, applied once the files
    /// have been quiet for one more `poll` (editors write files in several steps).
    pub async fn watch(self: Arc<Self>, poll: Duration) {
        let mut last = fingerprint(&self.dir);
        loop {
            tokio::time::sleep(poll).await;
            let now = fingerprint(&self.dir);
            if now == last {
                continue;
            }
            // Debounce: wait until two polls agree.
            let mut settled = now;
            loop {
                tokio::time::sleep(poll).await;
                let again = fingerprint(&self.dir);
                if again == settled {
                    break;
                }
                settled = again;
            }
            last = settled;
            match self.reload() {
                Ok(v) => info!(version = v, dir = %self.dir.display(), "configuration reloaded"),
                Err(diags) => {
                    for d in &diags {
                        error!("{d}");
                    }
                    error!(dir = %self.dir.display(), "configuration rejected; still serving the last good one");
                }
            }
        }
    }

    /// Serves ADS on an already bound TCP listener (tests bind port 0 first).
    pub async fn serve_tcp(
        self: Arc<Self>,
        listener: tokio::net::TcpListener,
    ) -> std::io::Result<()> {
        self.serve_tcp_with(listener, &ServeOptions::default())
            .await
    }

    /// [`serve_tcp`](Self::serve_tcp) with `options` (TLS, mTLS, a stream limit).
    pub async fn serve_tcp_with(
        self: Arc<Self>,
        listener: tokio::net::TcpListener,
        options: &ServeOptions,
    ) -> std::io::Result<()> {
        let local = listener.local_addr()?;
        let server = self.server(options, Some(local))?;
        info!(addr = %local, tls = options.tls.is_some(), "serving ADS");
        server
            .serve_with_incoming(nodelay(listener))
            .await
            .map_err(std::io::Error::other)
    }

    /// Serves ADS on `addr` until the future is dropped.
    pub async fn serve(self: Arc<Self>, addr: ListenAddr) -> std::io::Result<()> {
        self.serve_with(addr, &ServeOptions::default()).await
    }

    /// [`serve`](Self::serve) with `options`.
    pub async fn serve_with(
        self: Arc<Self>,
        addr: ListenAddr,
        options: &ServeOptions,
    ) -> std::io::Result<()> {
        match addr {
            ListenAddr::Tcp(a) => {
                let listener = tokio::net::TcpListener::bind(a).await?;
                self.serve_tcp_with(listener, options).await
            }
            ListenAddr::Unix(p) => {
                if options.tls.is_some() {
                    return Err(std::io::Error::other(
                        "TLS is for TCP listeners; a Unix socket is protected by its file permissions",
                    ));
                }
                let server = self.server(options, None)?;
                let _ = std::fs::remove_file(&p);
                let listener = tokio::net::UnixListener::bind(&p)?;
                info!(path = %p.display(), "serving ADS");
                server
                    .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener))
                    .await
                    .map_err(std::io::Error::other)
            }
        }
    }

    /// The gRPC server: TLS when asked; HTTP/2 keepalive so dead clients are found; a bound
    /// on streams per connection and in all.
    fn server(
        &self,
        options: &ServeOptions,
        tcp: Option<std::net::SocketAddr>,
    ) -> std::io::Result<tonic::transport::server::Router> {
        let mut builder = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            // A client needs one ADS stream; a few more cover reconnect overlap.
            .max_concurrent_streams(Some(16));
        match &options.tls {
            Some(tls) => {
                builder = builder
                    .tls_config(tls.config()?)
                    .map_err(std::io::Error::other)?
            }
            None => {
                if let Some(a) = tcp.filter(|a| !a.ip().is_loopback()) {
                    tracing::warn!(addr = %a, "serving ADS in plaintext beyond the loopback: anyone on the network can read every workload's configuration; use --tls-cert and --tls-key");
                }
            }
        }
        let ads = self.ads().with_max_streams(options.max_streams);
        Ok(builder.add_service(ads.into_service()))
    }
}

/// How the control plane serves ADS.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ServeOptions {
    /// TLS (and mTLS) for TCP listeners; plaintext without (the loopback default).
    pub tls: Option<ServeTls>,
    /// ADS streams served at once; more are refused with `RESOURCE_EXHAUSTED`.
    pub max_streams: usize,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            tls: None,
            max_streams: crate::server::DEFAULT_MAX_STREAMS,
        }
    }
}

impl ServeOptions {
    /// Serves with `tls`.
    pub fn tls(mut self, tls: ServeTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Serves at most `max` streams at once.
    pub fn max_streams(mut self, max: usize) -> Self {
        self.max_streams = max;
        self
    }
}

/// The control plane's TLS: its certificate and key (PEM files), and with `client_ca`, mTLS:
/// clients must present a certificate that CA signed.
#[derive(Clone, Debug)]
pub struct ServeTls {
    /// Certificate chain (PEM).
    pub cert: PathBuf,
    /// Private key (PEM).
    pub key: PathBuf,
    /// CA bundle client certificates must chain to (PEM); `None`: no client certificate.
    pub client_ca: Option<PathBuf>,
}

impl ServeTls {
    fn config(&self) -> std::io::Result<tonic::transport::ServerTlsConfig> {
        use tonic::transport::{Certificate, Identity, ServerTlsConfig};
        let read = |p: &Path| {
            std::fs::read(p).map_err(|e| std::io::Error::other(format!("{}: {e}", p.display())))
        };
        let mut tls = ServerTlsConfig::new()
            .identity(Identity::from_pem(read(&self.cert)?, read(&self.key)?));
        if let Some(ca) = &self.client_ca {
            tls = tls.client_ca_root(Certificate::from_pem(read(ca)?));
        }
        Ok(tls)
    }
}

/// Names, sizes and modification times of the YAML files under `dir`.
fn fingerprint(dir: &Path) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    let mut out = Vec::new();
    fn walk(dir: &Path, out: &mut Vec<(PathBuf, u64, Option<SystemTime>)>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let path = e.path();
            if path.is_dir() {
                walk(&path, out);
            } else if matches!(
                path.extension().and_then(|x| x.to_str()),
                Some("yaml" | "yml")
            ) {
                let meta = e.metadata().ok();
                out.push((
                    path,
                    meta.as_ref().map_or(0, |m| m.len()),
                    meta.and_then(|m| m.modified().ok()),
                ));
            }
        }
    }
    walk(dir, &mut out);
    out.sort();
    out
}

/// Accepted connections with Nagle's algorithm off: a push is a small write that must reach
/// the client at once, not wait up to 40 ms for its delayed ACK.
fn nodelay(
    listener: tokio::net::TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt;
    tokio_stream::wrappers::TcpListenerStream::new(listener).map(|accepted| {
        accepted.inspect(|tcp| {
            let _ = tcp.set_nodelay(true);
        })
    })
}
