//! RFS, user side: settings, attaching the socket-tracking tracepoints, the
//! interface's local addresses the hook filters on, ageing out UDP entries,
//! and reading the flow table for `steer flows` (table.rs: its rows, table and
//! JSON; sock.rs: where the UDP hook finds a socket's addresses, from BTF;
//! slots.rs: the flow-hash-indexed steering slots the XDP program reads).
//!
//! The data path is in steer-ebpf (track.rs records, rfs.rs steers); the key
//! layout is in steer-common's flow.rs.

mod slots;
pub mod sock;
mod table;

pub use slots::{
    get_slot, insert_flow, rebuild, set_slot, slot_hash, sweep_orphans, view, FlowView, SlotHash,
};
pub use table::{counter_fields, now_ns, render, rows, show_addr, to_json, FlowRow};

use std::{
    borrow::Borrow,
    collections::BTreeSet,
    ffi::CStr,
    time::{Duration, Instant},
};

use aya::{
    maps::{Array, HashMap, MapData, PerCpuArray},
    programs::RawTracePoint,
    Ebpf,
};
use steer_common::{
    flow::DEFAULT_FLOW_ENTRIES,
    names::{map, prog},
    FlowEntry, FlowKey, FlowSlot, RfsCounters, SockOffsets, SteerConfig, ToeplitzTable,
};

use crate::{
    error::{Error, Result},
    pins,
};

/// Default `--migrate-idle-us`. The kernel's RFS moves a flow once the old
/// CPU's backlog has drained past the flow's last packet; a CPUMAP queue
/// drains in tens of microseconds at most when it is not overloaded, so half
/// a millisecond without a packet means nothing of the flow is still queued.
pub const DEFAULT_MIGRATE_IDLE_US: u32 = 500;
/// Largest `--flow-entries` (the XDP side's bound, 4M entries of ~100 bytes).
pub const MAX_FLOW_ENTRIES: u32 = 1 << 22;
/// Largest `--migrate-idle-us`: one second.
pub const MAX_MIGRATE_IDLE_US: u32 = 1_000_000;
/// Flow table size when RFS is off: the map exists but stays unused.
pub const UNUSED_FLOW_ENTRIES: u32 = 16;
/// Default `--udp-timeout-s`: a UDP flow has no close, so its entry goes after
/// this long without a read or a packet; conntrack's UDP timeout
/// (`nf_conntrack_udp_timeout`).
pub const DEFAULT_UDP_TIMEOUT_S: u32 = 30;
/// Largest `--udp-timeout-s`: a day.
pub const MAX_UDP_TIMEOUT_S: u32 = 86_400;

/// Pins of a run with RFS only.
pub const PINS: [&str; 6] =
    [pins::FLOWS, pins::RFS_STATS, pins::RFS_EXPIRED, pins::RFS_WANT, pins::RFS_SLOTS, pins::TOEPLITZ];

/// The socket hooks, the raw tracepoints they attach to, and the arguments
/// they read (after the context pointer every `btf_trace_*` prototype starts
/// with; checked in the kernel's BTF by `sock::offsets`): a socket, then `int`s.
pub const TRACEPOINTS: [(&str, &str, &[&str]); 3] = [
    (prog::RFS_READ, "tcp_rcv_space_adjust", &["sock"]),
    (prog::RFS_UDP_READ, "sock_recv_length", &["sock", "int", "int"]),
    (prog::RFS_STATE, "inet_sock_set_state", &["sock", "int", "int"]),
];

/// How the XDP program chooses a CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Flow hash -> indirection table -> CPU (software RSS/RPS).
    Rss,
    /// The CPU where the application reads the flow, RSS for unknown flows.
    Rfs,
}

/// Validated RFS settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RfsSettings {
    pub flow_entries: u32,
    pub migrate_idle_us: u32,
    /// UDP entries go after this many seconds without a read or a packet.
    pub udp_timeout_s: u32,
}

impl Default for RfsSettings {
    fn default() -> Self {
        Self {
            flow_entries: DEFAULT_FLOW_ENTRIES,
            migrate_idle_us: DEFAULT_MIGRATE_IDLE_US,
            udp_timeout_s: DEFAULT_UDP_TIMEOUT_S,
        }
    }
}

impl RfsSettings {
    pub fn new(flow_entries: u32, migrate_idle_us: u32) -> Result<Self> {
        Self::with_udp_timeout(flow_entries, migrate_idle_us, DEFAULT_UDP_TIMEOUT_S)
    }

