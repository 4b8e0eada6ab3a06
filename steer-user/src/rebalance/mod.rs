//! `steer run --rebalance`: every interval, read how many packets each bucket
//! of the indirection table steered and what each CPU received, decide moves
//! (plan.rs, pure) and ask the XDP program to make them.
//!
//! Why the XDP program makes the switch (steer-common's balance.rs): a bucket
//! may only move when none of its packets can still be queued on the old CPU
//! behind newer ones, the rule of RFS moves (idle longer than
//! `--migrate-idle-us`). Userspace cannot check that and switch atomically: a
//! packet can arrive between its check and its write. The XDP program sees
//! every packet with its time, so the balancer only marks a bucket moving and
//! the program switches it on the first packet after an idle gap. It costs a
//! clock read per packet of a moving bucket only; the others pay one per-CPU
//! counter increment and a test of one bit.
//!
//! Load is packets per second steered by the hash: RFS-steered packets are not
//! counted in any bucket (they follow their reader, not the table), but the
//! CPU they land on is charged with them, so buckets move away from a CPU
//! that RFS flows keep busy.

pub mod plan;

use std::{
    collections::BTreeMap,
    os::fd::AsFd as _,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use aya::{
    maps::{Array, Map, MapData, PerCpuArray},
    Ebpf,
};
use steer_common::{names::map, BucketLoad, BucketMove, RebalanceState, SteerConfig, INDIR_MOVING};

use crate::error::{Error, Result};
pub use plan::{Bucket, Move, Params, Plan};

/// Default idle time before a bucket moves (`--migrate-idle-us`), as for RFS
/// moves. With it the XDP program also waits for the old CPU's queue to give
/// out the bucket's last packet (steer-common's balance.rs): measured in the
/// lab (tests/tests/rebalance.rs), the idle time alone let moved TCP buckets
/// be reordered (1-177 out-of-order segments for 4-7 moves with 500 us, and
/// at times with 2 ms) while the old CPU's cpumap kthread shared its CPU with
/// busy readers; with the queue check, none in 4 runs.
pub const DEFAULT_MOVE_IDLE_US: u32 = 500;
/// Default `--rebalance-interval`, milliseconds.
pub const DEFAULT_INTERVAL_MS: u32 = 100;
/// Bounds of `--rebalance-interval`, milliseconds.
pub const INTERVAL_MS_RANGE: std::ops::RangeInclusive<u32> = 10..=60_000;
/// Default `--rebalance-threshold` (max/mean of per-CPU load).
pub const DEFAULT_THRESHOLD: f64 = 1.10;
/// Bounds of `--rebalance-threshold`.
pub const THRESHOLD_RANGE: std::ops::RangeInclusive<f64> = 1.0..=10.0;
/// Default `--rebalance-moves`: buckets in flight at most.
pub const DEFAULT_MAX_MOVES: u32 = 16;
/// Bounds of `--rebalance-moves`.
pub const MAX_MOVES_RANGE: std::ops::RangeInclusive<u32> = 1..=4096;
/// Intervals a bucket may stay pending (never idle) before the balancer gives
/// the move up: it then asks to stay, so that the bucket is planned again.
pub const GIVE_UP_AFTER: u32 = 20;

/// Validated `--rebalance*` options.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Settings {
    pub interval: Duration,
    pub threshold: f64,
    pub max_moves: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            interval: Duration::from_millis(DEFAULT_INTERVAL_MS as u64),
            threshold: DEFAULT_THRESHOLD,
            max_moves: DEFAULT_MAX_MOVES,
        }
    }
}

