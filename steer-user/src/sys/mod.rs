//! Every raw call steer makes into the kernel, and nearly all of its `unsafe`.
//! The rest of the crate calls the typed functions here and adds what the
//! user should read (which interface, which program, what to do).
//!
//! - [`netlink`]: rtnetlink (links, XDP by netlink, veth, addresses,
//!   neighbours) through the `netlink-packet-route` and `netlink-sys` crates.
//! - [`ethtool`]: the SIOCETHTOOL ioctl, hand-written (why: in its docs).
//! - [`bpf`]: the bpf(2) commands aya 0.14 lacks for steer's use, hand-written.
//! - [`netns`]: unshare/setns, the bind mounts that keep a network namespace,
//!   and what `ip netns exec` does to a process before it execs.
//! - [`tun`]: persistent TAP devices through /dev/net/tun.

pub mod bpf;
pub mod ethtool;
pub mod netlink;
pub mod netns;

use std::ffi::CStr;

/// The index of interface `name` in the caller's network namespace
/// (if_nametoindex(3), SIOCGIFINDEX behind libc), or None.
pub fn if_nametoindex(name: &CStr) -> Option<u32> {
    // SAFETY: `name` is a valid NUL-terminated string.
    let idx = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (idx != 0).then_some(idx)
}

/// Persistent TAP devices, made the way `ip tuntap add mode tap` makes them:
/// TUNSETIFF on /dev/net/tun creates the device in the network namespace of
/// the thread that opens the file, TUNSETPERSIST keeps it after the fd
/// closes. It goes with RTM_DELLINK ([`netlink::Route::del_link`]) or with its
/// namespace. Inline here: two ioctls do not make a module file of their own.
pub mod tun {
    use std::{
        fs::OpenOptions,
        io,
        os::fd::{AsRawFd, OwnedFd},
    };

    /// Creates TAP device `name` (IFF_TAP | IFF_NO_PI) and makes it persistent.
    pub fn create_persistent_tap(name: &str) -> io::Result<()> {
        if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('\0') {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("bad interface name {name:?}")));
        }
        let f: OwnedFd = OpenOptions::new().read(true).write(true).open("/dev/net/tun")?.into();
        // SAFETY: an all-zero ifreq is valid (empty name, zero union).
        let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
        for (d, s) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
            *d = s as libc::c_char;
        }
        ifr.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
        // SAFETY: TUNSETIFF reads and writes the ifreq we own for the duration of the call.
        if unsafe { libc::ioctl(f.as_raw_fd(), libc::TUNSETIFF, &mut ifr) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: TUNSETPERSIST takes an integer argument, no pointer.
        if unsafe { libc::ioctl(f.as_raw_fd(), libc::TUNSETPERSIST, 1 as libc::c_ulong) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}
