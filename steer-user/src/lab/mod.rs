//! `steer lab` and the bench's engine: a veth lab in fresh network namespaces
//! where the same traffic is received with no steering, with the kernel's own
//! RPS/RFS, and through steer, measured side by side.
//!
//! - [`topology`]: the namespaces and the veth pair, by netlink.
//! - [`gen`]: the in-kernel live-frames generator, paced by rate.
//! - [`sink`]: UDP sinks, one SO_REUSEPORT socket per CPU.
//! - [`rr`]: TCP request/response with latency percentiles.
//! - [`kernel`]: the kernel's RPS/RFS on the lab's receiving veth, restored after.
//! - [`scenario`]: what each scenario sets up, and the zero-loss search.
//! - [`report`]: markdown, JSON and the PNG chart.

pub mod gen;
pub mod kernel;
pub mod report;
pub mod rr;
pub mod scenario;
pub mod sink;
pub mod topology;

use std::sync::atomic::{AtomicBool, Ordering};

/// Errors of the lab. Each names what failed and with which value.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error(transparent)]
    Steer(#[from] crate::Error),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Msg(String),
    #[error("interrupted")]
    Interrupted,
}

impl LabError {
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io { what: what.into(), source }
    }
}

pub type Result<T, E = LabError> = std::result::Result<T, E>;

static STOP: AtomicBool = AtomicBool::new(false);

/// Asks every running lab loop to stop at its next step (Ctrl-C). What was
/// built is then removed by the usual drops.
pub fn request_stop() {
    STOP.store(true, Ordering::SeqCst);
}

pub fn stop_requested() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// Fails with [`LabError::Interrupted`] once a stop was requested.
pub fn check_stop() -> Result<()> {
    if stop_requested() {
        return Err(LabError::Interrupted);
    }
    Ok(())
}

/// Per-CPU counters the kernel keeps, read at one instant: softirq time from
/// /proc/stat (what mpstat's %soft shows) and /proc/net/softnet_stat.
#[derive(Clone, Debug, Default)]
pub struct CpuCounters {
    /// Per CPU: (softirq ticks, busy ticks, total ticks).
    pub ticks: Vec<(u64, u64, u64)>,
    /// Per CPU: packets processed by the stack (softnet_stat column 1).
    pub processed: Vec<u64>,
    /// Per CPU: packets dropped because the backlog was full (column 2).
    pub dropped: Vec<u64>,
    /// Per CPU: packets this CPU received from another CPU's RPS (column 10).
    pub received_rps: Vec<u64>,
}

/// Per-CPU picture over an interval: what the seeds' mpstat tables show.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct CpuPicture {
    /// % of the interval each CPU spent in softirq.
    pub soft_pct: Vec<f64>,
    /// % of the interval each CPU was not idle. cpumap's kthreads (steer)
    /// count as system time, not softirq, so compare this column too.
    pub busy_pct: Vec<f64>,
    /// Packets per second the stack processed on each CPU.
    pub pps: Vec<f64>,
    pub dropped: Vec<u64>,
    pub received_rps: Vec<u64>,
}