impl Settings {
    pub fn new(interval_ms: Option<u32>, threshold: Option<f64>, max_moves: Option<u32>) -> Result<Self> {
        let ms = interval_ms.unwrap_or(DEFAULT_INTERVAL_MS);
        if !INTERVAL_MS_RANGE.contains(&ms) {
            return Err(Error::BadValue {
                what: "--rebalance-interval",
                value: ms.to_string(),
                why: format!(
                    "must be between {} and {} milliseconds",
                    INTERVAL_MS_RANGE.start(),
                    INTERVAL_MS_RANGE.end()
                ),
            });
        }
        let threshold = threshold.unwrap_or(DEFAULT_THRESHOLD);
        if !THRESHOLD_RANGE.contains(&threshold) {
            return Err(Error::BadValue {
                what: "--rebalance-threshold",
                value: threshold.to_string(),
                why: "must be between 1.0 (perfect spread) and 10 (max/mean of per-CPU load)".into(),
            });
        }
        let max_moves = max_moves.unwrap_or(DEFAULT_MAX_MOVES);
        if !MAX_MOVES_RANGE.contains(&max_moves) {
            return Err(Error::BadValue {
                what: "--rebalance-moves",
                value: max_moves.to_string(),
                why: format!("must be between {} and {}", MAX_MOVES_RANGE.start(), MAX_MOVES_RANGE.end()),
            });
        }
        Ok(Self { interval: Duration::from_millis(ms as u64), threshold, max_moves })
    }

    fn params(&self) -> Params {
        Params { threshold: self.threshold, max_moves: self.max_moves as usize }
    }
}

/// A second handle on map `name` of a loaded object, so the balancer can run
/// on its own thread. Duplicates the fd: no CAP_SYS_ADMIN needed, unlike by id.
fn dup(ebpf: &Ebpf, name: &str) -> Result<MapData> {
    let data = match ebpf.map(name) {
        Some(Map::Array(d) | Map::PerCpuArray(d)) => d,
        _ => return Err(Error::Ebpf(format!("map {name} missing from the object"))),
    };
    let fd = data
        .fd()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| Error::io(format!("duplicating the fd of map {name}"), e))?;
    MapData::from_fd(fd).map_err(Error::ebpf)
}

/// The maps the balancer reads and writes.
pub struct Maps {
    config: Array<MapData, SteerConfig>,
    indir: Array<MapData, u32>,
    buckets: PerCpuArray<MapData, BucketLoad>,
    moves: Array<MapData, BucketMove>,
    targets: PerCpuArray<MapData, u64>,
    state: Array<MapData, RebalanceState>,
}

impl Maps {
    pub fn of(ebpf: &Ebpf) -> Result<Self> {
        Ok(Self {
            config: Array::try_from(Map::Array(dup(ebpf, map::CONFIG)?)).map_err(Error::ebpf)?,
            indir: Array::try_from(Map::Array(dup(ebpf, map::INDIR)?)).map_err(Error::ebpf)?,
            buckets: PerCpuArray::try_from(Map::PerCpuArray(dup(ebpf, map::BUCKETS)?))
                .map_err(Error::ebpf)?,
            moves: Array::try_from(Map::Array(dup(ebpf, map::MOVES)?)).map_err(Error::ebpf)?,
            targets: PerCpuArray::try_from(Map::PerCpuArray(dup(ebpf, map::TARGETS)?))
                .map_err(Error::ebpf)?,
            state: Array::try_from(Map::Array(dup(ebpf, map::REBALANCE)?)).map_err(Error::ebpf)?,
        })
    }

    fn table_size(&self) -> Result<u32> {
        Ok(self.config.get(&0, 0).map_err(Error::ebpf)?.table_mask + 1)
    }
}

/// Packets per bucket and per target CPU at one instant.
struct Counts {
    at: Instant,
    buckets: Vec<u64>,
    targets: Vec<u64>,
}

/// A bucket marked moving.
#[derive(Clone, Copy, Debug)]
struct Pending {
    from: u32,
    to: u32,
    age: u32,
    /// Given up: asked to stay on `from`; still marked until it is idle once.
    cancelling: bool,
}

