//! One planner per knob: each reads the knob's current value, takes what the
//! request wants of it, and adds its steps ("old → new"), a note, or a
//! refusal that names the value. [`super::plan`] calls them in apply order.

use std::collections::BTreeMap;

use super::{file_step, read_file, Builder, Knob, Setting, Step, Value, MAX_RFS_ENTRIES};
use crate::{
    cpus,
    error::{Error, Result},
    nic::{
        ethtool::{Channels, Coalesce, FEATURE_ALIASES},
        irq, sysfs,
    },
};

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

/// `--channels N`. Sets the queue counts the later knobs plan for, and keeps
/// the queue files a shrink removes (and a regrow resets) for the restore.
pub(super) fn channels(b: &mut Builder, n: u32) -> Result<()> {
    let iface = b.iface;
    let cur = b.eth.channels()?;
    let new = channels_for(&cur, n, b.driver())?;
    if new == cur {
        return Ok(());
    }
    let eq = if new.combined != cur.combined {
        format!("ethtool -L {iface} combined {n}")
    } else {
        format!("ethtool -L {iface} rx {n} tx {n}")
    };
    b.nrx = new.combined + new.rx;
    b.ntx = new.combined + new.tx;
    b.push("channels".into(), Knob::Channels, Value::Channels(cur), Value::Channels(new), eq, false);
    for (kind, files) in [("rx", &["rps_cpus", "rps_flow_cnt"][..]), ("tx", &["xps_cpus"][..])] {
        for q in sysfs::queues(iface, kind) {
            for f in files {
                let path = sysfs::queue_file(iface, &format!("{kind}-{q}"), f);
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
    Ok(())
}

/// Why the global RFS table is not ours to change from here, with the host's
/// value where it can be read, and what to run on the host instead.
pub(super) fn host_rfs_table(n: u32) -> String {
    let head = format!(
        "the global RFS table is the host's ({} exists only in the initial network namespace, and this is another \
         one)",
        sysfs::RPS_SOCK_FLOW_ENTRIES
    );
    let set = format!("sysctl -w net.core.rps_sock_flow_entries={n}");
    match sysfs::host_rps_sock_flow_entries() {
        Ok(v) if v == "0" => format!("{head}; the host has 0, so RFS stays off until the host runs `{set}`"),
        Ok(v) => format!("{head}; the host has {v}"),
        Err(e) => format!(
            "{head}; its value cannot be read from here ({e}); RFS steers only while it is non-zero: on the host, \
             `{set}`"
        ),
    }
}

/// The step that sizes the global RFS table (`rps_sock_flow_entries`) to
/// `n`; its old value may already be `n`. Only the initial network namespace
/// has the table: anywhere else the error says whose it is.
pub fn rfs_table(n: u32) -> Result<Step> {
    check_rfs_entries(n)?;
    if !sysfs::in_initial_netns() {
        return Err(Error::Nic(host_rfs_table(n)));
    }
    file_step("rps_sock_flow_entries".into(), sysfs::RPS_SOCK_FLOW_ENTRIES.into(), false, n.to_string())
}

fn check_rfs_entries(n: u32) -> Result<()> {
    if n > MAX_RFS_ENTRIES {
        return Err(Error::BadValue {
            what: "--rfs-entries",
            value: n.to_string(),
            why: format!("the kernel allows at most {MAX_RFS_ENTRIES}"),
        });
    }
    Ok(())
}

/// RFS as the seeds size it: the global table, then each rx queue's share.
/// Outside the initial network namespace only the queues' share is ours.
pub(super) fn rfs(b: &mut Builder, n: u32) -> Result<()> {
    if sysfs::in_initial_netns() {
        let step = rfs_table(n)?;
        b.push_step(step);
    } else {
        check_rfs_entries(n)?;
        b.note(format!("rps_sock_flow_entries skipped: {}", host_rfs_table(n)));
    }
    let per_queue = n.checked_div(b.nrx).unwrap_or(n);
    for q in 0..b.nrx {
        let path = sysfs::queue_file(b.iface, &format!("rx-{q}"), "rps_flow_cnt");
        b.file(format!("rx-{q} rps_flow_cnt"), path, false, per_queue.to_string())?;
    }
    Ok(())
}

/// `--irq-cpus`: the interface's IRQs round-robin over the CPUs given.
/// Returns the CPUs its interrupts use once applied (for `--exclude-irq-cpus`).
pub(super) fn irq_affinity(b: &mut Builder, list: Option<&[u32]>) -> Result<Vec<u32>> {
    let irqs = irq::of(b.iface);
    let mut irq_cpus: Vec<u32> =
        irqs.iter().flat_map(|q| sysfs::mask_to_cpus(&q.affinity).unwrap_or_default()).collect();
    let Some(list) = list else {
        return Ok(irq_cpus);
    };
    if list.is_empty() {
        return Err(Error::EmptyCpuList);
    }
    if irqs.is_empty() {
        let note =
            format!("--irq-cpus: \"{}\" (driver {}) has no interrupts of its own", b.iface, b.driver());
        b.note(note);
    }
    irq_cpus.clear();
    for (i, q) in irqs.iter().enumerate() {
        let cpu = list[i % list.len()];
        irq_cpus.push(cpu);
        let path = irq::affinity_file(q.irq);
        let mask = sysfs::cpus_to_mask(&[cpu]);
        b.file(format!("irq {} ({}) smp_affinity", q.irq, q.name), path, true, mask)?;
    }
    Ok(irq_cpus)
}

/// RPS over `set` on every rx queue, minus `exclude` (the interrupting CPUs)
/// when given. Returns the set written.
pub(super) fn rps(b: &mut Builder, mut set: Vec<u32>, exclude: Option<&[u32]>) -> Result<Vec<u32>> {
    if let Some(irq_cpus) = exclude {
        set.retain(|c| !irq_cpus.contains(c));
        if set.is_empty() && !irq_cpus.is_empty() {
            return Err(Error::Nic(format!(
                "--exclude-irq-cpus leaves no RPS CPU: the interrupts of \"{}\" use CPUs {}",
                b.iface,
                cpus::format_list(irq_cpus)
            )));
        }
    }
    let mask = sysfs::cpus_to_mask(&set);
    for q in 0..b.nrx {
        let path = sysfs::queue_file(b.iface, &format!("rx-{q}"), "rps_cpus");
        b.file(format!("rx-{q} rps_cpus"), path, true, mask.clone())?;
    }
    Ok(set)
}

/// XPS: each tx queue to one CPU of the RPS set (or of every online CPU),
/// round-robin (the seeds' tx-N -> 1, 2, 4, 8).
pub(super) fn xps(b: &mut Builder, rps: Option<Vec<u32>>) -> Result<()> {
    let set = rps.filter(|s| !s.is_empty()).unwrap_or_else(|| b.online.to_vec());
    for q in 0..b.ntx {
        let cpu = set[q as usize % set.len()];
        let path = sysfs::queue_file(b.iface, &format!("tx-{q}"), "xps_cpus");
        // The kernel refuses xps_cpus (ENOENT) on a device that is not multiqueue.
        if path.exists() && sysfs::read(&path).is_err() {
            let note = format!("xps: \"{}\" is not a multiqueue device, XPS skipped", b.iface);
            b.note(note);
            break;
        }
        b.file(format!("tx-{q} xps_cpus"), path, true, sysfs::cpus_to_mask(&[cpu]))?;
    }
    Ok(())
}

/// `--rss-equal N`: the RSS indirection table spread over the first N rx queues.
pub(super) fn rss_equal(b: &mut Builder, n: u32) -> Result<()> {
    let (iface, drv, nrx) = (b.iface, b.driver().to_string(), b.nrx);
    let bad = |why: String| Error::BadValue { what: "--rss-equal", value: n.to_string(), why };
    if n == 0 || n > nrx.max(1) {
        return Err(bad(format!("\"{iface}\" will have {nrx} rx queues")));
    }
    let old = b.eth.rss_indir().map_err(|e| {
        if unsupported(&e) {
            Error::Nic(format!("driver {drv} does not support an RSS indirection table on \"{iface}\" ({e})"))
        } else {
            e
        }
    })?;
    let new: Vec<u32> = (0..old.len() as u32).map(|i| i % n).collect();
    let eq = format!("ethtool -X {iface} equal {n}");
    b.push("rss indirection".into(), Knob::RssIndir, Value::Indir(old), Value::Indir(new), eq, false);
    Ok(())
}

/// Offloads (`ethtool -K`), as one step over the kernel feature bits behind
/// each name. A profile's offload the driver lacks or has fixed is a note.
pub(super) fn offloads(b: &mut Builder, want: &[Setting<bool>]) -> Result<()> {
    if want.is_empty() {
        return Ok(());
    }
    let (iface, drv) = (b.iface, b.driver().to_string());
    let all = b.eth.features()?;
    let mut old = BTreeMap::new();
    let mut new = BTreeMap::new();
    let mut eq = vec![];
    let mut optional = true;
    for Setting { name, value: on, optional: opt } in want {
        let bits = FEATURE_ALIASES.iter().find(|a| a.0 == name).map(|a| a.1).unwrap_or(&[]);
        let have: Vec<&&str> = bits.iter().filter(|b| all.contains_key(**b)).collect();
        if have.is_empty() {
            if *opt {
                b.note(format!("offload {name}: driver {drv} has no such feature, skipped"));
                continue;
            }
            return Err(Error::Nic(format!("driver {drv} has no offload \"{name}\" on \"{iface}\"")));
        }
        for bit in have {
            let f = all[*bit];
            if f.requested == *on {
                continue;
            }
            if !f.changeable {
                if *opt {
                    b.note(format!("offload {name}: {bit} is fixed on driver {drv}, skipped"));
                    continue;
                }
                return Err(Error::Nic(format!(
                    "offload {name} cannot be changed on \"{iface}\": driver {drv} has {bit} fixed {}",
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
        let eq = format!("ethtool -K {iface} {}", eq.join(" "));
        b.push("offloads".into(), Knob::Features, Value::Features(old), Value::Features(new), eq, optional);
    }
    Ok(())
}

/// Interrupt coalescing (`ethtool -C`). A driver without it is a note when
/// only the profile asked, a refusal when the user did.
pub(super) fn coalescing(b: &mut Builder, want: &[Setting<u32>]) -> Result<()> {
    if want.is_empty() {
        return Ok(());
    }
    let (iface, drv) = (b.iface, b.driver().to_string());
    let all_optional = want.iter().all(|c| c.optional);
    match b.eth.coalesce() {
        Ok(old) => {
            let mut new = old;
            for c in want {
                if let Some(i) = Coalesce::field(&c.name) {
                    new.0[i] = c.value;
                }
            }
            let args: Vec<String> = want.iter().map(|c| format!("{} {}", c.name, c.value)).collect();
            let eq = format!("ethtool -C {iface} {}", args.join(" "));
            b.push("coalescing".into(), Knob::Coalesce, Value::Coalesce(old), Value::Coalesce(new), eq, all_optional);
            Ok(())
        }
        Err(e) if unsupported(&e) && all_optional => {
            b.note(format!("coalescing: not supported by driver {drv}, skipped"));
            Ok(())
        }
        Err(e) if unsupported(&e) => Err(Error::Nic(format!(
            "driver {drv} does not support interrupt coalescing on \"{iface}\" (ETHTOOL_GCOALESCE: Operation not \
             supported); nothing was changed"
        ))),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
