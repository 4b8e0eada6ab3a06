//! Someone else's XDP program on the interface: find it, take it off for
//! `--replace`, and put it back when steer stops (or after a crash, with
//! `steer restore`, from the pin steer keeps of it).
//!
//! steer attaches through a bpf link, which the kernel refuses while another
//! program is attached. A program attached through netlink (`ip link set ...
//! xdp`, most loaders) can be detached through netlink and re-attached later
//! from its id; one attached through a bpf link belongs to the process that
//! holds the link and cannot be taken over.

use std::{
    io,
    os::fd::{AsFd, AsRawFd, OwnedFd},
    path::Path,
};

use crate::{
    error::{Error, Result},
    sys::{
        bpf,
        netlink::{Route, XdpMode},
    },
};

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

/// The XDP program netlink reports on `ifindex`, if any (in this network namespace).
pub fn query(ifindex: u32) -> Result<Option<Attached>> {
    let xdp = Route::open()
        .and_then(|mut nl| nl.link_xdp(ifindex))
        .map_err(|e| Error::io(format!("RTM_GETLINK for ifindex {ifindex}"), e))?;
    let Some(xdp) = xdp else { return Ok(None) };
    let mode_flags = match xdp.mode {
        XdpMode::Skb => XDP_FLAGS_SKB_MODE,
        XdpMode::Driver => XDP_FLAGS_DRV_MODE,
        XdpMode::Other => return Ok(None), // offloaded, or several at once: not ours to juggle
    };
    Ok((xdp.prog_id != 0).then_some(Attached { prog_id: xdp.prog_id, mode_flags }))
}

/// Attaches program `fd` (or detaches with -1) through netlink in `mode_flags`.
pub fn set(ifindex: u32, fd: i32, mode_flags: u32) -> io::Result<()> {
    Route::open()?.set_link_xdp_fd(ifindex, fd, mode_flags)
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
    let fd = bpf::prog_get_fd_by_id(was.prog_id)
        .map_err(|e| Error::io(format!("getting XDP program {} of \"{iface}\"", was.prog_id), e))?;
    let _ = std::fs::remove_file(pin);
    bpf::obj_pin(pin, fd.as_fd())
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
    let fd = aya::programs::ProgramInfo::from_pin(pin)
        .and_then(|p| p.fd())
        .map_err(|e| Error::io(format!("opening {}", pin.display()), program_io(e)))?;
    reattach(ifindex, fd.as_fd().as_raw_fd(), mode_flags)
        .map_err(|e| Error::io("re-attaching the replaced XDP program", e))?;
    std::fs::remove_file(pin).map_err(|e| Error::io(format!("unpinning {}", pin.display()), e))
}

/// The errno under an aya program error, or the error in words.
fn program_io(e: aya::programs::ProgramError) -> io::Error {
    match e {
        aya::programs::ProgramError::SyscallError(s) => s.io_error,
        other => io::Error::other(other.to_string()),
    }
}
