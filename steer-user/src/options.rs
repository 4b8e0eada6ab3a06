//! The options of `steer run`: one type, [`RunArgs`], for the command line and
//! the config file alike.
//!
//! A config file is TOML whose keys are the long option names. It is not
//! deserialized on its own: each `key = value` becomes `--key=value` and the
//! whole file goes through the same clap parser as the command line, so both
//! accept exactly the same options, with the same checks and the same errors.
//! Command line over file: the file's arguments come first, the command line's
//! after them, and clap keeps the last value of an option.
//!
//! [`RunArgs::validate`] then turns the merged options into what the loader
//! (or, with `--engine kernel`, the NIC layer) takes, refusing options that do
//! not apply to the chosen engine or mode instead of ignoring them.

pub mod file;

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, FromArgMatches as _};

use crate::{
    config::{HashArg, HashSettings, LocalPass, RunOptions, Spread, XdpMode, DEFAULT_TABLE_SIZE},
    cpus,
    error::{Error, Result},
    inner::InnerSettings,
    metrics,
    nic::{self, Profile},
    rebalance,
    rfs::{Mode, RfsSettings},
};

/// Bounds of `--interval`, in seconds.
const INTERVAL_RANGE: std::ops::RangeInclusive<f64> = 0.05..=3600.0;

/// Who spreads the receive path.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    /// steer's XDP program and CPUMAP.
    #[default]
    Xdp,
    /// The kernel's own RPS (rps_cpus on every rx queue), RFS (rps_sock_flow_entries, rps_flow_cnt)
    /// and XPS, restored on exit.
    Kernel,
}

/// How flows map to CPUs: shared by `steer run` and `steer hash`, so both
/// compute the same thing.
#[derive(Args, Clone, Debug, Default, PartialEq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct HashOpts {
    /// CPUs to steer to, as a list ("0-3,6"). [default: every online CPU]
    #[arg(long)]
    pub cpus: Option<String>,
    /// Flow hash. [default: fast]
    #[arg(long, value_enum)]
    pub hash: Option<HashArg>,
    /// Toeplitz key, 40 bytes in hex ("6d:5a:..." as `ethtool -x` prints, colons optional).
    /// [default: the Microsoft RSS key most NICs use]
    #[arg(long)]
    pub key: Option<String>,
    /// Seed of the fast hash. [default: 0]
    #[arg(long)]
    pub seed: Option<u32>,
    /// Hash both directions of a connection alike (load balancers, conntrack).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL")]
    pub symmetric: Option<bool>,
    /// Buckets in the indirection table (power of two). [default: 256]
    #[arg(long)]
    pub table_size: Option<u32>,
    /// Tunnels hashed on their inner flow: auto (ipip, gre, vxlan, geneve, gtpu), off, or a
    /// comma list of those names. [default: auto]
    #[arg(long, value_name = "LIST")]
    pub inner: Option<String>,
    /// More UDP tunnels, by destination port: "PORT=KIND,..." with KIND vxlan, geneve, gtpu,
    /// fou or gue (e.g. "8472=vxlan,5555=fou"). [default: none]
    #[arg(long, value_name = "LIST")]
    pub inner_udp_ports: Option<String>,
}

impl HashOpts {
    /// The validated hash settings (CPU list checked against the online CPUs).
    pub fn settings(&self) -> Result<HashSettings> {
        let cpus = cpus::resolve(self.cpus.as_deref())?;
        Ok(HashSettings::new(
            self.hash.unwrap_or(HashArg::Fast),
            self.key.as_deref(),
            self.seed.unwrap_or(0),
            self.symmetric.unwrap_or(false),
            self.table_size.unwrap_or(DEFAULT_TABLE_SIZE),
            cpus,
        )?
        .with_inner(InnerSettings::new(self.inner.as_deref(), self.inner_udp_ports.as_deref())?))
    }
}

