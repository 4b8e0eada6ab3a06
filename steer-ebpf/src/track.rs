//! RFS socket tracking on tracepoints (this kernel has no kprobes or fentry).
//!
//! - `tcp:tcp_rcv_space_adjust` fires in `tcp_recvmsg`, in the reading thread,
//!   on the CPU it reads on: record `flow -> this CPU`.
//! - `sock:inet_sock_set_state` to `TCP_CLOSE`: the socket is gone, drop it,
//!   and ignore reads on it from then on (a reset can close a socket before
//!   the application reads it).
//!
//! - `sock:sock_recv_length` fires after every recvmsg of every socket, in the
//!   reading thread: for a connected UDP socket, record `flow -> this CPU`.
//!
//! The TCP events carry the socket's addresses as `saddr_v6`/`daddr_v6`, v4-mapped
//! for IPv4 (AF_INET and dual-stack sockets alike), local side first, ports in host
//! order. Field offsets come from the events' `format` files (see
//! `steer_common::flow::tp`; the loader checks them against this kernel).
//! `sock_recv_length` carries only the socket: its addresses are read from
//! `struct sock` at offsets the loader took from the kernel's BTF
//! ([`steer_common::SockOffsets`]), and written in the same v4-mapped shape.
//!
//! UDP follows the kernel's RFS: only a connected socket (`skc_state` ==
//! TCP_ESTABLISHED, the test of `sock_rps_record_flow`) has a flow; an
//! unconnected one reads datagrams of any peer, records nothing and is
//! counted (`hook_unconnected`). UDP has no close event: its entries age out
//! (the `steer run` sweep).
//!
//! Besides its record in `FLOWS` (keyed by the flow), the hook writes the
//! reader's CPU into the flow's steering slot (`RFS_WANT`, indexed by the
//! flow hash the XDP program computes for the packet direction), which is all
//! the XDP program reads; it clears the slot when the flow closes, if the slot
//! still holds this flow's wish.
//!
//! The tracepoints are global, so sockets whose local address is not on the
//! steered interface are skipped first thing (`hook_filtered`), and of the
//! rest those of another network namespace (`hook_other_netns`): namespaces
//! often reuse addresses (pods, labs), and another namespace's reader of the
//! same 4-tuple is no reader of this interface's packets. The socket's
//! namespace is `sk->__sk_common.skc_net.net`, compared with the steered
//! interface's by address once learned, by inode number until then.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_smp_processor_id, bpf_ktime_get_ns,
        bpf_probe_read_kernel,
    },
    programs::TracePointContext,
    EbpfContext,
};
use steer_common::{
    flow::{
        self,
        tp::{self, rcv_space_adjust as rsa, recv_length as rl, set_state as ss},
        V4_MAPPED_WORD,
    },
    tuple::{IPPROTO_TCP, IPPROTO_UDP},
    FlowEntry, FlowKey, RfsCounters, SockOffsets,
};

use crate::maps::{CLOSED, CONFIG, FLOWS, LOCAL_ADDRS, RFS_STATS, RFS_WANT, SOCK_OFFSETS};

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
    Some(FlowKey::from_socket(IPPROTO_TCP, &local, word16(ctx, sport), &addr(ctx, daddr), word16(ctx, dport)))
}

/// A TCP read: the flow's reader is on this CPU now.
pub fn on_read(ctx: &TracePointContext) -> u32 {
    let Some(r) = rfs_counters() else {
        return 0;
    };
    let Some(key) = key(ctx, rsa::SPORT, rsa::DPORT, rsa::SADDR_V6, rsa::DADDR_V6) else {
        r.hook_filtered += 1;
        return 0;
    };
    let Some(off) = sock_offsets() else {
        return 0;
    };
    let sk = skaddr(ctx, rsa::SKADDR);
    if !in_our_netns(sk, off) {
        r.hook_other_netns += 1;
        return 0;
    }
    record(r, &key, Some(sk))
}

/// The loader's offsets and namespace, once filled.
#[inline(always)]
fn sock_offsets() -> Option<&'static mut SockOffsets> {
    // SAFETY: the map's one value. The hooks write only `net_addr`: one
    // aligned 8-byte store, of the same value from every CPU.
    let off = unsafe { &mut *SOCK_OFFSETS.get_ptr_mut(0)? };
    (off.size != 0).then_some(off)
}

