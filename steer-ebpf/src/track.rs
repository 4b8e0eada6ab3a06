//! RFS socket tracking on raw tracepoints (this kernel has no kprobes or
//! fentry; a raw tracepoint hands the program the event's arguments, where a
//! classic one first builds its record and copies it through the perf buffer
//! on every event, and these fire on every read).
//!
//! - `tcp_rcv_space_adjust(sk)` fires in `tcp_recvmsg`, in the reading thread,
//!   on the CPU it reads on: record `flow -> this CPU`.
//! - `inet_sock_set_state(sk, old, new)` to `TCP_CLOSE`: the socket is gone,
//!   drop it, and ignore reads on it from then on (a reset can close a socket
//!   before the application reads it).
//! - `sock_recv_length(sk, ret, flags)` fires after every recvmsg of every
//!   socket, in the reading thread: for a connected UDP socket, record
//!   `flow -> this CPU`.
//!
//! Every hook reads the socket's flow from `struct sock`: one probe read
//! copies its head ([`SOCK_HEAD`] bytes, which hold every `sock_common` member
//! the hooks use) into a per-CPU buffer, where the members sit at offsets the
//! loader took from the kernel's BTF ([`steer_common::SockOffsets`]); only
//! `sk_protocol` lies further and takes a read of its own. Addresses are kept
//! in one shape, v4-mapped for IPv4 (AF_INET and dual-stack sockets alike).
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
        bpf_get_current_pid_tgid, bpf_get_smp_processor_id, bpf_jiffies64, bpf_ktime_get_ns,
        bpf_probe_read_kernel, bpf_probe_read_kernel_buf, generated,
    },
    macros::map,
    maps::PerCpuArray,
    programs::RawTracePointContext,
};
use steer_common::{
    flow::{
        self,
        tp::{self, SOCK_HEAD},
        V4_MAPPED_WORD,
    },
    tuple::{IPPROTO_TCP, IPPROTO_UDP},
    FlowEntry, FlowKey, RfsCounters, SockOffsets,
};

use crate::maps::{CLOSED, CONFIG, FLOWS, LOCAL_ADDRS, RFS_STATS, RFS_WANT, SOCK_OFFSETS};

/// One copy of a socket's head per hook and CPU: the state hook also fires in
/// softirqs, which can interrupt a read hook on its CPU mid-copy.
#[map]
static SOCK_HEADS: PerCpuArray<[u8; SOCK_HEAD]> = PerCpuArray::with_max_entries(3, 0);

/// Which of [`SOCK_HEADS`] a hook copies into.
const HEAD_TCP_READ: u32 = 0;
const HEAD_UDP_READ: u32 = 1;
const HEAD_STATE: u32 = 2;

#[inline(always)]
fn rfs_counters() -> Option<&'static mut RfsCounters> {
    // SAFETY: a per-CPU slot of plain counters: the state hook, which can interrupt a read hook on
    // its CPU from a softirq, may at worst make one increment of the other lose its count.
    RFS_STATS.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}

/// A socket, as a copy of its head.
struct Sock {
    head: *const u8,
}

impl Sock {
    /// Copies the head of the socket at `addr` into this hook's buffer `buf`.
    #[inline(always)]
    fn read(addr: u64, buf: u32) -> Option<Self> {
        let p = SOCK_HEADS.get_ptr_mut(buf)?;
        // SAFETY: this hook's per-CPU buffer; the helper checks the kernel address itself.
        unsafe { bpf_probe_read_kernel_buf(addr as *const u8, &mut *p) }.ok()?;
        Some(Self { head: p as *const u8 })
    }

    /// The member of type `T` at byte `off` of the head.
    #[inline(always)]
    fn at<T: Copy>(&self, off: u32) -> Option<T> {
        let off = off as usize;
        if off > SOCK_HEAD - core::mem::size_of::<T>() {
            return None;
        }
        // SAFETY: inside the buffer (just checked), which the probe read filled whole.
        Some(unsafe { core::ptr::read_unaligned(self.head.add(off) as *const T) })
    }
}

/// What a read hook last decided about a socket on this CPU, reused for
/// further reads of that socket in the same jiffy: a busy reader fires the
/// hook on every read, and the kernel's own RFS pays only a table write for
/// it (it keeps the flow hash in the socket). A socket freed and reused at the
/// same address within the jiffy keeps the old verdict until the next one.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SeenCache {
    sk: u64,
    jiffies: u64,
    /// [`VERDICT_FLOW`]: the wish the flow's slot held (valid while it still holds it).
    want: u64,
    slot: u32,
    verdict: u32,
}

