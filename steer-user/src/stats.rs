//! Per-CPU statistics: the XDP program's counters, `/proc/stat` softirq and
//! idle time, `/proc/net/softnet_stat` and the cpumap drop counters, read
//! together as a [`Sample`]; two samples make a [`Report`] of rates, which is
//! what `steer stats` prints (table or JSON) and `--metrics` exports.

pub mod buckets;
pub mod cpumap;
pub mod procstat;
pub mod snmp;
pub mod softnet;
mod source;
mod table;

pub use source::Source;
pub use table::render_table;

use std::{borrow::Borrow, collections::BTreeMap, time::Instant};

use aya::maps::{MapData, PerCpuArray};
use steer_common::{Counters, PassReason};

use crate::error::{Error, Result};

/// All counters at one instant, indexed by CPU.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub at: Instant,
    /// What the XDP program did on each CPU (the CPU the packet arrived on).
    pub per_cpu: Vec<Counters>,
    /// Packets redirected to each CPU, summed over the CPUs that redirected.
    pub steered_in: Vec<u64>,
}

impl Snapshot {
    pub fn read<S: Borrow<MapData>, T: Borrow<MapData>>(
        stats: &PerCpuArray<S, Counters>,
        targets: &PerCpuArray<T, u64>,
    ) -> Result<Self> {
        let per_cpu: Vec<Counters> = stats.get(&0, 0).map_err(Error::ebpf)?.iter().copied().collect();
        let n = per_cpu.len();
        let mut steered_in = vec![0u64; n];
        for (cpu, slot) in steered_in.iter_mut().enumerate() {
            if let Ok(v) = targets.get(&(cpu as u32), 0) {
                *slot = v.iter().sum();
            }
        }
        Ok(Self { at: Instant::now(), per_cpu, steered_in })
    }

    pub fn total(&self) -> Counters {
        let mut t = Counters::default();
        for c in &self.per_cpu {
            t.add(c);
        }
        t
    }

    /// Counters accumulated since `before`.
    pub fn since(&self, before: &Snapshot) -> Snapshot {
        let sub = |a: &Counters, b: &Counters| {
            let mut d = Counters {
                seen: a.seen.saturating_sub(b.seen),
                redirected: a.redirected.saturating_sub(b.redirected),
                redirect_err: a.redirect_err.saturating_sub(b.redirect_err),
                local: a.local.saturating_sub(b.local),
                inner: a.inner.saturating_sub(b.inner),
                passed: a.passed,
                kept: a.kept.saturating_sub(b.kept),
            };
            for (x, y) in d.passed.iter_mut().zip(b.passed.iter()) {
                *x = x.saturating_sub(*y);
            }
            d
        };
        Snapshot {
            at: self.at,
            per_cpu: self.per_cpu.iter().zip(&before.per_cpu).map(|(a, b)| sub(a, b)).collect(),
            steered_in: self
                .steered_in
                .iter()
                .zip(&before.steered_in)
                .map(|(a, b)| a.saturating_sub(*b))
                .collect(),
        }
    }
}

/// Drops of the CPUMAP queues, per CPU, from the `xdp:xdp_cpumap_*` tracepoints.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpumapDrops {
    /// Frames refused because this CPU's queue was full (counted for the target CPU).
    pub enqueue: u64,
    /// Frames this CPU's cpumap kthread dropped.
    pub kthread: u64,
}

/// What `steer run` recorded about itself in its run file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunInfo {
    pub pid: u32,
    /// "native" or "generic".
    pub mode: String,
    pub cpus: Vec<u32>,
}

impl RunInfo {
    /// What the run of `id` recorded; `None` when no live run is recorded.
    pub fn read(id: &crate::pins::RunId) -> Option<Self> {
        let r = id.read_run().filter(|r| crate::pins::alive(r.pid) || r.pid == std::process::id())?;
        Some(Self { pid: r.pid, mode: r.mode, cpus: r.cpus })
    }
}

/// Everything at one instant.
#[derive(Clone, Debug)]
pub struct Sample {
    pub at: Instant,
    /// Seconds since the Unix epoch, for JSON consumers.
    pub unix_s: f64,
    /// `None` when no steer program is attached to the interface.
    pub xdp: Option<Snapshot>,
    /// Indexed by CPU; `None` when the cpumap tracepoints are not watched.
    pub cpumap: Option<Vec<CpumapDrops>>,
    pub times: Vec<procstat::CpuTimes>,
    pub softnet: Vec<softnet::Softnet>,
    pub run: Option<RunInfo>,
    /// RFS counters per CPU and the live flow count; `None` unless `--mode rfs`.
    pub rfs: Option<RfsSample>,
    /// Per-bucket packets and the balancer's state; `None` when not attached.
    pub buckets: Option<buckets::BucketSample>,
}

