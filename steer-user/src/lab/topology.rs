//! The lab's topology, built by netlink alone (the benchmark machine has no
//! `ip` binary): two fresh network namespaces, `tx` and `rx`, joined by a veth
//! pair. Namespaces are made with unshare(CLONE_NEWNET) on a helper thread and
//! bind-mounted under /run/netns (so `ip netns` sees them and they can be
//! removed); everything is removed on drop, and [`cleanup_all`] removes what a
//! signal interrupted.
//!
//! The building blocks are public because the integration tests build their
//! labs with them too: links by name in the calling thread's namespace
//! ([`create_veth`], [`set_link_up`], [`add_address`], ...) and the same
//! operations inside a [`NetNs`] (its methods), so no test needs `ip`.

use std::{
    fs::File,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd},
    path::PathBuf,
    sync::{
        atomic::{AtomicU32, Ordering},
        Mutex,
    },
};

use super::{LabError, Result};
use crate::sys::{
    netlink::{Route, VethEnd},
    netns, tun,
};

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

    /// Runs `f(ifname)` on a thread in this namespace; its error says which namespace.
    fn on_link(&self, ifname: &str, f: impl FnOnce(&str) -> Result<()> + Send + 'static) -> Result<()> {
        let name = ifname.to_string();
        self.run(move || f(&name))?.map_err(|e| match e {
            LabError::Io { what, source } => {
                LabError::io(format!("{what} in namespace {}", self.name), source)
            }
            e => e,
        })
    }

    /// The index of interface `ifname` in this namespace.
    pub fn index(&self, ifname: &str) -> Result<u32> {
        let name = ifname.to_string();
        Ok(self.run(move || crate::iface::index(&name))??)
    }

    /// [`set_link_up`] in this namespace.
    pub fn set_link_up(&self, ifname: &str) -> Result<()> {
        self.on_link(ifname, set_link_up)
    }

    /// [`set_link_mac`] in this namespace.
    pub fn set_link_mac(&self, ifname: &str, mac: [u8; 6]) -> Result<()> {
        self.on_link(ifname, move |n| set_link_mac(n, mac))
    }

    /// [`add_address`] in this namespace.
    pub fn add_address(&self, ifname: &str, addr: IpAddr, prefix: u8) -> Result<()> {
        self.on_link(ifname, move |n| add_address(n, addr, prefix))
    }

    /// [`add_neighbour`] in this namespace.
    pub fn add_neighbour(&self, ifname: &str, addr: Ipv4Addr, mac: [u8; 6]) -> Result<()> {
        self.on_link(ifname, move |n| add_neighbour(n, addr, mac))
    }

    /// [`delete_link`] in this namespace.
    pub fn delete_link(&self, ifname: &str) -> Result<()> {
        self.on_link(ifname, delete_link)
    }

    /// [`create_tap`] in this namespace.
    pub fn create_tap(&self, ifname: &str) -> Result<()> {
        self.on_link(ifname, create_tap)
    }

    /// Gives lab interface `ifname` address `ip`/24 (and `ip6`/64, usable at
    /// once: no duplicate address detection), brings it and lo up, and adds
    /// the peer `peer_ip` as a permanent neighbour (no ARP in the traffic's
    /// way). Returns the interface's index.
    pub fn configure_end(
        &self,
        ifname: &str,
        ip: Ipv4Addr,
        ip6: Option<Ipv6Addr>,
        peer_ip: Ipv4Addr,
        peer_mac: [u8; 6],
    ) -> Result<u32> {
        let name = ifname.to_string();
        let ns = self.name.clone();
        self.run(move || -> Result<u32> {
            let mut nl = route()?;
            let idx = crate::iface::index(&name)?;
            let at = format!("{name} in namespace {ns}");
            nl.add_addr4(idx, ip, 24).map_err(|e| nl_err(&format!("adding {ip}/24 to {at}"), e))?;
            if let Some(ip6) = ip6 {
                nl.add_addr6(idx, ip6, 64, true)
                    .map_err(|e| nl_err(&format!("adding {ip6}/64 to {at}"), e))?;
            }
            nl.set_up(idx).map_err(|e| nl_err(&format!("setting {at} up"), e))?;
            nl.set_up(1).map_err(|e| nl_err(&format!("setting lo up in namespace {ns}"), e))?;
            nl.add_neigh4(idx, peer_ip, peer_mac)
                .map_err(|e| nl_err(&format!("adding neighbour {peer_ip} on {at}"), e))?;
            Ok(idx)
        })?
    }
}

