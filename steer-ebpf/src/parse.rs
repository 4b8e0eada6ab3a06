//! From frame to flow tuple: Ethernet, up to two VLAN tags, IPv4 or IPv6 with
//! a bounded walk over extension headers, then TCP/UDP ports. Tunnels the
//! configuration names (IP-in-IP, GRE; VXLAN, Geneve, GTP-U, FOU, GUE by UDP
//! port) are looked into once: their inner flow is the tuple.
//!
//! Two halves: [`parse`] stops at a tunnel's header and reports where it is;
//! [`parse_tunnel`] (in its own program, reached by a tail call) parses the
//! tunnel and the packet inside. One program for both multiplies every outer
//! path by every inner one: the verifier then needs over 700k instructions
//! for what the two halves verify in a fraction of that.
//!
//! Every access is checked against `data_end` with the packet pointer itself
//! (`data + off + len > data_end`): the verifier only learns a packet range
//! from comparisons of packet pointers.

use aya_ebpf::programs::XdpContext;
use steer_common::{
    tunnel::{IPPROTO_GRE, IPPROTO_IPIP, IPPROTO_IPV6},
    tuple::{IPPROTO_TCP, IPPROTO_UDP},
    Encap, PassReason, SteerConfig, Tuple,
};

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
/// Transparent Ethernet bridging: an Ethernet frame follows (GRE, Geneve).
const ETH_P_TEB: u16 = 0x6558;
/// Not an EtherType: the payload is IPv4 or IPv6, told by its version nibble.
const ANY_IP: u16 = 0;

/// IPv6 extension headers walked before giving up (`ExtHeaderLimit`).
const MAX_EXT_HEADERS: usize = 6;
/// GTP-U extension headers walked before giving up (`ExtHeaderLimit`).
const MAX_GTPU_EXT: usize = 4;

/// Largest offset of a tunnel header [`parse_tunnel`] accepts: beyond every
/// outer header steer walks, and small enough that inner offsets stay inside
/// the verifier's 64 KiB packet range.
const MAX_TUNNEL_OFF: u32 = 16384;

/// What [`parse`] found.
pub enum Parsed {
    /// A flow to steer.
    Flow(Tuple),
    /// A tunnel to look into: [`parse_tunnel`] goes on.
    Tunnel(Tunnel),
}

/// Where a tunnel starts: handed from [`parse`] to [`parse_tunnel`] through
/// a per-CPU map, across the tail call.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Tunnel {
    /// The outer flow, steered as is when the tunnel carries no packet.
    pub outer: Tuple,
    /// Offset of the tunnel header (after the outer IP header for IP-in-IP and
    /// GRE, after the UDP header for UDP tunnels).
    pub off: u32,
    /// [`Encap`] as u32.
    pub encap: u32,
}

/// A pointer to `len` bytes at `off`, or `None` if the frame is shorter.
#[inline(always)]
fn bytes(ctx: &XdpContext, off: usize, len: usize) -> Option<*const u8> {
    let start = ctx.data();
    if start + off + len > ctx.data_end() {
        return None;
    }
    Some((start + off) as *const u8)
}

#[inline(always)]
fn load_u8(p: *const u8, at: usize) -> u8 {
    // SAFETY: callers checked `at` is inside the range returned by `bytes`.
    unsafe { *p.add(at) }
}

#[inline(always)]
fn load_be16(p: *const u8, at: usize) -> u16 {
    u16::from_be_bytes([load_u8(p, at), load_u8(p, at + 1)])
}

#[inline(always)]
fn load_raw32(p: *const u8, at: usize) -> u32 {
    // SAFETY: as above; unaligned because IP headers follow a 14-byte Ethernet header.
    unsafe { (p.add(at) as *const u32).read_unaligned() }
}

// Inlined into each program that parses: an out-of-line copy would get the packet pointers as
// plain arguments, and the verifier refuses arithmetic on those.
#[inline(always)]
pub fn parse(ctx: &XdpContext, cfg: &SteerConfig) -> Result<Parsed, PassReason> {
    let eth = bytes(ctx, 0, 14).ok_or(PassReason::Truncated)?;
    let mut proto = load_be16(eth, 12);
    let mut off = 14;
    // Two tags at most (802.1ad outer + 802.1Q inner), unrolled by hand.
    if proto == ETH_P_8021Q || proto == ETH_P_8021AD {
        let tag = bytes(ctx, off, 4).ok_or(PassReason::Truncated)?;
        proto = load_be16(tag, 2);
        off += 4;
        if proto == ETH_P_8021Q || proto == ETH_P_8021AD {
            let tag = bytes(ctx, off, 4).ok_or(PassReason::Truncated)?;
            proto = load_be16(tag, 2);
            off += 4;
        }
    }
    let (t, off, fragmented) = match proto {
        ETH_P_IP => ipv4(ctx, off)?,
        ETH_P_IPV6 => ipv6(ctx, off)?,
        _ => return Err(PassReason::NonIp),
    };
    outer_transport(ctx, off, fragmented, t, cfg)
}

