//! Loading steer's eBPF object, filling its maps, attaching the XDP program to
//! an interface, pinning what other processes read, and undoing all of it.

use std::path::PathBuf;

use aya::{
    maps::{Array, CpuMap, MapData, PerCpuArray},
    programs::{links::FdLink, links::PinnedLink, ProgramError, Xdp, XdpMode as AyaXdpMode},
    Ebpf, EbpfLoader,
};
use steer_common::{
    names::{map, prog},
    Counters, GenConfig, HashKind, SteerConfig, ToeplitzTable,
};

use crate::{
    config::{HashSettings, RunOptions, XdpMode},
    cpus,
    error::{Error, Result},
    iface, mounts, pins, rfs,
    stats::Snapshot,
};

/// Name of the steering program in the object.
pub const STEER_PROG: &str = prog::STEER;
/// Name of the lab generator program.
pub const GEN_PROG: &str = prog::LAB_GEN;
/// Name of the bare XDP_PASS program (cost baseline).
pub const PASS_PROG: &str = prog::PASS;

/// Loads the object with maps sized for this machine and `hash`, fills the
/// maps, and loads (verifies) the steering program. Attaches nothing.
pub fn load(hash: &HashSettings, qsize: u32) -> Result<Ebpf> {
    let ncpus = cpus::possible_count()?;
    let mut ebpf = EbpfLoader::new()
        .map_max_entries(map::CPUS, ncpus)
        .map_max_entries(map::TARGETS, ncpus)
        .map_max_entries(map::INDIR, hash.table_size)
        .map_max_entries(map::FLOWS, hash.rfs.map_or(rfs::UNUSED_FLOW_ENTRIES, |r| r.flow_entries))
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
    program(&mut ebpf, STEER_PROG)?
        .load()
        .map_err(|e| Error::Ebpf(format!("verifier rejected {STEER_PROG}: {}", verifier_detail(&e))))?;
    Ok(ebpf)
}

/// Writes the configuration, indirection table and Toeplitz table. Safe on a
/// live program: each entry is replaced atomically.
pub fn write_config(ebpf: &mut Ebpf, hash: &HashSettings) -> Result<()> {
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
    let mut cfg = Array::<_, SteerConfig>::try_from(map_mut(ebpf, map::CONFIG)?).map_err(Error::ebpf)?;
    cfg.set(0, hash.steer_config(), 0).map_err(Error::ebpf)
}

