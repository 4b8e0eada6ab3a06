//! RFS on the XDP side: look the packet's flow up in the table the socket hook
//! fills, move it to its reader's CPU only once it has been idle, redirect (or
//! pass in place when the reader's CPU is this one, see `steer::steered`).
//!
//! An entry whose `cpu` is [`ON_RSS`] was just created by the hook: its packets
//! still go where RSS sends them until the flow pauses, so that packets already
//! queued on the RSS CPU are not overtaken by ones sent to the reader's CPU.
//!
//! Passing in place on the reader's CPU skips every queue, so a flow that has
//! been in another CPU's queue is never passed in place afterwards: its packets
//! go through this CPU's own queue, behind which nothing can overtake them even
//! when the old CPU's kthread lags past the idle gate (as it does when user
//! tasks starve it). A flow that only ever ran on this CPU is passed in place.

use aya_ebpf::helpers::{bpf_get_smp_processor_id, bpf_ktime_get_ns};
use steer_common::{Counters, FlowKey, RfsCounters, SteerConfig, Tuple};

use crate::maps::{CPUS, FLOWS, RFS_STATS};

/// `FlowEntry::cpu` of a flow that is still steered by RSS.
pub const ON_RSS: u32 = u32::MAX;

#[inline(always)]
fn rfs_counters() -> Option<&'static mut RfsCounters> {
    // SAFETY: a per-CPU slot, only touched by this CPU while the program runs.
    RFS_STATS.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}

/// Redirects the packet by the flow table and returns the verdict, or `None`
/// when RSS must choose (miss, flow not idle yet, CPU without a queue).
#[inline(always)]
/// `rss`: the flow's RSS CPU when this had to compute it, so the caller does not hash twice.
/// `len`: the frame's bytes, for the bucket load of a flow left to RSS.
pub fn steer(
    tuple: &Tuple,
    cfg: &SteerConfig,
    c: &mut Counters,
    rss: &mut Option<u32>,
    len: u64,
) -> Option<u32> {
    // SAFETY: no preconditions.
    let here = unsafe { bpf_get_smp_processor_id() };
    let r = rfs_counters()?;
    let Some(key) = FlowKey::from_tuple(tuple) else {
        r.misses += 1;
        return None;
    };
    let Some(e) = FLOWS.get_ptr_mut(&key) else {
        r.misses += 1;
        return None;
    };
    // SAFETY: a map value; the hook writes other fields of it concurrently,
    // each a naturally aligned word, so every read sees a whole value.
    let e = unsafe { &mut *e };
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let want = e.want_cpu;
    if want != e.cpu {
        let idle = now.saturating_sub(e.last_pkt_ns);
        if e.last_pkt_ns == 0 || idle > cfg.migrate_idle_us as u64 * 1000 {
            e.cpu = want;
            e.moves = e.moves.wrapping_add(1);
            r.moves += 1;
        } else {
            r.deferred += 1;
        }
    }
    e.last_pkt_ns = now;
    let cpu = e.cpu;
    if cpu == ON_RSS {
        if e.queued == 0 {
            *rss = crate::steer::rss_cpu(cfg, tuple, len);
            if rss.is_some_and(|cpu| cpu != here) {
                e.queued = 1;
            }
        }
        return None;
    }
    match CPUS.redirect(cpu, 0) {
        Ok(verdict) => {
            r.hits += 1;
            e.pkts += 1;
            if cpu != here && e.queued == 0 {
                e.queued = 1;
            }
            Some(crate::steer::steered(c, cpu, verdict, e.queued == 0 && cfg.local_pass != 0))
        }
        Err(_) => {
            r.not_steerable += 1;
            None
        }
    }
}
