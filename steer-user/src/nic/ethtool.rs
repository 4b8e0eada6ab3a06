//! The ethtool ioctl (SIOCETHTOOL) for what steer reads and sets on a NIC:
//! channels, coalescing, rings, offload features, the RSS indirection table
//! and the RSS key.
//!
//! Why the ioctl and not ethtool netlink: every operation steer needs has an
//! ioctl with a fixed, tiny ABI that every kernel since 3.x keeps, it follows
//! the caller's network namespace like netlink does, and it needs no crate
//! (the maintained ethtool-netlink crates need a newer rustc than ours).

use std::{
    collections::BTreeMap,
    ffi::c_void,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use serde::{Deserialize, Serialize};

use crate::{
    error::{Error, Result},
    iface,
};

const ETHTOOL_GCOALESCE: u32 = 0x0e;
const ETHTOOL_SCOALESCE: u32 = 0x0f;
const ETHTOOL_GRINGPARAM: u32 = 0x10;
const ETHTOOL_GSTRINGS: u32 = 0x1b;
const ETHTOOL_GSSET_INFO: u32 = 0x37;
const ETHTOOL_GRXFHINDIR: u32 = 0x38;
const ETHTOOL_SRXFHINDIR: u32 = 0x39;
const ETHTOOL_GFEATURES: u32 = 0x3a;
const ETHTOOL_SFEATURES: u32 = 0x3b;
const ETHTOOL_GCHANNELS: u32 = 0x3c;
const ETHTOOL_SCHANNELS: u32 = 0x3d;
const ETHTOOL_GRSSH: u32 = 0x46;
const ETH_SS_FEATURES: u32 = 4;
const ETH_GSTRING_LEN: usize = 32;

/// Channel (queue) counts: current and the driver's maxima.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Channels {
    pub max_rx: u32,
    pub max_tx: u32,
    pub max_other: u32,
    pub max_combined: u32,
    pub rx: u32,
    pub tx: u32,
    pub other: u32,
    pub combined: u32,
}

/// The names of `struct ethtool_coalesce`'s fields, in ABI order, spelled as
/// `ethtool -C` spells them.
pub const COALESCE_FIELDS: [&str; 22] = [
    "rx-usecs",
    "rx-frames",
    "rx-usecs-irq",
    "rx-frames-irq",
    "tx-usecs",
    "tx-frames",
    "tx-usecs-irq",
    "tx-frames-irq",
    "stats-block-usecs",
    "adaptive-rx",
    "adaptive-tx",
    "pkt-rate-low",
    "rx-usecs-low",
    "rx-frames-low",
    "tx-usecs-low",
    "tx-frames-low",
    "pkt-rate-high",
    "rx-usecs-high",
    "rx-frames-high",
    "tx-usecs-high",
    "tx-frames-high",
    "sample-interval",
];

/// Every coalescing parameter, in ABI order, so a restore writes back exactly
/// what was read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Coalesce(pub [u32; 22]);

impl Coalesce {
    pub fn field(name: &str) -> Option<usize> {
        COALESCE_FIELDS.iter().position(|f| *f == name)
    }

    pub fn get(&self, name: &str) -> Option<u32> {
        Self::field(name).map(|i| self.0[i])
    }

    /// The parameters as `ethtool -c` names them.
    pub fn named(&self) -> BTreeMap<&'static str, u32> {
        COALESCE_FIELDS.iter().copied().zip(self.0).collect()
    }
}

/// Ring sizes: current and maxima.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rings {
    pub rx_max: u32,
    pub rx_mini_max: u32,
    pub rx_jumbo_max: u32,
    pub tx_max: u32,
    pub rx: u32,
    pub rx_mini: u32,
    pub rx_jumbo: u32,
    pub tx: u32,
}

/// One offload feature bit: whether the driver lets it change, what was
/// asked for and what is on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Feature {
    pub changeable: bool,
    pub requested: bool,
    pub active: bool,
}

/// An open ethtool handle on one interface in the caller's network namespace.
pub struct Ethtool {
    pub iface: String,
    pub driver: String,
    fd: OwnedFd,
}

