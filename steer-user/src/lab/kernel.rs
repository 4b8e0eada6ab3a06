//! The kernel's own RPS/RFS on the lab's receiving veth, for the baselines.
//! Restored on drop. Only the lab's own veth is touched, plus the global
//! `net.core.rps_sock_flow_entries` for RFS (restored too).
//!
//! /sys/class/net shows the network namespace of whoever mounted /sys, so the
//! writes run on a helper thread that unshares its mount namespace, enters
//! the lab's rx namespace and mounts a fresh sysfs over /sys: nothing of it is
//! visible outside that thread.

use std::{ffi::CString, os::fd::AsRawFd};

use super::{topology::Topology, LabError, Result};

const SOCK_FLOW: &str = "/proc/sys/net/core/rps_sock_flow_entries";
/// Where a lab notes the global value it replaced, so that a lab started
/// after a SIGKILL can put it back (`lab-sock-flow.PID`).
const STATE_DIR: &str = "/run/steer";

fn state_file(pid: u32) -> std::path::PathBuf {
    std::path::Path::new(STATE_DIR).join(format!("lab-sock-flow.{pid}"))
}

/// Puts back rps_sock_flow_entries for labs whose process died without
/// restoring it. Returns the values restored.
pub fn restore_stale() -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(STATE_DIR) else { return Vec::new() };
    let mut done = Vec::new();
    for e in dir.filter_map(|e| e.ok()) {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix("lab-sock-flow.").and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        if let Ok(old) = std::fs::read_to_string(e.path()) {
            if write(SOCK_FLOW, old.trim()).is_ok() {
                done.push(old.trim().to_string());
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    done
}

/// A CPU set as the kernel's bitmap text ("00000000,0000000f"), any size.
pub fn cpu_mask(cpus: &[u32]) -> String {
    let words = cpus.iter().map(|c| *c as usize / 32 + 1).max().unwrap_or(1);
    let mut w = vec![0u32; words];
    for &c in cpus {
        w[c as usize / 32] |= 1 << (c % 32);
    }
    w.iter().rev().map(|x| format!("{x:08x}")).collect::<Vec<_>>().join(",")
}

/// Runs `f` on a thread that sees the lab's rx namespace under /sys.
fn in_rx_sysfs<T: Send + 'static>(
    topo: &Topology,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let fd = topo.rx_ns.dup_fd()?;
    std::thread::spawn(move || -> Result<T> {
        let last = || std::io::Error::last_os_error();
        // SAFETY: unshare/mount/setns affect only this thread (CLONE_NEWNS implies CLONE_FS for it).
        unsafe {
            if libc::unshare(libc::CLONE_NEWNS) != 0 {
                return Err(LabError::io("unsharing the mount namespace", last()));
            }
            let root = CString::new("/").map_err(|_| LabError::Msg("path".into()))?;
            if libc::mount(
                std::ptr::null(),
                root.as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ) != 0
            {
                return Err(LabError::io("making the private mount namespace private", last()));
            }
            if libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(LabError::io("entering the lab's rx namespace", last()));
            }
            let sysfs = CString::new("sysfs").map_err(|_| LabError::Msg("path".into()))?;
            let sys = CString::new("/sys").map_err(|_| LabError::Msg("path".into()))?;
            if libc::mount(sysfs.as_ptr(), sys.as_ptr(), sysfs.as_ptr(), 0, std::ptr::null()) != 0 {
                return Err(LabError::io("mounting sysfs for the lab's rx namespace", last()));
            }
        }
        f()
    })
    .join()
    .map_err(|_| LabError::Msg("the sysfs thread panicked".into()))?
}

fn queue_file(iface: &str, name: &str) -> String {
    format!("/sys/class/net/{iface}/queues/rx-0/{name}")
}

fn read(path: &str) -> Result<String> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(|e| LabError::io(format!("reading {path}"), e))
}

