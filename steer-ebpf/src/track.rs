//! RFS socket tracking on tracepoints (this kernel has no kprobes or fentry).
//!
//! - `tcp:tcp_rcv_space_adjust` fires in `tcp_recvmsg`, in the reading thread,
//!   on the CPU it reads on: record `flow -> this CPU`.
//! - `sock:inet_sock_set_state` to `TCP_CLOSE`: the socket is gone, drop it.
//!
//! Both carry the socket's addresses as `saddr_v6`/`daddr_v6`, v4-mapped for
//! IPv4 (AF_INET and dual-stack sockets alike), local side first, ports in host
//! order. Field offsets come from the events' `format` files (see
//! `steer_common::flow::tp`). The tracepoints are global, so sockets whose
//! local address is not on the steered interface are skipped first thing.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_smp_processor_id, bpf_ktime_get_ns},
    programs::TracePointContext,
};
use steer_common::{
    flow::tp::{self, rcv_space_adjust as rsa, set_state as ss},
    tuple::IPPROTO_TCP,
    FlowEntry, FlowKey, RfsCounters,
};

use crate::{
    maps::{FLOWS, LOCAL_ADDRS, RFS_STATS},
    rfs::ON_RSS,
};

#[inline(always)]
fn rfs_counters() -> Option<&'static mut RfsCounters> {
    // SAFETY: a per-CPU slot; tracepoint programs do not nest on one CPU.
    RFS_STATS.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}

/// The socket's flow key, if its local address is on the steered interface.
#[inline(always)]
fn key(ctx: &TracePointContext, sport: usize, dport: usize, saddr: usize, daddr: usize) -> Option<FlowKey> {
    // SAFETY: offsets inside the event record, from its format file.
    let local: [u8; 16] = unsafe { ctx.read_at(saddr) }.ok()?;
    LOCAL_ADDRS.get_ptr(&local)?;
    // SAFETY: as above.
    let (remote, lport, rport) = unsafe {
        (
            ctx.read_at::<[u8; 16]>(daddr).ok()?,
            ctx.read_at::<u16>(sport).ok()?,
            ctx.read_at::<u16>(dport).ok()?,
        )
    };
    Some(FlowKey::from_socket(&local, lport, &remote, rport))
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
        e.last_read_ns = now;
        if e.pid != pid {
            e.pid = pid;
            e.comm = bpf_get_current_comm().unwrap_or_default();
        }
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

/// A state change: on close, drop the flow.
pub fn on_state(ctx: &TracePointContext) -> u32 {
    // SAFETY: offsets inside the event record, from its format file.
    let (proto, newstate) = unsafe { (ctx.read_at::<u16>(ss::PROTOCOL), ctx.read_at::<i32>(ss::NEWSTATE)) };
    if proto != Ok(IPPROTO_TCP as u16) || newstate != Ok(tp::TCP_CLOSE) {
        return 0;
    }
    let Some(key) = key(ctx, ss::SPORT, ss::DPORT, ss::SADDR_V6, ss::DADDR_V6) else {
        return 0;
    };
    if FLOWS.remove(&key).is_ok() {
        if let Some(r) = rfs_counters() {
            r.removed += 1;
        }
    }
    0
}
