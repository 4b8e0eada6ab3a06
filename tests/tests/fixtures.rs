//! The XDP program in the kernel, one crafted frame per packet class, through
//! BPF_PROG_TEST_RUN (Katran style: a row per case). For every frame we check
//! the verdict, that the frame is untouched, why it was passed, and for
//! redirects that the CPU chosen equals what `steer hash` computes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use aya::{
    maps::{Array, PerCpuArray},
    Ebpf,
};
use steer::{
    config::{HashArg, HashSettings, Spread},
    inner::InnerSettings,
    loader::{self, PASS_PROG, STEER_PROG},
    packet::{Frame, ETH_P_8021AD, ETH_P_8021Q, ETH_P_ARP},
    rfs::{self, RfsSettings},
    stats::Snapshot,
    testrun,
};
use steer_common::{
    names::map,
    tuple::{IPPROTO_TCP, IPPROTO_UDP},
    Encap, FlowKey, FlowSlot, IdleWatch, PassReason, RfsCounters, Tuple, QUIET_NS,
};
use steer_tests::{pin_to_cpu, require_root};

const XDP_PASS: u32 = 2;
const XDP_REDIRECT: u32 = 4;

const MAC_A: [u8; 6] = [2, 0, 0, 0, 0, 1];
const MAC_B: [u8; 6] = [2, 0, 0, 0, 0, 2];

enum Expect {
    Steer(Tuple),
    Pass(PassReason),
}

struct Fixture {
    name: String,
    frame: Vec<u8>,
    expect: Expect,
}

fn v4(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}
fn v6(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}
fn tuple(src: &str, sport: u16, dst: &str, dport: u16, proto: u8) -> Tuple {
    Tuple::new(src.parse::<IpAddr>().unwrap(), sport, dst.parse::<IpAddr>().unwrap(), dport, proto).unwrap()
}
fn eth() -> Frame {
    Frame::eth(MAC_B, MAC_A)
}

fn fixtures() -> Vec<Fixture> {
    let (a4, b4) = ("198.18.0.1", "198.18.0.2");
    let (a6, b6) = ("2001:db8::1", "2001:db8::2");
    let mut f = vec![];
    let mut add = |name: &str, frame: Vec<u8>, expect: Expect| {
        f.push(Fixture { name: name.to_string(), frame, expect })
    };
    let t4 = tuple(a4, 40000, b4, 80, IPPROTO_TCP);
    let u4 = tuple(a4, 5353, b4, 53, IPPROTO_UDP);
    let t6 = tuple(a6, 40000, b6, 443, IPPROTO_TCP);
    let u6 = tuple(a6, 5353, b6, 53, IPPROTO_UDP);

    add("ipv4 tcp", eth().ipv4(v4(a4), v4(b4)).tcp(40000, 80).payload(10).build(), Expect::Steer(t4));
    add("ipv4 udp", eth().ipv4(v4(a4), v4(b4)).udp(5353, 53).payload(10).build(), Expect::Steer(u4));
    add("ipv6 tcp", eth().ipv6(v6(a6), v6(b6)).tcp(40000, 443).build(), Expect::Steer(t6));
    add("ipv6 udp", eth().ipv6(v6(a6), v6(b6)).udp(5353, 53).payload(3).build(), Expect::Steer(u6));
    add(
        "vlan ipv4 tcp",
        eth().vlan(ETH_P_8021Q, 10).ipv4(v4(a4), v4(b4)).tcp(40000, 80).build(),
        Expect::Steer(t4),
    );
    add(
        "qinq ipv6 udp",
        eth().vlan(ETH_P_8021AD, 10).vlan(ETH_P_8021Q, 20).ipv6(v6(a6), v6(b6)).udp(5353, 53).build(),
        Expect::Steer(u6),
    );
    add(
        "qinq ipv4 tcp",
        eth().vlan(ETH_P_8021Q, 10).vlan(ETH_P_8021Q, 20).ipv4(v4(a4), v4(b4)).tcp(40000, 80).build(),
        Expect::Steer(t4),
    );
    add(
        "ipv4 options (timestamp, 12 bytes) tcp",
        eth().ipv4_opts(v4(a4), v4(b4), &[0x44, 12, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0]).tcp(40000, 80).build(),
        Expect::Steer(t4),
    );
    add(
        "ipv4 maximal options (40 bytes) udp",
        eth().ipv4_opts(v4(a4), v4(b4), &[1; 40]).udp(5353, 53).build(),
        Expect::Steer(u4),
    );
    add(
        "ipv4 first fragment udp: addresses only",
        eth().ipv4(v4(a4), v4(b4)).fragment(0, true).udp(5353, 53).payload(64).build(),
        Expect::Steer(u4.without_ports()),
    );
    add(
        "ipv4 later fragment udp: addresses only",
        eth().ipv4(v4(a4), v4(b4)).fragment(185, false).ip_proto(IPPROTO_UDP).payload(40).build(),
        Expect::Steer(u4.without_ports()),
    );
    add(
        "ipv4 later fragment, 3 bytes of payload: addresses only",
        eth().ipv4(v4(a4), v4(b4)).fragment(3, true).ip_proto(IPPROTO_TCP).payload(3).build(),
        Expect::Steer(t4.without_ports()),
    );
    add(
        "ipv6 hop-by-hop + destination options tcp",
        eth().ipv6(v6(a6), v6(b6)).ipv6_ext(0, 0).ipv6_ext(60, 1).tcp(40000, 443).build(),
        Expect::Steer(t6),
    );
    add(
        "ipv6 routing header udp",
        eth().ipv6(v6(a6), v6(b6)).ipv6_ext(43, 2).udp(5353, 53).build(),
        Expect::Steer(u6),
    );
    add(
        "ipv6 first fragment udp: addresses only",
        eth().ipv6(v6(a6), v6(b6)).ipv6_fragment(0, true).udp(5353, 53).payload(64).build(),
        Expect::Steer(u6.without_ports()),
    );
    add(
        "ipv6 later fragment: addresses only",
        eth().ipv6(v6(a6), v6(b6)).ipv6_fragment(100, false).ip_proto(IPPROTO_UDP).payload(16).build(),
        Expect::Steer(u6.without_ports()),
    );
    add(
        "ipv6 six extension headers tcp (the most steer walks)",
        (0..6).fold(eth().ipv6(v6(a6), v6(b6)), |fr, _| fr.ipv6_ext(60, 0)).tcp(40000, 443).build(),
        Expect::Steer(t6),
    );
    add(
        "ipv6 seven extension headers: pass",
        (0..7).fold(eth().ipv6(v6(a6), v6(b6)), |fr, _| fr.ipv6_ext(60, 0)).tcp(40000, 443).build(),
        Expect::Pass(PassReason::ExtHeaderLimit),
    );
    add(
        "arp: pass",
        eth().ethertype(ETH_P_ARP, &[0, 1, 8, 0, 6, 4, 0, 1]).payload(20).build(),
        Expect::Pass(PassReason::NonIp),
    );
    add(
        "vlan arp: pass",
        eth().vlan(ETH_P_8021Q, 5).ethertype(ETH_P_ARP, &[0; 28]).build(),
        Expect::Pass(PassReason::NonIp),
    );
    add(
        "icmp: pass",
        eth().ipv4(v4(a4), v4(b4)).icmp_echo().payload(8).build(),
        Expect::Pass(PassReason::UnknownL4),
    );
    add("icmpv6: pass", eth().ipv6(v6(a6), v6(b6)).icmp_echo().build(), Expect::Pass(PassReason::UnknownL4));
    add(
        "sctp: pass",
        eth().ipv4(v4(a4), v4(b4)).ip_proto(132).payload(12).build(),
        Expect::Pass(PassReason::UnknownL4),
    );
    let mut bad_ihl = eth().ipv4(v4(a4), v4(b4)).tcp(1, 2).build();
    bad_ihl[14] = 0x44; // IHL 4 (16 bytes) is below the minimum
    add("ipv4 ihl 4: pass", bad_ihl, Expect::Pass(PassReason::BadIpHeader));
    let mut bad_ver = eth().ipv4(v4(a4), v4(b4)).tcp(1, 2).build();
    bad_ver[14] = 0x65; // EtherType IPv4, version 6
    add("ipv4 ethertype, version 6: pass", bad_ver, Expect::Pass(PassReason::BadIpHeader));
    let mut bad_ver6 = eth().ipv6(v6(a6), v6(b6)).tcp(1, 2).build();
    bad_ver6[14] = 0x45;
    add("ipv6 ethertype, version 4: pass", bad_ver6, Expect::Pass(PassReason::BadIpHeader));

    // Truncated at every header boundary (and inside each header).
    let full4 = eth().vlan(ETH_P_8021Q, 7).ipv4_opts(v4(a4), v4(b4), &[1; 8]).tcp(40000, 80).build();
    // eth 14 | vlan 18 | ipv4 base 38 | options 46 | tcp 66
    for cut in [14, 16, 18, 30, 38, 42, 46, 50, 65] {
        add(
            &format!("vlan ipv4+opts tcp cut at {cut}: pass"),
            full4[..cut].to_vec(),
            Expect::Pass(PassReason::Truncated),
        );
    }
    let full6 = eth().ipv6(v6(a6), v6(b6)).ipv6_ext(0, 1).ipv6_fragment(0, false).udp(5353, 53).build();
    // eth 14 | ipv6 54 | hop-by-hop 70 | fragment 78 | udp 86
    for cut in [20, 53, 54, 55, 69, 70, 77, 78, 85] {
        add(
            &format!("ipv6 ext udp cut at {cut}: pass"),
            full6[..cut].to_vec(),
            Expect::Pass(PassReason::Truncated),
        );
    }
    f.extend(tunnel_fixtures());
    f
}

/// `t` as carried inside tunnel `e` (what the XDP program reports).
fn inside(mut t: Tuple, e: Encap) -> Tuple {
    t.encap = e as u8;
    t
}

