//! A small frame builder for fixtures and the lab generator, in the style of
//! Katran's test packets: `Frame::eth(..).vlan(..).ipv4(..).udp(..).payload(..)`.
//! Lengths and the IPv4 header checksum are filled in by `build`; L4 checksums
//! are left 0 (valid for UDP over IPv4; nothing steer does reads them).

use std::net::{Ipv4Addr, Ipv6Addr};

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;
/// Transparent Ethernet bridging: an Ethernet frame inside GRE or Geneve.
pub const ETH_P_TEB: u16 = 0x6558;

/// Where the protocol number of the next layer goes, once it is known.
#[derive(Clone, Copy, Debug)]
enum Next {
    EtherType(usize),
    IpProto(usize),
    None,
}

#[derive(Clone, Debug)]
pub struct Frame {
    buf: Vec<u8>,
    next: Next,
    ipv4_at: Vec<usize>,
    ipv6_at: Vec<usize>,
    udp_at: Vec<usize>,
}

impl Frame {
    pub fn eth(dst: [u8; 6], src: [u8; 6]) -> Self {
        let mut buf = Vec::with_capacity(128);
        buf.extend_from_slice(&dst);
        buf.extend_from_slice(&src);
        buf.extend_from_slice(&[0, 0]);
        Self { buf, next: Next::EtherType(12), ipv4_at: vec![], ipv6_at: vec![], udp_at: vec![] }
    }

    /// Sets the next-protocol field for a header of this EtherType or IP protocol.
    fn set_next(&mut self, ethertype: u16, ip_proto: u8) {
        match self.next {
            Next::EtherType(at) => self.buf[at..at + 2].copy_from_slice(&ethertype.to_be_bytes()),
            Next::IpProto(at) => self.buf[at] = ip_proto,
            Next::None => {}
        }
    }

    /// An Ethernet header inside a tunnel (VXLAN, GRE or Geneve with TEB).
    pub fn inner_eth(mut self, dst: [u8; 6], src: [u8; 6]) -> Self {
        self.set_next(ETH_P_TEB, 0);
        let at = self.buf.len();
        self.buf.extend_from_slice(&dst);
        self.buf.extend_from_slice(&src);
        self.buf.extend_from_slice(&[0, 0]);
        self.next = Next::EtherType(at + 12);
        self
    }

    /// A GRE header (version 0) with the checksum, key and sequence fields asked for;
    /// its protocol is set by what follows.
    pub fn gre(mut self, csum: bool, key: Option<u32>, seq: Option<u32>) -> Self {
        self.set_next(0, 47);
        let flags: u16 = (csum as u16) << 15 | (key.is_some() as u16) << 13 | (seq.is_some() as u16) << 12;
        let at = self.buf.len();
        self.buf.extend_from_slice(&flags.to_be_bytes());
        self.buf.extend_from_slice(&[0, 0]);
        if csum {
            self.buf.extend_from_slice(&[0; 4]);
        }
        for v in [key, seq].into_iter().flatten() {
            self.buf.extend_from_slice(&v.to_be_bytes());
        }
        self.next = Next::EtherType(at + 2);
        self
    }

    /// Raw GRE flags and protocol (routing, other versions, unknown payloads).
    pub fn gre_raw(mut self, flags: u16, proto: u16) -> Self {
        self.set_next(0, 47);
        self.buf.extend_from_slice(&flags.to_be_bytes());
        self.buf.extend_from_slice(&proto.to_be_bytes());
        self.next = Next::None;
        self
    }

    /// A VXLAN header (I flag set when `valid`); an Ethernet frame follows.
    pub fn vxlan(mut self, vni: u32, valid: bool) -> Self {
        self.buf.push(if valid { 0x08 } else { 0 });
        self.buf.extend_from_slice(&[0, 0, 0]);
        self.buf.extend_from_slice(&(vni << 8).to_be_bytes());
        self.next = Next::None;
        self
    }

    /// A Geneve header with `opt_words` 4-byte words of options; its protocol is
    /// set by what follows (Ethernet: TEB).
    pub fn geneve(mut self, opt_words: u8) -> Self {
        let at = self.buf.len();
        self.buf.extend_from_slice(&[opt_words & 0x3f, 0, 0, 0, 0, 0, 1, 0]);
        self.buf.extend((0..opt_words as usize * 4).map(|i| i as u8));
        self.next = Next::EtherType(at + 2);
        self
    }

    /// A GTP-U header of message `kind` (255: G-PDU); with `seq`, the optional
    /// 4 bytes; each extension header in `ext` is (length in 4-byte units, next type).
    pub fn gtpu(mut self, kind: u8, seq: bool, ext: &[(u8, u8)]) -> Self {
        let e = !ext.is_empty();
        self.buf.push(0x30 | (e as u8) << 2 | (seq as u8) << 1);
        self.buf.push(kind);
        self.buf.extend_from_slice(&[0, 0, 0, 0, 0, 1]);
        if seq || e {
            self.buf.extend_from_slice(&[0, 1, 0, if e { 0x85 } else { 0 }]);
            for (i, (len4, _)) in ext.iter().enumerate() {
                let next = ext.get(i + 1).map_or(0, |_| 0x85);
                let at = self.buf.len();
                self.buf.push(*len4);
                self.buf.resize(at + *len4 as usize * 4 - 1, 0);
                self.buf.push(next);
            }
        }
        self.next = Next::None;
        self
    }