/// Every `steer run` option. Each is optional so that "not given" can be told
/// from "given the default": the file and the command line merge option by
/// option, and an option that does not apply is refused only when given.
/// Serialized as a TOML table, an option not given is simply absent.
#[derive(Args, Clone, Debug, Default, PartialEq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct RunArgs {
    /// Interface to steer the receive path of.
    #[arg(long, value_parser = crate::iface::parse_name)]
    pub iface: Option<String>,
    #[command(flatten)]
    #[serde(flatten)]
    pub hash: HashOpts,
    /// Per-CPU CPUMAP queue size in frames. [default: 4096]
    #[arg(long)]
    pub qsize: Option<u32>,
    /// XDP attach mode. [default: auto]
    #[arg(long, value_enum)]
    pub xdp_mode: Option<XdpMode>,
    /// Pass a packet steered to the CPU it arrived on in place instead of through that CPU's own
    /// queue: on = always (a NIC: each flow arrives on one CPU); drained = only while nothing is
    /// queued for that CPU; auto = on in native mode on a NIC, drained on a native veth, off on
    /// TAP and in generic mode (where one flow's packets arrive on several CPUs at once and one
    /// passed in place could overtake one queued). [default: auto]
    #[arg(long, value_enum)]
    pub local_pass: Option<LocalPass>,
    /// When a CPU hands the packets it receives to their flows' CPUs: always = every packet;
    /// busy = only where that pays: to every CPU while a NAPI poll on it uses its whole budget,
    /// to the CPUs that idle while it does not, to none while it idles itself; what it does not
    /// hand on it processes itself, as without steering, wherever --local-pass may pass in place.
    /// [default: busy]
    #[arg(long, value_enum)]
    pub spread: Option<Spread>,
    /// Take the interface's XDP program off for the run (put back on exit), and take over
    /// from a crashed earlier steer run.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL")]
    pub replace: Option<bool>,
    /// rss: flow hash picks the CPU. rfs: the CPU where the application reads the flow
    /// (TCP and connected UDP sockets, recorded by socket tracepoints), the hash for flows
    /// not seen yet. [default: rss]
    #[arg(long, value_enum)]
    pub mode: Option<Mode>,
    /// RFS flow table size (LRU; the kernel's rps_sock_flow_entries). [default: 65536]
    #[arg(long)]
    pub flow_entries: Option<u32>,
    /// RFS: move a flow to its reader's new CPU only after this many microseconds
    /// without a packet, so no packet overtakes another; --rebalance: the same for a bucket
    /// (which also waits for the old CPU's queue to drain past it). [default: 500]
    #[arg(long)]
    pub migrate_idle_us: Option<u32>,
    /// RFS: a UDP flow's entry goes after this many seconds without a read or a packet
    /// (UDP has no close). [default: 30]
    #[arg(long)]
    pub udp_timeout_s: Option<u32>,
    /// Move indirection-table buckets from the busiest CPUs to the idlest by measured load,
    /// each only after --migrate-idle-us without a packet (no reordering). [default: off]
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL")]
    pub rebalance: Option<bool>,
    /// --rebalance: milliseconds between two decisions. [default: 100]
    #[arg(long, value_name = "MS")]
    pub rebalance_interval: Option<u32>,
    /// --rebalance: act while max/mean of per-CPU load is above this. [default: 1.10]
    #[arg(long, value_name = "RATIO")]
    pub rebalance_threshold: Option<f64>,
    /// --rebalance: buckets moving at once at most (the bound on moves per interval). [default: 16]
    #[arg(long, value_name = "N")]
    pub rebalance_moves: Option<u32>,
    /// Who steers: steer's XDP program, or the kernel's RPS/RFS/XPS configured over --cpus.
    /// [default: xdp]
    #[arg(long, value_enum)]
    pub engine: Option<Engine>,
    /// NIC profile applied on start and restored on exit (latency: coalescing off; throughput:
    /// adaptive coalescing, GRO on; with --engine kernel also RPS/RFS/XPS sizes). [default: none]
    #[arg(long, value_enum)]
    pub profile: Option<Profile>,
    /// RFS table size for --engine kernel (rps_sock_flow_entries; rps_flow_cnt = N / rx queues).
    /// [default: 32768]
    #[arg(long)]
    pub rfs_entries: Option<u32>,
    /// Serve Prometheus/OpenMetrics text at http://ADDR/metrics. ADDR is PORT, IP or
    /// IP:PORT; without an IP it listens on 127.0.0.1 only. [default: off]
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<String>,
    /// Seconds between two rate tables. [default: 1]
    #[arg(long)]
    pub interval: Option<f64>,
    /// Print nothing periodically (only start/stop messages).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL")]
    pub quiet: Option<bool>,
    /// TOML file with any of these options (keys are the long option names:
    /// `cpus = "2-7"`, `table-size = 512`, `mode = "rfs"`); options given here override it.
    /// SIGHUP re-reads it and applies CPU set, hash and table changes live.
    #[arg(long, value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
}

