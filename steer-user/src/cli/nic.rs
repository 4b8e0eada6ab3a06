//! `steer nic show|plan|apply|restore`: the NIC and kernel knobs, read, planned,
//! applied with a snapshot, and put back.

use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use steer::{
    cpus,
    nic::{self, plan::Request, Profile},
};

#[derive(Subcommand)]
pub enum NicCmd {
    /// Print channels, coalescing, rings, offloads, RSS, IRQs, RPS/RFS/XPS and NAPI settings.
    Show {
        #[arg(long, value_parser = steer::iface::parse_name)]
        iface: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print what `apply` would change, "old → new" with the equivalent ethtool/sysfs line. Read-only.
    Plan(NicPlanArgs),
    /// Snapshot to /run/steer/netN/ifI/nic.json, then apply the plan (rolled back if a step fails).
    Apply(NicPlanArgs),
    /// Put back exactly what the snapshot holds, and remove it.
    Restore {
        #[arg(long, value_parser = steer::iface::parse_name)]
        iface: String,
    },
}

#[derive(Args)]
pub struct NicPlanArgs {
    #[arg(long, value_parser = steer::iface::parse_name)]
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

pub fn run(c: NicCmd) -> Result<()> {
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
                nic::state::state_file(&a.iface)?.display(),
                a.iface
            );
        }
        NicCmd::Restore { iface } => {
            if let Some(pid) = nic::state::live_owner(&iface) {
                bail!("steer (pid {pid}) owns the NIC snapshot of \"{iface}\": stop it with SIGTERM, it restores on exit");
            }
            if !super::restore::nic_snapshot(&iface)? {
                println!("no NIC snapshot for {iface}: nothing to restore");
            }
        }
    }
    Ok(())
}