/// The tunnel at `at` and the flow inside it.
#[inline(always)]
pub fn parse_tunnel(ctx: &XdpContext, at: &Tunnel) -> Result<Tuple, PassReason> {
    if at.off > MAX_TUNNEL_OFF {
        return Err(PassReason::ExtHeaderLimit);
    }
    let off = at.off as usize;
    let Some(encap) = Encap::from_u8(at.encap as u8) else {
        return Err(PassReason::NoConfig);
    };
    let found = match encap {
        Encap::Ipip if at.outer.proto == IPPROTO_IPIP => Some((off, ETH_P_IP)),
        Encap::Ipip => Some((off, ETH_P_IPV6)),
        Encap::Gre => Some(gre(ctx, off)?),
        _ => udp_tunnel(ctx, off, encap)?,
    };
    let Some((off, ethertype)) = found else {
        return Ok(at.outer);
    };
    let mut t = inner(ctx, off, ethertype)?;
    t.encap = encap as u8;
    Ok(t)
}

/// The packet inside a tunnel, at `off`, starting with `ethertype` (an
/// Ethernet header for [`ETH_P_TEB`], an IP header of either version for [`ANY_IP`]).
#[inline(always)]
fn inner(ctx: &XdpContext, off: usize, ethertype: u16) -> Result<Tuple, PassReason> {
    let mut off = off;
    let mut proto = ethertype;
    if proto == ETH_P_TEB {
        let eth = bytes(ctx, off, 14).ok_or(PassReason::Truncated)?;
        proto = load_be16(eth, 12);
        off += 14;
    } else if proto == ANY_IP {
        // 20 bytes, the least either IP header has: a 1-byte check is folded by LLVM
        // into a compare the verifier learns no range from.
        let ip = bytes(ctx, off, 20).ok_or(PassReason::Truncated)?;
        proto = match load_u8(ip, 0) >> 4 {
            4 => ETH_P_IP,
            6 => ETH_P_IPV6,
            _ => return Err(PassReason::UnknownInner),
        };
    }
    let (t, off, fragmented) = match proto {
        ETH_P_IP => ipv4(ctx, off)?,
        ETH_P_IPV6 => ipv6(ctx, off)?,
        _ => return Err(PassReason::UnknownInner),
    };
    match t.proto {
        IPPROTO_IPIP | IPPROTO_IPV6 | IPPROTO_GRE => Err(PassReason::TunnelTooDeep),
        _ => l4(ctx, off, fragmented, t),
    }
}

/// An IPv4 header at `off`: the flow's addresses and protocol, where the
/// transport header starts, and whether this is a fragment.
#[inline(always)]
fn ipv4(ctx: &XdpContext, off: usize) -> Result<(Tuple, usize, bool), PassReason> {
    let ip = bytes(ctx, off, 20).ok_or(PassReason::Truncated)?;
    let vihl = load_u8(ip, 0);
    let ihl = ((vihl & 0x0f) as usize) * 4;
    if vihl >> 4 != 4 || ihl < 20 {
        return Err(PassReason::BadIpHeader);
    }
    let fragmented = load_be16(ip, 6) & 0x3fff != 0; // MF flag or an offset
    let mut t = Tuple { proto: load_u8(ip, 9), family: 4, ..Tuple::default() };
    t.saddr[0] = load_raw32(ip, 12);
    t.daddr[0] = load_raw32(ip, 16);
    Ok((t, off + ihl, fragmented))
}

