//! Drops of steer's CPUMAP, from the `xdp:xdp_cpumap_enqueue` and
//! `xdp:xdp_cpumap_kthread` tracepoints: a full per-CPU queue is the one
//! place where steering itself can lose packets, so it must be counted.
//! The tracepoints are global: only events of steer's own CPUMAP (its map id,
//! written by the loader) are counted.
//!
//! They also count how far each CPU's queue has been filled and drained
//! ([`RING`]), so that a bucket `--rebalance` moves can wait until its last
//! packet has left the old CPU's queue (steer.rs).
//!
//! What went in is counted by the XDP program itself ([`PENDING`]) and only
//! published here, not taken from the enqueue tracepoint's `processed`: on
//! this kernel (6.18, bulk TCP through a native veth) the kthreads took out
//! up to 2424 frames more per 5 s run than the enqueue events reported put
//! in, though no program run was skipped for recursion. A count short by that
//! much let a queue look drained while it still held a flow's packets, and
//! packets passed in place overtook them. The drops still come from the
//! events: a refused frame whose event is not seen stays counted as queued,
//! which errs on the safe side (that CPU queues what it could pass in place),
//! until its CPU has idled with the counts unchanged for a second
//! ([`on_idle`]): then it is written off.
//!
//! "Taken out" is not "in the stack": the kthread counts a batch out before it
//! builds the skbs, runs them through its GRO and hands them up, with bottom
//! halves off. That is enough for the kthread's own CPU, whose XDP program runs
//! in a bottom half; another CPU that would pass a packet in place instead of
//! queueing it there reads [`HANDED`], which only moves when the kthread goes
//! to sleep or its CPU idles ([`on_switch`], [`on_idle`]).

use aya_ebpf::{
    helpers::{bpf_get_smp_processor_id, bpf_ktime_get_ns, generated},
    macros::map,
    maps::{Array, PerCpuArray},
    programs::RawTracePointContext,
};

use steer_common::{IdleWatch, QUIET_NS};

use crate::maps::{load_shared, MAX_CPUS};

/// Entries of [`CPUMAP_DROPS`]: two per CPU, up to 512 CPUs.
pub const DROP_SLOTS: u32 = 1024;

/// The id of the CPUMAP to watch (0: watch nothing). Set by the loader.
#[map]
pub static CPUMAP_ID: Array<u32> = Array::with_max_entries(1, 0);

/// `[2 * cpu]`: frames refused by `cpu`'s full queue (enqueue, by target CPU);
/// `[2 * cpu + 1]`: frames dropped by `cpu`'s cpumap kthread.
#[map]
pub static CPUMAP_DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(DROP_SLOTS, 0);

/// `[2 * cpu]`: frames ever put into `cpu`'s queue (enqueue: processed - drops);
/// `[2 * cpu + 1]`: frames `cpu`'s kthread ever took out of it. Shared, not per
/// CPU: the XDP program compares them across CPUs.
#[map]
pub static RING: Array<u64> = Array::with_max_entries(DROP_SLOTS, 0);

/// `[cpu]`: frames this CPU has redirected towards `cpu` and not yet
/// published into `RING` (counted by the XDP program; published by the
/// enqueue tracepoint when this CPU's bulk for `cpu` is flushed, and by the
/// end of each NAPI poll on this CPU, after the poll flushed its bulks).
#[map]
pub static PENDING: PerCpuArray<u64> = PerCpuArray::with_max_entries(DROP_SLOTS / 2, 0);

/// This CPU's own queue as its idle entries saw it (see [`on_idle`]).
#[map]
pub static IDLE_WATCH: PerCpuArray<IdleWatch> = PerCpuArray::with_max_entries(1, 0);

/// `[cpu]`: frames `cpu`'s kthread had taken out when it last went to sleep or
/// its CPU last entered idle: all of them are in the stack by then. Shared: the
/// XDP program on another CPU reads it (see [`nothing_on_its_way`]).
#[map]
pub static HANDED: Array<u64> = Array::with_max_entries(DROP_SLOTS / 2, 0);

/// The task of this CPU's kthread of steer's CPUMAP (0 until its first batch):
/// only compared with the task `sched_switch` switches out, never dereferenced.
#[map]
pub static KTHREAD: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Bit `cpu` set while this CPU's `PENDING[cpu]` may be non-zero, so that the
/// end of a NAPI poll reads only those slots (most polls redirect to few CPUs,
/// many to none).
#[map]
pub static PENDING_TO: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Counts a frame this CPU redirects towards `cpu`, until it is published.
#[inline(always)]
pub fn pending(cpu: u32) {
    if let Some(p) = PENDING.get_ptr_mut(cpu) {
        // SAFETY: a per-CPU slot of this CPU; a tracepoint that publishes it never runs inside
        // this program, so this read-modify-write is not torn.
        unsafe { *p += 1 };
    }
    if let Some(m) = PENDING_TO.get_ptr_mut(0) {
        // The CPUMAP holds no CPU beyond MAX_CPUS (64), so the shift stays in range.
        // SAFETY: as above.
        unsafe { *m |= 1 << (cpu & (MAX_CPUS - 1)) };
    }
}