/// Tunnels under the default `--inner auto` plus `--inner-udp-ports 5555=fou,6080=gue`
/// (see [`tunnel_settings`]): each hashed on its inner flow, as the kernel's
/// flow dissector does for IP-in-IP and GRE.
fn tunnel_fixtures() -> Vec<Fixture> {
    let (o4a, o4b) = (v4("192.0.2.1"), v4("192.0.2.2"));
    let (o6a, o6b) = (v6("2001:db8:ffff::1"), v6("2001:db8:ffff::2"));
    let (a4, b4) = ("10.1.0.1", "10.1.0.2");
    let (a6, b6) = ("fd00::1", "fd00::2");
    let ti4 = tuple(a4, 33000, b4, 443, IPPROTO_TCP);
    let ui4 = tuple(a4, 33001, b4, 53, IPPROTO_UDP);
    let ti6 = tuple(a6, 33002, b6, 80, IPPROTO_TCP);
    let ui6 = tuple(a6, 33003, b6, 4433, IPPROTO_UDP);
    let o4 = || eth().ipv4(o4a, o4b);
    let o6 = || eth().ipv6(o6a, o6b);
    let mut f = vec![];
    let mut add = |name: &str, frame: Vec<u8>, expect: Expect| {
        f.push(Fixture { name: name.to_string(), frame, expect })
    };
    use Encap::*;
    let steer = |t: Tuple, e: Encap| Expect::Steer(inside(t, e));

    // IP-in-IP: 4in4, 6in4 (SIT), 4in6, 6in6.
    add("ipip 4in4 tcp", o4().ipv4(v4(a4), v4(b4)).tcp(33000, 443).build(), steer(ti4, Ipip));
    add("sit 6in4 udp", o4().ipv6(v6(a6), v6(b6)).udp(33003, 4433).build(), steer(ui6, Ipip));
    add("ipip 4in6 udp", o6().ipv4(v4(a4), v4(b4)).udp(33001, 53).build(), steer(ui4, Ipip));
    add(
        "ipip 6in6 tcp, inner extension header",
        o6().ipv6(v6(a6), v6(b6)).ipv6_ext(60, 0).tcp(33002, 80).build(),
        steer(ti6, Ipip),
    );
    add(
        "ipip outer fragment: outer addresses only",
        o4().fragment(0, true).ipv4(v4(a4), v4(b4)).tcp(33000, 443).build(),
        Expect::Steer(Tuple::new(o4a.into(), 0, o4b.into(), 0, 4).unwrap().without_ports()),
    );
    // GRE: no options, every option, IPv6 inside and outside, Ethernet inside.
    add(
        "gre ipv4 tcp",
        o4().gre(false, None, None).ipv4(v4(a4), v4(b4)).tcp(33000, 443).build(),
        steer(ti4, Gre),
    );
    add(
        "gre csum+key+seq ipv4 udp",
        o4().gre(true, Some(7), Some(9)).ipv4(v4(a4), v4(b4)).udp(33001, 53).build(),
        steer(ui4, Gre),
    );
    add(
        "gre over ipv6, key, ipv6 tcp",
        o6().gre(false, Some(1), None).ipv6(v6(a6), v6(b6)).tcp(33002, 80).build(),
        steer(ti6, Gre),
    );
    add(
        "gre teb (gretap) ipv4 tcp",
        o4().gre(false, Some(3), None).inner_eth(MAC_A, MAC_B).ipv4(v4(a4), v4(b4)).tcp(33000, 443).build(),
        steer(ti4, Gre),
    );
    // UDP tunnels on their IANA ports.
    add(
        "vxlan ipv4 tcp",
        o4().udp(40000, 4789)
            .vxlan(42, true)
            .inner_eth(MAC_A, MAC_B)
            .ipv4(v4(a4), v4(b4))
            .tcp(33000, 443)
            .build(),
        steer(ti4, Vxlan),
    );
    add(
        "vxlan over ipv6, ipv6 udp",
        o6().udp(40001, 4789)
            .vxlan(42, true)
            .inner_eth(MAC_A, MAC_B)
            .ipv6(v6(a6), v6(b6))
            .udp(33003, 4433)
            .build(),
        steer(ui6, Vxlan),
    );
    add(
        "geneve with 8 bytes of options, ethernet, ipv4 udp",
        o4().udp(40002, 6081).geneve(2).inner_eth(MAC_A, MAC_B).ipv4(v4(a4), v4(b4)).udp(33001, 53).build(),
        steer(ui4, Geneve),
    );
    add(
        "geneve ipv6 payload",
        o6().udp(40003, 6081).geneve(0).ipv6(v6(a6), v6(b6)).tcp(33002, 80).build(),
        steer(ti6, Geneve),
    );
    add(
        "gtp-u g-pdu ipv4 udp",
        o4().udp(2152, 2152).gtpu(255, false, &[]).ipv4(v4(a4), v4(b4)).udp(33001, 53).build(),
        steer(ui4, Gtpu),
    );
    add(
        "gtp-u seq + pdu session container, ipv6 tcp",
        o4().udp(2152, 2152).gtpu(255, true, &[(1, 0), (2, 0)]).ipv6(v6(a6), v6(b6)).tcp(33002, 80).build(),
        steer(ti6, Gtpu),
    );
    add(
        "gtp-u echo request: the outer flow",
        o4().udp(2152, 2152).gtpu(1, true, &[]).build(),
        Expect::Steer(Tuple::new(o4a.into(), 2152, o4b.into(), 2152, IPPROTO_UDP).unwrap()),
    );
    // UDP tunnels on ports named by --inner-udp-ports.
    add(
        "fou 5555 ipv4 tcp",
        o4().udp(40004, 5555).ipv4(v4(a4), v4(b4)).tcp(33000, 443).build(),
        steer(ti4, Fou),
    );
    add(
        "fou 5555 ipv6 udp",
        o4().udp(40004, 5555).ipv6(v6(a6), v6(b6)).udp(33003, 4433).build(),
        steer(ui6, Fou),
    );
    add(
        "gue v0 6080, 4 bytes of fields, ipv6 tcp",
        o4().udp(40005, 6080).gue(1, false).ipv6(v6(a6), v6(b6)).tcp(33002, 80).build(),
        steer(ti6, Gue),
    );
    add(
        "gue v1 6080 ipv4 udp",
        o4().udp(40005, 6080).ipv4(v4(a4), v4(b4)).udp(33001, 53).build(),
        steer(ui4, Gue),
    );
    add(
        "gue control message: the outer flow",
        o4().udp(40005, 6080).gue(0, true).payload(8).build(),
        Expect::Steer(Tuple::new(o4a.into(), 40005, o4b.into(), 6080, IPPROTO_UDP).unwrap()),
    );
    add(
        "udp to 8472 (not a tunnel port here): the outer flow",
        o4().udp(40006, 8472).vxlan(1, true).inner_eth(MAC_A, MAC_B).ipv4(v4(a4), v4(b4)).tcp(1, 2).build(),
        Expect::Steer(Tuple::new(o4a.into(), 40006, o4b.into(), 8472, IPPROTO_UDP).unwrap()),
    );
    // What stays unparsed.
    add(
        "gre with routing: pass",
        o4().gre_raw(0x4000, 0x0800).payload(24).build(),
        Expect::Pass(PassReason::UnknownInner),
    );
    add(
        "gre version 1 (pptp): pass",
        o4().gre_raw(0x2001, 0x880b).payload(24).build(),
        Expect::Pass(PassReason::UnknownInner),
    );
    add(
        "gre mpls: pass",
        o4().gre_raw(0, 0x8847).payload(24).build(),
        Expect::Pass(PassReason::UnknownInner),
    );
    add(
        "vxlan arp inside: pass",
        o4().udp(1, 4789).vxlan(1, true).inner_eth(MAC_A, MAC_B).ethertype(ETH_P_ARP, &[0; 28]).build(),
        Expect::Pass(PassReason::UnknownInner),
    );
    add(
        "vxlan without the I flag: pass",
        o4().udp(1, 4789).vxlan(1, false).inner_eth(MAC_A, MAC_B).ipv4(v4(a4), v4(b4)).tcp(1, 2).build(),
        Expect::Pass(PassReason::UnknownInner),
    );
    add(
        "fou, not ip inside: pass",
        o4().udp(1, 5555).payload(24).build(),
        Expect::Pass(PassReason::UnknownInner),
    );
    add(
        "ipip in ipip: pass",
        o4().ipv4(v4(a4), v4(b4)).ipv4(v4(a4), v4(b4)).tcp(1, 2).build(),
        Expect::Pass(PassReason::TunnelTooDeep),
    );
    add(
        "gre in vxlan: pass",
        o4().udp(1, 4789)
            .vxlan(1, true)
            .inner_eth(MAC_A, MAC_B)
            .ipv4(v4(a4), v4(b4))
            .gre(false, None, None)
            .ipv4(v4(a4), v4(b4))
            .tcp(1, 2)
            .build(),
        Expect::Pass(PassReason::TunnelTooDeep),
    );
    add(
        "gre in gue: pass",
        o4().udp(1, 6080).gue(0, false).ip_proto(47).payload(24).build(),
        Expect::Pass(PassReason::TunnelTooDeep),
    );
    add(
        "icmp inside ipip: pass",
        o4().ipv4(v4(a4), v4(b4)).icmp_echo().build(),
        Expect::Pass(PassReason::UnknownL4),
    );
    add(
        "gtp-u with five extension headers: pass",
        o4().udp(2152, 2152).gtpu(255, false, &[(1, 0); 5]).ipv4(v4(a4), v4(b4)).tcp(1, 2).build(),
        Expect::Pass(PassReason::ExtHeaderLimit),
    );
    // Truncated at every inner boundary (and inside each header).
    let vx = o4()
        .udp(40000, 4789)
        .vxlan(42, true)
        .inner_eth(MAC_A, MAC_B)
        .ipv4(v4(a4), v4(b4))
        .tcp(33000, 443)
        .build();
    // eth 14 | ipv4 34 | udp 42 | vxlan 50 | inner eth 64 | inner ipv4 84 | tcp 104
    for cut in [46, 50, 57, 64, 70, 84, 90, 103] {
        add(
            &format!("vxlan tcp cut at {cut}: pass"),
            vx[..cut].to_vec(),
            Expect::Pass(PassReason::Truncated),
        );
    }
    let gre = o6().gre(true, Some(1), Some(2)).ipv6(v6(a6), v6(b6)).udp(33003, 4433).build();
    // eth 14 | ipv6 54 | gre 4 + 12 = 70 | inner ipv6 110 | udp 118
    for cut in [55, 58, 60, 66, 70, 100, 110, 117] {
        add(
            &format!("gre/ipv6 udp cut at {cut}: pass"),
            gre[..cut].to_vec(),
            Expect::Pass(PassReason::Truncated),
        );
    }
    let gtp = o4().udp(2152, 2152).gtpu(255, true, &[(2, 0)]).ipv4(v4(a4), v4(b4)).udp(33001, 53).build();
    // eth 14 | ipv4 34 | udp 42 | gtp 50 | optional 54 | extension 62 | inner ipv4 82 | udp 90
    for cut in [45, 52, 54, 58, 61, 62, 75, 82, 89] {
        add(
            &format!("gtp-u udp cut at {cut}: pass"),
            gtp[..cut].to_vec(),
            Expect::Pass(PassReason::Truncated),
        );
    }
    let gen = o6().udp(1, 6081).geneve(3).inner_eth(MAC_A, MAC_B).ipv6(v6(a6), v6(b6)).tcp(33002, 80).build();
    // eth 14 | ipv6 54 | udp 62 | geneve 70 + 12 = 82 | inner eth 96 | ipv6 136 | tcp 156
    for cut in [66, 70, 80, 90, 96, 120, 136, 150] {
        add(
            &format!("geneve tcp cut at {cut}: pass"),
            gen[..cut].to_vec(),
            Expect::Pass(PassReason::Truncated),
        );
    }
    f
}