/// Entries of [`SEEN`] per hook (a power of two), indexed by socket address.
const CACHE_SLOTS: u32 = 512;
const CACHE_TCP_READ: u32 = 0;
const CACHE_UDP_READ: u32 = CACHE_SLOTS;

/// Per CPU: a reader that moves to another CPU finds no verdict there.
#[map]
static SEEN: PerCpuArray<SeenCache> = PerCpuArray::with_max_entries(2 * CACHE_SLOTS, 0);

/// Verdicts: nothing kept (0), or what the read was counted as.
const VERDICT_NONE: u32 = 1;
const VERDICT_FLOW: u32 = 2;
const VERDICT_UNCONNECTED: u32 = 3;
const VERDICT_FOREIGN: u32 = 4;
const VERDICT_OTHER_NETNS: u32 = 5;

impl SeenCache {
    /// This CPU's entry for `sk` in the cache starting at `base`.
    #[inline(always)]
    fn of(base: u32, sk: u64) -> Option<&'static mut Self> {
        // Fibonacci hashing of the address: slab objects are aligned, their low bits alike.
        let i = (sk.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 55) as u32 & (CACHE_SLOTS - 1);
        // SAFETY: a per-CPU slot; a read hook does not nest with itself on one CPU.
        SEEN.get_ptr_mut(base + i).map(|p| unsafe { &mut *p })
    }

    /// Whether this read of `sk` repeats one decided earlier in this jiffy
    /// (and counts it as that one was); for a flow, only while its slot still
    /// holds the wish (a close, a collision, an expiry or the reader's move to
    /// another CPU changed it).
    #[inline(always)]
    fn repeats(&self, r: &mut RfsCounters, sk: u64) -> bool {
        // SAFETY: no preconditions.
        if self.sk != sk || self.jiffies != unsafe { bpf_jiffies64() } {
            return false;
        }
        match self.verdict {
            VERDICT_NONE => {}
            VERDICT_FLOW => {
                if RFS_WANT.get(self.slot).is_none_or(|w| *w != self.want) {
                    return false;
                }
                r.hook_events += 1;
            }
            VERDICT_UNCONNECTED => r.hook_unconnected += 1,
            VERDICT_FOREIGN => r.hook_filtered += 1,
            VERDICT_OTHER_NETNS => r.hook_other_netns += 1,
            _ => return false,
        }
        true
    }

    #[inline(always)]
    fn keep(&mut self, sk: u64, verdict: u32) {
        self.sk = sk;
        // SAFETY: no preconditions.
        self.jiffies = unsafe { bpf_jiffies64() };
        self.verdict = verdict;
    }
}

/// The loader's offsets and namespace, once filled.
#[inline(always)]
fn sock_offsets() -> Option<&'static mut SockOffsets> {
    // SAFETY: the map's one value. The hooks write only `net_addr`: one
    // aligned 8-byte store, of the same value from every CPU.
    let off = unsafe { &mut *SOCK_OFFSETS.get_ptr_mut(0)? };
    (off.size != 0).then_some(off)
}

