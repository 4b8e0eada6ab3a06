//! `steer`: spread a receive path over CPUs with XDP + CPUMAP.

use std::{net::SocketAddr, time::Duration};

use anyhow::{bail, Context as _, Result};
use clap::{Args, Parser, Subcommand};
use steer::{
    config::{HashArg, HashSettings, RunOptions, XdpMode, DEFAULT_QSIZE, DEFAULT_TABLE_SIZE},
    cpus, iface,
    loader::{Attached, Steering},
    pins,
    rfs::{self, Mode},
    stats::{self, Snapshot},
};
use steer_common::{
    tuple::{IPPROTO_TCP, IPPROTO_UDP},
    Tuple,
};
use tokio::signal::unix::{signal, SignalKind};

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
    /// Show the RFS flow table of a `steer run --mode rfs`: flow, CPU, age, reader.
    Flows(FlowsArgs),
    /// Remove what a crashed `steer run` left behind (pinned program and maps).
    Restore {
        #[arg(long)]
        iface: String,
    },
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
    /// rss: flow hash picks the CPU. rfs: the CPU where the application reads the flow
    /// (recorded by socket tracepoints), the hash for flows not seen yet.
    #[arg(long, value_enum, default_value_t = Mode::Rss)]
    mode: Mode,
    /// RFS flow table size (LRU; the kernel's rps_sock_flow_entries). Default 65536.
    #[arg(long)]
    flow_entries: Option<u32>,
    /// RFS: move a flow to its reader's new CPU only after this many microseconds
    /// without a packet, so no packet overtakes another. Default 500.
    #[arg(long)]
    migrate_idle_us: Option<u32>,
}

#[derive(Args)]
struct FlowsArgs {
    /// Interface a `steer run --mode rfs` is attached to.
    #[arg(long)]
    iface: String,
    /// Show the N busiest flows only (0: all).
    #[arg(long, default_value_t = 0)]
    top: usize,
    /// Print JSON.
    #[arg(long)]
    json: bool,
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
        Cmd::Flows(a) => flows(a),
    }
}

fn flows(a: FlowsArgs) -> Result<()> {
    steer::mounts::ensure_bpffs()?;
    let pinned = rfs::PinnedFlows::open(&a.iface)?;
    let entries = rfs::entries(&pinned.flows);
    let counters = rfs::counters(&pinned.stats)?;
    let rows = rfs::rows(&entries, rfs::now_ns(), a.top);
    if a.json {
        println!("{}", rfs::to_json(&rows, entries.len(), &counters));
    } else {
        print!("{}", rfs::render(&rows, entries.len(), &counters));
    }
    Ok(())
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
    let settings =
        a.steer.settings()?.with_rfs(rfs::RfsSettings::from_args(a.mode, a.flow_entries, a.migrate_idle_us)?);
    let opts = RunOptions::new(&a.iface, settings, a.qsize, a.xdp_mode, a.replace)?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut steering = Steering::start(&opts)?;
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
    let result = monitor(&mut steering, &opts, period, a.quiet, &mut sigterm, &mut sigint).await;
    let stopped = steering.stop();
    log::info!("detached from {} and removed the pins", opts.iface);
    result.and(stopped.map_err(Into::into))
}

/// Prints a rate table every `period` until SIGINT/SIGTERM, and watches for
/// the veth trap: native XDP there only sees frames redirected into the veth,
/// not the socket traffic of the peer namespace.
async fn monitor(
    steering: &mut Steering,
    opts: &RunOptions,
    period: Duration,
    quiet: bool,
    sigterm: &mut tokio::signal::unix::Signal,
    sigint: &mut tokio::signal::unix::Signal,
) -> Result<()> {
    let mut prev = steering.snapshot()?;
    let start = prev.clone();
    let rx_start = iface::rx_packets(&opts.iface).ok();
    let mut warned = false;
    let mut ticker = tokio::time::interval(period);
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = sigterm.recv() => return Ok(()),
            _ = sigint.recv() => return Ok(()),
            _ = ticker.tick() => {}
        }
        let now = steering.snapshot()?;
        if opts.hash.rfs.is_some() {
            // RFS records sockets by local address: follow address changes on the interface.
            rfs::refresh_local_addrs(&mut steering.ebpf, &opts.iface)?;
        }
        if !warned && steering.mode == Attached::Native {
            if let (Some(rx0), Ok(rx)) = (rx_start, iface::rx_packets(&opts.iface)) {
                let rx = rx.saturating_sub(rx0);
                let seen = now.since(&start).total().seen;
                if rx >= 100 && seen < rx / 2 {
                    warned = true;
                    log::warn!(
                        "{} received {rx} packets but the native XDP program saw only {seen}: on {} native XDP \
                         runs only on frames redirected into the device, not on the peer's socket traffic. \
                         Use --xdp-mode skb to steer those.",
                        opts.iface,
                        steering.driver
                    );
                }
            }
        }
        if !quiet {
            let delta = now.since(&prev);
            let secs = now.at.duration_since(prev.at).as_secs_f64();
            println!("{}", stats::render(&delta, secs, &opts.hash.cpus));
            if opts.hash.rfs.is_some() {
                println!("{}", rfs::summary(&steering.ebpf)?);
            }
        }
        prev = now;
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
