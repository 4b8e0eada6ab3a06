//! What the bench and `steer lab` print and write: the per-CPU picture (the
//! seeds' mpstat tables), the scenario table with ratios as the headline, the
//! machine it ran on, JSON for tools and a PNG chart.

use std::{fmt::Write as _, path::Path};

use super::{
    clients::ClientResult,
    rr::RrResult,
    scenario::{Cost, Plan, Scenario, Search},
    CpuPicture, LabError, Result,
};

/// The machine the numbers come from.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Machine {
    pub cpus_online: usize,
    pub cpu_model: String,
    pub kernel: String,
}

impl Machine {
    pub fn describe() -> Self {
        let kernel =
            std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string();
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
            .unwrap_or_default()
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name")
                    .and_then(|r| r.split_once(':'))
                    .map(|(_, m)| m.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        let cpus_online = crate::cpus::online().map(|c| c.len()).unwrap_or(0);
        Self { cpus_online, cpu_model, kernel }
    }
}

/// One scenario's outcome over the rounds (or why it was skipped).
#[derive(Clone, Debug, serde::Serialize)]
pub struct ScenarioResult {
    pub scenario: Scenario,
    pub skipped: Option<String>,
    /// The round with the median zero-loss rate (its per-CPU picture is shown).
    pub flood: Option<Search>,
    /// The round with the median transactions/s.
    pub rr: Option<RrResult>,
    /// Every round's figures, in round order: ratios are taken within a round.
    pub rounds: Vec<RoundFigures>,
    /// steer scenarios: did every CPU of the set receive redirected frames?
    pub steered: Option<bool>,
    /// kernel RPS scenarios: frames other CPUs received by RPS (softnet received_rps).
    pub received_rps: Option<u64>,
}

/// One scenario's figures in one round.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct RoundFigures {
    pub zero_loss_pps: f64,
    pub delivered_pps: f64,
    pub tps: Option<f64>,
    pub p99_us: Option<f64>,
}

impl ScenarioResult {
    /// A scenario before its first round.
    pub fn new(scenario: Scenario) -> Self {
        Self {
            scenario,
            skipped: None,
            flood: None,
            rr: None,
            rounds: Vec::new(),
            steered: None,
            received_rps: None,
        }
    }

    /// Adds one round: keeps its figures, and its search and RR run when they
    /// are the median so far (the lower middle for an even count).
    pub fn add_round(&mut self, flood: Search, rr: Option<RrResult>) {
        self.rounds.push(RoundFigures {
            zero_loss_pps: flood.zero_loss_pps(),
            delivered_pps: flood.at_max.delivered_pps,
            tps: rr.as_ref().map(|r| r.tps),
            p99_us: rr.as_ref().map(|r| r.p99_us),
        });
        let zl: Vec<f64> = self.rounds.iter().map(|r| r.zero_loss_pps).collect();
        if self.flood.is_none() || lower_median(&zl) == Some(flood.zero_loss_pps()) {
            self.flood = Some(flood);
        }
        if let Some(rr) = rr {
            let tps: Vec<f64> = self.rounds.iter().filter_map(|r| r.tps).collect();
            if self.rr.is_none() || lower_median(&tps) == Some(rr.tps) {
                self.rr = Some(rr);
            }
        }
    }

    /// `metric` of every round, in round order.
    fn per_round(&self, metric: fn(&RoundFigures) -> Option<f64>) -> Vec<Option<f64>> {
        self.rounds.iter().map(metric).collect()
    }
}

/// The middle value, or the lower of the two middle ones: always one of `v`.
fn lower_median(v: &[f64]) -> Option<f64> {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len().saturating_sub(1) / 2).copied()
}

