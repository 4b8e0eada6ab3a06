//! Where a running steer leaves its objects, so that other processes
//! (`steer stats`, `steer restore`, tests) can find them:
//! `/sys/fs/bpf/steer/IFACE/{link,stats,targets,config,indir,cpus[,flows,rfs_stats]}`, plus
//! `/run/steer/IFACE/run.json` with the owner's pid and settings.

use std::path::{Path, PathBuf};

use aya::maps::{MapData, PerCpuArray};
use steer_common::Counters;

use crate::{
    error::{Error, Result},
    mounts,
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
/// Every pin steer makes, the link first so that removing in order detaches first.
pub const ALL: [&str; 9] = [LINK, STATS, TARGETS, CONFIG, INDIR, CPUS, CPUMAP_DROPS, FLOWS, RFS_STATS];

pub fn dir(iface: &str) -> PathBuf {
    Path::new(mounts::BPFFS).join("steer").join(iface)
}

pub fn run_dir(iface: &str) -> PathBuf {
    Path::new("/run/steer").join(iface)
}

pub fn run_file(iface: &str) -> PathBuf {
    run_dir(iface).join("run.json")
}

/// The pid recorded by the run that pinned `iface`'s objects, if it is alive.
pub fn live_owner(iface: &str) -> Option<u32> {
    let s = std::fs::read_to_string(run_file(iface)).ok()?;
    let v: serde_json::Value = serde_json::from_str(&s).ok()?;
    let pid = v.get("pid")?.as_u64()? as u32;
    (pid != std::process::id() && Path::new(&format!("/proc/{pid}")).exists()).then_some(pid)
}

/// Whether a previous run left a pinned link for `iface`.
pub fn has_link(iface: &str) -> bool {
    dir(iface).join(LINK).exists()
}

/// Removes every pin of `iface` (unpinning the link detaches the program once
/// no process holds it) and the run file. Returns what was removed.
pub fn remove(iface: &str) -> Result<Vec<String>> {
    let d = dir(iface);
    let mut removed = Vec::new();
    // A foreign program `--replace` took off goes back once steer's link is gone.
    if d.join(REPLACED).exists() {
        let link = d.join(LINK);
        match std::fs::remove_file(&link) {
            Ok(()) => removed.push(link.display().to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(format!("unpinning {}", link.display()), e)),
        }
        let mode = replaced_mode(iface).ok_or_else(|| Error::Ebpf(format!(
            "{} holds the XDP program --replace took off, but {} does not say in which mode: re-attach it by hand",
            d.join(REPLACED).display(),
            run_file(iface).display()
        )))?;
        let ifindex = crate::iface::index(iface)?;
        crate::xdp_owner::give_back_pinned(ifindex, &d.join(REPLACED), mode)?;
        removed.push(format!("{} (re-attached to {iface})", d.join(REPLACED).display()));
    }
    for name in ALL {
        let p = d.join(name);
        match std::fs::remove_file(&p) {
            Ok(()) => removed.push(p.display().to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(format!("unpinning {}", p.display()), e)),
        }
        if name == LINK && removed.last().is_some_and(|r| r.ends_with(LINK)) {
            wait_detached(iface);
        }
    }
    for p in [d.as_path(), &run_dir(iface)] {
        if p.exists() {
            let _ = std::fs::remove_file(run_file(iface));
            std::fs::remove_dir(p).map_err(|e| Error::io(format!("removing {}", p.display()), e))?;
            removed.push(p.display().to_string());
        }
    }
    Ok(removed)
}

/// The kernel frees an unpinned bpf link from a workqueue: wait (bounded)
/// until the interface shows no XDP program, so that "restored" means detached.
fn wait_detached(iface: &str) {
    let Ok(ifindex) = crate::iface::index(iface) else { return };
    for _ in 0..100 {
        if !matches!(crate::xdp_owner::query(ifindex), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    log::warn!("{iface} still shows an XDP program 2 s after steer's link was unpinned");
}

/// Where a foreign XDP program taken off by `--replace` waits to go back.
pub const REPLACED: &str = "replaced_prog";

/// The attach mode (XDP flags) of the program `--replace` took off, from the run file.
fn replaced_mode(iface: &str) -> Option<u32> {
    let s = std::fs::read_to_string(run_file(iface)).ok()?;
    let v: serde_json::Value = serde_json::from_str(&s).ok()?;
    Some(v.get("replaced")?.get("mode_flags")?.as_u64()? as u32)
}

/// The counters maps of a running steer, opened from their pins.
pub struct Pinned {
    pub stats: PerCpuArray<MapData, Counters>,
    pub targets: PerCpuArray<MapData, u64>,
}

impl Pinned {
    pub fn open(iface: &str) -> Result<Self> {
        let d = dir(iface);
        if !d.join(STATS).exists() {
            return Err(Error::NotRunning { iface: iface.into(), path: d });
        }
        let open = |name: &str| {
            MapData::from_pin(d.join(name))
                .map_err(|e| Error::Ebpf(format!("opening pinned map {name}: {e}")))
        };
        let stats = PerCpuArray::try_from(aya::maps::Map::PerCpuArray(open(STATS)?)).map_err(Error::ebpf)?;
        let targets =
            PerCpuArray::try_from(aya::maps::Map::PerCpuArray(open(TARGETS)?)).map_err(Error::ebpf)?;
        Ok(Self { stats, targets })
    }
}
