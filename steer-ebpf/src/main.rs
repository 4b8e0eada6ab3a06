//! steer's kernel side.
//!
//! - `steer_xdp`: parses each frame, picks a CPU from its flow hash and redirects
//!   it into the CPUMAP (software RPS). Never drops: anything it cannot or
//!   should not steer is passed and counted. `steer_inner` finishes the job
//!   for tunnelled frames (tail call), on their inner flow.
//! - `lab_gen`: the lab's traffic generator, an XDP_TX program driven by
//!   BPF_PROG_TEST_RUN with live frames; it varies the source port per frame so
//!   that many flows interleave packet by packet, like a NIC's receive ring.
//! - `xdp_pass`: a bare XDP_PASS, the baseline for per-packet cost;
//!   `redirect_floor`: a bare redirect into the CPUMAP, the floor of any steering;
//!   `cost_parse`, `cost_hash`: steer_xdp's parser, then also its hash, before
//!   that redirect (where steer_xdp's time goes, for the bench's cost table).
//! - `cpumap_enqueue` / `cpumap_kthread`: count drops of steer's CPUMAP queues, and what
//!   each queue took in and gave out (cpumap_trace.rs); `cpumap_handed` (`sched_switch`):
//!   what each kthread had handed to the stack when it last went to sleep.
//! - `napi_poll`: publishes what a poll redirected (cpumap_trace.rs); with `cpu_idle`, where
//!   each CPU hands packets under `--spread busy` (pressure.rs). `cpu_idle` also writes off
//!   what a CPU's queue counts show queued long after it emptied (cpumap_trace.rs).
//! - `rfs_read`, `rfs_udp_read`, `rfs_state`: RFS socket tracking (track.rs), attached only
//!   with `--mode rfs`; steer_xdp then consults their flow table first (rfs.rs).
#![no_std]
#![no_main]
// atomic_xadd / atomic_xchg for the queue counters of cpumap_trace.rs (no atomic RMW types on bpfel).
#![allow(internal_features)]
#![feature(core_intrinsics)]

mod cpumap_trace;
mod lab;
mod maps;
mod parse;
mod pressure;
mod rfs;
mod steer;
mod track;

use aya_ebpf::{
    bindings::xdp_action,
    macros::{raw_tracepoint, xdp},
    programs::{RawTracePointContext, XdpContext},
};

#[xdp]
pub fn steer_xdp(ctx: XdpContext) -> u32 {
    match steer::steer(&ctx) {
        steer::Next::Verdict(v) => v,
        steer::Next::Tunnel => steer::tail_call_inner(&ctx),
    }
}

/// The second half of `steer_xdp` for tunnelled packets, reached by tail call.
#[xdp]
pub fn steer_inner(ctx: XdpContext) -> u32 {
    steer::steer_inner(&ctx)
}

/// RFS: records the CPU a TCP flow is read on (raw tracepoint tcp_rcv_space_adjust).
#[raw_tracepoint(tracepoint = "tcp_rcv_space_adjust")]
pub fn rfs_read(ctx: RawTracePointContext) -> i32 {
    track::on_read(&ctx)
}

/// RFS: records the CPU a connected UDP socket is read on (raw tracepoint sock_recv_length).
#[raw_tracepoint(tracepoint = "sock_recv_length")]
pub fn rfs_udp_read(ctx: RawTracePointContext) -> i32 {
    track::on_udp_read(&ctx)
}

/// RFS: drops a flow when its socket closes (raw tracepoint inet_sock_set_state).
#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn rfs_state(ctx: RawTracePointContext) -> i32 {
    track::on_state(&ctx)
}

#[xdp]
pub fn lab_gen(ctx: XdpContext) -> u32 {
    lab::generate(&ctx)
}

#[xdp]
pub fn xdp_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// The floor of any CPUMAP steering, for the bench's cost table: a redirect
/// into CPU 0's queue with no parsing and no counting.
#[xdp]
pub fn redirect_floor(_ctx: XdpContext) -> u32 {
    match maps::CPUS.redirect(0, xdp_action::XDP_PASS as u64) {
        Ok(v) | Err(v) => v,
    }
}

/// The cost table's breakdown of `steer_xdp`: its parser, then a redirect
/// into CPU 0's queue (no hash, no counting).
#[xdp]
pub fn cost_parse(ctx: XdpContext) -> u32 {
    steer::cost_parse(&ctx)
}

/// The cost table's breakdown: parser, hash and indirection table, then the
/// redirect (no counting, no passing in place).
#[xdp]
pub fn cost_hash(ctx: XdpContext) -> u32 {
    steer::cost_hash(&ctx)
}

// --- stats: cpumap queue counters (raw tracepoints xdp_cpumap_enqueue / xdp_cpumap_kthread) ---
#[raw_tracepoint(tracepoint = "xdp_cpumap_enqueue")]
pub fn cpumap_enqueue(ctx: RawTracePointContext) -> i32 {
    cpumap_trace::enqueue(&ctx)
}

#[raw_tracepoint(tracepoint = "xdp_cpumap_kthread")]
pub fn cpumap_kthread(ctx: RawTracePointContext) -> i32 {
    cpumap_trace::kthread(&ctx)
}

/// A task switches out: when it is a cpumap kthread going to sleep, all it took
/// out of its queue is in the stack (cpumap_trace.rs).
#[raw_tracepoint(tracepoint = "sched_switch")]
pub fn cpumap_handed(ctx: RawTracePointContext) -> i32 {
    cpumap_trace::on_switch(&ctx)
}

/// At the end of each NAPI poll: publish what the poll redirected (cpumap_trace.rs), and
/// `--spread busy`: where the CPU hands packets during its next poll.
#[raw_tracepoint(tracepoint = "napi_poll")]
pub fn napi_poll(ctx: RawTracePointContext) -> i32 {
    cpumap_trace::publish_all();
    pressure::on_poll(&ctx)
}

/// A CPU enters or leaves idle: write off what its queue counts show queued
/// long after it emptied (cpumap_trace.rs); `--spread busy`: when it last idled.
#[raw_tracepoint(tracepoint = "cpu_idle")]
pub fn cpu_idle(ctx: RawTracePointContext) -> i32 {
    cpumap_trace::on_idle(ctx.arg::<u64>(0) as u32);
    pressure::on_idle(&ctx)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