/// Hash settings with tunnels as [`tunnel_fixtures`] expects them.
fn tunnel_settings(s: HashSettings) -> HashSettings {
    s.with_inner(InnerSettings::new(None, Some("5555=fou,6080=gue")).unwrap())
}

fn load(settings: &HashSettings) -> Ebpf {
    loader::load(settings, 256).expect("load steer (verifier)")
}

fn run_fixtures(settings: &HashSettings) {
    let settings = &tunnel_settings(settings.clone());
    let mut ebpf = load(settings);
    let mut failures = vec![];
    for fx in fixtures() {
        let before = loader::snapshot(&ebpf).unwrap();
        let prog = loader::program(&mut ebpf, STEER_PROG).unwrap();
        let out = testrun::run(prog.fd().unwrap(), &fx.frame, 1).expect("BPF_PROG_TEST_RUN");
        let after = loader::snapshot(&ebpf).unwrap();
        let d = after.since(&before);
        let total = d.total();
        let line = match &fx.expect {
            Expect::Steer(t) => {
                let want = settings.choose(t);
                let got_cpu = cpu_that_got(&d);
                let ok = out.retval == steered_verdict(&d, want.cpu)
                    && total.redirected == 1
                    && total.inner == (t.encap != 0) as u64
                    && got_cpu == Some(want.cpu);
                format!(
                    "{} {:<55} verdict {} cpu {:?} (steer hash: 0x{:08x} bucket {} cpu {})",
                    if ok { "ok  " } else { "FAIL" },
                    fx.name,
                    out.retval,
                    got_cpu,
                    want.hash,
                    want.bucket,
                    want.cpu
                )
            }
            Expect::Pass(reason) => {
                let ok = out.retval == XDP_PASS
                    && total.passed[*reason as usize] == 1
                    && total.passed_total() == 1;
                format!(
                    "{} {:<55} verdict {} passed as {:?}",
                    if ok { "ok  " } else { "FAIL" },
                    fx.name,
                    out.retval,
                    steer_common::PassReason::ALL
                        .iter()
                        .find(|r| total.passed[**r as usize] > 0)
                        .map(|r| r.name())
                )
            }
        };
        let untouched = out.data_out == fx.frame;
        println!("{line}{}", if untouched { "" } else { " FRAME MODIFIED" });
        assert_eq!(total.seen, 1, "{}: seen once", fx.name);
        if line.starts_with("FAIL") || !untouched {
            failures.push(fx.name);
        }
    }
    assert!(failures.is_empty(), "fixtures failed: {failures:?}");
}

/// The verdict of a frame steered to `cpu`: XDP_PASS (the local fast path)
/// when that is the CPU the test run ran on (the one whose `seen` moved),
/// XDP_REDIRECT otherwise.
fn steered_verdict(d: &Snapshot, cpu: u32) -> u32 {
    let ran_on = d.per_cpu.iter().position(|c| c.seen > 0);
    if ran_on == Some(cpu as usize) {
        XDP_PASS
    } else {
        XDP_REDIRECT
    }
}

fn cpu_that_got(d: &Snapshot) -> Option<u32> {
    let cpus: Vec<u32> =
        d.steered_in.iter().enumerate().filter(|(_, n)| **n > 0).map(|(c, _)| c as u32).collect();
    match cpus.as_slice() {
        [c] => Some(*c),
        _ => None,
    }
}

fn online() -> Vec<u32> {
    steer::cpus::online().unwrap()
}

#[test]
fn fixtures_fast_hash() {
    require_root();
    run_fixtures(&HashSettings::new(HashArg::Fast, None, 0, false, 256, online()).unwrap());
}

#[test]
fn fixtures_toeplitz_hash() {
    require_root();
    run_fixtures(&HashSettings::new(HashArg::Toeplitz, None, 0, false, 64, online()).unwrap());
}

#[test]
fn fixtures_symmetric_seeded_custom_key() {
    require_root();
    let key = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff0011223344556677";
    run_fixtures(&HashSettings::new(HashArg::Toeplitz, Some(key), 0, true, 1024, online()).unwrap());
    run_fixtures(&HashSettings::new(HashArg::Fast, None, 0xdead_beef, true, 16, online()).unwrap());
}

#[test]
fn reverse_direction_lands_on_the_same_cpu_when_symmetric() {
    require_root();
    // Many flows, so that "same CPU" cannot be luck on a 2-CPU machine.
    let settings = HashSettings::new(HashArg::Toeplitz, None, 0, true, 256, online()).unwrap();
    let mut ebpf = load(&settings);
    for port in 1000..1064u16 {
        let mut cpus = vec![];
        for frame in [
            eth().ipv4(v4("198.18.0.1"), v4("198.18.0.2")).tcp(port, 80).build(),
            eth().ipv4(v4("198.18.0.2"), v4("198.18.0.1")).tcp(80, port).build(),
        ] {
            let before = loader::snapshot(&ebpf).unwrap();
            let prog = loader::program(&mut ebpf, STEER_PROG).unwrap();
            let v = testrun::run(prog.fd().unwrap(), &frame, 1).unwrap().retval;
            let d = loader::snapshot(&ebpf).unwrap().since(&before);
            let cpu = cpu_that_got(&d);
            assert_eq!(Some(v), cpu.map(|c| steered_verdict(&d, c)));
            cpus.push(cpu);
        }
        assert_eq!(cpus[0], cpus[1], "port {port}");
    }
}

#[test]
fn unsteerable_cpu_queue_falls_back_to_pass_and_is_counted() {
    require_root();
    // The indirection table names CPUs 0 and 1 but the CPUMAP only has CPU 0:
    // flows hashed to CPU 1 must be passed, never dropped.
    let settings = HashSettings::new(HashArg::Fast, None, 0, false, 256, vec![0, 1]).unwrap();
    let mut ebpf = load(&settings);
    loader::cpumap_delete(&mut ebpf, 1).expect("delete CPU 1's queue");
    let mut passed_err = 0;
    for port in 0..32u16 {
        let frame = eth().ipv4(v4("198.18.0.1"), v4("198.18.0.2")).udp(2000 + port, 9).build();
        let want = settings.choose(&tuple("198.18.0.1", 2000 + port, "198.18.0.2", 9, IPPROTO_UDP));
        let before = loader::snapshot(&ebpf).unwrap();
        let prog = loader::program(&mut ebpf, STEER_PROG).unwrap();
        let out = testrun::run(prog.fd().unwrap(), &frame, 1).unwrap();
        let snap = loader::snapshot(&ebpf).unwrap().since(&before);
        let d = snap.total();
        if want.cpu == 1 {
            assert_eq!(out.retval, XDP_PASS, "port {port}");
            assert_eq!(d.redirect_err, 1);
            passed_err += 1;
        } else {
            assert_eq!(out.retval, steered_verdict(&snap, 0), "port {port}");
        }
    }
    assert!(passed_err > 0, "no flow hashed to the missing CPU: test proves nothing");
}

// --- The local fast path ------------------------------------------------------
//
// BPF_PROG_TEST_RUN runs an XDP program on the calling CPU, so a thread pinned
// to CPU c sees what a NIC queue interrupting CPU c would: flows steered to c
// are passed in place (XDP_PASS, counted as steered and as `local`), the others
// are redirected.

/// Runs `f` on a thread pinned to `cpu`, checked with sched_getcpu.
fn on_cpu<T: Send>(cpu: u32, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            pin_to_cpu(cpu as usize);
            // SAFETY: no preconditions.
            assert_eq!(unsafe { libc::sched_getcpu() }, cpu as i32, "pinning to CPU {cpu}");
            f()
        })
        .join()
        .expect("pinned thread panicked")
    })
}

/// One frame through steer_xdp: verdict and what the counters did.
fn once(ebpf: &mut Ebpf, frame: &[u8]) -> (u32, Snapshot) {
    let before = loader::snapshot(ebpf).unwrap();
    let prog = loader::program(ebpf, STEER_PROG).unwrap();
    let out = testrun::run(prog.fd().unwrap(), frame, 1).expect("BPF_PROG_TEST_RUN");
    assert_eq!(out.data_out, frame, "frame modified");
    (out.retval, loader::snapshot(ebpf).unwrap().since(&before))
}

/// A UDP (or TCP) frame 198.18.0.1:PORT -> 198.18.0.2:9 whose `steer hash`
/// CPU is (`on` true) or is not (`on` false) `cpu`, and its tuple.
fn flow_for(settings: &HashSettings, proto: u8, cpu: u32, on: bool) -> (Vec<u8>, Tuple) {
    for port in 1000..5000u16 {
        let t = tuple("198.18.0.1", port, "198.18.0.2", 9, proto);
        if (settings.choose(&t).cpu == cpu) == on {
            let f = eth().ipv4(v4("198.18.0.1"), v4("198.18.0.2"));
            let f = if proto == IPPROTO_TCP { f.tcp(port, 9) } else { f.udp(port, 9) };
            return (f.payload(18).build(), t);
        }
    }
    panic!("no port hashes {}to CPU {cpu}", if on { "" } else { "away from " });
}

/// (seen, redirected, local, redirect_err, passed) summed over CPUs.
fn tally(d: &Snapshot) -> (u64, u64, u64, u64, u64) {
    let t = d.total();
    (t.seen, t.redirected, t.local, t.redirect_err, t.passed_total())
}