/// RFS state of a `steer run --mode rfs` at one instant.
#[derive(Clone, Debug, Default)]
pub struct RfsSample {
    /// Indexed by CPU (the CPU the XDP program ran on).
    pub per_cpu: Vec<steer_common::RfsCounters>,
    /// Entries in the flow table now.
    pub live_flows: u64,
    /// UDP entries the run's sweep expired (not per CPU).
    pub expired: u64,
}

/// RFS totals as exported (JSON `rfs`): counter name -> value, plus `flows`.
pub type RfsTotals = BTreeMap<&'static str, u64>;

/// Cumulative counters of one CPU, as exported (JSON `total`, Prometheus).
/// XDP and cpumap fields are `None` when steer is not attached.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct CpuTotals {
    pub cpu: u32,
    /// Packets the XDP program ran on, on this CPU (the receiving CPU).
    pub xdp_rx: Option<u64>,
    /// Packets this CPU steered: handed to the CPUMAP, or passed in place (`local`).
    pub redirected: Option<u64>,
    /// Part of `redirected`: passed in place on this CPU (steered to itself, or `kept`).
    pub local: Option<u64>,
    /// Part of `local`: steered to another CPU, but processed here because this CPU
    /// was not handing packets to that CPU (`--spread busy`).
    pub kept: Option<u64>,
    /// Tunnelled packets this CPU steered by their inner flow (`--inner`).
    pub inner: Option<u64>,
    /// Packets redirected to this CPU (as a target), from every CPU.
    pub steered_in: Option<u64>,
    /// Packets passed up the stack unsteered on this CPU, all reasons.
    pub passed: Option<u64>,
    /// Redirects refused (no queue for the chosen CPU): passed instead.
    pub redirect_err: Option<u64>,
    /// RFS: packets this CPU steered by the flow table (`--mode rfs` only).
    pub rfs_hits: Option<u64>,
    /// Frames dropped because this CPU's CPUMAP queue was full.
    pub cpumap_enqueue_drops: Option<u64>,
    /// Frames this CPU's cpumap kthread dropped.
    pub cpumap_kthread_drops: Option<u64>,
    /// Seconds this CPU spent in softirq since boot.
    pub softirq_s: f64,
    /// Seconds this CPU was idle since boot.
    pub idle_s: f64,
    /// Seconds of every state since boot (the denominator of the percentages).
    pub cpu_s: f64,
    /// softnet_stat: packets processed by NET_RX (32-bit, wraps).
    pub softnet_processed: u64,
    /// softnet_stat: packets dropped because the backlog was full.
    pub softnet_dropped: u64,
    /// softnet_stat: NET_RX runs that ended with work left.
    pub time_squeeze: u64,
    /// softnet_stat: RPS IPIs received.
    pub received_rps: u64,
    /// softnet_stat: packets dropped by the RPS flow limit.
    pub flow_limit: u64,
}

impl Sample {
    /// Cumulative counters of every online CPU (rows of /proc/stat).
    pub fn totals(&self) -> Vec<CpuTotals> {
        self.times
            .iter()
            .map(|t| {
                let cpu = t.cpu as usize;
                let c = self.xdp.as_ref().map(|x| x.per_cpu.get(cpu).copied().unwrap_or_default());
                let sn = self.softnet.iter().find(|s| s.cpu == t.cpu).copied().unwrap_or_default();
                let cm = self.cpumap.as_ref().map(|m| m.get(cpu).copied().unwrap_or_default());
                CpuTotals {
                    cpu: t.cpu,
                    xdp_rx: c.map(|c| c.seen),
                    redirected: c.map(|c| c.redirected),
                    local: c.map(|c| c.local),
                    kept: c.map(|c| c.kept),
                    inner: c.map(|c| c.inner),
                    steered_in: self.xdp.as_ref().map(|x| x.steered_in.get(cpu).copied().unwrap_or(0)),
                    passed: c.map(|c| c.passed_total()),
                    redirect_err: c.map(|c| c.redirect_err),
                    rfs_hits: self.rfs.as_ref().map(|r| r.per_cpu.get(cpu).map_or(0, |c| c.hits)),
                    cpumap_enqueue_drops: cm.map(|m| m.enqueue),
                    cpumap_kthread_drops: cm.map(|m| m.kthread),
                    softirq_s: t.softirq_s,
                    idle_s: t.idle_s,
                    cpu_s: t.total_s,
                    softnet_processed: sn.processed.into(),
                    softnet_dropped: sn.dropped.into(),
                    time_squeeze: sn.time_squeeze.into(),
                    received_rps: sn.received_rps.into(),
                    flow_limit: sn.flow_limit.into(),
                }
            })
            .collect()
    }

