//! From a profile and explicit overrides to a list of steps, each "old → new"
//! with the ethtool / sysfs line a user would have typed. Planning only reads.
//!
//! [`plan`] fills the profile's defaults in under the overrides, then asks
//! each knob in apply order (`knobs`: channels, RFS, IRQ affinity, RPS, XPS,
//! RSS table, offloads, coalescing) for its steps.

use std::{collections::BTreeMap, fmt, fmt::Write as _, path::PathBuf};

use serde::{Deserialize, Serialize};

use super::{
    ethtool::{Channels, Coalesce, Ethtool, COALESCE_FIELDS, FEATURE_ALIASES},
    sysfs,
};
use crate::{
    cpus,
    error::{Error, Result},
    iface,
};

/// RFS flow table size the seeds use (`rps_sock_flow_entries` = 32768).
pub const DEFAULT_RFS_ENTRIES: u32 = 32768;
/// The kernel's upper bound on rps_sock_flow_entries and rps_flow_cnt.
pub const MAX_RFS_ENTRIES: u32 = 1 << 29;

mod knobs;
pub use knobs::rfs_table;

/// Named sets of knobs, after the seeds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// Change nothing unless asked.
    #[default]
    None,
    /// Interrupt coalescing off: rx-usecs 0, rx-frames 1, adaptive off.
    Latency,
    /// Adaptive coalescing, GRO on, RPS over the CPUs, RFS (32768 entries) and XPS.
    Throughput,
}

/// What the user asked for; `None`/empty means "leave as it is" (or the profile's value).
#[derive(Clone, Debug, Default)]
pub struct Request {
    pub profile: Profile,
    pub channels: Option<u32>,
    /// `ethtool -C` names and values.
    pub coalesce: Vec<(String, u32)>,
    /// Spread the RSS table equally over the first N rx queues (`ethtool -X equal N`).
    pub rss_equal: Option<u32>,
    /// Pin the interface's IRQs round-robin to these CPUs.
    pub irq_cpus: Option<Vec<u32>>,
    /// RPS CPUs on every rx queue (empty: RPS off).
    pub rps_cpus: Option<Vec<u32>>,
    /// rps_sock_flow_entries; rps_flow_cnt = entries / rx queues.
    pub rfs_entries: Option<u32>,
    /// XPS: tx queue i -> one CPU of the RPS set (or every online CPU), round-robin.
    pub xps: bool,
    /// ethtool -K names (gro, lro, tso, gso, rx, tx, rx-udp-gro-forwarding) -> on/off.
    pub offload: Vec<(String, bool)>,
    /// Keep the CPUs that take the interface's interrupts out of the RPS set.
    pub exclude_irq_cpus: bool,
    /// The profile changes the NIC only, not RPS/RFS/XPS (the XDP engine steers itself).
    pub nic_only: bool,
}

/// Parses `rx-usecs=0,rx-frames=1,adaptive-rx=off`.
pub fn parse_coalesce(s: &str) -> Result<Vec<(String, u32)>> {
    let bad = |why: String| Error::BadValue { what: "--coalesce", value: s.to_string(), why };
    let mut out = vec![];
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').ok_or_else(|| bad(format!("\"{part}\" is not NAME=VALUE")))?;
        if Coalesce::field(k).is_none() {
            return Err(bad(format!("unknown parameter \"{k}\" (known: {})", COALESCE_FIELDS.join(", "))));
        }
        let v = match v {
            "on" => 1,
            "off" => 0,
            v => v.parse().map_err(|_| bad(format!("\"{v}\" is not a number (or on/off) for {k}")))?,
        };
        out.push((k.to_string(), v));
    }
    if out.is_empty() {
        return Err(bad("no NAME=VALUE given".into()));
    }
    Ok(out)
}

/// Parses `gro=on,tso=off`.
pub fn parse_offload(s: &str) -> Result<Vec<(String, bool)>> {
    let bad = |why: String| Error::BadValue { what: "--offload", value: s.to_string(), why };
    let names: Vec<&str> = FEATURE_ALIASES.iter().map(|a| a.0).collect();
    let mut out = vec![];
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').ok_or_else(|| bad(format!("\"{part}\" is not NAME=on|off")))?;
        if !names.contains(&k) {
            return Err(bad(format!("unknown offload \"{k}\" (known: {})", names.join(", "))));
        }
        let on = match v {
            "on" => true,
            "off" => false,
            _ => return Err(bad(format!("\"{v}\" for {k} must be on or off"))),
        };
        out.push((k.to_string(), on));
    }
    if out.is_empty() {
        return Err(bad("no NAME=on|off given".into()));
    }
    Ok(out)
}

/// Parses a CPU list for a knob; "none" is the empty set (RPS/XPS off).
pub fn parse_cpus(s: &str, online: &[u32]) -> Result<Vec<u32>> {
    if s.trim() == "none" {
        return Ok(vec![]);
    }
    let list = cpus::parse_list(s)?;
    cpus::check_online(&list, online)?;
    Ok(list)
}

