//! `steer`: spread a receive path over CPUs with XDP + CPUMAP.

use std::{net::SocketAddr, time::Duration};

use anyhow::{bail, Context as _, Result};
use clap::{
    parser::ValueSource, ArgMatches, Args, CommandFactory as _, FromArgMatches as _, Parser, Subcommand,
};
use steer::{
    config::{HashArg, HashSettings, RunOptions, XdpMode, DEFAULT_QSIZE, DEFAULT_TABLE_SIZE},
    cpus, iface,
    loader::{Attached, Steering},
    pins,
    rfs::{self, Mode},
    settings, stats,
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
    /// Per-CPU rates: steer's counters, softirq and softnet (without a steer run: softirq and softnet only).
    Stats(StatsArgs),
    /// Show, plan, apply or restore NIC and kernel knobs: channels, coalescing, offloads, RSS table,
    /// IRQ affinity, RPS/RFS/XPS.
    #[command(subcommand)]
    Nic(NicCmd),
    /// Show the RFS flow table of a `steer run --mode rfs`: flow, CPU, age, reader.
    Flows(FlowsArgs),
    /// Remove what a crashed `steer run` left behind (pinned program and maps, NIC snapshot).
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
    #[arg(long, required_unless_present = "config")]
    iface: Option<String>,
    #[command(flatten)]
    steer: SteerArgs,
    /// Per-CPU CPUMAP queue size in frames.
    #[arg(long, default_value_t = DEFAULT_QSIZE)]
    qsize: u32,
    /// XDP attach mode.
    #[arg(long, value_enum, default_value_t = XdpMode::Auto)]
    xdp_mode: XdpMode,
    /// Take the interface's XDP program off for the run (put back on exit), and take over
    /// from a crashed earlier steer run.
    #[arg(long)]
    replace: bool,
    /// Seconds between two rate tables.
    #[arg(long, default_value_t = 1.0)]
    interval: f64,
    /// Print nothing periodically (only start/stop messages).
    #[arg(long)]
    quiet: bool,
    #[command(flatten)]
    nic: NicRunArgs,
    // --- stats hook-in: metrics ---
    /// Serve Prometheus/OpenMetrics text at http://ADDR/metrics. ADDR is PORT, IP or
    /// IP:PORT; without an IP it listens on 127.0.0.1 only. Default: off.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<String>,
    // --- stats hook-in: config file ---
    /// TOML file with any of these options (keys are the long option names:
    /// `cpus = "2-7"`, `table-size = 512`); options given here override it.
    /// SIGHUP re-reads it and applies CPU set, hash and table changes live.
    #[arg(long, value_name = "FILE")]
    config: Option<std::path::PathBuf>,
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

// --- stats hook-in: config file ---
/// The `run` options the user typed, as a [`settings::Partial`] that wins over the file.
fn cli_partial(a: &RunArgs, m: &ArgMatches) -> settings::Partial {
    let given = |id: &str| m.value_source(id) == Some(ValueSource::CommandLine);
    let name = |v: Option<clap::builder::PossibleValue>| v.map(|p| p.get_name().to_string());
    settings::Partial {
        iface: a.iface.clone(),
        cpus: a.steer.cpus.clone().map(settings::CpuList::Text),
        hash: given("hash").then(|| name(clap::ValueEnum::to_possible_value(&a.steer.hash))).flatten(),
        key: a.steer.key.clone(),
        seed: given("seed").then_some(a.steer.seed),
        symmetric: given("symmetric").then_some(a.steer.symmetric),
        table_size: given("table_size").then_some(a.steer.table_size),
        qsize: given("qsize").then_some(a.qsize),
        xdp_mode: given("xdp_mode").then(|| name(clap::ValueEnum::to_possible_value(&a.xdp_mode))).flatten(),
        replace: given("replace").then_some(a.replace),
        interval: given("interval").then_some(a.interval),
        quiet: given("quiet").then_some(a.quiet),
        metrics: a.metrics.clone(),
    }
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
    /// Interface whose `steer run` to read (works without one: softirq/softnet only).
    #[arg(long)]
    iface: String,
    /// Seconds between two tables (rates are over this interval).
    #[arg(long, default_value_t = 1.0)]
    interval: f64,
    /// Print one interval and exit (for scripts).
    #[arg(long)]
    once: bool,
    /// One JSON object per interval (one per line) instead of the table.
    #[arg(long)]
    json: bool,
}

fn main() -> Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp(None)
        .init();
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let run_matches = matches.subcommand_matches("run").cloned().unwrap_or_default();
    match cli.cmd {
        Cmd::Hash(a) => hash(a),
        Cmd::Restore { iface } => restore(&iface),
        Cmd::Run(a) => tokio_rt()?.block_on(run(a, &run_matches)),
        Cmd::Stats(a) => tokio_rt()?.block_on(stats(a)),
        Cmd::Nic(c) => nic_cmd(c),
        Cmd::Flows(a) => flows(a),
        Cmd::Lab(a) => lab_cmd::run(a),
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
    if let Some(pid) = pins::live_owner(iface).or_else(|| steer::nic::state::live_owner(iface)) {
        bail!("steer (pid {pid}) is still running on \"{iface}\": stop it with SIGTERM, it restores on exit");
    }
    // nic (issue 4): the NIC snapshot first; it shares /run/steer/IF with the run file.
    let nic_restored = nic_restore(iface)?;
    let removed = pins::remove(iface)?;
    if removed.is_empty() && !nic_restored {
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

async fn run(a: RunArgs, m: &ArgMatches) -> Result<()> {
    // nic (issue 4): --engine kernel configures the kernel's RPS/RFS/XPS instead of XDP.
    if a.nic.engine == Engine::Kernel {
        return run_kernel(a).await;
    }
    // --- stats hook-in: config file (command line over file over defaults) ---
    let cli = cli_partial(&a, m);
    let file = match &a.config {
        Some(path) => settings::Partial::load(path)?,
        None => settings::Partial::default(),
    };
    let mut run_settings = settings::RunSettings::merge(&cli, &file)?;
    let reloader = a.config.clone().map(|path| settings::Reloader { path, cli });
    let s = &run_settings;
    let period = interval(s.interval)?;
    let rfs_settings = rfs::RfsSettings::from_args(a.mode, a.flow_entries, a.migrate_idle_us)?;
    let opts =
        RunOptions::new(&s.iface, s.hash_settings()?.with_rfs(rfs_settings), s.qsize, s.xdp_mode, s.replace)?;
    let mut sighup = signal(SignalKind::hangup())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    // --- stats hook-in: capabilities (named, before anything is loaded) ---
    steer::caps::require(&steer::caps::RUN)?;
    // --- stats hook-in: metrics (bound before attaching: a busy port changes nothing) ---
    let metrics = match &run_settings.metrics {
        Some(m) => Some(steer::metrics::bind(steer::metrics::parse_addr(m)?).await?),
        None => None,
    };
    let nic_guard = NicGuard::start(&opts.iface, a.nic.profile, None, run_settings.quiet)?; // nic (issue 4): --profile
    let mut steering = Steering::start(&opts)?;
    // --- stats hook-in: cpumap drop counters (optional: stats work without them) ---
    if let Err(e) = stats::cpumap::watch(&mut steering.ebpf, &opts.iface) {
        log::warn!("cpumap drops will not be counted: {e}");
    }
    let _metrics_task = match metrics {
        Some(listener) => {
            log::info!("metrics at http://{}/metrics", listener.local_addr()?);
            let registry = steer::metrics::registry(&opts.iface)?;
            Some(tokio::spawn(steer::metrics::serve(listener, registry)))
        }
        None => None,
    };
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
    let mut opts = opts;
    let mut signals = Signals { term: &mut sigterm, int: &mut sigint, hup: &mut sighup };
    let result =
        monitor(&mut steering, &mut opts, &mut run_settings, reloader.as_ref(), period, &mut signals).await;
    let nic_restored = nic_guard.finish(); // nic (issue 4)
    let stopped = steering.stop();
    log::info!("detached from {} and removed the pins", opts.iface);
    result.and(stopped.map_err(Into::into)).and(nic_restored)
}

/// Prints a rate table every `period` until SIGINT/SIGTERM, and watches for
/// the two veth traps of native mode (see [`VethWatch`]).
async fn monitor(
    steering: &mut Steering,
    opts: &mut RunOptions,
    current: &mut settings::RunSettings,
    reloader: Option<&settings::Reloader>,
    period: Duration,
    sig: &mut Signals<'_>,
) -> Result<()> {
    let first = steering.snapshot()?;
    let mut watch = VethWatch::new(steering, opts, &first);
    // The same table as `steer stats`, read through the pins this run made.
    let mut source = stats::Source::open(&opts.iface)?;
    let mut prev = source.sample()?;
    let mut ticker = tokio::time::interval(period);
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = sig.term.recv() => return Ok(()),
            _ = sig.int.recv() => return Ok(()),
            _ = sig.hup.recv() => {
                // --- stats hook-in: SIGHUP reload ---
                if let Some(new_period) = reload(steering, opts, current, reloader) {
                    ticker = tokio::time::interval(new_period);
                    ticker.tick().await;
                }
                continue;
            }
            _ = ticker.tick() => {}
        }
        let now = steering.snapshot()?;
        if opts.hash.rfs.is_some() {
            // RFS records sockets by local address: follow address changes on the interface.
            rfs::refresh_local_addrs(&mut steering.ebpf, &opts.iface)?;
        }
        if let Some(w) = watch.as_mut() {
            w.check(&opts.iface, &steering.driver, &now);
        }
        let sample = source.sample()?;
        if !current.quiet {
            println!("{}", stats::render_table(&stats::Report::new(&opts.iface, &prev, &sample)));
        }
        prev = sample;
    }
}

/// Native XDP on a veth has two traps, each warned about once:
/// - packets the device receives that the program never sees (frames that do
///   not arrive as xdp_frames bypass native XDP on some kernels);
/// - TCP from the peer namespace losing CHECKSUM_PARTIAL on its way through the
///   CPUMAP, so the receiver drops it as `Tcp: InCsumErrors` (measured on 6.18).
struct VethWatch {
    start: stats::Snapshot,
    rx0: Option<u64>,
    csum0: Option<u64>,
    warned_rx: bool,
    warned_csum: bool,
}

impl VethWatch {
    fn new(steering: &Steering, opts: &RunOptions, now: &stats::Snapshot) -> Option<Self> {
        (steering.mode == Attached::Native && steering.driver == "veth").then(|| Self {
            start: now.clone(),
            rx0: iface::rx_packets(&opts.iface).ok(),
            csum0: iface::tcp_in_csum_errors().ok(),
            warned_rx: false,
            warned_csum: false,
        })
    }

    fn check(&mut self, ifname: &str, driver: &str, now: &stats::Snapshot) {
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

// --- stats hook-in: SIGHUP reload ---
struct Signals<'a> {
    term: &'a mut tokio::signal::unix::Signal,
    int: &'a mut tokio::signal::unix::Signal,
    hup: &'a mut tokio::signal::unix::Signal,
}

/// Re-reads the config file and applies it to the live maps. Any error is
/// logged and the running configuration stays. Returns the new table period
/// when it changed.
fn reload(
    steering: &mut Steering,
    opts: &mut RunOptions,
    current: &mut settings::RunSettings,
    reloader: Option<&settings::Reloader>,
) -> Option<Duration> {
    let Some(r) = reloader else {
        log::warn!("SIGHUP ignored: steer run was started without --config");
        return None;
    };
    let (new, hash) = match r.reload(current) {
        Ok(v) => v,
        Err(e) => {
            log::error!("SIGHUP: keeping the running configuration: {e}");
            return None;
        }
    };
    // RFS settings come from the command line only: keep the running ones.
    let hash = hash.with_rfs(opts.hash.rfs);
    if let Err(e) = steering.reconfigure(&hash) {
        log::error!("SIGHUP: applying {}: {e}; keeping the running configuration", r.path.display());
        // Put the running configuration back in every map (reconfigure adds queues first).
        if let Err(e) = steering.reconfigure(&opts.hash) {
            log::error!("SIGHUP: restoring the running configuration failed too: {e}");
        }
        return None;
    }
    log::info!(
        "SIGHUP: reloaded {}: CPUs {} with {:?} hash over {} buckets",
        r.path.display(),
        cpus::format_list(&hash.cpus),
        hash.kind,
        hash.table_size
    );
    let changed = (new.interval != current.interval).then(|| Duration::from_secs_f64(new.interval));
    opts.hash = hash;
    *current = new;
    changed
}

async fn stats(a: StatsArgs) -> Result<()> {
    use std::io::{IsTerminal as _, Write as _};
    let period = interval(a.interval)?;
    steer::mounts::ensure_bpffs()?;
    let mut source = stats::Source::open(&a.iface)?;
    let tty = std::io::stdout().is_terminal() && !a.json;
    let mut prev = source.sample()?;
    let mut ticker = tokio::time::interval(period);
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = ticker.tick() => {}
        }
        let now = source.sample()?;
        let report = stats::Report::new(&a.iface, &prev, &now);
        let mut out = std::io::stdout().lock();
        if a.json {
            writeln!(out, "{}", serde_json::to_string(&report)?)?;
        } else if tty {
            // Home and clear: redraw in place, like top.
            write!(out, "\x1b[H\x1b[2J{}", stats::render_table(&report))?;
        } else {
            writeln!(out, "{}", stats::render_table(&report))?;
        }
        out.flush()?;
        if a.once {
            return Ok(());
        }
        prev = now;
    }
}

