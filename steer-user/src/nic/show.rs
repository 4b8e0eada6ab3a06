//! `steer nic show`: every knob steer can plan, read-only, with what the
//! driver does not support said in words.

use std::{collections::BTreeMap, fmt::Write as _};

use serde::Serialize;

use super::{
    ethtool::{Channels, Ethtool, Feature, Rings, FEATURE_ALIASES},
    irq::{self, Irq},
    sysfs,
};
use crate::error::{Error, Result};

/// A value, or why it cannot be read ("not supported by driver veth").
#[derive(Clone, Debug, Serialize)]
#[serde(untagged)]
pub enum Probe<T> {
    Ok(T),
    Missing { unsupported: String },
}

impl<T> Probe<T> {
    fn from(r: Result<T>, driver: &str, what: &str) -> Self {
        match r {
            Ok(v) => Probe::Ok(v),
            Err(Error::NicOp { source, op, .. }) if source.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                Probe::Missing { unsupported: format!("not supported by driver {driver} ({what}: {op})") }
            }
            Err(e) => Probe::Missing { unsupported: e.to_string() },
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct RxQueue {
    pub queue: u32,
    pub rps_cpus: String,
    pub rps_flow_cnt: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct TxQueue {
    pub queue: u32,
    pub xps_cpus: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct NicInfo {
    pub iface: String,
    pub driver: String,
    pub channels: Probe<Channels>,
    pub coalesce: Probe<BTreeMap<&'static str, u32>>,
    pub rings: Probe<Rings>,
    /// ethtool's names (gro, lro, tso, gso, rx, tx, rx-udp-gro-forwarding) -> state.
    pub offloads: Probe<BTreeMap<String, Feature>>,
    pub rss_indir: Probe<Vec<u32>>,
    pub rss_key: Probe<String>,
    pub irqs: Vec<Irq>,
    pub rx_queues: Vec<RxQueue>,
    pub tx_queues: Vec<TxQueue>,
    pub rps_sock_flow_entries: Probe<u64>,
    pub threaded: Probe<String>,
    pub gro_flush_timeout: Probe<String>,
    pub napi_defer_hard_irqs: Probe<String>,
}

fn file(iface: &str, name: &str) -> Probe<String> {
    match sysfs::read(&sysfs::net_dir(iface).join(name)) {
        Ok(v) => Probe::Ok(v),
        Err(e) => Probe::Missing { unsupported: e.to_string() },
    }
}

/// Offloads under ethtool's names: a name is on when all its kernel bits the
/// device has are on, changeable when any is.
pub fn offloads(all: &BTreeMap<String, Feature>) -> BTreeMap<String, Feature> {
    let mut out = BTreeMap::new();
    for (alias, bits) in FEATURE_ALIASES {
        let have: Vec<&Feature> = bits.iter().filter_map(|b| all.get(*b)).collect();
        if have.is_empty() {
            continue;
        }
        out.insert(
            alias.to_string(),
            Feature {
                changeable: have.iter().any(|f| f.changeable),
                requested: have.iter().all(|f| f.requested),
                active: have.iter().all(|f| f.active),
            },
        );
    }
    out
}

/// Reads everything; only a missing interface or a /sys of another namespace is an error.
pub fn read(iface: &str) -> Result<NicInfo> {
    sysfs::check(iface)?;
    let e = Ethtool::open(iface)?;
    let d = e.driver.clone();
    let rx_queues = sysfs::queues(iface, "rx")
        .into_iter()
        .map(|q| {
            let f = |n| {
                sysfs::read(&sysfs::queue_file(iface, &format!("rx-{q}"), n))
                    .unwrap_or_else(|e| e.to_string())
            };
            RxQueue { queue: q, rps_cpus: f("rps_cpus"), rps_flow_cnt: f("rps_flow_cnt") }
        })
        .collect();
    let tx_queues = sysfs::queues(iface, "tx")
        .into_iter()
        .map(|q| TxQueue {
            queue: q,
            xps_cpus: sysfs::read(&sysfs::queue_file(iface, &format!("tx-{q}"), "xps_cpus"))
                .unwrap_or_else(|_| "not available (not a multiqueue device)".into()),
        })
        .collect();
    let entries = if sysfs::in_initial_netns() {
        sysfs::read(std::path::Path::new(sysfs::RPS_SOCK_FLOW_ENTRIES))
            .and_then(|s| s.parse::<u64>().map_err(|_| Error::Nic(format!("rps_sock_flow_entries \"{s}\""))))
    } else {
        // Not this namespace's value: say whose it is rather than show it as ours.
        Err(Error::Nic(match sysfs::host_rps_sock_flow_entries() {
            Ok(v) => format!("the host's: {v} (only the initial network namespace has it)"),
            Err(e) => {
                format!("the host's (only the initial network namespace has it); not readable from here: {e}")
            }
        }))
    };
    Ok(NicInfo {
        iface: iface.to_string(),
        driver: d.clone(),
        channels: Probe::from(e.channels(), &d, "channels"),
        coalesce: Probe::from(e.coalesce().map(|c| c.named()), &d, "coalescing"),
        rings: Probe::from(e.rings(), &d, "rings"),
        offloads: Probe::from(e.features().map(|f| offloads(&f)), &d, "offloads"),
        rss_indir: Probe::from(e.rss_indir(), &d, "RSS indirection table"),
        rss_key: Probe::from(
            e.rss_key().map(|k| k.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")),
            &d,
            "RSS hash key",
        ),
        irqs: irq::of(iface),
        rx_queues,
        tx_queues,
        rps_sock_flow_entries: match entries {
            Ok(v) => Probe::Ok(v),
            Err(e) => Probe::Missing { unsupported: e.to_string() },
        },
        threaded: file(iface, "threaded"),
        gro_flush_timeout: file(iface, "gro_flush_timeout"),
        napi_defer_hard_irqs: file(iface, "napi_defer_hard_irqs"),
    })
}

fn line<T>(out: &mut String, name: &str, p: &Probe<T>, f: impl Fn(&T) -> String) {
    let v = match p {
        Probe::Ok(v) => f(v),
        Probe::Missing { unsupported } => unsupported.clone(),
    };
    let _ = writeln!(out, "{name:<24}{v}");
}

/// The human table of `steer nic show`.
pub fn render(i: &NicInfo) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "{:<24}{} (driver {})", "interface", i.iface, i.driver);
    line(&mut o, "channels", &i.channels, |c| {
        format!(
            "rx {}/{} tx {}/{} other {}/{} combined {}/{} (current/max)",
            c.rx, c.max_rx, c.tx, c.max_tx, c.other, c.max_other, c.combined, c.max_combined
        )
    });
    line(&mut o, "coalescing", &i.coalesce, |c| {
        ["rx-usecs", "rx-frames", "tx-usecs", "tx-frames", "adaptive-rx", "adaptive-tx"]
            .iter()
            .map(|n| format!("{n} {}", c.get(n).copied().unwrap_or(0)))
            .collect::<Vec<_>>()
            .join(", ")
    });
    line(&mut o, "rings", &i.rings, |r| {
        format!("rx {}/{} tx {}/{} (current/max)", r.rx, r.rx_max, r.tx, r.tx_max)
    });
    line(&mut o, "offloads", &i.offloads, |f| {
        f.iter()
            .map(|(n, f)| {
                let fixed = if f.changeable { "" } else { " [fixed]" };
                format!("{n} {}{fixed}", if f.active { "on" } else { "off" })
            })
            .collect::<Vec<_>>()
            .join(", ")
    });
    line(&mut o, "rss indirection", &i.rss_indir, |t| {
        let mut q: Vec<u32> = t.clone();
        q.sort_unstable();
        q.dedup();
        format!("{} entries over queues {}", t.len(), crate::cpus::format_list(&q))
    });
    line(&mut o, "rss key", &i.rss_key, |k| if k.is_empty() { "none".into() } else { k.clone() });
    if i.irqs.is_empty() {
        let _ = writeln!(o, "{:<24}none found (software devices such as veth and tun have none)", "irqs");
    }
    for q in &i.irqs {
        let _ = writeln!(
            o,
            "{:<24}{} affinity {} (CPUs {})",
            format!("irq {}", q.irq),
            q.name,
            q.affinity,
            q.cpus
        );
    }
    for q in &i.rx_queues {
        let _ = writeln!(
            o,
            "{:<24}rps_cpus {} rps_flow_cnt {}",
            format!("rx-{}", q.queue),
            q.rps_cpus,
            q.rps_flow_cnt
        );
    }
    for q in &i.tx_queues {
        let _ = writeln!(o, "{:<24}xps_cpus {}", format!("tx-{}", q.queue), q.xps_cpus);
    }
    line(&mut o, "rps_sock_flow_entries", &i.rps_sock_flow_entries, |v| v.to_string());
    line(&mut o, "threaded napi", &i.threaded, |v| v.clone());
    line(&mut o, "gro_flush_timeout", &i.gro_flush_timeout, |v| format!("{v} ns"));
    line(&mut o, "napi_defer_hard_irqs", &i.napi_defer_hard_irqs, |v| v.clone());
    o
}
