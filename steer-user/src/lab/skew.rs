//! The skewed-traffic bench (`steer lab bench --skew heavy-light|zipf`): kernel
//! RPS, steer's static table and steer `--rebalance`, all over every CPU, on a
//! generator whose flows carry unequal shares. Rounds in alternating order, so
//! the drift of a shared machine falls on every scenario alike; medians with
//! their range.
//!
//! Each scenario gets the same warm-up first: bursts with pauses between them.
//! The balancer moves a bucket only in a pause of its traffic (no reordering),
//! and a flood at a constant rate has none: the pauses are when the table
//! converges, for the static table they change nothing. Then the per-CPU work
//! at one fixed paced rate (below what the static table loses at), then the
//! zero-loss search of the main bench.

use std::{fmt::Write as _, time::Duration};

use steer_common::RebalanceState;

use super::{
    gen::Skew,
    scenario::{self, Active, Bench, Kind, Plan, Scenario, Search},
    Result,
};

/// The three scenarios over `online` CPUs.
pub fn scenarios(online: &[u32]) -> Vec<Scenario> {
    let all = online.to_vec();
    vec![
        Scenario::new("kernel RPS all CPUs", Kind::KernelRps, all.clone()),
        Scenario::new("steer static all CPUs", Kind::SteerRss, all.clone()),
        Scenario::new("steer --rebalance all CPUs", Kind::SteerRebalance, all),
    ]
}

/// How long the warm-up and the balance measurement take.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct SkewPlan {
    /// Bursts of the warm-up, frames per burst (unpaced), pause after each.
    pub bursts: u32,
    pub burst_frames: u64,
    pub pause_ms: u64,
    /// Paced rate and duration of the balance measurement.
    pub balance_pps: f64,
    pub balance_secs: f64,
    pub rounds: u32,
}

impl SkewPlan {
    pub fn quick() -> Self {
        Self {
            bursts: 6,
            burst_frames: 300_000,
            pause_ms: 150,
            balance_pps: 600_000.0,
            balance_secs: 1.0,
            rounds: 2,
        }
    }
    pub fn full() -> Self {
        Self {
            bursts: 10,
            burst_frames: 600_000,
            pause_ms: 150,
            balance_pps: 600_000.0,
            balance_secs: 3.0,
            rounds: 4,
        }
    }
}

/// Per-CPU work of one scenario at the fixed rate.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Balance {
    pub offered_pps: f64,
    pub loss_pct: f64,
    /// Part of the loss: the sinks' sockets were full (see `Sample::socket_full`), in %.
    pub socket_full_pct: f64,
    /// Packets per second the stack processed on each CPU (softnet), by CPU id.
    pub processed_pps: Vec<f64>,
    /// max/mean of `processed_pps` over the scenario's CPUs.
    pub processed_ratio: Option<f64>,
    /// steer only: packets per second steered to each CPU, and their max/mean.
    pub steered_pps: Vec<f64>,
    pub steered_ratio: Option<f64>,
}

/// One scenario in one round.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SkewRun {
    pub scenario: String,
    pub kind: Kind,
    pub round: u32,
    pub balance: Balance,
    pub search: Search,
    /// `--rebalance` only: what its balancer did over the run.
    pub moves: Option<u64>,
    pub planned: Option<u64>,
    pub given_up: Option<u64>,
    pub unsplittable: Option<u32>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct SkewResult {
    pub skew: Skew,
    pub flows: u32,
    pub plan: SkewPlan,
    pub search: Plan,
    pub runs: Vec<SkewRun>,
}

fn per_cpu_ratio(v: &[f64], cpus: &[u32]) -> Option<f64> {
    let sel: Vec<f64> = cpus.iter().filter_map(|c| v.get(*c as usize).copied()).collect();
    crate::stats::imbalance_of(&sel)
}

/// Warm-up, balance measurement and zero-loss search of one scenario.
pub fn measure(
    b: &Bench,
    sc: &Scenario,
    round: u32,
    plan: &SkewPlan,
    search: &Plan,
) -> Result<Option<SkewRun>> {
    let Some(active) = Active::setup(b, sc)? else { return Ok(None) };
    let res = (|| -> Result<SkewRun> {
        for _ in 0..plan.bursts {
            super::check_stop()?;
            b.gen.send(plan.burst_frames, None)?;
            std::thread::sleep(Duration::from_millis(plan.pause_ms));
        }
        let frames = (plan.balance_pps * plan.balance_secs) as u64;
        let s = scenario::measure(b, &active, frames, Some(plan.balance_pps))?;
        let secs = s.sent as f64 / s.offered_pps.max(1.0);
        let steered: Vec<f64> = s.steered_in.iter().map(|n| *n as f64 / secs.max(1e-9)).collect();
        let balance = Balance {
            offered_pps: s.offered_pps,
            loss_pct: s.loss_pct,
            socket_full_pct: 100.0 * s.socket_full as f64 / s.sent.max(1) as f64,
            processed_ratio: per_cpu_ratio(&s.cpu.pps, &sc.cpus),
            processed_pps: s.cpu.pps.clone(),
            steered_ratio: per_cpu_ratio(&steered, &sc.cpus),
            steered_pps: steered,
        };
        let found = scenario::search(b, &active, search)?;
        let st: Option<RebalanceState> = active.rebalance_state();
        Ok(SkewRun {
            scenario: sc.name.clone(),
            kind: sc.kind,
            round,
            balance,
            search: found,
            moves: st.map(|s| s.moves),
            planned: st.map(|s| s.planned),
            given_up: st.map(|s| s.cancelled),
            unsplittable: st.map(|s| s.unsplittable),
        })
    })();
    active.teardown(&b.topo)?;
    res.map(Some)
}