// ---------------------------------------------------------------------------
// nic (issue 4): `steer nic show|plan|apply|restore`, `run --engine kernel`, `run --profile`.
// ---------------------------------------------------------------------------

use steer::nic::{self, plan::Request, Profile};

/// How `steer run` spreads the receive path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Engine {
    /// steer's XDP program and CPUMAP.
    Xdp,
    /// The kernel's own RPS (rps_cpus on every rx queue), RFS (rps_sock_flow_entries, rps_flow_cnt)
    /// and XPS, restored on exit.
    Kernel,
}

#[derive(Args)]
struct NicRunArgs {
    /// Who steers: steer's XDP program, or the kernel's RPS/RFS/XPS configured over --cpus.
    #[arg(long, value_enum, default_value_t = Engine::Xdp)]
    engine: Engine,
    /// NIC profile applied on start and restored on exit (latency: coalescing off; throughput:
    /// adaptive coalescing, GRO on; with --engine kernel also RPS/RFS/XPS sizes).
    #[arg(long, value_enum, default_value_t = Profile::None)]
    profile: Profile,
    /// RFS table size for --engine kernel (rps_sock_flow_entries; rps_flow_cnt = N / rx queues).
    #[arg(long, default_value_t = nic::plan::DEFAULT_RFS_ENTRIES)]
    rfs_entries: u32,
}

