//! The hashes against published vectors and their own reference versions.

use std::net::IpAddr;

use steer_common::hash::{fast, flow_hash, symmetric, toeplitz, toeplitz_reference};
use steer_common::tuple::IPPROTO_TCP;
use steer_common::{HashKind, ToeplitzTable, Tuple, MS_RSS_KEY};

fn tuple(src: &str, sport: u16, dst: &str, dport: u16) -> Tuple {
    let s: IpAddr = src.parse().unwrap();
    let d: IpAddr = dst.parse().unwrap();
    Tuple::new(s, sport, d, dport, IPPROTO_TCP).unwrap()
}

/// Microsoft's "Verifying the RSS Hash Calculation" tables:
/// (source, source port, destination, destination port, with ports, addresses only).
const MS_VECTORS: &[(&str, u16, &str, u16, u32, u32)] = &[
    ("66.9.149.187", 2794, "161.142.100.80", 1766, 0x51ccc178, 0x323e8fc2),
    ("199.92.111.2", 14230, "65.69.140.83", 4739, 0xc626b0ea, 0xd718262a),
    ("24.19.198.95", 12898, "12.22.207.184", 38024, 0x5c2b394a, 0xd2d0a5de),
    ("38.27.205.30", 48228, "209.142.163.6", 2217, 0xafc7327f, 0x82989176),
    ("153.39.163.191", 44251, "202.188.127.2", 1303, 0x10e828a2, 0x5d1809c5),
    ("3ffe:2501:200:1fff::7", 2794, "3ffe:2501:200:3::1", 1766, 0x40207d3d, 0x2cc18cd5),
    ("3ffe:501:8::260:97ff:fe40:efab", 14230, "ff02::1", 4739, 0xdde51bbf, 0x0f0c461c),
    ("3ffe:1900:4545:3:200:f8ff:fe21:67cf", 44251, "fe80::200:f8ff:fe21:67cf", 38024, 0x02d1feef, 0x4b61e985),
];

#[test]
fn toeplitz_matches_microsoft_rss_verification_suite() {
    let table = ToeplitzTable::new(&MS_RSS_KEY);
    for &(src, sport, dst, dport, with_ports, addrs_only) in MS_VECTORS {
        let t = tuple(src, sport, dst, dport);
        assert_eq!(toeplitz(&table, &t), with_ports, "{src}:{sport} -> {dst}:{dport}");
        assert_eq!(toeplitz(&table, &t.without_ports()), addrs_only, "{src} -> {dst}");
    }
}

#[test]
fn reference_toeplitz_matches_the_suite_too() {
    // The bit-by-bit version on the byte string the spec describes.
    let (src, sport, dst, dport, with_ports, _) = MS_VECTORS[0];
    let s: std::net::Ipv4Addr = src.parse().unwrap();
    let d: std::net::Ipv4Addr = dst.parse().unwrap();
    let mut input = Vec::new();
    input.extend_from_slice(&s.octets());
    input.extend_from_slice(&d.octets());
    input.extend_from_slice(&sport.to_be_bytes());
    input.extend_from_slice(&dport.to_be_bytes());
    assert_eq!(toeplitz_reference(&MS_RSS_KEY, &input), with_ports);
}

#[test]
fn table_toeplitz_equals_reference_for_other_keys() {
    let mut key = [0u8; 40];
    for (i, k) in key.iter_mut().enumerate() {
        *k = (i as u8).wrapping_mul(37).wrapping_add(11);
    }
    let table = ToeplitzTable::new(&key);
    for port in [0u16, 1, 80, 443, 65535] {
        let t = tuple("2001:db8::1", port, "2001:db8::2", 9000);
        let mut input = Vec::new();
        input.extend_from_slice(&"2001:db8::1".parse::<std::net::Ipv6Addr>().unwrap().octets());
        input.extend_from_slice(&"2001:db8::2".parse::<std::net::Ipv6Addr>().unwrap().octets());
        input.extend_from_slice(&port.to_be_bytes());
        input.extend_from_slice(&9000u16.to_be_bytes());
        assert_eq!(toeplitz(&table, &t), toeplitz_reference(&key, &input));
    }
}

