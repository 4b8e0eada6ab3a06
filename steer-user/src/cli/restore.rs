//! `steer restore`: remove what a crashed `steer run` left behind (pinned
//! program and maps, the NIC snapshot), for the interface of this network
//! namespace only.

use anyhow::{bail, Result};
use clap::Args;
use steer::{iface, nic, pins::RunId};

#[derive(Args)]
pub struct RestoreArgs {
    #[arg(long, value_parser = iface::parse_name)]
    iface: String,
}

pub fn run(a: RestoreArgs) -> Result<()> {
    let iface = a.iface.as_str();
    let Some(id) = RunId::find(iface)? else {
        println!("nothing to restore on {iface}");
        return Ok(());
    };
    if let Some(pid) = id.live_owner().or_else(|| nic::state::live_owner(iface)) {
        bail!("steer (pid {pid}) is still running on \"{iface}\": stop it with SIGTERM, it restores on exit");
    }
    if let Some(link) = unseen_live_link(&id) {
        bail!(
            "steer's XDP link {link} on \"{iface}\" is still attached, pinned in a bpffs this process does not \
             see (`ip netns exec` mounts a fresh /sys): run `nsenter --net=/run/netns/NS steer restore --iface \
             {iface}`, which keeps the host's /sys/fs/bpf, or mount the bpffs that holds {}",
            id.pin_dir().display()
        );
    }
    // The NIC snapshot first: it shares the run's state directory with the run file.
    let nic_restored = nic_snapshot(iface)?;
    let removed = id.remove()?;
    if removed.is_empty() && !nic_restored {
        println!("nothing to restore on {iface}");
    } else {
        for r in removed {
            println!("removed {r}");
        }
    }
    Ok(())
}

/// The recorded link of a dead run that still exists although its pins are not visible here.
fn unseen_live_link(id: &RunId) -> Option<u32> {
    if id.has_link() {
        return None;
    }
    let link = id.read_run()?.link_id?;
    aya::programs::loaded_links().filter_map(|l| l.ok()).any(|l| l.id() == link).then_some(link)
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