/// Whether the socket at `sk` belongs to the steered interface's network
/// namespace. One probe read (its `struct net *`) once the namespace's
/// address is known; until then a second one, its inode number, and the
/// first match teaches the address.
#[inline(always)]
fn in_our_netns(sk: u64, off: &mut SockOffsets) -> bool {
    let Some(net) = sk_read::<u64>(sk, off.net) else {
        return false;
    };
    if net != 0 && net == off.net_addr {
        return true;
    }
    if sk_read::<u32>(net, off.net_inum) != Some(off.netns) {
        return false;
    }
    off.net_addr = net;
    true
}

/// `T` at byte `off` of the kernel object at `sk` (a socket, its namespace):
/// kernel memory, so a probe read, which fails cleanly (None) instead of faulting.
#[inline(always)]
fn sk_read<T>(sk: u64, off: u32) -> Option<T> {
    // SAFETY: bpf_probe_read_kernel checks the address itself.
    unsafe { bpf_probe_read_kernel((sk + off as u64) as *const T) }.ok()
}

#[inline(always)]
fn v4_mapped(a: u32) -> [u8; 16] {
    let w = V4_MAPPED_WORD.to_ne_bytes();
    let b = a.to_ne_bytes();
    [0, 0, 0, 0, 0, 0, 0, 0, w[0], w[1], w[2], w[3], b[0], b[1], b[2], b[3]]
}

/// The wildcard address (`::` or `::ffff:0.0.0.0`): a socket bound to every
/// address, which packets through the interface can reach.
#[inline(always)]
fn is_any(a: &[u8; 16]) -> bool {
    let mut i = 0;
    while i < 16 {
        // Bytes 10 and 11 are 0xff in a v4-mapped address.
        if a[i] != 0 && !((i == 10 || i == 11) && a[i] == 0xff) {
            return false;
        }
        i += 1;
    }
    true
}

/// A UDP read (sock:sock_recv_length): a connected socket's flow is read on this CPU.
pub fn on_udp_read(ctx: &TracePointContext) -> u32 {
    // Every recvmsg of every socket on the host lands here: the cheapest test first.
    if word16(ctx, rl::PROTOCOL) != IPPROTO_UDP as u16 {
        return 0;
    }
    let p = ctx.as_ptr() as *const i32;
    // SAFETY: inside the record (offsets from its format file), 4-byte aligned.
    let (ret, flags) = unsafe { (*p.add(rl::RET / 4), *p.add(rl::FLAGS / 4)) };
    if ret < 0 || flags & (tp::MSG_PEEK | tp::MSG_ERRQUEUE) != 0 {
        return 0;
    }
    let (Some(r), Some(off)) = (rfs_counters(), sock_offsets()) else {
        return 0;
    };
    match udp_key(skaddr(ctx, rl::SK), word16(ctx, rl::FAMILY), off) {
        Udp::Flow(key) => record(r, &key, None),
        Udp::Unconnected => {
            r.hook_unconnected += 1;
            0
        }
        Udp::Foreign => {
            r.hook_filtered += 1;
            0
        }
        Udp::OtherNetns => {
            r.hook_other_netns += 1;
            0
        }
    }
}

enum Udp {
    Flow(FlowKey),
    /// Not connected (no peer): reads datagrams of many flows.
    Unconnected,
    /// Bound to an address that is not the interface's (or unreadable).
    Foreign,
    /// A socket of another network namespace.
    OtherNetns,
}

#[inline(always)]
fn udp_key(sk: u64, family: u16, off: &mut SockOffsets) -> Udp {
    let local = match family {
        tp::AF_INET => sk_read::<u32>(sk, off.rcv_saddr).map(v4_mapped),
        tp::AF_INET6 => sk_read::<[u8; 16]>(sk, off.v6_rcv_saddr),
        _ => None,
    };
    let Some(local) = local else {
        return Udp::Foreign;
    };
    let connected = sk_read::<u8>(sk, off.state) == Some(tp::TCP_ESTABLISHED);
    // An unconnected socket bound to every address reads the interface's packets too.
    if LOCAL_ADDRS.get_ptr(&local).is_none() && (connected || !is_any(&local)) {
        return Udp::Foreign;
    }
    if !in_our_netns(sk, off) {
        return Udp::OtherNetns;
    }
    if !connected {
        return Udp::Unconnected;
    }
    let remote = match family {
        tp::AF_INET => sk_read::<u32>(sk, off.daddr).map(v4_mapped),
        _ => sk_read::<[u8; 16]>(sk, off.v6_daddr),
    };
    let (Some(remote), Some(rport), Some(lport)) =
        (remote, sk_read::<u16>(sk, off.dport), sk_read::<u16>(sk, off.num))
    else {
        return Udp::Foreign;
    };
    let rport = u16::from_be(rport);
    if rport == 0 {
        return Udp::Unconnected;
    }
    Udp::Flow(FlowKey::from_socket(IPPROTO_UDP, &local, lport, &remote, rport))
}

