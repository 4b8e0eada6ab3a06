//! The lab's topology, built by netlink alone (the benchmark machine has no
//! `ip` binary): two fresh network namespaces, `tx` and `rx`, joined by a veth
//! pair. Namespaces are made with unshare(CLONE_NEWNET) on a helper thread and
//! bind-mounted under /run/netns (so `ip netns` sees them and they can be
//! removed); everything is removed on drop, and [`cleanup_all`] removes what a
//! signal interrupted.

use std::{
    fs::File,
    net::Ipv4Addr,
    os::fd::{AsFd, AsRawFd, OwnedFd},
    path::PathBuf,
    sync::{
        atomic::{AtomicU32, Ordering},
        Mutex,
    },
};

use super::{LabError, Result};
use crate::sys::{netlink::Route, netns};

const NETNS_DIR: &str = "/run/netns";

/// Every namespace this process made and has not removed yet.
static LIVE: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// A named network namespace made by the lab, bind-mounted at /run/netns/NAME.
pub struct NetNs {
    pub name: String,
    path: PathBuf,
    file: File,
}

impl NetNs {
    /// Creates namespace `name`. Fails (changing nothing) if the name is taken.
    pub fn create(name: &str) -> Result<Self> {
        let path = PathBuf::from(NETNS_DIR).join(name);
        std::fs::create_dir_all(NETNS_DIR).map_err(|e| LabError::io(format!("creating {NETNS_DIR}"), e))?;
        if path.exists() {
            return Err(LabError::Msg(format!(
                "network namespace \"{name}\" already exists ({})",
                path.display()
            )));
        }
        File::create(&path).map_err(|e| LabError::io(format!("creating {}", path.display()), e))?;
        let target = path.clone();
        // unshare(CLONE_NEWNET) moves only this helper thread; the bind mount keeps the namespace.
        let res = std::thread::spawn(move || -> std::io::Result<()> {
            netns::unshare_net()?;
            netns::bind_own_netns(&target)
        })
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("namespace thread panicked")));
        if let Err(e) = res {
            let _ = std::fs::remove_file(&path);
            return Err(LabError::io(format!("creating network namespace \"{name}\" (needs root)"), e));
        }
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) => {
                unmount(&path);
                return Err(LabError::io(format!("opening {}", path.display()), e));
            }
        };
        if let Ok(mut live) = LIVE.lock() {
            live.push(path.clone());
        }
        Ok(Self { name: name.to_string(), path, file })
    }

    /// Runs `f` on a new thread that has entered this namespace, and waits for it.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        let fd = self.dup_fd()?;
        std::thread::spawn(move || -> Result<T> {
            enter(&fd)?;
            Ok(f())
        })
        .join()
        .map_err(|_| LabError::Msg("a lab thread panicked".into()))?
    }

    /// Spawns a thread that has entered this namespace (for long-running work).
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<std::thread::JoinHandle<Result<T>>> {
        let fd = self.dup_fd()?;
        Ok(std::thread::spawn(move || -> Result<T> {
            enter(&fd)?;
            Ok(f())
        }))
    }

    /// A duplicate of the namespace file, for setns from another thread.
    pub fn dup_fd(&self) -> Result<OwnedFd> {
        self.file
            .try_clone()
            .map(OwnedFd::from)
            .map_err(|e| LabError::io(format!("duplicating the fd of namespace {}", self.name), e))
    }
}

/// Moves the calling thread into the network namespace `fd`.
pub fn enter(fd: &OwnedFd) -> Result<()> {
    netns::enter_net(fd.as_fd()).map_err(|e| LabError::io("entering a lab network namespace (setns)", e))
}

fn unmount(path: &std::path::Path) {
    let _ = netns::umount_detach(path);
    let _ = std::fs::remove_file(path);
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // The namespace (and the veth end inside it) goes when its last
        // reference goes: this mount, and fds/sockets of threads in it.
        unmount(&self.path);
        if let Ok(mut live) = LIVE.lock() {
            live.retain(|p| p != &self.path);
        }
    }
}

/// Removes every namespace this process made (for a signal path that cannot
/// unwind). Idempotent.
pub fn cleanup_all() {
    if let Ok(mut live) = LIVE.lock() {
        for p in live.drain(..) {
            unmount(&p);
        }
    }
}

/// The lab: `tx` sends (the generator's XDP_TX), `rx` receives (steer or the
/// kernel's RPS). Addresses are from the benchmarking range 198.18.0.0/15.
pub struct Topology {
    pub tx_ns: NetNs,
    pub rx_ns: NetNs,
    pub tx_if: String,
    pub rx_if: String,
    pub tx_ifindex: u32,
    pub rx_ifindex: u32,
    pub tx_mac: [u8; 6],
    pub rx_mac: [u8; 6],
    pub tx_ip: Ipv4Addr,
    pub rx_ip: Ipv4Addr,
}