/// An IPv6 header and its extension headers at `off`, as [`ipv4`].
#[inline(always)]
fn ipv6(ctx: &XdpContext, off: usize) -> Result<(Tuple, usize, bool), PassReason> {
    let ip = bytes(ctx, off, 40).ok_or(PassReason::Truncated)?;
    if load_u8(ip, 0) >> 4 != 6 {
        return Err(PassReason::BadIpHeader);
    }
    let mut t = Tuple { family: 6, ..Tuple::default() };
    let mut i = 0;
    while i < 4 {
        t.saddr[i] = load_raw32(ip, 8 + i * 4);
        t.daddr[i] = load_raw32(ip, 24 + i * 4);
        i += 1;
    }
    let mut nh = load_u8(ip, 6);
    let mut off = off + 40;
    let mut fragmented = false;
    let mut n = 0;
    while n < MAX_EXT_HEADERS {
        match nh {
            // Hop-by-hop, routing, destination options: length in 8-byte units, not counting the first 8.
            0 | 43 | 60 => {
                let h = bytes(ctx, off, 2).ok_or(PassReason::Truncated)?;
                nh = load_u8(h, 0);
                off += (load_u8(h, 1) as usize + 1) * 8;
            }
            // Fragment header: fixed 8 bytes; offset or M flag means "part of a fragmented datagram".
            44 => {
                let h = bytes(ctx, off, 8).ok_or(PassReason::Truncated)?;
                nh = load_u8(h, 0);
                fragmented = load_be16(h, 2) & 0xfff9 != 0;
                off += 8;
            }
            // Authentication header: length in 4-byte units, not counting the first 8.
            51 => {
                let h = bytes(ctx, off, 2).ok_or(PassReason::Truncated)?;
                nh = load_u8(h, 0);
                off += (load_u8(h, 1) as usize + 2) * 4;
            }
            _ => break,
        }
        n += 1;
    }
    if matches!(nh, 0 | 43 | 44 | 51 | 60) {
        return Err(PassReason::ExtHeaderLimit);
    }
    t.proto = nh;
    Ok((t, off, fragmented))
}

/// What follows the outer IP header: TCP/UDP ports, or a tunnel whose inner
/// flow becomes the tuple. A tunnelled fragment is hashed like any fragment,
/// on its outer addresses.
#[inline(always)]
fn outer_transport(
    ctx: &XdpContext,
    off: usize,
    fragmented: bool,
    t: Tuple,
    cfg: &SteerConfig,
) -> Result<Parsed, PassReason> {
    if t.proto == IPPROTO_TCP || t.proto == IPPROTO_UDP {
        let t = l4(ctx, off, fragmented, t)?;
        if t.proto == IPPROTO_UDP && t.has_ports != 0 {
            if let Some(encap) = cfg.udp_tunnel((t.ports >> 16) as u16) {
                return Ok(Parsed::Tunnel(Tunnel { outer: t, off: off as u32 + 8, encap: encap as u32 }));
            }
        }
        return Ok(Parsed::Flow(t));
    }
    let Some(encap) = cfg.ip_tunnel(t.proto) else {
        return Err(PassReason::UnknownL4);
    };
    if fragmented {
        return Ok(Parsed::Flow(t));
    }
    Ok(Parsed::Tunnel(Tunnel { outer: t, off: off as u32, encap: encap as u32 }))
}

/// A GRE header at `off`: where its payload starts and what it is. Version 0
/// only, without routing (as the kernel's flow dissector).
#[inline(always)]
fn gre(ctx: &XdpContext, off: usize) -> Result<(usize, u16), PassReason> {
    let h = bytes(ctx, off, 4).ok_or(PassReason::Truncated)?;
    let flags = load_be16(h, 0);
    if flags & 0x4007 != 0 {
        return Err(PassReason::UnknownInner);
    }
    // Checksum (+ reserved), key and sequence number: 4 bytes each when present.
    let len = 4 + 4 * ((flags >> 15) & 1) + 4 * ((flags >> 13) & 1) + 4 * ((flags >> 12) & 1);
    match load_be16(h, 2) {
        p @ (ETH_P_IP | ETH_P_IPV6 | ETH_P_TEB) => Ok((off + len as usize, p)),
        _ => Err(PassReason::UnknownInner),
    }
}