fn map_mut<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut aya::maps::Map> {
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

fn errno(e: &ProgramError) -> Option<i32> {
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
    let mut ebpf = EbpfLoader::new()
        .load(crate::EBPF_OBJECT)
        .map_err(|e| Error::Ebpf(format!("loading the eBPF object: {e}")))?;
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

/// Why a driver refuses native XDP, in words, for the errnos that have a known cause.
fn attach_hint(e: &ProgramError, driver: &str, opts: &RunOptions) -> String {
    let mtu = iface::mtu(&opts.iface).map_or_else(|_| "?".to_string(), |m| m.to_string());
    match errno(e) {
        Some(libc::ERANGE) => format!(
            " (ERANGE: the MTU is too large for native XDP on driver {driver}: \"{}\" has MTU {mtu}, and a frame \
             must fit one page (on veth the peer's MTU counts); lower the MTU to about 3500 or less, or use \
             --xdp-mode skb)",
            opts.iface
        ),
        Some(libc::EOPNOTSUPP) => {
            format!(" (EOPNOTSUPP: driver {driver} has no native XDP; use --xdp-mode skb or auto)")
        }
        Some(n) => format!(" ({}; driver {driver}, MTU {mtu}; --xdp-mode skb works on every driver)", std::io::Error::from_raw_os_error(n)),
        None => String::new(),
    }
}

/// Object map name -> pin name, for the maps every run pins.
const PINNED_MAPS: [(&str, &str); 7] = [
    (map::STATS, pins::STATS),
    (map::TARGETS, pins::TARGETS),
    (map::CONFIG, pins::CONFIG),
    (map::INDIR, pins::INDIR),
    (map::CPUS, pins::CPUS),
    (map::FLOWS, pins::FLOWS),
    (map::RFS_STATS, pins::RFS_STATS),
];

/// The kernel's id of the map pinned at `path`, recorded in run.json.
pub fn pinned_map_id(path: &std::path::Path) -> Result<u32> {
    MapData::from_pin(path)
        .and_then(|m| m.info())
        .map(|i| i.id())
        .map_err(|e| Error::Ebpf(format!("reading the id of {}: {e}", path.display())))
}

/// Attach mode actually in use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Attached {
    Native,
    Generic,
}

/// A steering program attached to an interface, pinned under bpffs.
/// `stop` (or drop) detaches it and removes the pins.
pub struct Steering {
    pub ebpf: Ebpf,
    pub iface: String,
    /// Where the run's pins and state live.
    pub id: pins::RunId,
    pub mode: Attached,
    pub driver: String,
    link: Option<PinnedLink>,
    /// A foreign program `--replace` took off, to put back on stop.
    replaced: Option<crate::xdp_owner::Replaced>,
}

impl Steering {
    /// Validated options in, everything `steer run` attaches out: the XDP
    /// program, with `--mode rfs` the socket tracepoints, and the cpumap drop
    /// tracepoints. On any error nothing stays attached or pinned.
    pub fn start(opts: &RunOptions) -> Result<Self> {
        mounts::ensure_bpffs()?;
        mounts::ensure_tracefs()?;
        let id = pins::RunId { netns: pins::netns()?, ifindex: opts.ifindex, iface: opts.iface.clone() };
        if let Some(pid) = id.live_owner() {
            return Err(Error::Ebpf(format!("steer (pid {pid}) is already running on \"{}\"", opts.iface)));
        }
        if id.has_link() {
            if !opts.replace {
                return Err(Error::XdpBusy { iface: opts.iface.clone() });
            }
            log::warn!("removing what an earlier steer run left pinned on {}", opts.iface);
            id.remove()?;
        }
        let mut ebpf = load(&opts.hash, opts.qsize)?;
        if opts.hash.rfs.is_some() {
            // Before XDP attaches: on failure, dropping `ebpf` detaches the tracepoints.
            rfs::start(&mut ebpf, &opts.iface)?;
        }
        let driver = iface::driver(&opts.iface).unwrap_or_else(|_| "unknown".into());
        let replaced = match (opts.replace, crate::xdp_owner::query(opts.ifindex)?) {
            (true, Some(was)) => {
                let dir = id.pin_dir();
                std::fs::create_dir_all(&dir)
                    .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
                match crate::xdp_owner::take_over(&opts.iface, opts.ifindex, was, &dir.join(pins::REPLACED)) {
                    Ok(r) => Some(r),
                    Err(e) => {
                        let _ = id.remove();
                        return Err(e);
                    }
                }
            }
            _ => None,
        };
        let give_back = |r: Option<crate::xdp_owner::Replaced>| {
            if let Some(r) = r {
                if let Err(e) = r.give_back() {
                    log::error!("putting back the replaced XDP program: {e}");
                }
                let _ = id.remove();
            }
        };
        let prog = program(&mut ebpf, STEER_PROG)?;
        let busy = |e: &ProgramError| errno(e) == Some(libc::EBUSY) || errno(e) == Some(libc::EEXIST);
        let (link_id, mode) = match opts.xdp_mode {
            XdpMode::Skb => (prog.attach_to_if_index(opts.ifindex, AyaXdpMode::Skb), Attached::Generic),
            XdpMode::Native => (prog.attach_to_if_index(opts.ifindex, AyaXdpMode::Driver), Attached::Native),
            XdpMode::Auto => match prog.attach_to_if_index(opts.ifindex, AyaXdpMode::Driver) {
                Ok(id) => (Ok(id), Attached::Native),
                Err(e) if busy(&e) => (Err(e), Attached::Native),
                Err(e) => {
                    log::warn!(
                        "native XDP is not available on {} (driver {driver}: {e}); falling back to generic (skb) mode, \
                         which runs later in the stack and costs more per packet",
                        opts.iface
                    );
                    (prog.attach_to_if_index(opts.ifindex, AyaXdpMode::Skb), Attached::Generic)
                }
            },
        };
        let link_id = match link_id {
            Ok(id) => id,
            Err(e) => {
                give_back(replaced);
                return Err(if busy(&e) {
                    Error::XdpBusy { iface: opts.iface.clone() }
                } else {
                    Error::Ebpf(format!(
                        "attaching XDP to \"{}\" ({mode:?}): {e}{}",
                        opts.iface,
                        attach_hint(&e, &driver, opts)
                    ))
                });
            }
        };
        let link = prog.take_link(link_id).map_err(Error::ebpf)?;
        let mut steering = Self { ebpf, iface: opts.iface.clone(), id, mode, driver, link: None, replaced };
        // From here on, a failure must leave nothing behind: `pin` cleans up itself.
        let fd_link = FdLink::try_from(link)
            .map_err(|e| Error::Ebpf(format!("XDP was attached without a bpf link (old kernel?): {e}")))?;
        steering.pin(fd_link, opts)?;
        // Optional: stats work without them.
        match crate::stats::cpumap::watch(&mut steering.ebpf, &steering.id) {
            Ok(map_id) => steering.record_map(pins::CPUMAP_DROPS, map_id)?,
            Err(e) => log::warn!("cpumap drops will not be counted: {e}"),
        }
        Ok(steering)
    }

    fn pin(&mut self, fd_link: FdLink, opts: &RunOptions) -> Result<()> {
        let dir = self.id.pin_dir();
        let res = (|| {
            std::fs::create_dir_all(&dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
            let mut maps = std::collections::BTreeMap::new();
            for (map, pin) in PINNED_MAPS {
                // RFS maps are pinned only when RFS runs, so `steer flows` can tell.
                if (pin == pins::FLOWS || pin == pins::RFS_STATS) && opts.hash.rfs.is_none() {
                    continue;
                }
                let m = self.ebpf.map(map).ok_or_else(|| Error::Ebpf(format!("map {map} missing")))?;
                m.pin(dir.join(pin))
                    .map_err(|e| Error::Ebpf(format!("pinning {map} at {}: {e}", dir.display())))?;
                maps.insert(pin.to_string(), pinned_map_id(&dir.join(pin))?);
            }
            let link_id = fd_link.info().ok().map(|i| i.id());
            let link = fd_link
                .pin(dir.join(pins::LINK))
                .map_err(|e| Error::Ebpf(format!("pinning the XDP link: {e}")))?;
            let run = pins::RunFile {
                pid: std::process::id(),
                iface: self.iface.clone(),
                ifindex: self.id.ifindex,
                netns: self.id.netns,
                mode: match self.mode {
                    Attached::Native => "native",
                    Attached::Generic => "generic",
                }
                .into(),
                steering: if opts.hash.rfs.is_some() { "rfs" } else { "rss" }.into(),
                cpus: opts.hash.cpus.clone(),
                hash: format!("{:?}", opts.hash.kind).to_lowercase(),
                seed: opts.hash.seed,
                symmetric: opts.hash.symmetric,
                table_size: opts.hash.table_size,
                qsize: opts.qsize,
                flow_entries: opts.hash.rfs.map(|r| r.flow_entries),
                migrate_idle_us: opts.hash.rfs.map(|r| r.migrate_idle_us),
                replaced: self.replaced.as_ref().map(|r| r.was),
                maps,
                link_id,
            };
            // The link is pinned before the run file names it: a reader never finds a run without one.
            let written = run.write(&self.id);
            self.link = Some(link);
            written
        })();
        match res {
            Ok(()) => Ok(()),
            Err(e) => {
                if let Some(link) = self.link.take() {
                    let _ = link.unpin();
                }
                if let Some(r) = self.replaced.take() {
                    if let Err(e) = r.give_back() {
                        log::error!("putting back the replaced XDP program: {e}");
                    }
                }
                let _ = self.id.remove();
                Err(e)
            }
        }
    }

    pub fn pin_dir(&self) -> PathBuf {
        self.id.pin_dir()
    }

    pub fn snapshot(&self) -> Result<Snapshot> {
        snapshot(&self.ebpf)
    }

    /// Applies new hash settings to the live maps without detaching. When the
    /// CPU set changes, queues for the new CPUs are created first (same queue
    /// size as the existing ones), then the table is switched, then queues of
    /// CPUs no longer used are removed: at no moment does the table point at a
    /// CPU without a queue, so nothing is dropped or passed unsteered.
    pub fn reconfigure(&mut self, hash: &HashSettings) -> Result<()> {
        // The table map was sized at load: it can shrink live, not grow.
        let loaded =
            Array::<_, u32>::try_from(map_mut(&mut self.ebpf, map::INDIR)?).map_err(Error::ebpf)?.len();
        if hash.table_size > loaded {
            return Err(Error::BadValue {
                what: "table-size",
                value: hash.table_size.to_string(),
                why: format!(
                    "the running program was loaded with {loaded} buckets; growing the table needs a restart"
                ),
            });
        }
        let old = self.cpumap_cpus()?;
        let qsize = {
            let cpumap = CpuMap::try_from(map_mut(&mut self.ebpf, map::CPUS)?).map_err(Error::ebpf)?;
            old.first()
                .and_then(|c| cpumap.get(*c, 0).ok())
                .map_or(crate::config::DEFAULT_QSIZE, |v| v.queue_size)
        };
        {
            let mut cpumap = CpuMap::try_from(map_mut(&mut self.ebpf, map::CPUS)?).map_err(Error::ebpf)?;
            for &cpu in hash.cpus.iter().filter(|c| !old.contains(c)) {
                cpumap.set(cpu, qsize, None, 0).map_err(|e| {
                    Error::Ebpf(format!("adding CPU {cpu} to the CPUMAP (qsize {qsize}): {e}"))
                })?;
            }
        }
        write_config(&mut self.ebpf, hash)?;
        for &cpu in old.iter().filter(|c| !hash.cpus.contains(c)) {
            cpumap_delete(&mut self.ebpf, cpu)?;
        }
        self.update_run_file(hash)
    }

    /// CPUs that have a CPUMAP queue now.
    pub fn cpumap_cpus(&mut self) -> Result<Vec<u32>> {
        let cpumap = CpuMap::try_from(map_mut(&mut self.ebpf, map::CPUS)?).map_err(Error::ebpf)?;
        Ok((0..cpumap.len()).filter(|c| cpumap.get(*c, 0).is_ok_and(|v| v.queue_size > 0)).collect())
    }

    /// Keeps `run.json` (read by `steer stats`) in step with the live CPU set.
    fn update_run_file(&self, hash: &HashSettings) -> Result<()> {
        let Some(mut run) = self.id.read_run() else { return Ok(()) };
        run.cpus = hash.cpus.clone();
        run.hash = format!("{:?}", hash.kind).to_lowercase();
        run.seed = hash.seed;
        run.symmetric = hash.symmetric;
        run.table_size = hash.table_size;
        run.write(&self.id)
    }

    /// Adds a map pinned after start (the cpumap drop counters) to the run file.
    pub fn record_map(&self, pin: &str, id: u32) -> Result<()> {
        let Some(mut run) = self.id.read_run() else { return Ok(()) };
        run.maps.insert(pin.to_string(), id);
        run.write(&self.id)
    }

    /// Detaches the program and removes every pin.
    pub fn stop(mut self) -> Result<()> {
        self.teardown()
    }

    fn teardown(&mut self) -> Result<()> {
        let mut first_err = None;
        if let Some(link) = self.link.take() {
            match link.unpin() {
                // Dropping the last fd of an unpinned link detaches the program.
                Ok(fd_link) => drop(fd_link),
                Err(e) => first_err = Some(Error::io("unpinning the XDP link", e)),
            }
        }
        if let Some(r) = self.replaced.take() {
            if let Err(e) = r.give_back() {
                first_err.get_or_insert(e);
            }
        }
        if let Err(e) = self.id.remove() {
            first_err.get_or_insert(e);
        }
        first_err.map_or(Ok(()), Err)
    }
}

impl Drop for Steering {
    fn drop(&mut self) {
        if self.link.is_some() || self.replaced.is_some() {
            if let Err(e) = self.teardown() {
                log::error!("cleaning up {}: {e}", self.iface);
            }
        }
    }
}
