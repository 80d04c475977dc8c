//! `mesh-control`: Istio YAML in, xDS out.
//!
//! ```text
//! mesh-control serve --config DIR [--listen ADDR]   serve ADS (ADDR: host:port or unix:///path)
//!     [--tls-cert PEM --tls-key PEM [--client-ca PEM]] [--max-streams N]
//!                                                   over TLS (mTLS with a client CA)
//! mesh-control validate DIR|FILE...                 check configuration like `istioctl analyze`
//! mesh-control dump --config DIR [--namespace NS] TARGET...
//!                                                   the xDS a proxyless node would get, as JSON
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use mesh_control::config::{self, Severity};
use mesh_control::control::{ControlPlane, ListenAddr, ServeOptions, ServeTls};

const USAGE: &str = "usage:\n  mesh-control serve --config DIR [--listen ADDR] [--tls-cert PEM --tls-key PEM [--client-ca PEM]] [--max-streams N]\n  mesh-control validate DIR|FILE...\n  mesh-control dump --config DIR [--namespace NS] TARGET...   (TARGET: host:port)";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("validate") if args.len() > 1 => validate(&args[1..]),
        Some("serve") => serve(&args[1..]),
        Some("dump") => dump(&args[1..]),
        Some("-h" | "--help" | "help") => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn flag(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

fn dump(args: &[String]) -> ExitCode {
    let Some(dir) = flag(args, "--config") else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let namespace = flag(args, "--namespace").unwrap_or_else(|| "default".into());
    let mut targets = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a.starts_with("--") {
            it.next();
        } else {
            targets.push(a.clone());
        }
    }
    if targets.is_empty() {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    }
    let snap = match mesh_control::control::load(&PathBuf::from(dir), 1) {
        Ok(s) => s,
        Err(errors) => return fail(&errors),
    };
    let node = mesh_control::generate::NodeInfo {
        id: "dump".into(),
        namespace,
        labels: Default::default(),
        ..Default::default()
    };
    let resources = mesh_control::dump::resources(&snap, &node, &targets);
    match mesh_control::dump::to_json(&resources) {
        Ok(v) => {
            println!("{}", serde_json::to_string_pretty(&v).expect("JSON"));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mesh-control dump: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve(args: &[String]) -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let Some(dir) = flag(args, "--config") else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let listen: ListenAddr = match flag(args, "--listen")
        .unwrap_or_else(|| "127.0.0.1:15010".into())
        .parse()
    {
        Ok(a) => a,
        Err(e) => {
            eprintln!("--listen: {e}");
            return ExitCode::from(2);
        }
    };
    let mut options = ServeOptions::default();
    match (flag(args, "--tls-cert"), flag(args, "--tls-key")) {
        (Some(cert), Some(key)) => {
            options = options.tls(ServeTls {
                cert: cert.into(),
                key: key.into(),
                client_ca: flag(args, "--client-ca").map(PathBuf::from),
            });
        }
        (None, None) if flag(args, "--client-ca").is_none() => {}
        _ => {
            eprintln!("--tls-cert and --tls-key go together (and --client-ca needs them)");
            return ExitCode::from(2);
        }
    }
    if let Some(n) = flag(args, "--max-streams") {
        match n.parse::<usize>() {
            Ok(n) if n > 0 => options = options.max_streams(n),
            _ => {
                eprintln!("--max-streams: {n:?} is not a positive number");
                return ExitCode::from(2);
            }
        }
    }
    let cp = match ControlPlane::new(PathBuf::from(&dir)) {
        Ok(cp) => Arc::new(cp),
        Err(errors) => return fail(&errors),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        tokio::spawn(cp.clone().watch(Duration::from_millis(40)));
        tokio::select! {
            r = cp.serve_with(listen, &options) => match r {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => { eprintln!("mesh-control: {e}"); ExitCode::FAILURE }
            },
            _ = tokio::signal::ctrl_c() => ExitCode::SUCCESS,
        }
    })
}

/// Like `istioctl analyze`: every problem with file, line and field; non-zero exit on errors.
fn validate(paths: &[String]) -> ExitCode {
    let (dirs, files): (Vec<PathBuf>, Vec<PathBuf>) =
        paths.iter().map(PathBuf::from).partition(|p| p.is_dir());
    let mut loaded = Vec::new();
    for d in &dirs {
        match config::load_dir(d) {
            Ok(c) => loaded.push(c),
            Err(errors) => return fail(&errors),
        }
    }
    if !files.is_empty() {
        match config::load_files(&files) {
            Ok(c) => loaded.push(c),
            Err(errors) => return fail(&errors),
        }
    }
    for c in &loaded {
        for w in &c.warnings {
            eprintln!("{w}");
        }
        let registry = match mesh_control::registry::Registry::build(c) {
            Ok(r) => r,
            Err(errors) => return fail(&errors),
        };
        let (errors, warnings): (Vec<_>, Vec<_>) = mesh_control::analyze::analyze(c, &registry)
            .into_iter()
            .partition(|d| d.severity == Severity::Error);
        for w in &warnings {
            eprintln!("{w}");
        }
        if !errors.is_empty() {
            return fail(&errors);
        }
        println!("{} objects valid", c.objects.len());
    }
    ExitCode::SUCCESS
}

fn fail(errors: &[config::Diagnostic]) -> ExitCode {
    for e in errors {
        eprintln!("{e}");
    }
    let n = errors
        .iter()
        .filter(|e| e.severity == Severity::Error)
        .count();
    eprintln!("{n} error(s)");
    ExitCode::FAILURE
}
