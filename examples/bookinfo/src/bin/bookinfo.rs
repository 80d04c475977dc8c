//! Runs Bookinfo on loopback: mesh-control, a CA made at start, and the six workloads, every
//! hop over Istio mutual TLS. `cargo run -p mesh-bookinfo --bin bookinfo [-- --plaintext]`

use mesh_bookinfo::{Bookinfo, Options};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let mut opts = Options::default();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mtls = !args.iter().any(|a| a == "--plaintext");
    opts.mtls = mtls;
    let config = std::env::current_dir()?.join("bookinfo-config");
    opts.config_dir = Some(config.clone());
    let bookinfo = Bookinfo::start(opts).await?;
    println!(
        "Bookinfo is up, {} between the services.",
        if mtls {
            "Istio mutual TLS"
        } else {
            "plaintext"
        }
    );
    println!();
    println!("  product page   {}", bookinfo.url("/productpage"));
    println!(
        "  mesh-control   ADS on {}, watching {}",
        bookinfo.xds,
        config.display()
    );
    for (name, addr) in &bookinfo.admins {
        println!("  {name:<14} admin http://{addr}/  (stats/prometheus, config_dump, clusters)");
    }
    println!();
    println!(
        "Try a scenario: copy one of Istio's tasks into {}, e.g.",
        config.display()
    );
    println!(
        "  cp examples/bookinfo/networking/virtual-service-all-v1.yaml {}/",
        config.display()
    );
    println!(
        "then sign in as jason on the page, or `curl -H 'cookie: session=jason' {}`.",
        bookinfo.url("/productpage")
    );
    println!("Remove the file to undo it. Ctrl-C stops everything.");
    tokio::signal::ctrl_c().await?;
    println!("stopping");
    drop(bookinfo);
    Ok(())
}