    /// RFS counters summed over CPUs, and the live flow count.
    pub fn rfs_totals(&self) -> Option<RfsTotals> {
        let r = self.rfs.as_ref()?;
        let mut t = steer_common::RfsCounters::default();
        for c in &r.per_cpu {
            t.add(c);
        }
        t.expired = r.expired;
        Some(
            crate::rfs::counter_fields(&t, r.live_flows)
                .into_iter()
                .chain([("flows", r.live_flows)])
                .collect(),
        )
    }

    /// Packets passed unsteered, by reason, summed over CPUs.
    pub fn passed_by_reason(&self) -> Option<BTreeMap<&'static str, u64>> {
        let t = self.xdp.as_ref()?.total();
        Some(PassReason::ALL.iter().map(|r| (r.name(), t.passed[*r as usize])).collect())
    }
}

/// Rates of one CPU over an interval. XDP fields are `None` when steer is not attached.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct CpuRates {
    pub cpu: u32,
    /// Whether the running steer steers to this CPU.
    pub steering: bool,
    pub xdp_rx_pps: Option<f64>,
    pub redirected_pps: Option<f64>,
    /// Part of `redirected_pps`: steered elsewhere but processed on this CPU, which was not
    /// handing packets to that CPU (`--spread busy`).
    pub kept_pps: Option<f64>,
    pub steered_in_pps: Option<f64>,
    pub passed_pps: Option<f64>,
    /// Packets steered by the RFS flow table (`--mode rfs` only).
    pub rfs_hits_pps: Option<f64>,
    /// Redirect errors plus cpumap enqueue and kthread drops.
    pub drops_pps: Option<f64>,
    pub softirq_pct: f64,
    pub idle_pct: f64,
    pub softnet_processed_pps: f64,
    pub softnet_dropped_pps: f64,
    pub time_squeeze_per_s: f64,
    pub received_rps_per_s: f64,
    pub flow_limit_per_s: f64,
}

/// One interval of `steer stats`: the JSON object `--json` prints per line.
/// Field names are stable; new fields may be added.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Report {
    pub iface: String,
    /// Seconds since the Unix epoch at the end of the interval.
    pub time_unix_s: f64,
    pub interval_s: f64,
    /// "native", "generic", or null when no steer program is attached.
    pub attached: Option<String>,
    /// CPUs the running steer steers to (empty when not attached).
    pub steering_cpus: Vec<u32>,
    /// max/mean of `steered_in_pps` over the steering CPUs; null without traffic.
    pub imbalance: Option<f64>,
    pub cpus: Vec<CpuRates>,
    /// Rates summed over CPUs (percentages: mean over CPUs).
    pub all: CpuRates,
    /// Cumulative counters at the end of the interval.
    pub totals: Vec<CpuTotals>,
    /// Cumulative packets passed unsteered, by reason (null when not attached).
    pub passed_by_reason: Option<BTreeMap<&'static str, u64>>,
    /// Cumulative RFS counters (hits, misses, moves, deferred, not_steerable,
    /// inserts, removed, expired, evictions, hook_events, hook_filtered, hook_closed,
    /// hook_unconnected, hook_other_netns) and `flows`,
    /// the live table size; null unless `--mode rfs`.
    pub rfs: Option<RfsTotals>,
    /// The hottest buckets and what `--rebalance` did; null when not attached.
    pub buckets: Option<buckets::BucketReport>,
}

/// Difference of two kernel counters that may be 32-bit and wrap.
fn delta(now: u64, before: u64) -> u64 {
    if now >= before {
        now - before
    } else if before <= u32::MAX as u64 {
        (now + (1u64 << 32)).saturating_sub(before)
    } else {
        0
    }
}