    pub fn with_udp_timeout(flow_entries: u32, migrate_idle_us: u32, udp_timeout_s: u32) -> Result<Self> {
        if !(1..=MAX_FLOW_ENTRIES).contains(&flow_entries) {
            return Err(Error::BadValue {
                what: "--flow-entries",
                value: flow_entries.to_string(),
                why: format!("must be between 1 and {MAX_FLOW_ENTRIES}"),
            });
        }
        if migrate_idle_us > MAX_MIGRATE_IDLE_US {
            return Err(Error::BadValue {
                what: "--migrate-idle-us",
                value: migrate_idle_us.to_string(),
                why: format!(
                    "must be at most {MAX_MIGRATE_IDLE_US} (one second); 0 moves flows at once and may reorder"
                ),
            });
        }
        if !(1..=MAX_UDP_TIMEOUT_S).contains(&udp_timeout_s) {
            return Err(Error::BadValue {
                what: "--udp-timeout-s",
                value: udp_timeout_s.to_string(),
                why: format!("must be between 1 and {MAX_UDP_TIMEOUT_S} (a day)"),
            });
        }
        Ok(Self { flow_entries, migrate_idle_us, udp_timeout_s })
    }

    /// Settings from the command line: `None` unless `mode` is RFS. RFS-only
    /// options given with `--mode rss` are refused rather than ignored.
    pub fn from_args(
        mode: Mode,
        flow_entries: Option<u32>,
        migrate_idle_us: Option<u32>,
        udp_timeout_s: Option<u32>,
    ) -> Result<Option<Self>> {
        if mode == Mode::Rss {
            if let Some(n) = flow_entries {
                return Err(Error::BadValue {
                    what: "--flow-entries",
                    value: n.to_string(),
                    why: "only applies to --mode rfs".into(),
                });
            }
            if let Some(n) = migrate_idle_us {
                return Err(Error::BadValue {
                    what: "--migrate-idle-us",
                    value: n.to_string(),
                    why: "only applies to --mode rfs or --rebalance".into(),
                });
            }
            if let Some(n) = udp_timeout_s {
                return Err(Error::BadValue {
                    what: "--udp-timeout-s",
                    value: n.to_string(),
                    why: "only applies to --mode rfs".into(),
                });
            }
            return Ok(None);
        }
        Self::with_udp_timeout(
            flow_entries.unwrap_or(DEFAULT_FLOW_ENTRIES),
            migrate_idle_us.unwrap_or(DEFAULT_MIGRATE_IDLE_US),
            udp_timeout_s.unwrap_or(DEFAULT_UDP_TIMEOUT_S),
        )
        .map(Some)
    }
}

/// Starts socket tracking on a loaded object: fills the interface's local
/// addresses, the hooks' `struct sock` offsets and the namespace (the calling
/// thread's, which holds `iface`), loads and attaches the raw tracepoint
/// programs (no tracefs needed). The links belong to `ebpf`; dropping it detaches
/// them. Call before attaching XDP, so that a failure here leaves nothing changed.
pub fn start(ebpf: &mut Ebpf, iface: &str) -> Result<()> {
    // Before the hooks attach: without them they would record nothing, silently.
    let offsets = sock::offsets(std::path::Path::new(sock::VMLINUX_BTF), crate::pins::netns()?)?;
    let m = ebpf.map_mut(map::SOCK_OFFSETS).ok_or_else(|| Error::Ebpf("map SOCK_OFFSETS missing".into()))?;
    Array::<_, SockOffsets>::try_from(m)
        .and_then(|mut a| a.set(0, offsets, 0))
        .map_err(|e| Error::Ebpf(format!("writing SOCK_OFFSETS: {e}")))?;
    let n = refresh_local_addrs(ebpf, iface)?;
    if n == 0 {
        log::warn!("{iface} has no IP address yet: RFS records nothing until it has one");
    }
    for (prog, event, _) in TRACEPOINTS {
        let tp: &mut RawTracePoint = ebpf
            .program_mut(prog)
            .ok_or_else(|| Error::Ebpf(format!("program {prog} missing from the object")))?
            .try_into()
            .map_err(Error::ebpf)?;
        tp.load().map_err(|e| Error::Ebpf(format!("verifier rejected {prog}: {e}")))?;
        tp.attach(event)
            .map_err(|e| Error::Ebpf(format!("attaching {prog} to raw tracepoint {event}: {e}")))?;
    }
    Ok(())
}