    /// A GUE version 0 header with `hlen` words of optional fields, `control`
    /// for a control message; its protocol is set by what follows.
    pub fn gue(mut self, hlen: u8, control: bool) -> Self {
        let at = self.buf.len();
        self.buf.extend_from_slice(&[(control as u8) << 5 | (hlen & 0x1f), 0, 0, 0]);
        self.buf.resize(at + 4 + hlen as usize * 4, 0);
        self.next = Next::IpProto(at + 1);
        self
    }

    fn set_next_ethertype(&mut self, t: u16) {
        if let Next::EtherType(at) = self.next {
            self.buf[at..at + 2].copy_from_slice(&t.to_be_bytes());
        }
    }

    fn set_next_proto(&mut self, p: u8) {
        if let Next::IpProto(at) = self.next {
            self.buf[at] = p;
        }
    }

    /// An 802.1Q (or, with `ETH_P_8021AD`, 802.1ad) tag.
    pub fn vlan(mut self, tpid: u16, vid: u16) -> Self {
        self.set_next_ethertype(tpid);
        self.buf.extend_from_slice(&(vid & 0x0fff).to_be_bytes());
        let at = self.buf.len();
        self.buf.extend_from_slice(&[0, 0]);
        self.next = Next::EtherType(at);
        self
    }

    /// A non-IP payload with the given EtherType (ARP, LLDP, ...).
    pub fn ethertype(mut self, t: u16, body: &[u8]) -> Self {
        self.set_next_ethertype(t);
        self.buf.extend_from_slice(body);
        self.next = Next::None;
        self
    }

    pub fn ipv4(self, src: Ipv4Addr, dst: Ipv4Addr) -> Self {
        self.ipv4_opts(src, dst, &[])
    }

    /// IPv4 with options (padded to a multiple of 4 bytes).
    pub fn ipv4_opts(mut self, src: Ipv4Addr, dst: Ipv4Addr, options: &[u8]) -> Self {
        self.set_next(ETH_P_IP, 4);
        let at = self.buf.len();
        let opt_len = options.len().div_ceil(4) * 4;
        let ihl = (20 + opt_len) / 4;
        self.buf.push(0x40 | ihl as u8);
        // tos, total length, id, flags (DF) + fragment offset, ttl, protocol, checksum
        self.buf.extend_from_slice(&[0, 0, 0, 0, 0, 0x40, 0, 64, 0, 0, 0]);
        self.buf.extend_from_slice(&src.octets());
        self.buf.extend_from_slice(&dst.octets());
        self.buf.extend_from_slice(options);
        self.buf.resize(at + 20 + opt_len, 0);
        self.ipv4_at.push(at);
        self.next = Next::IpProto(at + 9);
        self
    }

    /// Marks the last IPv4 header as a fragment (offset in 8-byte units).
    pub fn fragment(mut self, offset8: u16, more: bool) -> Self {
        if let Some(&at) = self.ipv4_at.last() {
            let v = (offset8 & 0x1fff) | if more { 0x2000 } else { 0 };
            self.buf[at + 6..at + 8].copy_from_slice(&v.to_be_bytes());
        }
        self
    }

    pub fn ipv6(mut self, src: Ipv6Addr, dst: Ipv6Addr) -> Self {
        self.set_next(ETH_P_IPV6, 41);
        let at = self.buf.len();
        self.buf.extend_from_slice(&[0x60, 0, 0, 0, 0, 0, 0, 64]);
        self.buf.extend_from_slice(&src.octets());
        self.buf.extend_from_slice(&dst.octets());
        self.ipv6_at.push(at);
        self.next = Next::IpProto(at + 6);
        self
    }

    /// An IPv6 extension header of `kind` (0 hop-by-hop, 43 routing, 60
    /// destination options) with `len8` extra 8-byte units.
    pub fn ipv6_ext(mut self, kind: u8, len8: u8) -> Self {
        self.set_next_proto(kind);
        let at = self.buf.len();
        self.buf.extend_from_slice(&[0, len8]);
        self.buf.resize(at + (len8 as usize + 1) * 8, 0);
        self.next = Next::IpProto(at);
        self
    }

    /// An IPv6 fragment header.
    pub fn ipv6_fragment(mut self, offset8: u16, more: bool) -> Self {
        self.set_next_proto(44);
        let at = self.buf.len();
        let v = (offset8 << 3) | more as u16;
        self.buf.extend_from_slice(&[0, 0]);
        self.buf.extend_from_slice(&v.to_be_bytes());
        self.buf.extend_from_slice(&[0, 0, 0, 1]);
        self.next = Next::IpProto(at);
        self
    }

