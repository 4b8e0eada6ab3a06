//! Validated settings of a steering run. Everything is checked here, before
//! anything on the system is touched.

use steer_common::{HashKind, SteerConfig, ToeplitzTable, Tuple, MS_RSS_KEY};

use crate::{
    cpus,
    error::{Error, Result},
    iface,
    inner::InnerSettings,
};

/// Default number of buckets in the indirection table.
pub const DEFAULT_TABLE_SIZE: u32 = 256;
/// Largest table the XDP program's map accepts.
pub const MAX_TABLE_SIZE: u32 = 65536;
/// Default per-CPU CPUMAP queue size (frames). A queue must hold what arrives
/// while its kthread waits behind the reader on its CPU (a reader of several
/// TCP streams in `--mode rfs`): 2048 overflowed there, and TCP backed off.
pub const DEFAULT_QSIZE: u32 = 4096;
/// cpumap's own upper bound on a queue (kernel: 16k frames).
pub const MAX_QSIZE: u32 = 16384;

/// How to attach the XDP program.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// Native (driver) mode, falling back to generic with a message.
    Auto,
    /// Native mode only.
    Native,
    /// Generic (skb) mode: slower, but sees every packet on every driver.
    Skb,
}

/// When a packet steered to the CPU it arrived on is passed in place
/// (`--local-pass`) instead of queued to that CPU's own CPUMAP queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LocalPass {
    /// In native mode on a NIC (each flow arrives on its queue's IRQ CPU): on; on a native veth:
    /// drained; never on TAP or in generic mode, where one flow's packets are received on
    /// several CPUs at once.
    Auto,
    /// Always for a flow that never went through another CPU's queue (only where every flow
    /// arrives on one CPU); for one that did, as drained.
    On,
    /// Only while nothing is queued for this CPU (its queue and its unflushed bulk both empty).
    Drained,
    /// Never: every packet goes through a CPUMAP queue.
    Off,
}

impl LocalPass {
    /// The XDP program's `local_pass` (`steer_common::LOCAL_PASS_*`), once the
    /// attach mode and the driver are known.
    pub fn resolve(self, native: bool, driver: &str) -> u32 {
        use steer_common::{LOCAL_PASS_DRAINED, LOCAL_PASS_OFF, LOCAL_PASS_ON};
        match self {
            Self::On => LOCAL_PASS_ON,
            Self::Drained => LOCAL_PASS_DRAINED,
            Self::Off => LOCAL_PASS_OFF,
            Self::Auto if !native => LOCAL_PASS_OFF,
            Self::Auto => match driver {
                // One NAPI instance polls a veth queue: a flow's packets are received one after another.
                "veth" => LOCAL_PASS_DRAINED,
                // tun runs XDP in each writer's context, on several CPUs at once.
                "tun" => LOCAL_PASS_OFF,
                _ => LOCAL_PASS_ON,
            },
        }
    }
}

/// When a CPU hands the packets it receives to their flows' CPUs (`--spread`). The default is
/// what `steer run`, its config file and the bench's steer rows get: `Busy`, which was ahead of
/// `Always` on most real-client figures and level with it on floods (bench/README.md).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Spread {
    /// Always: every packet goes to its flow's CPU.
    Always,
    /// Only where that pays: to every CPU while its NAPI polls are full, to the CPUs that idle
    /// while it does not, to none while it idles; otherwise it processes them itself, as
    /// without steering, wherever --local-pass may pass in place.
    #[default]
    Busy,
}

impl Spread {
    fn config(self) -> u32 {
        match self {
            Self::Busy => steer_common::SPREAD_BUSY,
            Self::Always => steer_common::SPREAD_ALWAYS,
        }
    }
}

/// Hash choice on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HashArg {
    /// Seeded multiply-xorshift over the flow's 64-bit words, murmur3's fmix64 at the end: cheap,
    /// well mixed.
    Fast,
    /// Toeplitz with a 40-byte key: the same hash a NIC's RSS computes.
    Toeplitz,
}

impl From<HashArg> for HashKind {
    fn from(h: HashArg) -> Self {
        match h {
            HashArg::Fast => HashKind::Fast,
            HashArg::Toeplitz => HashKind::Toeplitz,
        }
    }
}

/// The inputs of CPU choice, shared by `steer run` and `steer hash` so both
/// compute exactly the same thing.
#[derive(Clone, Debug)]
pub struct HashSettings {
    pub kind: HashKind,
    pub key: [u8; 40],
    pub seed: u32,
    pub symmetric: bool,
    pub table_size: u32,
    pub cpus: Vec<u32>,
    /// RFS (`--mode rfs`): look flows up in the flow table before hashing.
    pub rfs: Option<crate::rfs::RfsSettings>,
    /// Tunnels whose inner flow is hashed (`--inner`).
    pub inner: InnerSettings,
    /// When a packet steered to its own CPU is passed in place (`--local-pass`,
    /// resolved: `steer_common::LOCAL_PASS_*`).
    pub local_pass: u32,
    /// `--migrate-idle-us` for bucket moves (`--rebalance`) when RFS is off;
    /// with RFS its setting serves both.
    pub move_idle_us: Option<u32>,
    /// When a CPU hands packets on (`--spread`). `new` starts from `Always`, the rule with no
    /// state (a test run has no NAPI poll to turn `Busy` on); `steer run` sets its own default.
    pub spread: Spread,
}