/// Addresses of `iface` in the calling thread's network namespace, as the
/// hook compares them (16 bytes, IPv4 v4-mapped).
pub fn local_addrs(iface: &str) -> Result<BTreeSet<[u8; 16]>> {
    let mut out = BTreeSet::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(Error::io("listing interface addresses", std::io::Error::last_os_error()));
    }
    let mut p = head;
    while !p.is_null() {
        // SAFETY: a node of the list getifaddrs returned.
        let ifa = unsafe { &*p };
        p = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: a NUL-terminated name from getifaddrs.
        if unsafe { CStr::from_ptr(ifa.ifa_name) }.to_bytes() != iface.as_bytes() {
            continue;
        }
        // SAFETY: sa_family says which sockaddr this is.
        match i32::from(unsafe { (*ifa.ifa_addr).sa_family }) {
            libc::AF_INET => {
                let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                let v4 = std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
                out.insert(v4.to_ipv6_mapped().octets());
            }
            libc::AF_INET6 => {
                let sin6 = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                out.insert(sin6.sin6_addr.s6_addr);
            }
            _ => {}
        }
    }
    // SAFETY: the list from getifaddrs, freed once.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

/// Makes the hook's address filter equal to `iface`'s addresses now (they
/// may change while steer runs). Returns how many there are.
pub fn refresh_local_addrs(ebpf: &mut Ebpf, iface: &str) -> Result<usize> {
    let want = local_addrs(iface)?;
    let map = ebpf.map_mut(map::LOCAL_ADDRS).ok_or_else(|| Error::Ebpf("map LOCAL_ADDRS missing".into()))?;
    let mut m: HashMap<_, [u8; 16], u32> = HashMap::try_from(map).map_err(Error::ebpf)?;
    let have: Vec<[u8; 16]> = m.keys().filter_map(|k| k.ok()).collect();
    for k in have.iter().filter(|k| !want.contains(*k)) {
        let _ = m.remove(k);
    }
    for k in want.iter().filter(|k| !have.contains(k)) {
        m.insert(k, 1, 0).map_err(|e| Error::Ebpf(format!("adding {} to LOCAL_ADDRS: {e}", show_addr(k))))?;
    }
    Ok(want.len())
}

/// Summed RFS counters (the kernel side's; `expired` is the sweep's, see [`PinnedFlows::counters`]).
pub fn counters<M: Borrow<MapData>>(map: &PerCpuArray<M, RfsCounters>) -> Result<RfsCounters> {
    let mut t = RfsCounters::default();
    for c in map.get(&0, 0).map_err(Error::ebpf)?.iter() {
        t.add(c);
    }
    Ok(t)
}

/// Every entry of a flow table.
pub fn entries<M: Borrow<MapData>>(map: &HashMap<M, FlowKey, FlowEntry>) -> Vec<(FlowKey, FlowEntry)> {
    map.iter().filter_map(|r| r.ok()).collect()
}

/// Whether UDP entry `e` has had neither a read nor a packet (`last_pkt_ns`,
/// 0: none seen) for longer than `timeout_ns` at `now_ns` (TCP entries never:
/// they leave on close).
pub fn is_stale(k: &FlowKey, e: &FlowEntry, last_pkt_ns: u64, now_ns: u64, timeout_ns: u64) -> bool {
    k.is_udp() && now_ns.saturating_sub(e.last_read_ns.max(last_pkt_ns)) > timeout_ns
}

/// When each UDP flow last had packets, as the sweep sees it: the XDP program
/// keeps no clock on the hit path, only a packet count per slot, so a count
/// that grew since the previous sweep means packets since then.
#[derive(Default)]
pub struct PacketClock {
    seen: std::collections::HashMap<FlowKey, (u64, u64)>,
}

impl PacketClock {
    /// Notes `pkts` (the flow's slot count) at `now`; returns when its packets were last seen to grow (0: never).
    pub fn observe(&mut self, k: &FlowKey, pkts: u64, now: u64) -> u64 {
        let at = match self.seen.get(k) {
            Some(&(n, at)) if n == pkts => at,
            // First sight: packets counted before it may be recent.
            None if pkts == 0 => 0,
            _ => now,
        };
        self.seen.insert(*k, (pkts, at));
        at
    }