/// A UDP tunnel's header at `off` (after the UDP header): where its payload
/// starts and what it is, or `None` for a message that carries no packet
/// (GTP-U signalling, GUE control): that is plain UDP.
#[inline(always)]
fn udp_tunnel(ctx: &XdpContext, off: usize, encap: Encap) -> Result<Option<(usize, u16)>, PassReason> {
    match encap {
        Encap::Vxlan => {
            let h = bytes(ctx, off, 8).ok_or(PassReason::Truncated)?;
            if load_u8(h, 0) & 0x08 == 0 {
                return Err(PassReason::UnknownInner); // no valid VNI (I flag)
            }
            Ok(Some((off + 8, ETH_P_TEB)))
        }
        Encap::Geneve => {
            let h = bytes(ctx, off, 8).ok_or(PassReason::Truncated)?;
            let b0 = load_u8(h, 0);
            if b0 >> 6 != 0 {
                return Err(PassReason::UnknownInner);
            }
            let opts = (b0 & 0x3f) as usize * 4;
            match load_be16(h, 2) {
                p @ (ETH_P_IP | ETH_P_IPV6 | ETH_P_TEB) => Ok(Some((off + 8 + opts, p))),
                _ => Err(PassReason::UnknownInner),
            }
        }
        Encap::Gtpu => gtpu(ctx, off),
        Encap::Gue => {
            let h = bytes(ctx, off, 4).ok_or(PassReason::Truncated)?;
            let b0 = load_u8(h, 0);
            match b0 >> 6 {
                // Version 1: the IP header itself (its version nibble is 4 or 6).
                1 => Ok(Some((off, ANY_IP))),
                0 if b0 & 0x20 != 0 => Ok(None),
                0 => {
                    let at = off + 4 + (b0 & 0x1f) as usize * 4;
                    match load_u8(h, 1) {
                        IPPROTO_IPIP => Ok(Some((at, ETH_P_IP))),
                        IPPROTO_IPV6 => Ok(Some((at, ETH_P_IPV6))),
                        IPPROTO_GRE => Err(PassReason::TunnelTooDeep),
                        _ => Err(PassReason::UnknownInner),
                    }
                }
                _ => Err(PassReason::UnknownInner),
            }
        }
        // FOU; IP-level kinds never come from the UDP table.
        _ => Ok(Some((off, ANY_IP))),
    }
}

/// A GTP-U header: a G-PDU's payload is an IP packet after the mandatory 8
/// bytes, the optional 4 (sequence, N-PDU, next extension type) and the
/// extension headers (length in 4-byte units, next type in their last byte).
#[inline(always)]
fn gtpu(ctx: &XdpContext, off: usize) -> Result<Option<(usize, u16)>, PassReason> {
    let h = bytes(ctx, off, 8).ok_or(PassReason::Truncated)?;
    let flags = load_u8(h, 0);
    if flags >> 5 != 1 {
        return Err(PassReason::UnknownInner); // not GTPv1
    }
    if load_u8(h, 1) != 255 {
        return Ok(None);
    }
    let mut off = off + 8;
    if flags & 0x07 == 0 {
        return Ok(Some((off, ANY_IP)));
    }
    let o = bytes(ctx, off, 4).ok_or(PassReason::Truncated)?;
    // The next-type byte only means something with the E flag.
    let mut next = if flags & 0x04 != 0 { load_u8(o, 3) } else { 0 };
    off += 4;
    let mut n = 0;
    while n < MAX_GTPU_EXT {
        if next == 0 {
            return Ok(Some((off, ANY_IP)));
        }
        let x = bytes(ctx, off, 4).ok_or(PassReason::Truncated)?;
        let len = load_u8(x, 0) as usize * 4;
        if len == 0 {
            return Err(PassReason::UnknownInner);
        }
        // The last 4 bytes, not the last byte alone (see `inner` on 1-byte checks). Their
        // offset goes through the stack: LLVM would otherwise fold the -4 into the packet
        // pointer, which the verifier rejects as an access before the checked range.
        let at = off + len - 4;
        // SAFETY: a read of a local.
        let at = unsafe { core::ptr::read_volatile(&at) };
        let last = bytes(ctx, at, 4).ok_or(PassReason::Truncated)?;
        next = load_u8(last, 3);
        off += len;
        n += 1;
    }
    if next != 0 {
        return Err(PassReason::ExtHeaderLimit);
    }
    Ok(Some((off, ANY_IP)))
}

/// Ports of a TCP/UDP header at `off`. Fragments hash on addresses only, so all
/// fragments of one datagram land on one CPU.
#[inline(always)]
fn l4(ctx: &XdpContext, off: usize, fragmented: bool, mut t: Tuple) -> Result<Tuple, PassReason> {
    if t.proto != IPPROTO_TCP && t.proto != IPPROTO_UDP {
        return Err(PassReason::UnknownL4);
    }
    if fragmented {
        return Ok(t);
    }
    let h = if t.proto == IPPROTO_TCP { bytes(ctx, off, 20) } else { bytes(ctx, off, 8) };
    let h = h.ok_or(PassReason::Truncated)?;
    t.ports = load_raw32(h, 0);
    t.has_ports = 1;
    Ok(t)
}
