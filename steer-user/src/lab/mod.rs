//! `steer lab` and the bench's engine: a veth lab in fresh network namespaces
//! where the same traffic is received with no steering, with the kernel's own
//! RPS/RFS, and through steer, measured side by side.
//!
//! - [`topology`]: the namespaces and the veth pair, by netlink.
//! - [`gen`]: the in-kernel live-frames generator, paced by rate.
//! - [`sink`]: UDP sinks, one SO_REUSEPORT socket per CPU.
//! - [`rr`]: TCP request/response with latency percentiles.
//! - [`clients`]: real servers and clients (nginx + wrk, memcached, iperf3, sockperf).
//! - [`kernel`]: the kernel's RPS/RFS on the lab's receiving veth, restored after.
//! - [`scenario`]: what each scenario sets up, and the zero-loss search.
//! - [`report`]: markdown, JSON and the PNG chart.

pub mod clients;
pub mod gen;
pub mod kernel;
pub mod report;
pub mod rr;
pub mod scenario;
pub mod sink;
pub mod skew;
pub mod topology;

use std::sync::atomic::{AtomicBool, Ordering};

use crate::stats::{
    procstat::{self, CpuTimes},
    softnet::{self, Softnet},
};

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

/// Per-CPU counters the kernel keeps, read at one instant through the same
/// readers as `steer stats`: /proc/stat (mpstat's %soft) and softnet_stat.
#[derive(Clone, Debug, Default)]
pub struct CpuCounters {
    pub times: Vec<CpuTimes>,
    pub softnet: Vec<Softnet>,
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
        Ok(Self { times: procstat::read()?, softnet: softnet::read()? })
    }

    /// The picture between `before` and `self`, `secs` apart, indexed by CPU id.
    pub fn since(&self, before: &CpuCounters, secs: f64) -> CpuPicture {
        let n = self.times.iter().map(|t| t.cpu as usize + 1).max().unwrap_or(0);
        let mut p = CpuPicture {
            soft_pct: vec![0.0; n],
            busy_pct: vec![0.0; n],
            pps: vec![0.0; n],
            dropped: vec![0; n],
            received_rps: vec![0; n],
        };
        for t in &self.times {
            let Some(b) = before.times.iter().find(|b| b.cpu == t.cpu) else { continue };
            let c = t.cpu as usize;
            let dt = t.total_s - b.total_s;
            if dt > 0.0 {
                p.soft_pct[c] = 100.0 * (t.softirq_s - b.softirq_s) / dt;
                p.busy_pct[c] = 100.0 * (t.busy_s() - b.busy_s()) / dt;
            }
        }
        for s in &self.softnet {
            let (c, Some(b)) = (s.cpu as usize, before.softnet.iter().find(|b| b.cpu == s.cpu)) else {
                continue;
            };
            if c >= n {
                continue;
            }
            // 32-bit counters in the kernel: wrapping differences.
            p.pps[c] = s.processed.wrapping_sub(b.processed) as f64 / secs.max(1e-9);
            p.dropped[c] = s.dropped.wrapping_sub(b.dropped).into();
            p.received_rps[c] = s.received_rps.wrapping_sub(b.received_rps).into();
        }
        p
    }
}

impl CpuPicture {
    /// Imbalance of the CPUs in `cpus`: max/mean of their packet rates
    /// (1.0 = perfectly even). `None` when nothing was processed.
    pub fn imbalance(&self, cpus: &[u32]) -> Option<f64> {
        let v: Vec<f64> = cpus.iter().filter_map(|c| self.pps.get(*c as usize).copied()).collect();
        crate::stats::imbalance_of(&v)
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
            let t = c.times.iter().find(|t| t.cpu == cpu);
            assert!(t.is_some_and(|t| t.total_s > 0.0), "CPU {cpu} has no ticks");
        }
    }

    #[test]
    fn imbalance_is_max_over_mean() {
        let p = CpuPicture { pps: vec![300.0, 100.0, 0.0], ..Default::default() };
        assert_eq!(p.imbalance(&[0, 1]), Some(1.5));
        assert_eq!(p.imbalance(&[2]), None);
    }
}
