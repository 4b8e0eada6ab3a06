//! The kernel's per-interface and global knobs that live in files:
//! `/sys/class/net/IF/queues/{rx,tx}-N/{rps_cpus,rps_flow_cnt,xps_cpus}`,
//! `/sys/class/net/IF/{threaded,gro_flush_timeout,napi_defer_hard_irqs}` and
//! `/proc/sys/net/core/rps_sock_flow_entries` (global to the host).
//!
//! /sys shows the network namespace of whoever mounted it, not the caller's:
//! [`check`] refuses to touch a /sys that shows some other interface of the
//! same name (run steer through `ip netns exec NS`, which remounts /sys).

use std::{
    os::fd::AsRawFd,
    path::{Path, PathBuf},
};

use crate::{
    error::{Error, Result},
    iface,
};

/// The global RFS flow table size (shared by every namespace and interface).
pub const RPS_SOCK_FLOW_ENTRIES: &str = "/proc/sys/net/core/rps_sock_flow_entries";

/// Whether the calling thread is in the initial network namespace, the only
/// one that has [`RPS_SOCK_FLOW_ENTRIES`]. The kernel registers that sysctl
/// for the initial namespace alone and resolves /proc/sys/net by the calling
/// thread's namespace, whoever mounted /proc (`nsenter --net` keeps the host's
/// /proc and still has no such file): its presence is the test. Comparing
/// /proc/self/ns/net with /proc/1/ns/net is not: PID 1 of a container is not
/// in the initial namespace, and /proc/1/ns may be closed to us (EACCES).
pub fn in_initial_netns() -> bool {
    Path::new(RPS_SOCK_FLOW_ENTRIES).exists()
}

/// The host's rps_sock_flow_entries, from a thread outside the initial
/// network namespace: read on a short-lived thread that enters PID 1's
/// network namespace. That works where PID 1 is the host's init and its
/// /proc/1/ns/net can be opened; elsewhere the error says what stopped it.
pub fn host_rps_sock_flow_entries() -> Result<String> {
    const PID1: &str = "/proc/1/ns/net";
    let ns = std::fs::File::open(PID1).map_err(|e| Error::io(format!("opening {PID1}"), e))?;
    std::thread::spawn(move || {
        // SAFETY: setns on this thread only, which ends after the read, with a namespace fd we hold.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(Error::io(
                format!("entering the network namespace of {PID1}"),
                std::io::Error::last_os_error(),
            ));
        }
        if !in_initial_netns() {
            return Err(Error::Nic("PID 1 is not in the initial network namespace either".into()));
        }
        read(Path::new(RPS_SOCK_FLOW_ENTRIES))
    })
    .join()
    .map_err(|_| Error::Nic("the thread reading the host's rps_sock_flow_entries panicked".into()))?
}

pub fn net_dir(iface: &str) -> PathBuf {
    Path::new("/sys/class/net").join(iface)
}

pub fn queue_file(iface: &str, queue: &str, file: &str) -> PathBuf {
    net_dir(iface).join("queues").join(queue).join(file)
}

/// Reads a knob file, trimmed.
pub fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(|e| Error::io(format!("reading {}", path.display()), e))
}

/// Writes a knob file (one write, as `echo V > FILE` does).
pub fn write(path: &Path, value: &str) -> Result<()> {
    std::fs::write(path, format!("{value}\n"))
        .map_err(|e| Error::io(format!("writing \"{value}\" to {}", path.display()), e))
}

fn hwaddr(name: &str) -> Option<String> {
    // SAFETY: plain socket syscall; the fd is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: ifreq is plain data.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in ifr.ifr_name.iter_mut().zip(name.bytes().take(libc::IFNAMSIZ - 1)) {
        *d = s as libc::c_char;
    }
    // SAFETY: fd is ours and ifr outlives the call.
    let rc = unsafe { libc::ioctl(fd, libc::SIOCGIFHWADDR, &mut ifr) };
    // SAFETY: closing our own fd.
    unsafe { libc::close(fd) };
    if rc < 0 {
        return None;
    }
    // SAFETY: SIOCGIFHWADDR filled ifru_hwaddr.
    let sa = unsafe { ifr.ifr_ifru.ifru_hwaddr };
    Some(sa.sa_data[..6].iter().map(|b| format!("{:02x}", *b as u8)).collect::<Vec<_>>().join(":"))
}

