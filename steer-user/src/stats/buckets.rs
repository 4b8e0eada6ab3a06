//! The indirection table's buckets as `steer stats` shows them: the hottest
//! buckets (bucket, CPU, packets per second, share of the hash-steered
//! packets) and what `--rebalance` did (moves, imbalance before and after its
//! last decision, unsplittable buckets), read from the run's pins.

use aya::maps::{Array, MapData, PerCpuArray};
use steer_common::{BucketLoad, RebalanceState, INDIR_MOVING};

use crate::error::{Error, Result};

/// How many of the hottest buckets a report lists.
pub const HOTTEST: usize = 5;

/// The maps of a run that this reads.
pub struct BucketMaps {
    buckets: PerCpuArray<MapData, BucketLoad>,
    indir: Array<MapData, u32>,
    state: Array<MapData, RebalanceState>,
}

impl BucketMaps {
    pub fn open(id: &crate::pins::RunId) -> Result<Self> {
        use aya::maps::Map;
        Ok(Self {
            buckets: PerCpuArray::try_from(Map::PerCpuArray(id.open_map(crate::pins::BUCKETS)?))
                .map_err(Error::ebpf)?,
            indir: Array::try_from(Map::Array(id.open_map(crate::pins::INDIR)?)).map_err(Error::ebpf)?,
            state: Array::try_from(Map::Array(id.open_map(crate::pins::REBALANCE)?)).map_err(Error::ebpf)?,
        })
    }

    /// Every bucket's packet count and CPU now, and the balancer's state.
    pub fn read(&self) -> Result<BucketSample> {
        let n = self.buckets.len().min(self.indir.len());
        let mut packets = Vec::with_capacity(n as usize);
        let mut cpu = Vec::with_capacity(n as usize);
        for b in 0..n {
            packets.push(self.buckets.get(&b, 0).map_err(Error::ebpf)?.iter().map(|l| l.packets).sum());
            cpu.push(self.indir.get(&b, 0).map_err(Error::ebpf)?);
        }
        let state = self.state.get(&0, 0).map_err(Error::ebpf)?;
        Ok(BucketSample { packets, indir: cpu, state })
    }
}

/// Buckets at one instant.
#[derive(Clone, Debug, Default)]
pub struct BucketSample {
    /// Packets steered by the hash through each bucket since attach.
    pub packets: Vec<u64>,
    /// INDIR entries (CPU, with [`INDIR_MOVING`] while moving).
    pub indir: Vec<u32>,
    pub state: RebalanceState,
}

/// One of the hottest buckets over an interval.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct HotBucket {
    pub bucket: u32,
    pub cpu: u32,
    /// Whether the balancer asked it to move and it has not been idle yet.
    pub moving: bool,
    pub pps: f64,
    /// Its share of the packets the hash steered, 0..1.
    pub share: f64,
}

/// The buckets' part of a `steer stats` interval (JSON `buckets`).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct BucketReport {
    /// The hottest buckets over the interval, hottest first.
    pub hottest: Vec<HotBucket>,
    /// Whether `--rebalance` is running (its balancer has run at least once).
    pub rebalancing: bool,
    /// Bucket moves completed since start (a counter).
    pub moves_total: u64,
    pub moves_per_s: f64,
    /// Moves asked for, and given up on because the bucket never went idle.
    pub planned_total: u64,
    pub cancelled_total: u64,
    /// Buckets asked to move and not yet idle.
    pub pending: u32,
    /// max/mean of per-CPU load the balancer measured at its last decision,
    /// and what its moves were to make of it; null without load.
    pub imbalance_before: Option<f64>,
    pub imbalance_after: Option<f64>,
    /// Buckets heavier alone than a CPU's fair share times the threshold:
    /// their flows cannot be spread without reordering them.
    pub unsplittable: u32,
    pub unsplittable_bucket: Option<u32>,
}

impl BucketReport {
    pub fn new(before: &BucketSample, now: &BucketSample, secs: f64) -> Self {
        let d: Vec<u64> = now
            .packets
            .iter()
            .enumerate()
            .map(|(i, p)| p.saturating_sub(before.packets.get(i).copied().unwrap_or(0)))
            .collect();
        let total = d.iter().sum::<u64>().max(1) as f64;
        let mut order: Vec<usize> = (0..d.len()).filter(|i| d[*i] > 0).collect();
        order.sort_by(|a, b| d[*b].cmp(&d[*a]).then(a.cmp(b)));
        let hottest = order
            .into_iter()
            .take(HOTTEST)
            .map(|i| HotBucket {
                bucket: i as u32,
                cpu: now.indir.get(i).copied().unwrap_or(0) & !INDIR_MOVING,
                moving: now.indir.get(i).is_some_and(|v| v & INDIR_MOVING != 0),
                pps: d[i] as f64 / secs,
                share: d[i] as f64 / total,
            })
            .collect();
        let s = &now.state;
        let ratio = |m: u32| (m > 0).then(|| m as f64 / 1000.0);
        Self {
            hottest,
            rebalancing: s.intervals > 0,
            moves_total: s.moves,
            moves_per_s: s.moves.saturating_sub(before.state.moves) as f64 / secs,
            planned_total: s.planned,
            cancelled_total: s.cancelled,
            pending: s.pending,
            imbalance_before: ratio(s.imbalance_before_milli),
            imbalance_after: ratio(s.imbalance_after_milli),
            unsplittable: s.unsplittable,
            unsplittable_bucket: (s.unsplittable > 0).then_some(s.unsplittable_bucket),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hottest_buckets_with_their_cpu_rate_and_share() {
        let before =
            BucketSample { packets: vec![0, 10, 0, 5], indir: vec![0, 1, 0, 1], ..Default::default() };
        let mut now = BucketSample {
            packets: vec![300, 110, 0, 5],
            indir: vec![0, 1 | INDIR_MOVING, 0, 1],
            state: RebalanceState {
                intervals: 3,
                moves: 4,
                imbalance_before_milli: 1500,
                imbalance_after_milli: 1020,
                unsplittable_bucket: u32::MAX,
                ..Default::default()
            },
        };
        let r = BucketReport::new(&before, &now, 2.0);
        assert_eq!(
            r.hottest,
            vec![
                HotBucket { bucket: 0, cpu: 0, moving: false, pps: 150.0, share: 0.75 },
                HotBucket { bucket: 1, cpu: 1, moving: true, pps: 50.0, share: 0.25 },
            ]
        );
        assert!(r.rebalancing && r.moves_per_s == 2.0);
        assert_eq!(
            (r.imbalance_before, r.imbalance_after, r.unsplittable_bucket),
            (Some(1.5), Some(1.02), None)
        );
        // Never written (no --rebalance): a zeroed state names no bucket.
        now.state = RebalanceState::default();
        let r = BucketReport::new(&before, &now, 2.0);
        assert!(!r.rebalancing && r.imbalance_before.is_none() && r.unsplittable_bucket.is_none());
        now.state =
            RebalanceState { intervals: 1, unsplittable: 1, unsplittable_bucket: 0, ..Default::default() };
        assert_eq!(BucketReport::new(&before, &now, 2.0).unsplittable_bucket, Some(0));
    }
}