impl Ethtool {
    pub fn open(name: &str) -> Result<Self> {
        iface::index(name)?;
        let driver = iface::driver(name).unwrap_or_else(|_| "unknown".into());
        // SAFETY: plain socket syscall.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(Error::io("socket for SIOCETHTOOL", std::io::Error::last_os_error()));
        }
        // SAFETY: fd is a fresh socket we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self { iface: name.to_string(), driver, fd })
    }

    fn err(&self, op: &str, source: std::io::Error) -> Error {
        Error::NicOp { iface: self.iface.clone(), driver: self.driver.clone(), op: op.to_string(), source }
    }

    /// SIOCETHTOOL with `data` (which starts with the command word).
    fn ioctl(&self, op: &str, data: *mut c_void) -> Result<i32> {
        // SAFETY: ifreq is plain data; we fill the name and point ifru_data at `data`.
        let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
        for (d, s) in ifr.ifr_name.iter_mut().zip(self.iface.bytes().take(libc::IFNAMSIZ - 1)) {
            *d = s as libc::c_char;
        }
        ifr.ifr_ifru.ifru_data = data.cast();
        // SAFETY: fd is ours; the caller's buffer is sized for the command and outlives the call.
        let rc = unsafe { libc::ioctl(self.fd.as_raw_fd(), libc::SIOCETHTOOL, &mut ifr) };
        if rc < 0 {
            return Err(self.err(op, std::io::Error::last_os_error()));
        }
        Ok(rc)
    }

    fn words<const N: usize>(&self, op: &str, cmd: u32, init: [u32; N]) -> Result<[u32; N]> {
        let mut buf = init;
        buf[0] = cmd;
        self.ioctl(op, buf.as_mut_ptr().cast())?;
        Ok(buf)
    }

    /// Turns tx checksum offload on or off (ETHTOOL_STXCSUM, `ethtool -K IF tx on|off`).
    pub fn set_tx_checksum(&self, on: bool) -> Result<()> {
        const ETHTOOL_STXCSUM: u32 = 0x17;
        self.words("ETHTOOL_STXCSUM", ETHTOOL_STXCSUM, [0, on as u32]).map(|_| ())
    }

    pub fn channels(&self) -> Result<Channels> {
        let w = self.words("ETHTOOL_GCHANNELS", ETHTOOL_GCHANNELS, [0u32; 9])?;
        Ok(Channels {
            max_rx: w[1],
            max_tx: w[2],
            max_other: w[3],
            max_combined: w[4],
            rx: w[5],
            tx: w[6],
            other: w[7],
            combined: w[8],
        })
    }

    pub fn set_channels(&self, c: &Channels) -> Result<()> {
        let w = [ETHTOOL_SCHANNELS, 0, 0, 0, 0, c.rx, c.tx, c.other, c.combined];
        self.words("ETHTOOL_SCHANNELS", ETHTOOL_SCHANNELS, w).map(|_| ())
    }

    pub fn coalesce(&self) -> Result<Coalesce> {
        let w = self.words("ETHTOOL_GCOALESCE", ETHTOOL_GCOALESCE, [0u32; 23])?;
        let mut c = [0u32; 22];
        c.copy_from_slice(&w[1..]);
        Ok(Coalesce(c))
    }

    pub fn set_coalesce(&self, c: &Coalesce) -> Result<()> {
        let mut w = [0u32; 23];
        w[1..].copy_from_slice(&c.0);
        self.words("ETHTOOL_SCOALESCE", ETHTOOL_SCOALESCE, w).map(|_| ())
    }

    pub fn rings(&self) -> Result<Rings> {
        let w = self.words("ETHTOOL_GRINGPARAM", ETHTOOL_GRINGPARAM, [0u32; 9])?;
        Ok(Rings {
            rx_max: w[1],
            rx_mini_max: w[2],
            rx_jumbo_max: w[3],
            tx_max: w[4],
            rx: w[5],
            rx_mini: w[6],
            rx_jumbo: w[7],
            tx: w[8],
        })
    }

    /// The kernel's feature names ("rx-gro", "tx-tcp-segmentation", ...), bit order.
    fn feature_names(&self) -> Result<Vec<String>> {
        // struct ethtool_sset_info { cmd, reserved, u64 sset_mask, u32 data[] }
        let mut info = [0u32; 5];
        info[0] = ETHTOOL_GSSET_INFO;
        let mask = 1u64 << ETH_SS_FEATURES;
        info[2] = mask as u32;
        info[3] = (mask >> 32) as u32;
        self.ioctl("ETHTOOL_GSSET_INFO", info.as_mut_ptr().cast())?;
        let n = info[4] as usize;
        if n == 0 || n > 4096 {
            return Err(self.err("ETHTOOL_GSSET_INFO", std::io::Error::from_raw_os_error(libc::EINVAL)));
        }
        // struct ethtool_gstrings { cmd, string_set, len, u8 data[len * 32] }
        let mut buf = vec![0u32; 3 + n * ETH_GSTRING_LEN / 4];
        buf[0] = ETHTOOL_GSTRINGS;
        buf[1] = ETH_SS_FEATURES;
        buf[2] = n as u32;
        self.ioctl("ETHTOOL_GSTRINGS", buf.as_mut_ptr().cast())?;
        let bytes: Vec<u8> = buf[3..].iter().flat_map(|w| w.to_ne_bytes()).collect();
        Ok(bytes
            .chunks(ETH_GSTRING_LEN)
            .map(|c| {
                let end = c.iter().position(|&b| b == 0).unwrap_or(c.len());
                String::from_utf8_lossy(&c[..end]).into_owned()
            })
            .collect())
    }

    /// Every offload feature of the device by kernel name.
    pub fn features(&self) -> Result<BTreeMap<String, Feature>> {
        let names = self.feature_names()?;
        let blocks = names.len().div_ceil(32);
        let mut buf = vec![0u32; 2 + 4 * blocks];
        buf[0] = ETHTOOL_GFEATURES;
        buf[1] = blocks as u32;
        self.ioctl("ETHTOOL_GFEATURES", buf.as_mut_ptr().cast())?;
        let bit = |word: usize, i: usize| buf[2 + 4 * (i / 32) + word] & (1 << (i % 32)) != 0;
        Ok(names
            .iter()
            .enumerate()
            .filter(|(_, n)| !n.is_empty())
            .map(|(i, n)| {
                // available, requested, active, never_changed
                let f = Feature { changeable: bit(0, i), requested: bit(1, i), active: bit(2, i) };
                (n.clone(), f)
            })
            .collect())
    }

    /// Sets the requested state of the named features, leaving all others alone.
    pub fn set_features(&self, want: &BTreeMap<String, bool>) -> Result<()> {
        let names = self.feature_names()?;
        let blocks = names.len().div_ceil(32);
        let mut buf = vec![0u32; 2 + 2 * blocks];
        buf[0] = ETHTOOL_SFEATURES;
        buf[1] = blocks as u32;
        for (name, on) in want {
            let Some(i) = names.iter().position(|n| n == name) else {
                return Err(self.err(
                    &format!("ETHTOOL_SFEATURES {name}"),
                    std::io::Error::from_raw_os_error(libc::EOPNOTSUPP),
                ));
            };
            buf[2 + 2 * (i / 32)] |= 1 << (i % 32);
            if *on {
                buf[2 + 2 * (i / 32) + 1] |= 1 << (i % 32);
            }
        }
        let rc = self.ioctl("ETHTOOL_SFEATURES", buf.as_mut_ptr().cast())?;
        // ETHTOOL_F_UNSUPPORTED: a bit in `valid` the driver cannot change.
        if rc & 1 != 0 {
            return Err(self.err("ETHTOOL_SFEATURES", std::io::Error::from_raw_os_error(libc::EOPNOTSUPP)));
        }
        Ok(())
    }

    /// The RSS indirection table (entry -> rx queue).
    pub fn rss_indir(&self) -> Result<Vec<u32>> {
        let mut head = [ETHTOOL_GRXFHINDIR, 0u32];
        self.ioctl("ETHTOOL_GRXFHINDIR", head.as_mut_ptr().cast())?;
        let n = head[1] as usize;
        let mut buf = vec![0u32; 2 + n];
        buf[0] = ETHTOOL_GRXFHINDIR;
        buf[1] = n as u32;
        self.ioctl("ETHTOOL_GRXFHINDIR", buf.as_mut_ptr().cast())?;
        Ok(buf[2..].to_vec())
    }

    pub fn set_rss_indir(&self, table: &[u32]) -> Result<()> {
        let mut buf = vec![0u32; 2 + table.len()];
        buf[0] = ETHTOOL_SRXFHINDIR;
        buf[1] = table.len() as u32;
        buf[2..].copy_from_slice(table);
        self.ioctl("ETHTOOL_SRXFHINDIR", buf.as_mut_ptr().cast()).map(|_| ())
    }

    /// The RSS hash key.
    pub fn rss_key(&self) -> Result<Vec<u8>> {
        // struct ethtool_rxfh { cmd, rss_context, indir_size, key_size, u8 hfunc,
        // u8 input_xfrm, u8 rsvd8[2], u32 rsvd32, u32 rss_config[] }
        let mut head = [0u32; 6];
        head[0] = ETHTOOL_GRSSH;
        self.ioctl("ETHTOOL_GRSSH", head.as_mut_ptr().cast())?;
        let key_size = head[3] as usize;
        if key_size == 0 {
            return Ok(vec![]);
        }
        let mut buf = vec![0u32; 6 + key_size.div_ceil(4)];
        buf[0] = ETHTOOL_GRSSH;
        buf[3] = key_size as u32; // indir_size 0: the key only
        self.ioctl("ETHTOOL_GRSSH", buf.as_mut_ptr().cast())?;
        let bytes: Vec<u8> = buf[6..].iter().flat_map(|w| w.to_ne_bytes()).collect();
        Ok(bytes[..key_size].to_vec())
    }
}

/// ethtool's user-facing feature names and the kernel feature bits behind them.
pub const FEATURE_ALIASES: [(&str, &[&str]); 7] = [
    ("gro", &["rx-gro"]),
    ("lro", &["rx-lro"]),
    (
        "tso",
        &[
            "tx-tcp-segmentation",
            "tx-tcp-ecn-segmentation",
            "tx-tcp-mangleid-segmentation",
            "tx-tcp6-segmentation",
        ],
    ),
    ("gso", &["tx-generic-segmentation"]),
    ("rx", &["rx-checksum"]),
    (
        "tx",
        &[
            "tx-checksum-ipv4",
            "tx-checksum-ip-generic",
            "tx-checksum-ipv6",
            "tx-checksum-fcoe-crc",
            "tx-checksum-sctp",
        ],
    ),
    ("rx-udp-gro-forwarding", &["rx-udp-gro-forwarding"]),
];