#[derive(Subcommand)]
enum NicCmd {
    /// Print channels, coalescing, rings, offloads, RSS, IRQs, RPS/RFS/XPS and NAPI settings.
    Show {
        #[arg(long)]
        iface: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print what `apply` would change, "old → new" with the equivalent ethtool/sysfs line. Read-only.
    Plan(NicPlanArgs),
    /// Snapshot to /run/steer/IF/nic.json, then apply the plan (rolled back if a step fails).
    Apply(NicPlanArgs),
    /// Put back exactly what the snapshot holds, and remove it.
    Restore {
        #[arg(long)]
        iface: String,
    },
}

#[derive(Args)]
struct NicPlanArgs {
    #[arg(long)]
    iface: String,
    /// A named set of knobs; explicit options below override it.
    #[arg(long, value_enum, default_value_t = Profile::None)]
    profile: Profile,
    /// Queue count (ethtool -L: combined N, or rx N tx N where the driver has no combined channels).
    #[arg(long)]
    channels: Option<u32>,
    /// Coalescing, ethtool -C names: "rx-usecs=0,rx-frames=1,adaptive-rx=off".
    #[arg(long)]
    coalesce: Option<String>,
    /// Spread the RSS indirection table equally over the first N rx queues (ethtool -X equal N).
    #[arg(long)]
    rss_equal: Option<u32>,
    /// Pin the interface's IRQs round-robin to these CPUs ("0-3").
    #[arg(long)]
    irq_cpus: Option<String>,
    /// RPS CPUs for every rx queue ("0-3", or "none" to turn RPS off).
    #[arg(long)]
    rps_cpus: Option<String>,
    /// RFS: rps_sock_flow_entries = N, rps_flow_cnt = N / rx queues.
    #[arg(long)]
    rfs_entries: Option<u32>,
    /// XPS: each tx queue to one CPU of the RPS set, round-robin.
    #[arg(long)]
    xps: bool,
    /// Offloads, ethtool -K names: "gro=on,lro=off,tso=on,gso=on,rx=on,tx=on,rx-udp-gro-forwarding=on".
    #[arg(long)]
    offload: Option<String>,
    /// Keep the CPUs that take the interface's interrupts out of the RPS set.
    #[arg(long)]
    exclude_irq_cpus: bool,
    /// Print the plan as JSON.
    #[arg(long)]
    json: bool,
}

impl NicPlanArgs {
    fn request(&self) -> Result<Request> {
        let online = cpus::online()?;
        Ok(Request {
            profile: self.profile,
            channels: self.channels,
            coalesce: self
                .coalesce
                .as_deref()
                .map(nic::plan::parse_coalesce)
                .transpose()?
                .unwrap_or_default(),
            rss_equal: self.rss_equal,
            irq_cpus: self.irq_cpus.as_deref().map(|s| nic::plan::parse_cpus(s, &online)).transpose()?,
            rps_cpus: self.rps_cpus.as_deref().map(|s| nic::plan::parse_cpus(s, &online)).transpose()?,
            rfs_entries: self.rfs_entries,
            xps: self.xps,
            offload: self.offload.as_deref().map(nic::plan::parse_offload).transpose()?.unwrap_or_default(),
            exclude_irq_cpus: self.exclude_irq_cpus,
            nic_only: false,
        })
    }
}

fn nic_cmd(c: NicCmd) -> Result<()> {
    match c {
        NicCmd::Show { iface, json } => {
            let info = nic::show::read(&iface)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&info)?);
            } else {
                print!("{}", nic::show::render(&info));
            }
        }
        NicCmd::Plan(a) => {
            let plan = nic::plan::plan(&a.iface, &a.request()?)?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&plan)?);
            } else {
                print!("{}", plan.render());
            }
        }
        NicCmd::Apply(a) => {
            let plan = nic::plan::plan(&a.iface, &a.request()?)?;
            print!("{}", plan.render());
            let applied = nic::state::apply(&plan, None)?;
            for s in &applied.skipped {
                println!("skipped (driver {}): {s}", plan.driver);
            }
            println!(
                "applied {} step(s); snapshot at {} (undo: steer nic restore --iface {})",
                applied.done,
                nic::state::state_file(&a.iface).display(),
                a.iface
            );
        }
        NicCmd::Restore { iface } => {
            if let Some(pid) = nic::state::live_owner(&iface) {
                bail!("steer (pid {pid}) owns the NIC snapshot of \"{iface}\": stop it with SIGTERM, it restores on exit");
            }
            if !nic_restore(&iface)? {
                println!("no NIC snapshot for {iface}: nothing to restore");
            }
        }
    }
    Ok(())
}

