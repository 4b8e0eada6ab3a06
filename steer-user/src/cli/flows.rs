//! `steer flows`: the RFS flow table of a `steer run --mode rfs`: TCP flows and
//! connected UDP flows, each with its protocol.

use anyhow::Result;
use clap::Args;
use steer::rfs;

#[derive(Args)]
pub struct FlowsArgs {
    /// Interface a `steer run --mode rfs` is attached to.
    #[arg(long, value_parser = steer::iface::parse_name)]
    iface: String,
    /// Show the N busiest flows only (0: all).
    #[arg(long, default_value_t = 0)]
    top: usize,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(a: FlowsArgs) -> Result<()> {
    let pinned = rfs::PinnedFlows::open(&a.iface)?;
    let entries = pinned.views()?;
    let counters = pinned.counters()?;
    let rows = rfs::rows(&entries, rfs::now_ns(), a.top);
    if a.json {
        println!("{}", rfs::to_json(&rows, entries.len(), &counters));
    } else {
        print!("{}", rfs::render(&rows, entries.len(), &counters));
    }
    Ok(())
}
