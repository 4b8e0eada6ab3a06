//! The balancer's decision, pure: per-bucket and per-CPU load in, bucket moves
//! out. Greedy by bucket weight, as RSS++ (Barbette et al., CoNEXT 2019) does
//! for a NIC's table: while the most loaded CPU is more than `threshold` times
//! the mean, move from it to the least loaded CPU the bucket whose weight best
//! halves their gap (and never one that would only swap which is the hotter),
//! at most `max_moves` buckets in flight.
//!
//! Idleness is not decided here: a planned move is only asked for, and the XDP
//! program switches the bucket once it has been idle (steer-common's
//! balance.rs). A bucket asked to move stays "pending" on its old CPU until
//! then; pending buckets are counted at their target and are not planned again.

use std::collections::BTreeMap;

/// One bucket of the indirection table as the balancer sees it.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Bucket {
    /// The CPU its packets go to now.
    pub cpu: u32,
    /// Its packets per second over the last interval (RSS-steered only).
    pub load: f64,
    /// Asked to move there and not switched yet (not idle yet).
    pub pending: Option<u32>,
}

impl Bucket {
    /// Where its load will be once pending moves are done.
    fn target(&self) -> u32 {
        self.pending.unwrap_or(self.cpu)
    }
}

/// Knobs: `--rebalance-threshold` and the bound on moves.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Params {
    /// Act only while max/mean of per-CPU load is above this (>= 1.0).
    pub threshold: f64,
    /// Buckets in flight at most (pending ones count), so the table does not thrash.
    pub max_moves: usize,
}

/// A move to ask for.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Move {
    pub bucket: u32,
    pub from: u32,
    pub to: u32,
    pub load: f64,
}

/// What the balancer decided for one interval.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    pub moves: Vec<Move>,
    /// max/mean of per-CPU load as measured (pending moves counted at their
    /// target); `None` without load.
    pub before: Option<f64>,
    /// The same once the planned moves are done (predicted).
    pub after: Option<f64>,
    /// Buckets heavier alone than a CPU's fair share times the threshold,
    /// heaviest first: no table can bring max/mean under the threshold without
    /// splitting them, which would reorder their flows.
    pub unsplittable: Vec<u32>,
}

/// max/mean over `loads`.
fn imbalance(loads: &BTreeMap<u32, f64>) -> Option<f64> {
    let v: Vec<f64> = loads.values().copied().collect();
    crate::stats::imbalance_of(&v)
}