/// Adds what this CPU redirected towards `cpu` since the last publish to
/// `cpu`'s "put in" count, less `dropped` frames its queue refused.
#[inline(always)]
fn publish(cpu: u32, dropped: u64) {
    if let Some(p) = PENDING.get_ptr_mut(cpu) {
        publish_slot(p, cpu, dropped);
    }
}

/// [`publish`] of `p`, this CPU's `PENDING[cpu]`.
#[inline(always)]
fn publish_slot(p: *mut u64, cpu: u32, dropped: u64) {
    // Taken and zeroed in one step: an XDP program in a softirq that interrupts this tracepoint
    // (in a task with bottom halves on) may count more in between.
    // SAFETY: a per-CPU slot of this CPU, aligned.
    let n =
        unsafe { core::intrinsics::atomic_xchg::<u64, { core::intrinsics::AtomicOrdering::Relaxed }>(p, 0) };
    // Wrapping: the frames a flush dropped may have been published by an earlier poll's end.
    let moved = n.wrapping_sub(dropped);
    if moved != 0 {
        ring_add(cpu.wrapping_mul(2), moved);
    }
}

/// Publishes everything this CPU redirected, at the end of a NAPI poll (its
/// bulks are flushed by then): covers a flush whose enqueue event this
/// program did not see.
#[inline(always)]
pub fn publish_all() {
    let Some(m) = PENDING_TO.get_ptr_mut(0) else { return };
    // Taken and zeroed in one step, as in `publish_slot`: a bit set after this is published later.
    // SAFETY: a per-CPU slot of this CPU, aligned.
    let mask =
        unsafe { core::intrinsics::atomic_xchg::<u64, { core::intrinsics::AtomicOrdering::Relaxed }>(m, 0) };
    if mask == 0 {
        return;
    }
    for cpu in 0..MAX_CPUS {
        if mask >> cpu & 1 == 0 {
            continue;
        }
        let Some(p) = PENDING.get_ptr_mut(cpu) else { break };
        // SAFETY: a per-CPU slot of this CPU, read whole.
        if unsafe { *p } != 0 {
            publish_slot(p, cpu, 0);
        }
    }
}

/// Whether nothing is queued for `cpu` from here: nothing this CPU redirected
/// to it is unpublished, and its queue has given out all it took in. When
/// `cpu` is the CPU this runs on, its kthread then is not mid-batch either: it
/// counts a batch out with bottom halves off, and it turns them on with part
/// of a batch still held in its GRO lists only while more frames wait in its
/// queue (it flushes them once the queue is empty); this runs in a bottom half.
#[inline(always)]
pub fn nothing_queued(cpu: u32) -> bool {
    if !counts_current(cpu) {
        return false;
    }
    let (put, taken) = ring(cpu);
    taken >= put
}

/// Whether `cpu`'s queue counts say all from here: the tracepoints watch
/// steer's CPUMAP (without them the counts say nothing), and this CPU has
/// published everything it redirected to `cpu`.
#[inline(always)]
fn counts_current(cpu: u32) -> bool {
    CPUMAP_ID.get(0).is_some_and(|id| *id != 0) && PENDING.get(cpu).is_some_and(|p| *p == 0)
}

/// Whether `cpu`'s queue holds nothing from here and has handed all it gave
/// out to the stack: what a CPU other than `cpu` needs before it passes in
/// place a packet of a flow `cpu` may still be delivering (`--spread busy`).
/// Lags [`nothing_queued`] until `cpu`'s kthread sleeps, which errs on queueing.
#[inline(always)]
pub fn nothing_on_its_way(cpu: u32) -> bool {
    if !counts_current(cpu) {
        return false;
    }
    // Handed first, as in `ring`: the comparison errs on waiting.
    load_shared(&HANDED, cpu).is_some_and(|handed| handed >= ring(cpu).0)
}

/// `HANDED[cpu] = taken` when it differs: only `cpu` itself writes its slot.
#[inline(always)]
fn handed(cpu: u32, taken: u64) {
    if let Some(p) = HANDED.get_ptr_mut(cpu) {
        // SAFETY: an aligned u64 of an array map, written whole.
        unsafe {
            if core::ptr::read_volatile(p) != taken {
                core::ptr::write_volatile(p, taken);
            }
        }
    }
}

/// `sched_switch(bool preempt, prev, next, unsigned int prev_state)`, on the
/// switching CPU with `prev` still current. When `prev` is this CPU's kthread
/// and it blocks (a state other than running), it found its queue empty after
/// its last batch, so it flushed its GRO, and everything it took out is in the
/// stack. A kthread preempted while running may still hold frames in its GRO.
pub fn on_switch(ctx: &RawTracePointContext) -> i32 {
    // Runs at every context switch: two loads and a per-CPU lookup before it returns. KTHREAD is
    // set only for steer's CPUMAP, so no CPUMAP_ID check is needed.
    if ctx.arg::<u64>(3) as u32 == 0 || KTHREAD.get(0).is_none_or(|k| *k != ctx.arg::<u64>(1)) {
        return 0;
    }
    // SAFETY: no preconditions.
    let here = unsafe { bpf_get_smp_processor_id() };
    handed(here, ring(here).1);
    0
}

