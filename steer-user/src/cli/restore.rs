//! `steer restore`: remove what a crashed `steer run` left behind (pinned
//! program and maps, the NIC snapshot).

use anyhow::{bail, Result};
use clap::Args;
use steer::{nic, pins};

#[derive(Args)]
pub struct RestoreArgs {
    #[arg(long)]
    iface: String,
}

pub fn run(a: RestoreArgs) -> Result<()> {
    let iface = a.iface.as_str();
    if let Some(pid) = pins::live_owner(iface).or_else(|| nic::state::live_owner(iface)) {
        bail!("steer (pid {pid}) is still running on \"{iface}\": stop it with SIGTERM, it restores on exit");
    }
    // The NIC snapshot first: it shares the run's state directory with the run file.
    let nic_restored = nic_snapshot(iface)?;
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

/// Restores the NIC snapshot of `iface` if there is one; says what it put back.
pub fn nic_snapshot(iface: &str) -> Result<bool> {
    let Some(done) = nic::state::restore(iface)? else {
        return Ok(false);
    };
    for d in &done {
        println!("restored {d}");
    }
    println!("restored the NIC snapshot of {iface} ({} value(s) put back)", done.len());
    Ok(true)
}
