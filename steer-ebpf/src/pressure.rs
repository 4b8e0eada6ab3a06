//! Where a CPU hands packets for `--spread busy`, decided at the end of each
//! NAPI poll on it (raw tracepoint `napi:napi_poll`, on the polling CPU) for
//! its next poll, so that the choice never changes inside a poll: a packet
//! passed in place may still wait in the poll's GRO lists when the poll
//! flushes its redirects. (A poll that ends not full flushes them; a full one
//! flushes all only where HZ < 1000, and a device with `gro_flush_timeout`
//! holds them longer: there a flow can be reordered at a switch to spreading.)
//!
//! - A CPU that is not a steering CPU (`SteerConfig::steering`) hands every
//!   packet to its flow's CPU, and so does a busy one: a poll on it used its
//!   whole budget within the last `BUSY_HOLD_JIFFIES` (more was waiting than
//!   one poll takes, the kernel's own sign to poll again).
//! - A CPU that idled within the last `IDLE_RECENT_JIFFIES` has headroom: it
//!   keeps what it receives, as without steering.
//! - A CPU that has not idled hands packets only to CPUs that have (raw
//!   tracepoint `power:cpu_idle`): where every CPU is saturated, a hand-off
//!   adds a kthread wake-up and a context switch and no capacity.

use aya_ebpf::{
    helpers::{bpf_get_smp_processor_id, bpf_jiffies64},
    macros::map,
    maps::{Array, PerCpuArray},
    programs::RawTracePointContext,
};
use steer_common::{BUSY_HOLD_JIFFIES, IDLE_RECENT_JIFFIES, SPREAD_BUSY};

use crate::maps::{load_shared, CONFIG, MAX_CPUS};

// One bit of SPREAD_TO per CPU the CPUMAP can hold.
const _: () = assert!(MAX_CPUS <= u64::BITS);

#[inline(always)]
fn spread_busy() -> bool {
    CONFIG.get(0).is_some_and(|c| c.spread == SPREAD_BUSY)
}

/// Per CPU: the jiffy up to which it is busy (only this CPU's polls write it).
#[map]
pub static BUSY_UNTIL: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Per CPU: bit `t` set while this CPU hands packets for CPU `t` to `t`
/// (written at the end of each of its polls; the loader's initial value,
/// after each change of configuration too: none for a steering CPU, all for
/// the others).
#[map]
pub static SPREAD_TO: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// CPU -> the jiffy it last left idle, or [`IDLING`] while it idles. Shared:
/// every CPU reads the others'. Size set by the loader (possible CPUs).
#[map]
pub static LAST_IDLE: Array<u64> = Array::with_max_entries(MAX_CPUS, 0);

const IDLING: u64 = u64::MAX;

/// `cpu_idle(unsigned int state, unsigned int cpu_id)`: state `u32::MAX` is the exit.
pub fn on_idle(ctx: &RawTracePointContext) -> i32 {
    if !spread_busy() {
        return 0;
    }
    let (state, cpu) = (ctx.arg::<u64>(0) as u32, ctx.arg::<u64>(1) as u32);
    if let Some(p) = LAST_IDLE.get_ptr_mut(cpu) {
        // SAFETY: no preconditions (an inlined read of jiffies).
        let v = if state == u32::MAX { unsafe { bpf_jiffies64() } } else { IDLING };
        // SAFETY: an aligned u64 of an array map, written whole.
        unsafe { core::ptr::write_volatile(p, v) };
    }
    0
}

/// `LAST_IDLE[cpu]`, or None beyond the possible CPUs.
#[inline(always)]
fn last_idle(cpu: u32) -> Option<u64> {
    load_shared(&LAST_IDLE, cpu)
}

/// `napi_poll(struct napi_struct *napi, int work, int budget)`.
pub fn on_poll(ctx: &RawTracePointContext) -> i32 {
    let (work, budget) = (ctx.arg::<u64>(1) as i32, ctx.arg::<u64>(2) as i32);
    let Some(cfg) = CONFIG.get(0) else { return 0 };
    // Budget 0: netpoll, which may poll in the middle of another poll on this CPU.
    if budget <= 0 || cfg.spread != SPREAD_BUSY {
        return 0;
    }
    let (Some(busy), Some(to)) = (BUSY_UNTIL.get_ptr_mut(0), SPREAD_TO.get_ptr_mut(0)) else { return 0 };
    // SAFETY: no preconditions.
    let here = unsafe { bpf_get_smp_processor_id() };
    // Read from the configuration at every poll, never kept in a map this program also writes:
    // the loader's change of `--cpus` cannot be lost to a poll that ends at the same moment.
    let steering = here < u64::BITS && cfg.steering >> here & 1 != 0;
    // SAFETY: no preconditions (an inlined read of jiffies).
    let now = unsafe { bpf_jiffies64() };
    // SAFETY: per-CPU slots of this CPU.
    unsafe {
        let until = now + BUSY_HOLD_JIFFIES;
        if work >= budget && *busy < until {
            *busy = until;
        }
        *to = if steering { spread_to(here, now, *busy) } else { u64::MAX };
    }
    0
}

/// Where steering CPU `here` hands packets during its next poll.
#[inline(always)]
fn spread_to(here: u32, now: u64, busy_until: u64) -> u64 {
    if now <= busy_until {
        return u64::MAX;
    }
    let since = now.saturating_sub(IDLE_RECENT_JIFFIES);
    if last_idle(here).is_some_and(|at| at >= since) {
        return 0;
    }
    let mut mask = 0u64;
    for cpu in 0..MAX_CPUS {
        let Some(at) = last_idle(cpu) else { break };
        if at >= since {
            mask |= 1 << cpu;
        }
    }
    mask
}

/// This CPU hands packets for `cpu` to it during this poll.
#[inline(always)]
pub fn spreads_to(cpu: u32) -> bool {
    // A CPU beyond the mask (the CPUMAP holds none) only while spreading to all.
    SPREAD_TO.get(0).is_none_or(|&m| if cpu < u64::BITS { m >> cpu & 1 != 0 } else { m == u64::MAX })
}