/// The balancer of one run. [`Rebalancer::step`] once per interval.
pub struct Rebalancer {
    pub settings: Settings,
    maps: Maps,
    prev: Option<Counts>,
    pending: BTreeMap<u32, Pending>,
    state: RebalanceState,
    /// The last interval's decision.
    pub last: Plan,
}

impl Rebalancer {
    pub fn new(maps: Maps, settings: Settings) -> Self {
        let state = RebalanceState { unsplittable_bucket: u32::MAX, ..Default::default() };
        Self { settings, maps, prev: None, pending: BTreeMap::new(), state, last: Plan::default() }
    }

    /// What it did so far (also in the REBALANCE map).
    pub fn state(&self) -> RebalanceState {
        self.state
    }

    /// Forgets the rates and moves in flight: after the table was rewritten
    /// (SIGHUP), which clears every moving mark.
    pub fn reset(&mut self) {
        self.prev = None;
        self.pending.clear();
    }

    fn read(&self, size: u32) -> Result<(Counts, Vec<u32>)> {
        let mut buckets = Vec::with_capacity(size as usize);
        let mut indir = Vec::with_capacity(size as usize);
        for b in 0..size {
            let v = self.maps.buckets.get(&b, 0).map_err(Error::ebpf)?;
            buckets.push(v.iter().map(|l| l.packets).sum());
            indir.push(self.maps.indir.get(&b, 0).map_err(Error::ebpf)?);
        }
        let ncpu = self.maps.targets.len();
        let targets = (0..ncpu)
            .map(|c| self.maps.targets.get(&c, 0).map(|v| v.iter().sum()).map_err(Error::ebpf))
            .collect::<Result<Vec<u64>>>()?;
        Ok((Counts { at: Instant::now(), buckets, targets }, indir))
    }

    /// One interval: account for moves the XDP program completed, measure the
    /// load since the last step, plan, and mark the planned buckets moving.
    /// `cpus`: the steering CPUs.
    pub fn step(&mut self, cpus: &[u32]) -> Result<()> {
        let size = self.maps.table_size()?;
        let (cur, indir) = self.read(size)?;
        self.settle(&indir)?;
        let prev = match self.prev.replace(cur) {
            Some(p) if p.buckets.len() == size as usize => p,
            _ => return self.publish(),
        };
        let Some(cur) = self.prev.as_ref() else { return self.publish() };
        let secs = cur.at.duration_since(prev.at).as_secs_f64().max(1e-6);
        let mut table: Vec<Bucket> = Vec::with_capacity(size as usize);
        let mut by_cpu: BTreeMap<u32, f64> = BTreeMap::new();
        for (b, raw) in indir.iter().enumerate() {
            let load = cur.buckets[b].saturating_sub(prev.buckets[b]) as f64 / secs;
            let cpu = raw & !INDIR_MOVING;
            *by_cpu.entry(cpu).or_default() += load;
            let pending = self.pending.get(&(b as u32)).map(|p| if p.cancelling { p.from } else { p.to });
            table.push(Bucket { cpu, load, pending });
        }
        // What each CPU received beyond its buckets: RFS flows (and packets of
        // buckets that switched mid-interval, an error of one interval).
        let fixed: BTreeMap<u32, f64> = cpus
            .iter()
            .map(|c| {
                let i = *c as usize;
                let steered =
                    cur.targets
                        .get(i)
                        .copied()
                        .unwrap_or(0)
                        .saturating_sub(prev.targets.get(i).copied().unwrap_or(0)) as f64
                        / secs;
                (*c, (steered - by_cpu.get(c).copied().unwrap_or(0.0)).max(0.0))
            })
            .collect();
        let plan = plan::plan(cpus, &table, &fixed, &self.settings.params());
        for m in &plan.moves {
            // The target first, then the mark: the program reads MOVES only for a marked bucket.
            self.maps
                .moves
                .set(m.bucket, BucketMove { want: m.to, _pad: 0, last_ns: 0, tail: 0 }, 0)
                .map_err(Error::ebpf)?;
            self.maps.indir.set(m.bucket, m.from | INDIR_MOVING, 0).map_err(Error::ebpf)?;
            self.pending.insert(m.bucket, Pending { from: m.from, to: m.to, age: 0, cancelling: false });
            log::debug!("rebalance: bucket {} ({:.0} pps) CPU {} -> {}", m.bucket, m.load, m.from, m.to);
        }
        if plan.unsplittable.first() != self.last.unsplittable.first() {
            if let Some(b) = plan.unsplittable.first() {
                log::warn!(
                    "rebalance: bucket {b} alone carries {:.0} pps, more than a CPU's fair share: its flows \
                     cannot be spread without reordering them",
                    table[*b as usize].load
                );
            }
        }
        self.state.intervals += 1;
        self.state.planned += plan.moves.len() as u64;
        let milli = |r: Option<f64>| r.map_or(0, |r| (r * 1000.0).round().min(u32::MAX as f64) as u32);
        self.state.imbalance_before_milli = milli(plan.before);
        self.state.imbalance_after_milli = milli(plan.after);
        self.state.unsplittable = plan.unsplittable.len() as u32;
        self.state.unsplittable_bucket = plan.unsplittable.first().copied().unwrap_or(u32::MAX);
        self.last = plan;
        self.publish()
    }