/// What `steer hash` prints for a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Choice {
    pub hash: u32,
    pub bucket: u32,
    pub cpu: u32,
}

impl HashSettings {
    pub fn new(
        hash: HashArg,
        key: Option<&str>,
        seed: u32,
        symmetric: bool,
        table_size: u32,
        cpus: Vec<u32>,
    ) -> Result<Self> {
        if cpus.is_empty() {
            return Err(Error::EmptyCpuList);
        }
        let key = match key {
            Some(_) if hash != HashArg::Toeplitz => {
                return Err(Error::BadKey("--key only applies to --hash toeplitz".into()))
            }
            Some(k) => parse_key(k)?,
            None => MS_RSS_KEY,
        };
        check_table_size(table_size)?;
        Ok(Self {
            kind: hash.into(),
            key,
            seed,
            symmetric,
            table_size,
            cpus,
            rfs: None,
            inner: InnerSettings::default(),
            move_idle_us: None,
            local_pass: steer_common::LOCAL_PASS_ON,
            spread: Spread::Always,
        })
    }

    pub fn steer_config(&self) -> SteerConfig {
        let mut cfg = SteerConfig {
            hash: self.kind as u32,
            seed: self.seed,
            table_mask: self.table_size - 1,
            symmetric: self.symmetric as u32,
            rfs: self.rfs.is_some() as u32,
            // Moving buckets read it too: never 0 (which would switch them at once).
            migrate_idle_us: self
                .rfs
                .map(|r| r.migrate_idle_us)
                .or(self.move_idle_us)
                .unwrap_or(crate::rfs::DEFAULT_MIGRATE_IDLE_US),
            local_pass: self.local_pass,
            rfs_mask: self.rfs.map_or(0, |r| steer_common::flow::slots(r.flow_entries) - 1),
            steering: self.cpus.iter().filter(|c| **c < u64::BITS).fold(0, |m, c| m | 1 << c),
            ..SteerConfig::default()
        };
        self.inner.apply(&mut cfg);
        cfg.spread = self.spread.config();
        cfg
    }

    /// The same settings with other tunnel settings.
    pub fn with_inner(mut self, inner: InnerSettings) -> Self {
        self.inner = inner;
        self
    }

    /// The same settings with RFS on (`Some`) or off.
    pub fn with_rfs(mut self, rfs: Option<crate::rfs::RfsSettings>) -> Self {
        self.rfs = rfs;
        self
    }

    /// The same settings with other `--spread` settings.
    pub fn with_spread(mut self, spread: Spread) -> Self {
        self.spread = spread;
        self
    }

    /// The same settings with the idle time of bucket moves (without RFS).
    pub fn with_move_idle_us(mut self, us: Option<u32>) -> Self {
        self.move_idle_us = us;
        self
    }

    pub fn indirection_table(&self) -> Vec<u32> {
        cpus::indirection_table(&self.cpus, self.table_size)
    }

    /// Hash, bucket and CPU for `t`, as the XDP program computes them.
    pub fn choose(&self, t: &Tuple) -> Choice {
        let table = ToeplitzTable::new(&self.key);
        let hash = steer_common::hash::flow_hash(self.kind, self.seed, self.symmetric, Some(&table), t)
            .unwrap_or_default();
        let bucket = hash & (self.table_size - 1);
        Choice { hash, bucket, cpu: self.cpus[bucket as usize % self.cpus.len()] }
    }
}

/// Parses a 40-byte RSS key written as hex, with or without ':' separators
/// (the form `ethtool -x` prints).
pub fn parse_key(s: &str) -> Result<[u8; 40]> {
    let hex: String = s.chars().filter(|c| *c != ':').collect();
    if hex.len() != 80 {
        return Err(Error::BadKey(format!(
            "\"{s}\" has {} hex digits; a Toeplitz key is 40 bytes (80 hex digits)",
            hex.len()
        )));
    }
    let mut key = [0u8; 40];
    for (i, k) in key.iter_mut().enumerate() {
        *k = u8::from_str_radix(&hex[i * 2..i * 2 + 2], 16)
            .map_err(|_| Error::BadKey(format!("\"{s}\" is not hexadecimal")))?;
    }
    Ok(key)
}

pub fn check_table_size(n: u32) -> Result<()> {
    if !n.is_power_of_two() || !(1..=MAX_TABLE_SIZE).contains(&n) {
        return Err(Error::BadValue {
            what: "--table-size",
            value: n.to_string(),
            why: format!("must be a power of two between 1 and {MAX_TABLE_SIZE}"),
        });
    }
    Ok(())
}