fn write(path: &str, v: &str) -> Result<()> {
    std::fs::write(path, v).map_err(|e| LabError::io(format!("writing \"{v}\" to {path}"), e))
}

/// What was there before, put back on drop.
pub struct KernelRps {
    iface: String,
    old_cpus: String,
    old_flow_cnt: String,
    old_sock_flow: Option<String>,
}

/// RFS sizes (the seeds' values: 32768 socket flow entries, flow_cnt per queue).
#[derive(Clone, Copy, Debug)]
pub struct Rfs {
    pub sock_flow_entries: u32,
    pub flow_cnt: u32,
}

impl Default for Rfs {
    fn default() -> Self {
        Self { sock_flow_entries: 32768, flow_cnt: 32768 }
    }
}

impl KernelRps {
    /// Turns RPS on for the lab's rx veth over `cpus`, and RFS with `rfs`.
    pub fn apply(topo: &Topology, cpus: &[u32], rfs: Option<Rfs>) -> Result<Self> {
        if cpus.is_empty() {
            return Err(LabError::Msg("kernel RPS needs at least one CPU".into()));
        }
        let iface = topo.rx_if.clone();
        let mask = cpu_mask(cpus);
        let i = iface.clone();
        let (old_cpus, old_flow_cnt) = in_rx_sysfs(topo, move || {
            let old = (read(&queue_file(&i, "rps_cpus"))?, read(&queue_file(&i, "rps_flow_cnt"))?);
            write(&queue_file(&i, "rps_cpus"), &mask)?;
            if let Some(r) = rfs {
                write(&queue_file(&i, "rps_flow_cnt"), &r.flow_cnt.to_string())?;
            }
            Ok(old)
        })?;
        let mut guard = Self { iface, old_cpus, old_flow_cnt, old_sock_flow: None };
        if let Some(r) = rfs {
            // Global (init namespace only): this process's own /proc/sys.
            let old = read(SOCK_FLOW)?;
            std::fs::create_dir_all(STATE_DIR)
                .map_err(|e| LabError::io(format!("creating {STATE_DIR}"), e))?;
            let state = state_file(std::process::id());
            std::fs::write(&state, &old)
                .map_err(|e| LabError::io(format!("writing {}", state.display()), e))?;
            guard.old_sock_flow = Some(old);
            write(SOCK_FLOW, &r.sock_flow_entries.to_string())?;
        }
        Ok(guard)
    }

    /// The rx queue's rps_cpus as the kernel reads it back now.
    pub fn current_mask(topo: &Topology) -> Result<String> {
        let i = topo.rx_if.clone();
        in_rx_sysfs(topo, move || read(&queue_file(&i, "rps_cpus")))
    }

    /// Puts the old values back.
    pub fn restore(mut self, topo: &Topology) -> Result<()> {
        let (i, cpus, cnt) = (self.iface.clone(), self.old_cpus.clone(), self.old_flow_cnt.clone());
        let r = in_rx_sysfs(topo, move || {
            write(&queue_file(&i, "rps_cpus"), &cpus)?;
            write(&queue_file(&i, "rps_flow_cnt"), &cnt)
        });
        if let Some(old) = self.old_sock_flow.take() {
            write(SOCK_FLOW, &old)?;
            let _ = std::fs::remove_file(state_file(std::process::id()));
        }
        r
    }
}

impl Drop for KernelRps {
    fn drop(&mut self) {
        // The veth's settings die with the namespace; the global sysctl must be put back.
        if let Some(old) = self.old_sock_flow.take() {
            match write(SOCK_FLOW, &old) {
                Ok(()) => {
                    let _ = std::fs::remove_file(state_file(std::process::id()));
                }
                Err(e) => log::error!("restoring {SOCK_FLOW}: {e}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_are_kernel_bitmaps() {
        assert_eq!(cpu_mask(&[0, 1]), "00000003");
        assert_eq!(cpu_mask(&[1]), "00000002");
        assert_eq!(cpu_mask(&[0, 33]), "00000002,00000001");
    }
}
