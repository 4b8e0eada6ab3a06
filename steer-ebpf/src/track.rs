//! RFS socket tracking on tracepoints (this kernel has no kprobes or fentry).
//!
//! - `tcp:tcp_rcv_space_adjust` fires in `tcp_recvmsg`, in the reading thread,
//!   on the CPU it reads on: record `flow -> this CPU`.
//! - `sock:inet_sock_set_state` to `TCP_CLOSE`: the socket is gone, drop it,
//!   and ignore reads on it from then on (a reset can close a socket before
//!   the application reads it).
//!
//! Both carry the socket's addresses as `saddr_v6`/`daddr_v6`, v4-mapped for
//! IPv4 (AF_INET and dual-stack sockets alike), local side first, ports in host
//! order. Field offsets come from the events' `format` files (see
//! `steer_common::flow::tp`; the loader checks them against this kernel). The tracepoints are global, so sockets whose
//! local address is not on the steered interface are skipped first thing.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_smp_processor_id, bpf_ktime_get_ns},
    programs::TracePointContext,
    EbpfContext,
};
use steer_common::{
    flow::tp::{self, rcv_space_adjust as rsa, set_state as ss},
    tuple::IPPROTO_TCP,
    FlowEntry, FlowKey, RfsCounters,
};

use crate::{
    maps::{CLOSED, FLOWS, LOCAL_ADDRS, RFS_STATS},
    rfs::ON_RSS,
};

#[inline(always)]
fn rfs_counters() -> Option<&'static mut RfsCounters> {
    // SAFETY: a per-CPU slot; tracepoint programs do not nest on one CPU.
    RFS_STATS.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}

/// 16 bytes of the event record at `off` (2-byte aligned in both formats),
/// read straight from the context: tracepoint records are readable in place
/// with aligned loads, which is cheaper than a probe-read helper call.
#[inline(always)]
fn addr(ctx: &TracePointContext, off: usize) -> [u8; 16] {
    let p = ctx.as_ptr() as *const u16;
    let mut out = [0u8; 16];
    let mut i = 0;
    while i < 8 {
        // SAFETY: inside the record (offsets from its format file), u16-aligned.
        let w = unsafe { *p.add(off / 2 + i) };
        let b = w.to_ne_bytes();
        out[i * 2] = b[0];
        out[i * 2 + 1] = b[1];
        i += 1;
    }
    out
}

/// The socket's kernel address (`skaddr`), 8-byte aligned in both formats.
#[inline(always)]
fn skaddr(ctx: &TracePointContext, off: usize) -> u64 {
    // SAFETY: inside the record (offset from its format file), u64-aligned.
    unsafe { *(ctx.as_ptr() as *const u64).add(off / 8) }
}

#[inline(always)]
fn word16(ctx: &TracePointContext, off: usize) -> u16 {
    // SAFETY: as above.
    unsafe { *(ctx.as_ptr() as *const u16).add(off / 2) }
}

/// The socket's flow key, if its local address is on the steered interface.
#[inline(always)]
fn key(ctx: &TracePointContext, sport: usize, dport: usize, saddr: usize, daddr: usize) -> Option<FlowKey> {
    let local = addr(ctx, saddr);
    LOCAL_ADDRS.get_ptr(&local)?;
    Some(FlowKey::from_socket(&local, word16(ctx, sport), &addr(ctx, daddr), word16(ctx, dport)))
}

/// A read: the flow's reader is on this CPU now.
pub fn on_read(ctx: &TracePointContext) -> u32 {
    let Some(r) = rfs_counters() else {
        return 0;
    };
    let Some(key) = key(ctx, rsa::SPORT, rsa::DPORT, rsa::SADDR_V6, rsa::DADDR_V6) else {
        r.hook_filtered += 1;
        return 0;
    };
    r.hook_events += 1;
    // SAFETY: no preconditions.
    let (cpu, now) = unsafe { (bpf_get_smp_processor_id(), bpf_ktime_get_ns()) };
    let pid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if let Some(e) = FLOWS.get_ptr_mut(&key) {
        // SAFETY: a map value; only the fields the hook owns are written, and
        // only when they change, to keep the line clean for the XDP side.
        let e = unsafe { &mut *e };
        if e.want_cpu != cpu {
            e.want_cpu = cpu;
        }
        // Informational (`steer flows`): refresh at most every millisecond so
        // that a busy reader does not keep pulling the line from the XDP CPU.
        if now.wrapping_sub(e.last_read_ns) > 1_000_000 {
            e.last_read_ns = now;
        }
        if e.pid != pid {
            e.pid = pid;
            e.comm = bpf_get_current_comm().unwrap_or_default();
        }
        return 0;
    }
    // Only new entries can be stale: a closed socket's entry is gone already.
    if CLOSED.get_ptr(&skaddr(ctx, rsa::SKADDR)).is_some() {
        r.hook_closed += 1;
        return 0;
    }
    let entry = FlowEntry {
        cpu: ON_RSS,
        want_cpu: cpu,
        last_read_ns: now,
        created_ns: now,
        pid,
        comm: bpf_get_current_comm().unwrap_or_default(),
        ..FlowEntry::default()
    };
    if FLOWS.insert(&key, &entry, BPF_NOEXIST as u64).is_ok() {
        r.inserts += 1;
    }
    0
}

/// A state change: on close, drop the flow and remember the socket as closed;
/// any other state means the socket (or a new one at that address) lives.
pub fn on_state(ctx: &TracePointContext) -> u32 {
    if word16(ctx, ss::PROTOCOL) != IPPROTO_TCP as u16 {
        return 0;
    }
    let Some(key) = key(ctx, ss::SPORT, ss::DPORT, ss::SADDR_V6, ss::DADDR_V6) else {
        return 0;
    };
    // SAFETY: inside the record (offset from its format file), 4-byte aligned.
    let newstate = unsafe { *(ctx.as_ptr() as *const i32).add(ss::NEWSTATE / 4) };
    let sk = skaddr(ctx, ss::SKADDR);
    if newstate != tp::TCP_CLOSE {
        let _ = CLOSED.remove(&sk);
        return 0;
    }
    let _ = CLOSED.insert(&sk, &1, 0);
    if FLOWS.remove(&key).is_ok() {
        if let Some(r) = rfs_counters() {
            r.removed += 1;
        }
    }
    0
}