/// Median and range of `v`, as "m (lo–hi)" through `fmt`, or just "m" for one value.
fn spread(v: &[f64], fmt: impl Fn(f64) -> String) -> String {
    let mut s = v.to_vec();
    let Some(m) = median(&mut s) else { return "-".into() };
    if s.len() == 1 {
        return fmt(m);
    }
    format!("{} ({}–{})", fmt(m), fmt(s[0]), fmt(s[s.len() - 1]))
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct BenchResult {
    pub machine: Machine,
    pub command: String,
    pub quick: bool,
    pub flows: u32,
    pub frame_bytes: usize,
    pub irq_cpu: u32,
    /// CPUMAP queue size of the steer scenarios.
    pub qsize: u32,
    pub plan: Plan,
    /// Rounds of every scenario, in alternating order.
    pub rounds: u32,
    pub scenarios: Vec<ScenarioResult>,
    pub cost: Option<Cost>,
    /// Real clients (iperf3, sockperf, ...): what ran, or why not.
    pub real_clients: Vec<String>,
    /// Real clients per scenario: median and range over the rounds.
    pub clients: Vec<Summary>,
    pub seconds: f64,
}

/// One client in one scenario over the repetitions: median and range.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Summary {
    pub scenario: String,
    pub client: String,
    pub unit: String,
    pub runs: usize,
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub p50_us: Option<f64>,
    pub p99_us: Option<f64>,
    pub retransmits: Option<u64>,
    /// Runs that failed, with the reason.
    pub failed: Vec<String>,
}

fn median(v: &mut [f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 })
}

/// Medians per (scenario, client) of `runs`, in the order they first appear.
pub fn summarize(runs: &[(String, String, std::result::Result<ClientResult, String>)]) -> Vec<Summary> {
    let mut keys: Vec<(String, String)> = Vec::new();
    for (sc, cl, _) in runs {
        if !keys.iter().any(|(s, c)| s == sc && c == cl) {
            keys.push((sc.clone(), cl.clone()));
        }
    }
    keys.into_iter()
        .map(|(sc, cl)| {
            let mine: Vec<_> = runs.iter().filter(|(s, c, _)| *s == sc && *c == cl).map(|r| &r.2).collect();
            let ok: Vec<&ClientResult> = mine.iter().filter_map(|r| r.as_ref().ok()).collect();
            let mut vals: Vec<f64> = ok.iter().map(|r| r.value).collect();
            let mut p50: Vec<f64> = ok.iter().filter_map(|r| r.p50_us).collect();
            let mut p99: Vec<f64> = ok.iter().filter_map(|r| r.p99_us).collect();
            let mut retr: Vec<f64> = ok.iter().filter_map(|r| r.retransmits.map(|v| v as f64)).collect();
            Summary {
                unit: ok.first().map(|r| r.unit.clone()).unwrap_or_default(),
                runs: ok.len(),
                min: vals.iter().copied().fold(f64::INFINITY, f64::min),
                max: vals.iter().copied().fold(0.0, f64::max),
                median: median(&mut vals).unwrap_or(0.0),
                p50_us: median(&mut p50),
                p99_us: median(&mut p99),
                retransmits: median(&mut retr).map(|v| v as u64),
                failed: mine.iter().filter_map(|r| r.as_ref().err().cloned()).collect(),
                scenario: sc,
                client: cl,
            }
        })
        .collect()
}

/// Real clients: one row per client and scenario, median (min-max) over the
/// rounds, and the ratio to kernel RPS+RFS over all CPUs (the kernel's best
/// default for request/response).
fn clients_table(rows: &[Summary]) -> String {
    let mut out = String::new();
    if rows.is_empty() {
        return out;
    }
    let _ = writeln!(
        out,
        "| client | scenario | median (min-max) | vs kernel RPS+RFS | p50 / p99 us | retransmits | runs |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|");
    for r in rows {
        let base = rows
            .iter()
            .find(|b| b.client == r.client && b.scenario.starts_with("kernel RPS+RFS") && b.runs > 0)
            .map(|b| b.median);
        let ratio = base.filter(|b| *b > 0.0).map_or("-".to_string(), |b| format!("{:.2}x", r.median / b));
        let lat = match (r.p50_us, r.p99_us) {
            (Some(a), Some(b)) => format!("{a:.1} / {b:.1}"),
            _ => "-".into(),
        };
        let failed = if r.failed.is_empty() {
            String::new()
        } else {
            format!(" ({} failed: {})", r.failed.len(), r.failed[0])
        };
        let _ = writeln!(
            out,
            "| {} | {} | {:.1} ({:.1}-{:.1}) {} | {ratio} | {lat} | {} | {}{failed} |",
            r.client,
            r.scenario,
            r.median,
            if r.runs > 0 { r.min } else { 0.0 },
            r.max,
            r.unit,
            r.retransmits.map_or("-".to_string(), |v| v.to_string()),
            r.runs
        );
    }
    out.push('\n');
    out
}