impl CpuCounters {
    pub fn read() -> Result<Self> {
        let stat =
            std::fs::read_to_string("/proc/stat").map_err(|e| LabError::io("reading /proc/stat", e))?;
        let mut ticks = Vec::new();
        for l in stat.lines() {
            // "cpuN ..." lines only (not the "cpu " total line).
            let Some(rest) = l.strip_prefix("cpu").filter(|r| r.starts_with(|c: char| c.is_ascii_digit()))
            else {
                continue;
            };
            let mut it = rest.split_whitespace();
            let Some(id) = it.next() else { continue };
            let Ok(cpu) = id.parse::<usize>() else { continue };
            let v: Vec<u64> = it.filter_map(|x| x.parse().ok()).collect();
            // user nice system idle iowait irq softirq steal ...
            let soft = v.get(6).copied().unwrap_or(0);
            let total: u64 = v.iter().take(8).sum();
            let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
            if ticks.len() <= cpu {
                ticks.resize(cpu + 1, (0, 0, 0));
            }
            ticks[cpu] = (soft, total.saturating_sub(idle), total);
        }
        let sn = std::fs::read_to_string("/proc/net/softnet_stat")
            .map_err(|e| LabError::io("reading /proc/net/softnet_stat", e))?;
        let (mut processed, mut dropped, mut received_rps) = (Vec::new(), Vec::new(), Vec::new());
        let mut rows: Vec<(usize, Vec<u64>)> = Vec::new();
        for (i, l) in sn.lines().enumerate() {
            let v: Vec<u64> = l.split_whitespace().map(|h| u64::from_str_radix(h, 16).unwrap_or(0)).collect();
            // Column 13 (since 5.10) is the CPU; older kernels list online CPUs in order.
            let cpu = v.get(12).map(|c| *c as usize).unwrap_or(i);
            rows.push((cpu, v));
        }
        let n = rows.iter().map(|r| r.0 + 1).max().unwrap_or(0).max(ticks.len());
        processed.resize(n, 0);
        dropped.resize(n, 0);
        received_rps.resize(n, 0);
        for (cpu, v) in rows {
            processed[cpu] = v.first().copied().unwrap_or(0);
            dropped[cpu] = v.get(1).copied().unwrap_or(0);
            received_rps[cpu] = v.get(9).copied().unwrap_or(0);
        }
        ticks.resize(n, (0, 0, 0));
        Ok(Self { ticks, processed, dropped, received_rps })
    }

    /// The picture between `before` and `self`, `secs` apart.
    pub fn since(&self, before: &CpuCounters, secs: f64) -> CpuPicture {
        let n = self.ticks.len().min(before.ticks.len());
        let pct = |c: usize, f: fn(&(u64, u64, u64)) -> u64| {
            let dv = f(&self.ticks[c]).saturating_sub(f(&before.ticks[c])) as f64;
            let dt = self.ticks[c].2.saturating_sub(before.ticks[c].2) as f64;
            if dt > 0.0 {
                100.0 * dv / dt
            } else {
                0.0
            }
        };
        let soft_pct = (0..n).map(|c| pct(c, |t| t.0)).collect();
        let busy_pct = (0..n).map(|c| pct(c, |t| t.1)).collect();
        let d = |a: &[u64], b: &[u64]| -> Vec<u64> {
            a.iter().zip(b).map(|(x, y)| x.saturating_sub(*y)).collect()
        };
        CpuPicture {
            soft_pct,
            busy_pct,
            pps: d(&self.processed, &before.processed).iter().map(|v| *v as f64 / secs.max(1e-9)).collect(),
            dropped: d(&self.dropped, &before.dropped),
            received_rps: d(&self.received_rps, &before.received_rps),
        }
    }
}

impl CpuPicture {
    /// Imbalance of the CPUs in `cpus`: max/mean of their packet rates
    /// (1.0 = perfectly even). `None` when nothing was processed.
    pub fn imbalance(&self, cpus: &[u32]) -> Option<f64> {
        let v: Vec<f64> = cpus.iter().filter_map(|c| self.pps.get(*c as usize).copied()).collect();
        let mean = v.iter().sum::<f64>() / v.len().max(1) as f64;
        let max = v.iter().copied().fold(0.0, f64::max);
        (mean > 0.0).then(|| max / mean)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_read_every_online_cpu() {
        let c = CpuCounters::read().unwrap();
        let online = crate::cpus::online().unwrap();
        for cpu in online {
            assert!(c.ticks[cpu as usize].2 > 0, "CPU {cpu} has no ticks");
        }
    }

    #[test]
    fn imbalance_is_max_over_mean() {
        let p = CpuPicture { pps: vec![300.0, 100.0, 0.0], ..Default::default() };
        assert_eq!(p.imbalance(&[0, 1]), Some(1.5));
        assert_eq!(p.imbalance(&[2]), None);
    }
}