/// Whether the socket `s` belongs to the steered interface's network
/// namespace: its `struct net *`, compared with the namespace's address once
/// known; until then a probe read of the namespace's inode number, and the
/// first match teaches the address.
#[inline(always)]
fn in_our_netns(s: &Sock, off: &mut SockOffsets) -> bool {
    let Some(net) = s.at::<u64>(off.net) else {
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

/// `T` at byte `off` of the kernel object at `sk` (a socket past its head, its
/// namespace): kernel memory, so a probe read, which fails cleanly (None)
/// instead of faulting.
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

/// A TCP read (`tcp_rcv_space_adjust(sk)`): the flow's reader is on this CPU now.
pub fn on_read(ctx: &RawTracePointContext) -> i32 {
    let sk = ctx.arg::<u64>(0);
    let (Some(r), Some(e)) = (rfs_counters(), SeenCache::of(CACHE_TCP_READ, sk)) else {
        return 0;
    };
    if e.repeats(r, sk) {
        return 0;
    }
    let Some(off) = sock_offsets() else {
        return 0;
    };
    let Some(s) = Sock::read(sk, HEAD_TCP_READ) else {
        return 0;
    };
    seen(r, e, sk, flow_of(&s, sk, IPPROTO_TCP, off), true)
}

/// A read of any socket (`sock_recv_length(sk, ret, flags)`): a connected UDP
/// socket's flow is read on this CPU.
pub fn on_udp_read(ctx: &RawTracePointContext) -> i32 {
    // Every recvmsg of every socket on the host lands here: the cheapest tests first.
    let (sk, ret, flags) = (ctx.arg::<u64>(0), ctx.arg::<u64>(1) as i32, ctx.arg::<u64>(2) as i32);
    if ret < 0 || flags & (tp::MSG_PEEK | tp::MSG_ERRQUEUE) != 0 {
        return 0;
    }
    let (Some(r), Some(e)) = (rfs_counters(), SeenCache::of(CACHE_UDP_READ, sk)) else {
        return 0;
    };
    if e.repeats(r, sk) {
        return 0;
    }
    let Some(off) = sock_offsets() else {
        return 0;
    };
    if sk_read::<u16>(sk, off.protocol) != Some(IPPROTO_UDP as u16) {
        // Most reads of a proxy are TCP ones: not this hook's, for the rest of the jiffy too.
        e.keep(sk, VERDICT_NONE);
        return 0;
    }
    let Some(s) = Sock::read(sk, HEAD_UDP_READ) else {
        return 0;
    };
    seen(r, e, sk, flow_of(&s, sk, IPPROTO_UDP, off), false)
}

/// What a hook found in a socket.
enum Seen {
    Flow(FlowKey),
    /// A UDP socket that is not connected (no peer): reads datagrams of many flows.
    Unconnected,
    /// Bound to an address that is not the interface's, not IP, or unreadable.
    Foreign,
    /// A socket of another network namespace.
    OtherNetns,
}

/// Records a read of what [`flow_of`] found, or counts why not, and keeps
/// the verdict in `e` for the rest of the jiffy. `sk`: the socket, for TCP
/// (see [`record`]).
#[inline(always)]
fn seen(r: &mut RfsCounters, e: &mut SeenCache, sk: u64, what: Seen, tcp: bool) -> i32 {
    let verdict = match what {
        Seen::Flow(key) => match record(r, &key, tcp.then_some(sk)) {
            Some((slot, want)) => {
                e.slot = slot;
                e.want = want;
                VERDICT_FLOW
            }
            None => VERDICT_NONE,
        },
        Seen::Unconnected => {
            r.hook_unconnected += 1;
            VERDICT_UNCONNECTED
        }
        Seen::Foreign => {
            r.hook_filtered += 1;
            VERDICT_FOREIGN
        }
        Seen::OtherNetns => {
            r.hook_other_netns += 1;
            VERDICT_OTHER_NETNS
        }
    };
    e.keep(sk, verdict);
    0
}

/// The flow (packet direction) of socket `s` of protocol `proto`, if packets
/// through the steered interface reach it. A TCP socket the hooks see has a
/// peer; a UDP one only once connected. `sk`: the socket's address, for its
/// local port.
#[inline(always)]
fn flow_of(s: &Sock, sk: u64, proto: u8, off: &mut SockOffsets) -> Seen {
    let v6 = match s.at::<u16>(off.family) {
        Some(tp::AF_INET) => false,
        Some(tp::AF_INET6) => true,
        _ => return Seen::Foreign,
    };
    let addr = |v4: u32, v6_off: u32| {
        if v6 {
            s.at::<[u8; 16]>(v6_off)
        } else {
            s.at::<u32>(v4).map(v4_mapped)
        }
    };
    let Some(local) = addr(off.rcv_saddr, off.v6_rcv_saddr) else {
        return Seen::Foreign;
    };
    let connected = proto == IPPROTO_TCP || s.at::<u8>(off.state) == Some(tp::TCP_ESTABLISHED);
    // An unconnected socket bound to every address reads the interface's packets too.
    if LOCAL_ADDRS.get_ptr(&local).is_none() && (connected || !is_any(&local)) {
        return Seen::Foreign;
    }
    if !in_our_netns(s, off) {
        return Seen::OtherNetns;
    }
    if !connected {
        return Seen::Unconnected;
    }
    // inet_sport, not skc_num: a socket that closes gives its port back (skc_num = 0) before
    // the event, and a reset can close one before its application reads.
    let (Some(remote), Some(rport), Some(lport)) =
        (addr(off.daddr, off.v6_daddr), s.at::<u16>(off.dport), sk_read::<u16>(sk, off.sport))
    else {
        return Seen::Foreign;
    };
    let (rport, lport) = (u16::from_be(rport), u16::from_be(lport));
    if rport == 0 && proto == IPPROTO_UDP {
        return Seen::Unconnected;
    }
    Seen::Flow(FlowKey::from_socket(proto, &local, lport, &remote, rport))
}

/// The flow hash of `key` (packet direction) under the live settings and
/// the `RFS_WANT` slot it picks, as the XDP program computes them.
#[inline(always)]
fn slot_of(key: &FlowKey) -> Option<(u32, u32, *mut u64)> {
    let cfg = CONFIG.get(0)?;
    let h = crate::steer::flow_hash(cfg, &key.to_tuple())?;
    let slot = h & cfg.rfs_mask;
    Some((h, slot, RFS_WANT.get_ptr_mut(slot)?))
}

/// Points `key`'s steering slot at `cpu`. Written only when it changes, so
/// that a steady reader leaves the XDP side's cached copy alone; a wish of
/// another flow (another tag) it replaces is a collision. Returns the slot
/// and the wish it now holds.
#[inline(always)]
fn wish(r: &mut RfsCounters, key: &FlowKey, cpu: u32) -> Option<(u32, u64)> {
    let (h, slot, p) = slot_of(key)?;
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
    Some((slot, new))
}

/// Empties `key`'s steering slot if it still holds this flow's wish: the slot
/// then moves back to RSS through the XDP program's gate.
#[inline(always)]
fn unwish(key: &FlowKey) {
    let Some((h, _, p)) = slot_of(key) else { return };
    // SAFETY: as above.
    unsafe {
        let old = *p;
        if old != 0 && flow::want_tag(old) == h {
            *p = 0;
        }
    }
}

/// The current task's name, written into `out` (zeroed where it cannot be
/// read). In place: the helper's `Result` holds the name at an odd offset on the
/// stack, and a word-wide copy from there is a misaligned stack access, which
/// the verifier refuses (build.rs lets LLVM emit misaligned loads).
#[inline(always)]
fn current_comm(out: &mut [u8; 16]) {
    // SAFETY: `out` is 16 writable bytes; the helper zeroes them when it fails.
    unsafe { generated::bpf_get_current_comm(out.as_mut_ptr().cast(), out.len() as u32) };
}

/// Records that `key` is read on this CPU now. `sk`: the socket, checked
/// against the closed ones before a new entry is made (TCP; UDP has no close).
/// Returns the flow's steering slot and the wish it holds, once recorded.
#[inline(always)]
fn record(r: &mut RfsCounters, key: &FlowKey, sk: Option<u64>) -> Option<(u32, u64)> {
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
            current_comm(&mut e.comm);
        }
        // Also when the CPU is the same: a colliding flow, an expiry or a rebuild may have taken the slot.
        return wish(r, key, cpu);
    }
    // Only new entries can be stale: a closed socket's entry is gone already.
    if sk.is_some_and(|sk| CLOSED.get_ptr(&sk).is_some()) {
        r.hook_closed += 1;
        return None;
    }
    let mut entry = FlowEntry { want_cpu: cpu, last_read_ns: now, created_ns: now, pid, comm: [0; 16] };
    current_comm(&mut entry.comm);
    if FLOWS.insert(key, &entry, BPF_NOEXIST as u64).is_ok() {
        r.inserts += 1;
        return wish(r, key, cpu);
    }
    None
}

/// A state change (`inet_sock_set_state(sk, old, new)`): on close, drop the
/// flow and remember the socket as closed; any other state means the socket
/// (or a new one at that address) lives.
pub fn on_state(ctx: &RawTracePointContext) -> i32 {
    let (sk, newstate) = (ctx.arg::<u64>(0), ctx.arg::<u64>(2) as i32);
    let Some(off) = sock_offsets() else {
        return 0;
    };
    if sk_read::<u16>(sk, off.protocol) != Some(IPPROTO_TCP as u16) {
        return 0;
    }
    let Some(s) = Sock::read(sk, HEAD_STATE) else {
        return 0;
    };
    let key = match flow_of(&s, sk, IPPROTO_TCP, off) {
        Seen::Flow(key) => key,
        // Another namespace's close of the same 4-tuple must not drop this one's entry.
        Seen::OtherNetns => {
            if let Some(r) = rfs_counters() {
                r.hook_other_netns += 1;
            }
            return 0;
        }
        Seen::Unconnected | Seen::Foreign => return 0,
    };
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
