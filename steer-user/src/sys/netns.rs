//! Network namespaces of the calling thread: make one, keep it with a bind
//! mount, enter one, and drop the mount again. Each call affects the calling
//! thread only, which is why the lab makes and enters namespaces on threads of
//! their own.

use std::{
    ffi::CString,
    io,
    os::fd::{AsRawFd, BorrowedFd},
    path::Path,
};

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Moves the calling thread into a new network namespace (unshare(CLONE_NEWNET)).
pub fn unshare_net() -> io::Result<()> {
    // SAFETY: affects only the calling thread's network namespace.
    check(unsafe { libc::unshare(libc::CLONE_NEWNET) })
}

/// Bind-mounts the calling thread's network namespace at `target` (an existing file).
pub fn bind_own_netns(target: &Path) -> io::Result<()> {
    let src = c_path(Path::new("/proc/thread-self/ns/net"))?;
    let dst = c_path(target)?;
    // SAFETY: both strings are NUL-terminated and outlive the call; no data argument.
    check(unsafe {
        libc::mount(src.as_ptr(), dst.as_ptr(), std::ptr::null(), libc::MS_BIND, std::ptr::null())
    })
}

/// Moves the calling thread into the network namespace `fd`.
pub fn enter_net(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: setns on the calling thread with a namespace fd the caller holds.
    check(unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) })
}

/// Detaches the mount at `path` (umount2 with MNT_DETACH).
pub fn umount_detach(path: &Path) -> io::Result<()> {
    let c = c_path(path)?;
    // SAFETY: a NUL-terminated path that outlives the call.
    check(unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) })
}