/// What a validated `steer run` does.
#[derive(Clone, Debug)]
pub struct Run {
    pub iface: String,
    pub engine: EngineRun,
    pub profile: Profile,
    pub period: Duration,
    pub quiet: bool,
    pub metrics: Option<SocketAddr>,
    /// `--rebalance` and its settings; `None` when off.
    pub rebalance: Option<rebalance::Settings>,
}

/// The engine and its validated settings.
#[derive(Clone, Debug)]
pub enum EngineRun {
    /// steer's XDP program: what the loader takes.
    Xdp(RunOptions),
    /// The kernel's RPS/RFS/XPS over `cpus`.
    Kernel { cpus: Vec<u32>, rfs_entries: u32 },
}

/// Options that only `--engine xdp` uses, by their long names.
const XDP_ONLY: &[&str] = &[
    "hash",
    "key",
    "seed",
    "symmetric",
    "table-size",
    "inner",
    "inner-udp-ports",
    "qsize",
    "xdp-mode",
    "local-pass",
    "spread",
    "replace",
    "mode",
    "flow-entries",
    "migrate-idle-us",
    "udp-timeout-s",
    "rebalance",
    "rebalance-interval",
    "rebalance-threshold",
    "rebalance-moves",
];

/// Options that only `--rebalance` uses.
const REBALANCE_ONLY: &[&str] = &["rebalance-interval", "rebalance-threshold", "rebalance-moves"];

/// Options a running `steer run` applies on SIGHUP; the others need a restart.
pub const LIVE: &[&str] = &[
    "cpus",
    "hash",
    "key",
    "seed",
    "symmetric",
    "table-size",
    "inner",
    "inner-udp-ports",
    "spread",
    "interval",
    "quiet",
    "rebalance",
    "rebalance-interval",
    "rebalance-threshold",
    "rebalance-moves",
];

/// The clap command of `steer run` alone, for parsing a merged argument list.
/// `args_override_self`: an option given twice (file, then command line) keeps the last value.
pub fn command() -> clap::Command {
    RunArgs::augment_args(clap::Command::new("steer run"))
        .no_binary_name(true)
        .args_override_self(true)
        .allow_negative_numbers(true)
}

/// Long names of every option of `steer run`, `config` excepted: the keys a config file takes.
pub fn keys() -> Vec<String> {
    command()
        .get_arguments()
        .filter_map(|a| a.get_long().map(str::to_string))
        .filter(|l| l != "config")
        .collect()
}

impl RunArgs {
    /// Parses `--key=value` arguments with the command line's own parser.
    pub fn parse_args(args: &[String]) -> std::result::Result<Self, clap::Error> {
        let m = command().try_get_matches_from(args)?;
        Self::from_arg_matches(&m)
    }

    /// The options as `--key=value` arguments (what the file's keys become).
    pub fn to_args(&self) -> Vec<String> {
        file::table_to_args(&self.to_table()).unwrap_or_default()
    }

    /// The options given, as a TOML table keyed by long option name.
    pub fn to_table(&self) -> toml::Table {
        toml::Table::try_from(self).unwrap_or_default()
    }

    /// Long names of the options given.
    fn given(&self) -> Vec<String> {
        self.to_table().keys().cloned().collect()
    }

    /// `--rebalance` and its options, checked; `None` when off. Its options
    /// without it are refused, not ignored.
    pub fn rebalance_settings(&self) -> Result<Option<rebalance::Settings>> {
        if self.rebalance != Some(true) {
            if let Some(k) = self.given().into_iter().find(|k| REBALANCE_ONLY.contains(&k.as_str())) {
                return Err(Error::NotApplicable { option: k, why: "applies with --rebalance only".into() });
            }
            return Ok(None);
        }
        rebalance::Settings::new(self.rebalance_interval, self.rebalance_threshold, self.rebalance_moves)
            .map(Some)
    }

