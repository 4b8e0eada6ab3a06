//! Encapsulations steer looks inside, so that tunnelled flows are hashed on
//! their inner flow (one level deep), and which packets count as tunnelled.
//!
//! IP-level tunnels (IP-in-IP, GRE) are recognised by the outer IP protocol,
//! as the kernel's flow dissector does; UDP tunnels by their destination port,
//! from a short table in [`SteerConfig`]. Both `steer hash` and the XDP
//! program decide with the functions here.

use crate::SteerConfig;

/// A tunnel kind. `#[repr(u8)]` values are what the config table and
/// [`crate::Tuple::encap`] hold (0: not encapsulated).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Encap {
    /// IPv4 or IPv6 directly inside IPv4 or IPv6 (IPIP, SIT/6in4, 4in6, 6in6).
    Ipip = 1,
    /// GRE version 0, with or without checksum, key and sequence number,
    /// carrying IPv4, IPv6 or Ethernet (transparent Ethernet bridging).
    Gre = 2,
    /// VXLAN (UDP, 8-byte header, inner Ethernet).
    Vxlan = 3,
    /// Geneve (UDP, 8-byte header plus options, inner Ethernet or IP).
    Geneve = 4,
    /// GTP-U G-PDUs (UDP, 8-byte header plus optional fields and extension
    /// headers, inner IP). Other GTP-U messages are plain UDP.
    Gtpu = 5,
    /// Foo-over-UDP: an IP header right after the UDP header.
    Fou = 6,
    /// Generic UDP Encapsulation: version 0 (header, then the protocol it
    /// names) or version 1 (IP right after UDP). Control messages are plain UDP.
    Gue = 7,
}

impl Encap {
    pub const ALL: [Encap; 7] =
        [Self::Ipip, Self::Gre, Self::Vxlan, Self::Geneve, Self::Gtpu, Self::Fou, Self::Gue];

    pub fn from_u8(v: u8) -> Option<Self> {
        Self::ALL.iter().copied().find(|e| *e as u8 == v)
    }

    /// The name used on the command line and in output.
    pub fn name(self) -> &'static str {
        match self {
            Self::Ipip => "ipip",
            Self::Gre => "gre",
            Self::Vxlan => "vxlan",
            Self::Geneve => "geneve",
            Self::Gtpu => "gtpu",
            Self::Fou => "fou",
            Self::Gue => "gue",
        }
    }

    /// The IANA port of a UDP tunnel that has one.
    pub fn default_port(self) -> Option<u16> {
        match self {
            Self::Vxlan => Some(4789),
            Self::Geneve => Some(6081),
            Self::Gtpu => Some(2152),
            _ => None,
        }
    }

    /// Whether this is carried over UDP (recognised by port, not protocol).
    pub fn is_udp(self) -> bool {
        !matches!(self, Self::Ipip | Self::Gre)
    }

    /// Bit of [`SteerConfig::inner_ip`] for the IP-level tunnels.
    pub fn ip_bit(self) -> u32 {
        match self {
            Self::Ipip => INNER_IPIP,
            Self::Gre => INNER_GRE,
            _ => 0,
        }
    }
}

/// [`SteerConfig::inner_ip`]: hash IP-in-IP on its inner flow.
pub const INNER_IPIP: u32 = 1;
/// [`SteerConfig::inner_ip`]: hash GRE on its inner flow.
pub const INNER_GRE: u32 = 2;

/// Slots of [`SteerConfig::udp_tunnels`].
pub const MAX_UDP_TUNNELS: usize = 8;

/// IP protocol numbers of the IP-level tunnels.
pub const IPPROTO_IPIP: u8 = 4;
pub const IPPROTO_IPV6: u8 = 41;
pub const IPPROTO_GRE: u8 = 47;

/// One [`SteerConfig::udp_tunnels`] slot: the destination port as the raw
/// network-order 16 bits the packet holds (no swap in the XDP program) in the
/// low half, the [`Encap`] in the high half.
pub fn udp_slot(port: u16, encap: Encap) -> u32 {
    u16::from_ne_bytes(port.to_be_bytes()) as u32 | (encap as u32) << 16
}

impl SteerConfig {
    /// The IP-level tunnel an outer IP protocol means, if its inner flow is hashed.
    #[inline(always)]
    pub fn ip_tunnel(&self, proto: u8) -> Option<Encap> {
        match proto {
            IPPROTO_IPIP | IPPROTO_IPV6 if self.inner_ip & INNER_IPIP != 0 => Some(Encap::Ipip),
            IPPROTO_GRE if self.inner_ip & INNER_GRE != 0 => Some(Encap::Gre),
            _ => None,
        }
    }

    /// The UDP tunnel on destination port `raw_dport` (as the packet holds it), if any.
    /// Slots are filled from the start: the first empty one ends the table.
    #[inline(always)]
    pub fn udp_tunnel(&self, raw_dport: u16) -> Option<Encap> {
        let mut i = 0;
        while i < MAX_UDP_TUNNELS {
            let slot = self.udp_tunnels[i];
            if slot == 0 {
                return None;
            }
            if slot as u16 == raw_dport {
                return Encap::from_u8((slot >> 16) as u8);
            }
            i += 1;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn udp_table_finds_ports_in_packet_order_and_stops_at_the_first_empty_slot() {
        let mut cfg = SteerConfig::default();
        cfg.udp_tunnels[0] = udp_slot(4789, Encap::Vxlan);
        cfg.udp_tunnels[1] = udp_slot(5555, Encap::Fou);
        cfg.udp_tunnels[3] = udp_slot(6081, Encap::Geneve);
        let raw = |p: u16| u16::from_ne_bytes(p.to_be_bytes());
        assert_eq!(cfg.udp_tunnel(raw(4789)), Some(Encap::Vxlan));
        assert_eq!(cfg.udp_tunnel(raw(5555)), Some(Encap::Fou));
        assert_eq!(cfg.udp_tunnel(raw(6081)), None, "behind an empty slot");
        assert_eq!(cfg.udp_tunnel(raw(53)), None);
    }

    #[test]
    fn ip_tunnels_follow_their_bits() {
        let cfg = SteerConfig { inner_ip: INNER_GRE, ..Default::default() };
        assert_eq!(cfg.ip_tunnel(IPPROTO_GRE), Some(Encap::Gre));
        assert_eq!(cfg.ip_tunnel(IPPROTO_IPIP), None);
        let cfg = SteerConfig { inner_ip: INNER_IPIP, ..Default::default() };
        assert_eq!(cfg.ip_tunnel(IPPROTO_IPV6), Some(Encap::Ipip));
        assert_eq!(cfg.ip_tunnel(6), None);
    }

    #[test]
    fn names_round_trip() {
        for e in Encap::ALL {
            assert_eq!(Encap::from_u8(e as u8), Some(e));
        }
        assert_eq!(Encap::from_u8(0), None);
    }
}
