//! Loading steer's eBPF object, filling its maps, attaching the XDP program to
//! an interface, pinning what other processes read, and undoing all of it
//! (steering.rs: what `steer run` attaches, [`Steering`]).

mod steering;

pub use steering::{Attached, Steering};

use aya::{
    maps::{Array, CpuMap, MapData, PerCpuArray, ProgramArray},
    programs::{ProgramError, Xdp},
    Ebpf, EbpfLoader,
};
use steer_common::{
    names::{map, prog},
    Counters, GenConfig, HashKind, SteerConfig, ToeplitzTable,
};

use crate::{
    config::HashSettings,
    cpus,
    error::{Error, Result},
    rfs,
    stats::Snapshot,
};

/// Name of the steering program in the object.
pub const STEER_PROG: &str = prog::STEER;
/// Name of the lab generator program.
pub const GEN_PROG: &str = prog::LAB_GEN;
/// Name of the bare XDP_PASS program (cost baseline).
pub const PASS_PROG: &str = prog::PASS;
/// Name of the bare CPUMAP redirect (the floor of any steering's cost).
pub const FLOOR_PROG: &str = prog::FLOOR;

/// Loads the object with maps sized for this machine and `hash`, fills the
/// maps, and loads (verifies) the steering program. Attaches nothing.
pub fn load(hash: &HashSettings, qsize: u32) -> Result<Ebpf> {
    let ncpus = cpus::possible_count()?;
    let flow_entries = hash.rfs.map_or(rfs::UNUSED_FLOW_ENTRIES, |r| r.flow_entries);
    let slots = steer_common::flow::slots(flow_entries);
    let mut ebpf = EbpfLoader::new()
        .map_max_entries(map::CPUS, ncpus)
        .map_max_entries(map::TARGETS, ncpus)
        .map_max_entries(map::LAST_IDLE, ncpus)
        .map_max_entries(map::INDIR, hash.table_size)
        .map_max_entries(map::BUCKETS, hash.table_size)
        .map_max_entries(map::MOVES, hash.table_size)
        .map_max_entries(map::FLOWS, flow_entries)
        .map_max_entries(map::RFS_WANT, slots)
        .map_max_entries(map::RFS_SLOTS, slots)
        .load(crate::EBPF_OBJECT)
        .map_err(|e| Error::Ebpf(format!("loading the eBPF object: {e}")))?;
    write_config(&mut ebpf, hash)?;
    {
        let mut cpumap = CpuMap::try_from(map_mut(&mut ebpf, map::CPUS)?).map_err(Error::ebpf)?;
        for &cpu in &hash.cpus {
            cpumap
                .set(cpu, qsize, None, 0)
                .map_err(|e| Error::Ebpf(format!("adding CPU {cpu} to the CPUMAP (qsize {qsize}): {e}")))?;
        }
    }
    for name in [prog::STEER_INNER, STEER_PROG] {
        program(&mut ebpf, name)?
            .load()
            .map_err(|e| Error::Ebpf(format!("verifier rejected {name}: {}", verifier_detail(&e))))?;
    }
    let inner = program(&mut ebpf, prog::STEER_INNER)?
        .fd()
        .map_err(Error::ebpf)?
        .try_clone()
        .map_err(|e| Error::io("duplicating a program fd", e))?;
    ProgramArray::try_from(map_mut(&mut ebpf, map::INNER_PROG)?)
        .map_err(Error::ebpf)?
        .set(0, &inner, 0)
        .map_err(|e| Error::Ebpf(format!("filling {}: {e}", map::INNER_PROG)))?;
    Ok(ebpf)
}

/// Writes the configuration, indirection table and Toeplitz table. Safe on a
/// live program: each entry is replaced atomically.
pub fn write_config(ebpf: &mut Ebpf, hash: &HashSettings) -> Result<()> {
    write_config_raw(ebpf, hash, hash.steer_config())
}