    /// Forgets flows no longer in the table.
    pub fn retain(&mut self, live: &std::collections::HashSet<FlowKey>) {
        self.seen.retain(|k, _| live.contains(k));
    }
}

/// Deletes the UDP entries of `flows` that have been idle longer than
/// `timeout`, empties their steering slots (if still theirs), adds them to
/// the `expired` counter in `expired` and returns how many went. Each is
/// looked at again just before it goes, so that a flow that resumed while the
/// sweep ran stays (one that resumes between that look and the delete loses
/// its entry: the next read records it again, and its slot moves back to RSS
/// and again to the reader through the idle gate, so nothing is reordered).
pub fn expire_udp<F, X, W, S>(
    flows: &mut HashMap<F, FlowKey, FlowEntry>,
    expired: &mut Array<X, u64>,
    slots: &mut (Array<W, u64>, Array<S, FlowSlot>),
    hash: &SlotHash,
    clock: &mut PacketClock,
    timeout: Duration,
) -> Result<u64>
where
    F: std::borrow::BorrowMut<MapData>,
    X: std::borrow::BorrowMut<MapData>,
    W: std::borrow::BorrowMut<MapData>,
    S: Borrow<MapData>,
{
    let timeout_ns = u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX);
    let all: Vec<(FlowKey, FlowEntry)> = flows.iter().filter_map(|r| r.ok()).collect();
    let live: std::collections::HashSet<FlowKey> = all.iter().map(|(k, _)| *k).collect();
    clock.retain(&live);
    let last_pkt = |clock: &mut PacketClock, k: &FlowKey| {
        let pkts = hash.slot(k).and_then(|(s, _)| slots.1.get(&s, 0).ok()).map_or(0, |st| st.pkts);
        clock.observe(k, pkts, now_ns())
    };
    let mut stale = Vec::new();
    for (k, e) in all.iter().filter(|(k, _)| k.is_udp()) {
        let at = last_pkt(clock, k);
        if is_stale(k, e, at, now_ns(), timeout_ns) {
            stale.push((*k, at));
        }
    }
    let mut n = 0;
    for (k, at) in stale {
        let still = flows.get(&k, 0).is_ok_and(|e| is_stale(&k, &e, at, now_ns(), timeout_ns));
        // ENOENT: the LRU or a close took it first; it is theirs to count.
        if still && flows.remove(&k).is_ok() {
            slots::unwish(&mut slots.0, hash, &k)?;
            n += 1;
        }
    }
    if n > 0 {
        let total = expired.get(&0, 0).unwrap_or(0) + n;
        expired.set(0, total, 0).map_err(|e| Error::Ebpf(format!("writing RFS_EXPIRED: {e}")))?;
    }
    Ok(n)
}

/// `steer run`'s UDP sweep: every half timeout, the UDP entries idle longer than
/// the timeout go, so an entry leaves between one and two timeouts (plus one
/// `--interval`) after its flow's last read or packet. It also empties the
/// slots of flows the LRU evicted (no event tells the hook).
pub struct UdpSweep {
    timeout: Duration,
    last: Instant,
    clock: PacketClock,
    /// Evictions when the slots were last swept for them.
    evictions: u64,
}

impl UdpSweep {
    pub fn new(timeout_s: u32) -> Self {
        Self {
            timeout: Duration::from_secs(timeout_s.into()),
            last: Instant::now(),
            clock: PacketClock::default(),
            evictions: 0,
        }
    }