/// The flow hash of `key` (packet direction) under the live settings and
/// the `RFS_WANT` slot it picks, as the XDP program computes them.
#[inline(always)]
fn slot_of(key: &FlowKey) -> Option<(u32, *mut u64)> {
    let cfg = CONFIG.get(0)?;
    let h = crate::steer::flow_hash(cfg, &key.to_tuple())?;
    Some((h, RFS_WANT.get_ptr_mut(h & cfg.rfs_mask)?))
}

/// Points `key`'s steering slot at `cpu`. Written only when it changes, so
/// that a steady reader leaves the XDP side's cached copy alone; a wish of
/// another flow (another tag) it replaces is a collision.
#[inline(always)]
fn wish(r: &mut RfsCounters, key: &FlowKey, cpu: u32) {
    let Some((h, p)) = slot_of(key) else { return };
    let new = flow::want(h, cpu);
    // SAFETY: an aligned u64 of an array map; the XDP program reads it whole.
    unsafe {
        let old = *p;
        if old != new {
            if old != 0 && flow::want_tag(old) != h {
                r.collisions += 1;
            }
            *p = new;
        }
    }
}

/// Empties `key`'s steering slot if it still holds this flow's wish: the slot
/// then moves back to RSS through the XDP program's gate.
#[inline(always)]
fn unwish(key: &FlowKey) {
    let Some((h, p)) = slot_of(key) else { return };
    // SAFETY: as above.
    unsafe {
        let old = *p;
        if old != 0 && flow::want_tag(old) == h {
            *p = 0;
        }
    }
}

/// Records that `key` is read on this CPU now. `sk`: the socket, checked
/// against the closed ones before a new entry is made (TCP; UDP has no close).
#[inline(always)]
fn record(r: &mut RfsCounters, key: &FlowKey, sk: Option<u64>) -> u32 {
    r.hook_events += 1;
    // SAFETY: no preconditions.
    let (cpu, now) = unsafe { (bpf_get_smp_processor_id(), bpf_ktime_get_ns()) };
    let pid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if let Some(e) = FLOWS.get_ptr_mut(key) {
        // SAFETY: a map value only the hooks write.
        let e = unsafe { &mut *e };
        if e.want_cpu != cpu {
            e.want_cpu = cpu;
        }
        // Informational (`steer flows`, UDP expiry): refresh at most every millisecond.
        if now.wrapping_sub(e.last_read_ns) > 1_000_000 {
            e.last_read_ns = now;
        }
        if e.pid != pid {
            e.pid = pid;
            e.comm = bpf_get_current_comm().unwrap_or_default();
        }
        // Also when the CPU is the same: a colliding flow, an expiry or a rebuild may have taken the slot.
        wish(r, key, cpu);
        return 0;
    }
    // Only new entries can be stale: a closed socket's entry is gone already.
    if sk.is_some_and(|sk| CLOSED.get_ptr(&sk).is_some()) {
        r.hook_closed += 1;
        return 0;
    }
    let entry = FlowEntry {
        want_cpu: cpu,
        last_read_ns: now,
        created_ns: now,
        pid,
        comm: bpf_get_current_comm().unwrap_or_default(),
    };
    if FLOWS.insert(key, &entry, BPF_NOEXIST as u64).is_ok() {
        r.inserts += 1;
        wish(r, key, cpu);
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
    let Some(off) = sock_offsets() else {
        return 0;
    };
    let sk = skaddr(ctx, ss::SKADDR);
    // Another namespace's close of the same 4-tuple must not drop this one's entry.
    if !in_our_netns(sk, off) {
        if let Some(r) = rfs_counters() {
            r.hook_other_netns += 1;
        }
        return 0;
    }
    // SAFETY: inside the record (offset from its format file), 4-byte aligned.
    let newstate = unsafe { *(ctx.as_ptr() as *const i32).add(ss::NEWSTATE / 4) };
    if newstate != tp::TCP_CLOSE {
        let _ = CLOSED.remove(&sk);
        return 0;
    }
    let _ = CLOSED.insert(&sk, &1, 0);
    if FLOWS.remove(&key).is_ok() {
        unwish(&key);
        if let Some(r) = rfs_counters() {
            r.removed += 1;
        }
    }
    0
}
