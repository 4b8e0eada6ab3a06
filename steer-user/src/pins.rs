//! Where a running steer leaves its objects, so that other processes
//! (`steer stats|flows|restore`, `--metrics`, tests) can find them.
//!
//! A run is identified by its network namespace and the interface's index,
//! never by the name alone: every pod has an `eth0`, and a deleted and
//! recreated interface is another one. For the run of interface index I in the
//! network namespace with inode N (`ls -L -i /proc/self/ns/net`):
//!
//! - `/sys/fs/bpf/steer/netN/ifI/{link,stats,targets,...}`: the pins;
//! - `/run/steer/netN/ifI/run.json` ([`RunFile`]): pid, name, settings and the
//!   ids of the maps and the link; `nic.json`: the NIC snapshot.
//!
//! `ip netns exec` gives each process a fresh /sys, so a run started that way
//! pins into a bpffs only it sees. /run is shared, so readers find the run
//! there and open its maps by id.

use std::{
    collections::BTreeMap,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use aya::maps::{MapData, PerCpuArray};
use serde::{Deserialize, Serialize};
use steer_common::Counters;

use crate::{
    error::{Error, Result},
    iface, mounts,
};

pub const LINK: &str = "link";
pub const STATS: &str = "stats";
pub const TARGETS: &str = "targets";
pub const CONFIG: &str = "config";
pub const INDIR: &str = "indir";
pub const CPUS: &str = "cpus";
/// Drops of the CPUMAP queues, counted by the `xdp:xdp_cpumap_*` tracepoints.
pub const CPUMAP_DROPS: &str = "cpumap_drops";
/// RFS (`--mode rfs` only): the flow table and its counters.
pub const FLOWS: &str = "flows";
pub const RFS_STATS: &str = "rfs_stats";
/// RFS steering slots: the hook's wishes and the XDP program's state, and the
/// Toeplitz table, so that `steer flows` finds each flow's slot.
pub const RFS_WANT: &str = "rfs_want";
pub const RFS_SLOTS: &str = "rfs_slots";
pub const TOEPLITZ: &str = "toeplitz";
/// The tail-call table that holds `steer_inner` (tunnels). Pinned so that it keeps
/// its entry when the run's process dies: the kernel empties a program array
/// once no file descriptor or pin refers to it.
pub const INNER_PROG: &str = "inner_prog";
/// UDP entries the run's sweep expired (userspace's counter next to the per-CPU ones).
pub const RFS_EXPIRED: &str = "rfs_expired";
/// Packets and bytes per bucket, and what `--rebalance` did.
pub const BUCKETS: &str = "buckets";
pub const REBALANCE: &str = "rebalance";
/// Every pin steer makes, the link first so that removing in order detaches first.
pub const ALL: [&str; 16] = [
    LINK,
    STATS,
    TARGETS,
    CONFIG,
    INDIR,
    CPUS,
    CPUMAP_DROPS,
    FLOWS,
    RFS_STATS,
    RFS_EXPIRED,
    RFS_WANT,
    RFS_SLOTS,
    TOEPLITZ,
    INNER_PROG,
    BUCKETS,
    REBALANCE,
];
/// Where a foreign XDP program taken off by `--replace` waits to go back.
pub const REPLACED: &str = "replaced_prog";

/// Root of steer's state files (shared by every mount namespace, unlike /sys).
pub const STATE_ROOT: &str = "/run/steer";

/// The inode of the calling thread's network namespace.
pub fn netns() -> Result<u64> {
    std::fs::metadata("/proc/thread-self/ns/net")
        .map(|m| m.ino())
        .map_err(|e| Error::io("reading /proc/thread-self/ns/net", e))
}

/// One interface of one network namespace: what a run is keyed by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunId {
    pub netns: u64,
    pub ifindex: u32,
    /// For messages only.
    pub iface: String,
}

impl RunId {
    /// The interface `iface` of the caller's network namespace, which must exist.
    pub fn of(iface: &str) -> Result<Self> {
        iface::check_name(iface)?;
        Ok(Self { netns: netns()?, ifindex: iface::index(iface)?, iface: iface.to_string() })
    }

    /// The run of `iface` in the caller's namespace: the live interface's, or,
    /// when no interface has that name any more, the state a run left under it.
    pub fn find(iface: &str) -> Result<Option<Self>> {
        iface::check_name(iface)?;
        match Self::of(iface) {
            Ok(id) => Ok(Some(id)),
            Err(Error::NoSuchInterface(_)) => Ok(Self::recorded(iface)?.into_iter().next()),
            Err(e) => Err(e),
        }
    }

    /// Runs recorded in this namespace's state directory under the name `iface`.
    fn recorded(iface: &str) -> Result<Vec<Self>> {
        let netns = netns()?;
        let dir = Path::new(STATE_ROOT).join(format!("net{netns}"));
        let Ok(entries) = std::fs::read_dir(&dir) else { return Ok(Vec::new()) };
        let mut out = Vec::new();
        for e in entries.filter_map(|e| e.ok()) {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(ifindex) = name.strip_prefix("if").and_then(|i| i.parse().ok()) else { continue };
            let id = Self { netns, ifindex, iface: iface.to_string() };
            let named = |file: &str| {
                std::fs::read_to_string(id.state_dir().join(file))
                    .ok()
                    .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                    .is_some_and(|v| v["iface"] == iface || v["plan"]["iface"] == iface)
            };
            if named("run.json") || named("nic.json") {
                out.push(id);
            }
        }
        Ok(out)
    }

