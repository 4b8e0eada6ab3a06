//! RFS: the flow table shared by the socket hook (which records where each
//! flow is read) and the XDP program (which steers the flow there).
//!
//! One key shape serves IPv4, IPv6 and dual-stack sockets: addresses are
//! always 16 bytes, IPv4 written v4-mapped (`::ffff:a.b.c.d`). The tracepoints
//! already hand out v4-mapped `saddr_v6`/`daddr_v6` for every TCP socket,
//! AF_INET included, so the hook copies them as they are, and the XDP program
//! maps an IPv4 packet's addresses the same way ([`FlowKey::from_tuple`]).
//! UDP sockets carry no addresses in their tracepoint: the hook reads them from
//! `struct sock` at offsets the loader takes from the kernel's BTF ([`SockOffsets`]),
//! and writes them in the same shape.

use crate::tuple::{Tuple, IPPROTO_TCP, IPPROTO_UDP};

/// Default size of the flow table, the typical `rps_sock_flow_entries`.
pub const DEFAULT_FLOW_ENTRIES: u32 = 65536;

/// Word 2 of a v4-mapped address (`::ffff:0:0/96`), as raw network-order bytes.
pub const V4_MAPPED_WORD: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

/// A flow in packet direction (source = the remote peer, destination = the
/// local socket). Raw network-order words, like [`Tuple`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub saddr: [u32; 4],
    pub daddr: [u32; 4],
    /// Source and destination port, the raw first word of the TCP header.
    pub ports: u32,
    pub proto: u32,
}

impl FlowKey {
    /// The key of a parsed packet, or `None` when RFS does not track it
    /// (neither TCP nor UDP, or a fragment without ports).
    #[inline(always)]
    pub fn from_tuple(t: &Tuple) -> Option<Self> {
        if (t.proto != IPPROTO_TCP && t.proto != IPPROTO_UDP) || t.has_ports == 0 {
            return None;
        }
        let (saddr, daddr) = if t.family == 4 {
            ([0, 0, V4_MAPPED_WORD, t.saddr[0]], [0, 0, V4_MAPPED_WORD, t.daddr[0]])
        } else {
            (t.saddr, t.daddr)
        };
        Some(Self { saddr, daddr, ports: t.ports, proto: t.proto as u32 })
    }

    /// The key of a `proto` socket as the tracepoints describe it: `local`/`remote`
    /// are their `saddr_v6`/`daddr_v6` bytes (v4-mapped for IPv4), ports in host
    /// order. The packet comes from the remote side, so the key is the mirror image.
    #[inline(always)]
    pub fn from_socket(proto: u8, local: &[u8; 16], lport: u16, remote: &[u8; 16], rport: u16) -> Self {
        let r = rport.to_be_bytes();
        let l = lport.to_be_bytes();
        Self {
            saddr: words(remote),
            daddr: words(local),
            ports: u32::from_ne_bytes([r[0], r[1], l[0], l[1]]),
            proto: proto as u32,
        }
    }

    /// The packet tuple of this key, as the XDP program parses it: IPv4 when
    /// both addresses are v4-mapped. The hook hashes it to find the flow's slot.
    #[inline(always)]
    pub fn to_tuple(&self) -> Tuple {
        let v4 = |a: &[u32; 4]| a[0] == 0 && a[1] == 0 && a[2] == V4_MAPPED_WORD;
        let (saddr, daddr, family) = if v4(&self.saddr) && v4(&self.daddr) {
            ([self.saddr[3], 0, 0, 0], [self.daddr[3], 0, 0, 0], 4)
        } else {
            (self.saddr, self.daddr, 6)
        };
        Tuple { saddr, daddr, ports: self.ports, proto: self.proto as u8, family, has_ports: 1, encap: 0 }
    }

    /// Whether this is a UDP flow (no close event: it ages out instead).
    pub fn is_udp(&self) -> bool {
        self.proto == IPPROTO_UDP as u32
    }

