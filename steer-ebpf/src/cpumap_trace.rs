//! Drops of steer's CPUMAP, from the `xdp:xdp_cpumap_enqueue` and
//! `xdp:xdp_cpumap_kthread` tracepoints: a full per-CPU queue is the one
//! place where steering itself can lose packets, so it must be counted.
//! The tracepoints are global: only events of steer's own CPUMAP (its map id,
//! written by the loader) are counted.

use aya_ebpf::{
    macros::map,
    maps::{Array, PerCpuArray},
    programs::TracePointContext,
};

/// Entries of [`CPUMAP_DROPS`]: two per CPU, up to 512 CPUs.
pub const DROP_SLOTS: u32 = 1024;

/// The id of the CPUMAP to watch (0: watch nothing). Set by the loader.
#[map]
pub static CPUMAP_ID: Array<u32> = Array::with_max_entries(1, 0);

/// `[2 * cpu]`: frames refused by `cpu`'s full queue (enqueue, by target CPU);
/// `[2 * cpu + 1]`: frames dropped by `cpu`'s cpumap kthread.
#[map]
pub static CPUMAP_DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(DROP_SLOTS, 0);

// Offsets from /sys/kernel/tracing/events/xdp/xdp_cpumap_{enqueue,kthread}/format
// (stable across 5.x/6.x): map_id at 8, cpu at 16, drops at 20, to_cpu at 28.
const MAP_ID: usize = 8;
const CPU: usize = 16;
const DROPS: usize = 20;
const TO_CPU: usize = 28;

#[inline(always)]
fn count(ctx: &TracePointContext, cpu_field: usize, slot: u32) -> u32 {
    // SAFETY: reads of fixed tracepoint fields, through bpf_probe_read_kernel.
    let (Ok(id), Ok(drops), Ok(cpu)) =
        (unsafe { ctx.read_at::<u32>(MAP_ID) }, unsafe { ctx.read_at::<u32>(DROPS) }, unsafe {
            ctx.read_at::<u32>(cpu_field)
        })
    else {
        return 0;
    };
    if drops == 0 || CPUMAP_ID.get(0).copied().unwrap_or(0) != id {
        return 0;
    }
    if let Some(n) = CPUMAP_DROPS.get_ptr_mut(cpu.wrapping_mul(2).wrapping_add(slot)) {
        // SAFETY: a per-CPU slot of this CPU.
        unsafe { *n += drops as u64 };
    }
    0
}

pub fn enqueue(ctx: &TracePointContext) -> u32 {
    count(ctx, TO_CPU, 0)
}

pub fn kthread(ctx: &TracePointContext) -> u32 {
    count(ctx, CPU, 1)
}
