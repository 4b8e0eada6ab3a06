//! The lab generator: runs under BPF_PROG_TEST_RUN with live frames, rewrites
//! the source port of the template frame and sends it out with XDP_TX.

use aya_ebpf::{bindings::xdp_action, programs::XdpContext};

use crate::maps::{GEN_CONFIG, GEN_SEQ};

pub fn generate(ctx: &XdpContext) -> u32 {
    let Some(cfg) = GEN_CONFIG.get(0) else {
        return xdp_action::XDP_ABORTED;
    };
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
    let flows = if cfg.flows == 0 { 1 } else { cfg.flows as u64 };
    let port = (cfg.base_port as u64 + n % flows) as u16;
    // SAFETY: bounds checked just above.
    unsafe { ((start + off) as *mut [u8; 2]).write_unaligned(port.to_be_bytes()) };
    xdp_action::XDP_TX
}
