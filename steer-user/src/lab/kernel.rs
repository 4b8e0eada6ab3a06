//! The kernel's own RPS/RFS on the lab's receiving veth, for the baselines,
//! planned and applied by the same code as `steer run --engine kernel`
//! (`nic::plan` with rps_cpus, and rfs_entries for RFS; `nic::state`), and
//! put back after. Only the lab's own veth is touched, plus the global
//! `net.core.rps_sock_flow_entries` for RFS (restored too).
//!
//! /sys/class/net shows the network namespace of whoever mounted /sys, so the
//! veth's queues are planned and written on a helper thread that unshares its
//! mount namespace, enters the lab's rx namespace and mounts a fresh sysfs
//! over /sys: nothing of it is visible outside that thread. There the plan
//! leaves the global table out (it is the initial namespace's), so that one
//! is written from this process's own namespace, through the same
//! `nic::plan::rfs_table` step. The queues' old values stay in memory, not in
//! a snapshot file: the veth goes with the lab's namespace. The global value
//! a lab replaced is noted in `/run/steer/lab-sock-flow.PID`, so that a lab
//! started after a SIGKILL puts it back.

use std::{ffi::CString, os::fd::AsRawFd, path::Path};

use super::{topology::Topology, LabError, Result};
use crate::nic::{
    plan::{self, Request, Step, Value},
    state, sysfs,
};

/// Where a lab notes the global value it replaced (`lab-sock-flow.PID`).
const STATE_DIR: &str = "/run/steer";

fn state_file(pid: u32) -> std::path::PathBuf {
    Path::new(STATE_DIR).join(format!("lab-sock-flow.{pid}"))
}

fn sock_flow() -> &'static Path {
    Path::new(sysfs::RPS_SOCK_FLOW_ENTRIES)
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
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        if let Ok(old) = std::fs::read_to_string(e.path()) {
            if sysfs::write(sock_flow(), old.trim()).is_ok() {
                done.push(old.trim().to_string());
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    done
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
            let fstype = CString::new("sysfs").map_err(|_| LabError::Msg("path".into()))?;
            let sys = CString::new("/sys").map_err(|_| LabError::Msg("path".into()))?;
            if libc::mount(fstype.as_ptr(), sys.as_ptr(), fstype.as_ptr(), 0, std::ptr::null()) != 0 {
                return Err(LabError::io("mounting sysfs for the lab's rx namespace", last()));
            }
        }
        f()
    })
    .join()
    .map_err(|_| LabError::Msg("the sysfs thread panicked".into()))?
}

/// What was there before, put back by [`KernelRps::restore`] (the global
/// table also on drop).
pub struct KernelRps {
    iface: String,
    /// The queue steps done, with their old values.
    queues: Vec<Step>,
    /// The global table's value before, when RFS changed it.
    old_sock_flow: Option<String>,
}

/// RFS size: rps_sock_flow_entries (the seeds' 32768); every rx queue gets
/// rps_flow_cnt = entries / rx queues, as `--engine kernel` sizes it.
#[derive(Clone, Copy, Debug)]
pub struct Rfs {
    pub sock_flow_entries: u32,
}

impl Default for Rfs {
    fn default() -> Self {
        Self { sock_flow_entries: plan::DEFAULT_RFS_ENTRIES }
    }
}

impl KernelRps {
    /// Turns RPS on for the lab's rx veth over `cpus`, and RFS with `rfs`.
    pub fn apply(topo: &Topology, cpus: &[u32], rfs: Option<Rfs>) -> Result<Self> {
        if cpus.is_empty() {
            return Err(LabError::Msg("kernel RPS needs at least one CPU".into()));
        }
        let mut guard = Self { iface: topo.rx_if.clone(), queues: vec![], old_sock_flow: None };
        // The global table first, from this (the initial) namespace; should the
        // queues fail after it, the drop puts it back.
        if let Some(r) = rfs {
            guard.set_sock_flow(&plan::rfs_table(r.sock_flow_entries)?)?;
        }
        let req = Request {
            rps_cpus: Some(cpus.to_vec()),
            rfs_entries: rfs.map(|r| r.sock_flow_entries),
            ..Default::default()
        };
        let iface = guard.iface.clone();
        guard.queues = in_rx_sysfs(topo, move || {
            let (_, done) = state::apply_unsaved(&plan::plan(&iface, &req)?)?;
            Ok(done)
        })?;
        Ok(guard)
    }

    /// Notes the old value for a later lab, then writes the new one.
    fn set_sock_flow(&mut self, step: &Step) -> Result<()> {
        let (Value::Text(old), Value::Text(new)) = (&step.old, &step.new) else {
            return Err(LabError::Msg(format!(
                "rps_sock_flow_entries: {} → {} is not a size",
                step.old, step.new
            )));
        };
        std::fs::create_dir_all(STATE_DIR).map_err(|e| LabError::io(format!("creating {STATE_DIR}"), e))?;
        let state = state_file(std::process::id());
        std::fs::write(&state, old).map_err(|e| LabError::io(format!("writing {}", state.display()), e))?;
        self.old_sock_flow = Some(old.clone());
        sysfs::write(sock_flow(), new)?;
        Ok(())
    }

    /// Puts the global table back, if this changed it.
    fn restore_sock_flow(&mut self) -> Result<()> {
        if let Some(old) = self.old_sock_flow.take() {
            sysfs::write(sock_flow(), &old)?;
            let _ = std::fs::remove_file(state_file(std::process::id()));
        }
        Ok(())
    }

    /// The rx queue's rps_cpus as the kernel reads it back now.
    pub fn current_mask(topo: &Topology) -> Result<String> {
        Self::current(topo, "rps_cpus")
    }

    /// A file of the rx queue (rps_cpus, rps_flow_cnt) as the kernel reads it back now.
    pub fn current(topo: &Topology, file: &str) -> Result<String> {
        let path = sysfs::queue_file(&topo.rx_if, "rx-0", file);
        in_rx_sysfs(topo, move || Ok(sysfs::read(&path)?))
    }

    /// Puts the old values back.
    pub fn restore(mut self, topo: &Topology) -> Result<()> {
        let (iface, steps) = (self.iface.clone(), std::mem::take(&mut self.queues));
        let queues = in_rx_sysfs(topo, move || Ok(state::undo(&iface, &steps)?));
        self.restore_sock_flow()?;
        queues
    }
}

impl Drop for KernelRps {
    fn drop(&mut self) {
        // The veth's settings die with the namespace; the global sysctl must be put back.
        if let Err(e) = self.restore_sock_flow() {
            log::error!("restoring {}: {e}", sysfs::RPS_SOCK_FLOW_ENTRIES);
        }
    }
}
