//! What steer reads and sets on a NIC through ethtool: channels, coalescing,
//! rings, offload features, the RSS indirection table and the RSS key, as
//! types a plan and a snapshot can hold. The ioctl itself is in
//! [`crate::sys::ethtool`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{
    error::{Error, Result},
    iface,
    sys::ethtool::{self as sys, FeatureChange, OpError},
};

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
    sys: sys::Ethtool,
}

impl Ethtool {
    pub fn open(name: &str) -> Result<Self> {
        iface::index(name)?;
        let driver = iface::driver(name).unwrap_or_else(|_| "unknown".into());
        let sys = sys::Ethtool::open(name).map_err(|e| Error::io("socket for SIOCETHTOOL", e))?;
        Ok(Self { iface: name.to_string(), driver, sys })
    }

    fn err(&self, op: &str, source: std::io::Error) -> Error {
        Error::NicOp { iface: self.iface.clone(), driver: self.driver.clone(), op: op.to_string(), source }
    }

    fn op<T>(&self, r: std::result::Result<T, OpError>) -> Result<T> {
        r.map_err(|e| self.err(e.op, e.source))
    }

    /// Turns tx checksum offload on or off (ETHTOOL_STXCSUM, `ethtool -K IF tx on|off`).
    pub fn set_tx_checksum(&self, on: bool) -> Result<()> {
        self.op(self.sys.set_tx_checksum(on))
    }

    pub fn channels(&self) -> Result<Channels> {
        let [max_rx, max_tx, max_other, max_combined, rx, tx, other, combined] =
            self.op(self.sys.channels())?;
        Ok(Channels { max_rx, max_tx, max_other, max_combined, rx, tx, other, combined })
    }

    pub fn set_channels(&self, c: &Channels) -> Result<()> {
        self.op(self.sys.set_channels([0, 0, 0, 0, c.rx, c.tx, c.other, c.combined]))
    }

    pub fn coalesce(&self) -> Result<Coalesce> {
        self.op(self.sys.coalesce()).map(Coalesce)
    }

    pub fn set_coalesce(&self, c: &Coalesce) -> Result<()> {
        self.op(self.sys.set_coalesce(&c.0))
    }

    pub fn rings(&self) -> Result<Rings> {
        let [rx_max, rx_mini_max, rx_jumbo_max, tx_max, rx, rx_mini, rx_jumbo, tx] =
            self.op(self.sys.rings())?;
        Ok(Rings { rx_max, rx_mini_max, rx_jumbo_max, tx_max, rx, rx_mini, rx_jumbo, tx })
    }

    /// Every offload feature of the device by kernel name.
    pub fn features(&self) -> Result<BTreeMap<String, Feature>> {
        let names = self.op(self.sys.feature_names())?;
        let blocks = self.op(self.sys.features(names.len().div_ceil(32)))?;
        let bit = |word: u32, i: usize| word & (1 << (i % 32)) != 0;
        Ok(names
            .iter()
            .enumerate()
            .filter(|(_, n)| !n.is_empty())
            .map(|(i, n)| {
                let b = blocks[i / 32];
                let f = Feature {
                    changeable: bit(b.available, i),
                    requested: bit(b.requested, i),
                    active: bit(b.active, i),
                };
                (n.clone(), f)
            })
            .collect())
    }

    /// Sets the requested state of the named features, leaving all others alone.
    pub fn set_features(&self, want: &BTreeMap<String, bool>) -> Result<()> {
        let names = self.op(self.sys.feature_names())?;
        let mut blocks = vec![FeatureChange::default(); names.len().div_ceil(32)];
        for (name, on) in want {
            let Some(i) = names.iter().position(|n| n == name) else {
                return Err(self.err(
                    &format!("ETHTOOL_SFEATURES {name}"),
                    std::io::Error::from_raw_os_error(libc::EOPNOTSUPP),
                ));
            };
            blocks[i / 32].valid |= 1 << (i % 32);
            if *on {
                blocks[i / 32].requested |= 1 << (i % 32);
            }
        }
        self.op(self.sys.set_features(&blocks))
    }

    /// The RSS indirection table (entry -> rx queue).
    pub fn rss_indir(&self) -> Result<Vec<u32>> {
        self.op(self.sys.rss_indir())
    }

    pub fn set_rss_indir(&self, table: &[u32]) -> Result<()> {
        self.op(self.sys.set_rss_indir(table))
    }

    /// The RSS hash key.
    pub fn rss_key(&self) -> Result<Vec<u8>> {
        self.op(self.sys.rss_key())
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
