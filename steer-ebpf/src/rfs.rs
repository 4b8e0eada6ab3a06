//! RFS on the XDP side, the kernel's design (`rps_sock_flow_table` +
//! `rps_dev_flow`): the packet's flow hash, the one RSS computes, picks a
//! steering slot; the hook wrote the reader's CPU into `RFS_WANT` there, and
//! the slot's state in `RFS_SLOTS` says where its packets go now. A steady hit
//! costs two array lookups: no flow key, no hash table, no clock.
//!
//! When the wish and the slot's CPU differ, the slot moves like a bucket the
//! rebalancer moves (steer.rs `moving`): its packets stay on the old CPU, each
//! one stamping the time and the old queue's tail, until one follows a gap
//! longer than `--migrate-idle-us` and finds that queue drained past the
//! slot's last packet there. Only then are the clock and the queue counters read.
//!
//! A slot whose `cur` is 0 sends each packet where RSS does: a new flow stays
//! on its RSS CPU until it pauses, so that packets already queued there are not
//! overtaken by ones sent to the reader's CPU. An emptied wish (close, expiry,
//! eviction) moves the slot back to RSS through the same gate.
//!
//! Passing in place on the reader's CPU skips every queue, so a slot whose
//! packets have been in another CPU's queue (`queued`) is passed in place
//! (also on its RSS CPU) only while nothing at all is queued for this CPU
//! (`cpumap_trace::nothing_queued`); otherwise its packets go through this
//! CPU's own queue, behind which nothing can overtake them even when the old
//! CPU's kthread lags past the idle gate (as it does when user tasks starve
//! it). A slot that only ever sent to this CPU is passed in place where each
//! flow arrives on one CPU (`LOCAL_PASS_ON`).
//!
//! Flows that collide in a slot share its decision, as in the kernel: every
//! change of the slot's CPU is gated, so none of them is reordered by it.

use aya_ebpf::helpers::{bpf_get_smp_processor_id, bpf_ktime_get_ns};
use steer_common::{
    balance,
    tuple::{IPPROTO_TCP, IPPROTO_UDP},
    Counters, FlowSlot, RfsCounters, SteerConfig, Tuple,
};

use crate::{
    cpumap_trace,
    maps::{CPUS, RFS_SLOTS, RFS_STATS, RFS_WANT},
};

#[inline(always)]
fn rfs_counters() -> Option<&'static mut RfsCounters> {
    // SAFETY: a per-CPU slot, only touched by this CPU while the program runs.
    RFS_STATS.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}

/// "No CPU" from [`moving`].
const NO_CPU: u32 = u32::MAX;

/// What the RSS path needs to know when RFS does not steer the packet.
#[derive(Default)]
pub struct Fallback {
    /// The flow's RSS CPU when RFS had to compute it, so the caller does not hash twice.
    pub rss: Option<u32>,
    /// The slot's packets have been in another CPU's queue: never pass in place.
    pub queued: bool,
}

