//! rtnetlink: every request steer makes of NETLINK_ROUTE, encoded and decoded by
//! `netlink-packet-route` and sent on a blocking `netlink-sys` socket.
//!
//! Blocking, not `rtnetlink`'s async handle: the callers are synchronous (the
//! NIC layer, the restore path, lab threads that have just entered a network
//! namespace), and a socket follows the namespace of the thread that opens it,
//! so each caller opens its own [`Route`] where it stands.

use std::{
    io,
    net::{Ipv4Addr, Ipv6Addr},
    os::fd::RawFd,
};

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST,
};
use netlink_packet_route::{
    address::{AddressAttribute, AddressHeaderFlags, AddressMessage},
    link::{
        InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage, LinkXdp, XdpAttached,
    },
    neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState},
    AddressFamily, RouteNetlinkMessage,
};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// Which hook an XDP program sits on, as IFLA_XDP_ATTACHED reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpMode {
    /// XDP_ATTACHED_DRV: native.
    Driver,
    /// XDP_ATTACHED_SKB: generic.
    Skb,
    /// Offloaded, or several programs at once.
    Other,
}

/// IFLA_XDP of one link: the mode and program netlink reports, if any.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkXdpState {
    pub mode: XdpMode,
    pub prog_id: u32,
}

/// What steer reads of one link by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub mtu: Option<u32>,
    /// `rx_packets` of IFLA_STATS (the 32-bit counters getifaddrs(3) reports).
    pub rx_packets: Option<u32>,
}

/// One end of a veth pair to create: its name and, where given, its MAC, the
/// network namespace it goes into and its queue counts (otherwise: a random
/// MAC, the namespace [`Route::new_veth`] says, one queue each way).
#[derive(Clone, Copy, Debug)]
pub struct VethEnd<'a> {
    pub name: &'a str,
    pub mac: Option<[u8; 6]>,
    pub netns_fd: Option<RawFd>,
    /// (tx, rx): IFLA_NUM_TX_QUEUES and IFLA_NUM_RX_QUEUES.
    pub queues: Option<(u32, u32)>,
}

impl<'a> VethEnd<'a> {
    pub fn new(name: &'a str) -> Self {
        Self { name, mac: None, netns_fd: None, queues: None }
    }

    pub fn mac(self, mac: [u8; 6]) -> Self {
        Self { mac: Some(mac), ..self }
    }

    /// Puts this end into the network namespace `fd` (which must stay open until the request is made).
    pub fn netns(self, fd: RawFd) -> Self {
        Self { netns_fd: Some(fd), ..self }
    }

    pub fn queues(self, tx: u32, rx: u32) -> Self {
        Self { queues: Some((tx, rx)), ..self }
    }

    fn attributes(&self) -> Vec<LinkAttribute> {
        let mut a = vec![LinkAttribute::IfName(self.name.to_string())];
        if let Some(mac) = self.mac {
            a.push(LinkAttribute::Address(mac.to_vec()));
        }
        if let Some(fd) = self.netns_fd {
            a.push(LinkAttribute::NetNsFd(fd));
        }
        if let Some((tx, rx)) = self.queues {
            a.push(LinkAttribute::NumTxQueues(tx));
            a.push(LinkAttribute::NumRxQueues(rx));
        }
        a
    }
}

/// A NETLINK_ROUTE socket in the network namespace of the thread that opened it.
pub struct Route {
    sock: Socket,
    seq: u32,
}

impl Route {
    pub fn open() -> io::Result<Self> {
        Ok(Self { sock: Socket::new(NETLINK_ROUTE)?, seq: 0 })
    }

    /// Sends `msg` with NLM_F_REQUEST | NLM_F_ACK | `flags` and collects the
    /// replies to it up to the kernel's acknowledgement; a NACK is its errno.
    fn request(&mut self, msg: RouteNetlinkMessage, flags: u16) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        header.sequence_number = self.seq;
        let mut nl = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
        nl.finalize();
        let mut buf = vec![0u8; nl.buffer_len()];
        nl.serialize(&mut buf);
        self.sock.send_to(&buf, &SocketAddr::new(0, 0), 0)?;