/// Checks that /sys/class/net/IF is the interface the caller's network
/// namespace calls IF (same index and address), so that nothing is written to
/// a same-named interface of another namespace.
pub fn check(name: &str) -> Result<()> {
    let idx = iface::index(name)?;
    let dir = net_dir(name);
    let other = || {
        Error::Nic(format!(
            "/sys/class/net/{name} does not show the interface \"{name}\" of this network namespace (this /sys was \
             mounted by another one): run steer through `ip netns exec NS steer ...`, which mounts the namespace's /sys"
        ))
    };
    let sys_idx = read(&dir.join("ifindex")).map_err(|_| other())?;
    if sys_idx.parse::<u32>().ok() != Some(idx) {
        return Err(other());
    }
    if let (Ok(sys_addr), Some(addr)) = (read(&dir.join("address")), hwaddr(name)) {
        if sys_addr != addr && !addr.is_empty() {
            return Err(other());
        }
    }
    Ok(())
}

/// Indices of the interface's "rx-N" or "tx-N" queue directories, sorted.
pub fn queues(iface: &str, kind: &str) -> Vec<u32> {
    let Ok(rd) = std::fs::read_dir(net_dir(iface).join("queues")) else {
        return vec![];
    };
    let prefix = format!("{kind}-");
    let mut q: Vec<u32> = rd
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.strip_prefix(&prefix)?.parse().ok())
        .collect();
    q.sort_unstable();
    q
}

/// A CPU set as the kernel's hex mask format ("f", "1,00000000" for CPU 32).
pub fn cpus_to_mask(cpus: &[u32]) -> String {
    let words = cpus.iter().max().map_or(1, |m| *m as usize / 32 + 1);
    let mut w = vec![0u32; words];
    for c in cpus {
        w[*c as usize / 32] |= 1 << (c % 32);
    }
    let mut parts: Vec<String> = w.iter().rev().map(|x| format!("{x:08x}")).collect();
    let first = parts[0].trim_start_matches('0').to_string();
    parts[0] = if first.is_empty() { "0".into() } else { first };
    parts.join(",")
}

/// The CPUs of a kernel hex mask ("00000000,0000000f" -> 0-3).
pub fn mask_to_cpus(mask: &str) -> Option<Vec<u32>> {
    let mut cpus = vec![];
    for (word, part) in mask.trim().split(',').rev().enumerate() {
        let v = u32::from_str_radix(part, 16).ok()?;
        cpus.extend((0..32).filter(|b| v & (1 << b) != 0).map(|b| word as u32 * 32 + b));
    }
    Some(cpus)
}

/// rx queues of `iface` whose kernel RPS is on, with their CPUs, where this
/// process's /sys shows the interface (empty otherwise: nothing to say).
pub fn rps_on(iface: &str) -> Vec<(u32, Vec<u32>)> {
    if check(iface).is_err() {
        return Vec::new();
    }
    queues(iface, "rx")
        .into_iter()
        .filter_map(|q| {
            let mask = read(&queue_file(iface, &format!("rx-{q}"), "rps_cpus")).ok()?;
            let cpus = mask_to_cpus(&mask)?;
            (!cpus.is_empty()).then_some((q, cpus))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_round_trip() {
        assert_eq!(cpus_to_mask(&[0, 1, 2, 3]), "f");
        assert_eq!(cpus_to_mask(&[]), "0");
        assert_eq!(cpus_to_mask(&[1, 32]), "1,00000002");
        assert_eq!(mask_to_cpus("00000000,0000000f").unwrap(), vec![0, 1, 2, 3]);
        assert_eq!(mask_to_cpus("1,00000002").unwrap(), vec![1, 32]);
        assert!(mask_to_cpus("xyz").is_none());
    }
}
