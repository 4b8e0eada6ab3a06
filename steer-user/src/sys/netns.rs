//! Network namespaces of the calling thread: make one, keep it with a bind
//! mount, enter one, and drop the mount again. Each call affects the calling
//! thread only, which is why the lab makes and enters namespaces on threads of
//! their own. [`NetnsExec`] is the exception: it switches a whole process, the
//! way `ip netns exec` does, between fork and exec.

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

/// What `ip netns exec NAME` does to its process before it execs the command,
/// for a process that is about to exec: enter the network namespace bind-
/// mounted at `/run/netns/NAME`, take a private copy of the mount namespace
/// whose mounts do not propagate back (MS_SLAVE), and mount a fresh sysfs on
/// /sys, which then shows the new network namespace's devices. (ip also bind-
/// mounts files from /etc/netns/NAME over /etc; that is left out.)
///
/// Prepared ahead so that [`NetnsExec::enter`] only makes system calls: it is
/// meant for the child between fork and exec, where nothing may allocate.
pub struct NetnsExec {
    path: CString,
    name: CString,
    /// Whether /sys is mounted read-only, found out here (statvfs may read
    /// /proc/mounts, which a forked child must not).
    sys_read_only: bool,
}

impl NetnsExec {
    /// For namespace `name`, bind-mounted at `dir/name`.
    pub fn new(dir: &Path, name: &str) -> io::Result<Self> {
        // SAFETY: an all-zero statvfs is valid.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: a NUL-terminated literal and a statvfs we own.
        let sys_read_only =
            unsafe { libc::statvfs(c"/sys".as_ptr(), &mut st) } == 0 && st.f_flag & libc::ST_RDONLY != 0;
        Ok(Self {
            path: c_path(&dir.join(name))?,
            name: CString::new(name)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in name"))?,
            sys_read_only,
        })
    }

    /// Switches the calling process (single-threaded: a freshly forked child)
    /// as described above. Async-signal-safe: system calls only.
    pub fn enter(&self) -> io::Result<()> {
        // SAFETY: a NUL-terminated path that outlives the call.
        let fd = unsafe { libc::open(self.path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: setns with the fd just opened, which is closed right after.
        let rc = unsafe { libc::setns(fd, libc::CLONE_NEWNET) };
        let err = io::Error::last_os_error();
        // SAFETY: closing the fd opened above, used nowhere else.
        unsafe { libc::close(fd) };
        if rc != 0 {
            return Err(err);
        }
        // SAFETY: affects only the calling process's mount namespace (a single-threaded one).
        check(unsafe { libc::unshare(libc::CLONE_NEWNS) })?;
        let (root, none, sys, sysfs) = (c"/", c"none", c"/sys", c"sysfs");
        // SAFETY: NUL-terminated literals; no data argument.
        check(unsafe {
            libc::mount(
                c"".as_ptr(),
                root.as_ptr(),
                none.as_ptr(),
                libc::MS_SLAVE | libc::MS_REC,
                std::ptr::null(),
            )
        })?;
        let mut flags = 0;
        // SAFETY: a NUL-terminated literal.
        if unsafe { libc::umount2(sys.as_ptr(), libc::MNT_DETACH) } != 0 && self.sys_read_only {
            // Not unmountable (or nothing mounted): sysfs goes on top, and a
            // read-only /sys cannot be shadowed by a writable one.
            flags = libc::MS_RDONLY;
        }
        // SAFETY: NUL-terminated strings that outlive the call; no data argument.
        check(unsafe {
            libc::mount(self.name.as_ptr(), sys.as_ptr(), sysfs.as_ptr(), flags, std::ptr::null())
        })
    }
}