/// One thing a plan changes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Knob {
    Channels,
    Coalesce,
    /// Requested state of kernel feature bits ("rx-gro").
    Features,
    RssIndir,
    /// A sysfs/procfs file; `mask`: it holds a CPU mask (compared as a set).
    File {
        path: PathBuf,
        mask: bool,
    },
}

/// A knob's value. `Absent`: the file did not exist (a queue a channel change creates).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Value {
    Channels(Channels),
    Coalesce(Coalesce),
    Features(BTreeMap<String, bool>),
    Indir(Vec<u32>),
    Text(String),
    Absent,
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Channels(c) => {
                write!(f, "rx {} tx {} other {} combined {}", c.rx, c.tx, c.other, c.combined)
            }
            Value::Coalesce(c) => {
                let named = c.named();
                let s: Vec<String> =
                    named.iter().filter(|(_, v)| **v != 0).map(|(k, v)| format!("{k} {v}")).collect();
                if s.is_empty() {
                    write!(f, "all 0")
                } else {
                    write!(f, "{}", s.join(" "))
                }
            }
            Value::Features(m) => {
                let s: Vec<String> =
                    m.iter().map(|(k, v)| format!("{k} {}", if *v { "on" } else { "off" })).collect();
                write!(f, "{}", s.join(" "))
            }
            Value::Indir(t) => {
                let shown: Vec<String> = t.iter().take(8).map(u32::to_string).collect();
                write!(
                    f,
                    "[{}{}] ({} entries)",
                    shown.join(" "),
                    if t.len() > 8 { " …" } else { "" },
                    t.len()
                )
            }
            Value::Text(s) => write!(f, "{s}"),
            Value::Absent => write!(f, "(absent)"),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Step {
    /// What, in words ("channels", "rx-0 rps_cpus").
    pub what: String,
    pub knob: Knob,
    pub old: Value,
    pub new: Value,
    /// The line a user would have typed for the same change.
    pub equivalent: String,
    /// From a profile rather than an explicit override: skipped, not fatal,
    /// when the driver does not support it.
    pub optional: bool,
}

/// Every step, in apply order, plus the queue files a channel change could
/// drop (put back after channels on restore).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Plan {
    pub iface: String,
    pub ifindex: u32,
    pub driver: String,
    pub steps: Vec<Step>,
    pub preserve: Vec<Step>,
    pub notes: Vec<String>,
}

fn same(knob: &Knob, a: &Value, b: &Value) -> bool {
    match (knob, a, b) {
        (Knob::File { mask: true, .. }, Value::Text(x), Value::Text(y)) => {
            sysfs::mask_to_cpus(x).is_some() && sysfs::mask_to_cpus(x) == sysfs::mask_to_cpus(y)
        }
        _ => a == b,
    }
}

pub(super) fn read_file(path: &std::path::Path) -> Result<Value> {
    if !path.exists() {
        return Ok(Value::Absent);
    }
    sysfs::read(path).map(Value::Text)
}

/// The step that writes `new` to the file `path` (it may hold `new` already).
pub(super) fn file_step(what: String, path: PathBuf, mask: bool, new: String) -> Result<Step> {
    let old = read_file(&path)?;
    let equivalent = format!("echo {new} > {}", path.display());
    Ok(Step {
        what,
        knob: Knob::File { path, mask },
        old,
        new: Value::Text(new),
        equivalent,
        optional: false,
    })
}

/// What every knob's planner reads (the device, and its queue counts once the
/// channel change is made), and the plan each adds its steps and notes to.
struct Builder<'a> {
    iface: &'a str,
    eth: &'a Ethtool,
    online: &'a [u32],
    nrx: u32,
    ntx: u32,
    plan: Plan,
}

impl Builder<'_> {
    fn driver(&self) -> &str {
        &self.plan.driver
    }

    fn push(&mut self, what: String, knob: Knob, old: Value, new: Value, equivalent: String, optional: bool) {
        self.push_step(Step { what, knob, old, new, equivalent, optional });
    }

    /// Adds `step` unless the knob already holds its new value.
    fn push_step(&mut self, step: Step) {
        if !same(&step.knob, &step.old, &step.new) {
            self.plan.steps.push(step);
        }
    }

    fn file(&mut self, what: String, path: PathBuf, mask: bool, new: String) -> Result<()> {
        let step = file_step(what, path, mask, new)?;
        self.push_step(step);
        Ok(())
    }

    fn note(&mut self, note: String) {
        self.plan.notes.push(note);
    }
}

/// A setting asked for, and whether it came from the profile (optional:
/// skipped where the driver lacks it) rather than from an explicit override.
#[derive(Clone, Debug)]
struct Setting<T> {
    name: String,
    value: T,
    optional: bool,
}

/// The request with the profile's defaults under its explicit overrides.
struct Wanted {
    coalesce: Vec<Setting<u32>>,
    offload: Vec<Setting<bool>>,
    rps: Option<Vec<u32>>,
    rfs: Option<u32>,
    xps: bool,
}

