//! `steer run`: the options (file, then command line) validated once, then
//! either engine: steer's XDP program, or the kernel's own RPS/RFS/XPS. Both
//! print the `steer stats` table, serve `--metrics`, stop on SIGINT/SIGTERM
//! and put back everything they changed.

mod veth;

use std::time::Duration;

use super::{Event, Signals};
use anyhow::Result;
use steer::{
    cpus,
    loader::{Attached, Steering},
    nic::{guard::NicGuard, plan::Request},
    options::{
        file::{self, Reloader},
        EngineRun, Run, RunArgs,
    },
    pins,
    rebalance::{self, Rebalancer},
    rfs, stats,
};

/// `cli` as parsed from the command line; its `--config` file is merged under it.
pub async fn run(cli: RunArgs) -> Result<()> {
    let args = file::merge(cli.config.as_deref(), &cli)?;
    let run = args.validate()?;
    let mut signals = Signals::new()?;
    if matches!(run.engine, EngineRun::Xdp(_)) {
        // Named before anything is loaded.
        steer::caps::require(&steer::caps::RUN)?;
    }
    // Bound before anything changes: a busy port changes nothing.
    let metrics = match run.metrics {
        Some(addr) => Some(steer::metrics::bind(addr).await?),
        None => None,
    };
    match run.engine.clone() {
        EngineRun::Kernel { cpus, rfs_entries } => {
            kernel(&run, &cpus, rfs_entries, metrics, &mut signals).await
        }
        EngineRun::Xdp(opts) => {
            let guard = NicGuard::start(&run.iface, run.profile, None, run.quiet)?;
            let mut steering = Steering::start(&opts)?;
            // The skbs cpumap builds go through netif_receive_skb: kernel RPS would steer them a second time.
            for (q, on) in steer::nic::sysfs::rps_on(&run.iface) {
                log::warn!(
                    "kernel RPS is on for {} rx-{q} (CPUs {}): what steer redirects may be steered again by RPS; \
                     `steer nic apply --iface {} --rps-cpus none` turns it off (`steer nic restore` puts it back)",
                    run.iface,
                    cpus::format_list(&on),
                    run.iface
                );
            }
            let _metrics = serve_metrics(metrics, &run.iface)?;
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
            let reloader = cli.config.clone().map(|path| Reloader { path, cli });
            let rebalancer = match run.rebalance {
                Some(s) => Some(start_rebalancer(&steering, s)?),
                None => None,
            };
            let mut live = Live { steering: &mut steering, opts, args, reloader, rebalancer };
            let result = live.monitor(run.period, run.quiet, &mut signals).await;
            let iface = live.opts.iface.clone();
            let restored = guard.finish();
            let stopped = steering.stop();
            log::info!("detached from {iface} and removed the pins");
            result.and(stopped.map_err(Into::into)).and(restored.map_err(Into::into))
        }
    }
}

/// Serves `--metrics` on the bound listener for the life of the run.
fn serve_metrics(
    listener: Option<tokio::net::TcpListener>,
    iface: &str,
) -> Result<Option<tokio::task::JoinHandle<()>>> {
    let Some(listener) = listener else {
        return Ok(None);
    };
    log::info!("metrics at http://{}/metrics", listener.local_addr()?);
    let registry = steer::metrics::registry(iface)?;
    Ok(Some(tokio::spawn(steer::metrics::serve(listener, registry))))
}

/// The `steer stats` table, printed every tick from the same source.
struct Table {
    iface: String,
    source: stats::Source,
    prev: stats::Sample,
}

impl Table {
    fn open(iface: &str) -> Result<Self> {
        let mut source = stats::Source::open(iface)?;
        let prev = source.sample()?;
        Ok(Self { iface: iface.to_string(), source, prev })
    }

    fn tick(&mut self, quiet: bool) -> Result<()> {
        let sample = self.source.sample()?;
        if !quiet {
            println!("{}", stats::render_table(&stats::Report::new(&self.iface, &self.prev, &sample)));
        }
        self.prev = sample;
        Ok(())
    }
}