/// Every round, scenarios forward then backward.
pub fn run(b: &Bench, skew: Skew, plan: &SkewPlan, search: &Plan) -> Result<SkewResult> {
    let scs = scenarios(&b.online);
    let mut runs = Vec::new();
    for round in 0..plan.rounds {
        let order: Vec<&Scenario> =
            if round % 2 == 0 { scs.iter().collect() } else { scs.iter().rev().collect() };
        for sc in order {
            eprintln!("bench: skew {skew:?} round {round}: {}", sc.name);
            if let Some(r) = measure(b, sc, round, plan, search)? {
                eprintln!(
                    "bench: {}: max/mean steered {} processed {}, zero-loss {:.0} pps, moves {}",
                    sc.name,
                    fmt_ratio(r.balance.steered_ratio),
                    fmt_ratio(r.balance.processed_ratio),
                    r.search.zero_loss_pps(),
                    r.moves.map_or("-".into(), |m| m.to_string())
                );
                runs.push(r);
            }
        }
    }
    Ok(SkewResult { skew, flows: b.gen.settings.flows, plan: *plan, search: *search, runs })
}

fn fmt_ratio(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.2}"))
}

/// Median, min and max.
fn mmm(mut v: Vec<f64>) -> Option<(f64, f64, f64)> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    let med = if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 };
    Some((med, v[0], v[n - 1]))
}

fn show(m: Option<(f64, f64, f64)>, f: impl Fn(f64) -> String) -> String {
    m.map_or("-".into(), |(a, b, c)| format!("{} ({}-{})", f(a), f(b), f(c)))
}

impl SkewResult {
    fn of(&self, name: &str) -> Vec<&SkewRun> {
        self.runs.iter().filter(|r| r.scenario == name).collect()
    }

    /// Per round, `metric` of scenario `a` over scenario `b`.
    fn ratios(&self, a: Kind, b: Kind, metric: fn(&SkewRun) -> f64) -> Vec<f64> {
        let mut v = Vec::new();
        for round in 0..self.plan.rounds {
            let get = |k: Kind| self.runs.iter().find(|r| r.round == round && r.kind == k).map(metric);
            if let (Some(x), Some(y)) = (get(a), get(b)) {
                if y > 0.0 {
                    v.push(x / y);
                }
            }
        }
        v
    }

    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "## Skewed traffic: {:?}, {} flows\n\n{} rounds, scenarios in alternating order; medians (min-max). \
             Each scenario: {} unpaced bursts of {} frames with {} ms pauses (when buckets can move), then \
             {:.0} kpps paced for {} s (the per-CPU work), then the zero-loss search. max/mean over the \
             steering CPUs: `steered` = packets steer sent each CPU, `processed` = packets the stack processed \
             per CPU (softnet).\n",
            self.skew,
            self.flows,
            self.plan.rounds,
            self.plan.bursts,
            self.plan.burst_frames,
            self.plan.pause_ms,
            self.plan.balance_pps / 1e3,
            self.plan.balance_secs
        );
        let _ = writeln!(
            out,
            "| scenario | max/mean steered | max/mean processed | per-CPU steered kpps (last round) | zero-loss Mpps | moves |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|---|");
        let mut names: Vec<&str> = Vec::new();
        for r in &self.runs {
            if !names.contains(&r.scenario.as_str()) {
                names.push(&r.scenario);
            }
        }
        for name in names {
            let rs = self.of(name);
            let col = |f: fn(&SkewRun) -> Option<f64>| mmm(rs.iter().filter_map(|r| f(r)).collect());
            let last = rs.last().map_or("-".into(), |r| {
                r.balance
                    .steered_pps
                    .iter()
                    .map(|p| format!("{:.0}", p / 1e3))
                    .collect::<Vec<_>>()
                    .join(" / ")
            });
            let _ = writeln!(
                out,
                "| {name} | {} | {} | {} | {} | {} |",
                show(col(|r| r.balance.steered_ratio), |v| format!("{v:.2}")),
                show(col(|r| r.balance.processed_ratio), |v| format!("{v:.2}")),
                if last.is_empty() { "-".into() } else { last },
                show(col(|r| Some(r.search.zero_loss_pps())), |v| format!("{:.2}", v / 1e6)),
                show(col(|r| r.moves.map(|m| m as f64)), |v| format!("{v:.0}")),
            );
        }
        let zl = self.ratios(Kind::SteerRebalance, Kind::SteerRss, |r| r.search.zero_loss_pps());
        let _ = writeln!(
            out,
            "\nzero-loss rate, steer --rebalance / steer static, per round: {} (median {})",
            zl.iter().map(|v| format!("{v:.2}x")).collect::<Vec<_>>().join(", "),
            show(mmm(zl.clone()), |v| format!("{v:.2}x"))
        );
        out
    }
}
