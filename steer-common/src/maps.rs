//! Layouts of the values in steer's maps. `#[repr(C)]`, no implicit padding.

/// Why the XDP program let a packet go up the stack unsteered.
/// Nothing is ever dropped: each reason is only counted.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PassReason {
    /// Not IPv4 or IPv6 (ARP, LLDP, ...).
    NonIp = 0,
    /// The packet ends inside a header steer needs.
    Truncated = 1,
    /// IP version field or IPv4 header length is invalid.
    BadIpHeader = 2,
    /// Neither TCP nor UDP (ICMP, or a tunnel `--inner` leaves alone), outer or inner.
    UnknownL4 = 3,
    /// More extension headers than steer walks (IPv6; GTP-U).
    ExtHeaderLimit = 4,
    /// The configuration or indirection table is missing an entry.
    NoConfig = 5,
    /// A tunnel whose payload steer does not parse: not IPv4, IPv6 or
    /// Ethernet carrying them (GRE with routing or version 1, MPLS, ARP, ...).
    UnknownInner = 6,
    /// A tunnel inside a tunnel: steer looks one level deep.
    TunnelTooDeep = 7,
}

/// Number of pass reasons (size of [`Counters::passed`]).
pub const PASS_REASONS: usize = 8;

impl PassReason {
    pub const ALL: [PassReason; PASS_REASONS] = [
        Self::NonIp,
        Self::Truncated,
        Self::BadIpHeader,
        Self::UnknownL4,
        Self::ExtHeaderLimit,
        Self::NoConfig,
        Self::UnknownInner,
        Self::TunnelTooDeep,
    ];

    /// Stable name used in tables, JSON and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Self::NonIp => "non_ip",
            Self::Truncated => "truncated",
            Self::BadIpHeader => "bad_ip_header",
            Self::UnknownL4 => "unknown_l4",
            Self::ExtHeaderLimit => "ext_header_limit",
            Self::NoConfig => "no_config",
            Self::UnknownInner => "unknown_inner",
            Self::TunnelTooDeep => "tunnel_too_deep",
        }
    }
}

/// Per-CPU counters of the XDP program (one entry of a per-CPU array).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Every packet the program ran on.
    pub seen: u64,
    /// Steered to a CPU whose queue accepted it: handed to the CPUMAP, or
    /// passed in place when that CPU is this one ([`Counters::local`]).
    pub redirected: u64,
    /// `bpf_redirect_map` refused (no queue for that CPU): passed instead.
    pub redirect_err: u64,
    /// Part of `redirected`: steered to the CPU it arrived on, so passed in
    /// place instead of through that CPU's own CPUMAP queue.
    pub local: u64,
    /// Tunnelled packets whose inner flow was parsed and steered (RFS or RSS;
    /// part of `redirected` unless the CPU's queue refused them).
    pub inner: u64,
    /// Passed unsteered, by [`PassReason`].
    pub passed: [u64; PASS_REASONS],
    /// Part of `local`: steered to another CPU, but passed in place because
    /// this CPU had headroom ([`SPREAD_BUSY`]).
    pub kept: u64,
}

impl Counters {
    pub fn add(&mut self, o: &Counters) {
        self.seen += o.seen;
        self.redirected += o.redirected;
        self.redirect_err += o.redirect_err;
        self.local += o.local;
        self.inner += o.inner;
        self.kept += o.kept;
        for (a, b) in self.passed.iter_mut().zip(o.passed.iter()) {
            *a += b;
        }
    }

    pub fn passed_total(&self) -> u64 {
        self.passed.iter().sum()
    }
}

/// [`SteerConfig::local_pass`]: every packet goes through a CPUMAP queue.
pub const LOCAL_PASS_OFF: u32 = 0;
/// A flow that never went through another CPU's queue is passed in place on
/// its own CPU; one that did, only once nothing is queued for this CPU. Safe
/// where each flow arrives on one CPU (a NIC queue's IRQ CPU).
pub const LOCAL_PASS_ON: u32 = 1;
/// Passed in place only once nothing is queued for this CPU: neither in its
/// CPUMAP queue nor in this CPU's not yet flushed bulk. Safe where one flow
/// may arrive on several CPUs one after another (a native veth, whose one
/// NAPI instance flushes its redirects before it polls on another CPU), so a
/// packet passed in place can overtake nothing of its flow.
pub const LOCAL_PASS_DRAINED: u32 = 2;