async fn ticker(period: Duration) -> tokio::time::Interval {
    let mut t = tokio::time::interval(period);
    t.tick().await;
    t
}

/// The balancer's ticker: a late tick is skipped, never made up in a burst.
async fn rebalance_ticker(r: &Option<Rebalancer>) -> Option<tokio::time::Interval> {
    let r = r.as_ref()?;
    let mut t = ticker(r.settings.interval).await;
    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    Some(t)
}

/// Waits for the next tick of `t`, or forever without one.
async fn maybe_tick(t: &mut Option<tokio::time::Interval>) {
    match t {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}

fn start_rebalancer(steering: &Steering, s: rebalance::Settings) -> Result<Rebalancer> {
    log::info!(
        "rebalancing every {} ms while max/mean per-CPU load > {:.2}, at most {} buckets moving",
        s.interval.as_millis(),
        s.threshold,
        s.max_moves
    );
    Ok(Rebalancer::new(rebalance::Maps::of(&steering.ebpf)?, s))
}

/// A running XDP steering and what SIGHUP may change in it.
struct Live<'a> {
    steering: &'a mut Steering,
    opts: steer::config::RunOptions,
    args: RunArgs,
    reloader: Option<Reloader>,
    /// `--rebalance`: stepped on its own ticker, in this task, so a reload never races it.
    rebalancer: Option<Rebalancer>,
}

impl Live<'_> {
    /// Prints the table every `period` until SIGINT/SIGTERM, follows the
    /// interface's addresses for RFS, ages out idle UDP flows, and watches for the veth traps.
    async fn monitor(&mut self, period: Duration, mut quiet: bool, sig: &mut Signals) -> Result<()> {
        let first = self.steering.snapshot()?;
        let mut watch = veth::Watch::new(self.steering, &self.opts, &first);
        // The same table as `steer stats`, read through the pins this run made.
        let mut table = Table::open(&self.opts.iface)?;
        let mut sweep = self.opts.hash.rfs.map(|r| rfs::UdpSweep::new(r.udp_timeout_s));
        let mut ticker = ticker(period).await;
        let mut rb_ticker = rebalance_ticker(&self.rebalancer).await;
        loop {
            let event = tokio::select! {
                e = sig.next(&mut ticker) => e,
                _ = maybe_tick(&mut rb_ticker) => {
                    if let Some(Err(e)) = self.rebalancer.as_mut().map(|r| r.step(&self.opts.hash.cpus)) {
                        log::error!("rebalance: {e}");
                    }
                    continue;
                }
            };
            match event {
                Event::Stop => return Ok(()),
                Event::Reload => {
                    let rb_before = self.rebalancer.as_ref().map(|r| r.settings.interval);
                    if let Some(new_period) = self.reload() {
                        ticker = self::ticker(new_period).await;
                    }
                    if self.rebalancer.as_ref().map(|r| r.settings.interval) != rb_before {
                        rb_ticker = rebalance_ticker(&self.rebalancer).await;
                    }
                    quiet = self.args.quiet.unwrap_or(false);
                    continue;
                }
                Event::Tick => {}
            }
            if steer::iface::index(&self.opts.iface).ok() != Some(self.opts.ifindex) {
                anyhow::bail!(
                    "interface \"{}\" (index {}) disappeared: stopped steering it and removed its pins and state",
                    self.opts.iface,
                    self.opts.ifindex
                );
            }
            let now = self.steering.snapshot()?;
            if self.opts.hash.rfs.is_some() {
                // RFS records sockets by local address: follow address changes on the interface.
                rfs::refresh_local_addrs(&mut self.steering.ebpf, &self.opts.iface)?;
            }
            if let Some(s) = sweep.as_mut() {
                // UDP has no close event: idle UDP entries age out.
                s.tick(&mut self.steering.ebpf)?;
            }
            if let Some(w) = watch.as_mut() {
                w.check(&self.opts.iface, &self.steering.driver, &now);
            }
            table.tick(quiet)?;
        }
    }

    /// Re-reads the config file and applies it to the live maps. Any error is
    /// logged and the running configuration stays. Returns the new table period
    /// when it changed.
    fn reload(&mut self) -> Option<Duration> {
        let Some(r) = &self.reloader else {
            log::warn!("SIGHUP ignored: steer run was started without --config");
            return None;
        };
        let (new, hash) = match r.reload(&self.args) {
            Ok(v) => v,
            Err(e) => {
                log::error!("SIGHUP: keeping the running configuration: {e}");
                return None;
            }
        };
        // RFS settings and the idle time need a restart: keep the running ones.
        let hash = hash.with_rfs(self.opts.hash.rfs).with_move_idle_us(self.opts.hash.move_idle_us);
        let rebalance = match new.rebalance_settings() {
            Ok(r) => r,
            Err(e) => {
                log::error!("SIGHUP: keeping the running configuration: {e}");
                return None;
            }
        };
        // Rewriting an unchanged table would put every moved bucket back at once, idle or not.
        let same = hash.steer_config() == self.opts.hash.steer_config()
            && hash.cpus == self.opts.hash.cpus
            && hash.key == self.opts.hash.key;
        if same {
            log::info!("SIGHUP: hash settings and CPUs unchanged: the table stays as it is");
        } else if let Err(e) = self.steering.reconfigure(&hash) {
            log::error!("SIGHUP: applying {}: {e}; keeping the running configuration", r.path.display());
            // Put the running configuration back in every map (reconfigure adds queues first).
            if let Err(e) = self.steering.reconfigure(&self.opts.hash) {
                log::error!("SIGHUP: restoring the running configuration failed too: {e}");
            }
            return None;
        }
        match (rebalance, self.rebalancer.as_mut()) {
            (None, _) => self.rebalancer = None,
            (Some(s), Some(r)) => {
                r.settings = s;
                if !same {
                    r.reset();
                }
            }
            (Some(s), None) => match start_rebalancer(self.steering, s) {
                Ok(r) => self.rebalancer = Some(r),
                Err(e) => log::error!("SIGHUP: starting the balancer: {e}"),
            },
        }
        log::info!(
            "SIGHUP: reloaded {}: CPUs {} with {:?} hash over {} buckets",
            r.path.display(),
            cpus::format_list(&hash.cpus),
            hash.kind,
            hash.table_size
        );
        let changed = (new.interval != self.args.interval)
            .then(|| Duration::from_secs_f64(new.interval.unwrap_or(1.0)));
        self.opts.hash = hash;
        self.args = new;
        changed
    }
}