        let mut replies = Vec::new();
        let mut rx: Vec<u8> = Vec::with_capacity(1 << 16);
        loop {
            rx.clear();
            let (n, _) = self.sock.recv_from(&mut rx, 0)?;
            let mut at = 0;
            while at < n {
                let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&rx[at..n])
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                let len = reply.header.length as usize;
                let ours = reply.header.sequence_number == self.seq;
                match reply.payload {
                    _ if !ours => {}
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(replies),
                            Some(_) => Err(e.to_io()),
                        };
                    }
                    NetlinkPayload::InnerMessage(m) => replies.push(m),
                    _ => {}
                }
                if len == 0 {
                    break;
                }
                at += len.next_multiple_of(4);
            }
        }
    }

    /// RTM_GETLINK by index (0 with `name`: by name). ENODEV when there is none.
    fn get_link(&mut self, index: u32, name: Option<&str>) -> io::Result<LinkMessage> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        if let Some(name) = name {
            m.attributes.push(LinkAttribute::IfName(name.to_string()));
        }
        self.request(RouteNetlinkMessage::GetLink(m), 0)?
            .into_iter()
            .find_map(|r| match r {
                RouteNetlinkMessage::NewLink(l) => Some(l),
                _ => None,
            })
            .ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidData, "RTM_GETLINK: no RTM_NEWLINK in the reply")
            })
    }

    /// Index, MTU and rx packet count of the link called `name`; None if there is none.
    pub fn link_by_name(&mut self, name: &str) -> io::Result<Option<Link>> {
        let l = match self.get_link(0, Some(name)) {
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => return Ok(None),
            other => other?,
        };
        let mut link = Link { index: l.header.index, mtu: None, rx_packets: None };
        for a in l.attributes {
            match a {
                LinkAttribute::Mtu(m) => link.mtu = Some(m),
                LinkAttribute::Stats(s) => link.rx_packets = Some(s.rx_packets),
                _ => {}
            }
        }
        Ok(Some(link))
    }

    /// IFLA_XDP of link `index`: None when no program is attached.
    pub fn link_xdp(&mut self, index: u32) -> io::Result<Option<LinkXdpState>> {
        let l = self.get_link(index, None)?;
        let Some(xdp) = l.attributes.into_iter().find_map(|a| match a {
            LinkAttribute::Xdp(x) => Some(x),
            _ => None,
        }) else {
            return Ok(None);
        };
        let mut mode = None;
        let mut prog_id = 0;
        for x in xdp {
            match x {
                LinkXdp::Attached(XdpAttached::None) => return Ok(None),
                LinkXdp::Attached(XdpAttached::Driver) => mode = Some(XdpMode::Driver),
                LinkXdp::Attached(XdpAttached::SocketBuffer) => mode = Some(XdpMode::Skb),
                LinkXdp::Attached(_) => mode = Some(XdpMode::Other),
                LinkXdp::ProgId(id) => prog_id = id,
                _ => {}
            }
        }
        Ok(mode.map(|mode| LinkXdpState { mode, prog_id }))
    }

    /// RTM_SETLINK with IFLA_XDP { FD, FLAGS }: attaches program `fd` to link
    /// `index` in the mode `flags` says (XDP_FLAGS_*), or detaches with -1.
    /// Kept here, not in aya: aya 0.14 attaches over netlink only to load its
    /// own program, and cannot hand back one it did not load.
    pub fn set_link_xdp_fd(&mut self, index: u32, fd: RawFd, flags: u32) -> io::Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.attributes.push(LinkAttribute::Xdp(vec![LinkXdp::Fd(fd), LinkXdp::Flags(flags)]));
        self.request(RouteNetlinkMessage::SetLink(m), 0).map(drop)
    }

    /// A veth pair of ends `a` and `b`, each in the namespace it names. An end
    /// that names none goes into the socket's namespace or, on some kernels
    /// for `b`, into `a`'s: name both where it matters.
    pub fn new_veth(&mut self, a: VethEnd<'_>, b: VethEnd<'_>) -> io::Result<()> {
        let mut peer = LinkMessage::default();
        peer.attributes = b.attributes();
        let mut m = LinkMessage::default();
        m.attributes = a.attributes();
        m.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
        ]));
        self.request(RouteNetlinkMessage::NewLink(m), NLM_F_CREATE | NLM_F_EXCL).map(drop)
    }

    /// Deletes link `index` (a veth takes its peer with it).
    pub fn del_link(&mut self, index: u32) -> io::Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        self.request(RouteNetlinkMessage::DelLink(m), 0).map(drop)
    }

    /// Sets the MAC address of link `index`.
    pub fn set_mac(&mut self, index: u32, mac: [u8; 6]) -> io::Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.attributes.push(LinkAttribute::Address(mac.to_vec()));
        self.request(RouteNetlinkMessage::SetLink(m), 0).map(drop)
    }

    /// Sets link `index` administratively up.
    pub fn set_up(&mut self, index: u32) -> io::Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.header.flags = LinkFlags::Up;
        m.header.change_mask = LinkFlags::Up;
        self.request(RouteNetlinkMessage::NewLink(m), 0).map(drop)
    }

    /// Adds `addr/prefix` to link `index`.
    pub fn add_addr4(&mut self, index: u32, addr: Ipv4Addr, prefix: u8) -> io::Result<()> {
        let mut m = AddressMessage::default();
        m.header.family = AddressFamily::Inet;
        m.header.prefix_len = prefix;
        m.header.index = index;
        m.attributes = vec![AddressAttribute::Local(addr.into()), AddressAttribute::Address(addr.into())];
        self.request(RouteNetlinkMessage::NewAddress(m), NLM_F_CREATE | NLM_F_EXCL).map(drop)
    }

    /// Adds `addr/prefix` to link `index`; with `nodad` (IFA_F_NODAD) it is
    /// usable at once instead of tentative through duplicate address detection.
    pub fn add_addr6(&mut self, index: u32, addr: Ipv6Addr, prefix: u8, nodad: bool) -> io::Result<()> {
        let mut m = AddressMessage::default();
        m.header.family = AddressFamily::Inet6;
        m.header.prefix_len = prefix;
        m.header.index = index;
        if nodad {
            m.header.flags = AddressHeaderFlags::Nodad;
        }
        m.attributes = vec![AddressAttribute::Local(addr.into()), AddressAttribute::Address(addr.into())];
        self.request(RouteNetlinkMessage::NewAddress(m), NLM_F_CREATE | NLM_F_EXCL).map(drop)
    }

    /// A permanent neighbour entry `addr` -> `mac` on link `index`.
    pub fn add_neigh4(&mut self, index: u32, addr: Ipv4Addr, mac: [u8; 6]) -> io::Result<()> {
        let mut m = NeighbourMessage::default();
        m.header.family = AddressFamily::Inet;
        m.header.ifindex = index;
        m.header.state = NeighbourState::Permanent;
        m.attributes = vec![
            NeighbourAttribute::Destination(NeighbourAddress::Inet(addr)),
            NeighbourAttribute::LinkLayerAddress(mac.to_vec()),
        ];
        self.request(RouteNetlinkMessage::NewNeighbour(m), NLM_F_CREATE | NLM_F_EXCL).map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_by_name_and_a_missing_link() {
        let mut nl = Route::open().unwrap();
        let lo = nl.link_by_name("lo").unwrap().expect("lo exists");
        assert_eq!(lo.index, 1);
        assert!(lo.mtu.is_some() && lo.rx_packets.is_some(), "{lo:?}");
        assert_eq!(nl.link_by_name("steer-nope0").unwrap(), None);
        // One socket serves request after request.
        assert_eq!(nl.link_by_name("lo").unwrap().map(|l| l.index), Some(1));
    }

    #[test]
    fn a_missing_index_is_its_errno() {
        let e = Route::open().unwrap().link_xdp(u32::MAX >> 1).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENODEV), "{e}");
    }
}