#[test]
fn hash_path_passes_the_local_cpus_flows_in_place() {
    require_root();
    let cpus = online();
    assert!(cpus.len() >= 2, "needs two online CPUs, this machine has {cpus:?}");
    let settings = HashSettings::new(HashArg::Fast, None, 0, false, 256, cpus.clone()).unwrap();
    for &c in &cpus {
        let (local, _) = flow_for(&settings, IPPROTO_UDP, c, true);
        let (remote, rt) = flow_for(&settings, IPPROTO_UDP, c, false);
        let away = settings.choose(&rt).cpu;
        on_cpu(c, || {
            let mut ebpf = load(&settings);
            let (v, d) = once(&mut ebpf, &local);
            println!(
                "on CPU {c}: flow to CPU {c}: verdict {v}, (seen, redirected, local, err, passed) {:?}",
                tally(&d)
            );
            assert_eq!(v, XDP_PASS, "a flow for this CPU is passed in place");
            assert_eq!(tally(&d), (1, 1, 1, 0, 0));
            assert_eq!((d.per_cpu[c as usize].seen, d.per_cpu[c as usize].local), (1, 1), "ran on CPU {c}");
            assert_eq!(cpu_that_got(&d), Some(c), "TARGETS counts it for CPU {c}");

            let (v, d) = once(&mut ebpf, &remote);
            println!(
                "on CPU {c}: flow to CPU {away}: verdict {v}, (seen, redirected, local, err, passed) {:?}",
                tally(&d)
            );
            assert_eq!(v, XDP_REDIRECT, "a flow for another CPU is redirected");
            assert_eq!(tally(&d), (1, 1, 0, 0, 0));
            assert_eq!(cpu_that_got(&d), Some(away));

            // The local CPU without a queue (reconfiguration, --cpus without
            // it): the redirect fails first, so it is passed and counted as an
            // error, as before, never as steered.
            loader::cpumap_delete(&mut ebpf, c).expect("deleting this CPU's queue");
            let (v, d) = once(&mut ebpf, &local);
            assert_eq!(v, XDP_PASS);
            assert_eq!(tally(&d), (1, 0, 0, 1, 0), "a CPU without a queue is not steered to");
            assert_eq!(cpu_that_got(&d), None);
        });
    }
}

/// Puts `key` in the table read on `cpu`, its slot steering there when `steered`
/// (else still on RSS, as the hook leaves a new flow). Returns (slot, flow hash).
fn set_flow(ebpf: &mut Ebpf, key: &FlowKey, cpu: u32, steered: bool) -> (u32, u32) {
    rfs::insert_flow(ebpf, key, cpu, steered).expect("putting a flow in the table");
    rfs::slot_hash(ebpf).expect("slot hash").slot(key).expect("a slot")
}

fn slot_state(ebpf: &Ebpf, slot: u32) -> FlowSlot {
    rfs::get_slot(ebpf, slot).expect("reading a slot").1
}

/// The hook's wish for `slot` (flow hash `h` read on `cpu`) over the slot state `st`.
fn set_slot(ebpf: &mut Ebpf, slot: u32, h: u32, cpu: u32, st: FlowSlot) {
    rfs::set_slot(ebpf, slot, steer_common::flow::want(h, cpu), st).expect("writing a slot");
}

fn rfs_totals(ebpf: &Ebpf) -> RfsCounters {
    let m: PerCpuArray<_, RfsCounters> =
        PerCpuArray::try_from(ebpf.map("RFS_STATS").expect("RFS_STATS map")).expect("per-CPU array");
    rfs::counters(&m).expect("reading RFS counters")
}

/// Every online CPU (at least two) with RFS on, fast hash.
fn rfs_on_every_cpu() -> (Vec<u32>, HashSettings) {
    require_root();
    let cpus = online();
    assert!(cpus.len() >= 2, "needs two online CPUs, this machine has {cpus:?}");
    let settings = HashSettings::new(HashArg::Fast, None, 0, false, 256, cpus.clone())
        .unwrap()
        .with_rfs(Some(RfsSettings::default()));
    (cpus, settings)
}

#[test]
fn rfs_hit_path_passes_in_place_when_the_reader_is_on_this_cpu() {
    let (cpus, settings) = rfs_on_every_cpu();
    for &c in &cpus {
        let other = cpus.iter().copied().find(|&x| x != c).unwrap();
        // RSS would send the first flow away from c and the second to c: only
        // the flow table can make the first local and the second remote.
        let (reader_here, t_here) = flow_for(&settings, IPPROTO_TCP, c, false);
        let (reader_away, t_away) = flow_for(&settings, IPPROTO_TCP, c, true);
        on_cpu(c, || {
            let mut ebpf = loader::load(&settings, 256).expect("load steer (verifier)");
            for (frame, t, reader, verdict, local) in
                [(&reader_here, &t_here, c, XDP_PASS, 1), (&reader_away, &t_away, other, XDP_REDIRECT, 0)]
            {
                let key = FlowKey::from_tuple(t).expect("tcp flow key");
                set_flow(&mut ebpf, &key, reader, true);
                let r0 = rfs_totals(&ebpf);
                let (v, d) = once(&mut ebpf, frame);
                let hits = rfs_totals(&ebpf).hits - r0.hits;
                println!(
                    "on CPU {c}: RFS reader on CPU {reader}: verdict {v}, rfs hits {hits}, (seen, redirected, local, err, passed) {:?}",
                    tally(&d)
                );
                assert_eq!(hits, 1, "steered by the flow table");
                assert_eq!(v, verdict, "reader on CPU {reader}");
                assert_eq!(tally(&d), (1, 1, local, 0, 0), "reader on CPU {reader}");
                assert_eq!(cpu_that_got(&d), Some(reader));
            }
        });
    }
}

/// A flow that has been in another CPU's queue and then follows its reader to
/// this CPU goes through this CPU's own queue, never in place: packets still in
/// the old queue (its kthread may lag past the idle gate) cannot be overtaken.
/// A flow whose RSS CPU is another one is marked the same way while it waits.
#[test]
fn rfs_flow_that_was_queued_elsewhere_is_never_passed_in_place() {
    let (cpus, settings) = rfs_on_every_cpu();
    for &c in &cpus {
        let other = cpus.iter().copied().find(|&x| x != c).unwrap();
        let (frame, t) = flow_for(&settings, IPPROTO_TCP, c, true);
        let (away_frame, away_t) = flow_for(&settings, IPPROTO_TCP, c, false);
        on_cpu(c, || {
            let mut ebpf = loader::load(&settings, 256).expect("load steer (verifier)");
            let key = FlowKey::from_tuple(&t).expect("tcp flow key");
            // Read on the other CPU: redirected there, and marked.
            let (slot, h) = set_flow(&mut ebpf, &key, other, true);
            let (v, d) = once(&mut ebpf, &frame);
            assert_eq!((v, cpu_that_got(&d)), (XDP_REDIRECT, Some(other)));
            assert_eq!(slot_state(&ebpf, slot).queued, 1, "a flow sent to another CPU's queue is marked");
            // Its reader comes to this CPU and the flow has been idle long: it moves, through this CPU's queue.
            let st = FlowSlot { last_ns: 1, ..slot_state(&ebpf, slot) };
            set_slot(&mut ebpf, slot, h, c, st);
            let (v, d) = once(&mut ebpf, &frame);
            let st = slot_state(&ebpf, slot);
            println!("on CPU {c}: back from CPU {other}: verdict {v}, slot {st:?}");
            assert_eq!((v, cpu_that_got(&d), d.total().local), (XDP_REDIRECT, Some(c), 0), "not in place");
            assert_eq!((st.cpu(), st.moves, st.queued), (Some(c), 1, 1));
            // A new flow waiting on its (remote) RSS CPU is marked too.
            let away = FlowKey::from_tuple(&away_t).expect("tcp flow key");
            let (aslot, _) = set_flow(&mut ebpf, &away, c, false);
            assert_ne!(aslot, slot, "pick flows in different slots");
            let (v, _) = once(&mut ebpf, &away_frame);
            assert_eq!((v, slot_state(&ebpf, aslot).queued), (XDP_REDIRECT, 1), "RSS elsewhere: marked");
        });
    }
}

/// `SPREAD_TO` of `cpu`: the CPUs it hands packets to during its poll.
fn set_spread_to(ebpf: &mut Ebpf, cpu: u32, mask: u64) {
    set_own_slot(ebpf, map::SPREAD_TO, cpu, mask);
}

/// Sets `cpu`'s own slot of the single-entry per-CPU map `name`.
fn set_own_slot<T: aya::Pod>(ebpf: &mut Ebpf, name: &str, cpu: u32, value: T) {
    let mut m: PerCpuArray<_, T> =
        PerCpuArray::try_from(ebpf.map_mut(name).expect("per-CPU map")).expect("per-CPU array");
    let mut v: Vec<T> = m.get(&0, 0).expect("read").iter().copied().collect();
    v[cpu as usize] = value;
    m.set(0, aya::maps::PerCpuValues::try_from(v).expect("values"), 0).expect("write");
}

/// `cpu`'s own slot of the single-entry per-CPU map `name`.
fn own_slot<T: aya::Pod>(ebpf: &Ebpf, name: &str, cpu: u32) -> T {
    let m: PerCpuArray<_, T> =
        PerCpuArray::try_from(ebpf.map(name).expect("per-CPU map")).expect("per-CPU array");
    m.get(&0, 0).expect("read")[cpu as usize]
}

/// `PENDING[to]` as CPU `on` sees it (redirects towards `to` not published yet).
fn set_pending(ebpf: &mut Ebpf, on: u32, to: u32, pending: u64) {
    let mut m: PerCpuArray<_, u64> =
        PerCpuArray::try_from(ebpf.map_mut(map::PENDING).expect("PENDING map")).expect("per-CPU array");
    let mut v: Vec<u64> = m.get(&to, 0).expect("read PENDING").iter().copied().collect();
    v[on as usize] = pending;
    m.set(to, aya::maps::PerCpuValues::try_from(v).expect("values"), 0).expect("write PENDING");
}