/// Decides the moves of one interval. `cpus`: the steering CPUs; `buckets`:
/// the table, indexed by bucket; `fixed`: per-CPU load no bucket carries (RFS
/// flows pinned to their reader), which the balancer cannot move but must count.
pub fn plan(cpus: &[u32], buckets: &[Bucket], fixed: &BTreeMap<u32, f64>, p: &Params) -> Plan {
    let mut loads: BTreeMap<u32, f64> =
        cpus.iter().map(|c| (*c, fixed.get(c).copied().unwrap_or(0.0).max(0.0))).collect();
    for b in buckets {
        if let Some(l) = loads.get_mut(&b.target()) {
            *l += b.load.max(0.0);
        }
    }
    let mut out = Plan { before: imbalance(&loads), ..Default::default() };
    let Some(before) = out.before else { return out };
    let mean = loads.values().sum::<f64>() / loads.len() as f64;
    let mut heavy: Vec<(u32, f64)> = buckets
        .iter()
        .enumerate()
        .filter(|(_, b)| b.load > p.threshold * mean)
        .map(|(i, b)| (i as u32, b.load))
        .collect();
    heavy.sort_by(|a, b| b.1.total_cmp(&a.1));
    out.unsplittable = heavy.into_iter().map(|(i, _)| i).collect();
    let mut budget = p.max_moves.saturating_sub(buckets.iter().filter(|b| b.pending.is_some()).count());
    let mut moved = vec![false; buckets.len()];
    let mut ratio = before;
    while budget > 0 && ratio > p.threshold {
        let (Some((&src, &ls)), Some((&dst, &ld))) = (
            loads.iter().max_by(|a, b| a.1.total_cmp(b.1).then(b.0.cmp(a.0))),
            loads.iter().min_by(|a, b| a.1.total_cmp(b.1).then(a.0.cmp(b.0))),
        ) else {
            break;
        };
        let gap = ls - ld;
        // The bucket whose weight is nearest half the gap; lighter than the
        // gap, so the source stays the hotter of the two or they swap by less.
        let best = buckets
            .iter()
            .enumerate()
            .filter(|(i, b)| {
                !moved[*i] && b.pending.is_none() && b.cpu == src && b.load > 0.0 && b.load < gap
            })
            .min_by(|(_, a), (_, b)| (a.load - gap / 2.0).abs().total_cmp(&(b.load - gap / 2.0).abs()));
        let Some((i, b)) = best else { break };
        moved[i] = true;
        *loads.entry(src).or_default() -= b.load;
        *loads.entry(dst).or_default() += b.load;
        out.moves.push(Move { bucket: i as u32, from: src, to: dst, load: b.load });
        budget -= 1;
        ratio = imbalance(&loads).unwrap_or(1.0);
    }
    out.after = imbalance(&loads);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: Params = Params { threshold: 1.10, max_moves: 16 };

    fn table(loads: &[f64], cpus: &[u32]) -> Vec<Bucket> {
        loads
            .iter()
            .enumerate()
            .map(|(i, l)| Bucket { cpu: cpus[i % cpus.len()], load: *l, pending: None })
            .collect()
    }

    /// Applies a plan as the XDP program would once each bucket is idle.
    fn apply(t: &mut [Bucket], plan: &Plan) {
        for m in &plan.moves {
            let b = &mut t[m.bucket as usize];
            assert_eq!(b.cpu, m.from);
            b.cpu = m.to;
        }
    }

    fn per_cpu(t: &[Bucket], cpus: &[u32]) -> Vec<f64> {
        cpus.iter().map(|c| t.iter().filter(|b| b.cpu == *c).map(|b| b.load).sum()).collect()
    }

    fn ratio(t: &[Bucket], cpus: &[u32]) -> f64 {
        crate::stats::imbalance_of(&per_cpu(t, cpus)).unwrap()
    }

    /// The lab's heavy+light mix on 2 CPUs: one flow with half the packets and
    /// 64 light ones, hashed into 256 buckets.
    fn heavy_light() -> Vec<Bucket> {
        let mut loads = vec![0.0; 256];
        loads[17] = 500_000.0;
        for f in 0..64u32 {
            loads[(f.wrapping_mul(2_654_435_761) >> 24) as usize] += 500_000.0 / 64.0;
        }
        let mut t = table(&loads, &[0, 1]);
        // Most of the light flows on the heavy flow's CPU: static hashing at its worst.
        for (i, b) in t.iter_mut().enumerate() {
            if i % 4 != 0 {
                b.cpu = 1;
            }
        }
        t
    }

    #[test]
    fn heavy_light_converges_to_the_heavy_flow_alone() {
        let cpus = [0, 1];
        let mut t = heavy_light();
        let start = ratio(&t, &cpus);
        assert!(start > 1.3, "{start}");
        let mut rounds = 0;
        loop {
            let p = plan(&cpus, &t, &BTreeMap::new(), &P);
            assert!(p.moves.len() <= P.max_moves);
            if p.moves.is_empty() {
                break;
            }
            assert!(p.after.unwrap() < p.before.unwrap(), "{p:?}");
            apply(&mut t, &p);
            rounds += 1;
            assert!(rounds < 20, "does not converge");
        }
        let end = ratio(&t, &cpus);
        assert!(end <= P.threshold, "{start} -> {end} after {rounds} rounds");
        assert!(p_unsplittable_is_empty(&t, &cpus));
    }

    fn p_unsplittable_is_empty(t: &[Bucket], cpus: &[u32]) -> bool {
        plan(cpus, t, &BTreeMap::new(), &P).unsplittable.is_empty()
    }

    #[test]
    fn zipf_over_1024_flows_converges_on_2_and_4_cpus() {
        let h: f64 = (1..=1024).map(|k| 1.0 / k as f64).sum();
        let mut loads = vec![0.0; 256];
        for k in 1..=1024u32 {
            loads[((k.wrapping_mul(2_654_435_761)) >> 24) as usize] += 1e6 / k as f64 / h;
        }
        for cpus in [vec![0, 1], vec![0, 1, 2, 3]] {
            let mut t = table(&loads, &cpus);
            let mut n = 0;
            loop {
                let p = plan(&cpus, &t, &BTreeMap::new(), &P);
                if p.moves.is_empty() {
                    break;
                }
                apply(&mut t, &p);
                n += 1;
                assert!(n < 50);
            }
            let r = ratio(&t, &cpus);
            assert!(r <= P.threshold, "{cpus:?}: {r}");
        }
    }

    #[test]
    fn the_move_bound_counts_moves_in_flight() {
        let cpus = [0, 1];
        let mut t = heavy_light();
        let first = plan(&cpus, &t, &BTreeMap::new(), &Params { max_moves: 3, ..P });
        assert_eq!(first.moves.len(), 3);
        // Not idle yet: still on their old CPU, pending.
        for m in &first.moves {
            t[m.bucket as usize].pending = Some(m.to);
        }
        let second = plan(&cpus, &t, &BTreeMap::new(), &Params { max_moves: 3, ..P });
        assert!(second.moves.is_empty(), "3 in flight already: {second:?}");
        let third = plan(&cpus, &t, &BTreeMap::new(), &Params { max_moves: 5, ..P });
        assert_eq!(third.moves.len(), 2);
        assert!(
            third.moves.iter().all(|m| t[m.bucket as usize].pending.is_none()),
            "a pending bucket is never planned again"
        );
    }

    #[test]
    fn a_bucket_that_is_not_idle_is_counted_at_its_target_and_left_alone() {
        // Bucket 0 is pending to CPU 1: the balancer counts it there (so it does
        // not plan a second move for the same load) and never touches it.
        let cpus = [0, 1];
        let t = vec![
            Bucket { cpu: 0, load: 100.0, pending: Some(1) },
            Bucket { cpu: 0, load: 100.0, pending: None },
        ];
        let p = plan(&cpus, &t, &BTreeMap::new(), &P);
        assert_eq!(p.before, Some(1.0));
        assert!(p.moves.is_empty(), "{p:?}");
    }

    #[test]
    fn rfs_pinned_load_is_counted_but_never_moved() {
        // CPU 0 carries 900 pps of RFS flows (pinned to their reader): the
        // balancer moves buckets off CPU 0, and no move names a pinned flow
        // (they are not buckets); RFS load alone above the threshold is left.
        let cpus = [0, 1];
        let t = vec![
            Bucket { cpu: 0, load: 100.0, pending: None },
            Bucket { cpu: 1, load: 100.0, pending: None },
            Bucket { cpu: 0, load: 50.0, pending: None },
        ];
        let fixed = BTreeMap::from([(0, 900.0)]);
        let p = plan(&cpus, &t, &fixed, &P);
        assert!(!p.moves.is_empty());
        assert!(p.moves.iter().all(|m| m.from == 0 && m.to == 1), "{p:?}");
        assert!(p.after.unwrap() < p.before.unwrap());
        let only_rfs = plan(&cpus, &[], &fixed, &P);
        assert!(only_rfs.moves.is_empty() && only_rfs.before == Some(2.0));
    }

    #[test]
    fn a_bucket_heavier_than_a_fair_share_is_reported_and_not_split() {
        // One bucket with 80 % of the load on 2 CPUs: max/mean >= 1.6 whatever the table.
        let cpus = [0, 1];
        let mut t = table(&[800.0, 50.0, 50.0, 50.0, 50.0], &cpus);
        let mut last = Plan::default();
        for _ in 0..5 {
            last = plan(&cpus, &t, &BTreeMap::new(), &P);
            apply(&mut t, &last);
        }
        assert_eq!(last.unsplittable, vec![0]);
        assert!(last.moves.is_empty());
        // Everything else left its CPU: the best table there is.
        assert_eq!(per_cpu(&t, &cpus).iter().filter(|l| **l == 800.0).count(), 1, "{t:?}");
    }

    #[test]
    fn balanced_or_idle_tables_are_left_as_they_are() {
        let cpus = [0, 1];
        let t = table(&[100.0, 105.0, 100.0, 95.0], &cpus);
        let p = plan(&cpus, &t, &BTreeMap::new(), &P);
        assert!(p.moves.is_empty() && p.unsplittable.is_empty(), "{p:?}");
        let idle = plan(&cpus, &table(&[0.0; 8], &cpus), &BTreeMap::new(), &P);
        assert_eq!(idle, Plan::default());
    }

    #[test]
    fn never_swaps_which_cpu_is_hot() {
        // Two buckets: 100 on CPU 0, 0 on CPU 1. Moving the only bucket would
        // only move the problem: nothing to do.
        let cpus = [0, 1];
        let t = vec![Bucket { cpu: 0, load: 100.0, pending: None }];
        let p = plan(&cpus, &t, &BTreeMap::new(), &P);
        assert!(p.moves.is_empty(), "{p:?}");
        assert_eq!(p.unsplittable, vec![0]);
    }
}
