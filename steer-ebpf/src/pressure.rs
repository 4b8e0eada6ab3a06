//! Whether this CPU is busy, for `--spread busy`: a NAPI poll on it used its
//! whole budget (raw tracepoint `napi:napi_poll`: work == budget means more
//! was waiting than one poll takes, the kernel's own sign to poll again)
//! within the last `BUSY_HOLD_JIFFIES`. The tracepoint fires on the polling
//! CPU after the poll, so a CPU turns busy only between two polls.

use aya_ebpf::{helpers::bpf_jiffies64, macros::map, maps::PerCpuArray, programs::RawTracePointContext};
use steer_common::BUSY_HOLD_JIFFIES;

/// Per CPU: the jiffy up to which it is busy. `u64::MAX` (set by the loader)
/// for a CPU that is not a steering CPU: it never keeps a packet.
#[map]
pub static BUSY_UNTIL: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// `napi_poll(struct napi_struct *napi, int work, int budget)`.
pub fn on_poll(ctx: &RawTracePointContext) -> i32 {
    let (work, budget) = (ctx.arg::<u64>(1) as i32, ctx.arg::<u64>(2) as i32);
    if budget <= 0 || work < budget {
        return 0;
    }
    let Some(p) = BUSY_UNTIL.get_ptr_mut(0) else { return 0 };
    // SAFETY: no preconditions (an inlined read of jiffies).
    let until = unsafe { bpf_jiffies64() } + BUSY_HOLD_JIFFIES;
    // SAFETY: a per-CPU slot of this CPU. Never lowers u64::MAX.
    unsafe {
        if *p < until {
            *p = until;
        }
    }
    0
}

/// This CPU is busy (or not a steering CPU).
#[inline(always)]
pub fn busy() -> bool {
    // SAFETY: no preconditions (an inlined read of jiffies).
    BUSY_UNTIL.get(0).is_none_or(|until| unsafe { bpf_jiffies64() } <= *until)
}