pub fn check_qsize(n: u32) -> Result<()> {
    if !(1..=MAX_QSIZE).contains(&n) {
        return Err(Error::BadValue {
            what: "--qsize",
            value: n.to_string(),
            why: format!("must be between 1 and {MAX_QSIZE} frames"),
        });
    }
    Ok(())
}

/// Everything `steer run` needs, validated.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub iface: String,
    pub ifindex: u32,
    pub hash: HashSettings,
    pub qsize: u32,
    pub xdp_mode: XdpMode,
    pub replace: bool,
    pub local_pass: LocalPass,
}

impl RunOptions {
    /// Checks the interface and the sizes; `hash` already checked CPUs and key.
    pub fn new(
        iface: &str,
        hash: HashSettings,
        qsize: u32,
        xdp_mode: XdpMode,
        replace: bool,
        local_pass: LocalPass,
    ) -> Result<Self> {
        let ifindex = iface::index(iface)?;
        check_qsize(qsize)?;
        let online = cpus::online()?;
        cpus::check_online(&hash.cpus, &online)?;
        let xdp_mode = match (iface::driver(iface).ok().as_deref(), xdp_mode) {
            (Some("tun"), XdpMode::Native) => return Err(Error::TapNative { iface: iface.into() }),
            (Some("tun"), XdpMode::Auto) => {
                log::info!(
                    "{iface} is a TAP device: using generic XDP (native XDP + CPUMAP drops frames written \
                     through a blocking TAP fd on this kernel: skb->mac_len 0, IP_INHDR)"
                );
                XdpMode::Skb
            }
            (Some("veth"), XdpMode::Auto) => {
                log::info!(
                    "{iface} is a veth: using generic XDP (native XDP + CPUMAP breaks TCP from the peer's sockets \
                     on this kernel: the checksum is lost on the way, Tcp InCsumErrors); --xdp-mode native to \
                     override"
                );
                XdpMode::Skb
            }
            (Some("veth"), XdpMode::Native) => {
                log::warn!(
                    "{iface} is a veth and --xdp-mode native was asked for: frames redirected into it are steered \
                     natively, but TCP sent from the peer's sockets loses its checksum through the CPUMAP \
                     (Tcp InCsumErrors) unless tx checksumming is off on the peer"
                );
                XdpMode::Native
            }
            (_, mode) => mode,
        };
        Ok(Self { iface: iface.to_string(), ifindex, hash, qsize, xdp_mode, replace, local_pass })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_accepts_ethtool_form_and_plain_hex() {
        let colon = "6d:5a:56:da:25:5b:0e:c2:41:67:25:3d:43:a3:8f:b0:d0:ca:2b:cb:ae:7b:30:b4:77:cb:2d:a3:80:30:f2:0c:6a:42:b7:3b:be:ac:01:fa";
        assert_eq!(parse_key(colon).unwrap(), MS_RSS_KEY);
        assert_eq!(parse_key(&colon.replace(':', "")).unwrap(), MS_RSS_KEY);
    }

    #[test]
    fn key_errors_say_what_is_wrong() {
        let e = parse_key("abcd").unwrap_err().to_string();
        assert!(e.contains("4 hex digits") && e.contains("40 bytes"), "{e}");
        let e = parse_key(&"zz".repeat(40)).unwrap_err().to_string();
        assert!(e.contains("not hexadecimal"), "{e}");
    }

    #[test]
    fn table_size_must_be_power_of_two() {
        assert!(check_table_size(256).is_ok());
        assert!(check_table_size(65536).is_ok());
        for bad in [0, 3, 100, 131072] {
            let e = check_table_size(bad).unwrap_err().to_string();
            assert!(e.contains(&bad.to_string()), "{e}");
        }
    }

    #[test]
    fn qsize_bounds() {
        assert!(check_qsize(2048).is_ok());
        assert!(check_qsize(0).is_err());
        assert!(check_qsize(100_000).is_err());
    }

    #[test]
    fn choice_follows_the_table() {
        let s = HashSettings::new(HashArg::Toeplitz, None, 0, false, 128, vec![3, 5]).unwrap();
        let t = Tuple::new("66.9.149.187".parse().unwrap(), 2794, "161.142.100.80".parse().unwrap(), 1766, 6)
            .unwrap();
        let c = s.choose(&t);
        assert_eq!(c.hash, 0x51ccc178);
        assert_eq!(c.bucket, 0x51ccc178 & 127);
        assert_eq!(c.cpu, s.indirection_table()[c.bucket as usize]);
    }

    #[test]
    fn key_with_fast_hash_is_refused() {
        let k = "00".repeat(40);
        assert!(HashSettings::new(HashArg::Fast, Some(&k), 0, false, 256, vec![0]).is_err());
    }
}