/// `--engine kernel`: RPS over the CPUs on every rx queue, RFS and XPS, until
/// SIGINT/SIGTERM; then everything is put back.
async fn kernel(
    run: &Run,
    cpu_set: &[u32],
    rfs_entries: u32,
    metrics: Option<tokio::net::TcpListener>,
    sig: &mut Signals,
) -> Result<()> {
    if let Some(pid) = pins::RunId::of(&run.iface)?.live_owner() {
        anyhow::bail!("steer (pid {pid}) is steering \"{}\" with XDP: stop it first", run.iface);
    }
    let req = Request {
        profile: run.profile,
        rps_cpus: Some(cpu_set.to_vec()),
        rfs_entries: Some(rfs_entries),
        xps: true,
        ..Default::default()
    };
    let guard = NicGuard::start(&run.iface, run.profile, Some(req), run.quiet)?;
    let table = if steer::nic::sysfs::in_initial_netns() {
        format!("rps_sock_flow_entries {rfs_entries}")
    } else {
        "the global RFS table is the host's".to_string()
    };
    log::info!(
        "kernel RPS/RFS/XPS on {} over CPUs {} ({table}); restored on exit",
        run.iface,
        cpus::format_list(cpu_set),
    );
    let _metrics = serve_metrics(metrics, &run.iface)?;
    let mut table = Table::open(&run.iface)?;
    let mut ticker = ticker(run.period).await;
    loop {
        match sig.next(&mut ticker).await {
            Event::Stop => break,
            Event::Reload => log::warn!("SIGHUP ignored: --engine kernel applies its settings at start"),
            Event::Tick => table.tick(run.quiet)?,
        }
    }
    Ok(guard.finish()?)
}
