//! Certificate providers: the current [`Identity`], swapped atomically when it changes.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use tokio::sync::watch;

use super::{Identity, IdentityError};

/// How often watched files are checked for changes (besides the refresh interval).
const POLL: Duration = Duration::from_secs(1);

/// A source of identities. Cheap to clone; [`current`](Self::current) is one atomic load.
///
/// ```no_run
/// # async fn f() -> Result<(), mesh_core::identity::IdentityError> {
/// use mesh_core::identity::CertificateProvider;
/// use std::time::Duration;
/// // What istio-agent writes for proxyless workloads.
/// let p = CertificateProvider::file_watcher(
///     "default",
///     Some("/var/lib/istio/data/cert-chain.pem".as_ref()),
///     Some("/var/lib/istio/data/key.pem".as_ref()),
///     Some("/var/lib/istio/data/root-cert.pem".as_ref()),
///     Duration::from_secs(600),
/// )
/// .await?;
/// println!("{:?}", p.current().spiffe_id());
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct CertificateProvider {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    name: Arc<str>,
    current: ArcSwap<Identity>,
    updates: watch::Sender<u64>,
}

impl CertificateProvider {
    /// A provider holding `identity` until [`set`](Self::set) replaces it (tests, embedding).
    pub fn from_identity(name: &str, identity: Identity) -> Self {
        Self {
            inner: Arc::new(Inner {
                name: name.into(),
                current: ArcSwap::from_pointee(identity),
                updates: watch::channel(0).0,
            }),
        }
    }

    /// Reads the files now (failing fast if they are unusable), then watches them: a change
    /// (or `refresh_interval` passing) re-reads them; an unusable update is logged as an error
    /// and the last good identity keeps serving. The watch stops when every clone is dropped.
    pub async fn file_watcher(
        name: &str,
        certificate_file: Option<&Path>,
        private_key_file: Option<&Path>,
        ca_certificate_file: Option<&Path>,
        refresh_interval: Duration,
    ) -> Result<Self, IdentityError> {
        Self::file_watcher_with_bundle_map(
            name,
            certificate_file,
            private_key_file,
            ca_certificate_file,
            None,
            refresh_interval,
        )
        .await
    }

    /// [`file_watcher`](Self::file_watcher) with gRFC A87's `spiffe_trust_bundle_map_file`:
    /// peers are verified against their own trust domain's bundle from that file
    /// ([`Identity::with_spiffe_bundle_map`]), which is watched like the others.
    pub async fn file_watcher_with_bundle_map(
        name: &str,
        certificate_file: Option<&Path>,
        private_key_file: Option<&Path>,
        ca_certificate_file: Option<&Path>,
        spiffe_trust_bundle_map_file: Option<&Path>,
        refresh_interval: Duration,
    ) -> Result<Self, IdentityError> {
        let files = Files {
            cert: certificate_file.map(Path::to_path_buf),
            key: private_key_file.map(Path::to_path_buf),
            ca: ca_certificate_file.map(Path::to_path_buf),
            bundle_map: spiffe_trust_bundle_map_file.map(Path::to_path_buf),
        };
        let identity = files.read().await?;
        let provider = Self::from_identity(name, identity);
        let weak = Arc::downgrade(&provider.inner);
        tokio::spawn(async move {
            let mut stamp = files.stamp().await;
            let mut last_read = tokio::time::Instant::now();
            loop {
                tokio::time::sleep(POLL.min(refresh_interval)).await;
                let Some(inner) = weak.upgrade() else { return };
                let now_stamp = files.stamp().await;
                if now_stamp == stamp && last_read.elapsed() < refresh_interval {
                    continue;
                }
                match files.read().await {
                    Ok(identity) => {
                        stamp = now_stamp;
                        last_read = tokio::time::Instant::now();
                        tracing::info!(provider = %inner.name, id = ?identity.spiffe_id().map(ToString::to_string), "certificates reloaded");
                        inner.current.store(Arc::new(identity));
                        inner.updates.send_modify(|n| *n += 1);
                    }
                    // Files being rewritten may be read half-way; the next poll retries, and
                    // the last good identity keeps serving meanwhile.
                    Err(e) => {
                        tracing::error!(provider = %inner.name, error = %e, "certificate update rejected; keeping the last good one")
                    }
                }
            }
        });
        Ok(provider)
    }

    /// The provider's name (its bootstrap instance name).
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The current identity. Lock-free.
    pub fn current(&self) -> Arc<Identity> {
        self.inner.current.load_full()
    }

    /// Replaces the identity (for in-memory providers).
    pub fn set(&self, identity: Identity) {
        self.inner.current.store(Arc::new(identity));
        self.inner.updates.send_modify(|n| *n += 1);
    }

    /// A receiver that changes whenever the identity does.
    pub fn updates(&self) -> watch::Receiver<u64> {
        self.inner.updates.subscribe()
    }
}

struct Files {
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    ca: Option<PathBuf>,
    bundle_map: Option<PathBuf>,
}

type Stamp = Vec<Option<(SystemTime, u64)>>;

impl Files {
    async fn read(&self) -> Result<Identity, IdentityError> {
        async fn read(p: &Option<PathBuf>) -> Result<Option<Vec<u8>>, IdentityError> {
            match p {
                Some(p) => {
                    tokio::fs::read(p)
                        .await
                        .map(Some)
                        .map_err(|source| IdentityError::Read {
                            path: p.display().to_string(),
                            source,
                        })
                }
                None => Ok(None),
            }
        }
        let origin = [&self.cert, &self.key, &self.ca]
            .iter()
            .filter_map(|p| p.as_ref().map(|p| p.display().to_string()))
            .collect::<Vec<_>>()
            .join(", ");
        let identity = Identity::from_pem(
            read(&self.cert).await?.as_deref(),
            read(&self.key).await?.as_deref(),
            read(&self.ca).await?.as_deref(),
            &origin,
        )?;
        match (&self.bundle_map, read(&self.bundle_map).await?) {
            (Some(path), Some(json)) => {
                identity.with_spiffe_bundle_map(&json, &path.display().to_string())
            }
            _ => Ok(identity),
        }
    }

    async fn stamp(&self) -> Stamp {
        let mut out = Vec::with_capacity(3);
        for p in [&self.cert, &self.key, &self.ca, &self.bundle_map]
            .into_iter()
            .flatten()
        {
            out.push(
                tokio::fs::metadata(p)
                    .await
                    .ok()
                    .and_then(|m| Some((m.modified().ok()?, m.len()))),
            );
        }
        out
    }
}
