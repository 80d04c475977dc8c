//! A real Prometheus (Debian's `prometheus` package, which `scripts/test` installs) started for
//! a test, scraping the given targets every second, with its HTTP API on loopback.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The Prometheus binary: `$MESH_PROMETHEUS`, else `prometheus` on the PATH. Panics with
/// instructions when there is none: the scrape test never passes without its peer.
pub fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("MESH_PROMETHEUS") {
        return PathBuf::from(p);
    }
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("prometheus"))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!("Prometheus is not installed: run ./scripts/test (it installs Debian's prometheus) or set MESH_PROMETHEUS")
    })
}

/// A running Prometheus; killed on drop.
pub struct Prometheus {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts Prometheus scraping `metrics_path` on each target every second.
    pub async fn start(targets: &[SocketAddr], metrics_path: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let list = targets
            .iter()
            .map(|t| format!("'{t}'"))
            .collect::<Vec<_>>()
            .join(", ");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
                 scrape_configs:\n- job_name: mesh\n  metrics_path: {metrics_path}\n  static_configs: [{{targets: [{list}]}}]\n"
            ),
        )
        .expect("write config");
        let addr = crate::unused_port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log file");
        let child = Command::new(binary())
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        let mut me = Self { child, addr, dir };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = me.child.try_wait().expect("prometheus status") {
                panic!("prometheus exited with {status}:\n{}", me.log());
            }
            if let Ok((200, _)) = crate::http::get(addr, "/-/ready", &[]).await {
                return me;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "prometheus did not become ready:\n{}",
                me.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// An instant query through the HTTP API: each result's labels and value.
    pub async fn query(
        &self,
        promql: &str,
    ) -> Vec<(serde_json::Map<String, serde_json::Value>, f64)> {
        let path = format!("/api/v1/query?query={}", percent_encode(promql));
        let Ok((200, body)) = crate::http::get(self.addr, &path, &[]).await else {
            return Vec::new();
        };
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        v["data"]["result"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| {
                let labels = r["metric"].as_object()?.clone();
                let value = r["value"][1].as_str()?.parse().ok()?;
                Some((labels, value))
            })
            .collect()
    }

    /// Prometheus's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
