//! The hash functions that map a flow to a bucket of the indirection table.
//!
//! Both are written so the verifier accepts them unchanged (fixed loop bounds,
//! indices it can prove in range) and userspace runs the very same code.

use crate::tuple::Tuple;

/// Which hash the XDP program runs.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HashKind {
    /// Seeded multiply-xorshift over the tuple's 64-bit words: cheap and well mixed.
    Fast = 0,
    /// Toeplitz with a 40-byte key, bit-compatible with NIC RSS.
    Toeplitz = 1,
}

impl HashKind {
    pub fn from_u32(v: u32) -> Option<Self> {
        match v {
            0 => Some(Self::Fast),
            1 => Some(Self::Toeplitz),
            _ => None,
        }
    }
}

/// The key from Microsoft's RSS specification, the default of most NIC drivers.
pub const MS_RSS_KEY: [u8; 40] = [
    0x6d, 0x5a, 0x56, 0xda, 0x25, 0x5b, 0x0e, 0xc2, 0x41, 0x67, 0x25, 0x3d, 0x43, 0xa3, 0x8f, 0xb0, 0xd0,
    0xca, 0x2b, 0xcb, 0xae, 0x7b, 0x30, 0xb4, 0x77, 0xcb, 0x2d, 0xa3, 0x80, 0x30, 0xf2, 0x0c, 0x6a, 0x42,
    0xb7, 0x3b, 0xbe, 0xac, 0x01, 0xfa,
];

/// Longest Toeplitz input: IPv6 source + destination + ports.
pub const TOEPLITZ_MAX_INPUT: usize = 36;

/// Toeplitz as a lookup table: entry `[pos][byte]` is what input byte `byte` at
/// position `pos` contributes to the hash. One load and one XOR per input byte
/// replaces eight conditional 32-bit window extractions, which keeps the XDP
/// program short enough to be cheap.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ToeplitzTable {
    pub t: [[u32; 256]; TOEPLITZ_MAX_INPUT],
}

impl ToeplitzTable {
    /// Expands a 40-byte key into the table.
    pub fn new(key: &[u8; 40]) -> Self {
        let mut t = [[0u32; 256]; TOEPLITZ_MAX_INPUT];
        let mut pos = 0;
        while pos < TOEPLITZ_MAX_INPUT {
            let mut byte = 0;
            while byte < 256 {
                let mut acc = 0u32;
                let mut bit = 0;
                while bit < 8 {
                    if byte & (0x80 >> bit) != 0 {
                        acc ^= key_window(key, pos * 8 + bit);
                    }
                    bit += 1;
                }
                t[pos][byte] = acc;
                byte += 1;
            }
            pos += 1;
        }
        Self { t }
    }

    #[inline(always)]
    fn at(&self, pos: usize, byte: u8) -> u32 {
        self.t[pos][byte as usize]
    }

    #[inline(always)]
    fn word(&self, pos: usize, w: u32) -> u32 {
        let b = w.to_ne_bytes();
        self.at(pos, b[0]) ^ self.at(pos + 1, b[1]) ^ self.at(pos + 2, b[2]) ^ self.at(pos + 3, b[3])
    }
}

/// The 32 key bits starting at bit `i` (MSB first), the Toeplitz sliding window.
fn key_window(key: &[u8; 40], i: usize) -> u32 {
    let byte = i / 8;
    let shift = i % 8;
    let mut w: u64 = 0;
    let mut k = 0;
    while k < 5 {
        let b = if byte + k < 40 { key[byte + k] } else { 0 };
        w = (w << 8) | b as u64;
        k += 1;
    }
    ((w << shift) >> 8) as u32
}

/// Reference Toeplitz, bit by bit over an input byte string, as the RSS
/// specification writes it. Used by tests to check the table-driven version.
pub fn toeplitz_reference(key: &[u8; 40], input: &[u8]) -> u32 {
    let mut h = 0u32;
    for (i, b) in input.iter().enumerate() {
        for bit in 0..8 {
            if b & (0x80 >> bit) != 0 {
                h ^= key_window(key, i * 8 + bit);
            }
        }
    }
    h
}