/// Redirects the packet by its RFS slot and returns the verdict, or `None`
/// when RSS must choose (empty slot, slot still on RSS, CPU without a queue).
/// `h`: the flow hash; `len`: the frame's bytes, for the bucket load of a
/// packet left to RSS.
#[inline(always)]
pub fn steer(
    tuple: &Tuple,
    h: u32,
    cfg: &SteerConfig,
    c: &mut Counters,
    out: &mut Fallback,
    len: u64,
) -> Option<u32> {
    let r = rfs_counters()?;
    // Only the flows the hook can record: fragments hash without ports, so their slot is no flow's.
    if (tuple.proto != IPPROTO_TCP && tuple.proto != IPPROTO_UDP) || tuple.has_ports == 0 {
        r.misses += 1;
        return None;
    }
    let slot = h & cfg.rfs_mask;
    let (Some(want), Some(s)) = (RFS_WANT.get(slot), RFS_SLOTS.get_ptr_mut(slot)) else {
        r.misses += 1;
        return None;
    };
    // Low word: the reader's CPU + 1 (0: none). One aligned load of what the hook stored whole.
    let want = *want as u32;
    // SAFETY: a map value only XDP programs write; each field is an aligned word.
    let s = unsafe { &mut *s };
    if want != s.cur {
        let rss = moving(cfg, s, want, h, len);
        if rss != NO_CPU {
            out.rss = Some(rss);
        }
    } else if s.last_ns != 0 {
        // A move given up on (the reader came back): the next one starts its own gate.
        s.last_ns = 0;
    }
    let Some(cpu) = s.cur.checked_sub(1) else {
        if want == 0 {
            r.misses += 1;
        }
        if s.queued == 0 && want != 0 {
            let rss = match out.rss {
                Some(cpu) => Some(cpu),
                None => crate::steer::rss_cpu(cfg, h, len),
            };
            out.rss = rss;
            // SAFETY: no preconditions.
            if rss.is_some_and(|cpu| cpu != unsafe { bpf_get_smp_processor_id() }) {
                s.queued = 1;
            }
        }
        out.queued = s.queued != 0;
        return None;
    };
    match CPUS.redirect(cpu, 0) {
        Ok(verdict) => {
            r.hits += 1;
            s.pkts += 1;
            // SAFETY: no preconditions.
            if s.queued == 0 && cpu != unsafe { bpf_get_smp_processor_id() } {
                s.queued = 1;
            }
            Some(crate::steer::steered(c, cfg, cpu, verdict, s.queued == 0))
        }
        Err(_) => {
            r.not_steerable += 1;
            out.queued = s.queued != 0;
            None
        }
    }
}

/// A slot whose wish (`want`, CPU + 1 or 0 for RSS) is not where its packets
/// go: switch `cur` on a packet that follows a gap longer than
/// `--migrate-idle-us` once the old CPU's queue has given out the slot's last
/// packet there; otherwise stamp this packet's time and tail and stay.
/// Returns the flow's RSS CPU when it had to compute it, else [`NO_CPU`].
/// (Out of line: only moving slots run it. The BPF calling convention allows
/// five register arguments and no struct return, hence the sentinel.)
#[inline(never)]
fn moving(cfg: &SteerConfig, s: &mut FlowSlot, want: u32, h: u32, len: u64) -> u32 {
    let Some(r) = rfs_counters() else { return NO_CPU };
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let (put, taken) = cpumap_trace::ring(s.tail_cpu);
    if balance::may_switch(s.last_ns, now, cfg.migrate_idle_us as u64 * 1000)
        && balance::drained(s.tail, put, taken)
    {
        s.cur = want;
        s.moves = s.moves.wrapping_add(1);
        s.last_ns = 0;
        s.tail = 0;
        r.moves += 1;
        return NO_CPU;
    }
    if s.last_ns == 0 {
        // The first packet since the move became pending: nothing of this move is queued yet.
        s.tail = 0;
    }
    s.last_ns = now;
    r.deferred += 1;
    // The CPU this packet goes to: the slot's, or its RSS CPU (computed once, for the caller too).
    let (old, rss) = match s.cur.checked_sub(1) {
        Some(cpu) => (cpu, NO_CPU),
        None => match crate::steer::rss_cpu(cfg, h, len) {
            Some(cpu) => (cpu, cpu),
            None => return NO_CPU,
        },
    };
    // Queued on a CPU other than the target (or passed in place there, which this errs on):
    // the switch waits until that queue moved past it. One sent to the target's own queue (a
    // slot on RSS whose flows hash to several CPUs) stays ahead of what follows it there, and
    // must not replace the tail of another queue.
    if old != want.wrapping_sub(1) {
        s.tail = cpumap_trace::ring(old).0 + balance::TAIL_SLACK;
        s.tail_cpu = old;
    }
    rss
}
