//! Someone else's XDP program on the interface: find it, take it off for
//! `--replace`, and put it back when steer stops (or after a crash, with
//! `steer restore`, from the pin steer keeps of it).
//!
//! steer attaches through a bpf link, which the kernel refuses while another
//! program is attached. A program attached through netlink (`ip link set ...
//! xdp`, most loaders) can be detached through netlink and re-attached later
//! from its id; one attached through a bpf link belongs to the process that
//! holds the link and cannot be taken over. Raw rtnetlink: two messages, not
//! worth a dependency.

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::Path,
};

use crate::error::{Error, Result};

const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const RTM_SETLINK: u16 = 19;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const IFLA_XDP: u16 = 43;
const NLA_F_NESTED: u16 = 0x8000;
const IFLA_XDP_FD: u16 = 1;
const IFLA_XDP_ATTACHED: u16 = 2;
const IFLA_XDP_FLAGS: u16 = 3;
const IFLA_XDP_PROG_ID: u16 = 4;
const XDP_ATTACHED_DRV: u8 = 1;
const XDP_ATTACHED_SKB: u8 = 2;
const XDP_FLAGS_SKB_MODE: u32 = 2;
const XDP_FLAGS_DRV_MODE: u32 = 4;

/// The XDP program attached to an interface (netlink's view).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Attached {
    pub prog_id: u32,
    /// `XDP_FLAGS_SKB_MODE` (generic) or `XDP_FLAGS_DRV_MODE` (native).
    pub mode_flags: u32,
}

impl Attached {
    pub fn mode_name(&self) -> &'static str {
        if self.mode_flags == XDP_FLAGS_SKB_MODE {
            "generic"
        } else {
            "native"
        }
    }
}

fn attr(buf: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    let len = 4 + payload.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(payload);
    buf.resize(buf.len().next_multiple_of(4), 0);
}

/// nlmsghdr + ifinfomsg for `ifindex`, then `attrs`.
fn link_msg(kind: u16, flags: u16, ifindex: u32, attrs: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(64);
    let len = 16 + 16 + attrs.len();
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&kind.to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&1u32.to_ne_bytes()); // seq
    m.extend_from_slice(&0u32.to_ne_bytes()); // pid: the kernel's
    m.extend_from_slice(&[0u8; 4]); // family, pad, type
    m.extend_from_slice(&(ifindex as i32).to_ne_bytes());
    m.extend_from_slice(&[0u8; 8]); // flags, change
    m.extend_from_slice(attrs);
    m
}

