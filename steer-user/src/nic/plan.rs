//! From a profile and explicit overrides to a list of steps, each "old → new"
//! with the ethtool / sysfs line a user would have typed. Planning only reads.

use std::{collections::BTreeMap, fmt, fmt::Write as _, path::PathBuf};

use serde::{Deserialize, Serialize};

use super::{
    ethtool::{Channels, Coalesce, Ethtool, COALESCE_FIELDS, FEATURE_ALIASES},
    irq, sysfs,
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

fn read_file(path: &std::path::Path) -> Result<Value> {
    if !path.exists() {
        return Ok(Value::Absent);
    }
    sysfs::read(path).map(Value::Text)
}

struct Builder {
    plan: Plan,
}

impl Builder {
    fn push(&mut self, what: String, knob: Knob, old: Value, new: Value, equivalent: String, optional: bool) {
        if !same(&knob, &old, &new) {
            self.plan.steps.push(Step { what, knob, old, new, equivalent, optional });
        }
    }

    fn file(&mut self, what: String, path: PathBuf, mask: bool, new: String) -> Result<()> {
        let old = read_file(&path)?;
        let eq = format!("echo {new} > {}", path.display());
        self.push(what, Knob::File { path, mask }, old, Value::Text(new), eq, false);
        Ok(())
    }
}

/// The channel counts `--channels N` asks for: combined where the driver has
/// combined channels, else rx and tx.
fn channels_for(cur: &Channels, n: u32, driver: &str) -> Result<Channels> {
    let bad = |why: String| Error::BadValue { what: "--channels", value: n.to_string(), why };
    if n == 0 {
        return Err(bad("must be at least 1".into()));
    }
    let mut new = *cur;
    if cur.max_combined > 0 && (cur.combined > 0 || cur.max_rx == 0) {
        if n > cur.max_combined {
            return Err(bad(format!(
                "driver {driver} allows at most {} combined channels",
                cur.max_combined
            )));
        }
        new.combined = n;
    } else {
        if cur.max_rx == 0 || cur.max_tx == 0 {
            return Err(bad(format!("driver {driver} reports no changeable rx/tx channels")));
        }
        if n > cur.max_rx || n > cur.max_tx {
            return Err(bad(format!(
                "driver {driver} allows at most {} rx and {} tx channels",
                cur.max_rx, cur.max_tx
            )));
        }
        new.rx = n;
        new.tx = n;
    }
    Ok(new)
}

fn unsupported(e: &Error) -> bool {
    matches!(e, Error::NicOp { source, .. } if source.raw_os_error() == Some(libc::EOPNOTSUPP))
}

/// Builds the plan for `req` on `iface`. Reads only; fails, naming the value,
/// on anything it could not apply.
pub fn plan(iface_name: &str, req: &Request) -> Result<Plan> {
    sysfs::check(iface_name)?;
    let eth = Ethtool::open(iface_name)?;
    let online = cpus::online()?;
    let drv = eth.driver.clone();
    let mut b = Builder {
        plan: Plan {
            iface: iface_name.to_string(),
            ifindex: iface::index(iface_name)?,
            driver: drv.clone(),
            steps: vec![],
            preserve: vec![],
            notes: vec![],
        },
    };

    // Profile defaults under the explicit overrides.
    let mut coalesce: Vec<(String, u32, bool)> = vec![];
    let mut offload: Vec<(String, bool, bool)> = vec![];
    let mut rps = req.rps_cpus.clone();
    let mut rfs = req.rfs_entries;
    let mut xps = req.xps;
    match req.profile {
        Profile::None => {}
        Profile::Latency => {
            for (k, v) in [("rx-usecs", 0), ("rx-frames", 1), ("adaptive-rx", 0), ("adaptive-tx", 0)] {
                coalesce.push((k.into(), v, true));
            }
        }
        Profile::Throughput => {
            for (k, v) in [("adaptive-rx", 1), ("adaptive-tx", 1)] {
                coalesce.push((k.into(), v, true));
            }
            offload.push(("gro".into(), true, true));
            if !req.nic_only {
                rps.get_or_insert_with(|| online.clone());
                rfs.get_or_insert(DEFAULT_RFS_ENTRIES);
                xps = true;
            }
        }
    }
    for (k, v) in &req.coalesce {
        coalesce.retain(|c| &c.0 != k);
        coalesce.push((k.clone(), *v, false));
    }
    for (k, v) in &req.offload {
        offload.retain(|c| &c.0 != k);
        offload.push((k.clone(), *v, false));
    }

    // 1. Channels first: they decide which queue directories exist.
    let mut nrx = sysfs::queues(iface_name, "rx").len() as u32;
    let mut ntx = sysfs::queues(iface_name, "tx").len() as u32;
    if let Some(n) = req.channels {
        let cur = eth.channels()?;
        let new = channels_for(&cur, n, &drv)?;
        if new != cur {
            let eq = if new.combined != cur.combined {
                format!("ethtool -L {iface_name} combined {n}")
            } else {
                format!("ethtool -L {iface_name} rx {n} tx {n}")
            };
            nrx = new.combined + new.rx;
            ntx = new.combined + new.tx;
            b.push("channels".into(), Knob::Channels, Value::Channels(cur), Value::Channels(new), eq, false);
            // Queue files a shrink removes (and a regrow resets) come back on restore.
            for (kind, files) in [("rx", &["rps_cpus", "rps_flow_cnt"][..]), ("tx", &["xps_cpus"][..])] {
                for q in sysfs::queues(iface_name, kind) {
                    for f in files {
                        let path = sysfs::queue_file(iface_name, &format!("{kind}-{q}"), f);
                        if let Ok(Value::Text(v)) = read_file(&path) {
                            b.plan.preserve.push(Step {
                                what: format!("{kind}-{q} {f}"),
                                knob: Knob::File { path: path.clone(), mask: *f != "rps_flow_cnt" },
                                old: Value::Text(v.clone()),
                                new: Value::Text(v),
                                equivalent: String::new(),
                                optional: false,
                            });
                        }
                    }
                }
            }
        }
    }

    // 2. RFS: the global table, then each rx queue's share, as the seeds size it.
    if let Some(n) = rfs {
        if n > MAX_RFS_ENTRIES {
            return Err(Error::BadValue {
                what: "--rfs-entries",
                value: n.to_string(),
                why: format!("the kernel allows at most {MAX_RFS_ENTRIES}"),
            });
        }
        b.file("rps_sock_flow_entries".into(), sysfs::RPS_SOCK_FLOW_ENTRIES.into(), false, n.to_string())?;
        let per_queue = n.checked_div(nrx).unwrap_or(n);
        for q in 0..nrx {
            let path = sysfs::queue_file(iface_name, &format!("rx-{q}"), "rps_flow_cnt");
            b.file(format!("rx-{q} rps_flow_cnt"), path, false, per_queue.to_string())?;
        }
    }

    // 3. IRQ affinity, round-robin over the CPUs given.
    let irqs = irq::of(iface_name);
    let mut irq_cpus: Vec<u32> =
        irqs.iter().flat_map(|q| sysfs::mask_to_cpus(&q.affinity).unwrap_or_default()).collect();
    if let Some(list) = &req.irq_cpus {
        if list.is_empty() {
            return Err(Error::EmptyCpuList);
        }
        if irqs.is_empty() {
            b.plan
                .notes
                .push(format!("--irq-cpus: \"{iface_name}\" (driver {drv}) has no interrupts of its own"));
        }
        irq_cpus.clear();
        for (i, q) in irqs.iter().enumerate() {
            let cpu = list[i % list.len()];
            irq_cpus.push(cpu);
            let path = irq::affinity_file(q.irq);
            let mask = sysfs::cpus_to_mask(&[cpu]);
            b.file(format!("irq {} ({}) smp_affinity", q.irq, q.name), path, true, mask)?;
        }
    }

    // 4. RPS on every rx queue, minus the interrupting CPUs if asked.
    if let Some(mut set) = rps.clone() {
        if req.exclude_irq_cpus {
            set.retain(|c| !irq_cpus.contains(c));
            if set.is_empty() && !irq_cpus.is_empty() {
                return Err(Error::Nic(format!(
                    "--exclude-irq-cpus leaves no RPS CPU: the interrupts of \"{iface_name}\" use CPUs {}",
                    cpus::format_list(&irq_cpus)
                )));
            }
        }
        let mask = sysfs::cpus_to_mask(&set);
        for q in 0..nrx {
            let path = sysfs::queue_file(iface_name, &format!("rx-{q}"), "rps_cpus");
            b.file(format!("rx-{q} rps_cpus"), path, true, mask.clone())?;
        }
        rps = Some(set);
    }

    // 5. XPS: each tx queue to one CPU, round-robin (the seeds' tx-N -> 1, 2, 4, 8).
    if xps {
        let set = rps.filter(|s| !s.is_empty()).unwrap_or_else(|| online.clone());
        for q in 0..ntx {
            let cpu = set[q as usize % set.len()];
            let path = sysfs::queue_file(iface_name, &format!("tx-{q}"), "xps_cpus");
            // The kernel refuses xps_cpus (ENOENT) on a device that is not multiqueue.
            if path.exists() && sysfs::read(&path).is_err() {
                b.plan.notes.push(format!("xps: \"{iface_name}\" is not a multiqueue device, XPS skipped"));
                break;
            }
            b.file(format!("tx-{q} xps_cpus"), path, true, sysfs::cpus_to_mask(&[cpu]))?;
        }
    }

    // 6. RSS indirection table.
    if let Some(n) = req.rss_equal {
        let bad = |why: String| Error::BadValue { what: "--rss-equal", value: n.to_string(), why };
        if n == 0 || n > nrx.max(1) {
            return Err(bad(format!("\"{iface_name}\" will have {nrx} rx queues")));
        }
        let old = eth.rss_indir().map_err(|e| {
            if unsupported(&e) {
                Error::Nic(format!(
                    "driver {drv} does not support an RSS indirection table on \"{iface_name}\" ({e})"
                ))
            } else {
                e
            }
        })?;
        let new: Vec<u32> = (0..old.len() as u32).map(|i| i % n).collect();
        let eq = format!("ethtool -X {iface_name} equal {n}");
        b.push("rss indirection".into(), Knob::RssIndir, Value::Indir(old), Value::Indir(new), eq, false);
    }

    // 7. Offloads.
    if !offload.is_empty() {
        let all = eth.features()?;
        let mut old = BTreeMap::new();
        let mut new = BTreeMap::new();
        let mut eq = vec![];
        let mut optional = true;
        for (name, on, opt) in &offload {
            let bits = FEATURE_ALIASES.iter().find(|a| a.0 == name).map(|a| a.1).unwrap_or(&[]);
            let have: Vec<&&str> = bits.iter().filter(|b| all.contains_key(**b)).collect();
            if have.is_empty() {
                if *opt {
                    b.plan.notes.push(format!("offload {name}: driver {drv} has no such feature, skipped"));
                    continue;
                }
                return Err(Error::Nic(format!(
                    "driver {drv} has no offload \"{name}\" on \"{iface_name}\""
                )));
            }
            for bit in have {
                let f = all[*bit];
                if f.requested == *on {
                    continue;
                }
                if !f.changeable {
                    if *opt {
                        b.plan.notes.push(format!("offload {name}: {bit} is fixed on driver {drv}, skipped"));
                        continue;
                    }
                    return Err(Error::Nic(format!(
                        "offload {name} cannot be changed on \"{iface_name}\": driver {drv} has {bit} fixed {}",
                        if f.active { "on" } else { "off" }
                    )));
                }
                old.insert(bit.to_string(), f.requested);
                new.insert(bit.to_string(), *on);
            }
            optional &= *opt;
            eq.push(format!("{name} {}", if *on { "on" } else { "off" }));
        }
        if !new.is_empty() {
            let eq = format!("ethtool -K {iface_name} {}", eq.join(" "));
            b.push(
                "offloads".into(),
                Knob::Features,
                Value::Features(old),
                Value::Features(new),
                eq,
                optional,
            );
        }
    }

    // 8. Coalescing last: the driver operation most likely to be refused.
    if !coalesce.is_empty() {
        let all_optional = coalesce.iter().all(|c| c.2);
        match eth.coalesce() {
            Ok(old) => {
                let mut new = old;
                for (k, v, _) in &coalesce {
                    if let Some(i) = Coalesce::field(k) {
                        new.0[i] = *v;
                    }
                }
                let args: Vec<String> = coalesce.iter().map(|(k, v, _)| format!("{k} {v}")).collect();
                let eq = format!("ethtool -C {iface_name} {}", args.join(" "));
                b.push(
                    "coalescing".into(),
                    Knob::Coalesce,
                    Value::Coalesce(old),
                    Value::Coalesce(new),
                    eq,
                    all_optional,
                );
            }
            Err(e) if unsupported(&e) && all_optional => {
                b.plan.notes.push(format!("coalescing: not supported by driver {drv}, skipped"));
            }
            Err(e) if unsupported(&e) => {
                return Err(Error::Nic(format!(
                    "driver {drv} does not support interrupt coalescing on \"{iface_name}\" (ETHTOOL_GCOALESCE: \
                     Operation not supported); nothing was changed"
                )));
            }
            Err(e) => return Err(e),
        }
    }
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
    fn channels_use_combined_where_the_driver_has_them() {
        let veth = Channels { max_rx: 4, max_tx: 4, rx: 4, tx: 4, ..Default::default() };
        let c = channels_for(&veth, 2, "veth").unwrap();
        assert_eq!((c.rx, c.tx, c.combined), (2, 2, 0));
        let e = channels_for(&veth, 8, "veth").unwrap_err().to_string();
        assert!(e.contains("veth") && e.contains("at most 4"), "{e}");
        let nic = Channels { max_combined: 16, combined: 8, ..Default::default() };
        assert_eq!(channels_for(&nic, 4, "ice").unwrap().combined, 4);
        assert!(channels_for(&nic, 0, "ice").is_err());
    }

    #[test]
    fn masks_compare_as_sets() {
        let k = Knob::File { path: "/x".into(), mask: true };
        assert!(same(&k, &Value::Text("00000000,00000003".into()), &Value::Text("3".into())));
        assert!(!same(&k, &Value::Text("1".into()), &Value::Text("3".into())));
    }
}
