//! `steer`: spread a receive path over CPUs with XDP + CPUMAP. Each
//! subcommand lives in `cli/`; this file only parses and dispatches.

mod cli;

use std::process::ExitCode;

use clap::{CommandFactory as _, FromArgMatches as _, Parser, Subcommand};
use steer::options::{file::one_line, RunArgs};

#[derive(Parser)]
#[command(name = "steer", version, about = "Spread a Linux receive path over CPUs with XDP and a CPUMAP")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Attach the steering program to an interface and show per-CPU rates until Ctrl-C.
    Run(RunArgs),
    /// Print the hash, bucket and CPU that steer chooses for a flow.
    Hash(cli::hash::HashArgs),
    /// Per-CPU rates: steer's counters, softirq and softnet (without a steer run: softirq and softnet only).
    Stats(cli::stats::StatsArgs),
    /// Show, plan, apply or restore NIC and kernel knobs: channels, coalescing, offloads, RSS table,
    /// IRQ affinity, RPS/RFS/XPS.
    #[command(subcommand)]
    Nic(cli::nic::NicCmd),
    /// Show the RFS flow table of a `steer run --mode rfs`: flow, CPU, age, reader.
    Flows(cli::flows::FlowsArgs),
    /// Remove what a crashed `steer run` left behind (pinned program and maps, NIC snapshot).
    Restore(cli::restore::RestoreArgs),
    /// Build a veth lab in fresh namespaces and show steer against no steering; `lab bench`
    /// adds the kernel's RPS/RFS and writes results.
    Lab(cli::lab::LabArgs),
}

/// `--seed -1` is a bad value for `--seed`, not an unknown option "-1".
fn negative_numbers_are_values(c: clap::Command) -> clap::Command {
    c.allow_negative_numbers(true).mut_subcommands(negative_numbers_are_values)
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp(None)
        .init();
    let parsed =
        negative_numbers_are_values(Cli::command()).try_get_matches().and_then(|m| Cli::from_arg_matches(&m));
    let cli = match parsed {
        Ok(c) => c,
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            eprintln!("Error: {}", one_line(&e));
            return ExitCode::from(2);
        }
    };
    let res = match cli.cmd {
        Cmd::Run(a) => cli::tokio_rt().and_then(|rt| rt.block_on(cli::run::run(a))),
        Cmd::Hash(a) => cli::hash::run(a),
        Cmd::Stats(a) => cli::tokio_rt().and_then(|rt| rt.block_on(cli::stats::run(a))),
        Cmd::Nic(c) => cli::nic::run(c),
        Cmd::Flows(a) => cli::flows::run(a),
        Cmd::Restore(a) => cli::restore::run(a),
        Cmd::Lab(a) => cli::lab::run(a),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {}", chain_once(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes in one line, each cause once: most of steer's
/// errors already include their cause in their own text.
fn chain_once(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}
