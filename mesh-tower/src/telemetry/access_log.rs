//! The access log: one JSON line per request with Envoy's default fields (Istio's
//! `accessLogEncoding: JSON`), written to a writer the application chooses. Off by default.
//!
//! Cheap when on: a request's fields are captured as it starts and the line is formatted
//! when its response ends; lines go through a bounded channel to a writer thread, so a slow
//! writer never blocks a request (lines that do not fit are dropped and counted).

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::time::SystemTime;

use super::Telemetry;
use crate::flags::ResponseFlags;

/// How many lines may wait for the writer.
const QUEUE: usize = 8192;

/// Where access log lines go.
///
/// ```no_run
/// # fn run(mesh: mesh_core::Mesh) {
/// mesh_tower::telemetry::AccessLog::to(std::io::stdout()).install(&mesh);
/// # }
/// ```
#[must_use = "the access log is off until `install` is called"]
pub struct AccessLog {
    writer: Box<dyn Write + Send>,
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLog").finish_non_exhaustive()
    }
}

impl AccessLog {
    /// Lines go to `writer` (stdout, a file, a pipe…), from a thread of their own.
    pub fn to(writer: impl Write + Send + 'static) -> Self {
        Self {
            writer: Box::new(writer),
        }
    }

    /// Turns the access log on for every client and server of `mesh`.
    pub fn install(self, mesh: &mesh_core::Mesh) {
        let (tx, rx) = std::sync::mpsc::sync_channel::<String>(QUEUE);
        let mut writer = self.writer;
        let spawned = std::thread::Builder::new()
            .name("mesh-access-log".into())
            .spawn(move || {
                while let Ok(line) = rx.recv() {
                    let _ = writer.write_all(line.as_bytes());
                    // Flush when caught up, so lines appear promptly without a flush each.
                    while let Ok(more) = rx.try_recv() {
                        let _ = writer.write_all(more.as_bytes());
                    }
                    let _ = writer.flush();
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "access log writer thread could not start; access log off");
            return;
        }
        Telemetry::of(mesh).access_log.store(Some(Arc::new(Logger {
            tx,
            dropped: AtomicU64::new(0),
        })));
    }
}

/// The installed log.
pub(crate) struct Logger {
    tx: SyncSender<String>,
    pub(crate) dropped: AtomicU64,
}

/// A request's fields, taken as it starts.
#[derive(Debug)]
pub(crate) struct Entry {
    start: SystemTime,
    direction: &'static str,
    method: String,
    path: String,
    protocol: &'static str,
    authority: String,
    user_agent: String,
    request_id: String,
    forwarded_for: String,
    downstream: Option<String>,
    pub(crate) upstream_cluster: Option<Arc<str>>,
    pub(crate) upstream_host: Option<std::net::SocketAddr>,
}

impl Entry {
    /// Captures a request.
    pub(crate) fn of<B>(
        req: &http::Request<B>,
        outbound: bool,
        downstream: Option<String>,
    ) -> Self {
        let header = |k: &str| {
            req.headers()
                .get(k)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned()
        };
        let authority = req
            .uri()
            .authority()
            .map(|a| a.to_string())
            .unwrap_or_else(|| header("host"));
        Self {
            start: SystemTime::now(),
            direction: if outbound { "outbound" } else { "inbound" },
            method: req.method().to_string(),
            path: req
                .uri()
                .path_and_query()
                .map_or("/".to_owned(), |p| p.to_string()),
            protocol: match req.version() {
                http::Version::HTTP_2 => "HTTP/2",
                http::Version::HTTP_10 => "HTTP/1.0",
                _ => "HTTP/1.1",
            },
            authority,
            user_agent: header("user-agent"),
            request_id: header("x-request-id"),
            forwarded_for: header("x-forwarded-for"),
            downstream,
            upstream_cluster: None,
            upstream_host: None,
        }
    }
}

/// What the response added.
pub(crate) struct Ending {
    pub(crate) code: u16,
    pub(crate) grpc_status: Option<u16>,
    pub(crate) flags: ResponseFlags,
    pub(crate) bytes_received: u64,
    pub(crate) bytes_sent: u64,
    pub(crate) duration: std::time::Duration,
}

impl Logger {
    /// Formats and queues the line of a finished request.
    pub(crate) fn write(&self, e: &Entry, end: &Ending) {
        let line = serde_json::json!({
            "start_time": mesh_core::status::rfc3339_millis(e.start),
            "direction": e.direction,
            "method": e.method,
            "path": e.path,
            "protocol": e.protocol,
            "response_code": end.code,
            "grpc_status": end.grpc_status,
            "response_flags": end.flags.to_string(),
            "bytes_received": end.bytes_received,
            "bytes_sent": end.bytes_sent,
            "duration": end.duration.as_millis() as u64,
            "authority": e.authority,
            "user_agent": e.user_agent,
            "x_forwarded_for": e.forwarded_for,
            "request_id": e.request_id,
            "upstream_cluster": e.upstream_cluster.as_deref(),
            "upstream_host": e.upstream_host.map(|h| h.to_string()),
            "downstream_peer": e.downstream,
        });
        let mut text = line.to_string();
        text.push('\n');
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = self.tx.try_send(text) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}
