//! The lab's topology, built by netlink alone (the benchmark machine has no
//! `ip` binary): two fresh network namespaces, `tx` and `rx`, joined by a veth
//! pair. Namespaces are made with unshare(CLONE_NEWNET) on a helper thread and
//! bind-mounted under /run/netns (so `ip netns` sees them and they can be
//! removed); everything is removed on drop, and [`cleanup_all`] removes what a
//! signal interrupted.

use std::{
    ffi::CString,
    fs::File,
    net::Ipv4Addr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::PathBuf,
    sync::{
        atomic::{AtomicU32, Ordering},
        Mutex,
    },
};

use super::{LabError, Result};

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
            // SAFETY: affects only the calling thread's network namespace.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let src = CString::new("/proc/thread-self/ns/net")?;
            let dst = CString::new(target.as_os_str().as_encoded_bytes())?;
            // SAFETY: valid strings; a bind mount of this thread's namespace file.
            if unsafe {
                libc::mount(src.as_ptr(), dst.as_ptr(), std::ptr::null(), libc::MS_BIND, std::ptr::null())
            } != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
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
    // SAFETY: setns on the calling thread with a namespace fd we hold.
    if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(LabError::io(
            "entering a lab network namespace (setns)",
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

fn unmount(path: &std::path::Path) {
    if let Ok(c) = CString::new(path.as_os_str().as_encoded_bytes()) {
        // SAFETY: valid path string.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
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
            let nl = Netlink::open()?;
            nl.new_veth(&t_if, tx_mac, &r_if, rx_mac, rx_fd.as_raw_fd())?;
            let idx = crate::iface::index(&t_if)?;
            nl.add_addr4(idx, tx_ip, 24)?;
            nl.set_up(idx)?;
            nl.set_up(1)?;
            nl.add_neigh4(idx, rx_ip, rx_mac)?;
            tx_checksum_off(&t_if)?;
            Ok(idx)
        })??;
        let r_if = rx_if.clone();
        let rx_ifindex = rx_ns.run(move || -> Result<u32> {
            let nl = Netlink::open()?;
            let idx = crate::iface::index(&r_if)?;
            nl.add_addr4(idx, rx_ip, 24)?;
            nl.set_up(idx)?;
            nl.set_up(1)?;
            nl.add_neigh4(idx, tx_ip, tx_mac)?;
            Ok(idx)
        })??;
        Ok(Self { tx_ns, rx_ns, tx_if, rx_if, tx_ifindex, rx_ifindex, tx_mac, rx_mac, tx_ip, rx_ip })
    }
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

// ---- a minimal rtnetlink client: just the four requests the lab needs ----

const NLMSG_ERROR: u16 = 2;
const RTM_NEWLINK: u16 = 16;
const RTM_NEWADDR: u16 = 20;
const RTM_NEWNEIGH: u16 = 28;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_LINKINFO: u16 = 18;
const IFLA_NET_NS_FD: u16 = 28;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_DATA: u16 = 2;
const VETH_INFO_PEER: u16 = 1;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const NDA_DST: u16 = 1;
const NDA_LLADDR: u16 = 2;
const NUD_PERMANENT: u16 = 0x80;
const NLA_F_NESTED: u16 = 0x8000;

/// A message under construction: header fields patched in by `finish`.
struct Msg {
    buf: Vec<u8>,
}

impl Msg {
    fn new(kind: u16, flags: u16, body: &[u8]) -> Self {
        let mut buf = vec![0u8; 16];
        buf[4..6].copy_from_slice(&kind.to_ne_bytes());
        buf[6..8].copy_from_slice(&(flags | NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
        buf[8..12].copy_from_slice(&1u32.to_ne_bytes());
        buf.extend_from_slice(body);
        Self { buf }
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    fn attr(&mut self, kind: u16, data: &[u8]) -> &mut Self {
        self.pad();
        self.buf.extend_from_slice(&((4 + data.len()) as u16).to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self
    }

    /// Opens a nested attribute; `close` writes its length.
    fn open(&mut self, kind: u16) -> usize {
        self.pad();
        let at = self.buf.len();
        self.buf.extend_from_slice(&[0, 0]);
        self.buf.extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
        at
    }

    fn close(&mut self, at: usize) {
        self.pad();
        let len = (self.buf.len() - at) as u16;
        self.buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
    }

    fn finish(mut self) -> Vec<u8> {
        self.pad();
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf
    }
}

fn ifinfomsg(index: i32, flags: u32, change: u32) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[0] = libc::AF_UNSPEC as u8;
    b[4..8].copy_from_slice(&index.to_ne_bytes());
    b[8..12].copy_from_slice(&flags.to_ne_bytes());
    b[12..16].copy_from_slice(&change.to_ne_bytes());
    b
}

fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

/// A NETLINK_ROUTE socket in the namespace of the thread that opened it.
pub struct Netlink {
    fd: OwnedFd,
}

impl Netlink {
    pub fn open() -> Result<Self> {
        // SAFETY: plain socket syscall; the fd is owned below.
        let fd = unsafe {
            libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_ROUTE)
        };
        if fd < 0 {
            return Err(LabError::io("opening a netlink socket", std::io::Error::last_os_error()));
        }
        // SAFETY: fd is a fresh socket we own.
        Ok(Self { fd: unsafe { OwnedFd::from_raw_fd(fd) } })
    }

    /// Sends one request and waits for its acknowledgement.
    fn request(&self, what: &str, msg: Msg) -> Result<()> {
        let buf = msg.finish();
        // SAFETY: buf is valid for its length; the kernel is the destination (zeroed sockaddr_nl).
        let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as u16;
        let rc = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                buf.as_ptr().cast(),
                buf.len(),
                0,
                (&sa as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if rc < 0 {
            return Err(LabError::io(format!("netlink: {what}"), std::io::Error::last_os_error()));
        }
        let mut resp = vec![0u8; 8192];
        loop {
            // SAFETY: resp is a writable buffer of its length.
            let n = unsafe { libc::recv(self.fd.as_raw_fd(), resp.as_mut_ptr().cast(), resp.len(), 0) };
            if n < 0 {
                return Err(LabError::io(format!("netlink: {what}"), std::io::Error::last_os_error()));
            }
            let n = n as usize;
            let mut off = 0;
            while off + 16 <= n {
                let len =
                    u32::from_ne_bytes([resp[off], resp[off + 1], resp[off + 2], resp[off + 3]]) as usize;
                let kind = u16::from_ne_bytes([resp[off + 4], resp[off + 5]]);
                if kind == NLMSG_ERROR && off + 20 <= n {
                    let err =
                        i32::from_ne_bytes([resp[off + 16], resp[off + 17], resp[off + 18], resp[off + 19]]);
                    if err == 0 {
                        return Ok(());
                    }
                    return Err(LabError::io(
                        format!("netlink: {what}"),
                        std::io::Error::from_raw_os_error(-err),
                    ));
                }
                if len < 16 {
                    break;
                }
                off += (len + 3) & !3;
            }
        }
    }

    /// A veth pair `name`/`peer` with fixed MACs; the peer goes into the
    /// namespace `peer_ns_fd`.
    pub fn new_veth(
        &self,
        name: &str,
        mac: [u8; 6],
        peer: &str,
        peer_mac: [u8; 6],
        peer_ns_fd: i32,
    ) -> Result<()> {
        let mut m = Msg::new(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, &ifinfomsg(0, 0, 0));
        m.attr(IFLA_IFNAME, &cstr(name)).attr(IFLA_ADDRESS, &mac);
        let info = m.open(IFLA_LINKINFO);
        m.attr(IFLA_INFO_KIND, b"veth");
        let data = m.open(IFLA_INFO_DATA);
        let p = m.open(VETH_INFO_PEER);
        m.buf.extend_from_slice(&ifinfomsg(0, 0, 0));
        m.attr(IFLA_IFNAME, &cstr(peer))
            .attr(IFLA_ADDRESS, &peer_mac)
            .attr(IFLA_NET_NS_FD, &peer_ns_fd.to_ne_bytes());
        m.close(p);
        m.close(data);
        m.close(info);
        self.request(&format!("creating veth pair {name}/{peer}"), m)
    }

    pub fn set_up(&self, ifindex: u32) -> Result<()> {
        let up = libc::IFF_UP as u32;
        let m = Msg::new(RTM_NEWLINK, 0, &ifinfomsg(ifindex as i32, up, up));
        self.request(&format!("setting interface {ifindex} up"), m)
    }

    pub fn add_addr4(&self, ifindex: u32, addr: Ipv4Addr, prefix: u8) -> Result<()> {
        let mut body = [0u8; 8];
        body[0] = libc::AF_INET as u8;
        body[1] = prefix;
        body[4..8].copy_from_slice(&ifindex.to_ne_bytes());
        let mut m = Msg::new(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, &body);
        m.attr(IFA_LOCAL, &addr.octets()).attr(IFA_ADDRESS, &addr.octets());
        self.request(&format!("adding {addr}/{prefix} to interface {ifindex}"), m)
    }

    /// A permanent neighbour entry: no ARP in the way of the traffic.
    pub fn add_neigh4(&self, ifindex: u32, addr: Ipv4Addr, mac: [u8; 6]) -> Result<()> {
        let mut body = [0u8; 12];
        body[0] = libc::AF_INET as u8;
        body[4..8].copy_from_slice(&(ifindex as i32).to_ne_bytes());
        body[8..10].copy_from_slice(&NUD_PERMANENT.to_ne_bytes());
        let mut m = Msg::new(RTM_NEWNEIGH, NLM_F_CREATE | NLM_F_EXCL, &body);
        m.attr(NDA_DST, &addr.octets()).attr(NDA_LLADDR, &mac);
        self.request(&format!("adding neighbour {addr} on interface {ifindex}"), m)
    }
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