    /// Sweeps when half a timeout has passed since the last sweep. Returns how many entries went.
    pub fn tick(&mut self, ebpf: &mut Ebpf) -> Result<u64> {
        if self.last.elapsed() < self.timeout / 2 {
            return Ok(0);
        }
        self.last = Instant::now();
        let hash = slot_hash(ebpf)?;
        let stats = {
            let m = ebpf.map(map::RFS_STATS).ok_or_else(|| Error::Ebpf("map RFS_STATS missing".into()))?;
            counters(&PerCpuArray::try_from(m).map_err(Error::ebpf)?)?
        };
        let [Some(flows), Some(expired), Some(want), Some(state)] =
            ebpf.maps_disjoint_mut([map::FLOWS, map::RFS_EXPIRED, map::RFS_WANT, map::RFS_SLOTS])
        else {
            return Err(Error::Ebpf("map FLOWS, RFS_EXPIRED, RFS_WANT or RFS_SLOTS missing".into()));
        };
        let mut flows: HashMap<_, FlowKey, FlowEntry> = HashMap::try_from(flows).map_err(Error::ebpf)?;
        let mut expired: Array<_, u64> = Array::try_from(expired).map_err(Error::ebpf)?;
        let mut slots = (
            Array::<_, u64>::try_from(want).map_err(Error::ebpf)?,
            Array::<_, FlowSlot>::try_from(&*state).map_err(Error::ebpf)?,
        );
        let n = expire_udp(&mut flows, &mut expired, &mut slots, &hash, &mut self.clock, self.timeout)?;
        let mut c = stats;
        c.expired = expired.get(&0, 0).unwrap_or(0);
        let evictions = c.evictions(flows.keys().count() as u64);
        if evictions > self.evictions {
            sweep_orphans(&flows, &mut slots.0, &hash)?;
            self.evictions = evictions;
        }
        Ok(n)
    }
}

/// The flow table and RFS counters of a running steer, opened from their pins.
pub struct PinnedFlows {
    pub flows: HashMap<MapData, FlowKey, FlowEntry>,
    pub stats: PerCpuArray<MapData, RfsCounters>,
    /// The sweep's `expired` count; `None` for a run started before it existed.
    pub expired: Option<Array<MapData, u64>>,
    /// The steering slots (hook's wishes, XDP state) and what finds a flow's slot.
    pub want: Array<MapData, u64>,
    pub slots: Array<MapData, FlowSlot>,
    config: Array<MapData, SteerConfig>,
    toeplitz: Array<MapData, ToeplitzTable>,
}

impl PinnedFlows {
    /// The flow table of the run on `iface` in the caller's namespace.
    pub fn open(iface: &str) -> Result<Self> {
        Self::open_id(&pins::RunId::of(iface)?)
    }

    pub fn open_id(id: &pins::RunId) -> Result<Self> {
        let iface = &id.iface;
        if !id.has_map(pins::FLOWS) {
            if !id.is_running() {
                return Err(Error::NotRunning { iface: iface.clone(), path: id.state_dir() });
            }
            return Err(Error::Ebpf(format!(
                "steer runs on \"{iface}\" without RFS (no flow table): start it with --mode rfs"
            )));
        }
        let flows =
            HashMap::try_from(aya::maps::Map::LruHashMap(id.open_map(pins::FLOWS)?)).map_err(Error::ebpf)?;
        let stats = PerCpuArray::try_from(aya::maps::Map::PerCpuArray(id.open_map(pins::RFS_STATS)?))
            .map_err(Error::ebpf)?;
        let expired = match id.has_map(pins::RFS_EXPIRED) {
            true => Some(
                Array::try_from(aya::maps::Map::Array(id.open_map(pins::RFS_EXPIRED)?))
                    .map_err(Error::ebpf)?,
            ),
            false => None,
        };
        let array = |name: &str| -> Result<aya::maps::Map> { Ok(aya::maps::Map::Array(id.open_map(name)?)) };
        let want = Array::try_from(array(pins::RFS_WANT)?).map_err(Error::ebpf)?;
        let slots = Array::try_from(array(pins::RFS_SLOTS)?).map_err(Error::ebpf)?;
        let config = Array::try_from(array(pins::CONFIG)?).map_err(Error::ebpf)?;
        let toeplitz = Array::try_from(array(pins::TOEPLITZ)?).map_err(Error::ebpf)?;
        Ok(Self { flows, stats, expired, want, slots, config, toeplitz })
    }

    /// How the live program finds a flow's slot.
    pub fn slot_hash(&self) -> Result<SlotHash> {
        SlotHash::from_maps(&self.config, &self.toeplitz)
    }

    /// `key`'s record joined with its slot, `None` when it is not in the table.
    pub fn get(&self, key: &FlowKey) -> Option<FlowView> {
        let e = self.flows.get(key, 0).ok()?;
        let hash = self.slot_hash().ok()?;
        Some(FlowView::join(key, &e, &hash, &self.want, &self.slots))
    }

    /// Every flow of the table, joined with its slot.
    pub fn views(&self) -> Result<Vec<(FlowKey, FlowView)>> {
        let hash = self.slot_hash()?;
        Ok(entries(&self.flows)
            .iter()
            .map(|(k, e)| (*k, FlowView::join(k, e, &hash, &self.want, &self.slots)))
            .collect())
    }