impl Wanted {
    fn of(req: &Request, online: &[u32]) -> Self {
        let profile = |name: &str, value| Setting { name: name.into(), value, optional: true };
        let mut w = Self {
            coalesce: vec![],
            offload: vec![],
            rps: req.rps_cpus.clone(),
            rfs: req.rfs_entries,
            xps: req.xps,
        };
        match req.profile {
            Profile::None => {}
            Profile::Latency => {
                for (k, v) in [("rx-usecs", 0), ("rx-frames", 1), ("adaptive-rx", 0), ("adaptive-tx", 0)] {
                    w.coalesce.push(profile(k, v));
                }
            }
            Profile::Throughput => {
                for (k, v) in [("adaptive-rx", 1), ("adaptive-tx", 1)] {
                    w.coalesce.push(profile(k, v));
                }
                w.offload.push(Setting { name: "gro".into(), value: true, optional: true });
                if !req.nic_only {
                    w.rps.get_or_insert_with(|| online.to_vec());
                    w.rfs.get_or_insert(DEFAULT_RFS_ENTRIES);
                    w.xps = true;
                }
            }
        }
        for (k, v) in &req.coalesce {
            w.coalesce.retain(|c| &c.name != k);
            w.coalesce.push(Setting { name: k.clone(), value: *v, optional: false });
        }
        for (k, v) in &req.offload {
            w.offload.retain(|c| &c.name != k);
            w.offload.push(Setting { name: k.clone(), value: *v, optional: false });
        }
        w
    }
}

/// Builds the plan for `req` on `iface`. Reads only; fails, naming the value,
/// on anything it could not apply. The order is the apply order.
pub fn plan(iface_name: &str, req: &Request) -> Result<Plan> {
    sysfs::check(iface_name)?;
    let eth = Ethtool::open(iface_name)?;
    let online = cpus::online()?;
    let mut b = Builder {
        iface: iface_name,
        eth: &eth,
        online: &online,
        nrx: sysfs::queues(iface_name, "rx").len() as u32,
        ntx: sysfs::queues(iface_name, "tx").len() as u32,
        plan: Plan {
            iface: iface_name.to_string(),
            ifindex: iface::index(iface_name)?,
            driver: eth.driver.clone(),
            steps: vec![],
            preserve: vec![],
            notes: vec![],
        },
    };
    let want = Wanted::of(req, &online);
    // Channels first: they decide which queue directories exist.
    if let Some(n) = req.channels {
        knobs::channels(&mut b, n)?;
    }
    if let Some(n) = want.rfs {
        knobs::rfs(&mut b, n)?;
    }
    let irq_cpus = knobs::irq_affinity(&mut b, req.irq_cpus.as_deref())?;
    let rps = match want.rps {
        Some(set) => Some(knobs::rps(&mut b, set, req.exclude_irq_cpus.then_some(&irq_cpus[..]))?),
        None => None,
    };
    if want.xps {
        knobs::xps(&mut b, rps)?;
    }
    if let Some(n) = req.rss_equal {
        knobs::rss_equal(&mut b, n)?;
    }
    knobs::offloads(&mut b, &want.offload)?;
    // Coalescing last: the driver operation most likely to be refused.
    knobs::coalescing(&mut b, &want.coalesce)?;
    Ok(b.plan)
}

impl Plan {
    /// "old → new" per step, with the equivalent command.
    pub fn render(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(o, "plan for {} (driver {}):", self.iface, self.driver);
        if self.steps.is_empty() {
            let _ = writeln!(o, "  nothing to change");
        }
        for (i, s) in self.steps.iter().enumerate() {
            let _ = writeln!(o, "  {}. {}: {} → {}", i + 1, s.what, s.old, s.new);
            let _ = writeln!(o, "       # {}", s.equivalent);
        }
        for n in &self.notes {
            let _ = writeln!(o, "  note: {n}");
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coalesce_overrides_parse_and_name_bad_values() {
        let c = parse_coalesce("rx-usecs=0,rx-frames=1,adaptive-rx=off").unwrap();
        assert_eq!(c, vec![("rx-usecs".into(), 0), ("rx-frames".into(), 1), ("adaptive-rx".into(), 0)]);
        let e = parse_coalesce("rx-usec=3").unwrap_err().to_string();
        assert!(e.contains("\"rx-usec\"") && e.contains("--coalesce"), "{e}");
        assert!(parse_coalesce("rx-usecs=x").unwrap_err().to_string().contains("\"x\""));
        assert!(parse_coalesce("").is_err());
    }

    #[test]
    fn offload_overrides_parse() {
        assert_eq!(
            parse_offload("gro=on,tso=off").unwrap(),
            vec![("gro".into(), true), ("tso".into(), false)]
        );
        assert!(parse_offload("gro=maybe").unwrap_err().to_string().contains("\"maybe\""));
        assert!(parse_offload("warp=on").unwrap_err().to_string().contains("\"warp\""));
    }

    #[test]
    fn masks_compare_as_sets() {
        let k = Knob::File { path: "/x".into(), mask: true };
        assert!(same(&k, &Value::Text("00000000,00000003".into()), &Value::Text("3".into())));
        assert!(!same(&k, &Value::Text("1".into()), &Value::Text("3".into())));
    }
}
