//! From frame to flow tuple: Ethernet, up to two VLAN tags, IPv4 or IPv6 with
//! a bounded walk over extension headers, then TCP/UDP ports.
//!
//! Every access is checked against `data_end` with the packet pointer itself
//! (`data + off + len > data_end`): the verifier only learns a packet range
//! from comparisons of packet pointers.

use aya_ebpf::programs::XdpContext;
use steer_common::{
    tuple::{IPPROTO_TCP, IPPROTO_UDP},
    PassReason, Tuple,
};

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;

/// IPv6 extension headers walked before giving up (`ExtHeaderLimit`).
const MAX_EXT_HEADERS: usize = 6;

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

pub fn parse(ctx: &XdpContext) -> Result<Tuple, PassReason> {
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
    match proto {
        ETH_P_IP => ipv4(ctx, off),
        ETH_P_IPV6 => ipv6(ctx, off),
        _ => Err(PassReason::NonIp),
    }
}

#[inline(always)]
fn ipv4(ctx: &XdpContext, off: usize) -> Result<Tuple, PassReason> {
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
    l4(ctx, off + ihl, fragmented, t)
}

#[inline(always)]
fn ipv6(ctx: &XdpContext, off: usize) -> Result<Tuple, PassReason> {
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
    l4(ctx, off, fragmented, t)
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