    fn key(&self) -> PathBuf {
        PathBuf::from(format!("net{}", self.netns)).join(format!("if{}", self.ifindex))
    }

    /// The pin directory under bpffs.
    pub fn pin_dir(&self) -> PathBuf {
        Path::new(mounts::BPFFS).join("steer").join(self.key())
    }

    /// The state directory: run.json and nic.json.
    pub fn state_dir(&self) -> PathBuf {
        Path::new(STATE_ROOT).join(self.key())
    }

    pub fn run_file(&self) -> PathBuf {
        self.state_dir().join("run.json")
    }

    /// What the run recorded about itself, if there is a run file.
    pub fn read_run(&self) -> Option<RunFile> {
        let text = std::fs::read_to_string(self.run_file()).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// The pid recorded by the run of this interface, if it is alive (and not us).
    pub fn live_owner(&self) -> Option<u32> {
        let pid = self.read_run()?.pid;
        alive(pid).then_some(pid)
    }

    /// Whether a previous run left a pinned link here.
    pub fn has_link(&self) -> bool {
        self.pin_dir().join(LINK).exists()
    }

    /// Opens the map pinned as `name`: from its pin where this process sees
    /// it, else by the id a live run recorded (a run in another mount
    /// namespace, e.g. started by `ip netns exec`).
    pub fn open_map(&self, name: &str) -> Result<MapData> {
        let pin = self.pin_dir().join(name);
        let denied = |e: &aya::maps::MapError, how: &str| {
            if permission_denied(e) {
                Error::PermissionDenied {
                    what: format!("opening steer's map {name} of \"{}\" {how}", self.iface),
                }
            } else {
                Error::Ebpf(format!("opening steer's map {name} of \"{}\" {how}: {}", self.iface, chain(e)))
            }
        };
        if pin.exists() {
            return MapData::from_pin(&pin).map_err(|e| denied(&e, &format!("at {}", pin.display())));
        }
        let run = self.read_run().filter(|r| alive(r.pid));
        match run.as_ref().and_then(|r| r.maps.get(name)) {
            Some(&id) => MapData::from_id(id).map_err(|e| denied(&e, &format!("by id {id}"))),
            None if run.is_some() => {
                Err(Error::Ebpf(format!("steer's run on \"{}\" has no map {name}", self.iface)))
            }
            None => Err(Error::NotRunning { iface: self.iface.clone(), path: self.state_dir() }),
        }
    }

    /// Whether the live run of this interface has the map `name`.
    pub fn has_map(&self, name: &str) -> bool {
        self.pin_dir().join(name).exists()
            || self.read_run().is_some_and(|r| alive(r.pid) && r.maps.contains_key(name))
    }

    /// Whether a live run is recorded here (pinned where we see it, or by its run file).
    pub fn is_running(&self) -> bool {
        self.pin_dir().join(STATS).exists() || self.live_owner().is_some()
    }

    /// Removes every pin of this interface (unpinning the link detaches the
    /// program once no process holds it) and the run file. Returns what was removed.
    pub fn remove(&self) -> Result<Vec<String>> {
        let d = self.pin_dir();
        let mut removed = Vec::new();
        // A foreign program `--replace` took off goes back once steer's link is gone.
        if d.join(REPLACED).exists() {
            let link = d.join(LINK);
            match std::fs::remove_file(&link) {
                Ok(()) => removed.push(link.display().to_string()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(format!("unpinning {}", link.display()), e)),
            }
            let mode = self.read_run().and_then(|r| r.replaced).map(|r| r.mode_flags).ok_or_else(|| {
                Error::Ebpf(format!(
                    "{} holds the XDP program --replace took off, but {} does not say in which mode: re-attach \
                     it by hand",
                    d.join(REPLACED).display(),
                    self.run_file().display()
                ))
            })?;
            crate::xdp_owner::give_back_pinned(self.ifindex, &d.join(REPLACED), mode)?;
            removed.push(format!("{} (re-attached to {})", d.join(REPLACED).display(), self.iface));
        }
        for name in ALL {
            let p = d.join(name);
            match std::fs::remove_file(&p) {
                Ok(()) => removed.push(p.display().to_string()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(format!("unpinning {}", p.display()), e)),
            }
            if name == LINK && removed.last().is_some_and(|r| r.ends_with(LINK)) {
                self.wait_detached();
            }
        }
        let run_file = self.run_file();
        if run_file.exists() {
            std::fs::remove_file(&run_file)
                .map_err(|e| Error::io(format!("removing {}", run_file.display()), e))?;
            removed.push(run_file.display().to_string());
        }
        for p in [d.as_path(), &self.state_dir()] {
            // The state directory may still hold a NIC snapshot: only remove it empty.
            if p.exists() && std::fs::remove_dir(p).is_ok() {
                removed.push(p.display().to_string());
            }
            // The namespace's directory too, once it holds no other interface.
            if let Some(parent) = p.parent() {
                let _ = std::fs::remove_dir(parent);
            }
        }
        Ok(removed)
    }

    /// The kernel frees an unpinned bpf link from a workqueue: wait (bounded)
    /// until the interface shows no XDP program, so that "restored" means detached.
    fn wait_detached(&self) {
        if iface::index(&self.iface).ok() != Some(self.ifindex) {
            return;
        }
        for _ in 0..100 {
            if !matches!(crate::xdp_owner::query(self.ifindex), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        log::warn!("{} still shows an XDP program 2 s after steer's link was unpinned", self.iface);
    }
}

/// Whether an error, or one of its causes, is EPERM or EACCES.
fn permission_denied(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(c) = cur {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            if matches!(io.raw_os_error(), Some(libc::EPERM) | Some(libc::EACCES)) {
                return true;
            }
        }
        if let Some(aya::maps::MapError::SyscallError(s)) = c.downcast_ref::<aya::maps::MapError>() {
            if matches!(s.io_error.raw_os_error(), Some(libc::EPERM) | Some(libc::EACCES)) {
                return true;
            }
        }
        cur = c.source();
    }
    false
}

/// An error with its causes, each once.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !out.contains(&t) {
            out = format!("{out}: {t}");
        }
        cur = c.source();
    }
    out
}