fn mpps(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2} Mpps", v / 1e6)
    } else {
        format!("{:.0} kpps", v / 1e3)
    }
}

/// The mpstat-like table: per CPU, %soft and packets per second, with a bar.
pub fn picture(title: &str, p: &CpuPicture, cpus: &[u32]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{title}");
    let _ =
        writeln!(out, "{:>5} {:>7} {:>7} {:>12} {:>10}  ", "CPU", "%soft", "%busy", "stack pps", "rps IPIs");
    for &c in cpus {
        let i = c as usize;
        let soft = p.soft_pct.get(i).copied().unwrap_or(0.0);
        let busy = p.busy_pct.get(i).copied().unwrap_or(0.0);
        let bar = "#".repeat((busy / 5.0).round() as usize);
        let _ = writeln!(
            out,
            "{:>5} {:>7.1} {:>7.1} {:>12.0} {:>10}  {bar}",
            c,
            soft,
            busy,
            p.pps.get(i).copied().unwrap_or(0.0),
            p.received_rps.get(i).copied().unwrap_or(0)
        );
    }
    out
}

impl BenchResult {
    fn baseline(&self) -> f64 {
        self.scenarios
            .iter()
            .find(|s| s.scenario.kind == super::scenario::Kind::NoSteering)
            .and_then(|s| s.flood.as_ref())
            .map(|f| f.zero_loss_pps())
            .unwrap_or(0.0)
    }

    /// The kernel's own configurations a steer scenario on `cpus` is held against: RPS and RPS+RFS
    /// over `cpus`, and (with `none`) no steering at all (the default, which can win on few CPUs).
    fn kernel_configs<'a>(&'a self, cpus: &'a [u32], none: bool) -> impl Iterator<Item = &'a ScenarioResult> {
        use super::scenario::Kind;
        self.scenarios.iter().filter(move |s| match s.scenario.kind {
            Kind::KernelRps | Kind::KernelRfs => s.scenario.cpus == cpus,
            Kind::NoSteering => none,
            _ => false,
        })
    }

