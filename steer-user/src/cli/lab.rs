//! `steer lab` (the newcomer's first command) and `steer lab bench` (what
//! `cargo xtask bench` runs): see `steer::lab`.

use std::{path::PathBuf, time::Instant};

use anyhow::{Context as _, Result};
use clap::{Args, Subcommand};
use steer::{
    cpus,
    lab::{
        self, clients,
        gen::{GenSettings, Skew},
        report::{self, BenchResult, Machine, ScenarioResult},
        scenario::{self, Active, Bench, Kind, Plan, Scenario},
        LabError,
    },
};

#[derive(Args)]
pub struct LabArgs {
    #[command(subcommand)]
    cmd: Option<LabCmd>,
    #[command(flatten)]
    traffic: Traffic,
}

#[derive(Args, Clone)]
struct Traffic {
    /// Interleaved UDP flows the generator sends.
    #[arg(long, default_value_t = 1024, global = true)]
    flows: u32,
    /// CPU the generator is pinned to (where the "interrupt" work lands).
    #[arg(long, default_value_t = 0, global = true)]
    irq_cpu: u32,
    /// CPUMAP queue size (frames per CPU) for the steer scenarios, as `steer run --qsize`.
    #[arg(long, default_value_t = steer::config::DEFAULT_QSIZE, global = true)]
    qsize: u32,
    /// How frames are shared among the flows: uniform, heavy-light (one flow carries half the
    /// frames, the other --flows - 1 share the rest) or zipf (share of the k-th flow ~ 1/k).
    /// With `bench`, a skew runs the skewed bench: kernel RPS, steer static, steer --rebalance.
    #[arg(long, value_enum, default_value_t = Skew::Uniform, global = true)]
    skew: Skew,
}

#[derive(Subcommand)]
enum LabCmd {
    /// Every scenario (none, kernel RPS, RPS+RFS, steer rss/rfs; with and without the IRQ CPU),
    /// same lab, same traffic; writes markdown and JSON under --out.
    Bench(BenchArgs),
}

#[derive(Args)]
struct BenchArgs {
    /// Short run (under two minutes) for CI smoke.
    #[arg(long)]
    quick: bool,
    /// Directory for the results.
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
    /// Only scenarios whose name contains this text ("steer", "kernel RPS all").
    #[arg(long)]
    only: Option<String>,
    /// Skip the per-packet cost measurement.
    #[arg(long)]
    no_cost: bool,
    /// Skip the TCP request/response and bulk workloads.
    #[arg(long)]
    no_rr: bool,
    /// Rounds of real clients (nginx + wrk, memcached + memcslap, iperf3, sockperf) under no
    /// steering, kernel RPS, RPS+RFS, steer rss and rfs over all CPUs, scenarios in alternating
    /// order each round; 0: none.
    #[arg(long, default_value_t = 0)]
    clients: u32,
    /// Rounds of every scenario, in alternating order (figures are medians, ratios taken within a
    /// round). With --skew: rounds of its three scenarios. [default: 3; with --skew 2 quick, 4 full]
    #[arg(long)]
    rounds: Option<u32>,
}

/// Ctrl-C and SIGTERM ask the lab to stop; the drops then remove everything.
/// The lab runs on this thread, synchronously: the signals are watched on another.
fn watch_signals() {
    std::thread::spawn(|| {
        let Ok(rt) = super::tokio_rt() else { return };
        rt.block_on(async {
            let Ok(mut signals) = super::Signals::new() else { return };
            signals.stopped().await;
            eprintln!("stopping: removing the lab...");
            lab::request_stop();
        });
    });
}

fn settings(t: &Traffic) -> GenSettings {
    GenSettings { flows: t.flows, irq_cpu: t.irq_cpu, skew: t.skew, ..Default::default() }
}

/// Validates everything, then builds the lab.
fn bench_lab(t: &Traffic) -> Result<Bench> {
    steer::config::check_qsize(t.qsize)?;
    let mut b = Bench::new(settings(t))?;
    b.qsize = t.qsize;
    Ok(b)
}

