//! `steer flows`: the flow table as rows, a table and JSON.

use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv6Addr},
};

use steer_common::{FlowKey, RfsCounters};

use super::FlowView;

/// CLOCK_MONOTONIC in ns: the clock of `bpf_ktime_get_ns`.
pub fn now_ns() -> u64 {
    // SAFETY: clock_gettime into a zeroed timespec.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// An address as users write it: IPv4 for v4-mapped ones.
pub fn show_addr(b: &[u8; 16]) -> IpAddr {
    let v6 = Ipv6Addr::from(*b);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

fn endpoint(b: &[u8; 16], port: u16) -> String {
    match show_addr(b) {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

/// One row of `steer flows`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct FlowRow {
    /// "tcp" or "udp".
    pub proto: &'static str,
    /// Remote endpoint (the packets' source).
    pub src: String,
    /// Local endpoint (the reading socket).
    pub dst: String,
    /// CPU the flow is steered to; `None` while RSS still steers it (new
    /// flow, waiting to be idle before its first move).
    pub cpu: Option<u32>,
    /// CPU of the last read.
    pub reader_cpu: u32,
    /// Packets steered by the flow's slot, and the slot's moves (shared with
    /// flows that collide in it).
    pub packets: u64,
    pub moves: u32,
    /// The flow's steering slot, and whether it holds another flow's wish
    /// (a collision: this flow follows that one's reader).
    pub slot: u32,
    pub shared: bool,
    /// Milliseconds since the entry was created / since the last read.
    pub age_ms: u64,
    pub read_ago_ms: u64,
    pub pid: u32,
    pub comm: String,
}

impl FlowRow {
    pub fn new(k: &FlowKey, v: &FlowView, now_ns: u64) -> Self {
        let ms = |t: u64| now_ns.saturating_sub(t) / 1_000_000;
        let e = &v.entry;
        let comm_len = e.comm.iter().position(|&b| b == 0).unwrap_or(e.comm.len());
        Self {
            proto: if k.is_udp() { "udp" } else { "tcp" },
            src: endpoint(&k.src_bytes(), k.sport()),
            dst: endpoint(&k.dst_bytes(), k.dport()),
            cpu: v.cpu,
            reader_cpu: e.want_cpu,
            packets: v.pkts,
            moves: v.moves,
            slot: v.slot,
            shared: v.shared,
            age_ms: ms(e.created_ns),
            read_ago_ms: ms(e.last_read_ns),
            pid: e.pid,
            comm: String::from_utf8_lossy(&e.comm[..comm_len]).into_owned(),
        }
    }
}

/// Rows sorted busiest first, at most `top` of them (0: all).
pub fn rows(entries: &[(FlowKey, FlowView)], now_ns: u64, top: usize) -> Vec<FlowRow> {
    let mut rows: Vec<FlowRow> = entries.iter().map(|(k, e)| FlowRow::new(k, e, now_ns)).collect();
    rows.sort_by(|a, b| b.packets.cmp(&a.packets).then_with(|| a.src.cmp(&b.src)));
    if top > 0 {
        rows.truncate(top);
    }
    rows
}

/// The counters as `name value` pairs, in the order tables and JSON show them.
pub fn counter_fields(c: &RfsCounters, live: u64) -> [(&'static str, u64); 15] {
    [
        ("hits", c.hits),
        ("misses", c.misses),
        ("moves", c.moves),
        ("deferred", c.deferred),
        ("not_steerable", c.not_steerable),
        ("inserts", c.inserts),
        ("removed", c.removed),
        ("expired", c.expired),
        ("evictions", c.evictions(live)),
        ("hook_events", c.hook_events),
        ("hook_filtered", c.hook_filtered),
        ("hook_closed", c.hook_closed),
        ("hook_unconnected", c.hook_unconnected),
        ("hook_other_netns", c.hook_other_netns),
        ("collisions", c.collisions),
    ]
}

/// `steer flows` as a table.
pub fn render(rows: &[FlowRow], total: usize, c: &RfsCounters) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<5} {:<46} {:<46} {:>4} {:>6} {:>10} {:>5} {:>9} {:>8} {:>8}  COMM",
        "PROTO", "FLOW (remote)", "LOCAL", "CPU", "READER", "PACKETS", "MOVES", "AGE ms", "READ ms", "PID"
    );
    for r in rows {
        let _ = writeln!(
            out,
            "{:<5} {:<46} {:<46} {:>4} {:>6} {:>10} {:>5} {:>9} {:>8} {:>8}  {}",
            r.proto,
            r.src,
            r.dst,
            r.cpu.map_or("rss".to_string(), |c| if r.shared { format!("{c}*") } else { c.to_string() }),
            r.reader_cpu,
            r.packets,
            r.moves,
            r.age_ms,
            r.read_ago_ms,
            r.pid,
            r.comm
        );
    }
    let fields: Vec<String> =
        counter_fields(c, total as u64).iter().map(|(n, v)| format!("{n} {v}")).collect();
    let _ = writeln!(out, "{} flows ({} shown); {}", total, rows.len(), fields.join(", "));
    if rows.iter().any(|r| r.shared) {
        let _ = writeln!(
            out,
            "*: the flow's slot holds another flow's reader (a collision): it follows that one"
        );
    }
    out
}

/// `steer flows --json`.
pub fn to_json(rows: &[FlowRow], total: usize, c: &RfsCounters) -> serde_json::Value {
    let counters: serde_json::Map<String, serde_json::Value> =
        counter_fields(c, total as u64).iter().map(|(n, v)| (n.to_string(), (*v).into())).collect();
    serde_json::json!({ "flows": rows, "total": total, "counters": counters })
}

#[cfg(test)]
mod tests {
    use super::*;

    use steer_common::FlowEntry;

    #[test]
    fn rows_show_v4_mapped_as_ipv4() {
        let local = std::net::Ipv4Addr::new(198, 18, 0, 2).to_ipv6_mapped().octets();
        let remote = std::net::Ipv4Addr::new(198, 18, 0, 1).to_ipv6_mapped().octets();
        let k = FlowKey::from_socket(steer_common::tuple::IPPROTO_TCP, &local, 80, &remote, 40000);
        let mut comm = [0u8; 16];
        comm[..4].copy_from_slice(b"nginx"[..4].as_ref());
        let e = FlowEntry {
            want_cpu: 1,
            created_ns: 1_000_000,
            last_read_ns: 2_000_000,
            comm,
            ..Default::default()
        };
        let v = FlowView { entry: e, cpu: Some(1), want_cpu: 1, pkts: 7, ..Default::default() };
        let r = FlowRow::new(&k, &v, 3_000_000);
        assert_eq!((r.src.as_str(), r.dst.as_str()), ("198.18.0.1:40000", "198.18.0.2:80"));
        assert_eq!((r.cpu, r.age_ms, r.read_ago_ms, r.comm.as_str()), (Some(1), 2, 1, "ngin"));
        let unmoved = FlowView { cpu: None, ..v };
        assert_eq!(FlowRow::new(&k, &unmoved, 3_000_000).cpu, None);
        assert_eq!(r.proto, "tcp");
    }

    #[test]
    fn udp_rows_say_udp_in_the_table_and_the_json() {
        let local = std::net::Ipv4Addr::new(198, 18, 0, 2).to_ipv6_mapped().octets();
        let remote: std::net::Ipv6Addr = "2001:db8::1".parse().unwrap();
        let k = FlowKey::from_socket(steer_common::tuple::IPPROTO_UDP, &local, 443, &remote.octets(), 4433);
        let rows = rows(&[(k, FlowView { cpu: Some(0), pkts: 3, ..Default::default() })], 0, 0);
        assert_eq!((rows[0].proto, rows[0].src.as_str()), ("udp", "[2001:db8::1]:4433"));
        let c = RfsCounters {
            inserts: 5,
            expired: 2,
            hook_unconnected: 9,
            hook_other_netns: 4,
            collisions: 3,
            ..Default::default()
        };
        let text = render(&rows, 1, &c);
        assert!(text.lines().nth(1).is_some_and(|l| l.starts_with("udp ")), "{text}");
        assert!(text.contains("expired 2, evictions 2") && text.contains("hook_unconnected 9"), "{text}");
        assert!(text.contains("hook_other_netns 4") && text.contains("collisions 3"), "{text}");
        let v = to_json(&rows, 1, &c);
        assert_eq!(v["flows"][0]["proto"], "udp", "{v}");
        assert_eq!(
            (v["counters"]["expired"].as_u64(), v["counters"]["evictions"].as_u64()),
            (Some(2), Some(2))
        );
        assert_eq!(v["counters"]["hook_other_netns"].as_u64(), Some(4), "{v}");
    }
}
