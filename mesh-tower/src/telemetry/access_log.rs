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
                // The writer polls rather than waits in `recv`: a waiting receiver makes every
                // request's send a wake-up (a futex call and a context switch, measured at
                // tens of µs per line on two cores); polling every 20 ms costs nothing per
                // line and delays a line by at most that.
                loop {
                    let mut wrote = false;
                    loop {
                        match rx.try_recv() {
                            Ok(line) => {
                                let _ = writer.write_all(line.as_bytes());
                                wrote = true;
                            }
                            Err(std::sync::mpsc::TryRecvError::Empty) => break,
                            Err(std::sync::mpsc::TryRecvError::Disconnected) => return,
                        }
                    }
                    if wrote {
                        let _ = writer.flush();
                    }
                    // A thread of its own, not a runtime worker: sleeping blocks nothing else.
                    #[allow(clippy::disallowed_methods)]
                    std::thread::sleep(std::time::Duration::from_millis(20));
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
        let header = |k: &str| super::header_text(req, k, "");
        let authority = mesh_core::model::authority_of(req).to_owned();
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
        // Written field by field: building a `serde_json::Value` first costs a map and a
        // string per field.
        let mut text = String::with_capacity(512);
        let mut json = Json::new(&mut text);
        json.string("start_time", &mesh_core::status::rfc3339_millis(e.start));
        json.string("direction", e.direction);
        json.string("method", &e.method);
        json.string("path", &e.path);
        json.string("protocol", e.protocol);
        json.number("response_code", u64::from(end.code));
        match end.grpc_status {
            Some(g) => json.number("grpc_status", u64::from(g)),
            None => json.null("grpc_status"),
        }
        json.display("response_flags", &end.flags);
        json.number("bytes_received", end.bytes_received);
        json.number("bytes_sent", end.bytes_sent);
        json.number("duration", end.duration.as_millis() as u64);
        json.string("authority", &e.authority);
        json.string("user_agent", &e.user_agent);
        json.string("x_forwarded_for", &e.forwarded_for);
        json.string("request_id", &e.request_id);
        match &e.upstream_cluster {
            Some(c) => json.string("upstream_cluster", c),
            None => json.null("upstream_cluster"),
        }
        match &e.upstream_host {
            Some(h) => json.display("upstream_host", h),
            None => json.null("upstream_host"),
        }
        match &e.downstream {
            Some(d) => json.string("downstream_peer", d),
            None => json.null("downstream_peer"),
        }
        json.finish();
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = self.tx.try_send(text) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A JSON object written straight into a string.
struct Json<'a> {
    out: &'a mut String,
    first: bool,
}

impl<'a> Json<'a> {
    fn new(out: &'a mut String) -> Self {
        out.push('{');
        Self { out, first: true }
    }

    fn key(&mut self, k: &str) {
        if !self.first {
            self.out.push(',');
        }
        self.first = false;
        self.out.push('"');
        self.out.push_str(k);
        self.out.push_str("\":");
    }

    fn string(&mut self, k: &str, v: &str) {
        self.key(k);
        self.out.push('"');
        for c in v.chars() {
            match c {
                '"' => self.out.push_str("\\\""),
                '\\' => self.out.push_str("\\\\"),
                '\n' => self.out.push_str("\\n"),
                '\r' => self.out.push_str("\\r"),
                '\t' => self.out.push_str("\\t"),
                c if (c as u32) < 0x20 => {
                    let _ =
                        std::fmt::Write::write_fmt(self.out, format_args!("\\u{:04x}", c as u32));
                }
                c => self.out.push(c),
            }
        }
        self.out.push('"');
    }

    fn display(&mut self, k: &str, v: &dyn std::fmt::Display) {
        self.string(k, &v.to_string());
    }

    fn number(&mut self, k: &str, v: u64) {
        self.key(k);
        let _ = std::fmt::Write::write_fmt(self.out, format_args!("{v}"));
    }

    fn null(&mut self, k: &str) {
        self.key(k);
        self.out.push_str("null");
    }

    fn finish(self) {
        self.out.push_str("}\n");
    }
}

#[cfg(test)]
mod tests {
    use super::Json;

    #[test]
    fn lines_are_json_with_escapes() {
        let mut s = String::new();
        let mut j = Json::new(&mut s);
        j.string("path", "/a\"b\\c\n\u{1}");
        j.number("code", 200);
        j.null("x");
        j.finish();
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["path"], "/a\"b\\c\n\u{1}");
        assert_eq!(v["code"], 200);
        assert!(v["x"].is_null());
    }
}