/// `--spread busy`: a CPU that does not spread to a packet's CPU now keeps
/// the packet (XDP_PASS, counted as steered to that CPU and as `kept`), and
/// only while nothing is queued there; a CPU that spreads to it, a CPU steer
/// does not steer to, and a program whose queue counters are not running send
/// it on.
#[test]
fn spread_busy_keeps_a_packet_only_where_it_does_not_spread_to_its_cpu_and_nothing_is_queued_there() {
    require_root();
    let cpus = online();
    assert!(cpus.len() >= 2, "needs two online CPUs, this machine has {cpus:?}");
    let settings = HashSettings::new(HashArg::Fast, None, 0, false, 256, cpus.clone())
        .unwrap()
        .with_spread(Spread::Busy);
    for &c in &cpus {
        let (frame, t) = flow_for(&settings, IPPROTO_UDP, c, false);
        let away = settings.choose(&t).cpu;
        on_cpu(c, || {
            let mut ebpf = load(&settings);
            let kept = |d: &Snapshot| d.total().kept;
            // The queue counters are not attached (CPUMAP_ID 0): what is queued is unknown.
            let (v, d) = once(&mut ebpf, &frame);
            assert_eq!((v, kept(&d)), (XDP_REDIRECT, 0), "without queue counters nothing is kept");
            let mut id: Array<_, u32> =
                Array::try_from(ebpf.map_mut(map::CPUMAP_ID).expect("CPUMAP_ID map")).expect("array");
            id.set(0, 1, 0).expect("CPUMAP_ID");
            // Each redirect marks CPU `away` pending until a flush that never comes under BPF_PROG_TEST_RUN.
            set_pending(&mut ebpf, c, away, 0);
            let (v, d) = once(&mut ebpf, &frame);
            println!("on CPU {c}, flow to CPU {away}, not spreading: verdict {v}, {:?}", d.total());
            assert_eq!(v, XDP_PASS, "not spreading to CPU {away}, nothing queued: kept in place");
            assert_eq!(tally(&d), (1, 1, 1, 0, 0));
            assert_eq!((kept(&d), cpu_that_got(&d)), (1, Some(away)), "counted as steered to CPU {away}");
            set_spread_to(&mut ebpf, c, 1 << away);
            let (v, d) = once(&mut ebpf, &frame);
            assert_eq!(
                (v, kept(&d), cpu_that_got(&d)),
                (XDP_REDIRECT, 0, Some(away)),
                "spreading to it: sent"
            );
            set_spread_to(&mut ebpf, c, !(1 << away));
            set_pending(&mut ebpf, c, away, 0);
            let (v, d) = once(&mut ebpf, &frame);
            assert_eq!((v, kept(&d)), (XDP_PASS, 1), "spreading to every CPU but {away}: kept");
            set_pending(&mut ebpf, c, away, 0);
            set_ring(&mut ebpf, away, 10, 9);
            let (v, d) = once(&mut ebpf, &frame);
            assert_eq!(
                (v, kept(&d)),
                (XDP_REDIRECT, 0),
                "a frame still queued on CPU {away}: sent behind it"
            );
            set_ring(&mut ebpf, away, 10, 10);
            let (v, d) = once(&mut ebpf, &frame);
            assert_eq!(
                (v, kept(&d)),
                (XDP_REDIRECT, 0),
                "the redirect to CPU {away} above is not flushed yet: sent behind it"
            );
            set_pending(&mut ebpf, c, away, 0);
            let (v, d) = once(&mut ebpf, &frame);
            assert_eq!(
                (v, kept(&d)),
                (XDP_REDIRECT, 0),
                "taken out on CPU {away}, not known to be in the stack: sent behind it"
            );
            set_pending(&mut ebpf, c, away, 0);
            set_handed(&mut ebpf, away, 10);
            let (v, d) = once(&mut ebpf, &frame);
            assert_eq!((v, kept(&d)), (XDP_PASS, 1), "drained and handed to the stack again: kept");
            let always = HashSettings { spread: Spread::Always, ..settings.clone() };
            loader::write_config(&mut ebpf, &always).expect("--spread always");
            let (v, d) = once(&mut ebpf, &frame);
            assert_eq!((v, kept(&d)), (XDP_REDIRECT, 0), "--spread always");
        });
        // Steering to the other CPU only: this one always spreads.
        let only: Vec<u32> = vec![away];
        let s =
            HashSettings::new(HashArg::Fast, None, 0, false, 256, only).unwrap().with_spread(Spread::Busy);
        on_cpu(c, || {
            let mut ebpf = load(&s);
            let mut id: Array<_, u32> =
                Array::try_from(ebpf.map_mut(map::CPUMAP_ID).expect("CPUMAP_ID map")).expect("array");
            id.set(0, 1, 0).expect("CPUMAP_ID");
            let (v, d) = once(&mut ebpf, &frame);
            assert_eq!(
                (v, d.total().kept, cpu_that_got(&d)),
                (XDP_REDIRECT, 0, Some(away)),
                "CPU {c} is not steered to"
            );
        });
    }
}

/// Runs the raw tracepoint program `name` of `ebpf` on CPU `cpu` with `args`.
fn fire(ebpf: &mut Ebpf, name: &str, args: &[u64], cpu: u32) {
    let p: &mut aya::programs::RawTracePoint =
        ebpf.program_mut(name).expect("program in the object").try_into().expect("a raw tracepoint");
    if p.fd().is_err() {
        p.load().expect("load (verifier)");
    }
    testrun::run_raw_tracepoint(p.fd().unwrap(), args, cpu).expect("BPF_PROG_TEST_RUN of a raw tracepoint");
}

/// `PENDING[to]` as CPU `on` sees it.
fn pending_of(ebpf: &Ebpf, on: u32, to: u32) -> u64 {
    let m: PerCpuArray<_, u64> =
        PerCpuArray::try_from(ebpf.map(map::PENDING).expect("PENDING map")).expect("per-CPU array");
    m.get(&to, 0).expect("read PENDING")[on as usize]
}

/// `cpu`'s queue: (frames put in, frames taken out), as the XDP program reads them.
fn ring_of(ebpf: &Ebpf, cpu: u32) -> (u64, u64) {
    let r: Array<_, u64> = Array::try_from(ebpf.map(map::RING).expect("RING map")).expect("array");
    (r.get(&(cpu * 2), 0).expect("RING put"), r.get(&(cpu * 2 + 1), 0).expect("RING taken"))
}

/// What a queue took in is what the XDP program redirected to it, published
/// when the enqueue event of this CPU's flush fires (less what the queue
/// refused) and at the end of this CPU's NAPI poll, never the event's own
/// `processed`: on this kernel the kthreads took out more than the events
/// reported, and a queue that looked drained too early let packets passed in
/// place overtake the ones still in it.
#[test]
fn a_queues_intake_is_what_the_xdp_program_redirected_published_at_the_flush_and_the_poll_end() {
    require_root();
    let cpus = online();
    assert!(cpus.len() >= 2, "needs two online CPUs, this machine has {cpus:?}");
    let settings = HashSettings::new(HashArg::Fast, None, 0, false, 256, cpus.clone()).unwrap();
    const ID: u64 = 7;
    for &c in &cpus {
        let (frame, t) = flow_for(&settings, IPPROTO_UDP, c, false);
        let away = settings.choose(&t).cpu;
        on_cpu(c, || {
            let mut ebpf = load(&settings);
            let mut id: Array<_, u32> =
                Array::try_from(ebpf.map_mut(map::CPUMAP_ID).expect("CPUMAP_ID map")).expect("array");
            id.set(0, ID as u32, 0).expect("CPUMAP_ID");
            let enqueue = |ebpf: &mut Ebpf, processed: u64, drops: u64| {
                fire(ebpf, "cpumap_enqueue", &[ID, processed, drops, away as u64], c)
            };
            // (this CPU's unpublished count for `away`, `away`'s queue: put in, taken out)
            let state = |ebpf: &Ebpf| (pending_of(ebpf, c, away), ring_of(ebpf, away));
            let (v, _) = once(&mut ebpf, &frame);
            assert_eq!(v, XDP_REDIRECT);
            assert_eq!(state(&ebpf), (1, (0, 0)), "counted, not published");
            // The event under-reports (the kernel's count, not the program's): the redirect is published.
            enqueue(&mut ebpf, 0, 0);
            assert_eq!(state(&ebpf), (0, (1, 0)), "published at the flush");
            // Another CPUMAP's event publishes nothing.
            once(&mut ebpf, &frame);
            fire(&mut ebpf, "cpumap_enqueue", &[ID + 1, 1, 0, away as u64], c);
            assert_eq!(state(&ebpf), (1, (1, 0)), "not our CPUMAP");
            // Two more; the queue refuses one of the three.
            once(&mut ebpf, &frame);
            once(&mut ebpf, &frame);
            enqueue(&mut ebpf, 3, 1);
            assert_eq!(state(&ebpf), (0, (3, 0)), "less the dropped one");
            // A flush whose event this program does not see: published when the poll ends.
            once(&mut ebpf, &frame);
            let poll = [0, 1, 64];
            fire(&mut ebpf, "napi_poll", &poll, c);
            assert_eq!(state(&ebpf), (0, (4, 0)), "published at the poll end");
            // The kthread counts what it takes out, on its own CPU.
            fire(&mut ebpf, "cpumap_kthread", &[ID, 4, 0, 0, 0], away);
            assert_eq!(ring_of(&ebpf, away), (4, 4), "drained");
        });
    }
}

fn idle_watch(ebpf: &Ebpf, cpu: u32) -> IdleWatch {
    own_slot(ebpf, map::IDLE_WATCH, cpu)
}

/// A CPU enters idle only with its cpumap kthread asleep, which it is only
/// with its queue empty: queue counts that still show frames queued, and stay
/// the same at its idle entries for a second (a refused frame whose enqueue
/// event was never seen), are written off, so that the CPU passes packets in
/// place again. Counts that move start the second again; leaving idle, another
/// CPU's counts and counts that say nothing (no CPUMAP watched) are left alone.
#[test]
fn queue_counts_that_show_frames_queued_through_a_second_of_idle_entries_are_written_off() {
    require_root();
    let cpus = online();
    assert!(cpus.len() >= 2, "needs two online CPUs, this machine has {cpus:?}");
    let (c, o) = (cpus[0], cpus[1]);
    let settings = HashSettings::new(HashArg::Fast, None, 0, false, 256, cpus.clone()).unwrap();
    let mut ebpf = load(&settings);
    // cpu_idle(state, cpu): state u32::MAX is leaving idle.
    let (enter, leave) = ([1, c as u64], [u32::MAX as u64, c as u64]);
    set_ring(&mut ebpf, c, 5, 3);
    set_ring(&mut ebpf, o, 4, 2);
    fire(&mut ebpf, "cpu_idle", &enter, c);
    assert_eq!(idle_watch(&ebpf, c), IdleWatch::default(), "no CPUMAP watched: the counts say nothing");
    let mut id: Array<_, u32> =
        Array::try_from(ebpf.map_mut(map::CPUMAP_ID).expect("CPUMAP_ID map")).expect("array");
    id.set(0, 7, 0).expect("CPUMAP_ID");
    fire(&mut ebpf, "cpu_idle", &leave, c);
    assert_eq!(idle_watch(&ebpf, c), IdleWatch::default(), "leaving idle says nothing of the queue");
    fire(&mut ebpf, "cpu_idle", &enter, c);
    let first = idle_watch(&ebpf, c);
    assert_eq!((first.put, first.taken, first.written_off), (5, 3, 0), "{first:?}");
    assert!(first.since_ns > 0, "{first:?}");
    fire(&mut ebpf, "cpu_idle", &enter, c);
    assert_eq!((ring_of(&ebpf, c), idle_watch(&ebpf, c)), ((5, 3), first), "within the second: kept");
    // Counts that move (a frame put in) start the second again.
    set_ring(&mut ebpf, c, 6, 3);
    fire(&mut ebpf, "cpu_idle", &enter, c);
    let moved = idle_watch(&ebpf, c);
    assert_eq!((moved.put, moved.taken), (6, 3), "{moved:?}");
    assert!(moved.since_ns >= first.since_ns, "{moved:?} after {first:?}");
    // A second of idle entries later.
    set_own_slot(
        &mut ebpf,
        map::IDLE_WATCH,
        c,
        IdleWatch { since_ns: moved.since_ns.saturating_sub(QUIET_NS).max(1), ..moved },
    );
    fire(&mut ebpf, "cpu_idle", &leave, c);
    assert_eq!(ring_of(&ebpf, c), (6, 3), "leaving idle writes nothing off");
    fire(&mut ebpf, "cpu_idle", &enter, c);
    assert_eq!(ring_of(&ebpf, c), (6, 6), "written off");
    assert_eq!(handed_of(&ebpf, c), 6, "and counted as handed to the stack");
    assert_eq!((idle_watch(&ebpf, c).written_off, idle_watch(&ebpf, c).since_ns), (3, 0));
    fire(&mut ebpf, "cpu_idle", &enter, c);
    assert_eq!((ring_of(&ebpf, c), idle_watch(&ebpf, c).written_off), ((6, 6), 3), "nothing queued");
    assert_eq!(ring_of(&ebpf, o), (4, 2), "CPU {c}'s idle entries write off only its own queue");
    assert_eq!(idle_watch(&ebpf, o), IdleWatch::default());
}

