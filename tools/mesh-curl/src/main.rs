//! `mesh-curl`: curl for the mesh. Sends one or more requests through [`mesh_tower::MeshClient`]
//! and prints, per request, what the mesh decided: status, cluster, upstream host, attempts,
//! Envoy response flags and time. The way operators and tests see a routing decision from
//! outside the process.
//!
//! ```text
//! mesh-curl [--static FILE | --bootstrap FILE] [-n N] [-c CONCURRENCY] [-X METHOD]
//!           [-H 'name: value']... [-d BODY] [--registry-only] [--ready-timeout SECS]
//!           [--json] [--strict] URL
//! ```
//! Without `--static` or `--bootstrap`, the bootstrap comes from `GRPC_XDS_BOOTSTRAP` /
//! `GRPC_XDS_BOOTSTRAP_CONFIG`, as for any meshed program.
//!
//! After the requests, every field of the resources in use that this client does not apply
//! is listed on standard error (`unapplied: Cluster a: health_checks (ignored: …)`), so a
//! routing decision is never read without knowing what configuration was left out.
//! `--strict` refuses such resources instead (strict field accounting).

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use mesh_tower::{MeshClient, OutboundTrafficPolicy, ResponseInfo};

const USAGE: &str = "usage: mesh-curl [--static FILE | --bootstrap FILE] [-n N] [-c CONCURRENCY] \
[-X METHOD] [-H 'name: value']... [-d BODY] [--registry-only] [--ready-timeout SECS] [--json] \
[--strict] URL";

#[derive(Debug)]
struct Args {
    static_file: Option<String>,
    bootstrap: Option<String>,
    count: usize,
    concurrency: usize,
    method: http::Method,
    headers: Vec<(http::HeaderName, http::HeaderValue)>,
    body: Bytes,
    registry_only: bool,
    ready_timeout: Duration,
    json: bool,
    strict: bool,
    url: http::Uri,
}

fn parse(mut it: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut a = Args {
        static_file: None,
        bootstrap: None,
        count: 1,
        concurrency: 1,
        method: http::Method::GET,
        headers: Vec::new(),
        body: Bytes::new(),
        registry_only: false,
        ready_timeout: Duration::from_secs(10),
        json: false,
        strict: false,
        url: http::Uri::default(),
    };
    let mut url = None;
    while let Some(arg) = it.next() {
        let mut value = |flag: &str| it.next().ok_or_else(|| format!("{flag} needs a value"));
        match arg.as_str() {
            "--static" => a.static_file = Some(value("--static")?),
            "--bootstrap" => a.bootstrap = Some(value("--bootstrap")?),
            "-n" => a.count = number(&value("-n")?, "-n")?,
            "-c" => a.concurrency = number(&value("-c")?, "-c")?.max(1),
            "-X" => {
                a.method = value("-X")?
                    .parse()
                    .map_err(|e| format!("-X: invalid method: {e}"))?
            }
            "-H" => {
                let h = value("-H")?;
                let (k, v) = h
                    .split_once(':')
                    .ok_or_else(|| format!("-H {h:?}: expected 'name: value'"))?;
                a.headers.push((
                    k.trim().parse().map_err(|e| format!("-H {h:?}: {e}"))?,
                    v.trim().parse().map_err(|e| format!("-H {h:?}: {e}"))?,
                ));
            }
            "-d" => a.body = Bytes::from(value("-d")?),
            "--registry-only" => a.registry_only = true,
            "--ready-timeout" => {
                a.ready_timeout = Duration::from_secs_f64(
                    value("--ready-timeout")?
                        .parse()
                        .map_err(|e| format!("--ready-timeout: {e}"))?,
                )
            }
            "--json" => a.json = true,
            "--strict" => a.strict = true,
            "-h" | "--help" => return Err(USAGE.into()),
            s if s.starts_with('-') => return Err(format!("unknown option {s}\n{USAGE}")),
            s => {
                url = Some(
                    s.parse::<http::Uri>()
                        .map_err(|e| format!("invalid URL {s:?}: {e}"))?,
                )
            }
        }
    }
    a.url = url.ok_or_else(|| format!("no URL given\n{USAGE}"))?;
    if a.url.authority().is_none() {
        return Err(format!(
            "URL {} has no host: give http://service:port/path",
            a.url
        ));
    }
    Ok(a)
}

fn number(s: &str, flag: &str) -> Result<usize, String> {
    s.parse().map_err(|e| format!("{flag} {s:?}: {e}"))
}

