//! What every bench binary shares: its arguments (`--quick`, `--reps N`, `--secs S`,
//! `--only NAME`), the `ENV` line of BENCHMARKS.md, medians and a process's CPU time.

/// A bench run's arguments.
#[derive(Clone, Debug)]
pub struct Args {
    /// `--quick`: one rep, short runs (what CI runs).
    pub quick: bool,
    /// Interleaved repetitions.
    pub reps: usize,
    /// Seconds per scenario and rep.
    pub secs: u64,
    /// `--only NAME`: run just that scenario (for profiling it).
    pub only: Option<String>,
}

impl Args {
    /// Parses the process arguments; `reps` and `secs` are the defaults of a full run.
    pub fn parse(reps: usize, secs: u64) -> Self {
        let args: Vec<String> = std::env::args().collect();
        let value = |name: &str| {
            args.iter()
                .position(|a| a == name)
                .and_then(|i| args.get(i + 1))
                .cloned()
        };
        let quick = args.iter().any(|a| a == "--quick");
        Self {
            quick,
            reps: if quick {
                1
            } else {
                value("--reps").and_then(|v| v.parse().ok()).unwrap_or(reps)
            },
            secs: if quick {
                1
            } else {
                value("--secs").and_then(|v| v.parse().ok()).unwrap_or(secs)
            },
            only: value("--only"),
        }
    }

    /// Whether `scenario` runs.
    pub fn runs(&self, scenario: &str) -> bool {
        self.only.as_deref().is_none_or(|o| o == scenario)
    }

    /// Prints the `ENV` line.
    pub fn print_env(&self) {
        println!(
            "ENV {{\"nproc\":{},\"kernel\":{:?},\"mesh\":{:?},\"reps\":{},\"secs\":{}}}",
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim(),
            env!("CARGO_PKG_VERSION"),
            self.reps,
            self.secs,
        );
    }
}

/// The median of `v` (the upper one of an even count); 0 when empty.
pub fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// User plus system CPU time of process `pid` (`"self"` for this one) from
/// `/proc/<pid>/stat`, in 10 ms ticks; zero if it cannot be read.
pub fn process_cpu(pid: &str) -> std::time::Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name may hold spaces; the fields after it start after the last ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of stat(5), 11 and 12 after the state field;
    // USER_HZ is 100 on Linux.
    std::time::Duration::from_millis((ticks(11) + ticks(12)) * 10)
}