/// Restores the NIC snapshot of `iface` if there is one; says what it put back.
fn nic_restore(iface: &str) -> Result<bool> {
    let Some(done) = nic::state::restore(iface)? else {
        return Ok(false);
    };
    for d in &done {
        println!("restored {d}");
    }
    println!("restored the NIC snapshot of {iface} ({} value(s) put back)", done.len());
    Ok(true)
}

/// A plan applied for the life of `steer run`: restored by `finish`, or on drop
/// if the run fails on its way.
struct NicGuard {
    iface: Option<String>,
}

impl NicGuard {
    fn start(iface: &str, profile: Profile, kernel: Option<Request>, quiet: bool) -> Result<Self> {
        let req = match kernel {
            Some(r) => r,
            None if profile == Profile::None => return Ok(Self { iface: None }),
            // With the XDP engine, the profile changes the NIC only; steering is XDP's.
            None => Request { profile, nic_only: true, ..Default::default() },
        };
        let plan = nic::plan::plan(iface, &req)?;
        if !quiet {
            print!("{}", plan.render());
        }
        let applied = nic::state::apply(&plan, Some(std::process::id()))?;
        for s in &applied.skipped {
            log::warn!("skipped (driver {}): {s}", plan.driver);
        }
        log::info!(
            "applied {} NIC step(s) on {iface}; snapshot at {}",
            applied.done,
            nic::state::state_file(iface).display()
        );
        Ok(Self { iface: Some(iface.to_string()) })
    }