    /// Checks every option and what it applies to; nothing on the system is touched.
    pub fn validate(&self) -> Result<Run> {
        let iface = self.iface.clone().ok_or_else(|| Error::BadValue {
            what: "--iface",
            value: "(none)".into(),
            why: "pass --iface IF or set iface = \"IF\" in the config file".into(),
        })?;
        let secs = self.interval.unwrap_or(1.0);
        if !INTERVAL_RANGE.contains(&secs) {
            return Err(Error::BadValue {
                what: "--interval",
                value: secs.to_string(),
                why: "must be between 0.05 and 3600 seconds".into(),
            });
        }
        let metrics = self.metrics.as_deref().map(metrics::parse_addr).transpose()?;
        let engine = match self.engine.unwrap_or_default() {
            Engine::Kernel => {
                if let Some(k) = self.given().into_iter().find(|k| XDP_ONLY.contains(&k.as_str())) {
                    return Err(Error::NotApplicable {
                        option: k,
                        why: "applies to --engine xdp only".into(),
                    });
                }
                EngineRun::Kernel {
                    cpus: cpus::resolve(self.hash.cpus.as_deref())?,
                    rfs_entries: self.rfs_entries.unwrap_or(nic::plan::DEFAULT_RFS_ENTRIES),
                }
            }
            Engine::Xdp => {
                if self.rfs_entries.is_some() {
                    return Err(Error::NotApplicable {
                        option: "rfs-entries".into(),
                        why: "applies to --engine kernel only (steer's own RFS: --mode rfs --flow-entries N)"
                            .into(),
                    });
                }
                let mode = self.mode.unwrap_or(Mode::Rss);
                // Without RFS, --migrate-idle-us is the idle time of bucket moves.
                let moves_only = mode == Mode::Rss && self.rebalance == Some(true);
                let rfs = RfsSettings::from_args(
                    mode,
                    self.flow_entries,
                    if moves_only { None } else { self.migrate_idle_us },
                    self.udp_timeout_s,
                )?;
                let move_idle_us = match moves_only {
                    // Checked with the same bounds as for RFS.
                    true => Some(
                        RfsSettings::new(
                            steer_common::flow::DEFAULT_FLOW_ENTRIES,
                            self.migrate_idle_us.unwrap_or(rebalance::DEFAULT_MOVE_IDLE_US),
                        )?
                        .migrate_idle_us,
                    ),
                    false => None,
                };
                EngineRun::Xdp(RunOptions::new(
                    &iface,
                    self.hash
                        .settings()?
                        .with_rfs(rfs)
                        .with_move_idle_us(move_idle_us)
                        .with_spread(self.spread.unwrap_or_default()),
                    self.qsize.unwrap_or(crate::config::DEFAULT_QSIZE),
                    self.xdp_mode.unwrap_or(XdpMode::Auto),
                    self.replace.unwrap_or(false),
                    self.local_pass.unwrap_or(LocalPass::Auto),
                )?)
            }
        };
        Ok(Run {
            iface,
            engine,
            profile: self.profile.unwrap_or_default(),
            period: Duration::from_secs_f64(secs),
            quiet: self.quiet.unwrap_or(false),
            metrics,
            rebalance: self.rebalance_settings()?,
        })
    }

    /// The long names of restart-only options whose value differs in `new`.
    pub fn restart_only_changes(&self, new: &Self) -> Vec<String> {
        let (a, b) = (self.to_table(), new.to_table());
        let mut keys: Vec<&String> =
            a.keys().chain(b.keys()).filter(|k| !LIVE.contains(&k.as_str())).collect();
        keys.sort();
        keys.dedup();
        keys.into_iter()
            .filter(|k| a.get(*k) != b.get(*k))
            .map(|k| {
                let show = |v: Option<&toml::Value>| v.map_or("(default)".to_string(), |v| v.to_string());
                format!("{k}: {} -> {}", show(a.get(k)), show(b.get(k)))
            })
            .collect()
    }

    /// `self` with the live options of `new`: what a reload applies.
    pub fn with_live_part_of(&self, new: &Self) -> Result<Self> {
        let mut t = self.to_table();
        t.retain(|k, _| !LIVE.contains(&k));
        t.extend(new.to_table().into_iter().filter(|(k, _)| LIVE.contains(&k.as_str())));
        file::from_table(&t)
    }
}

#[cfg(test)]
mod tests;
