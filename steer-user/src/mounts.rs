//! bpffs: the machine does not mount it at boot, and `ip netns exec` gives a
//! fresh /sys without it. steer mounts it where it is missing. (Every
//! tracepoint steer uses is a raw one, which needs no tracefs.)

use std::{ffi::CString, path::Path};

use crate::error::{Error, Result};

pub const BPFFS: &str = "/sys/fs/bpf";

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

fn fs_magic(path: &str) -> Option<i64> {
    let c = CString::new(path).ok()?;
    // SAFETY: statfs on a valid path into a zeroed struct.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some(st.f_type as i64)
}

fn ensure(path: &str, fstype: &str, magic: i64) -> Result<bool> {
    if fs_magic(path) == Some(magic) {
        return Ok(false);
    }
    std::fs::create_dir_all(path).map_err(|e| Error::io(format!("creating {path}"), e))?;
    let src = CString::new(fstype).map_err(|_| Error::BadValue {
        what: "filesystem",
        value: fstype.into(),
        why: "NUL".into(),
    })?;
    let dst = CString::new(path).map_err(|_| Error::BadValue {
        what: "path",
        value: path.into(),
        why: "NUL".into(),
    })?;
    // SAFETY: mount(2) with valid strings and no data.
    let rc = unsafe { libc::mount(src.as_ptr(), dst.as_ptr(), src.as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        return Err(Error::io(
            format!("mounting {fstype} on {path} (needs CAP_SYS_ADMIN)"),
            std::io::Error::last_os_error(),
        ));
    }
    log::info!("mounted {fstype} on {path}");
    Ok(true)
}

/// Mounts bpffs at /sys/fs/bpf unless it is there. Returns whether it mounted.
pub fn ensure_bpffs() -> Result<bool> {
    ensure(BPFFS, "bpf", BPF_FS_MAGIC)
}

pub fn is_bpffs(path: &Path) -> bool {
    path.to_str().and_then(fs_magic) == Some(BPF_FS_MAGIC)
}