/// Whether `pid` is a live process other than us. A zombie (killed, not yet
/// reaped: containers often run no reaper) is not alive.
pub fn alive(pid: u32) -> bool {
    if pid == std::process::id() {
        return false;
    }
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    // "pid (comm) S ...": the state follows the last ')'.
    let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next());
    !matches!(state, Some('Z') | Some('X') | None)
}

/// `run.json`: what a running `steer run` says about itself. Written at start
/// (and on SIGHUP), read by `steer stats`, `restore` and the tests.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RunFile {
    pub pid: u32,
    pub iface: String,
    pub ifindex: u32,
    pub netns: u64,
    /// "native" or "generic".
    pub mode: String,
    /// "rss" or "rfs".
    pub steering: String,
    pub cpus: Vec<u32>,
    pub hash: String,
    pub seed: u32,
    pub symmetric: bool,
    pub table_size: u32,
    pub qsize: u32,
    pub flow_entries: Option<u32>,
    pub migrate_idle_us: Option<u32>,
    #[serde(default)]
    pub udp_timeout_s: Option<u32>,
    /// The program `--replace` took off, put back on exit.
    pub replaced: Option<crate::xdp_owner::Attached>,
    /// Pin name -> map id, for processes that do not see the pins.
    #[serde(default)]
    pub maps: BTreeMap<String, u32>,
    /// The XDP link's id.
    #[serde(default)]
    pub link_id: Option<u32>,
}

impl RunFile {
    /// Writes the file atomically (readers never see half of it).
    pub fn write(&self, id: &RunId) -> Result<()> {
        let dir = id.state_dir();
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let tmp = dir.join("run.json.tmp");
        let text = serde_json::to_string(self).map_err(|e| Error::Ebpf(format!("encoding run.json: {e}")))?;
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, id.run_file()))
            .map_err(|e| Error::io(format!("writing {}", id.run_file().display()), e))
    }
}

/// The counters maps of a running steer.
pub struct Pinned {
    pub stats: PerCpuArray<MapData, Counters>,
    pub targets: PerCpuArray<MapData, u64>,
}

impl Pinned {
    /// The counters of the run on `iface` in the caller's namespace.
    pub fn open(iface: &str) -> Result<Self> {
        Self::open_id(&RunId::of(iface)?)
    }

    pub fn open_id(id: &RunId) -> Result<Self> {
        let stats =
            PerCpuArray::try_from(aya::maps::Map::PerCpuArray(id.open_map(STATS)?)).map_err(Error::ebpf)?;
        let targets =
            PerCpuArray::try_from(aya::maps::Map::PerCpuArray(id.open_map(TARGETS)?)).map_err(Error::ebpf)?;
        Ok(Self { stats, targets })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_is_keyed_by_namespace_and_index() {
        let id = RunId::of("lo").unwrap();
        assert_eq!(id.ifindex, 1);
        let key = format!("net{}/if1", id.netns);
        assert!(id.pin_dir().ends_with(&key) && id.pin_dir().starts_with("/sys/fs/bpf/steer"), "{id:?}");
        assert!(id.state_dir().ends_with(&key) && id.state_dir().starts_with(STATE_ROOT), "{id:?}");
    }

    #[test]
    fn names_the_kernel_refuses_are_refused_before_any_path_is_built() {
        for bad in ["", ".", "..", "../../tmp/x", "a/b", "a b", "eth0\n", "sixteen-bytes-xx", "a:b"] {
            let e = RunId::find(bad).unwrap_err().to_string();
            assert!(e.contains("interface name"), "{bad:?}: {e}");
        }
    }
}
