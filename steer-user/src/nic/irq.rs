//! The interface's interrupts and their CPU affinity
//! (`/proc/irq/N/smp_affinity`). Software devices (veth, tun) have none.

use std::path::PathBuf;

use serde::Serialize;

use super::sysfs;

#[derive(Clone, Debug, Serialize)]
pub struct Irq {
    pub irq: u32,
    /// The action name in /proc/interrupts ("eth0-TxRx-0", "mlx5_comp3@pci:...").
    pub name: String,
    /// smp_affinity as the kernel prints it (hex mask).
    pub affinity: String,
    /// The same as a CPU list.
    pub cpus: String,
}

pub fn affinity_file(irq: u32) -> PathBuf {
    PathBuf::from(format!("/proc/irq/{irq}/smp_affinity"))
}

/// IRQ number -> action names, from /proc/interrupts.
fn proc_interrupts() -> Vec<(u32, String)> {
    let Ok(text) = std::fs::read_to_string("/proc/interrupts") else {
        return vec![];
    };
    let ncpu = text.lines().next().map_or(0, |l| l.split_whitespace().count());
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let (n, rest) = l.trim_start().split_once(':')?;
            let irq = n.parse().ok()?;
            // counts per CPU, then chip, hwirq, type..., and the action names last.
            let fields: Vec<&str> = rest.split_whitespace().skip(ncpu).collect();
            Some((irq, fields.last().map(|s| s.to_string()).unwrap_or_default()))
        })
        .collect()
}

/// The IRQs of `iface`: its device's MSI vectors (or legacy IRQ), plus any
/// interrupt whose action name carries the interface's name.
pub fn of(iface: &str) -> Vec<Irq> {
    let dev = sysfs::net_dir(iface).join("device");
    let mut irqs: Vec<u32> = std::fs::read_dir(dev.join("msi_irqs"))
        .map(|rd| rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect())
        .unwrap_or_default();
    if irqs.is_empty() {
        if let Ok(n) = sysfs::read(&dev.join("irq")).map(|s| s.parse::<u32>()) {
            irqs.extend(n.ok().filter(|n| *n != 0));
        }
    }
    let names = proc_interrupts();
    for (n, name) in &names {
        if name.split([',', '@']).any(|a| a == iface || a.starts_with(&format!("{iface}-"))) {
            irqs.push(*n);
        }
    }
    irqs.sort_unstable();
    irqs.dedup();
    irqs.into_iter()
        .filter_map(|irq| {
            let affinity = sysfs::read(&affinity_file(irq)).ok()?;
            let cpus =
                sysfs::mask_to_cpus(&affinity).map(|c| crate::cpus::format_list(&c)).unwrap_or_default();
            let name = names.iter().find(|(n, _)| *n == irq).map(|(_, s)| s.clone()).unwrap_or_default();
            Some(Irq { irq, name, affinity, cpus })
        })
        .collect()
}
