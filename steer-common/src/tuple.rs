//! The flow tuple: what the XDP program extracts from a packet and hashes.

/// IP protocol number of TCP.
pub const IPPROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
pub const IPPROTO_UDP: u8 = 17;

/// A flow as seen on the wire, in packet direction (source = sender).
///
/// Addresses and ports are kept as raw words exactly as loaded from the packet
/// (network byte order in memory), so the eBPF side copies without swapping and
/// both sides hash the same bits. An IPv4 address occupies word 0 only.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Tuple {
    pub saddr: [u32; 4],
    pub daddr: [u32; 4],
    /// Source and destination port as one raw 32-bit load of the first four
    /// bytes of the L4 header; 0 when `has_ports` is 0.
    pub ports: u32,
    pub proto: u8,
    /// 4 or 6.
    pub family: u8,
    /// 0 for fragments (every fragment of a datagram must hash alike, and only
    /// the first one carries ports) and for anything without ports.
    pub has_ports: u8,
    /// The [`crate::Encap`] this flow was carried in (its inner flow), 0 for none.
    /// Not hashed: a flow hashes alike inside a tunnel and out.
    pub encap: u8,
}

impl Tuple {
    /// Builds a tuple from addresses in host types, as `steer hash` and the tests do.
    pub fn new(
        src: core::net::IpAddr,
        sport: u16,
        dst: core::net::IpAddr,
        dport: u16,
        proto: u8,
    ) -> Option<Self> {
        use core::net::IpAddr;
        let (saddr, daddr, family) = match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                ([u32::from_ne_bytes(s.octets()), 0, 0, 0], [u32::from_ne_bytes(d.octets()), 0, 0, 0], 4)
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => (words(&s.octets()), words(&d.octets()), 6),
            _ => return None,
        };
        Some(Self { saddr, daddr, ports: raw_ports(sport, dport), proto, family, has_ports: 1, encap: 0 })
    }

    /// The same flow without ports (how fragments are hashed).
    pub fn without_ports(mut self) -> Self {
        self.ports = 0;
        self.has_ports = 0;
        self
    }

    /// Source port in host order.
    pub fn sport(&self) -> u16 {
        u16::from_be_bytes([self.ports.to_ne_bytes()[0], self.ports.to_ne_bytes()[1]])
    }

    /// Destination port in host order.
    pub fn dport(&self) -> u16 {
        u16::from_be_bytes([self.ports.to_ne_bytes()[2], self.ports.to_ne_bytes()[3]])
    }
}

/// The raw 32-bit word a packet holds at the start of its TCP/UDP header.
pub fn raw_ports(sport: u16, dport: u16) -> u32 {
    let s = sport.to_be_bytes();
    let d = dport.to_be_bytes();
    u32::from_ne_bytes([s[0], s[1], d[0], d[1]])
}

fn words(b: &[u8; 16]) -> [u32; 4] {
    [
        u32::from_ne_bytes([b[0], b[1], b[2], b[3]]),
        u32::from_ne_bytes([b[4], b[5], b[6], b[7]]),
        u32::from_ne_bytes([b[8], b[9], b[10], b[11]]),
        u32::from_ne_bytes([b[12], b[13], b[14], b[15]]),
    ]
}
