//! The per-CPU table `steer stats` and `steer run` print.

use std::fmt::Write as _;

use super::{CpuRates, Report};

/// "1.23M", "45.6k", "789": rates in 6 characters.
fn si(v: Option<f64>) -> String {
    let Some(v) = v else { return "-".into() };
    if v >= 9_999_500.0 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 999_950.0 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 99_950.0 {
        format!("{:.0}k", v / 1e3)
    } else if v >= 9_999.5 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

/// Width of the per-CPU bar (steered-in, or softirq % without steer).
const BAR: usize = 8;

/// The per-CPU rate table `steer stats` prints: fits 80 columns.
pub fn render_table(r: &Report) -> String {
    let mut out = String::new();
    let state = match &r.attached {
        Some(m) => format!("steer {m} XDP, CPUs {}", crate::cpus::format_list(&r.steering_cpus)),
        None => "no steer attached: softirq/softnet only".into(),
    };
    let _ = writeln!(out, "{}: {state}; per second over {:.2} s", r.iface, r.interval_s);
    let _ = writeln!(
        out,
        "{:>3} {:>6} {:>6} {:>6} {:>6} {:>6} {:>5} {:>5} {:>6} {:>6} {:>5} {}",
        "CPU",
        "xdp-rx",
        "in",
        "rfs",
        "pass",
        "drops",
        "%soft",
        "%idle",
        "sn-prc",
        "sn-drp",
        "sqz",
        if r.attached.is_some() { "steered in" } else { "%soft" }
    );
    let bar_of = |c: &CpuRates| match r.attached {
        Some(_) => c.steered_in_pps.unwrap_or(0.0),
        None => c.softirq_pct,
    };
    let max = r.cpus.iter().map(bar_of).fold(0.0, f64::max);
    let line = |out: &mut String, label: String, c: &CpuRates, bar: String| {
        let _ = writeln!(
            out,
            "{label:>3} {:>6} {:>6} {:>6} {:>6} {:>6} {:>5.1} {:>5.1} {:>6} {:>6} {:>5} {bar}",
            si(c.xdp_rx_pps),
            si(c.steered_in_pps),
            si(c.rfs_hits_pps),
            si(c.passed_pps),
            si(c.drops_pps),
            c.softirq_pct,
            c.idle_pct,
            si(Some(c.softnet_processed_pps)),
            si(Some(c.softnet_dropped_pps)),
            si(Some(c.time_squeeze_per_s)),
        );
    };
    for c in &r.cpus {
        let v = bar_of(c);
        let n = if max > 0.0 { ((v / max) * BAR as f64).round() as usize } else { 0 };
        let mark = if c.steering { '#' } else { '=' };
        line(&mut out, c.cpu.to_string(), c, mark.to_string().repeat(n));
    }
    line(&mut out, "all".into(), &r.all, String::new());
    if let (Some(kept), Some(steered)) = (r.all.kept_pps, r.all.redirected_pps) {
        if kept > 0.0 {
            let _ = writeln!(
                out,
                "kept where they arrived (--spread busy: handing them on would not pay): {} of {} steered",
                si(Some(kept)),
                si(Some(steered))
            );
        }
    }
    match (r.attached.is_some(), r.imbalance) {
        (true, Some(i)) => {
            let _ = writeln!(out, "imbalance (max/mean steered-in over steering CPUs): {i:.2}");
        }
        (true, None) => {
            let _ = writeln!(out, "imbalance: no steered traffic");
        }
        _ => {}
    }
    if let Some(rfs) = &r.rfs {
        let _ = writeln!(
            out,
            "rfs: {} flows; hits {}, misses {}, moves {}, deferred {}",
            rfs.get("flows").unwrap_or(&0),
            rfs.get("hits").unwrap_or(&0),
            rfs.get("misses").unwrap_or(&0),
            rfs.get("moves").unwrap_or(&0),
            rfs.get("deferred").unwrap_or(&0)
        );
    }
    if let Some(b) = &r.buckets {
        if !b.hottest.is_empty() {
            let hot: Vec<String> = b
                .hottest
                .iter()
                .map(|h| {
                    let moving = if h.moving { " (moving)" } else { "" };
                    format!("{} cpu{} {} {:.1}%{moving}", h.bucket, h.cpu, si(Some(h.pps)), h.share * 100.0)
                })
                .collect();
            let _ = writeln!(out, "hottest buckets: {}", hot.join(", "));
        }
        if b.rebalancing {
            let ratio = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
            let _ = writeln!(
                out,
                "rebalance: {} moves ({:.1}/s), {} moving, {} given up; imbalance {} -> {} (last decision){}",
                b.moves_total,
                b.moves_per_s,
                b.pending,
                b.cancelled_total,
                ratio(b.imbalance_before),
                ratio(b.imbalance_after),
                b.unsplittable_bucket
                    .map(|u| format!("; bucket {u} alone exceeds a CPU's share: unsplittable"))
                    .unwrap_or_default()
            );
        }
    }
    if let Some(reasons) = &r.passed_by_reason {
        let nz: Vec<String> =
            reasons.iter().filter(|(_, v)| **v > 0).map(|(k, v)| format!("{k} {v}")).collect();
        if !nz.is_empty() {
            let _ = writeln!(out, "passed since attach: {}", nz.join(", "));
        }
    }
    out
}
