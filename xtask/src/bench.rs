//! `cargo xtask bench [--quick] [-- ARGS]`: builds steer (release) and runs
//! `steer lab bench`, which builds its own lab, measures every scenario side by
//! side and writes markdown + JSON under bench/results/, then its two skewed
//! workloads (`--rebalance`); then draws the PNG
//! chart from the JSON here, so the plotting crate stays out of the product.

use std::process::Command;

use anyhow::{bail, Result};

pub fn bench(quick: bool, args: &[String]) -> Result<()> {
    crate::setup()?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { crate::libc_geteuid() } != 0 {
        bail!("the bench builds network namespaces and loads eBPF: run `cargo xtask bench` as root");
    }
    // The real clients of the bench (Debian packages; never installed by the tests).
    crate::apt_install(&[
        ("iperf3", "iperf3"),
        ("sockperf", "sockperf"),
        ("nginx", "nginx-light"),
        ("wrk", "wrk"),
        ("memcached", "memcached"),
        ("memcslap", "libmemcached-tools"),
    ])?;
    let bin = crate::build(true)?;
    let out = crate::workspace_root().join("bench").join("results");
    let mut c = Command::new(&bin);
    c.args(["lab", "bench", "--out"]).arg(&out);
    // Rounds of real clients, scenarios in alternating order: medians with their range.
    if !args.iter().any(|a| a.starts_with("--clients")) {
        c.args(["--clients", if quick { "2" } else { "4" }]);
    }
    if quick {
        c.arg("--quick");
    }
    c.args(args);
    crate::status(c)?;
    // The skewed workloads (`--rebalance`): one heavy flow + light ones, and Zipf over 1024 flows;
    // kernel RPS, steer static and steer --rebalance in alternating rounds.
    if !args.iter().any(|a| a.starts_with("--only") || a.starts_with("--skew")) {
        for (skew, flows) in [("heavy-light", "65"), ("zipf", "1024")] {
            let mut c = Command::new(&bin);
            c.args(["lab", "bench", "--out"]).arg(&out);
            c.args(["--skew", skew, "--flows", flows, "--rounds", if quick { "2" } else { "4" }]);
            if quick {
                c.arg("--quick");
            }
            crate::status(c)?;
        }
    }
    let ncpu = std::fs::read_to_string("/sys/devices/system/cpu/online")
        .ok()
        .map(|s| {
            s.trim()
                .split(',')
                .map(|r| match r.split_once('-') {
                    Some((a, b)) => b.parse::<usize>().unwrap_or(0) + 1 - a.parse::<usize>().unwrap_or(0),
                    None => 1,
                })
                .sum::<usize>()
        })
        .unwrap_or(0);
    let json = out.join(format!("{}-{ncpu}cpu.json", if quick { "quick" } else { "full" }));
    let png = chart(&json)?;
    eprintln!("wrote {}", png.display());
    Ok(())
}

/// Draws `json`'s results as a PNG next to it (same name, .png). Bars only,
/// no text (no system fonts needed): the legend is in bench/README.md.
///
/// - Top: one group per scenario, in table order: zero-loss pps (dark) and
///   delivered at the highest offered rate (light); grey = no steering,
///   orange = kernel RPS/RFS, green = steer.
/// - Bottom: per-CPU busy % at the highest offered rate, left half "no
///   steering" (before), right half "steer rss all CPUs" (after); the red line
///   is 100 %.
pub fn chart(json: &std::path::Path) -> Result<std::path::PathBuf> {
    use plotters::prelude::*;
    let text =
        std::fs::read_to_string(json).map_err(|e| anyhow::anyhow!("reading {}: {e}", json.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text)?;
    let png = json.with_extension("png");
    let err = |e: &dyn std::fmt::Debug| anyhow::anyhow!("drawing {}: {e:?}", png.display());
    let root = BitMapBackend::new(&png, (1200, 700)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let (top, bottom) = root.split_vertically(400);
    let scenarios: Vec<&serde_json::Value> = v["scenarios"]
        .as_array()
        .map(|a| a.iter().filter(|s| s["flood"].is_object()).collect())
        .unwrap_or_default();
    let f = |s: &serde_json::Value, path: &[&str]| -> f64 {
        let mut x = s;
        for p in path {
            x = &x[*p];
        }
        x.as_f64().unwrap_or(0.0)
    };
    let top_max = scenarios
        .iter()
        .map(|s| {
            f(s, &["flood", "zero_loss", "offered_pps"]).max(f(s, &["flood", "at_max", "delivered_pps"]))
        })
        .fold(1.0, f64::max);
    let n = scenarios.len().max(1) as i32;
    let (w, h) = (1200i32, 400i32);
    let group = (w - 40) / n;
    for (i, s) in scenarios.iter().enumerate() {
        let kind = s["scenario"]["kind"].as_str().unwrap_or("");
        let (dark, light) = match kind {
            "no_steering" => (RGBColor(90, 90, 90), RGBColor(180, 180, 180)),
            k if k.starts_with("kernel") => (RGBColor(220, 120, 0), RGBColor(245, 190, 120)),
            _ => (RGBColor(0, 150, 60), RGBColor(130, 210, 150)),
        };
        let x0 = 20 + i as i32 * group;
        let bar = (group - 20) / 2;
        for (j, (val, color)) in [
            (f(s, &["flood", "zero_loss", "offered_pps"]), dark),
            (f(s, &["flood", "at_max", "delivered_pps"]), light),
        ]
        .into_iter()
        .enumerate()
        {
            let bh = ((val / top_max) * (h - 30) as f64) as i32;
            let x = x0 + j as i32 * bar;
            top.draw(&Rectangle::new([(x, h - 10 - bh), (x + bar - 2, h - 10)], color.filled()))
                .map_err(|e| err(&e))?;
        }
    }
    let pick = |kind: &str| {
        scenarios
            .iter()
            .find(|s| {
                s["scenario"]["kind"] == kind
                    && (kind == "no_steering"
                        || s["scenario"]["name"].as_str().is_some_and(|n| n.contains("all")))
            })
            .map(|s| s["flood"]["at_max"]["cpu"]["busy_pct"].as_array().cloned().unwrap_or_default())
            .unwrap_or_default()
    };
    let halves = bottom.split_evenly((1, 2));
    for (area, busy, color) in [
        (&halves[0], pick("no_steering"), RGBColor(90, 90, 90)),
        (&halves[1], pick("steer_rss"), RGBColor(0, 150, 60)),
    ] {
        let (aw, ah) = (600i32, 300i32);
        let ncpu = busy.len().max(1) as i32;
        let bw = ((aw - 40) / ncpu).max(1);
        area.draw(&PathElement::new(vec![(20, 20), (aw - 20, 20)], RED)).map_err(|e| err(&e))?;
        for (c, b) in busy.iter().enumerate() {
            let pct = b.as_f64().unwrap_or(0.0).clamp(0.0, 100.0);
            let bh = (pct / 100.0 * (ah - 40) as f64) as i32;
            let x = 20 + c as i32 * bw;
            area.draw(&Rectangle::new([(x, ah - 20 - bh), (x + bw - 2, ah - 20)], color.filled()))
                .map_err(|e| err(&e))?;
        }
    }
    root.present().map_err(|e| err(&e))?;
    drop(root);
    Ok(json.with_extension("png"))
}