/// Sends one request on a fresh rtnetlink socket and returns the first reply.
fn transact(msg: &[u8]) -> io::Result<Vec<u8>> {
    // SAFETY: plain socket syscall; the fd is owned right away.
    let fd =
        unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_ROUTE) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a new, valid descriptor nobody else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: a zeroed sockaddr_nl addressed to the kernel.
    let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    kernel.nl_family = libc::AF_NETLINK as u16;
    // SAFETY: msg and kernel outlive the call.
    let sent = unsafe {
        libc::sendto(
            sock.as_raw_fd(),
            msg.as_ptr().cast(),
            msg.len(),
            0,
            (&kernel as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = vec![0u8; 65536];
    // SAFETY: buf is writable for its length.
    let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(buf)
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Walks netlink attributes: (type without flags, payload).
fn attrs(mut b: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        let len = u16_at(b, 0)? as usize;
        let kind = u16_at(b, 2)? & !NLA_F_NESTED;
        let payload = b.get(4..len)?;
        b = b.get(len.next_multiple_of(4)..).unwrap_or(&[]);
        Some((kind, payload))
    })
}

/// The errno of an NLMSG_ERROR reply (0: success).
fn ack(reply: &[u8]) -> io::Result<()> {
    match (u16_at(reply, 4), u32_at(reply, 16)) {
        (Some(NLMSG_ERROR), Some(0)) => Ok(()),
        (Some(NLMSG_ERROR), Some(e)) => Err(io::Error::from_raw_os_error(-(e as i32))),
        _ => Err(io::Error::new(io::ErrorKind::InvalidData, "unexpected rtnetlink reply")),
    }
}

/// The XDP program netlink reports on `ifindex`, if any (in this network namespace).
pub fn query(ifindex: u32) -> Result<Option<Attached>> {
    let reply = transact(&link_msg(RTM_GETLINK, NLM_F_REQUEST, ifindex, &[]))
        .map_err(|e| Error::io("RTM_GETLINK", e))?;
    if u16_at(&reply, 4) != Some(RTM_NEWLINK) {
        ack(&reply).map_err(|e| Error::io(format!("RTM_GETLINK for ifindex {ifindex}"), e))?;
        return Ok(None);
    }
    let len = (u32_at(&reply, 0).unwrap_or(0) as usize).min(reply.len());
    let body = reply.get(32..len).unwrap_or(&[]);
    let Some((_, xdp)) = attrs(body).find(|(k, _)| *k == IFLA_XDP) else {
        return Ok(None);
    };
    let mut mode = 0u8;
    let mut id = 0u32;
    for (k, v) in attrs(xdp) {
        match k {
            IFLA_XDP_ATTACHED => mode = v.first().copied().unwrap_or(0),
            IFLA_XDP_PROG_ID => id = u32_at(v, 0).unwrap_or(0),
            _ => {}
        }
    }
    let mode_flags = match mode {
        XDP_ATTACHED_SKB => XDP_FLAGS_SKB_MODE,
        XDP_ATTACHED_DRV => XDP_FLAGS_DRV_MODE,
        _ => return Ok(None), // none, offloaded, or several at once: not ours to juggle
    };
    Ok((id != 0).then_some(Attached { prog_id: id, mode_flags }))
}

/// Attaches program `fd` (or detaches with -1) through netlink in `mode_flags`.
pub fn set(ifindex: u32, fd: i32, mode_flags: u32) -> io::Result<()> {
    let mut nested = Vec::new();
    attr(&mut nested, IFLA_XDP_FD, &fd.to_ne_bytes());
    attr(&mut nested, IFLA_XDP_FLAGS, &mode_flags.to_ne_bytes());
    let mut a = Vec::new();
    attr(&mut a, IFLA_XDP | NLA_F_NESTED, &nested);
    ack(&transact(&link_msg(RTM_SETLINK, NLM_F_REQUEST | NLM_F_ACK, ifindex, &a))?)
}

/// `set` for re-attaching, retried while the kernel still shows steer's link:
/// unpinning the last reference to a bpf link frees it from a workqueue, so
/// the hook can be busy for a moment after `steer restore` unpinned it.
fn reattach(ifindex: u32, fd: i32, mode_flags: u32) -> io::Result<()> {
    let mut tries = 0;
    loop {
        match set(ifindex, fd, mode_flags) {
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && tries < 100 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

/// An fd for program `id` (BPF_PROG_GET_FD_BY_ID): keeps it alive while detached.
fn prog_fd_by_id(id: u32) -> io::Result<OwnedFd> {
    let attr: [u32; 4] = [id, 0, 0, 0];
    const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
    // SAFETY: a valid bpf_attr prefix with its size.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_PROG_GET_FD_BY_ID, attr.as_ptr(), 16usize) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn bpf_obj(cmd: libc::c_long, path: &Path, fd: i32) -> io::Result<i64> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))?;
    #[repr(C)]
    struct ObjAttr {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
    }
    let a = ObjAttr { pathname: c.as_ptr() as u64, bpf_fd: fd as u32, file_flags: 0 };
    // SAFETY: BPF_OBJ_PIN (6) / BPF_OBJ_GET (7) with a valid attr; c outlives the call.
    let rc =
        unsafe { libc::syscall(libc::SYS_bpf, cmd, &a as *const ObjAttr, std::mem::size_of::<ObjAttr>()) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc)
}

/// A foreign program steer took off the interface. Pinned at `pin` while
/// detached, so that it survives a crash of steer.
pub struct Replaced {
    pub ifindex: u32,
    pub was: Attached,
    fd: OwnedFd,
    pin: std::path::PathBuf,
}

/// Takes the netlink-attached program off `ifindex`, keeping it pinned at `pin`.
pub fn take_over(iface: &str, ifindex: u32, was: Attached, pin: &Path) -> Result<Replaced> {
    let fd = prog_fd_by_id(was.prog_id)
        .map_err(|e| Error::io(format!("getting XDP program {} of \"{iface}\"", was.prog_id), e))?;
    let _ = std::fs::remove_file(pin);
    bpf_obj(6, pin, fd.as_raw_fd())
        .map_err(|e| Error::io(format!("pinning the replaced program at {}", pin.display()), e))?;
    if let Err(e) = set(ifindex, -1, was.mode_flags) {
        let _ = std::fs::remove_file(pin);
        return Err(if e.raw_os_error() == Some(libc::EBUSY) {
            Error::Ebpf(format!(
                "the XDP program {} on \"{iface}\" is attached through a bpf link held by another process: \
                 --replace cannot take it over; stop its owner first",
                was.prog_id
            ))
        } else {
            Error::io(format!("detaching XDP program {} from \"{iface}\"", was.prog_id), e)
        });
    }
    log::warn!(
        "--replace: took XDP program {} ({}) off {iface}; it goes back when steer stops",
        was.prog_id,
        was.mode_name()
    );
    Ok(Replaced { ifindex, was, fd, pin: pin.to_path_buf() })
}

impl Replaced {
    /// Re-attaches the program (steer's own must be detached by now) and unpins it.
    pub fn give_back(self) -> Result<()> {
        reattach(self.ifindex, self.fd.as_raw_fd(), self.was.mode_flags)
            .map_err(|e| Error::io(format!("re-attaching XDP program {}", self.was.prog_id), e))?;
        let _ = std::fs::remove_file(&self.pin);
        log::info!("re-attached XDP program {} ({})", self.was.prog_id, self.was.mode_name());
        Ok(())
    }
}

/// After a crash: re-attaches the program pinned at `pin` in `mode_flags` and unpins it.
pub fn give_back_pinned(ifindex: u32, pin: &Path, mode_flags: u32) -> Result<()> {
    let fd = bpf_obj(7, pin, 0).map_err(|e| Error::io(format!("opening {}", pin.display()), e))?;
    // SAFETY: BPF_OBJ_GET returned a new fd we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    reattach(ifindex, fd.as_raw_fd(), mode_flags)
        .map_err(|e| Error::io("re-attaching the replaced XDP program", e))?;
    std::fs::remove_file(pin).map_err(|e| Error::io(format!("unpinning {}", pin.display()), e))
}
