//! Per-CPU time from `/proc/stat`: the `%soft` and `%idle` columns of
//! `mpstat -P ALL`, which is how the seeds diagnose a receive path that is
//! stuck on one CPU.

use crate::error::{Error, Result};

/// Cumulative time of one CPU since boot, in seconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CpuTimes {
    pub cpu: u32,
    /// Every state summed (user .. steal; guest time is already inside user).
    pub total_s: f64,
    /// Idle, not counting iowait (as mpstat's %idle).
    pub idle_s: f64,
    /// Idle with I/O outstanding (mpstat's %iowait): idle for the receive path too.
    pub iowait_s: f64,
    /// Serving softirqs: NET_RX is where a receive path spends its time.
    pub softirq_s: f64,
}

impl CpuTimes {
    /// Time the CPU did anything: neither idle nor waiting on I/O.
    pub fn busy_s(&self) -> f64 {
        self.total_s - self.idle_s - self.iowait_s
    }
}

/// Clock ticks per second of the `/proc/stat` counters (USER_HZ).
fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// Parses the `cpuN` lines of `/proc/stat` text (online CPUs only, as the kernel lists them).
pub fn parse(text: &str, hz: f64) -> Vec<CpuTimes> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut f = line.split_whitespace();
        let Some(cpu) = f.next().and_then(|n| n.strip_prefix("cpu")).and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let v: Vec<u64> = f.filter_map(|x| x.parse().ok()).collect();
        // user nice system idle iowait irq softirq steal [guest guest_nice]
        if v.len() < 7 {
            continue;
        }
        let total: u64 = v.iter().take(8).sum();
        out.push(CpuTimes {
            cpu,
            total_s: total as f64 / hz,
            idle_s: v[3] as f64 / hz,
            iowait_s: v[4] as f64 / hz,
            softirq_s: v[6] as f64 / hz,
        });
    }
    out
}

/// Context switches since boot, all CPUs (the `ctxt` line).
pub fn parse_context_switches(text: &str) -> Option<u64> {
    text.lines().find_map(|l| l.strip_prefix("ctxt ")?.trim().parse().ok())
}

pub fn context_switches() -> Result<u64> {
    let text = std::fs::read_to_string("/proc/stat").map_err(|e| Error::io("reading /proc/stat", e))?;
    parse_context_switches(&text).ok_or_else(|| Error::Ebpf("/proc/stat has no ctxt line".into()))
}

pub fn read() -> Result<Vec<CpuTimes>> {
    let text = std::fs::read_to_string("/proc/stat").map_err(|e| Error::io("reading /proc/stat", e))?;
    Ok(parse(&text, ticks_per_second()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_switches_come_from_the_ctxt_line() {
        assert_eq!(parse_context_switches("cpu  1 2 3\nctxt 123456\nbtime 1\n"), Some(123456));
        assert_eq!(parse_context_switches("cpu  1 2 3\n"), None);
        assert!(context_switches().is_ok_and(|n| n > 0));
    }

    #[test]
    fn parses_cpu_lines_and_skips_the_sum() {
        let text = "cpu  38626 0 9034 214909 1237 0 77 43 0 0\n\
                    cpu0 18723 0 4095 108899 184 0 11 19 0 0\n\
                    cpu3 100 0 100 700 0 0 100 0 0 0\nintr 1 2 3\n";
        let c = parse(text, 100.0);
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].cpu, 0);
        assert!((c[0].softirq_s - 0.11).abs() < 1e-9);
        assert!((c[0].idle_s - 1088.99).abs() < 1e-9);
        assert_eq!(c[1].cpu, 3);
        assert!((c[1].total_s - 10.0).abs() < 1e-9);
        assert!((c[1].softirq_s - 1.0).abs() < 1e-9);
    }
}