fn spread_to(ebpf: &Ebpf, cpu: u32) -> u64 {
    own_slot(ebpf, map::SPREAD_TO, cpu)
}

/// `LAST_IDLE[cpu]`: 0 is "idled long ago".
fn set_last_idle(ebpf: &mut Ebpf, cpu: u32, at: u64) {
    let mut m: Array<_, u64> =
        Array::try_from(ebpf.map_mut(map::LAST_IDLE).expect("LAST_IDLE map")).expect("array");
    m.set(cpu, at, 0).expect("write LAST_IDLE");
}

/// `--spread busy`'s choice, made by the `napi_poll` program at the end of
/// each poll from what `cpu_idle` recorded: a CPU whose poll was full hands
/// packets to every CPU; one that idled itself to none; otherwise to the CPUs
/// that idle or idled within 6 jiffies. netpoll's polls (budget 0) and
/// `--spread always` change nothing; a CPU steer does not steer to spreads to
/// all, also right after a live change of `--cpus` that a poll raced.
#[test]
fn spread_busy_hands_packets_to_every_cpu_after_a_full_poll_and_else_to_the_cpus_that_idled() {
    require_root();
    let cpus = online();
    assert!(cpus.len() >= 2, "needs two online CPUs, this machine has {cpus:?}");
    let (c, o) = (cpus[0], cpus[1]);
    let settings = HashSettings::new(HashArg::Fast, None, 0, false, 256, cpus.clone())
        .unwrap()
        .with_spread(Spread::Busy);
    let mut ebpf = load(&settings);
    // napi_poll(napi, work, budget); cpu_idle(state, cpu), state u32::MAX: leaving idle.
    let (poll, full, netpoll) = ([0, 1, 64], [0, 64, 64], [0, 1, 0]);
    assert_eq!(spread_to(&ebpf, c), 0, "a steering CPU keeps until its first poll ends");
    fire(&mut ebpf, "napi_poll", &poll, c);
    assert_eq!(spread_to(&ebpf, c), 0, "no CPU idled: nowhere to spread to");
    fire(&mut ebpf, "cpu_idle", &[1, o as u64], o);
    fire(&mut ebpf, "napi_poll", &poll, c);
    assert_eq!(spread_to(&ebpf, c), 1 << o, "CPU {o} idles: spread to it");
    fire(&mut ebpf, "cpu_idle", &[u32::MAX as u64, o as u64], o);
    fire(&mut ebpf, "napi_poll", &poll, c);
    assert_eq!(spread_to(&ebpf, c), 1 << o, "CPU {o} just left idle: still spread to it");
    set_last_idle(&mut ebpf, o, 0);
    fire(&mut ebpf, "napi_poll", &poll, c);
    assert_eq!(spread_to(&ebpf, c), 0, "CPU {o} idled long ago: keep");
    fire(&mut ebpf, "cpu_idle", &[1, o as u64], o);
    fire(&mut ebpf, "cpu_idle", &[1, c as u64], c);
    fire(&mut ebpf, "napi_poll", &poll, c);
    assert_eq!(spread_to(&ebpf, c), 0, "CPU {c} idles itself: keep");
    fire(&mut ebpf, "napi_poll", &netpoll, c);
    fire(&mut ebpf, "napi_poll", &full, c);
    assert_eq!(spread_to(&ebpf, c), u64::MAX, "a full poll: spread to every CPU");
    fire(&mut ebpf, "napi_poll", &poll, c);
    assert_eq!(spread_to(&ebpf, c), u64::MAX, "busy for 10 jiffies after a full poll");
    // CPU `o` saturated, `c` idling: `o` spreads to `c` until `c` stops idling, at its next real poll.
    set_last_idle(&mut ebpf, o, 0);
    fire(&mut ebpf, "napi_poll", &poll, o);
    assert_eq!(spread_to(&ebpf, o), 1 << c, "CPU {c} idles: CPU {o} spreads to it");
    set_last_idle(&mut ebpf, c, 0);
    fire(&mut ebpf, "napi_poll", &netpoll, o);
    assert_eq!(spread_to(&ebpf, o), 1 << c, "netpoll (budget 0) decides nothing");
    fire(&mut ebpf, "napi_poll", &poll, o);
    assert_eq!(spread_to(&ebpf, o), 0, "CPU {c} idled long ago: keep");
    let always = HashSettings { spread: Spread::Always, ..settings.clone() };
    loader::write_config(&mut ebpf, &always).expect("--spread always");
    set_last_idle(&mut ebpf, c, u64::MAX);
    fire(&mut ebpf, "napi_poll", &poll, o);
    assert_eq!(spread_to(&ebpf, o), 0, "--spread always decides nothing");
    fire(&mut ebpf, "cpu_idle", &[u32::MAX as u64, c as u64], c);
    let idle: Array<_, u64> = Array::try_from(ebpf.map(map::LAST_IDLE).unwrap()).unwrap();
    assert_eq!(idle.get(&c, 0).unwrap(), u64::MAX, "--spread always records no idling");
    // Only CPU `o` steered to: `c` hands everything on from the start.
    let only =
        HashSettings::new(HashArg::Fast, None, 0, false, 256, vec![o]).unwrap().with_spread(Spread::Busy);
    let mut ebpf = load(&only);
    assert_eq!(spread_to(&ebpf, c), u64::MAX, "CPU {c} is not steered to");
    fire(&mut ebpf, "cpu_idle", &[1, c as u64], c);
    fire(&mut ebpf, "napi_poll", &poll, c);
    assert_eq!(spread_to(&ebpf, c), u64::MAX, "CPU {c} is not steered to, idle or not");
    // Live (SIGHUP): `c` joins, then leaves again while one of its polls ends, which overwrites
    // the loader's values with what the old `--cpus` said (keep; not busy).
    let both = HashSettings { cpus: cpus.clone(), ..only.clone() };
    loader::write_config(&mut ebpf, &both).expect("--cpus with both CPUs");
    assert_eq!(spread_to(&ebpf, c), 0, "CPU {c} joined: keeps until its next poll ends");
    fire(&mut ebpf, "napi_poll", &poll, c);
    assert_eq!(spread_to(&ebpf, c), 0, "CPU {c} idles: keeps");
    loader::write_config(&mut ebpf, &only).expect("--cpus without the first CPU");
    set_spread_to(&mut ebpf, c, 0);
    set_own_slot(&mut ebpf, map::BUSY_UNTIL, c, 0u64);
    fire(&mut ebpf, "napi_poll", &poll, c);
    assert_eq!(spread_to(&ebpf, c), u64::MAX, "CPU {c} left: hands everything on from its next poll");
}

/// `HANDED[cpu]`: what `cpu`'s kthread had handed to the stack when it last slept.
fn set_handed(ebpf: &mut Ebpf, cpu: u32, n: u64) {
    let mut m: Array<_, u64> =
        Array::try_from(ebpf.map_mut(map::HANDED).expect("HANDED map")).expect("array");
    m.set(cpu, n, 0).expect("write HANDED");
}

fn handed_of(ebpf: &Ebpf, cpu: u32) -> u64 {
    let m: Array<_, u64> = Array::try_from(ebpf.map(map::HANDED).expect("HANDED map")).expect("array");
    m.get(&cpu, 0).expect("read HANDED")
}

/// A cpumap kthread counts a batch out before it hands the batch to the stack,
/// so what it took out counts as handed (what a CPU that keeps another CPU's
/// packet compares with) only when that kthread blocks in `sched_switch`, or
/// its CPU enters idle. A switch of another task, the kthread preempted while
/// running (its GRO may hold frames) and counts of no watched CPUMAP change
/// nothing. Each program runs on the CPU it is fired for, in this thread, which
/// plays the kthread: its task is what `cpumap_kthread` recorded.
#[test]
fn a_queue_counts_as_handed_to_the_stack_only_once_its_kthread_sleeps_or_its_cpu_idles() {
    require_root();
    let cpus = online();
    let c = *cpus.last().expect("an online CPU");
    let settings = HashSettings::new(HashArg::Fast, None, 0, false, 256, cpus.clone()).unwrap();
    const ID: u64 = 7;
    on_cpu(c, || {
        let mut ebpf = load(&settings);
        // sched_switch(preempt, prev, next, prev_state): the program reads prev and prev_state.
        let switch =
            |ebpf: &mut Ebpf, prev: u64, state: u64| fire(ebpf, "cpumap_handed", &[0, prev, 0, state], c);
        set_ring(&mut ebpf, c, 5, 0);
        fire(&mut ebpf, "cpumap_kthread", &[ID, 5, 0, 0, 0], c);
        assert_eq!(own_slot::<u64>(&ebpf, map::KTHREAD, c), 0, "no CPUMAP watched: no kthread recorded");
        switch(&mut ebpf, 0, 1);
        assert_eq!((ring_of(&ebpf, c), handed_of(&ebpf, c)), ((5, 0), 0), "no CPUMAP watched");
        let mut id: Array<_, u32> =
            Array::try_from(ebpf.map_mut(map::CPUMAP_ID).expect("CPUMAP_ID map")).expect("array");
        id.set(0, ID as u32, 0).expect("CPUMAP_ID");
        fire(&mut ebpf, "cpumap_kthread", &[ID, 5, 0, 0, 0], c);
        let me: u64 = own_slot(&ebpf, map::KTHREAD, c);
        assert_ne!(me, 0, "the batch's task is recorded as CPU {c}'s kthread");
        assert_eq!((ring_of(&ebpf, c), handed_of(&ebpf, c)), ((5, 5), 0), "taken out, not handed");
        switch(&mut ebpf, me, 0);
        assert_eq!(handed_of(&ebpf, c), 0, "preempted while running: its GRO may hold frames");
        switch(&mut ebpf, me ^ 0x40, 1);
        assert_eq!(handed_of(&ebpf, c), 0, "another task blocked");
        switch(&mut ebpf, me, 1);
        assert_eq!(handed_of(&ebpf, c), 5, "the kthread blocked: all it took out is in the stack");
        // A batch taken out, then the CPU idles (its kthread asleep).
        set_ring(&mut ebpf, c, 8, 7);
        fire(&mut ebpf, "cpu_idle", &[u32::MAX as u64, c as u64], c);
        assert_eq!(handed_of(&ebpf, c), 5, "leaving idle says nothing");
        fire(&mut ebpf, "cpu_idle", &[1, c as u64], c);
        assert_eq!(handed_of(&ebpf, c), 7, "idle entry");
    });
}