/// One request's outcome.
struct Outcome {
    n: usize,
    status: u16,
    info: ResponseInfo,
    elapsed: Duration,
    body_len: usize,
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = match parse(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("mesh-curl: {e}");
            return ExitCode::from(2);
        }
    };
    match run(args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("mesh-curl: {e}");
            ExitCode::from(2)
        }
    }
}

/// Sends the requests; true when every one got a 2xx/3xx answer.
async fn run(args: Args) -> Result<bool, Box<dyn std::error::Error>> {
    let builder = mesh_core::Mesh::builder();
    let builder = match (&args.static_file, &args.bootstrap) {
        (Some(f), _) => builder.static_file(f)?,
        (None, Some(b)) => builder.bootstrap_file(b)?,
        (None, None) => builder.bootstrap_from_env()?,
    };
    let builder = if args.strict {
        builder.strict_fields()
    } else {
        builder
    };
    let mesh = builder.build().await?;
    let policy = if args.registry_only {
        OutboundTrafficPolicy::RegistryOnly
    } else {
        OutboundTrafficPolicy::AllowAny
    };
    let client = MeshClient::builder(&mesh)
        .outbound_traffic_policy(policy)
        .ready_timeout(args.ready_timeout)
        .build();
    let args = std::sync::Arc::new(args);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for _ in 0..args.concurrency.min(args.count.max(1)) {
        let (client, args, tx, next) = (client.clone(), args.clone(), tx.clone(), next.clone());
        tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if n >= args.count {
                    return;
                }
                let r = one(&client, &args, n + 1).await;
                if tx.send(r).is_err() {
                    return;
                }
            }
        });
    }
    drop(tx);
    let mut statuses: BTreeMap<u16, usize> = BTreeMap::new();
    let mut clusters: BTreeMap<String, usize> = BTreeMap::new();
    let mut all_ok = true;
    while let Some(r) = rx.recv().await {
        let o = r?;
        all_ok &= o.status < 400;
        *statuses.entry(o.status).or_default() += 1;
        *clusters
            .entry(o.info.cluster.as_deref().unwrap_or("-").to_owned())
            .or_default() += 1;
        print(&o, args.json);
    }
    if args.count > 1 && !args.json {
        println!("statuses: {statuses:?}");
        println!("clusters: {clusters:?}");
    }
    report_unapplied(&mesh).await;
    Ok(all_ok)
}

/// Lists on standard error the fields of the resources in use that this client ignores, and
/// counts the inert ones (statistics names and the like, listed in `/config_dump`).
async fn report_unapplied(mesh: &mesh_core::Mesh) {
    let mut inert = 0;
    for r in mesh.dump().await.unwrap_or_default() {
        for f in r.state.unapplied.iter() {
            if f.class == mesh_core::xds::FieldClass::Ignored {
                eprintln!("unapplied: {} {}: {f}", r.resource_type, r.name);
            } else {
                inert += 1;
            }
        }
    }
    if inert > 0 {
        eprintln!("unapplied: {inert} inert field(s), without effect on traffic");
    }
}

async fn one(client: &MeshClient, args: &Args, n: usize) -> Result<Outcome, mesh_tower::Error> {
    let mut req = http::Request::new(Full::new(args.body.clone()));
    *req.method_mut() = args.method.clone();
    *req.uri_mut() = args.url.clone();
    for (k, v) in &args.headers {
        req.headers_mut().append(k.clone(), v.clone());
    }
    let started = Instant::now();
    let rsp = client.send(req).await?;
    let status = rsp.status().as_u16();
    let info = ResponseInfo::of(&rsp).cloned().unwrap_or_default();
    let body_len = match rsp.into_body().collect().await {
        Ok(b) => b.to_bytes().len(),
        Err(_) => 0,
    };
    Ok(Outcome {
        n,
        status,
        info,
        elapsed: started.elapsed(),
        body_len,
    })
}

fn print(o: &Outcome, json: bool) {
    let cluster = o.info.cluster.as_deref().unwrap_or("-");
    let upstream = o
        .info
        .upstream
        .map_or_else(|| "-".to_owned(), |a| a.to_string());
    let ms = o.elapsed.as_secs_f64() * 1000.0;
    if json {
        println!(
            "{{\"n\":{},\"status\":{},\"cluster\":{:?},\"upstream\":{:?},\"attempts\":{},\"flags\":{:?},\"ms\":{:.3},\"bytes\":{}}}",
            o.n,
            o.status,
            cluster,
            upstream,
            o.info.attempts,
            o.info.flags.to_string(),
            ms,
            o.body_len
        );
    } else {
        println!(
            "#{} {} cluster={} upstream={} attempts={} flags={} time={:.2}ms bytes={}",
            o.n, o.status, cluster, upstream, o.info.attempts, o.info.flags, ms, o.body_len
        );
    }
}