    /// Every RFS counter: the kernel side's and the sweep's `expired`.
    pub fn counters(&self) -> Result<RfsCounters> {
        let mut c = counters(&self.stats)?;
        c.expired = self.expired.as_ref().and_then(|m| m.get(&0, 0).ok()).unwrap_or(0);
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_checked_with_the_value_in_the_message() {
        assert_eq!(
            RfsSettings::from_args(Mode::Rfs, None, None, None).unwrap(),
            Some(RfsSettings::default())
        );
        let e = RfsSettings::from_args(Mode::Rfs, Some(0), None, None).unwrap_err().to_string();
        assert!(e.contains("--flow-entries 0"), "{e}");
        let e = RfsSettings::from_args(Mode::Rfs, None, Some(5_000_000), None).unwrap_err().to_string();
        assert!(e.contains("--migrate-idle-us 5000000"), "{e}");
        let e = RfsSettings::from_args(Mode::Rss, Some(1024), None, None).unwrap_err().to_string();
        assert!(e.contains("only applies to --mode rfs"), "{e}");
        for bad in [0, MAX_UDP_TIMEOUT_S + 1] {
            let e = RfsSettings::from_args(Mode::Rfs, None, None, Some(bad)).unwrap_err().to_string();
            assert!(e.contains(&format!("--udp-timeout-s {bad}")), "{e}");
        }
        let e = RfsSettings::from_args(Mode::Rss, None, None, Some(5)).unwrap_err().to_string();
        assert!(e.contains("--udp-timeout-s 5") && e.contains("only applies to --mode rfs"), "{e}");
        assert_eq!(RfsSettings::from_args(Mode::Rfs, None, None, Some(5)).unwrap().unwrap().udp_timeout_s, 5);
        assert_eq!(RfsSettings::from_args(Mode::Rss, None, None, None).unwrap(), None);
    }

    #[test]
    fn only_udp_entries_idle_past_the_timeout_are_stale() {
        use steer_common::tuple::{IPPROTO_TCP, IPPROTO_UDP};
        let a = std::net::Ipv4Addr::new(198, 18, 0, 2).to_ipv6_mapped().octets();
        let (udp, tcp) = (
            FlowKey::from_socket(IPPROTO_UDP, &a, 443, &a, 1),
            FlowKey::from_socket(IPPROTO_TCP, &a, 443, &a, 1),
        );
        let s = 1_000_000_000;
        let e = |read: u64| FlowEntry { last_read_ns: read, ..Default::default() };
        // At t = 100 s, timeout 30 s.
        let (now, t) = (100 * s, 30 * s);
        assert!(is_stale(&udp, &e(60 * s), 0, now, t), "read 40 s ago, never a packet");
        assert!(is_stale(&udp, &e(60 * s), 69 * s, now, t), "read 40 s ago, last packet 31 s ago");
        assert!(!is_stale(&udp, &e(60 * s), 71 * s, now, t), "a packet 29 s ago keeps it");
        assert!(!is_stale(&udp, &e(71 * s), 0, now, t), "a read 29 s ago keeps it");
        assert!(!is_stale(&udp, &e(70 * s), 0, now, t), "exactly the timeout: not yet");
        assert!(!is_stale(&tcp, &e(0), 0, now, t), "TCP entries leave on close, never by age");
        // Clocks only go forward, but an entry written after `now` was read is not stale.
        assert!(!is_stale(&udp, &e(101 * s), 0, now, t));
    }

    #[test]
    fn the_packet_clock_moves_only_when_the_count_grows() {
        use steer_common::tuple::IPPROTO_UDP;
        let a = std::net::Ipv4Addr::new(198, 18, 0, 2).to_ipv6_mapped().octets();
        let k = FlowKey::from_socket(IPPROTO_UDP, &a, 443, &a, 1);
        let mut c = PacketClock::default();
        assert_eq!(c.observe(&k, 0, 10), 0, "no packet yet");
        assert_eq!(c.observe(&k, 5, 20), 20, "packets since the last look");
        assert_eq!(c.observe(&k, 5, 30), 20, "none since: the time stays");
        assert_eq!(c.observe(&k, 6, 40), 40);
        c.retain(&Default::default());
        assert_eq!(c.observe(&k, 6, 50), 50, "first sight with packets counted: maybe recent");
    }
}