pub fn run(a: LabArgs) -> Result<()> {
    watch_signals();
    let res = match a.cmd {
        None => demo(&a.traffic),
        Some(LabCmd::Bench(b)) => bench(&a.traffic, b),
    };
    match res {
        Err(e) if matches!(e.downcast_ref::<LabError>(), Some(LabError::Interrupted)) => {
            lab::topology::cleanup_all();
            eprintln!("interrupted; the lab was removed");
            std::process::exit(130);
        }
        other => other,
    }
}

/// No arguments: the flood with no steering, then with steer, and the
/// per-CPU picture of each.
fn demo(t: &Traffic) -> Result<()> {
    let started = Instant::now();
    let b = bench_lab(t)?;
    println!(
        "lab: namespaces {} -> {}, veth {} -> {}, {} UDP flows from a generator pinned to CPU {}",
        b.topo.tx_ns.name, b.topo.rx_ns.name, b.topo.tx_if, b.topo.rx_if, t.flows, t.irq_cpu
    );
    let plan = Plan::quick();
    let mut results = Vec::new();
    for sc in [
        Scenario::new("no steering", Kind::NoSteering, vec![]),
        Scenario::new("steer rss", Kind::SteerRss, b.online.clone()),
    ] {
        let active = Active::setup(&b, &sc)?.context("scenario not available")?;
        let s = scenario::search(&b, &active, &plan);
        active.teardown(&b.topo)?;
        let s = s?;
        println!(
            "\n{}: {} delivered of {} offered at full speed ({:.2} % lost); zero-loss rate {:.0} pps",
            sc.name,
            s.at_max.delivered_pps as u64,
            s.at_max.offered_pps as u64,
            s.at_max.loss_pct,
            s.zero_loss_pps()
        );
        print!("{}", report::picture(&format!("{} at full speed", sc.name), &s.at_max.cpu, &b.online));
        results.push(s);
    }
    if let [none, steer] = &results[..] {
        println!(
            "\nsteer: {:.2}x the zero-loss rate, {:.2}x delivered at full speed, vs no steering ({:.0} s)",
            steer.zero_loss_pps() / none.zero_loss_pps().max(1.0),
            steer.at_max.delivered_pps / none.at_max.delivered_pps.max(1.0),
            started.elapsed().as_secs_f64()
        );
    }
    println!("lab removed: `cargo xtask bench` compares against the kernel's RPS/RFS too");
    Ok(())
}

/// Real clients, side by side: `rounds` rounds over the all-CPU scenarios,
/// in forward then reverse order, so that drift of a noisy machine falls on
/// every scenario alike. A client that is not installed is reported, not run.
fn clients(
    b: &Bench,
    scenarios: &[Scenario],
    rounds: u32,
    secs: f64,
    irq_cpu: u32,
) -> Result<(Vec<report::Summary>, Vec<String>)> {
    let mut notes = Vec::new();
    let usable: Vec<clients::Client> = clients::ALL
        .into_iter()
        .filter(|c| {
            let missing = c.missing();
            if !missing.is_empty() {
                notes.push(format!("{}: skipped, not installed ({})", c.name, missing.join(", ")));
            }
            missing.is_empty()
        })
        .collect();
    if rounds == 0 || usable.is_empty() {
        if rounds == 0 {
            notes.push("real clients not run (--clients 0)".into());
        }
        return Ok((Vec::new(), notes));
    }
    let scenarios: Vec<&Scenario> =
        scenarios.iter().filter(|s| s.kind == Kind::NoSteering || s.name.ends_with("all CPUs")).collect();
    let mut runs = Vec::new();
    for round in 0..rounds {
        let order: Vec<&Scenario> =
            if round % 2 == 0 { scenarios.to_vec() } else { scenarios.iter().rev().copied().collect() };
        for sc in order {
            lab::check_stop()?;
            let Some(active) = Active::setup(b, sc)? else { continue };
            for (i, c) in usable.iter().enumerate() {
                let port = 8100 + (round as u16 % 50) * 10 + i as u16;
                let r = c.run(&b.topo, port, secs, irq_cpu);
                match &r {
                    Ok(r) => {
                        eprintln!("bench: round {round} {}: {}: {:.1} {}", sc.name, c.name, r.value, r.unit)
                    }
                    Err(e) => eprintln!("bench: round {round} {}: {}: failed: {e}", sc.name, c.name),
                }
                runs.push((sc.name.clone(), c.name.to_string(), r.map_err(|e| e.to_string())));
            }
            active.teardown(&b.topo)?;
        }
    }
    notes.push(format!(
        "{} client(s) x {rounds} round(s), {secs} s each, clients pinned to CPU {irq_cpu}",
        usable.len()
    ));
    Ok((report::summarize(&runs), notes))
}

