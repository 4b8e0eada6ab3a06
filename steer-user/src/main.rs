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
    pins, settings, stats,
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
    /// Remove the leftovers of an earlier steer run on this interface first.
    #[arg(long)]
    replace: bool,
    /// Seconds between two rate tables.
    #[arg(long, default_value_t = 1.0)]
    interval: f64,
    /// Print nothing periodically (only start/stop messages).
    #[arg(long)]
    quiet: bool,
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

async fn run(a: RunArgs, m: &ArgMatches) -> Result<()> {
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
    let opts = RunOptions::new(&s.iface, s.hash_settings()?, s.qsize, s.xdp_mode, s.replace)?;
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
    let stopped = steering.stop();
    log::info!("detached from {} and removed the pins", opts.iface);
    result.and(stopped.map_err(Into::into))
}

/// Prints a rate table every `period` until SIGINT/SIGTERM, and watches for
/// the veth trap: native XDP there only sees frames redirected into the veth,
/// not the socket traffic of the peer namespace.
async fn monitor(
    steering: &mut Steering,
    opts: &mut RunOptions,
    current: &mut settings::RunSettings,
    reloader: Option<&settings::Reloader>,
    period: Duration,
    sig: &mut Signals<'_>,
) -> Result<()> {
    let mut prev = steering.snapshot()?;
    let start = prev.clone();
    let rx_start = iface::rx_packets(&opts.iface).ok();
    let mut warned = false;
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
        if !current.quiet {
            let delta = now.since(&prev);
            let secs = now.at.duration_since(prev.at).as_secs_f64();
            println!("{}", stats::render(&delta, secs, &opts.hash.cpus));
        }
        prev = now;
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