impl AsFd for NetNs {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

impl AsRawFd for NetNs {
    /// For [`VethEnd::netns`]: a veth end created straight into this namespace.
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

fn route() -> Result<Route> {
    Route::open().map_err(|e| LabError::io("opening a netlink socket", e))
}

/// Creates a veth pair from the calling thread's namespace, each end in the
/// namespace it names ([`VethEnd::netns`], e.g. `ns.as_raw_fd()`). Where an
/// end names none, kernels differ on where it goes (the caller's namespace or
/// the other end's): name both where it matters.
pub fn create_veth(a: VethEnd<'_>, b: VethEnd<'_>) -> Result<()> {
    route()?.new_veth(a, b).map_err(|e| nl_err(&format!("creating veth pair {}/{}", a.name, b.name), e))
}

/// Sets interface `ifname` of the calling thread's namespace administratively up.
pub fn set_link_up(ifname: &str) -> Result<()> {
    let idx = crate::iface::index(ifname)?;
    route()?.set_up(idx).map_err(|e| nl_err(&format!("setting {ifname} up"), e))
}

/// Sets the MAC address of interface `ifname` of the calling thread's namespace.
pub fn set_link_mac(ifname: &str, mac: [u8; 6]) -> Result<()> {
    let idx = crate::iface::index(ifname)?;
    route()?.set_mac(idx, mac).map_err(|e| nl_err(&format!("setting the MAC address of {ifname}"), e))
}

/// Adds `addr/prefix` to interface `ifname` of the calling thread's
/// namespace; an IPv6 address without duplicate address detection (usable at
/// once, as `ip addr add ... nodad`).
pub fn add_address(ifname: &str, addr: IpAddr, prefix: u8) -> Result<()> {
    let idx = crate::iface::index(ifname)?;
    let mut nl = route()?;
    match addr {
        IpAddr::V4(a) => nl.add_addr4(idx, a, prefix),
        IpAddr::V6(a) => nl.add_addr6(idx, a, prefix, true),
    }
    .map_err(|e| nl_err(&format!("adding {addr}/{prefix} to {ifname}"), e))
}

/// A permanent neighbour `addr` -> `mac` on interface `ifname` of the calling thread's namespace.
pub fn add_neighbour(ifname: &str, addr: Ipv4Addr, mac: [u8; 6]) -> Result<()> {
    let idx = crate::iface::index(ifname)?;
    route()?
        .add_neigh4(idx, addr, mac)
        .map_err(|e| nl_err(&format!("adding neighbour {addr} on {ifname}"), e))
}

/// Deletes interface `ifname` of the calling thread's namespace (a veth's peer goes with it).
pub fn delete_link(ifname: &str) -> Result<()> {
    let idx = crate::iface::index(ifname)?;
    route()?.del_link(idx).map_err(|e| nl_err(&format!("deleting {ifname}"), e))
}

/// Creates a persistent TAP device `ifname` in the calling thread's
/// namespace (as `ip tuntap add mode tap`); [`delete_link`] removes it.
pub fn create_tap(ifname: &str) -> Result<()> {
    tun::create_persistent_tap(ifname)
        .map_err(|e| LabError::io(format!("creating TAP device {ifname} through /dev/net/tun"), e))
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
        // Each end is created straight into its namespace: the root
        // namespace never sees either.
        create_veth(
            VethEnd::new(&tx_if).mac(tx_mac).netns(tx_ns.as_raw_fd()),
            VethEnd::new(&rx_if).mac(rx_mac).netns(rx_ns.as_raw_fd()),
        )?;
        let tx_ifindex = tx_ns.configure_end(&tx_if, tx_ip, None, rx_ip, rx_mac)?;
        let t_if = tx_if.clone();
        tx_ns.run(move || tx_checksum_off(&t_if))??;
        let rx_ifindex = rx_ns.configure_end(&rx_if, rx_ip, None, tx_ip, tx_mac)?;
        Ok(Self { tx_ns, rx_ns, tx_if, rx_if, tx_ifindex, rx_ifindex, tx_mac, rx_mac, tx_ip, rx_ip })
    }
}

fn nl_err(what: &str, e: std::io::Error) -> LabError {
    LabError::io(format!("netlink: {what}"), e)
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
