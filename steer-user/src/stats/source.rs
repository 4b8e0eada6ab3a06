//! Where samples come from: a run's maps (by pin or by id) and the kernel's per-CPU files.

use std::time::Instant;

use aya::maps::PerCpuArray;

use super::{cpumap, procstat, softnet, RfsSample, RunInfo, Sample, Snapshot};
use crate::error::{Error, Result};

/// Reads samples for one interface: the pins of a running `steer run` when
/// there is one (picked up or dropped as runs come and go), and the kernel's
/// per-CPU files always.
pub struct Source {
    id: crate::pins::RunId,
    pinned: Option<crate::pins::Pinned>,
    cpumap: Option<PerCpuArray<aya::maps::MapData, u64>>,
    rfs: Option<crate::rfs::PinnedFlows>,
    buckets: Option<super::buckets::BucketMaps>,
}

impl Source {
    /// Fails when there is no such interface here, so that a typo is not
    /// silently shown as an idle machine, and when a run exists but its maps
    /// cannot be opened (permissions), so that it is not shown as "no steer".
    pub fn open(iface: &str) -> Result<Self> {
        let mut s =
            Self { id: crate::pins::RunId::of(iface)?, pinned: None, cpumap: None, rfs: None, buckets: None };
        s.refresh()?;
        Ok(s)
    }

    fn refresh(&mut self) -> Result<()> {
        if !self.id.is_running() {
            self.pinned = None;
            self.cpumap = None;
            self.rfs = None;
            self.buckets = None;
            return Ok(());
        }
        if self.pinned.is_none() {
            self.pinned = Some(crate::pins::Pinned::open_id(&self.id)?);
        }
        if self.rfs.is_none() && self.id.has_map(crate::pins::FLOWS) {
            self.rfs = crate::rfs::PinnedFlows::open(&self.id.iface).ok();
        }
        if self.cpumap.is_none() {
            self.cpumap = cpumap::open(&self.id);
        }
        if self.buckets.is_none() && self.id.has_map(crate::pins::BUCKETS) {
            self.buckets = super::buckets::BucketMaps::open(&self.id).ok();
        }
        Ok(())
    }

    /// Whether a steer program's maps are being read.
    pub fn attached(&self) -> bool {
        self.pinned.is_some()
    }

    pub fn sample(&mut self) -> Result<Sample> {
        self.refresh()?;
        let xdp = match &self.pinned {
            Some(p) => Some(Snapshot::read(&p.stats, &p.targets)?),
            None => None,
        };
        let cpumap = match (&self.cpumap, &xdp) {
            (Some(m), Some(x)) => Some(cpumap::read(m, x.per_cpu.len())?),
            _ => None,
        };
        let rfs = match &self.rfs {
            Some(f) => Some(RfsSample {
                per_cpu: f.stats.get(&0, 0).map_err(Error::ebpf)?.iter().copied().collect(),
                live_flows: f.flows.keys().count() as u64,
                expired: f.counters()?.expired,
            }),
            None => None,
        };
        let buckets = match (&self.buckets, &xdp) {
            (Some(b), Some(_)) => Some(b.read()?),
            _ => None,
        };
        let unix_s = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        Ok(Sample {
            at: Instant::now(),
            unix_s,
            xdp,
            cpumap,
            times: procstat::read()?,
            softnet: softnet::read()?,
            run: RunInfo::read(&self.id),
            rfs,
            buckets,
        })
    }
}