/// Live configuration of the XDP program (one entry of an array map), so that
/// it can be changed without reloading.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SteerConfig {
    /// [`crate::HashKind`] as u32.
    pub hash: u32,
    pub seed: u32,
    /// Indirection table size - 1 (the size is a power of two).
    pub table_mask: u32,
    /// 1: both directions of a connection hash alike.
    pub symmetric: u32,
    /// 1: steer by the RFS slot of the flow's hash before RSS (`--mode rfs`).
    pub rfs: u32,
    /// A flow whose reader changed CPU moves only after this long without a
    /// packet (`--migrate-idle-us`), so none of its packets overtake others.
    pub migrate_idle_us: u32,
    /// Whether a packet steered to the CPU it arrived on skips that CPU's
    /// queue: one of [`LOCAL_PASS_OFF`], [`LOCAL_PASS_ON`], [`LOCAL_PASS_DRAINED`].
    pub local_pass: u32,
    /// RFS steering slots - 1 (a power of two, from `--flow-entries`): a
    /// flow's slot is its hash & this.
    pub rfs_mask: u32,
    /// IP-level tunnels hashed on their inner flow ([`crate::tunnel::INNER_IPIP`] | ...).
    pub inner_ip: u32,
    /// UDP tunnels hashed on their inner flow, by destination port
    /// ([`crate::tunnel::udp_slot`]); 0 ends the table.
    pub udp_tunnels: [u32; crate::tunnel::MAX_UDP_TUNNELS],
    /// [`SPREAD_ALWAYS`] or [`SPREAD_BUSY`].
    pub spread: u32,
    /// Bit `c` set: CPU `c` is a steering CPU (`--cpus`). Under
    /// [`SPREAD_BUSY`] only these keep packets; a CPU beyond bit 63 never does.
    pub steering: u64,
}

/// [`SteerConfig::spread`]: every packet goes to its flow's CPU.
pub const SPREAD_ALWAYS: u32 = 0;
/// A CPU hands packets to other CPUs only where that pays (steer-ebpf's
/// pressure.rs): to every CPU while it is busy (a NAPI poll on it used its
/// whole budget within the last [`BUSY_HOLD_JIFFIES`]), to the CPUs that idled
/// within [`IDLE_RECENT_JIFFIES`] while it did not, to none while it idles
/// itself. Otherwise it processes what it received itself, as without
/// steering, where that cannot reorder a flow.
pub const SPREAD_BUSY: u32 = 1;

/// Jiffies a CPU stays busy after its last full poll: long enough that a
/// load near the edge does not flap (10-100 ms, HZ 1000 to 100).
pub const BUSY_HOLD_JIFFIES: u64 = 10;

/// A CPU that idled within this many jiffies has headroom (`--spread busy`):
/// 6-60 ms, long enough that a CPU which ping-pongs requests, idle between
/// bursts, does not count as saturated in a burst (measured: 0.97 of the
/// requests kept in place with 2 jiffies, 0.99-1.00 with 6), short against a
/// flood that saturates it.
pub const IDLE_RECENT_JIFFIES: u64 = 6;

/// A CPU's own queue as its `cpu_idle` program last saw it while the counts
/// showed frames still queued (one entry of a per-CPU array, steer-ebpf's
/// cpumap_trace.rs). A CPU enters idle only with its cpumap kthread asleep,
/// which it does only with its queue empty: counts that stay so for
/// [`QUIET_NS`] are a refused frame whose enqueue event was never seen, and
/// are written off, or that CPU would never pass a packet in place again.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IdleWatch {
    /// `RING`'s "put in" for this CPU when first seen so.
    pub put: u64,
    /// `RING`'s "taken out" for this CPU when first seen so.
    pub taken: u64,
    /// When (`bpf_ktime_get_ns`); 0: never.
    pub since_ns: u64,
    /// Frames written off so far: counted in, never seen taken out.
    pub written_off: u64,
}

/// How long a CPU's queue counts must stay the same, seen each time it enters
/// idle, before what they still show queued is written off ([`IdleWatch`]).
/// Between a frame put into the queue and its kthread's wake-up lies only the
/// rest of the producer's flush: far less, unless that CPU's vCPU is stopped
/// for as long (a write-off then may let a packet pass one still queued).
pub const QUIET_NS: u64 = 1_000_000_000;

/// Configuration of the lab generator program (`lab_gen`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GenConfig {
    /// Number of distinct flows: the source port cycles over `base_port..base_port+flows`.
    pub flows: u32,
    pub base_port: u32,
    /// Offset of the L4 source port in the frame.
    pub sport_offset: u32,
    /// Nanoseconds between two frames (0: as fast as possible). The program
    /// paces itself: a frame that is not due yet is dropped unsent, so the
    /// frames that leave are evenly spaced instead of bursts per call.
    pub gap_ns: u32,
    /// 0: the source port cycles over the flows. Otherwise the frame with
    /// sequence number n is flow `GEN_SCHED[n % sched_len]`: a schedule the lab
    /// fills with skewed shares (one heavy flow, Zipf).
    pub sched_len: u32,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all are repr(C), made of integers, with no padding.
    unsafe impl aya::Pod for super::Counters {}
    unsafe impl aya::Pod for super::IdleWatch {}
    unsafe impl aya::Pod for super::SteerConfig {}
    unsafe impl aya::Pod for super::GenConfig {}
    unsafe impl aya::Pod for crate::hash::ToeplitzTable {}
    unsafe impl aya::Pod for crate::tuple::Tuple {}
    unsafe impl aya::Pod for crate::flow::FlowKey {}
    unsafe impl aya::Pod for crate::flow::FlowEntry {}
    unsafe impl aya::Pod for crate::flow::FlowSlot {}
    unsafe impl aya::Pod for crate::flow::RfsCounters {}
    unsafe impl aya::Pod for crate::flow::SockOffsets {}
    unsafe impl aya::Pod for crate::balance::BucketLoad {}
    unsafe impl aya::Pod for crate::balance::BucketMove {}
    unsafe impl aya::Pod for crate::balance::RebalanceState {}
}