    /// Source address as 16 bytes (v4-mapped for IPv4).
    pub fn src_bytes(&self) -> [u8; 16] {
        bytes(&self.saddr)
    }

    pub fn dst_bytes(&self) -> [u8; 16] {
        bytes(&self.daddr)
    }

    /// Source (remote) port in host order.
    pub fn sport(&self) -> u16 {
        let b = self.ports.to_ne_bytes();
        u16::from_be_bytes([b[0], b[1]])
    }

    /// Destination (local) port in host order.
    pub fn dport(&self) -> u16 {
        let b = self.ports.to_ne_bytes();
        u16::from_be_bytes([b[2], b[3]])
    }
}

#[inline(always)]
fn words(b: &[u8; 16]) -> [u32; 4] {
    [
        u32::from_ne_bytes([b[0], b[1], b[2], b[3]]),
        u32::from_ne_bytes([b[4], b[5], b[6], b[7]]),
        u32::from_ne_bytes([b[8], b[9], b[10], b[11]]),
        u32::from_ne_bytes([b[12], b[13], b[14], b[15]]),
    ]
}

fn bytes(w: &[u32; 4]) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (i, word) in w.iter().enumerate() {
        out[i * 4..i * 4 + 4].copy_from_slice(&word.to_ne_bytes());
    }
    out
}

/// The socket hook's record of a flow (the LRU `FLOWS`, keyed by [`FlowKey`]):
/// who reads it and where. It owns the flow's life (close, expiry, eviction,
/// `steer flows`); the XDP program never reads it. Steering goes through the
/// flow-hash-indexed slots instead ([`want`], [`FlowSlot`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowEntry {
    /// The CPU the application last read the flow on.
    pub want_cpu: u32,
    /// Thread group (process) id of the last reader.
    pub pid: u32,
    /// `bpf_ktime_get_ns` of the last read.
    pub last_read_ns: u64,
    /// When the hook created the entry.
    pub created_ns: u64,
    /// Command name of the last reader, NUL padded.
    pub comm: [u8; 16],
}

/// The number of steering slots for `--flow-entries n`: a power of two, at
/// least `n`, so that a slot is `hash & (slots - 1)`.
pub const fn slots(flow_entries: u32) -> u32 {
    let n = if flow_entries < 2 { 2 } else { flow_entries };
    n.next_power_of_two()
}

/// What the hook writes into a slot of `RFS_WANT` (one u64, so the XDP
/// program reads tag and CPU from one store): the flow's hash in the high
/// word (the tag that tells colliding flows apart) and the reader's CPU + 1
/// in the low word. 0 is an empty slot: RSS.
#[inline(always)]
pub const fn want(hash: u32, cpu: u32) -> u64 {
    ((hash as u64) << 32) | cpu.wrapping_add(1) as u64
}

/// The reader CPU of a [`want`] value, `None` for an empty slot.
#[inline(always)]
pub const fn want_cpu(w: u64) -> Option<u32> {
    match w as u32 {
        0 => None,
        c => Some(c - 1),
    }
}

/// The tag (flow hash) of a [`want`] value.
#[inline(always)]
pub const fn want_tag(w: u64) -> u32 {
    (w >> 32) as u32
}

/// The XDP program's state of one steering slot (`RFS_SLOTS`, indexed like
/// `RFS_WANT`): written only by the XDP program, so that the reader's CPU (the
/// hook) and the receiving CPU do not write one cache line. Every flow whose
/// hash falls in the slot follows it (colliding flows share a decision, as in
/// the kernel's `rps_dev_flow` table).
///
/// `cur` follows the hook's wish (`RFS_WANT`'s low word) one gated move at a
/// time: the clock and the queue counters are read only while the two differ.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowSlot {
    /// CPU + 1 the slot's packets go to now; 0: where RSS sends each of them
    /// (a new flow stays there until it pauses).
    pub cur: u32,
    /// The CPU whose queue `tail` counts in.
    pub tail_cpu: u32,
    /// `bpf_ktime_get_ns` of the slot's last packet since a move became
    /// pending (0: none yet, or no move pending).
    pub last_ns: u64,
    /// Frames taken out of `tail_cpu`'s queue by which the slot's last packet
    /// there has left it (0: none queued), as [`crate::balance::BucketMove::tail`].
    pub tail: u64,
    /// Packets the slot steered (to `cur`).
    pub pkts: u64,
    /// Times `cur` changed.
    pub moves: u32,
    /// 1 once the slot's packets have been in another CPU's queue: they are
    /// then never passed in place, only queued, so nothing overtakes what is
    /// still queued.
    pub queued: u32,
}

