//! Every raw call steer makes into the kernel, and nearly all of its `unsafe`.
//! The rest of the crate calls the typed functions here and adds what the
//! user should read (which interface, which program, what to do).
//!
//! - [`netlink`]: rtnetlink (links, XDP by netlink, veth, addresses,
//!   neighbours) through the `netlink-packet-route` and `netlink-sys` crates.
//! - [`ethtool`]: the SIOCETHTOOL ioctl, hand-written (why: in its docs).
//! - [`bpf`]: the bpf(2) commands aya 0.14 lacks for steer's use, hand-written.
//! - [`netns`]: unshare/setns and the bind mounts that keep a network namespace.

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