/// [`write_config`] on a live program, keeping the RFS steering slots
/// consistent: when the hash that indexes them changes (kind, seed,
/// symmetric, key), RFS is paused in CONFIG (RSS alone steers, with the new
/// hash: the one moment every flow may change CPU, as on any hash change),
/// the slots are rebuilt for the new hash, each flow starting on RSS until it
/// pauses, and RFS resumes. No packet meets a slot filled for the other hash.
pub fn apply_config(ebpf: &mut Ebpf, hash: &HashSettings) -> Result<()> {
    if hash.rfs.is_some() && rfs::slot_hash(ebpf)? != rfs::SlotHash::new(hash) {
        let mut paused = hash.steer_config();
        paused.rfs = 0;
        write_config_raw(ebpf, hash, paused)?;
        rfs::rebuild(ebpf, &rfs::SlotHash::new(hash))?;
    }
    write_config(ebpf, hash)
}

/// [`write_config`] with `cfg` as the program's configuration.
pub(crate) fn write_config_raw(ebpf: &mut Ebpf, hash: &HashSettings, cfg: SteerConfig) -> Result<()> {
    if hash.kind == HashKind::Toeplitz {
        let mut t =
            Array::<_, ToeplitzTable>::try_from(map_mut(ebpf, map::TOEPLITZ)?).map_err(Error::ebpf)?;
        t.set(0, ToeplitzTable::new(&hash.key), 0).map_err(Error::ebpf)?;
    }
    {
        let mut indir = Array::<_, u32>::try_from(map_mut(ebpf, map::INDIR)?).map_err(Error::ebpf)?;
        for (bucket, cpu) in hash.indirection_table().into_iter().enumerate() {
            indir.set(bucket as u32, cpu, 0).map_err(Error::ebpf)?;
        }
    }
    // Until its next poll ends (`--spread busy`), a steering CPU keeps what it receives and any
    // other hands everything on, after each SIGHUP too. A poll ending meanwhile may overwrite this
    // with what the old configuration said; the poll after it decides from the new one.
    let per_cpu: Vec<u64> =
        (0..cpus::possible_count()?).map(|c| if hash.cpus.contains(&c) { 0 } else { u64::MAX }).collect();
    let mut m = PerCpuArray::<_, u64>::try_from(map_mut(ebpf, map::SPREAD_TO)?).map_err(Error::ebpf)?;
    let v = aya::maps::PerCpuValues::try_from(per_cpu).map_err(|e| Error::io("filling SPREAD_TO", e))?;
    m.set(0, v, 0).map_err(Error::ebpf)?;
    let mut m = Array::<_, SteerConfig>::try_from(map_mut(ebpf, map::CONFIG)?).map_err(Error::ebpf)?;
    m.set(0, cfg, 0).map_err(Error::ebpf)
}

pub(crate) fn map_mut<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut aya::maps::Map> {
    ebpf.map_mut(name).ok_or_else(|| Error::Ebpf(format!("map {name} missing from the object")))
}

/// The XDP program `name` of the object.
pub fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Xdp> {
    ebpf.program_mut(name)
        .ok_or_else(|| Error::Ebpf(format!("program {name} missing from the object")))?
        .try_into()
        .map_err(Error::ebpf)
}

fn verifier_detail(e: &ProgramError) -> String {
    match e {
        ProgramError::LoadError { io_error, verifier_log } => format!("{io_error}\n{verifier_log}"),
        other => other.to_string(),
    }
}

pub(crate) fn errno(e: &ProgramError) -> Option<i32> {
    match e {
        ProgramError::SyscallError(s) => s.io_error.raw_os_error(),
        _ => None,
    }
}

/// Reads the program's counters from the loaded maps.
pub fn snapshot(ebpf: &Ebpf) -> Result<Snapshot> {
    let stats: PerCpuArray<&MapData, Counters> =
        PerCpuArray::try_from(ebpf.map(map::STATS).ok_or_else(|| Error::Ebpf("map STATS missing".into()))?)
            .map_err(Error::ebpf)?;
    let targets: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(
        ebpf.map(map::TARGETS).ok_or_else(|| Error::Ebpf("map TARGETS missing".into()))?,
    )
    .map_err(Error::ebpf)?;
    Snapshot::read(&stats, &targets)
}

