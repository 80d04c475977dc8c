//! What the bench needs from the kernel: CPU pinning, CPU time and resident memory.
//!
//! Our own processes report their CPU with `getrusage`, which is exact to the microsecond;
//! Envoy's is read from `/proc/<pid>/stat`, which counts 10 ms ticks (about 1 % of Envoy's CPU
//! in a 10 s rep). `/proc/<pid>/schedstat` would be exact, but the kernels of the machines we
//! run on (Firecracker VMs) are built without it.
#![allow(unsafe_code)] // two libc calls, each with its SAFETY note

use std::time::Duration;

/// Pins the thread `tid` (0: the calling thread) to `cpu`. Threads it creates afterwards
/// inherit the mask, so pinning a process's main thread before its runtime starts pins it all.
pub(crate) fn pin_thread(tid: i32, cpu: usize) -> std::io::Result<()> {
    // SAFETY: `set` is a plain bitmask on the stack, initialised by CPU_ZERO before use, and
    // sched_setaffinity reads exactly `size_of::<cpu_set_t>()` bytes of it.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_ZERO(&mut set);
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Pins every thread of process `pid` to `cpu` (for a process we did not write: Envoy).
pub(crate) fn pin_process(pid: u32, cpu: usize) -> std::io::Result<()> {
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let tid: i32 = task?.file_name().to_string_lossy().parse().unwrap_or(0);
        if tid > 0 {
            pin_thread(tid, cpu)?;
        }
    }
    Ok(())
}

/// User plus system CPU time of this whole process.
pub(crate) fn own_cpu() -> Duration {
    // SAFETY: getrusage fills the zeroed struct it is given and touches nothing else.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// User plus system CPU time of process `pid`, from `/proc/<pid>/stat` (10 ms ticks).
pub(crate) fn process_cpu(pid: u32) -> Duration {
    mesh_test_support::bench::process_cpu(&pid.to_string())
}

/// Resident memory of process `pid` in MiB: all of it (`VmRSS`), and the anonymous part
/// (`RssAnon`: heap and stacks, without the binary's pages mapped from the file).
pub(crate) fn memory_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("RssAnon:"))
}

/// What the `ENV` line records about the machine.
pub(crate) fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_default()
}

/// The kernel release.
pub(crate) fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// Lowers this thread's timer slack to 1 µs, so the open-loop pacer's sleeps end on time
/// (the default 50 µs slack would shift every send).
pub(crate) fn precise_timers() {
    // SAFETY: PR_SET_TIMERSLACK takes one integer argument and changes only this thread.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1000 as libc::c_ulong);
    }
}