/// `--skew`: the skewed bench, written as `skew-NAME-Ncpu.{md,json}`.
fn skewed(t: &Traffic, a: &BenchArgs) -> Result<()> {
    let started = Instant::now();
    let plan = if a.quick { Plan::quick() } else { Plan::full() };
    let mut sp = if a.quick { lab::skew::SkewPlan::quick() } else { lab::skew::SkewPlan::full() };
    if let Some(r) = a.rounds {
        anyhow::ensure!(r > 0, "invalid --rounds 0: at least one round");
        sp.rounds = r;
    }
    if a.only.is_some() || a.clients > 0 {
        anyhow::bail!("--skew runs its own three scenarios: --only and --clients do not apply");
    }
    let b = bench_lab(t)?;
    let r = lab::skew::run(&b, t.skew, &sp, &plan)?;
    drop(b);
    let name = format!(
        "skew-{}-{}cpu",
        match t.skew {
            Skew::HeavyLight => "heavy-light",
            Skew::Zipf => "zipf",
            Skew::Uniform => "uniform",
        },
        Machine::describe().cpus_online
    );
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let md = a.out.join(format!("{name}.md"));
    let text = format!(
        "{}
Command: `{}`; took {:.0} s; machine: {:?}
",
        r.markdown(),
        std::env::args().collect::<Vec<_>>().join(" "),
        started.elapsed().as_secs_f64(),
        Machine::describe()
    );
    std::fs::write(&md, &text).with_context(|| format!("writing {}", md.display()))?;
    let js = a.out.join(format!("{name}.json"));
    std::fs::write(&js, serde_json::to_string_pretty(&r)?)
        .with_context(|| format!("writing {}", js.display()))?;
    print!("{text}");
    eprintln!("wrote {}\nwrote {}", md.display(), js.display());
    Ok(())
}

