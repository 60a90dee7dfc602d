//! CPU seconds and memory of processes, read from `/proc` (Linux).

use std::process::Command;

/// utime + stime of `pid` (all its threads) in seconds; 0 when it is gone.
pub fn cpu_seconds(pid: u32) -> f64 {
    proc_stat(pid).map(|(_, cpu)| cpu).unwrap_or(0.0)
}

/// (process group, utime + stime seconds) of a process, from `/proc/<pid>/stat`.
pub fn proc_stat(pid: u32) -> Option<(u32, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the `(comm)`, which may contain spaces: state is field 3, pgrp 5, utime 14,
    // stime 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let number = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Some((
        number(2) as u32,
        (number(11) + number(12)) as f64 / clock_ticks() as f64,
    ))
}

/// CPU seconds of every live process in process group `pgid` (a service and its children, e.g.
/// the broker's run script and its JVM).
pub fn group_cpu_seconds(pgid: u32) -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(proc_stat)
        .filter(|(group, _)| *group == pgid)
        .map(|(_, cpu)| cpu)
        .sum()
}

/// The broker and Redis that `scripts/stack.sh` started (their process groups), when the
/// harness runs under it; an external cluster is not measured.
pub fn stack_services() -> Vec<(&'static str, u32)> {
    [
        ("broker", "REFLEX_TEST_BROKER_PID"),
        ("redis", "REFLEX_TEST_REDIS_PID"),
    ]
    .into_iter()
    .filter_map(|(name, var)| Some((name, std::env::var(var).ok()?.parse().ok()?)))
    .collect()
}

fn clock_ticks() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100)
    })
}

/// A `kB` field of `/proc/<pid>/status` (`VmRSS:`, `VmHWM:`); 0 when unreadable.
pub fn status_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        // Burn a little CPU so the counter has moved past zero ticks.
        let mut x = 0u64;
        let start = std::time::Instant::now();
        while start.elapsed() < std::time::Duration::from_millis(50) {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        assert!(x != 1);
        assert!(cpu_seconds(me) > 0.0);
        assert!(status_kb(me, "VmRSS:") > 0);
        assert_eq!(cpu_seconds(u32::MAX), 0.0);
    }
}