#[test]
fn symmetric_hashes_both_directions_alike() {
    let table = ToeplitzTable::new(&MS_RSS_KEY);
    for &(src, sport, dst, dport, _, _) in MS_VECTORS {
        let fwd = tuple(src, sport, dst, dport);
        let rev = tuple(dst, dport, src, sport);
        for kind in [HashKind::Fast, HashKind::Toeplitz] {
            let a = flow_hash(kind, 7, true, Some(&table), &fwd);
            let b = flow_hash(kind, 7, true, Some(&table), &rev);
            assert_eq!(a, b, "{kind:?} {src} {dst}");
        }
        // And without --symmetric the two directions differ.
        assert_ne!(fast(7, &fwd), fast(7, &rev));
    }
    // Same address on both ends: ports decide.
    let a = tuple("198.18.0.1", 1000, "198.18.0.1", 2000);
    let b = tuple("198.18.0.1", 2000, "198.18.0.1", 1000);
    assert_eq!(symmetric(&a), symmetric(&b));
}

#[test]
fn fast_hash_spreads_sequential_ports_over_buckets() {
    // 4096 flows that differ only in the source port, into 256 buckets: every
    // bucket should hold close to 16; a poor mix leaves buckets empty.
    let mut buckets = [0u32; 256];
    for p in 0..4096u16 {
        let t = tuple("198.18.0.1", 10000 + p, "198.18.0.2", 9);
        buckets[(fast(0, &t) & 255) as usize] += 1;
    }
    let max = *buckets.iter().max().unwrap();
    let min = *buckets.iter().min().unwrap();
    assert!(min >= 4 && max <= 34, "min {min} max {max}");
}

#[test]
fn fast_hash_spreads_flows_that_differ_in_two_fields_over_buckets() {
    // Clients of one /24 against a range of ports, and the other pairs a load
    // balancer sees: 65536 flows each, into 256 buckets (256 expected in each).
    // A hash whose high input bits only reach its high bits before the final
    // mix (a multiply without a rotate or shift between words) gives such
    // pairs a few hundred distinct values and leaves most buckets empty.
    type Flow = fn(u32, u32) -> Tuple;
    let cases: [(&str, Flow); 7] = [
        ("client address x service port", |a, b| {
            tuple(&format!("10.0.0.{a}"), 40000, "198.18.0.2", 8000 + b as u16)
        }),
        ("client address x client port", |a, b| {
            tuple(&format!("10.0.0.{a}"), 30000 + b as u16, "198.18.0.2", 443)
        }),
        ("client /16 x client port", |a, b| tuple(&format!("10.{b}.0.{a}"), 30000, "198.18.0.2", 443)),
        ("service address x service port", |a, b| {
            tuple("10.0.0.1", 40000, &format!("198.18.{b}.{a}"), 8000 + b as u16)
        }),
        ("IPv6 client address x service port", |a, b| {
            tuple(&format!("2001:db8::{a:x}"), 40000, "2001:db8:1::2", 8000 + b as u16)
        }),
        ("IPv6 client address x service address", |a, b| {
            tuple(&format!("2001:db8::{a:x}"), 40000, &format!("2001:db8:1::{b:x}"), 443)
        }),
        ("IPv6 client /64 x client port", |a, b| {
            tuple(&format!("2001:db8:0:{a:x}::1"), 30000 + b as u16, "2001:db8:1::2", 443)
        }),
    ];
    for (what, flow) in cases {
        for seed in [0, 0xdead_beef] {
            let mut buckets = [0u32; 256];
            let mut hashes = std::collections::HashSet::new();
            for a in 0..256 {
                for b in 0..256 {
                    let h = fast(seed, &flow(a, b));
                    buckets[(h & 255) as usize] += 1;
                    hashes.insert(h);
                }
            }
            let (min, max) = (*buckets.iter().min().unwrap(), *buckets.iter().max().unwrap());
            // Binomial(65536, 1/256): sigma 16; bounds at about 5 sigma, far from an empty bucket.
            assert!(min >= 176 && max <= 336, "{what}, seed {seed:#x}: min {min} max {max}");
            assert!(hashes.len() >= 65_500, "{what}, seed {seed:#x}: {} distinct hashes", hashes.len());
        }
    }
}

#[test]
fn seed_and_protocol_change_the_fast_hash() {
    let t = tuple("198.18.0.1", 1, "198.18.0.2", 2);
    assert_ne!(fast(1, &t), fast(2, &t));
    let mut u = t;
    u.proto = 17;
    assert_ne!(fast(1, &t), fast(1, &u));
}

#[test]
fn ports_round_trip_through_the_raw_word() {
    let t = tuple("198.18.0.1", 0x1234, "198.18.0.2", 0xabcd);
    assert_eq!(t.sport(), 0x1234);
    assert_eq!(t.dport(), 0xabcd);
}