/// Toeplitz over the RSS input of `t`: source address, destination address,
/// then source and destination port when the tuple has them.
#[inline(always)]
pub fn toeplitz(table: &ToeplitzTable, t: &Tuple) -> u32 {
    let mut h = 0;
    if t.family == 6 {
        let mut i = 0;
        while i < 4 {
            h ^= table.word(i * 4, t.saddr[i]) ^ table.word(16 + i * 4, t.daddr[i]);
            i += 1;
        }
        if t.has_ports != 0 {
            h ^= table.word(32, t.ports);
        }
    } else {
        h = table.word(0, t.saddr[0]) ^ table.word(4, t.daddr[0]);
        if t.has_ports != 0 {
            h ^= table.word(8, t.ports);
        }
    }
    h
}

/// An odd multiplier (2^64 / golden ratio): multiplying by it is a bijection.
const M: u64 = 0x9e37_79b9_7f4a_7c15;

/// Takes one 64-bit word of the flow into `h`. For a fixed `h` it is a bijection of `w` (xor, an
/// odd multiply, an xorshift), so flows that differ in one word never collide here; the xorshift
/// brings the product's high half down, so a difference in a word's high bits reaches the low
/// bits before the next word is taken in (a multiply alone carries bits only upward).
#[inline(always)]
fn absorb(h: u64, w: u64) -> u64 {
    let h = (h ^ w).wrapping_mul(M);
    h ^ (h >> 32)
}

/// murmur3's 64-bit finaliser: every input bit reaches every output bit.
#[inline(always)]
fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

#[inline(always)]
fn pair(lo: u32, hi: u32) -> u64 {
    lo as u64 | (hi as u64) << 32
}

/// Seeded hash over the tuple's 64-bit words and protocol: one multiply and one xorshift per word,
/// murmur3's fmix64 at the end. 64-bit steps cost BPF v1 no cut back to 32 bits.
///
/// Unlike Toeplitz this mixes every input bit into every output bit, so the low
/// bits that pick a bucket are well spread even for sequential ports.
#[inline(always)]
pub fn fast(seed: u32, t: &Tuple) -> u32 {
    let mut len = 8u32;
    let mut h;
    if t.family == 6 {
        h = absorb(seed as u64, pair(t.saddr[0], t.saddr[1]));
        h = absorb(h, pair(t.saddr[2], t.saddr[3]));
        h = absorb(h, pair(t.daddr[0], t.daddr[1]));
        h = absorb(h, pair(t.daddr[2], t.daddr[3]));
        len = 32;
    } else {
        h = absorb(seed as u64, pair(t.saddr[0], t.daddr[0]));
    }
    if t.has_ports != 0 {
        len += 4;
    }
    // Ports (0 without), protocol and length in the last word.
    h = absorb(h, pair(t.ports, t.proto as u32 | len << 8));
    fmix64(h) as u32
}

/// The same tuple with its two endpoints in a fixed order, so that both
/// directions of a connection hash alike (`--symmetric`).
#[inline(always)]
pub fn symmetric(t: &Tuple) -> Tuple {
    let mut swap = false;
    let mut decided = false;
    let mut i = 0;
    while i < 4 {
        if !decided && t.saddr[i] != t.daddr[i] {
            swap = t.saddr[i] > t.daddr[i];
            decided = true;
        }
        i += 1;
    }
    if !decided {
        // Same address on both ends: order by port (first two raw bytes = source).
        swap = (t.ports & 0xffff) > (t.ports >> 16);
    }
    if !swap {
        return *t;
    }
    Tuple { saddr: t.daddr, daddr: t.saddr, ports: t.ports.rotate_left(16), ..*t }
}

/// The hash the XDP program computes for `t` under the given settings.
#[inline(always)]
pub fn flow_hash(
    kind: HashKind,
    seed: u32,
    sym: bool,
    table: Option<&ToeplitzTable>,
    t: &Tuple,
) -> Option<u32> {
    let canon;
    let t = if sym {
        canon = symmetric(t);
        &canon
    } else {
        t
    };
    match kind {
        HashKind::Fast => Some(fast(seed, t)),
        HashKind::Toeplitz => table.map(|tab| toeplitz(tab, t)),
    }
}