    fn finish(mut self) -> Result<()> {
        match self.iface.take() {
            Some(i) => {
                let done = nic::state::restore(&i)?;
                log::info!("restored {} NIC value(s) on {i}", done.map_or(0, |d| d.len()));
                Ok(())
            }
            None => Ok(()),
        }
    }
}

impl Drop for NicGuard {
    fn drop(&mut self) {
        if let Some(i) = self.iface.take() {
            if let Err(e) = nic::state::restore(&i) {
                log::error!("restoring the NIC settings of {i}: {e}");
            }
        }
    }
}

/// `steer run --engine kernel`: RPS over --cpus on every rx queue, RFS and
/// XPS, until SIGINT/SIGTERM; then everything is put back.
async fn run_kernel(a: RunArgs) -> Result<()> {
    let ifname = a.iface.clone().context("--iface is required with --engine kernel")?;
    let period = interval(a.interval)?;
    let cpu_set = cpus::resolve(a.steer.cpus.as_deref())?;
    if let Some(pid) = pins::live_owner(&ifname) {
        bail!("steer (pid {pid}) is steering \"{}\" with XDP: stop it first", ifname);
    }
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let req = Request {
        profile: a.nic.profile,
        rps_cpus: Some(cpu_set.clone()),
        rfs_entries: Some(a.nic.rfs_entries),
        xps: true,
        ..Default::default()
    };
    let guard = NicGuard::start(&ifname, a.nic.profile, Some(req), a.quiet)?;
    log::info!(
        "kernel RPS/RFS/XPS on {} over CPUs {} (rps_sock_flow_entries {}); restored on exit",
        ifname,
        cpus::format_list(&cpu_set),
        a.nic.rfs_entries
    );
    let mut prev = softnet_processed();
    let mut ticker = tokio::time::interval(period);
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            _ = ticker.tick() => {}
        }
        let now = softnet_processed();
        if !a.quiet {
            let per: Vec<String> = cpu_set
                .iter()
                .map(|&c| {
                    let d = now
                        .get(c as usize)
                        .copied()
                        .unwrap_or(0)
                        .saturating_sub(prev.get(c as usize).copied().unwrap_or(0));
                    format!("cpu{c} {:.0} pps", d as f64 / period.as_secs_f64())
                })
                .collect();
            println!("softnet processed: {}", per.join("  "));
        }
        prev = now;
    }
    guard.finish()
}

/// The per-CPU "processed" column of /proc/net/softnet_stat (packets the
/// CPU's softirq took from its backlog or a NAPI poll).
fn softnet_processed() -> Vec<u64> {
    std::fs::read_to_string("/proc/net/softnet_stat")
        .unwrap_or_default()
        .lines()
        .map(|l| l.split_whitespace().next().and_then(|h| u64::from_str_radix(h, 16).ok()).unwrap_or(0))
        .collect()
}
