//! The lab generator: runs under BPF_PROG_TEST_RUN with live frames, rewrites
//! the source port of the template frame and sends it out with XDP_TX.
//!
//! With `gap_ns` set it paces itself: every run checks the clock and sends
//! only when the next frame is due, dropping the frame unsent otherwise (a
//! dropped live frame just goes back to the page pool). Frames then leave
//! evenly spaced at the target rate, like a NIC's receive ring fed by a
//! steady link, instead of in bursts of one test-run call each.

use aya_ebpf::{bindings::xdp_action, helpers::bpf_ktime_get_ns, programs::XdpContext};

use crate::maps::{GEN_CONFIG, GEN_NEXT, GEN_SCHED, GEN_SEQ};

/// Late by more than this, the schedule restarts from now instead of catching
/// up with a burst (e.g. after the setup of the next test-run call).
const MAX_LATE_NS: u64 = 100_000;

pub fn generate(ctx: &XdpContext) -> u32 {
    let Some(cfg) = GEN_CONFIG.get(0) else {
        return xdp_action::XDP_ABORTED;
    };
    if cfg.gap_ns != 0 {
        let Some(next) = GEN_NEXT.get_ptr_mut(0) else {
            return xdp_action::XDP_ABORTED;
        };
        // SAFETY: no preconditions.
        let now = unsafe { bpf_ktime_get_ns() };
        // SAFETY: per-CPU slot of this CPU.
        let due = unsafe { *next };
        if now < due {
            return xdp_action::XDP_DROP;
        }
        let base = if now - due > MAX_LATE_NS { now } else { due };
        // SAFETY: as above.
        unsafe { *next = base + cfg.gap_ns as u64 };
    }
    let Some(seq) = GEN_SEQ.get_ptr_mut(0) else {
        return xdp_action::XDP_ABORTED;
    };
    // SAFETY: per-CPU slot of this CPU.
    let n = unsafe {
        *seq += 1;
        *seq
    };
    // Masked so the verifier sees a bounded offset into the packet.
    let off = (cfg.sport_offset & 0xff) as usize;
    let start = ctx.data();
    if start + off + 2 > ctx.data_end() {
        return xdp_action::XDP_ABORTED;
    }
    let flow = if cfg.sched_len != 0 {
        // A skewed mix: the schedule repeats every sched_len frames.
        GEN_SCHED.get((n % cfg.sched_len as u64) as u32).copied().unwrap_or(0) as u64
    } else {
        n % if cfg.flows == 0 { 1 } else { cfg.flows as u64 }
    };
    let port = (cfg.base_port as u64 + flow) as u16;
    // SAFETY: bounds checked just above.
    unsafe { ((start + off) as *mut [u8; 2]).write_unaligned(port.to_be_bytes()) };
    xdp_action::XDP_TX
}