/// A short id unique among the labs alive on this machine: the pid in hex,
/// 'x', a counter. Interface names stay within 15 bytes ("slt" + 6 + 1 + 5).
pub fn unique_id() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("{:x}x{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// The pid in a lab namespace name made by [`unique_id`], if it is one.
fn owner_pid(name: &str) -> Option<u32> {
    let id = name.strip_prefix("steer-lab-tx-").or_else(|| name.strip_prefix("steer-lab-rx-"))?;
    u32::from_str_radix(id.split_once('x')?.0, 16).ok()
}

/// Removes the namespaces of labs whose process is gone (killed with
/// SIGKILL, so no drop ran). Only names this module makes are touched.
/// Returns what was removed.
pub fn remove_stale() -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(NETNS_DIR) else { return Vec::new() };
    let mut removed = Vec::new();
    for e in dir.filter_map(|e| e.ok()) {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(pid) = owner_pid(&name) {
            if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                unmount(&e.path());
                removed.push(name);
            }
        }
    }
    removed
}

impl Topology {
    /// Builds the lab. On any error, what was made is removed again.
    pub fn new() -> Result<Self> {
        for n in remove_stale() {
            log::warn!("removed network namespace {n} left by a lab that was killed");
        }
        let id = unique_id();
        let tx_ns = NetNs::create(&format!("steer-lab-tx-{id}"))?;
        let rx_ns = NetNs::create(&format!("steer-lab-rx-{id}"))?;
        let (tx_if, rx_if) = (format!("slt{id}"), format!("slr{id}"));
        let (tx_mac, rx_mac) = ([0x02, 0x5e, 0x1a, 0, 0, 1], [0x02, 0x5e, 0x1a, 0, 0, 2]);
        let (tx_ip, rx_ip) = (Ipv4Addr::new(198, 18, 0, 1), Ipv4Addr::new(198, 18, 0, 2));
        let rx_fd = rx_ns.dup_fd()?;
        let (t_if, r_if) = (tx_if.clone(), rx_if.clone());
        // The pair is made inside tx, its peer moved straight into rx: the
        // root namespace never sees either end.
        let tx_ifindex = tx_ns.run(move || -> Result<u32> {
            let mut nl = Route::open().map_err(|e| LabError::io("opening a netlink socket", e))?;
            let what = format!("creating veth pair {t_if}/{r_if}");
            nl.new_veth(&t_if, tx_mac, &r_if, rx_mac, rx_fd.as_raw_fd()).map_err(|e| nl_err(&what, e))?;
            let idx = crate::iface::index(&t_if)?;
            configure(&mut nl, idx, tx_ip, rx_ip, rx_mac)?;
            tx_checksum_off(&t_if)?;
            Ok(idx)
        })??;
        let r_if = rx_if.clone();
        let rx_ifindex = rx_ns.run(move || -> Result<u32> {
            let mut nl = Route::open().map_err(|e| LabError::io("opening a netlink socket", e))?;
            let idx = crate::iface::index(&r_if)?;
            configure(&mut nl, idx, rx_ip, tx_ip, tx_mac)?;
            Ok(idx)
        })??;
        Ok(Self { tx_ns, rx_ns, tx_if, rx_if, tx_ifindex, rx_ifindex, tx_mac, rx_mac, tx_ip, rx_ip })
    }
}

fn nl_err(what: &str, e: std::io::Error) -> LabError {
    LabError::io(format!("netlink: {what}"), e)
}

/// Gives lab interface `idx` address `ip`/24, brings it and lo up, and adds
/// the peer `peer_ip` as a permanent neighbour (no ARP in the traffic's way).
fn configure(nl: &mut Route, idx: u32, ip: Ipv4Addr, peer_ip: Ipv4Addr, peer_mac: [u8; 6]) -> Result<()> {
    nl.add_addr4(idx, ip, 24).map_err(|e| nl_err(&format!("adding {ip}/24 to interface {idx}"), e))?;
    nl.set_up(idx).map_err(|e| nl_err(&format!("setting interface {idx} up"), e))?;
    nl.set_up(1).map_err(|e| nl_err("setting interface 1 up", e))?;
    nl.add_neigh4(idx, peer_ip, peer_mac)
        .map_err(|e| nl_err(&format!("adding neighbour {peer_ip} on interface {idx}"), e))
}

/// Turns tx checksum offload off on the lab's sending veth (ethtool ioctl, in
/// the calling thread's namespace). TCP from the peer otherwise loses its
/// CHECKSUM_PARTIAL through native XDP + CPUMAP and is dropped as a checksum
/// error (a trap measured on 6.18); the sender then computes checksums in
/// software, equally for every scenario.
fn tx_checksum_off(ifname: &str) -> Result<()> {
    crate::nic::ethtool::Ethtool::open(ifname)?.set_tx_checksum(false)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_name_their_owner_and_fit_interface_names() {
        let id = unique_id();
        assert!(format!("slt{id}").len() <= 15, "{id}");
        assert_eq!(owner_pid(&format!("steer-lab-rx-{id}")), Some(std::process::id()));
        assert_eq!(owner_pid("steer-rx-61345"), None);
        assert_eq!(owner_pid("steer-lab-tx-zz"), None);
    }
}
