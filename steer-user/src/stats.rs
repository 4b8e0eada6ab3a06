//! Per-CPU counters of the XDP program: read, subtract, render.

use std::{borrow::Borrow, fmt::Write as _, time::Instant};

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
                passed: a.passed,
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

/// Renders `delta` (counters over `secs` seconds) as a per-CPU rate table.
/// CPUs with nothing to show are left out; `cpus` are always shown.
pub fn render(delta: &Snapshot, secs: f64, cpus: &[u32]) -> String {
    let rate = |v: u64| v as f64 / secs.max(1e-9);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>4} {:>12} {:>12} {:>12} {:>10} {:>10}",
        "CPU", "rx pps", "steered pps", "in pps", "pass pps", "err pps"
    );
    let max_in = delta.steered_in.iter().copied().max().unwrap_or(0);
    for (cpu, c) in delta.per_cpu.iter().enumerate() {
        let inn = delta.steered_in.get(cpu).copied().unwrap_or(0);
        if c.seen == 0 && inn == 0 && !cpus.contains(&(cpu as u32)) {
            continue;
        }
        let bar_len = if max_in > 0 { (inn * 12).div_ceil(max_in) as usize } else { 0 };
        let _ = writeln!(
            out,
            "{:>4} {:>12.0} {:>12.0} {:>12.0} {:>10.0} {:>10.0} {}",
            cpu,
            rate(c.seen),
            rate(c.redirected),
            rate(inn),
            rate(c.passed_total()),
            rate(c.redirect_err),
            "#".repeat(bar_len)
        );
    }
    let t = delta.total();
    let _ = writeln!(
        out,
        "{:>4} {:>12.0} {:>12.0} {:>12.0} {:>10.0} {:>10.0}",
        "all",
        rate(t.seen),
        rate(t.redirected),
        rate(delta.steered_in.iter().sum()),
        rate(t.passed_total()),
        rate(t.redirect_err)
    );
    let reasons: Vec<String> = PassReason::ALL
        .iter()
        .filter(|r| t.passed[**r as usize] > 0)
        .map(|r| format!("{} {}", r.name(), t.passed[*r as usize]))
        .collect();
    if !reasons.is_empty() {
        let _ = writeln!(out, "passed: {}", reasons.join(", "));
    }
    out
}