    /// The best kernel configuration by `metric`: the one with the highest median over the rounds,
    /// as a user would pick one. Held against it round by round, steer's noise meets one
    /// configuration's noise, not the best of several noisy figures in each round.
    fn best_kernel<'a>(
        &'a self,
        cpus: &'a [u32],
        none: bool,
        metric: fn(&RoundFigures) -> Option<f64>,
    ) -> Option<&'a ScenarioResult> {
        self.kernel_configs(cpus, none)
            .filter_map(|s| {
                let mut v: Vec<f64> = s.rounds.iter().filter_map(metric).collect();
                Some((s, median(&mut v)?))
            })
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map(|b| b.0)
    }

    /// In round `i`, the highest `metric` of any kernel configuration: an upper bound, kept beside
    /// the headline ratio (the best of several noisy figures favours the kernel).
    fn best_of_round(
        &self,
        i: usize,
        cpus: &[u32],
        none: bool,
        metric: fn(&RoundFigures) -> Option<f64>,
    ) -> Option<f64> {
        self.kernel_configs(cpus, none)
            .filter_map(|s| s.rounds.get(i).and_then(metric))
            .max_by(f64::total_cmp)
    }

    /// `s`'s `metric` over `other`'s, round by round: "median (min–max)x", and
    /// the number of rounds.
    fn ratios(s: &[Option<f64>], other: &[Option<f64>]) -> (String, usize) {
        let r: Vec<f64> =
            s.iter().zip(other).filter_map(|(a, b)| Some(a.as_ref()? / b.filter(|b| *b > 0.0)?)).collect();
        (spread(&r, |v| format!("{v:.2}")) + "x", r.len())
    }

    /// The headline lines: steer against the best kernel configuration of each round.
    fn headlines(&self, out: &mut String) {
        use super::scenario::Kind;
        let zl: fn(&RoundFigures) -> Option<f64> = |r| Some(r.zero_loss_pps);
        let dm: fn(&RoundFigures) -> Option<f64> = |r| Some(r.delivered_pps);
        let tps: fn(&RoundFigures) -> Option<f64> = |r| r.tps;
        let none = self.scenarios.iter().find(|s| s.scenario.kind == Kind::NoSteering);
        let all: Vec<u32> = (0..self.machine.cpus_online as u32).collect();
        for s in self.scenarios.iter().filter(|s| matches!(s.scenario.kind, Kind::SteerRss | Kind::SteerRfs))
        {
            if s.rounds.is_empty() {
                continue;
            }
            // Against the kernel on the same CPUs; over all CPUs also against no steering.
            let with_none = s.scenario.cpus == all;
            let Some(best) = self.best_kernel(&s.scenario.cpus, with_none, zl) else { continue };
            let each: Vec<Option<f64>> =
                (0..s.rounds.len()).map(|i| self.best_of_round(i, &s.scenario.cpus, with_none, zl)).collect();
            let (z, n) = Self::ratios(&s.per_round(zl), &best.per_round(zl));
            let (d, _) = Self::ratios(&s.per_round(dm), &best.per_round(dm));
            let (e, _) = Self::ratios(&s.per_round(zl), &each);
            let _ = writeln!(
                out,
                "- **{}**: zero-loss **{z}** the best kernel configuration {} ({}, by median); delivered at \
                 max offered {d}; against the best kernel figure of each round {e} ({n} round(s))",
                s.scenario.name,
                if with_none { "(incl. no steering)" } else { "on the same CPUs" },
                best.scenario.name,
            );
        }
        // Where no steering took everything the generator offered, the zero-loss figures over all
        // CPUs measure the generator, not the receive path: say so.
        if let Some(f) = none.and_then(|n| n.flood.as_ref()) {
            if f.at_max.loss_pct < self.plan.loss_pct {
                let _ = writeln!(
                    out,
                    "- no steering lost nothing at the generator's top speed ({}): over all CPUs the zero-loss \
                     rates are bounded by the generator; the scenarios without CPU {} load the receive path alone",
                    mpps(f.at_max.offered_pps),
                    self.irq_cpu
                );
            }
        }
        // TCP request/response: steer rfs against the kernel's RPS+RFS, same CPU set, same round.
        for s in self.scenarios.iter().filter(|s| s.scenario.kind == Kind::SteerRfs) {
            let kernel = self
                .scenarios
                .iter()
                .find(|k| k.scenario.kind == Kind::KernelRfs && k.scenario.cpus == s.scenario.cpus);
            let Some(k) = kernel else { continue };
            let (r, n) = Self::ratios(&s.per_round(tps), &k.per_round(tps));
            if n == 0 {
                continue;
            }
            let p99: fn(&RoundFigures) -> Option<f64> = |r| r.p99_us;
            let (p, _) = Self::ratios(&s.per_round(p99), &k.per_round(p99));
            let _ = writeln!(
                out,
                "- **{} TCP request/response**: **{r}** the transactions/s of kernel RPS+RFS on the same CPUs, \
                 p99 {p} the kernel's ({n} round(s))",
                s.scenario.name,
            );
        }
        let _ = writeln!(out);
    }

    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let m = &self.machine;
        let _ = writeln!(out, "# steer bench{}\n", if self.quick { " (--quick)" } else { "" });
        let _ = writeln!(
            out,
            "Machine: {} CPUs online ({}), kernel {}. Lab: veth pair in two namespaces, frames via native XDP \
             (live-frames XDP_TX generator pinned to CPU {}), {} interleaved UDP flows, {}-byte frames, steer's \
             CPUMAP qsize {}. \
             Zero-loss = highest offered rate with < {} % loss ({} bisection steps of {} s). {} round(s) of \
             every scenario in alternating order; figures are medians (min–max), ratios are taken within a \
             round; the per-CPU pictures and single figures come from each scenario's median round. \
             Command: `{}`. Took {:.0} s.\n",
            m.cpus_online,
            m.cpu_model,
            m.kernel,
            self.irq_cpu,
            self.flows,
            self.frame_bytes,
            self.qsize,
            self.plan.loss_pct,
            self.plan.steps,
            self.plan.step_secs,
            self.rounds,
            self.command,
            self.seconds
        );
        let base = self.baseline();
        self.headlines(&mut out);
        let _ = writeln!(
            out,
            "| scenario | CPUs | zero-loss | vs none | max offered | delivered at max | loss at max | imbalance (max/mean) | steered |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|");
        for s in &self.scenarios {
            let cpus = crate::cpus::format_list(&s.scenario.cpus);
            if let Some(why) = &s.skipped {
                let _ = writeln!(out, "| {} | {} | skipped: {why} | | | | | | |", s.scenario.name, cpus);
                continue;
            }
            let Some(f) = &s.flood else { continue };
            let set: Vec<u32> = if s.scenario.cpus.is_empty() {
                (0..self.machine.cpus_online as u32).collect()
            } else {
                s.scenario.cpus.clone()
            };
            let imb = f.at_max.cpu.imbalance(&set).map(|v| format!("{v:.2}")).unwrap_or_else(|| "-".into());
            let steered = match (s.steered, s.received_rps) {
                (Some(b), _) => {
                    format!("{} ({} redirected)", if b { "yes" } else { "NO" }, f.at_max.redirected)
                }
                (None, Some(r)) => format!("rps {r}"),
                _ => "-".into(),
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {:.2} % | {} | {} |",
                s.scenario.name,
                if cpus.is_empty() { "-".into() } else { cpus },
                if f.zero_loss.is_some() {
                    spread(&s.rounds.iter().map(|r| r.zero_loss_pps).collect::<Vec<_>>(), mpps)
                } else {
                    "none found".into()
                },
                if base > 0.0 { format!("{:.2}x", f.zero_loss_pps() / base) } else { "-".into() },
                mpps(f.at_max.offered_pps),
                mpps(f.at_max.delivered_pps),
                f.at_max.loss_pct,
                imb,
                steered
            );
        }
        let rr: Vec<&ScenarioResult> = self.scenarios.iter().filter(|s| s.rr.is_some()).collect();
        if !rr.is_empty() {
            let _ = writeln!(out, "\n## TCP request/response\n");
            let _ =
                writeln!(out, "| scenario | connections | transactions/s | p50 µs | p99 µs | switches/tx | in place | bulk Gbit/s |");
            let _ = writeln!(out, "|---|---|---|---|---|---|---|---|");
            for s in rr {
                if let Some(r) = &s.rr {
                    let _ = writeln!(
                        out,
                        "| {} | {} | {} | {:.1} | {:.1} | {} | {} | {} |",
                        s.scenario.name,
                        r.connections,
                        spread(&s.rounds.iter().filter_map(|r| r.tps).collect::<Vec<_>>(), |v| format!(
                            "{v:.0}"
                        )),
                        r.p50_us,
                        r.p99_us,
                        r.switches_per_tx.map(|v| format!("{v:.2}")).unwrap_or_else(|| "-".into()),
                        r.in_place.map(|v| format!("{:.0} %", v * 100.0)).unwrap_or_else(|| "-".into()),
                        r.bulk_gbps.map(|g| format!("{g:.2}")).unwrap_or_else(|| "-".into())
                    );
                }
            }
        }
        if let Some(c) = &self.cost {
            let _ = writeln!(
                out,
                "\n## Per-packet cost (BPF_PROG_TEST_RUN, {} repeats, best of {} rounds; medians {:.0} / {:.0} / {:.0} \
                 ns; the kernel reports whole ns)\n",
                c.repeat, c.rounds, c.median_ns[0], c.median_ns[1], c.median_ns[2]
            );
            let _ = writeln!(out, "| program | ns/packet | vs bare XDP_PASS |");
            let _ = writeln!(out, "|---|---|---|");
            let rows = [
                ("xdp_pass", c.pass_ns),
                ("steer fast", c.fast_ns),
                ("steer toeplitz", c.toeplitz_ns),
                ("steer rfs, TCP flow not in the table", c.rfs_miss_ns),
                ("steer rfs, TCP flow in the table", c.rfs_hit_ns),
                ("steer fast, --inner off (no tunnel lookups)", c.inner_off_ns),
                ("steer fast, VXLAN frame (inner flow; tail call)", c.vxlan_ns),
                ("steer fast, bucket moving (--rebalance, not idle yet)", c.moving_ns),
                ("redirect only (the floor: fixed CPU, no parsing)", c.floor_ns),
                ("steer fast's parser, then that redirect", c.parse_ns),
                ("its parser, hash and indirection table, then the redirect", c.hash_ns),
            ];
            for (program, ns) in rows {
                let _ = writeln!(out, "| {program} | {ns:.1} | {:.2}x |", ns / c.pass_ns.max(1e-9));
            }
            let _ = writeln!(
                out,
                "\nsteer fast is {:.2}x the floor; an RFS hit is {:.2}x steer fast; looking for tunnels \
                 costs plain frames {:+.1} % (steer fast vs --inner off). Where steer fast's time goes above \
                 the floor: parsing {:.0} ns, hash and indirection table {:.0} ns, counting and the choice to \
                 pass in place {:.0} ns.",
                c.fast_vs_floor,
                c.rfs_hit_ns / c.fast_ns.max(1e-9),
                (c.fast_ns / c.inner_off_ns.max(1e-9) - 1.0) * 100.0,
                c.parse_ns - c.floor_ns,
                c.hash_ns - c.parse_ns,
                c.fast_ns - c.hash_ns
            );
        }
        let _ = writeln!(out, "\n## Per-CPU picture at max offered rate\n");
        for s in &self.scenarios {
            if let Some(f) = &s.flood {
                let cpus: Vec<u32> = (0..self.machine.cpus_online as u32).collect();
                let _ = writeln!(out, "```\n{}```", picture(&s.scenario.name, &f.at_max.cpu, &cpus));
            }
        }
        if !self.real_clients.is_empty() || !self.clients.is_empty() {
            let _ = writeln!(out, "\n## Real clients\n");
            out.push_str(&clients_table(&self.clients));
            for r in &self.real_clients {
                let _ = writeln!(out, "- {r}");
            }
        }
        out
    }

    /// Writes `NAME.md` and `NAME.json` into `dir`; returns their paths.
    pub fn write(&self, dir: &Path, name: &str) -> Result<Vec<std::path::PathBuf>> {
        std::fs::create_dir_all(dir).map_err(|e| LabError::io(format!("creating {}", dir.display()), e))?;
        let md = dir.join(format!("{name}.md"));
        let js = dir.join(format!("{name}.json"));
        std::fs::write(&md, self.markdown())
            .map_err(|e| LabError::io(format!("writing {}", md.display()), e))?;
        let text = serde_json::to_string_pretty(self).map_err(|e| LabError::Msg(format!("JSON: {e}")))?;
        std::fs::write(&js, text).map_err(|e| LabError::io(format!("writing {}", js.display()), e))?;
        Ok(vec![md, js])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_are_medians_with_range() {
        let r = |v: f64| {
            Ok(ClientResult { value: v, unit: "req/s".into(), p99_us: Some(v), ..Default::default() })
        };
        let runs = vec![
            ("a".to_string(), "x".to_string(), r(3.0)),
            ("b".to_string(), "x".to_string(), r(10.0)),
            ("a".to_string(), "x".to_string(), r(1.0)),
            ("a".to_string(), "x".to_string(), Err("boom".to_string())),
            ("a".to_string(), "x".to_string(), r(2.0)),
        ];
        let s = summarize(&runs);
        assert_eq!(s.len(), 2);
        assert_eq!((s[0].median, s[0].min, s[0].max, s[0].runs), (2.0, 1.0, 3.0, 3));
        assert_eq!(s[0].failed, vec!["boom".to_string()]);
        assert_eq!(s[1].median, 10.0);
    }

    fn search(zero_loss: f64, delivered: f64) -> Search {
        use super::super::scenario::Sample;
        let sample = |pps: f64| Sample { offered_pps: pps, delivered_pps: delivered, ..Default::default() };
        Search { at_max: sample(delivered), zero_loss: Some(sample(zero_loss)), steps: Vec::new() }
    }

    fn result(kind: super::super::scenario::Kind, name: &str, rounds: &[(f64, f64)]) -> ScenarioResult {
        let mut r = ScenarioResult::new(Scenario::new(name, kind, vec![0, 1]));
        for &(zl, tps) in rounds {
            r.add_round(search(zl, zl), Some(RrResult { tps, ..Default::default() }));
        }
        r
    }

    #[test]
    fn rounds_keep_the_median_round_and_ratios_pair_rounds() {
        use super::super::scenario::Kind;
        let steer = result(Kind::SteerRfs, "steer rfs all CPUs", &[(3.0, 30.0), (1.0, 10.0), (2.0, 20.0)]);
        assert_eq!(steer.flood.as_ref().map(|f| f.zero_loss_pps()), Some(2.0));
        assert_eq!(steer.rr.as_ref().map(|r| r.tps), Some(20.0));
        let even = result(Kind::SteerRss, "steer rss all CPUs", &[(4.0, 1.0), (1.0, 1.0)]);
        assert_eq!(even.flood.as_ref().map(|f| f.zero_loss_pps()), Some(1.0), "lower middle of two");
        // The kernel was slow in the round steer was slow: per-round ratios are all 1.5x,
        // where a ratio of medians would not show that.
        let kernel = result(
            Kind::KernelRfs,
            "kernel RPS+RFS all CPUs",
            &[(2.0, 20.0), (1.0 / 1.5, 10.0), (4.0 / 3.0, 40.0)],
        );
        let zl: fn(&RoundFigures) -> Option<f64> = |r| Some(r.zero_loss_pps);
        let tps: fn(&RoundFigures) -> Option<f64> = |r| r.tps;
        assert_eq!(
            BenchResult::ratios(&steer.per_round(zl), &kernel.per_round(zl)),
            ("1.50 (1.50–1.50)x".into(), 3)
        );
        assert_eq!(
            BenchResult::ratios(&steer.per_round(tps), &kernel.per_round(tps)),
            ("1.00 (0.50–1.50)x".into(), 3)
        );
        assert_eq!(spread(&[2.0, 1.0, 3.0], |v| format!("{v:.0}")), "2 (1–3)");
    }

    #[test]
    fn steer_is_held_against_the_kernel_configuration_with_the_best_median() {
        use super::super::scenario::Kind;
        // RPS+RFS is steady at 2; RPS is 1 but for one lucky round at 3. The best of each round
        // would hold steer's 2.2 against that lucky 3; the configuration a user would pick is RPS+RFS.
        let bench = BenchResult {
            machine: Machine { cpus_online: 2, ..Default::default() },
            command: String::new(),
            quick: true,
            flows: 1,
            frame_bytes: 60,
            irq_cpu: 0,
            qsize: 1,
            plan: Plan::quick(),
            rounds: 3,
            scenarios: vec![
                result(Kind::KernelRps, "kernel RPS all CPUs", &[(1.0, 1.0), (3.0, 1.0), (1.0, 1.0)]),
                result(Kind::KernelRfs, "kernel RPS+RFS all CPUs", &[(2.0, 1.0), (2.0, 1.0), (2.0, 1.0)]),
                result(Kind::SteerRss, "steer rss all CPUs", &[(2.2, 1.0), (2.2, 1.0), (2.2, 1.0)]),
            ],
            cost: None,
            real_clients: Vec::new(),
            clients: Vec::new(),
            seconds: 0.0,
        };
        let zl: fn(&RoundFigures) -> Option<f64> = |r| Some(r.zero_loss_pps);
        let best = bench.best_kernel(&[0, 1], true, zl).map(|s| s.scenario.name.as_str());
        assert_eq!(best, Some("kernel RPS+RFS all CPUs"));
        let mut out = String::new();
        bench.headlines(&mut out);
        assert!(
            out.contains(
                "zero-loss **1.10 (1.10–1.10)x** the best kernel configuration (incl. no steering) \
                 (kernel RPS+RFS all CPUs, by median)"
            ),
            "{out}"
        );
        assert!(
            out.contains("against the best kernel figure of each round 1.10 (0.73–1.10)x (3 round(s))"),
            "{out}"
        );
    }
}
