//! `mesh-bench`: the mesh against bare hyper and an Envoy sidecar pair, in one run, with
//! ratios (../shared/BENCHMARKS.md, and benches/README.md for how to read the output).
//!
//! ```text
//! cargo run --release -p mesh-bench -- [--quick] [--reps N] [--secs S] [--warmup S]
//!     [--only SCENARIO,…] [--modes MODE,…] [--out FILE.md]
//! ```
//!
//! The same binary plays the roles of one run, as separate processes so that each side's CPU
//! and memory are its own: `serve` (the application server, pinned to CPU 1) and `load` (the
//! application client and load generator, pinned to CPU 0), started by the orchestrator.
//! `cost` runs both sides in one process for callgrind (`scripts/cost`, see [`cost`]).

mod client;
mod cost;
mod envoy_pair;
mod load;
mod mesh_config;
mod run;
mod scenario;
mod server;
mod sys;

use std::path::PathBuf;
use std::time::Duration;

use scenario::{Mode, Scenario};

/// The command line: flags with one value each, plus bare switches.
struct Flags(Vec<String>);

impl Flags {
    fn value(&self, name: &str) -> Option<&str> {
        let i = self.0.iter().position(|a| a == name)?;
        match self.0.get(i + 1) {
            Some(v) => Some(v),
            None => fail(&format!("{name} needs a value")),
        }
    }

    fn has(&self, name: &str) -> bool {
        self.0.iter().any(|a| a == name)
    }

    fn parse<T: std::str::FromStr>(&self, name: &str) -> Option<T>
    where
        T::Err: std::fmt::Display,
    {
        self.value(name).map(|v| {
            v.parse()
                .unwrap_or_else(|e| fail(&format!("{name} {v:?}: {e}")))
        })
    }

    fn scenario(&self) -> Scenario {
        let name = self
            .value("--scenario")
            .unwrap_or_else(|| fail("--scenario is required"));
        Scenario::named(name).unwrap_or_else(|| fail(&format!("unknown scenario {name:?}")))
    }

    fn mode(&self) -> Mode {
        self.parse("--mode")
            .unwrap_or_else(|| fail("--mode is required"))
    }

    fn list(&self, name: &str) -> Option<Vec<String>> {
        self.value(name)
            .map(|v| v.split(',').map(str::to_owned).collect())
    }
}

fn fail(message: &str) -> ! {
    eprintln!("mesh-bench: {message}");
    std::process::exit(2);
}

/// A runtime with one worker: each side of a scenario has one CPU.
fn one_cpu_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime")
}

fn main() {
    let flags = Flags(std::env::args().skip(1).collect());
    if let Some(cpu) = flags.parse::<usize>("--cpu") {
        // Before any thread starts, so that the runtime's threads inherit it.
        sys::pin_thread(0, cpu).unwrap_or_else(|e| fail(&format!("pinning to CPU {cpu}: {e}")));
    }
    let otlp = flags.parse("--otlp");
    let bootstrap = flags.value("--bootstrap").map(PathBuf::from);
    match flags.0.first().map(String::as_str) {
        Some("serve") => {
            let ports = flags
                .list("--ports")
                .unwrap_or_else(|| fail("--ports is required"))
                .iter()
                .map(|p| {
                    p.parse()
                        .unwrap_or_else(|_| fail(&format!("bad port {p:?}")))
                })
                .collect();
            one_cpu_runtime().block_on(server::run(server::ServerArgs {
                scenario: flags.scenario(),
                ports,
                bootstrap,
                otlp,
            }));
        }
        Some("cost") => {
            let requests = flags
                .parse("--requests")
                .unwrap_or_else(|| fail("--requests is required"));
            // One thread: callgrind counts are most repeatable when nothing runs in parallel.
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(cost::run(cost::CostArgs {
                    scenario: flags.scenario(),
                    mode: flags.parse("--mode").unwrap_or(Mode::MaxH1),
                    requests,
                }));
        }
        Some("load") => {
            let secs = |name: &str| Duration::from_secs(flags.parse(name).unwrap_or(1));
            one_cpu_runtime().block_on(client::run(client::ClientArgs {
                scenario: flags.scenario(),
                mode: flags.mode(),
                target: flags.parse("--target"),
                bootstrap,
                otlp,
                warmup: secs("--warmup"),
                secs: secs("--secs"),
            }));
        }
        _ => {
            let quick = flags.has("--quick");
            let modes = flags.list("--modes").map(|ms| {
                ms.iter()
                    .map(|m| m.parse().unwrap_or_else(|e: String| fail(&e)))
                    .collect()
            });
            let only = flags.list("--only");
            for name in only.iter().flatten() {
                if Scenario::named(name).is_none() {
                    fail(&format!("unknown scenario {name:?}"));
                }
            }
            let args = run::RunArgs {
                quick,
                reps: if quick {
                    1
                } else {
                    flags.parse("--reps").unwrap_or(5)
                },
                secs: if quick {
                    2
                } else {
                    flags.parse("--secs").unwrap_or(10)
                },
                warmup: if quick {
                    1
                } else {
                    flags.parse("--warmup").unwrap_or(2)
                },
                only,
                modes,
                out: flags.value("--out").map(PathBuf::from),
            };
            // The orchestrator's own threads (control plane, trace sink, Envoy launcher) are
            // not measured and not pinned.
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(run::run(args));
        }
    }
}