    pub fn tcp(mut self, sport: u16, dport: u16) -> Self {
        self.set_next_proto(6);
        self.buf.extend_from_slice(&sport.to_be_bytes());
        self.buf.extend_from_slice(&dport.to_be_bytes());
        // seq, ack, data offset 5, flags ACK, window.
        self.buf.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x10, 0xff, 0xff, 0, 0, 0, 0]);
        self.next = Next::None;
        self
    }

    pub fn udp(mut self, sport: u16, dport: u16) -> Self {
        self.set_next_proto(17);
        self.udp_at.push(self.buf.len());
        self.buf.extend_from_slice(&sport.to_be_bytes());
        self.buf.extend_from_slice(&dport.to_be_bytes());
        self.buf.extend_from_slice(&[0, 0, 0, 0]);
        self.next = Next::None;
        self
    }

    /// ICMP (or ICMPv6 after an IPv6 header) echo request.
    pub fn icmp_echo(mut self) -> Self {
        let proto = if self.ipv6_at.last() > self.ipv4_at.last() { 58 } else { 1 };
        self.set_next_proto(proto);
        self.buf.extend_from_slice(&[if proto == 58 { 128 } else { 8 }, 0, 0, 0, 0, 1, 0, 1]);
        self.next = Next::None;
        self
    }

    /// Sets the protocol number after the IP header to something arbitrary.
    pub fn ip_proto(mut self, proto: u8) -> Self {
        self.set_next_proto(proto);
        self.next = Next::None;
        self
    }

    pub fn payload(mut self, n: usize) -> Self {
        let start = self.buf.len();
        self.buf.extend((0..n).map(|i| (start + i) as u8));
        self
    }

    /// The frame bytes with lengths and the IPv4 checksum filled in.
    pub fn build(mut self) -> Vec<u8> {
        let len = self.buf.len();
        for &at in &self.ipv4_at {
            let total = (len - at) as u16;
            self.buf[at + 2..at + 4].copy_from_slice(&total.to_be_bytes());
            let ihl = (self.buf[at] & 0x0f) as usize * 4;
            self.buf[at + 10..at + 12].copy_from_slice(&[0, 0]);
            let sum = checksum(&self.buf[at..at + ihl]);
            self.buf[at + 10..at + 12].copy_from_slice(&sum.to_be_bytes());
        }
        for &at in &self.ipv6_at {
            let plen = (len - at - 40) as u16;
            self.buf[at + 4..at + 6].copy_from_slice(&plen.to_be_bytes());
        }
        for &at in &self.udp_at {
            let ulen = (len - at) as u16;
            self.buf[at + 4..at + 6].copy_from_slice(&ulen.to_be_bytes());
        }
        self.buf
    }

    /// Offset of the innermost UDP header's source port, for the lab generator.
    pub fn l4_offset(&self) -> Option<usize> {
        self.udp_at.last().copied()
    }
}

/// The Internet checksum (RFC 1071).
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in data.chunks(2) {
        let word = if chunk.len() == 2 {
            u16::from_be_bytes([chunk[0], chunk[1]])
        } else {
            u16::from_be_bytes([chunk[0], 0])
        };
        sum += word as u32;
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_udp_frame_has_right_lengths_and_checksum() {
        let f = Frame::eth([2; 6], [4; 6])
            .ipv4("198.18.0.1".parse().unwrap(), "198.18.0.2".parse().unwrap())
            .udp(1000, 9)
            .payload(18)
            .build();
        assert_eq!(f.len(), 14 + 20 + 8 + 18);
        assert_eq!(&f[12..14], &[0x08, 0x00]);
        assert_eq!(u16::from_be_bytes([f[16], f[17]]), 46);
        assert_eq!(f[23], 17);
        assert_eq!(&f[20..22], &[0x40, 0], "DF, not a fragment");
        assert_eq!(&f[26..34], &[198, 18, 0, 1, 198, 18, 0, 2]);
        assert_eq!(checksum(&f[14..34]), 0, "a valid header sums to zero");
        assert_eq!(u16::from_be_bytes([f[38], f[39]]), 26);
    }

    #[test]
    fn qinq_ipv6_ext_tcp() {
        let f = Frame::eth([2; 6], [4; 6])
            .vlan(ETH_P_8021AD, 100)
            .vlan(ETH_P_8021Q, 200)
            .ipv6("2001:db8::1".parse().unwrap(), "2001:db8::2".parse().unwrap())
            .ipv6_ext(0, 0)
            .tcp(1, 2)
            .build();
        assert_eq!(&f[12..14], &[0x88, 0xa8]);
        assert_eq!(&f[16..18], &[0x81, 0x00]);
        assert_eq!(&f[20..22], &[0x86, 0xdd]);
        assert_eq!(f[22 + 6], 0, "next header is hop-by-hop");
        assert_eq!(f[22 + 40], 6, "hop-by-hop's next is TCP");
        assert_eq!(u16::from_be_bytes([f[26], f[27]]), 8 + 20);
    }
}
