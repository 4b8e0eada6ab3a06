//! `steer`: spread a receive path over CPUs with XDP + CPUMAP.

use std::{net::SocketAddr, time::Duration};

use anyhow::{bail, Context as _, Result};
use clap::{Args, Parser, Subcommand};
use steer::{
    config::{HashArg, HashSettings, RunOptions, XdpMode, DEFAULT_QSIZE, DEFAULT_TABLE_SIZE},
    cpus, iface,
    loader::{Attached, Steering},
    pins,
    stats::{self, Snapshot},
};
use steer_common::{
    tuple::{IPPROTO_TCP, IPPROTO_UDP},
    Tuple,
};
use tokio::signal::unix::{signal, SignalKind};

// hook-in (issue 6, branch bench): the `steer lab` subcommand lives in lab_cmd.rs.
mod lab_cmd;

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
    Hash(HashArgs),
    /// Print the per-CPU counters of a running `steer run` on an interface.
    Stats(StatsArgs),
    /// Remove what a crashed `steer run` left behind (pinned program and maps).
    Restore {
        #[arg(long)]
        iface: String,
    },
    // hook-in (issue 6, branch bench).
    /// Build a veth lab in fresh namespaces and show steer against no steering; `lab bench`
    /// adds the kernel's RPS/RFS and writes results.
    Lab(lab_cmd::LabArgs),
}

/// How flows map to CPUs: shared by `run` and `hash` so both agree.
#[derive(Args, Clone)]
struct SteerArgs {
    /// CPUs to steer to, as a list ("0-3,6"). Default: every online CPU.
    #[arg(long)]
    cpus: Option<String>,
    /// Flow hash.
    #[arg(long, value_enum, default_value_t = HashArg::Fast)]
    hash: HashArg,
    /// Toeplitz key, 40 bytes in hex ("6d:5a:..." as `ethtool -x` prints, colons optional).
    /// Default: the Microsoft RSS key most NICs use.
    #[arg(long)]
    key: Option<String>,
    /// Seed of the fast hash.
    #[arg(long, default_value_t = 0)]
    seed: u32,
    /// Hash both directions of a connection alike (load balancers, conntrack).
    #[arg(long)]
    symmetric: bool,
    /// Buckets in the indirection table (power of two).
    #[arg(long, default_value_t = DEFAULT_TABLE_SIZE)]
    table_size: u32,
}

impl SteerArgs {
    fn settings(&self) -> Result<HashSettings> {
        let cpus = cpus::resolve(self.cpus.as_deref())?;
        Ok(HashSettings::new(
            self.hash,
            self.key.as_deref(),
            self.seed,
            self.symmetric,
            self.table_size,
            cpus,
        )?)
    }
}

#[derive(Args)]
struct RunArgs {
    /// Interface to steer the receive path of.
    #[arg(long)]
    iface: String,
    #[command(flatten)]
    steer: SteerArgs,
    /// Per-CPU CPUMAP queue size in frames.
    #[arg(long, default_value_t = DEFAULT_QSIZE)]
    qsize: u32,
    /// XDP attach mode.
    #[arg(long, value_enum, default_value_t = XdpMode::Auto)]
    xdp_mode: XdpMode,
    /// Remove the leftovers of an earlier steer run on this interface first.
    #[arg(long)]
    replace: bool,
    /// Seconds between two rate tables.
    #[arg(long, default_value_t = 1.0)]
    interval: f64,
    /// Print nothing periodically (only start/stop messages).
    #[arg(long)]
    quiet: bool,
}

#[derive(Args)]
struct HashArgs {
    /// Source, as IP:PORT ("[2001:db8::1]:80" for IPv6).
    #[arg(long)]
    src: SocketAddr,
    /// Destination, as IP:PORT.
    #[arg(long)]
    dst: SocketAddr,
    #[arg(long, value_parser = ["tcp", "udp"], default_value = "tcp")]
    proto: String,
    #[command(flatten)]
    steer: SteerArgs,
    /// Hash as a fragment would be hashed (addresses only).
    #[arg(long)]
    fragment: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct StatsArgs {
    #[arg(long)]
    iface: String,
    /// Seconds between two tables.
    #[arg(long, default_value_t = 1.0)]
    interval: f64,
    /// Print one table of totals and exit.
    #[arg(long)]
    once: bool,
}

fn main() -> Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp(None)
        .init();
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Hash(a) => hash(a),
        Cmd::Restore { iface } => restore(&iface),
        Cmd::Run(a) => tokio_rt()?.block_on(run(a)),
        Cmd::Stats(a) => tokio_rt()?.block_on(stats(a)),
        Cmd::Lab(a) => lab_cmd::run(a),
    }
}

fn tokio_rt() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the tokio runtime")
}

fn hash(a: HashArgs) -> Result<()> {
    let settings = a.steer.settings()?;
    let proto = if a.proto == "udp" { IPPROTO_UDP } else { IPPROTO_TCP };
    let mut t = Tuple::new(a.src.ip(), a.src.port(), a.dst.ip(), a.dst.port(), proto)
        .context("--src and --dst must both be IPv4 or both IPv6")?;
    if a.fragment {
        t = t.without_ports();
    }
    let c = settings.choose(&t);
    if a.json {
        println!("{}", serde_json::to_string(&c)?);
    } else {
        println!("hash 0x{:08x} bucket {} cpu {}", c.hash, c.bucket, c.cpu);
    }
    Ok(())
}

fn restore(iface: &str) -> Result<()> {
    if let Some(pid) = pins::live_owner(iface) {
        bail!("steer (pid {pid}) is still running on \"{iface}\": stop it with SIGTERM, it restores on exit");
    }
    let removed = pins::remove(iface)?;
    if removed.is_empty() {
        println!("nothing to restore on {iface}");
    } else {
        for r in removed {
            println!("removed {r}");
        }
    }
    Ok(())
}