/// Sets what the cpumap tracepoints would have counted for `cpu`'s queue:
/// frames put in and taken out (nothing is enqueued under BPF_PROG_TEST_RUN).
fn set_ring(ebpf: &mut Ebpf, cpu: u32, put: u64, taken: u64) {
    let mut ring: Array<_, u64> = Array::try_from(ebpf.map_mut(map::RING).expect("RING map")).expect("array");
    ring.set(cpu * 2, put, 0).expect("RING put");
    ring.set(cpu * 2 + 1, taken, 0).expect("RING taken");
}

/// A steady RFS hit reads no clock and writes no stamp: only the slot's packet
/// count moves. A move waits for both gates, whatever order they open in: a
/// gap longer than --migrate-idle-us, and the old CPU's queue drained past
/// the slot's last packet there.
#[test]
fn rfs_steady_hit_reads_no_clock_and_a_move_waits_for_idle_and_drain() {
    require_root();
    let cpus = online();
    assert!(cpus.len() >= 2, "needs two online CPUs, this machine has {cpus:?}");
    let (here, old) = (cpus[0], cpus[1]);
    let settings = HashSettings::new(HashArg::Fast, None, 0, false, 256, cpus.clone())
        .unwrap()
        .with_rfs(Some(RfsSettings::new(1024, 1_000_000).unwrap()));
    let (frame, t) = flow_for(&settings, IPPROTO_TCP, old, false);
    on_cpu(here, || {
        let mut ebpf = loader::load(&settings, 256).expect("load steer (verifier)");
        let key = FlowKey::from_tuple(&t).expect("tcp flow key");
        let (slot, h) = set_flow(&mut ebpf, &key, old, true);
        let r0 = rfs_totals(&ebpf);
        let prog = loader::program(&mut ebpf, STEER_PROG).unwrap();
        let out = testrun::run(prog.fd().unwrap(), &frame, 1000).expect("BPF_PROG_TEST_RUN");
        assert_eq!(out.retval, XDP_REDIRECT);
        let (st, r) = (slot_state(&ebpf, slot), rfs_totals(&ebpf));
        println!("1000 steady hits: slot {st:?}");
        assert_eq!((st.pkts, st.last_ns, st.tail, st.moves), (1000, 0, 0, 0), "no stamp on a steady hit");
        assert_eq!((r.hits - r0.hits, r.deferred - r0.deferred), (1000, 0));

        // A stamp left by a move given up on is cleared, so the next move starts its own gate.
        set_slot(&mut ebpf, slot, h, old, FlowSlot { last_ns: 12345, ..st });
        let (v, d) = once(&mut ebpf, &frame);
        assert_eq!((v, cpu_that_got(&d)), (XDP_REDIRECT, Some(old)));
        assert_eq!(slot_state(&ebpf, slot).last_ns, 0);

        // The reader comes here while the old CPU's queue holds 1000 frames, none taken out.
        set_ring(&mut ebpf, old, 1000, 0);
        let st = slot_state(&ebpf, slot);
        set_slot(&mut ebpf, slot, h, here, st);
        let (_, d) = once(&mut ebpf, &frame);
        let st = slot_state(&ebpf, slot);
        println!("move pending: slot {st:?}");
        assert_eq!(cpu_that_got(&d), Some(old), "the first packet after the wish stays");
        assert!(
            st.last_ns > 0 && st.tail == 1000 + steer_common::balance::TAIL_SLACK && st.tail_cpu == old,
            "{st:?}"
        );
        // Idle long enough, but the queue has not given out the slot's packets: stay.
        set_slot(&mut ebpf, slot, h, here, FlowSlot { last_ns: 1, ..st });
        let (_, d) = once(&mut ebpf, &frame);
        assert_eq!(cpu_that_got(&d), Some(old), "idle but not drained: stays");
        // Drained, but the last packet was just now: stay.
        set_ring(&mut ebpf, old, 1000, 1000 + steer_common::balance::TAIL_SLACK);
        let (_, d) = once(&mut ebpf, &frame);
        assert_eq!(cpu_that_got(&d), Some(old), "drained but not idle: stays");
        assert_eq!(slot_state(&ebpf, slot).moves, 0);
        // Both: it moves, through this CPU's queue (the flow was queued elsewhere).
        let st = slot_state(&ebpf, slot);
        set_slot(&mut ebpf, slot, h, here, FlowSlot { last_ns: 1, ..st });
        let (v, d) = once(&mut ebpf, &frame);
        let st = slot_state(&ebpf, slot);
        assert_eq!((v, cpu_that_got(&d), d.total().local), (XDP_REDIRECT, Some(here), 0));
        assert_eq!((st.cpu(), st.moves, st.last_ns, st.tail), (Some(here), 1, 0, 0), "{st:?}");
    });
}

/// Two flows whose hashes fall in one slot share its decision: when the
/// second one's reader takes the slot (a collision), neither flow jumps
/// anywhere at once; both stay where the slot sent them and move together
/// once the slot passes the idle gate. `steer flows` marks the flow whose
/// wish was replaced as sharing. (The hook's collision count: rfs.rs.)
#[test]
fn rfs_flows_colliding_in_one_slot_share_it_and_move_only_through_the_gate() {
    let (cpus, _) = rfs_on_every_cpu();
    let (c0, c1) = (cpus[0], cpus[1]);
    // Two slots: collisions are easy to find.
    let settings = HashSettings::new(HashArg::Fast, None, 0, false, 256, cpus.clone())
        .unwrap()
        .with_rfs(Some(RfsSettings::new(2, 1_000_000).unwrap()));
    on_cpu(c0, || {
        let mut ebpf = loader::load(&settings, 256).expect("load steer (verifier)");
        let hash = rfs::slot_hash(&ebpf).expect("slot hash");
        let flow = |port: u16| {
            let t = tuple("198.18.0.1", port, "198.18.0.2", 9, IPPROTO_TCP);
            let f = eth().ipv4(v4("198.18.0.1"), v4("198.18.0.2")).tcp(port, 9).payload(18).build();
            (f, FlowKey::from_tuple(&t).unwrap())
        };
        let (fa, ka) = flow(1000);
        let (sa, ha) = hash.slot(&ka).unwrap();
        let (fb, kb, hb) = (1001..2000u16)
            .map(flow)
            .find_map(|(f, k)| hash.slot(&k).filter(|(s, h)| *s == sa && *h != ha).map(|(_, h)| (f, k, h)))
            .expect("a second flow in the same slot");
        // A is read on c1 and steered there; then B's reader on c0 takes the slot.
        set_flow(&mut ebpf, &ka, c1, true);
        let st = slot_state(&ebpf, sa);
        rfs::insert_flow(&mut ebpf, &kb, c0, false).expect("B in the table");
        set_slot(&mut ebpf, sa, hb, c0, st);
        let view = rfs::view(&ebpf, &ka).unwrap().expect("A in the table");
        assert!(view.shared && view.cpu == Some(c1), "A follows B's wish now: {view:?}");
        let r0 = rfs_totals(&ebpf);
        for (name, f) in [("A", &fa), ("B", &fb), ("A", &fa)] {
            let (v, d) = once(&mut ebpf, f);
            println!("collision, {name}: verdict {v}, to CPU {:?}", cpu_that_got(&d));
            assert_eq!((v, cpu_that_got(&d)), (XDP_REDIRECT, Some(c1)), "{name} stays on the slot's CPU");
        }
        let r = rfs_totals(&ebpf);
        assert_eq!((r.deferred - r0.deferred, r.moves - r0.moves), (3, 0), "held by the gate");
        // The slot has been idle: both follow B's reader, through c0's own queue.
        let st = slot_state(&ebpf, sa);
        set_slot(&mut ebpf, sa, hb, c0, FlowSlot { last_ns: 1, ..st });
        for (name, f) in [("A", &fa), ("B", &fb)] {
            let (v, d) = once(&mut ebpf, f);
            assert_eq!((v, cpu_that_got(&d), d.total().local), (XDP_REDIRECT, Some(c0), 0), "{name} moved");
        }
        assert_eq!(slot_state(&ebpf, sa).moves, 1, "one move for the slot");
        assert_eq!(rfs_totals(&ebpf).moves - r0.moves, 1);
    });
}

/// A new hash on a live program (SIGHUP: seed, kind, symmetric, key) moves
/// every flow's slot: the slots are rebuilt for it, so no flow is steered by a
/// slot filled for the old hash. Each flow's wish is in its new slot, which
/// starts on RSS like a new flow and follows the reader through the gate.
#[test]
fn rfs_slots_are_rebuilt_for_a_new_hash() {
    let (cpus, settings) = rfs_on_every_cpu();
    let (c0, c1) = (cpus[0], cpus[1]);
    on_cpu(c0, || {
        let mut ebpf = loader::load(&settings, 256).expect("load steer (verifier)");
        let (frame, t) = flow_for(&settings, IPPROTO_TCP, c1, false);
        let key = FlowKey::from_tuple(&t).expect("tcp flow key");
        let (old_slot, _) = set_flow(&mut ebpf, &key, c1, true);
        let (v, d) = once(&mut ebpf, &frame);
        assert_eq!((v, cpu_that_got(&d)), (XDP_REDIRECT, Some(c1)));
        // Another seed: find one that moves the flow's slot.
        let (new, slot, h) = (1..100u32)
            .map(|seed| HashSettings { seed, ..settings.clone() })
            .find_map(|s| {
                let (slot, h) = rfs::SlotHash::new(&s).slot(&key).unwrap();
                (slot != old_slot).then_some((s, slot, h))
            })
            .expect("a seed that moves the slot");
        loader::apply_config(&mut ebpf, &new).expect("applying the new hash");
        assert_eq!(rfs::slot_hash(&ebpf).unwrap(), rfs::SlotHash::new(&new), "the live hash is the new one");
        let (w, st) = rfs::get_slot(&ebpf, old_slot).unwrap();
        assert_eq!((w, st), (0, FlowSlot::default()), "the old slot is empty");
        let (w, st) = rfs::get_slot(&ebpf, slot).unwrap();
        assert_eq!((w, st.cur), (steer_common::flow::want(h, c1), 0), "the wish is in the new slot, on RSS");
        // On the new hash's RSS CPU until the flow pauses, then to its reader.
        let rss = new.choose(&t).cpu;
        let (_, d) = once(&mut ebpf, &frame);
        assert_eq!(cpu_that_got(&d), Some(rss), "on RSS first");
        let st = slot_state(&ebpf, slot);
        set_slot(&mut ebpf, slot, h, c1, FlowSlot { last_ns: 1, ..st });
        let (_, d) = once(&mut ebpf, &frame);
        assert_eq!(cpu_that_got(&d), Some(c1), "then the reader's CPU");
        // The same settings again: nothing is rebuilt.
        loader::apply_config(&mut ebpf, &new).expect("applying the same hash");
        assert_eq!(slot_state(&ebpf, slot).cpu(), Some(c1), "an unchanged hash keeps the slots");
    });
}

