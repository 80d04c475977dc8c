//! `mesh-control`: validate Istio configuration (and, as the issue progresses, serve it as xDS).

use std::path::PathBuf;
use std::process::ExitCode;

use mesh_control::config::{self, Severity};

const USAGE: &str = "usage: mesh-control validate DIR|FILE...";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("validate") if args.len() > 1 => validate(&args[1..]),
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

/// Like `istioctl analyze`: every problem with file, line and field; non-zero exit on errors.
fn validate(paths: &[String]) -> ExitCode {
    let mut files = Vec::new();
    for p in paths {
        let p = PathBuf::from(p);
        if p.is_dir() {
            match config::load_dir(&p) {
                Ok(c) => report(&c),
                Err(errors) => return fail(&errors),
            }
        } else {
            files.push(p);
        }
    }
    if !files.is_empty() {
        match config::load_files(&files) {
            Ok(c) => report(&c),
            Err(errors) => return fail(&errors),
        }
    }
    ExitCode::SUCCESS
}

fn report(c: &config::Config) {
    for w in &c.warnings {
        eprintln!("{w}");
    }
    println!("{} objects valid", c.objects.len());
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
