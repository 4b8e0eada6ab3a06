//! `steer hash`: the hash, bucket and CPU the XDP program chooses for a flow.

use std::net::SocketAddr;

use anyhow::{Context as _, Result};
use clap::Args;
use steer::options::HashOpts;
use steer_common::{
    tuple::{IPPROTO_TCP, IPPROTO_UDP},
    Tuple,
};

#[derive(Args)]
pub struct HashArgs {
    /// Source, as IP:PORT ("[2001:db8::1]:80" for IPv6).
    #[arg(long)]
    src: SocketAddr,
    /// Destination, as IP:PORT.
    #[arg(long)]
    dst: SocketAddr,
    #[arg(long, value_parser = ["tcp", "udp"], default_value = "tcp")]
    proto: String,
    #[command(flatten)]
    steer: HashOpts,
    /// Hash as a fragment would be hashed (addresses only).
    #[arg(long)]
    fragment: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(a: HashArgs) -> Result<()> {
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