impl Report {
    /// Rates between `before` and `now`.
    pub fn new(iface: &str, before: &Sample, now: &Sample) -> Self {
        let secs = now.at.duration_since(before.at).as_secs_f64().max(1e-6);
        let steering_cpus = now.run.as_ref().map(|r| r.cpus.clone()).unwrap_or_default();
        let (t0, t1) = (before.totals(), now.totals());
        let rate = |a: u64, b: u64| delta(a, b) as f64 / secs;
        let orate = |a: Option<u64>, b: Option<u64>| Some(rate(a?, b.unwrap_or(0)));
        let mut cpus = Vec::new();
        for n in &t1 {
            let b = t0
                .iter()
                .find(|b| b.cpu == n.cpu)
                .cloned()
                .unwrap_or_else(|| CpuTotals { cpu: n.cpu, ..n.clone() });
            let dt = (n.cpu_s - b.cpu_s).max(1e-9);
            let pct = |a: f64, b: f64| ((a - b) / dt * 100.0).clamp(0.0, 100.0);
            let drops = n.xdp_rx.map(|_| {
                [
                    (n.redirect_err, b.redirect_err),
                    (n.cpumap_enqueue_drops, b.cpumap_enqueue_drops),
                    (n.cpumap_kthread_drops, b.cpumap_kthread_drops),
                ]
                .iter()
                .map(|(a, b)| a.map(|a| rate(a, b.unwrap_or(0))).unwrap_or(0.0))
                .sum()
            });
            cpus.push(CpuRates {
                cpu: n.cpu,
                steering: steering_cpus.contains(&n.cpu),
                xdp_rx_pps: orate(n.xdp_rx, b.xdp_rx),
                redirected_pps: orate(n.redirected, b.redirected),
                kept_pps: orate(n.kept, b.kept),
                steered_in_pps: orate(n.steered_in, b.steered_in),
                passed_pps: orate(n.passed, b.passed),
                rfs_hits_pps: orate(n.rfs_hits, b.rfs_hits),
                drops_pps: drops,
                softirq_pct: if n.cpu_s > b.cpu_s { pct(n.softirq_s, b.softirq_s) } else { 0.0 },
                idle_pct: if n.cpu_s > b.cpu_s { pct(n.idle_s, b.idle_s) } else { 0.0 },
                softnet_processed_pps: rate(n.softnet_processed, b.softnet_processed),
                softnet_dropped_pps: rate(n.softnet_dropped, b.softnet_dropped),
                time_squeeze_per_s: rate(n.time_squeeze, b.time_squeeze),
                received_rps_per_s: rate(n.received_rps, b.received_rps),
                flow_limit_per_s: rate(n.flow_limit, b.flow_limit),
            });
        }
        let imbalance = imbalance(&cpus, &steering_cpus);
        let all = sum_rates(&cpus);
        Report {
            iface: iface.to_string(),
            time_unix_s: now.unix_s,
            interval_s: secs,
            attached: now.xdp.as_ref().and(now.run.as_ref()).map(|r| r.mode.clone()),
            steering_cpus,
            imbalance,
            cpus,
            all,
            totals: t1,
            passed_by_reason: now.passed_by_reason(),
            rfs: now.rfs_totals(),
            buckets: match (&before.buckets, &now.buckets) {
                (Some(b), Some(n)) => Some(buckets::BucketReport::new(b, n, secs)),
                _ => None,
            },
        }
    }
}

/// max/mean of the steered-in rate over the steering CPUs (every CPU that
/// received something when the set is unknown). 1.0 is a perfect spread.
fn imbalance(cpus: &[CpuRates], steering: &[u32]) -> Option<f64> {
    let v: Vec<f64> = cpus
        .iter()
        .filter(|c| if steering.is_empty() { c.steered_in_pps.unwrap_or(0.0) > 0.0 } else { c.steering })
        .filter_map(|c| c.steered_in_pps)
        .collect();
    imbalance_of(&v)
}

/// max/mean of per-CPU rates: 1.0 is a perfect spread. `None` when all are 0.
/// The one definition of imbalance for stats, metrics, the lab and the bench.
pub fn imbalance_of(rates: &[f64]) -> Option<f64> {
    let mean = rates.iter().sum::<f64>() / rates.len().max(1) as f64;
    let max = rates.iter().copied().fold(0.0, f64::max);
    (mean > 0.0).then(|| max / mean)
}

fn sum_rates(cpus: &[CpuRates]) -> CpuRates {
    let n = cpus.len().max(1) as f64;
    let osum = |f: fn(&CpuRates) -> Option<f64>| -> Option<f64> {
        cpus.iter().map(f).try_fold(0.0, |acc, v| v.map(|v| acc + v))
    };
    CpuRates {
        cpu: u32::MAX,
        steering: false,
        xdp_rx_pps: osum(|c| c.xdp_rx_pps),
        redirected_pps: osum(|c| c.redirected_pps),
        kept_pps: osum(|c| c.kept_pps),
        steered_in_pps: osum(|c| c.steered_in_pps),
        passed_pps: osum(|c| c.passed_pps),
        rfs_hits_pps: osum(|c| c.rfs_hits_pps),
        drops_pps: osum(|c| c.drops_pps),
        softirq_pct: cpus.iter().map(|c| c.softirq_pct).sum::<f64>() / n,
        idle_pct: cpus.iter().map(|c| c.idle_pct).sum::<f64>() / n,
        softnet_processed_pps: cpus.iter().map(|c| c.softnet_processed_pps).sum(),
        softnet_dropped_pps: cpus.iter().map(|c| c.softnet_dropped_pps).sum(),
        time_squeeze_per_s: cpus.iter().map(|c| c.time_squeeze_per_s).sum(),
        received_rps_per_s: cpus.iter().map(|c| c.received_rps_per_s).sum(),
        flow_limit_per_s: cpus.iter().map(|c| c.flow_limit_per_s).sum(),
    }
}