impl FlowSlot {
    /// The CPU the slot steers to now, `None` while RSS does.
    pub fn cpu(&self) -> Option<u32> {
        self.cur.checked_sub(1)
    }
}

/// Per-CPU RFS counters (one entry of a per-CPU array). XDP side counts on the
/// CPU the packet arrived on; hook side on the reader's CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RfsCounters {
    /// XDP: a TCP or UDP packet was redirected by its steering slot.
    pub hits: u64,
    /// XDP: its slot was empty (or neither TCP nor UDP, or a fragment): RSS chose the CPU.
    pub misses: u64,
    /// XDP: a slot moved to its reader's new CPU (or back to RSS) once idle and drained.
    pub moves: u64,
    /// XDP: packets kept on the old CPU (or RSS) while their slot's move was pending.
    pub deferred: u64,
    /// XDP: the recorded CPU has no CPUMAP queue (outside `--cpus`): RSS chose.
    pub not_steerable: u64,
    /// Hook: a read recorded (a TCP or connected UDP socket on a tracked address).
    pub hook_events: u64,
    /// Hook: reads of sockets whose local address is not on the interface.
    pub hook_filtered: u64,
    /// Hook: new entries created.
    pub inserts: u64,
    /// Hook: entries deleted because their socket closed.
    pub removed: u64,
    /// Hook: reads on sockets already closed (a reset before the application
    /// read): not recorded, since no close event would ever remove them.
    pub hook_closed: u64,
    /// Hook: reads and TCP state changes of sockets with an address of the
    /// interface in another network namespace (which may reuse the same
    /// addresses): not recorded, nor removed.
    pub hook_other_netns: u64,
    /// Hook: reads on unconnected UDP sockets. Not recorded: such a socket
    /// reads many flows, and the kernel's RFS records none for it either.
    pub hook_unconnected: u64,
    /// Hook: a read's flow took a steering slot another flow's wish was in
    /// (its tag differs): from then on both follow the newer wish.
    pub collisions: u64,
    /// User side: UDP entries the `steer run` sweep deleted after
    /// `--udp-timeout-s` without a read or a packet. Always 0 in the per-CPU
    /// map; the run keeps it in its own map (`RFS_EXPIRED`).
    pub expired: u64,
}

impl RfsCounters {
    pub fn add(&mut self, o: &RfsCounters) {
        self.hits += o.hits;
        self.misses += o.misses;
        self.moves += o.moves;
        self.deferred += o.deferred;
        self.not_steerable += o.not_steerable;
        self.hook_events += o.hook_events;
        self.hook_filtered += o.hook_filtered;
        self.inserts += o.inserts;
        self.removed += o.removed;
        self.hook_closed += o.hook_closed;
        self.hook_unconnected += o.hook_unconnected;
        self.hook_other_netns += o.hook_other_netns;
        self.collisions += o.collisions;
        self.expired += o.expired;
    }

    /// Entries that left the table without a close or an expiry: the LRU evicted them.
    pub fn evictions(&self, live_entries: u64) -> u64 {
        self.inserts.saturating_sub(self.removed).saturating_sub(self.expired).saturating_sub(live_entries)
    }
}

