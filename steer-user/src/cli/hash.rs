//! `steer hash`: the hash, bucket and CPU the XDP program chooses for a flow,
//! and for a tunnelled flow (`--encap` with the outer endpoints) which of its
//! two flows is hashed, by the same decision the XDP program makes.

use std::net::{IpAddr, SocketAddr};

use anyhow::{bail, Context as _, Result};
use clap::Args;
use steer::{
    config::Choice,
    inner::{decide, Decision},
    options::HashOpts,
};
use steer_common::{
    tunnel::{IPPROTO_GRE, IPPROTO_IPIP, IPPROTO_IPV6},
    tuple::{IPPROTO_TCP, IPPROTO_UDP},
    Encap, Tuple,
};

#[derive(Args)]
pub struct HashArgs {
    /// Source, as IP:PORT ("[2001:db8::1]:80" for IPv6). With --encap: the inner flow's.
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
    /// The flow is carried in this tunnel: ipip, gre, vxlan, geneve, gtpu, fou or gue.
    #[arg(long, value_name = "KIND", requires_all = ["outer_src", "outer_dst"])]
    encap: Option<String>,
    /// The tunnel's outer source, IP or IP:PORT (the port matters for UDP tunnels).
    #[arg(long, value_name = "ADDR", requires = "encap")]
    outer_src: Option<String>,
    /// The tunnel's outer destination, IP or IP:PORT [default port: the tunnel's IANA port].
    #[arg(long, value_name = "ADDR", requires = "encap")]
    outer_dst: Option<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// What `steer hash --json` prints.
#[derive(serde::Serialize)]
struct Explained {
    #[serde(skip_serializing_if = "Option::is_none")]
    encap: Option<&'static str>,
    /// inner | outer | pass (with --encap); flow otherwise.
    hashed: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
    #[serde(flatten)]
    choice: Option<Choice>,
}

pub fn run(a: HashArgs) -> Result<()> {
    let settings = a.steer.settings()?;
    let proto = if a.proto == "udp" { IPPROTO_UDP } else { IPPROTO_TCP };
    let mut t = Tuple::new(a.src.ip(), a.src.port(), a.dst.ip(), a.dst.port(), proto)
        .context("--src and --dst must both be IPv4 or both IPv6")?;
    if a.fragment {
        t = t.without_ports();
    }
    let Some(kind) = a.encap.as_deref() else {
        let c = settings.choose(&t);
        return print(a.json, &Explained { encap: None, hashed: "flow", reason: None, choice: Some(c) }, &[]);
    };
    let encap = Encap::ALL.into_iter().find(|e| e.name() == kind).with_context(|| {
        format!("--encap \"{kind}\" is not one of ipip, gre, vxlan, geneve, gtpu, fou, gue")
    })?;
    let (osrc, sport) = endpoint("--outer-src", a.outer_src.as_deref().unwrap_or_default(), None)?;
    let (odst, dport) =
        endpoint("--outer-dst", a.outer_dst.as_deref().unwrap_or_default(), encap.default_port())?;
    let outer_proto = match encap {
        Encap::Gre => IPPROTO_GRE,
        Encap::Ipip if t.family == 4 => IPPROTO_IPIP,
        Encap::Ipip => IPPROTO_IPV6,
        _ => IPPROTO_UDP,
    };
    let mut outer = Tuple::new(osrc, sport.unwrap_or(0), odst, dport.unwrap_or(0), outer_proto)
        .context("--outer-src and --outer-dst must both be IPv4 or both IPv6")?;
    if !encap.is_udp() {
        outer = outer.without_ports();
    } else if dport.is_none() {
        bail!(
            "--outer-dst \"{}\" needs a port: {} has no standard one",
            a.outer_dst.unwrap_or_default(),
            encap.name()
        );
    }
    let cfg = settings.steer_config();
    let lines = [
        format!(
            "outer {} -> {} {}, {}",
            show(&outer, osrc),
            show_dst(&outer, odst),
            proto_name(outer_proto),
            encap.name()
        ),
        format!("inner {} -> {} {}", a.src, a.dst, a.proto),
        format!("--inner: {}", settings.inner.describe()),
    ];
    let e = match decide(&cfg, encap, dport.unwrap_or(0)) {
        Decision::Inner => Explained {
            encap: Some(encap.name()),
            hashed: "inner",
            reason: None,
            choice: Some(settings.choose(&t)),
        },
        Decision::Outer => Explained {
            encap: Some(encap.name()),
            hashed: "outer",
            reason: None,
            choice: Some(settings.choose(&outer)),
        },
        Decision::Pass(r) => {
            Explained { encap: Some(encap.name()), hashed: "pass", reason: Some(r.name()), choice: None }
        }
    };
    print(a.json, &e, &lines)
}

fn print(json: bool, e: &Explained, lines: &[String]) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(e)?);
        return Ok(());
    }
    for l in lines {
        println!("{l}");
    }
    match (e.hashed, &e.choice) {
        ("pass", _) => println!("passed unsteered ({}): --inner does not look into this tunnel", e.reason.unwrap_or("")),
        ("outer", Some(c)) => println!(
            "the outer flow is hashed (its UDP port is not a tunnel port here): hash 0x{:08x} bucket {} cpu {}",
            c.hash, c.bucket, c.cpu
        ),
        ("inner", Some(c)) => println!("the inner flow is hashed: hash 0x{:08x} bucket {} cpu {}", c.hash, c.bucket, c.cpu),
        (_, Some(c)) => println!("hash 0x{:08x} bucket {} cpu {}", c.hash, c.bucket, c.cpu),
        (_, None) => {}
    }
    Ok(())
}

/// "IP" or "IP:PORT" ("[v6]:PORT" with a port).
fn endpoint(what: &str, s: &str, default_port: Option<u16>) -> Result<(IpAddr, Option<u16>)> {
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Ok((sa.ip(), Some(sa.port())));
    }
    let ip = s.parse::<IpAddr>().with_context(|| format!("{what} \"{s}\" is not IP or IP:PORT"))?;
    Ok((ip, default_port))
}

fn show(t: &Tuple, ip: IpAddr) -> String {
    if t.has_ports != 0 {
        SocketAddr::new(ip, t.sport()).to_string()
    } else {
        ip.to_string()
    }
}

fn show_dst(t: &Tuple, ip: IpAddr) -> String {
    if t.has_ports != 0 {
        SocketAddr::new(ip, t.dport()).to_string()
    } else {
        ip.to_string()
    }
}

fn proto_name(p: u8) -> &'static str {
    match p {
        IPPROTO_GRE => "gre",
        IPPROTO_IPIP => "ipip",
        IPPROTO_IPV6 => "ipv6",
        _ => "udp",
    }
}