/// This CPU enters idle (`power:cpu_idle`, not its exit): its cpumap kthread
/// is asleep, which it is only after it found its queue empty; a frame put in
/// since would have woken it. Counts that still show frames queued, and stay
/// the same at its idle entries for [`QUIET_NS`], are a refused frame whose
/// enqueue event was never seen: they are written off, so that this CPU passes
/// packets in place again (and `--rebalance` can move buckets off it). Only
/// such counts read the clock.
pub fn on_idle(state: u32) {
    // The exit, or counts that say nothing.
    if state == u32::MAX || CPUMAP_ID.get(0).is_none_or(|id| *id == 0) {
        return;
    }
    // SAFETY: no preconditions.
    let here = unsafe { bpf_get_smp_processor_id() };
    let (put, taken) = ring(here);
    // Its kthread is asleep, so all it took out is in the stack.
    handed(here, taken);
    if taken >= put {
        return;
    }
    let Some(w) = IDLE_WATCH.get_ptr_mut(0) else { return };
    // SAFETY: a per-CPU slot of this CPU; its idle entries do not nest.
    let w = unsafe { &mut *w };
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if w.since_ns == 0 || w.put != put || w.taken != taken {
        *w = IdleWatch { put, taken, since_ns: now, written_off: w.written_off };
    } else if now.wrapping_sub(w.since_ns) >= QUIET_NS {
        // Nothing else adds to "taken out" now: its only writer is this CPU's kthread.
        ring_add(here.wrapping_mul(2).wrapping_add(1), put - taken);
        handed(here, put);
        w.written_off += put - taken;
        w.since_ns = 0;
    }
}

/// Adds `n` to `RING[slot]`; several CPUs may enqueue to one queue at once.
#[inline(always)]
fn ring_add(slot: u32, n: u64) {
    if let Some(p) = RING.get_ptr_mut(slot) {
        // The bpfel target has no AtomicU64::fetch_add; the intrinsic lowers to BPF_ATOMIC add.
        // SAFETY: an aligned u64 of an array map.
        unsafe {
            core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(p, n)
        };
    }
}

/// Frames put into and taken out of `cpu`'s queue so far.
#[inline(always)]
pub fn ring(cpu: u32) -> (u64, u64) {
    let at = |slot: u32| load_shared(&RING, slot).unwrap_or(0);
    let i = cpu.wrapping_mul(2);
    // Taken out first: a later read of "put in" can only be larger, so the comparison errs on waiting.
    let out = at(i.wrapping_add(1));
    (at(i), out)
}

// Raw tracepoints: the arguments of TP_PROTO, read straight from the context
// (a classic tracepoint first copies its record through the perf buffer, which
// cost ~8 % of the zero-loss rate here). xdp_cpumap_enqueue: (int map_id,
// unsigned processed, unsigned drops, int to_cpu); xdp_cpumap_kthread: (int
// map_id, unsigned processed, unsigned drops, int sched, stats *), on the
// kthread's own CPU.

#[inline(always)]
fn count(id: u32, processed: u32, drops: u32, cpu: u32, slot: u32) -> i32 {
    if CPUMAP_ID.get(0).copied().unwrap_or(0) != id {
        return 0;
    }
    if slot == 0 {
        // This CPU's bulk for `cpu` was flushed (what did not fit was dropped): publish what the
        // XDP program counted, not `processed` (see the module's header).
        publish(cpu, drops as u64);
    } else if processed != 0 {
        // kthread: its drops are frames it took out.
        ring_add(cpu.wrapping_mul(2).wrapping_add(1), processed as u64);
        if let Some(k) = KTHREAD.get_ptr_mut(0) {
            // SAFETY: no preconditions; the task is only compared, never read.
            let task = unsafe { generated::bpf_get_current_task() };
            // SAFETY: a per-CPU slot of this CPU; the kthread stays the same, so this rarely writes.
            unsafe {
                if *k != task {
                    *k = task;
                }
            }
        }
    }
    if drops == 0 {
        return 0;
    }
    if let Some(n) = CPUMAP_DROPS.get_ptr_mut(cpu.wrapping_mul(2).wrapping_add(slot)) {
        // SAFETY: a per-CPU slot of this CPU.
        unsafe { *n += drops as u64 };
    }
    0
}

pub fn enqueue(ctx: &RawTracePointContext) -> i32 {
    let arg = |n| ctx.arg::<u64>(n) as u32;
    count(arg(0), arg(1), arg(2), arg(3), 0)
}

pub fn kthread(ctx: &RawTracePointContext) -> i32 {
    let arg = |n| ctx.arg::<u64>(n) as u32;
    // SAFETY: no preconditions.
    count(arg(0), arg(1), arg(2), unsafe { bpf_get_smp_processor_id() }, 1)
}