/// Per-packet cost of the two verdicts (printed for the note; no thresholds):
/// BPF_PROG_TEST_RUN repeat from a thread pinned to the first CPU, the local
/// and the remote flow interleaved in rounds, with a bare XDP_PASS for scale.
/// Test runs never enqueue: what the local path saves in the CPUMAP and its
/// kthread does not show here, only what the check itself costs.
#[test]
fn local_and_remote_verdict_costs_for_the_note() {
    require_root();
    let cpus = online();
    assert!(cpus.len() >= 2, "needs two online CPUs, this machine has {cpus:?}");
    let c = cpus[0];
    let settings = HashSettings::new(HashArg::Fast, None, 0, false, 256, cpus.clone()).unwrap();
    let rfs_settings = settings.clone().with_rfs(Some(RfsSettings::default()));
    let (local, _) = flow_for(&settings, IPPROTO_UDP, c, true);
    let (remote, _) = flow_for(&settings, IPPROTO_UDP, c, false);
    let (tcp, t) = flow_for(&settings, IPPROTO_TCP, c, true);
    let other = cpus[1];
    let (reps, rounds) = (1_000_000, 5);
    let lines = on_cpu(c, || {
        let mut rss = load(&settings);
        loader::program(&mut rss, PASS_PROG).expect("xdp_pass").load().expect("loading xdp_pass");
        let mut hit_here = loader::load(&rfs_settings, 256).expect("load");
        let mut hit_away = loader::load(&rfs_settings, 256).expect("load");
        let key = FlowKey::from_tuple(&t).expect("key");
        set_flow(&mut hit_here, &key, c, true);
        set_flow(&mut hit_away, &key, other, true);
        let mut objs = [rss, hit_here, hit_away];
        let cases = [
            ("xdp_pass", 0, PASS_PROG, &local, XDP_PASS),
            ("hash, local (XDP_PASS)", 0, STEER_PROG, &local, XDP_PASS),
            ("hash, remote (XDP_REDIRECT)", 0, STEER_PROG, &remote, XDP_REDIRECT),
            ("rfs hit, local (XDP_PASS)", 1, STEER_PROG, &tcp, XDP_PASS),
            ("rfs hit, remote (XDP_REDIRECT)", 2, STEER_PROG, &tcp, XDP_REDIRECT),
        ];
        let mut ns: Vec<Vec<u32>> = vec![vec![]; cases.len()];
        for _ in 0..rounds {
            for (i, (name, o, prog, frame, verdict)) in cases.iter().enumerate() {
                let p = loader::program(&mut objs[*o], prog).expect("program");
                let out = testrun::run(p.fd().expect("loaded"), frame, reps).expect("test run");
                assert_eq!(out.retval, *verdict, "{name}");
                ns[i].push(out.duration_ns);
            }
        }
        let local_total = loader::snapshot(&objs[0]).unwrap().total().local;
        assert_eq!(local_total, (rounds * reps) as u64, "every local run took the local path");
        cases
            .iter()
            .zip(ns.iter_mut())
            .map(|((name, ..), v)| {
                v.sort();
                format!("{name}: min {} median {} ns", v[0], v[v.len() / 2])
            })
            .collect::<Vec<_>>()
    });
    println!("XDP ns/packet on CPU {c} (BPF_PROG_TEST_RUN, {reps} repeats, {rounds} rounds):");
    for l in lines {
        println!("  {l}");
    }
}

/// The verifier walks every path of the parser: each tunnel, extension header
/// and lookup multiplies them. Half of its 1M-instruction budget is the most
/// either steering program may use, so that the next feature does not find the limit first.
#[test]
fn steer_program_keeps_half_the_verifier_budget() {
    require_root();
    for settings in [
        HashSettings::new(HashArg::Fast, None, 0, false, 256, online()).unwrap(),
        HashSettings::new(HashArg::Toeplitz, None, 0, true, 256, online())
            .unwrap()
            .with_rfs(Some(RfsSettings::default())),
    ] {
        let mut ebpf = load(&settings);
        for name in [STEER_PROG, steer_common::names::prog::STEER_INNER] {
            let prog = loader::program(&mut ebpf, name).unwrap();
            let n = prog.info().unwrap().verified_instruction_count().expect("kernel reports verified_insns");
            println!(
                "{name} {:?} rfs {}: verifier processed {n} instructions",
                settings.kind,
                settings.rfs.is_some()
            );
            assert!(n < 500_000, "{name} needs {n} verifier instructions of 1,000,000");
        }
    }
}

fn hash_opts(args: &[&str]) -> steer::options::HashOpts {
    use clap::{Args as _, FromArgMatches as _};
    let cmd = steer::options::HashOpts::augment_args(clap::Command::new("t").no_binary_name(true));
    steer::options::HashOpts::from_arg_matches(&cmd.get_matches_from(args)).unwrap()
}

/// `steer hash --encap` tells, for a tunnelled flow, what the XDP program in
/// the kernel does with the frame: which flow it hashes and the CPU it picks,
/// or why it passes it. Sixteen inner flows per case, so agreeing on the CPU
/// cannot be luck.
#[test]
fn steer_hash_explains_tunnelled_flows_as_the_kernel_steers_them() {
    require_root();
    const O_A: &str = "192.0.2.1";
    const O_B: &str = "192.0.2.2";
    let (i_a, i_b) = ("10.9.0.1", "10.9.0.2");
    type Case = (&'static [&'static str], &'static str, &'static [&'static str], fn(u16) -> Vec<u8>);
    let cases: [Case; 6] = [
        (
            &["--hash", "toeplitz", "--table-size", "64"],
            "ipip",
            &["--outer-src", O_A, "--outer-dst", O_B],
            |p| {
                eth()
                    .ipv4(v4("192.0.2.1"), v4("192.0.2.2"))
                    .ipv4(v4("10.9.0.1"), v4("10.9.0.2"))
                    .udp(p, 53)
                    .build()
            },
        ),
        (&["--seed", "99"], "gre", &["--outer-src", O_A, "--outer-dst", O_B], |p| {
            eth()
                .ipv4(v4("192.0.2.1"), v4("192.0.2.2"))
                .gre(false, Some(5), None)
                .ipv4(v4("10.9.0.1"), v4("10.9.0.2"))
                .udp(p, 53)
                .build()
        }),
        (&[], "vxlan", &["--outer-src", "192.0.2.1:40000", "--outer-dst", O_B], |p| {
            eth()
                .ipv4(v4("192.0.2.1"), v4("192.0.2.2"))
                .udp(40000, 4789)
                .vxlan(1, true)
                .inner_eth(MAC_A, MAC_B)
                .ipv4(v4("10.9.0.1"), v4("10.9.0.2"))
                .udp(p, 53)
                .build()
        }),
        (
            &["--inner-udp-ports", "5555=fou"],
            "fou",
            &["--outer-src", "192.0.2.1:40000", "--outer-dst", "192.0.2.2:5555"],
            |p| {
                eth()
                    .ipv4(v4("192.0.2.1"), v4("192.0.2.2"))
                    .udp(40000, 5555)
                    .ipv4(v4("10.9.0.1"), v4("10.9.0.2"))
                    .udp(p, 53)
                    .build()
            },
        ),
        // Not a tunnel port under these settings: the outer flow, whose source port varies.
        (&["--inner", "gre"], "vxlan", &["--outer-src", "192.0.2.1:40000", "--outer-dst", O_B], |p| {
            eth()
                .ipv4(v4("192.0.2.1"), v4("192.0.2.2"))
                .udp(40000, 4789)
                .vxlan(1, true)
                .inner_eth(MAC_A, MAC_B)
                .ipv4(v4("10.9.0.1"), v4("10.9.0.2"))
                .udp(p, 53)
                .build()
        }),
        (&["--inner", "off"], "ipip", &["--outer-src", O_A, "--outer-dst", O_B], |p| {
            eth()
                .ipv4(v4("192.0.2.1"), v4("192.0.2.2"))
                .ipv4(v4("10.9.0.1"), v4("10.9.0.2"))
                .udp(p, 53)
                .build()
        }),
    ];
    for (opts, encap, outer, frame) in cases {
        let settings = hash_opts(opts).settings().unwrap();
        let mut ebpf = load(&settings);
        let mut agreed = 0;
        for port in 30000..30016u16 {
            let before = loader::snapshot(&ebpf).unwrap();
            let prog = loader::program(&mut ebpf, STEER_PROG).unwrap();
            let out = testrun::run(prog.fd().unwrap(), &frame(port), 1).unwrap();
            let d = loader::snapshot(&ebpf).unwrap().since(&before);
            let total = d.total();
            let src = format!("{i_a}:{port}");
            let dst = format!("{i_b}:53");
            let cli = steer_tests::steer_bin();
            let res = std::process::Command::new(cli)
                .args(["hash", "--json", "--proto", "udp", "--src", &src, "--dst", &dst, "--encap", encap])
                .args(outer)
                .args(opts)
                .output()
                .unwrap();
            assert!(res.status.success(), "steer hash: {}", String::from_utf8_lossy(&res.stderr));
            let j: serde_json::Value = serde_json::from_slice(&res.stdout).unwrap();
            let hashed = j["hashed"].as_str().unwrap();
            match hashed {
                "pass" => {
                    let reason = PassReason::ALL.iter().find(|r| r.name() == j["reason"]).unwrap();
                    assert_eq!(out.retval, XDP_PASS, "{encap} {opts:?}");
                    assert_eq!(total.passed[*reason as usize], 1, "{encap} {opts:?}: {j}");
                }
                _ => {
                    let cpu = j["cpu"].as_u64().unwrap() as u32;
                    assert_eq!(cpu_that_got(&d), Some(cpu), "{encap} {opts:?} port {port}: {j}");
                    assert_eq!(total.inner, (hashed == "inner") as u64, "{encap} {opts:?}: {j}");
                }
            }
            agreed += 1;
        }
        println!("{encap} {opts:?}: steer hash and the kernel agree on {agreed} flows");
    }
}