/// What the socket hooks read of the raw tracepoints' arguments and of a
/// socket. The hooks are raw tracepoints: their arguments are the events'
/// `TP_PROTO` (the loader checks them in the kernel's BTF), and everything else
/// is read from `struct sock`.
pub mod tp {
    /// `TCP_CLOSE`: the socket is gone, drop its entry.
    pub const TCP_CLOSE: i32 = 7;
    /// `TCP_ESTABLISHED`: what a connected UDP socket's `skc_state` holds
    /// (the kernel's `sock_rps_record_flow` test).
    pub const TCP_ESTABLISHED: u8 = 1;
    /// recvmsg flags that read no datagram of the flow: a peek (the read
    /// follows) and the error queue.
    pub const MSG_PEEK: i32 = 2;
    pub const MSG_ERRQUEUE: i32 = 0x2000;
    pub const AF_INET: u16 = 2;
    pub const AF_INET6: u16 = 10;
    /// Bytes at the start of `struct sock` the hooks copy in one probe read:
    /// every `sock_common` member they use must lie in it (the loader checks).
    pub const SOCK_HEAD: usize = 128;
}

/// Where the socket hooks find a socket's addresses and network namespace in
/// `struct sock`: byte offsets of `struct sock_common` (and `struct net`)
/// members, from the kernel's BTF (they move between kernel versions and
/// configurations), and the namespace of the steered interface. Written by the
/// loader before the hooks attach; 0 in `size` means not filled, and the hooks
/// record nothing.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockOffsets {
    /// `skc_daddr` (IPv4 remote address, network order).
    pub daddr: u32,
    /// `skc_rcv_saddr` (IPv4 local address, network order).
    pub rcv_saddr: u32,
    /// `skc_dport` (remote port, network order).
    pub dport: u32,
    /// `skc_state` (one byte).
    pub state: u32,
    /// `skc_v6_daddr` (16 bytes; v4-mapped for a dual-stack socket's IPv4 peer).
    pub v6_daddr: u32,
    /// `skc_v6_rcv_saddr` (16 bytes).
    pub v6_rcv_saddr: u32,
    /// `sizeof(struct sock)`, a sanity bound (0: not filled).
    pub size: u32,
    /// `skc_net.net` (the socket's `struct net *`).
    pub net: u32,
    /// `ns.inum` in `struct net` (the namespace's inode number, as in
    /// /proc/PID/ns/net).
    pub net_inum: u32,
    /// The inode number of the steered interface's network namespace: the
    /// tracepoints fire for sockets of every namespace, and namespaces reuse
    /// addresses, so a socket of another one is never recorded.
    pub netns: u32,
    /// `skc_family` (AF_INET or AF_INET6 for the sockets RFS follows).
    pub family: u32,
    /// `sk_protocol` (two bytes; outside the head, read on its own).
    pub protocol: u32,
    /// `inet_sport` in `struct inet_sock` (the local port, network order;
    /// outside the head): it outlives `skc_num`, which a closing socket
    /// clears when it gives its port back.
    pub sport: u32,
    /// The address of that namespace's `struct net`, learned by the hooks
    /// from the first socket whose namespace has inode `netns` (0: not yet),
    /// so that later events compare one pointer instead of reading the inode.
    /// Safe to keep: the namespace cannot be freed, and its address reused,
    /// while the `steer run` that owns the hooks lives in it.
    pub net_addr: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    fn mapped(a: Ipv4Addr) -> [u8; 16] {
        a.to_ipv6_mapped().octets()
    }

    #[test]
    fn ipv4_packet_and_socket_give_the_same_key() {
        let (remote, local) = (Ipv4Addr::new(198, 18, 0, 1), Ipv4Addr::new(198, 18, 0, 2));
        let t = Tuple::new(IpAddr::V4(remote), 40000, IpAddr::V4(local), 80, IPPROTO_TCP).unwrap();
        let from_packet = FlowKey::from_tuple(&t).unwrap();
        let from_socket = FlowKey::from_socket(IPPROTO_TCP, &mapped(local), 80, &mapped(remote), 40000);
        assert_eq!(from_packet, from_socket);
        assert_eq!((from_packet.sport(), from_packet.dport()), (40000, 80));
        assert_eq!(from_packet.src_bytes(), mapped(remote));
    }

    #[test]
    fn ipv6_packet_and_socket_give_the_same_key() {
        let remote: Ipv6Addr = "2001:db8::1".parse().unwrap();
        let local: Ipv6Addr = "2001:db8::2".parse().unwrap();
        let t = Tuple::new(IpAddr::V6(remote), 1234, IpAddr::V6(local), 443, IPPROTO_TCP).unwrap();
        assert_eq!(
            FlowKey::from_tuple(&t).unwrap(),
            FlowKey::from_socket(IPPROTO_TCP, &local.octets(), 443, &remote.octets(), 1234)
        );
    }

    #[test]
    fn udp_is_tracked_with_its_protocol_in_the_key() {
        let (remote, local) = (Ipv4Addr::new(198, 18, 0, 1), Ipv4Addr::new(198, 18, 0, 2));
        let u = Tuple::new(IpAddr::V4(remote), 4433, IpAddr::V4(local), 443, IPPROTO_UDP).unwrap();
        let k = FlowKey::from_tuple(&u).expect("UDP with ports is tracked");
        assert_eq!(k, FlowKey::from_socket(IPPROTO_UDP, &mapped(local), 443, &mapped(remote), 4433));
        assert!(k.is_udp());
        // The same ports over TCP are another flow.
        let t = Tuple::new(IpAddr::V4(remote), 4433, IpAddr::V4(local), 443, IPPROTO_TCP).unwrap();
        assert_ne!(FlowKey::from_tuple(&t), Some(k));
        assert!(!FlowKey::from_tuple(&t).unwrap().is_udp());
    }

    #[test]
    fn fragments_and_other_protocols_are_not_tracked() {
        let a = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
        for proto in [IPPROTO_TCP, IPPROTO_UDP] {
            let f = Tuple::new(a, 1, a, 2, proto).unwrap().without_ports();
            assert!(FlowKey::from_tuple(&f).is_none(), "fragment of {proto}");
        }
        let sctp = Tuple::new(a, 1, a, 2, 132).unwrap();
        assert!(FlowKey::from_tuple(&sctp).is_none());
    }

    #[test]
    fn a_key_gives_back_the_tuple_the_packet_hashes() {
        let a4 = |s: &str| IpAddr::V4(s.parse().unwrap());
        let a6 = |s: &str| IpAddr::V6(s.parse().unwrap());
        for (src, dst) in [(a4("198.18.0.1"), a4("198.18.0.2")), (a6("2001:db8::1"), a6("2001:db8::2"))] {
            for proto in [IPPROTO_TCP, IPPROTO_UDP] {
                let t = Tuple::new(src, 40000, dst, 443, proto).unwrap();
                assert_eq!(FlowKey::from_tuple(&t).unwrap().to_tuple(), t);
            }
        }
    }

    #[test]
    fn wants_pack_tag_and_cpu_and_zero_is_empty() {
        assert_eq!(want_cpu(0), None);
        for (h, c) in [(0, 0), (0xdead_beef, 63), (u32::MAX, 1)] {
            let w = want(h, c);
            assert_ne!(w, 0);
            assert_eq!((want_tag(w), want_cpu(w)), (h, Some(c)));
        }
        assert_eq!((slots(1), slots(16), slots(17), slots(65536)), (2, 16, 32, 65536));
    }

    #[test]
    fn evictions_are_what_left_without_a_close_or_an_expiry() {
        let c = RfsCounters { inserts: 100, removed: 10, ..Default::default() };
        assert_eq!(c.evictions(60), 30);
        assert_eq!(c.evictions(200), 0);
        let c = RfsCounters { inserts: 100, removed: 10, expired: 25, ..Default::default() };
        assert_eq!(c.evictions(60), 5);
    }
}