    /// Moves the program completed (mark gone), and moves given up on.
    fn settle(&mut self, indir: &[u32]) -> Result<()> {
        // Marks this balancer did not make (an earlier one's, before a restart of it).
        for (b, raw) in indir.iter().enumerate() {
            let b = b as u32;
            if raw & INDIR_MOVING != 0 && !self.pending.contains_key(&b) {
                let to = self.maps.moves.get(&b, 0).map_err(Error::ebpf)?.want;
                self.pending.insert(b, Pending { from: raw & !INDIR_MOVING, to, age: 0, cancelling: false });
            }
        }
        let mut done = Vec::new();
        for (b, p) in self.pending.iter_mut() {
            match indir.get(*b as usize) {
                Some(raw) if raw & INDIR_MOVING != 0 => {
                    p.age += 1;
                    if !p.cancelling && p.age > GIVE_UP_AFTER {
                        // Never idle: stay. Safe against the program switching meanwhile:
                        // it switches to whichever target it reads, both idle-gated.
                        self.maps
                            .moves
                            .set(*b, BucketMove { want: p.from, _pad: 0, last_ns: 0, tail: 0 }, 0)
                            .map_err(Error::ebpf)?;
                        p.cancelling = true;
                    }
                }
                Some(_) if p.cancelling => {
                    self.state.cancelled += 1;
                    done.push(*b);
                }
                _ => {
                    self.state.moves += 1;
                    done.push(*b);
                }
            }
        }
        for b in done {
            self.pending.remove(&b);
        }
        self.state.pending = self.pending.len() as u32;
        Ok(())
    }

    fn publish(&mut self) -> Result<()> {
        self.state.pending = self.pending.len() as u32;
        self.maps.state.set(0, self.state, 0).map_err(Error::ebpf)
    }
}

/// A balancer on its own thread (the lab: its main thread is busy sending).
pub struct Running {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<Result<RebalanceState>>>,
}

impl Running {
    pub fn spawn(maps: Maps, settings: Settings, cpus: Vec<u32>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut r = Rebalancer::new(maps, settings);
            while !s.load(Ordering::Relaxed) {
                r.step(&cpus)?;
                std::thread::sleep(settings.interval);
            }
            Ok(r.state())
        });
        Self { stop, handle: Some(handle) }
    }

    /// Stops the thread; what the balancer did.
    pub fn stop(mut self) -> Result<RebalanceState> {
        self.stop.store(true, Ordering::Relaxed);
        match self.handle.take().map(|h| h.join()) {
            Some(Ok(r)) => r,
            _ => Err(Error::Ebpf("the rebalance thread panicked".into())),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