fn interval(secs: f64) -> Result<Duration> {
    if !(0.05..=3600.0).contains(&secs) {
        bail!("invalid --interval {secs}: must be between 0.05 and 3600 seconds");
    }
    Ok(Duration::from_secs_f64(secs))
}

async fn run(a: RunArgs) -> Result<()> {
    let period = interval(a.interval)?;
    let settings = a.steer.settings()?;
    let opts = RunOptions::new(&a.iface, settings, a.qsize, a.xdp_mode, a.replace)?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let steering = Steering::start(&opts)?;
    log::info!(
        "steering {} ({}, {} XDP) to CPUs {} with {:?} hash over {} buckets; pinned at {}",
        opts.iface,
        steering.driver,
        match steering.mode {
            Attached::Native => "native",
            Attached::Generic => "generic",
        },
        cpus::format_list(&opts.hash.cpus),
        opts.hash.kind,
        opts.hash.table_size,
        steering.pin_dir().display()
    );
    let result = monitor(&steering, &opts, period, a.quiet, &mut sigterm, &mut sigint).await;
    let stopped = steering.stop();
    log::info!("detached from {} and removed the pins", opts.iface);
    result.and(stopped.map_err(Into::into))
}

/// Prints a rate table every `period` until SIGINT/SIGTERM, and watches for
/// the two veth traps of native mode (see [`VethWatch`]).
async fn monitor(
    steering: &Steering,
    opts: &RunOptions,
    period: Duration,
    quiet: bool,
    sigterm: &mut tokio::signal::unix::Signal,
    sigint: &mut tokio::signal::unix::Signal,
) -> Result<()> {
    let mut prev = steering.snapshot()?;
    let mut watch = VethWatch::new(steering, opts, &prev);
    let mut ticker = tokio::time::interval(period);
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = sigterm.recv() => return Ok(()),
            _ = sigint.recv() => return Ok(()),
            _ = ticker.tick() => {}
        }
        let now = steering.snapshot()?;
        if let Some(w) = watch.as_mut() {
            w.check(&opts.iface, &steering.driver, &now);
        }
        if !quiet {
            let delta = now.since(&prev);
            let secs = now.at.duration_since(prev.at).as_secs_f64();
            println!("{}", stats::render(&delta, secs, &opts.hash.cpus));
        }
        prev = now;
    }
}

/// Native XDP on a veth has two traps, each warned about once:
/// - packets the device receives that the program never sees (frames that do
///   not arrive as xdp_frames bypass native XDP on some kernels);
/// - TCP from the peer namespace losing CHECKSUM_PARTIAL on its way through the
///   CPUMAP, so the receiver drops it as `Tcp: InCsumErrors` (measured on 6.18).
struct VethWatch {
    start: Snapshot,
    rx0: Option<u64>,
    csum0: Option<u64>,
    warned_rx: bool,
    warned_csum: bool,
}

impl VethWatch {
    fn new(steering: &Steering, opts: &RunOptions, now: &Snapshot) -> Option<Self> {
        (steering.mode == Attached::Native && steering.driver == "veth").then(|| Self {
            start: now.clone(),
            rx0: iface::rx_packets(&opts.iface).ok(),
            csum0: iface::tcp_in_csum_errors().ok(),
            warned_rx: false,
            warned_csum: false,
        })
    }

    fn check(&mut self, ifname: &str, driver: &str, now: &Snapshot) {
        if let (false, Some(rx0), Ok(rx)) = (self.warned_rx, self.rx0, iface::rx_packets(ifname)) {
            let rx = rx.saturating_sub(rx0);
            let seen = now.since(&self.start).total().seen;
            if rx >= 100 && seen < rx / 2 {
                self.warned_rx = true;
                log::warn!(
                    "{ifname} received {rx} packets but the native XDP program saw only {seen}: on {driver} \
                     native XDP runs only on frames redirected into the device. Use --xdp-mode skb to steer \
                     socket traffic."
                );
            }
        }
        if let (false, Some(c0), Ok(c)) = (self.warned_csum, self.csum0, iface::tcp_in_csum_errors()) {
            if c > c0 {
                self.warned_csum = true;
                log::warn!(
                    "Tcp InCsumErrors grew by {} since steer attached natively to veth {ifname}: TCP from the \
                     peer namespace loses its partial checksum through the CPUMAP. Use --xdp-mode skb for \
                     socket traffic on veth (or turn tx checksumming off on the peer).",
                    c - c0
                );
            }
        }
    }
}

async fn stats(a: StatsArgs) -> Result<()> {
    let period = interval(a.interval)?;
    steer::mounts::ensure_bpffs()?;
    let pinned = pins::Pinned::open(&a.iface)?;
    let read = || Snapshot::read(&pinned.stats, &pinned.targets);
    let first = read()?;
    if a.once {
        let zero = Snapshot {
            at: first.at,
            per_cpu: vec![Default::default(); first.per_cpu.len()],
            steered_in: vec![0; first.steered_in.len()],
        };
        // Totals since the program was attached (a "rate" over one second).
        println!("{}", stats::render(&first.since(&zero), 1.0, &[]).replace(" pps", "    "));
        return Ok(());
    }
    let mut prev = first;
    let mut ticker = tokio::time::interval(period);
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = ticker.tick() => {}
        }
        let now = read()?;
        let secs = now.at.duration_since(prev.at).as_secs_f64();
        println!("{}", stats::render(&now.since(&prev), secs, &[]));
        prev = now;
    }
}
