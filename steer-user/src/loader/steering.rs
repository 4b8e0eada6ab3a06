//! What `steer run` attaches and how it is undone: the XDP program (native or
//! generic), with `--mode rfs` the socket tracepoints, the cpumap drop
//! tracepoints, the pins and run.json.

use std::path::PathBuf;

use aya::{
    maps::{Array, CpuMap},
    programs::{links::FdLink, links::PinnedLink, ProgramError, XdpMode as AyaXdpMode},
    Ebpf,
};
use steer_common::names::map;

use super::{
    cpumap_delete, errno, load, map_mut, pinned_map_id, program, snapshot, write_config, STEER_PROG,
};
use crate::{
    config::{HashSettings, RunOptions, XdpMode},
    error::{Error, Result},
    iface, mounts, pins, rfs,
    stats::Snapshot,
};

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
const PINNED_MAPS: [(&str, &str); 14] = [
    (map::STATS, pins::STATS),
    (map::TARGETS, pins::TARGETS),
    (map::CONFIG, pins::CONFIG),
    (map::INDIR, pins::INDIR),
    (map::CPUS, pins::CPUS),
    (map::FLOWS, pins::FLOWS),
    (map::RFS_STATS, pins::RFS_STATS),
    (map::INNER_PROG, pins::INNER_PROG),
    (map::RFS_EXPIRED, pins::RFS_EXPIRED),
    (map::RFS_WANT, pins::RFS_WANT),
    (map::RFS_SLOTS, pins::RFS_SLOTS),
    (map::TOEPLITZ, pins::TOEPLITZ),
    (map::BUCKETS, pins::BUCKETS),
    (map::REBALANCE, pins::REBALANCE),
];

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
    /// `--local-pass` as resolved for this attach: kept across reconfigurations.
    local_pass: u32,
}

impl Steering {
    /// Validated options in, everything `steer run` attaches out: the XDP
    /// program, with `--mode rfs` the socket tracepoints, and the cpumap drop
    /// tracepoints. On any error nothing stays attached or pinned.
    pub fn start(opts: &RunOptions) -> Result<Self> {
        mounts::ensure_bpffs()?;
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
        // In place only once the attach mode is known (below): until then, every packet is queued.
        let mut ebpf = load(
            &HashSettings { local_pass: steer_common::LOCAL_PASS_OFF, ..opts.hash.clone() },
            opts.qsize,
        )?;
        if opts.hash.rfs.is_some() {
            // Before XDP attaches: on failure, dropping `ebpf` detaches the tracepoints.
            rfs::start(&mut ebpf, &opts.iface)?;
        }
        // The CPUMAP's counters, before XDP queues anything, so that their counts are whole.
        // Optional: stats work without them, and without them nothing is passed in place while
        // something might be queued (the XDP program checks they run).
        let counted = match crate::stats::cpumap::attach(&mut ebpf) {
            Ok(()) => true,
            Err(e) => {
                log::warn!(
                    "cpumap drops will not be counted, --local-pass drained acts as off and --spread busy as \
                     always: {e}"
                );
                false
            }
        };
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
        let local_pass = match opts.local_pass.resolve(mode == Attached::Native, &driver) {
            steer_common::LOCAL_PASS_DRAINED if !counted => steer_common::LOCAL_PASS_OFF,
            l => l,
        };
        if local_pass != steer_common::LOCAL_PASS_OFF {
            write_config(&mut ebpf, &HashSettings { local_pass, ..opts.hash.clone() })?;
        }
        log::info!(
            "{}: a packet steered to the CPU it arrived on is {} ({:?} XDP, driver {driver}, --local-pass {:?})",
            opts.iface,
            match local_pass {
                steer_common::LOCAL_PASS_ON => "passed in place",
                steer_common::LOCAL_PASS_DRAINED => "passed in place while nothing is queued for its CPU",
                _ => "queued like the others",
            },
            mode,
            opts.local_pass
        );
        if opts.hash.spread == crate::config::Spread::Busy {
            log::info!(
                "{}: {}",
                opts.iface,
                if local_pass == steer_common::LOCAL_PASS_OFF {
                    "--spread busy acts as always here: nothing may be passed in place"
                } else {
                    "a CPU hands packets on only where that pays (--spread busy): to every CPU while its \
                     NAPI polls are full, to the CPUs that idle while it does not, to none while it idles"
                }
            );
        }
        let mut steering =
            Self { ebpf, iface: opts.iface.clone(), id, mode, driver, link: None, replaced, local_pass };
        // From here on, a failure must leave nothing behind: `pin` cleans up itself.
        let fd_link = FdLink::try_from(link)
            .map_err(|e| Error::Ebpf(format!("XDP was attached without a bpf link (old kernel?): {e}")))?;
        steering.pin(fd_link, opts)?;
        if counted {
            match crate::stats::cpumap::pin(&steering.ebpf, &steering.id) {
                Ok(map_id) => steering.record_map(pins::CPUMAP_DROPS, map_id)?,
                Err(e) => log::warn!("cpumap drops will not be shown by steer stats: {e}"),
            }
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
                if rfs::PINS.contains(&pin) && opts.hash.rfs.is_none() {
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
                udp_timeout_s: opts.hash.rfs.map(|r| r.udp_timeout_s),
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
        super::apply_config(&mut self.ebpf, &HashSettings { local_pass: self.local_pass, ..hash.clone() })?;
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
