//! Python interop peers (grpcio), run from the project's virtualenv that `scripts/test` fills.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// The virtualenv's Python: `$MESH_PYTHON`, else `.tools/venv/bin/python`. Panics with
/// instructions when missing: interop tests never pass silently without their peer.
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("MESH_PYTHON") {
        return PathBuf::from(p);
    }
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.tools/venv/bin/python");
    assert!(
        p.exists(),
        "the test virtualenv is missing: run ./scripts/test (it installs grpcio into .tools/venv) or set MESH_PYTHON"
    );
    p
}

/// A path under the workspace's `tests/python/`.
pub fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/python")
        .join(name)
}

/// A child process killed on drop.
pub struct Peer(pub Child);

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `grpc_xds_peer.py server NAME` and returns it with its port.
pub fn grpc_server(name: &str) -> (Peer, u16) {
    let mut child = Command::new(python())
        .arg(script("grpc_xds_peer.py"))
        .args(["server", name])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the grpcio server");
    let port = announced_port(&mut child, "the grpcio server");
    (Peer(child), port)
}

/// The port a peer prints as its first line (`PORT <n>`) once it serves.
fn announced_port(child: &mut Child, who: &str) -> u16 {
    use std::io::BufRead;
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    std::io::BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read port");
    line.trim()
        .strip_prefix("PORT ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| {
            panic!("{who} said {line:?} (its error is above; ./scripts/test installs grpcio and protobuf)")
        })
}

/// gRPC's xDS interop client on grpcio (`xds_interop_client.py`), running until dropped.
pub struct InteropClient {
    _peer: Peer,
    _dir: tempfile::TempDir,
    /// Its stats port on 127.0.0.1 (`LoadBalancerStatsService`, `Configure`, CSDS).
    pub stats_port: u16,
}

/// Starts `xds_interop_client.py` with `bootstrap` (gRPC's JSON) and the contract's `args`
/// (`--server=…`, `--qps=…`); the stats port is picked here.
pub fn xds_interop_client(bootstrap: &str, args: &[String]) -> InteropClient {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("bootstrap.json");
    std::fs::write(&file, bootstrap).expect("write bootstrap");
    let mut child = Command::new(python())
        .arg(script("xds_interop_client.py"))
        .args(args)
        .arg("--stats_port=0")
        .env("GRPC_XDS_BOOTSTRAP", &file)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the grpcio interop client");
    let stats_port = announced_port(&mut child, "the grpcio interop client");
    let peer = Peer(child);
    InteropClient {
        _peer: peer,
        _dir: dir,
        stats_port,
    }
}

/// Runs `grpc_xds_peer.py client` with a bootstrap and returns its parsed results.
pub async fn grpc_client(
    bootstrap: &str,
    target: &str,
    n: usize,
    metadata: &[&str],
) -> Vec<serde_json::Value> {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("bootstrap.json");
    std::fs::write(&file, bootstrap).expect("write bootstrap");
    let out = tokio::process::Command::new(python())
        .arg(script("grpc_xds_peer.py"))
        .args(["client", target, &n.to_string()])
        .args(metadata)
        .env("GRPC_XDS_BOOTSTRAP", &file)
        .output()
        .await
        .expect("run the grpcio client");
    assert!(
        out.status.success(),
        "grpcio client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "grpcio client printed {:?}: {e}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// A running OTLP receiver (`otlp_receiver.py`, on grpcio and `opentelemetry-proto`) and
/// the spans and metric data points it has received, as JSON.
pub struct OtlpReceiver {
    _peer: Peer,
    /// Its port on 127.0.0.1.
    pub port: u16,
    spans: std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
}

impl OtlpReceiver {
    /// Starts the receiver.
    pub fn start() -> Self {
        use std::io::BufRead;
        let mut child = Command::new(python())
            .arg(script("otlp_receiver.py"))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the OTLP receiver");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = std::io::BufReader::new(stdout).lines();
        let first = lines.next().and_then(Result::ok).unwrap_or_default();
        let port = first
            .trim()
            .strip_prefix("PORT ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("the OTLP receiver said {first:?} (is opentelemetry-proto installed? run ./scripts/test)"));
        let spans = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = spans.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str(&line) {
                    sink.lock().expect("lock").push(v);
                }
            }
        });
        Self {
            _peer: Peer(child),
            port,
            spans,
        }
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<serde_json::Value> {
        self.signal("span")
    }

    /// Every metric data point received so far (the latest push last).
    pub fn metrics(&self) -> Vec<serde_json::Value> {
        self.signal("metric")
    }

    fn signal(&self, kind: &str) -> Vec<serde_json::Value> {
        self.spans
            .lock()
            .expect("lock")
            .iter()
            .filter(|v| v["signal"] == kind)
            .cloned()
            .collect()
    }
}