/// Loads the object for the lab generator (`lab_gen`) with its configuration.
/// Nothing is attached: the generator only runs under BPF_PROG_TEST_RUN.
pub fn generator(cfg: GenConfig) -> Result<Ebpf> {
    generator_with(cfg, &[])
}

/// [`generator`] with a flow schedule (`cfg.sched_len` is set from it): frame
/// n is flow `sched[n % len]`, so a schedule with repeated flows makes a skewed mix.
pub fn generator_with(mut cfg: GenConfig, sched: &[u32]) -> Result<Ebpf> {
    let mut ebpf = EbpfLoader::new()
        .load(crate::EBPF_OBJECT)
        .map_err(|e| Error::Ebpf(format!("loading the eBPF object: {e}")))?;
    {
        let mut s = Array::<_, u32>::try_from(map_mut(&mut ebpf, map::GEN_SCHED)?).map_err(Error::ebpf)?;
        if sched.len() > s.len() as usize {
            return Err(Error::Ebpf(format!(
                "a generator schedule of {} frames is longer than its map ({})",
                sched.len(),
                s.len()
            )));
        }
        for (i, f) in sched.iter().enumerate() {
            s.set(i as u32, *f, 0).map_err(Error::ebpf)?;
        }
    }
    cfg.sched_len = sched.len() as u32;
    let mut m = Array::<_, GenConfig>::try_from(map_mut(&mut ebpf, map::GEN_CONFIG)?).map_err(Error::ebpf)?;
    m.set(0, cfg, 0).map_err(Error::ebpf)?;
    program(&mut ebpf, GEN_PROG)?
        .load()
        .map_err(|e| Error::Ebpf(format!("verifier rejected {GEN_PROG}: {}", verifier_detail(&e))))?;
    Ok(ebpf)
}

/// Sets the generator's pacing: nanoseconds between frames (0: unpaced).
pub fn set_generator_gap(ebpf: &mut Ebpf, gap_ns: u32) -> Result<()> {
    let mut m = Array::<_, GenConfig>::try_from(map_mut(ebpf, map::GEN_CONFIG)?).map_err(Error::ebpf)?;
    let mut cfg = m.get(&0, 0).map_err(Error::ebpf)?;
    cfg.gap_ns = gap_ns;
    m.set(0, cfg, 0).map_err(Error::ebpf)
}

/// Frames the generator has sent so far (every CPU).
pub fn generator_sent(ebpf: &Ebpf) -> Result<u64> {
    let seq: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(
        ebpf.map(map::GEN_SEQ).ok_or_else(|| Error::Ebpf("map GEN_SEQ missing".into()))?,
    )
    .map_err(Error::ebpf)?;
    Ok(seq.get(&0, 0).map_err(Error::ebpf)?.iter().sum())
}

/// Removes `cpu`'s queue (aya 0.14 has no CpuMap::remove): BPF_MAP_DELETE_ELEM.
pub fn cpumap_delete(ebpf: &mut Ebpf, cpu: u32) -> Result<()> {
    use std::os::fd::AsFd as _;
    let aya::maps::Map::CpuMap(data) = map_mut(ebpf, map::CPUS)? else {
        return Err(Error::Ebpf("map CPUS is not a CPUMAP".into()));
    };
    crate::sys::bpf::map_delete_u32(data.fd().as_fd(), cpu)
        .map_err(|e| Error::io(format!("removing CPU {cpu} from the CPUMAP"), e))
}

/// The kernel's id of the map pinned at `path`, recorded in run.json.
pub fn pinned_map_id(path: &std::path::Path) -> Result<u32> {
    MapData::from_pin(path)
        .and_then(|m| m.info())
        .map(|i| i.id())
        .map_err(|e| Error::Ebpf(format!("reading the id of {}: {e}", path.display())))
}
