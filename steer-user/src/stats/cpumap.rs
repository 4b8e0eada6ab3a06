//! cpumap queue drops: the `cpumap_enqueue`/`cpumap_kthread` tracepoint
//! programs (steer-ebpf/src/cpumap_trace.rs) count drops of steer's own CPUMAP
//! into a per-CPU array that `steer run` pins as `cpumap_drops`, for
//! `steer stats` and `--metrics` in other processes. They also count what
//! each queue took in and gave out, which the XDP program reads before it
//! passes a packet in place; `napi_poll` and `cpu_idle`
//! (steer-ebpf/src/pressure.rs), which tell it where a CPU spreads under
//! `--spread busy`, are attached with them (`cpu_idle` also writes off counts
//! a CPU's queue still shows after it idled through a second), and so is
//! `cpumap_handed` on `sched_switch`: what each kthread had handed to the stack
//! when it last went to sleep, which a CPU that keeps another's packet reads.

use aya::{
    maps::{Array, MapData, PerCpuArray},
    programs::RawTracePoint,
    Ebpf,
};

use steer_common::names::{map, prog};

use super::CpumapDrops;
use crate::{
    error::{Error, Result},
    pins,
};

const PROGS: [(&str, &str); 5] = [
    (prog::CPUMAP_ENQUEUE, "xdp_cpumap_enqueue"),
    (prog::CPUMAP_KTHREAD, "xdp_cpumap_kthread"),
    (prog::CPUMAP_HANDED, "sched_switch"),
    (prog::NAPI_POLL, "napi_poll"),
    (prog::CPU_IDLE, "cpu_idle"),
];

/// Pins the counters of tracepoints [`attach`] attached in the run's pin
/// directory. Returns the counters map's id.
pub fn pin(ebpf: &Ebpf, run: &pins::RunId) -> Result<u32> {
    let m = ebpf.map(map::CPUMAP_DROPS).ok_or_else(|| Error::Ebpf("map CPUMAP_DROPS missing".into()))?;
    let path = run.pin_dir().join(pins::CPUMAP_DROPS);
    m.pin(&path).map_err(|e| Error::Ebpf(format!("pinning {}: {e}", path.display())))?;
    crate::loader::pinned_map_id(&path)
}

/// Attaches the tracepoint programs and then tells them which CPUMAP is
/// steer's: they count its drops and how far each queue was filled and
/// drained (what `--rebalance`, passing in place while nothing is queued and
/// `--spread busy` read; the XDP program trusts the counts, and keeps nothing
/// in place, only once the id is set, so it is set last, and before the XDP
/// program queues anything). The links belong to
/// `ebpf`. Raw tracepoints: CAP_BPF and CAP_PERFMON, no tracefs.
pub fn attach(ebpf: &mut Ebpf) -> Result<()> {
    let id = match ebpf.map(map::CPUS) {
        Some(aya::maps::Map::CpuMap(m)) => m.info().map_err(Error::ebpf)?.id(),
        _ => return Err(Error::Ebpf("map CPUS missing".into())),
    };
    for (prog, event) in PROGS {
        let p: &mut RawTracePoint = ebpf
            .program_mut(prog)
            .ok_or_else(|| Error::Ebpf(format!("program {prog} missing")))?
            .try_into()
            .map_err(Error::ebpf)?;
        p.load().map_err(|e| Error::Ebpf(format!("loading {prog}: {e}")))?;
        p.attach(event)
            .map_err(|e| Error::Ebpf(format!("attaching {prog} to raw tracepoint {event}: {e}")))?;
    }
    let m = ebpf.map_mut(map::CPUMAP_ID).ok_or_else(|| Error::Ebpf("map CPUMAP_ID missing".into()))?;
    let mut a = Array::<_, u32>::try_from(m).map_err(Error::ebpf)?;
    a.set(0, id, 0).map_err(Error::ebpf)?;
    Ok(())
}

/// The counters of a running steer, if it watches its CPUMAP.
pub fn open(id: &pins::RunId) -> Option<PerCpuArray<MapData, u64>> {
    if !id.has_map(pins::CPUMAP_DROPS) {
        return None;
    }
    let data = id.open_map(pins::CPUMAP_DROPS).ok()?;
    PerCpuArray::try_from(aya::maps::Map::PerCpuArray(data)).ok()
}

/// Drops per CPU (index = CPU), summed over the CPUs that counted them.
pub fn read(map: &PerCpuArray<MapData, u64>, ncpus: usize) -> Result<Vec<CpumapDrops>> {
    let sum = |i: usize| -> Result<u64> {
        if i as u32 >= map.len() {
            return Ok(0);
        }
        Ok(map.get(&(i as u32), 0).map_err(Error::ebpf)?.iter().sum())
    };
    (0..ncpus).map(|c| Ok(CpumapDrops { enqueue: sum(2 * c)?, kthread: sum(2 * c + 1)? })).collect()
}