/// One round of scenario `sc`: the zero-loss search, then TCP request/response
/// and bulk, added to `r`. A scenario that cannot be set up is marked skipped.
fn bench_round(b: &Bench, a: &BenchArgs, round: u32, index: usize, r: &mut ScenarioResult) -> Result<()> {
    let sc = r.scenario.clone();
    if r.skipped.is_some() {
        return Ok(());
    }
    eprintln!("bench: round {round}: {} ({})", sc.name, cpus::format_list(&sc.cpus));
    let plan = if a.quick { Plan::quick() } else { Plan::full() };
    let Some(active) = Active::setup(b, &sc)? else {
        let why = "--mode rfs not available".to_string();
        eprintln!("bench: {}: skipped: {why}", sc.name);
        r.skipped = Some(why);
        return Ok(());
    };
    let s = scenario::search(b, &active, &plan);
    let (rr_secs, bulk_secs) = if a.quick { (1.0, 1.0) } else { (10.0, 10.0) };
    let conns = (b.online.len() as u32 * 2).max(2);
    let port = 7100 + 2 * index as u16 + 60 * (round as u16 % 100);
    let rr = match s {
        Ok(_) if !a.no_rr => Some(scenario::request_response(b, &active, port, conns, rr_secs, bulk_secs)),
        _ => None,
    };
    active.teardown(&b.topo)?;
    let s = s?;
    let rr = rr.transpose()?;
    if let Some(rr) = &rr {
        eprintln!(
            "bench: {}: TCP_RR {:.0} tps, p50 {:.0} us, p99 {:.0} us; bulk {:.2} Gbit/s",
            sc.name,
            rr.tps,
            rr.p50_us,
            rr.p99_us,
            rr.bulk_gbps.unwrap_or(0.0)
        );
    }
    let all_steered = sc.cpus.iter().all(|c| s.at_max.steered_in.get(*c as usize).is_some_and(|n| *n > 0));
    match sc.kind {
        Kind::SteerRss | Kind::SteerRfs | Kind::SteerRebalance => {
            r.steered = Some(r.steered.unwrap_or(true) && all_steered)
        }
        Kind::KernelRps | Kind::KernelRfs => {
            *r.received_rps.get_or_insert(0) += s.at_max.cpu.received_rps.iter().sum::<u64>();
        }
        Kind::NoSteering => {}
    }
    eprintln!(
        "bench: {}: zero-loss {:.0} pps, at max offered {:.0} delivered {:.0} ({:.2} % lost)",
        sc.name,
        s.zero_loss_pps(),
        s.at_max.offered_pps,
        s.at_max.delivered_pps,
        s.at_max.loss_pct
    );
    r.add_round(s, rr);
    Ok(())
}

fn bench(t: &Traffic, a: BenchArgs) -> Result<()> {
    if t.skew != Skew::Uniform {
        return skewed(t, &a);
    }
    let rounds = a.rounds.unwrap_or(3);
    anyhow::ensure!(rounds > 0, "invalid --rounds 0: at least one round");
    let started = Instant::now();
    let plan = if a.quick { Plan::quick() } else { Plan::full() };
    // Everything is checked before the lab is built.
    let mut scenarios = scenario::standard(&cpus::online()?, t.irq_cpu);
    if let Some(f) = &a.only {
        scenarios.retain(|s| s.name.contains(f.as_str()));
        if scenarios.is_empty() {
            let names: Vec<String> =
                scenario::standard(&cpus::online()?, t.irq_cpu).into_iter().map(|s| s.name).collect();
            anyhow::bail!("--only \"{f}\" matches no scenario (scenarios: {})", names.join(", "));
        }
    }
    let b = bench_lab(t)?;
    let mut out: Vec<ScenarioResult> = scenarios.iter().cloned().map(ScenarioResult::new).collect();
    // Alternating order, as for the real clients: drift of a noisy machine falls on every scenario alike.
    for round in 0..rounds {
        let order: Vec<usize> =
            if round % 2 == 0 { (0..out.len()).collect() } else { (0..out.len()).rev().collect() };
        for i in order {
            lab::check_stop()?;
            bench_round(&b, &a, round, i, &mut out[i])?;
        }
    }
    let (client_results, real_clients) =
        clients(&b, &scenarios, a.clients, if a.quick { 2.0 } else { 5.0 }, t.irq_cpu)?;
    let cost = if a.no_cost {
        None
    } else {
        let (repeat, rounds) = if a.quick { (1_000_000, 9) } else { (5_000_000, 15) };
        Some(scenario::cost(repeat, rounds)?)
    };
    let frame_bytes = 14 + 20 + 8 + b.gen.settings.payload;
    drop(b);
    let result = BenchResult {
        machine: Machine::describe(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        quick: a.quick,
        flows: t.flows,
        frame_bytes,
        irq_cpu: t.irq_cpu,
        qsize: t.qsize,
        plan,
        rounds,
        scenarios: out,
        cost,
        real_clients,
        clients: client_results,
        seconds: started.elapsed().as_secs_f64(),
    };
    let name = format!("{}-{}cpu", if a.quick { "quick" } else { "full" }, result.machine.cpus_online);
    let files = result.write(&a.out, &name)?;
    print!("{}", result.markdown());
    for f in files {
        eprintln!("wrote {}", f.display());
    }
    Ok(())
}
