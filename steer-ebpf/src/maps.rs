//! Every map of steer's kernel side. Sizes marked "set by the loader" are
//! placeholders that userspace overrides at load time.

use aya_ebpf::{
    macros::map,
    maps::{Array, CpuMap, HashMap, LruHashMap, PerCpuArray, ProgramArray},
};
use steer_common::{
    BucketLoad, BucketMove, Counters, FlowEntry, FlowKey, FlowSlot, GenConfig, RebalanceState, RfsCounters,
    SockOffsets, SteerConfig, ToeplitzTable,
};

use crate::parse::Tunnel;

/// `a[i]` of an array map other CPUs write, read whole (a plain load the
/// compiler may not merge or repeat), or None beyond its size.
#[inline(always)]
pub fn load_shared(a: &Array<u64>, i: u32) -> Option<u64> {
    // SAFETY: an aligned u64 of an array map.
    a.get_ptr(i).map(|p| unsafe { core::ptr::read_volatile(p) })
}

/// Upper bound for CPU indices; the loader sets the real number of possible CPUs.
pub const MAX_CPUS: u32 = 64;
/// Largest indirection table `--table-size` accepts.
pub const MAX_TABLE: u32 = 65536;

/// CPU index -> per-CPU queue. Only the steering CPUs have an entry.
#[map]
pub static CPUS: CpuMap = CpuMap::with_max_entries(MAX_CPUS, 0);

/// Bucket -> CPU (the indirection table). Size set by the loader.
#[map]
pub static INDIR: Array<u32> = Array::with_max_entries(MAX_TABLE, 0);

#[map]
pub static CONFIG: Array<SteerConfig> = Array::with_max_entries(1, 0);

/// Filled once by the loader when `--hash toeplitz` is chosen.
#[map]
pub static TOEPLITZ: Array<ToeplitzTable> = Array::with_max_entries(1, 0);

#[map]
pub static STATS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(1, 0);

/// Packets redirected to each target CPU, counted on the CPU that redirected.
#[map]
pub static TARGETS: PerCpuArray<u64> = PerCpuArray::with_max_entries(MAX_CPUS, 0);

/// Slot 0: `steer_inner`, tail-called for tunnelled frames. Filled by the loader.
#[map]
pub static INNER_PROG: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// The tunnel `steer_xdp` found, for `steer_inner` on the same CPU.
#[map]
pub static TUNNEL_AT: PerCpuArray<Tunnel> = PerCpuArray::with_max_entries(1, 0);
// --- rebalancing (steer-common's balance.rs) -----------------------------------

/// Bucket -> packets and bytes the hash steered through it, per CPU. Size set by the loader.
#[map]
pub static BUCKETS: PerCpuArray<BucketLoad> = PerCpuArray::with_max_entries(256, 0);

/// Bucket -> where it is moving, read only for INDIR entries marked moving. Size set by the loader.
#[map]
pub static MOVES: Array<BucketMove> = Array::with_max_entries(256, 0);

/// What the balancer last did: written by userspace, read by `steer stats`.
#[map]
pub static REBALANCE: Array<RebalanceState> = Array::with_max_entries(1, 0);

#[map]
pub static GEN_CONFIG: Array<GenConfig> = Array::with_max_entries(1, 0);

/// Frames the generator has produced on each CPU: also its sequence number.
#[map]
pub static GEN_SEQ: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// The generator's flow schedule (`GenConfig::sched_len` entries used).
#[map]
pub static GEN_SCHED: Array<u32> = Array::with_max_entries(65536, 0);

/// When the paced generator may send its next frame (bpf_ktime_get_ns), per CPU.
#[map]
pub static GEN_NEXT: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

// --- RFS ---------------------------------------------------------------------

/// Flow (packet direction) -> its reader: the socket hook's record, which
/// `steer flows`, closes and the UDP expiry work on. The XDP program steers by
/// `RFS_WANT`/`RFS_SLOTS` instead. An LRU, so that a busy host's flows push out
/// stale ones instead of failing inserts. Size set by the loader.
#[map]
pub static FLOWS: LruHashMap<FlowKey, FlowEntry> = LruHashMap::with_max_entries(65536, 0);

/// Steering slot (flow hash & `SteerConfig::rfs_mask`) -> the reader CPU the
/// hook wants and the hash that put it there (`steer_common::flow::want`).
/// Written by the hook only, when it changes. Size set by the loader.
#[map]
pub static RFS_WANT: Array<u64> = Array::with_max_entries(65536, 0);

/// Steering slot -> where the XDP program sends the slot's packets now and its
/// move gate. Written by the XDP program only. Size set by the loader.
#[map]
pub static RFS_SLOTS: Array<FlowSlot> = Array::with_max_entries(65536, 0);

#[map]
pub static RFS_STATS: PerCpuArray<RfsCounters> = PerCpuArray::with_max_entries(1, 0);

/// Sockets (their kernel address) that reached TCP_CLOSE, until the address
/// is used by a socket again: a read on one of them (after a reset) must not
/// create an entry that no close event would remove. Bounded: an LRU.
#[map]
pub static CLOSED: LruHashMap<u64, u8> = LruHashMap::with_max_entries(16384, 0);

/// Local addresses (16 bytes, IPv4 v4-mapped) of the steered interface. The
/// socket tracepoints fire for every socket on the host; only sockets bound to
/// one of these can receive packets through the interface.
#[map]
pub static LOCAL_ADDRS: HashMap<[u8; 16], u32> = HashMap::with_max_entries(256, 0);

/// Offsets of `struct sock_common` members the socket hooks read, and the
/// steered interface's network namespace (from the kernel's BTF and the
/// loader, written before the hooks attach; the hooks learn `net_addr`).
#[map]
pub static SOCK_OFFSETS: Array<SockOffsets> = Array::with_max_entries(1, 0);

/// UDP entries the `steer run` sweep expired (index 0). Written by userspace
/// only; here so that it is pinned with the table and read by `steer flows`.
#[map]
pub static RFS_EXPIRED: Array<u64> = Array::with_max_entries(1, 0);
