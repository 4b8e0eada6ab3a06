//! The ethtool ioctl (SIOCETHTOOL): each command steer uses, with the buffer
//! the kernel expects for it, so no caller hands the kernel a pointer.
//!
//! Why the ioctl and not ethtool netlink (the `ethtool` crate): steer needs the
//! driver name (GDRVINFO, which ethtool netlink does not carry at all), and
//! coalescing, features and the RSS table written back as they were read; the
//! `ethtool` crate (0.3) reads channels, coalescing, rings and features but
//! writes only channels, and has no RSS. Its transport is async too, while the
//! NIC layer runs inside `steer run`'s tokio runtime and in plain threads. The
//! ioctl has a fixed ABI every kernel since 3.x keeps, and follows the caller's
//! network namespace like netlink does.

use std::{
    ffi::{c_void, CStr},
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

const ETHTOOL_GDRVINFO: u32 = 0x03;
const ETHTOOL_GCOALESCE: u32 = 0x0e;
const ETHTOOL_SCOALESCE: u32 = 0x0f;
const ETHTOOL_GRINGPARAM: u32 = 0x10;
const ETHTOOL_STXCSUM: u32 = 0x17;
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
/// The words of `struct ethtool_drvinfo`, command word included.
const DRVINFO_WORDS: usize = 49;

/// One ethtool command that failed, named as the kernel names it.
#[derive(Debug, thiserror::Error)]
#[error("{op}: {source}")]
pub struct OpError {
    pub op: &'static str,
    #[source]
    pub source: io::Error,
}

fn fail(op: &'static str, errno: i32) -> OpError {
    OpError { op, source: io::Error::from_raw_os_error(errno) }
}

/// `struct ethtool_get_features_block` of one 32-bit block of feature bits.
#[derive(Clone, Copy, Debug, Default)]
pub struct FeatureBlock {
    pub available: u32,
    pub requested: u32,
    pub active: u32,
    pub never_changed: u32,
}

/// `struct ethtool_set_features_block`: which bits to change, and to what.
#[derive(Clone, Copy, Debug, Default)]
pub struct FeatureChange {
    pub valid: u32,
    pub requested: u32,
}

/// SIOCETHTOOL on one interface, through a socket of the caller's network namespace.
pub struct Ethtool {
    fd: OwnedFd,
    name: [libc::c_char; libc::IFNAMSIZ],
}

impl Ethtool {
    /// A socket for ethtool commands on `ifname` (at most IFNAMSIZ - 1 bytes of it are used).
    pub fn open(ifname: &str) -> io::Result<Self> {
        // SAFETY: plain socket syscall.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh socket we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut name = [0; libc::IFNAMSIZ];
        for (d, s) in name.iter_mut().zip(ifname.bytes().take(libc::IFNAMSIZ - 1)) {
            *d = s as libc::c_char;
        }
        Ok(Self { fd, name })
    }

    /// SIOCETHTOOL with `data`, which starts with the command word.
    ///
    /// # Safety
    /// `data` must point at a buffer as large as the command, with the lengths
    /// inside it, tells the kernel to read and write.
    unsafe fn ioctl(&self, op: &'static str, data: *mut c_void) -> Result<i32, OpError> {
        // SAFETY: ifreq is plain data, all zeroes valid.
        let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
        ifr.ifr_name = self.name;
        ifr.ifr_ifru.ifru_data = data.cast();
        // SAFETY: fd is ours; the caller vouches for `data`; ifr outlives the call.
        let rc = unsafe { libc::ioctl(self.fd.as_raw_fd(), libc::SIOCETHTOOL, &mut ifr) };
        if rc < 0 {
            return Err(OpError { op, source: io::Error::last_os_error() });
        }
        Ok(rc)
    }

    /// A command whose buffer is `N` 32-bit words, the command word first.
    ///
    /// # Safety
    /// `N` words must hold all the kernel reads and writes for `cmd` with the
    /// lengths set in `buf` (a fixed struct, or a header whose lengths are 0).
    unsafe fn words<const N: usize>(
        &self,
        op: &'static str,
        cmd: u32,
        mut buf: [u32; N],
    ) -> Result<[u32; N], OpError> {
        buf[0] = cmd;
        // SAFETY: the caller vouches that `buf` is the whole struct for `cmd`.
        unsafe { self.ioctl(op, buf.as_mut_ptr().cast()) }?;
        Ok(buf)
    }

    /// The driver's name ("veth", "tun", "mlx5_core").
    pub fn driver(&self) -> Result<String, OpError> {
        // struct ethtool_drvinfo { cmd, char driver[32], version[32], fw_version[32],
        // bus_info[32], erom_version[32], reserved2[12], u32 n_priv_flags, n_stats,
        // testinfo_len, eedump_len, regdump_len }
        // SAFETY: DRVINFO_WORDS is sizeof(struct ethtool_drvinfo) / 4.
        let w = unsafe { self.words("ETHTOOL_GDRVINFO", ETHTOOL_GDRVINFO, [0u32; DRVINFO_WORDS]) }?;
        let bytes: Vec<u8> = w[1..9].iter().flat_map(|w| w.to_ne_bytes()).collect();
        Ok(CStr::from_bytes_until_nul(&bytes).map(|c| c.to_string_lossy().into_owned()).unwrap_or_default())
    }

    /// `struct ethtool_channels` after its command word: max_rx, max_tx,
    /// max_other, max_combined, rx, tx, other, combined.
    pub fn channels(&self) -> Result<[u32; 8], OpError> {
        // SAFETY: struct ethtool_channels is 9 words.
        let w = unsafe { self.words("ETHTOOL_GCHANNELS", ETHTOOL_GCHANNELS, [0u32; 9]) }?;
        let mut c = [0; 8];
        c.copy_from_slice(&w[1..]);
        Ok(c)
    }

    /// Sets the channel counts (the last four words of [`Self::channels`]; maxima are ignored).
    pub fn set_channels(&self, c: [u32; 8]) -> Result<(), OpError> {
        let mut w = [0u32; 9];
        w[1..].copy_from_slice(&c);
        // SAFETY: struct ethtool_channels is 9 words.
        unsafe { self.words("ETHTOOL_SCHANNELS", ETHTOOL_SCHANNELS, w) }.map(drop)
    }

    /// `struct ethtool_coalesce` after its command word: 22 words in ABI order.
    pub fn coalesce(&self) -> Result<[u32; 22], OpError> {
        // SAFETY: struct ethtool_coalesce is 23 words.
        let w = unsafe { self.words("ETHTOOL_GCOALESCE", ETHTOOL_GCOALESCE, [0u32; 23]) }?;
        let mut c = [0; 22];
        c.copy_from_slice(&w[1..]);
        Ok(c)
    }

    pub fn set_coalesce(&self, c: &[u32; 22]) -> Result<(), OpError> {
        let mut w = [0u32; 23];
        w[1..].copy_from_slice(c);
        // SAFETY: struct ethtool_coalesce is 23 words.
        unsafe { self.words("ETHTOOL_SCOALESCE", ETHTOOL_SCOALESCE, w) }.map(drop)
    }

    /// `struct ethtool_ringparam` after its command word: rx_max, rx_mini_max,
    /// rx_jumbo_max, tx_max, rx, rx_mini, rx_jumbo, tx.
    pub fn rings(&self) -> Result<[u32; 8], OpError> {
        // SAFETY: struct ethtool_ringparam is 9 words.
        let w = unsafe { self.words("ETHTOOL_GRINGPARAM", ETHTOOL_GRINGPARAM, [0u32; 9]) }?;
        let mut r = [0; 8];
        r.copy_from_slice(&w[1..]);
        Ok(r)
    }

    /// Turns tx checksum offload on or off (`ethtool -K IF tx on|off`).
    pub fn set_tx_checksum(&self, on: bool) -> Result<(), OpError> {
        // SAFETY: struct ethtool_value is 2 words.
        unsafe { self.words("ETHTOOL_STXCSUM", ETHTOOL_STXCSUM, [0, on as u32]) }.map(drop)
    }

    /// The kernel's feature names ("rx-gro", "tx-tcp-segmentation", ...), bit order.
    pub fn feature_names(&self) -> Result<Vec<String>, OpError> {
        // struct ethtool_sset_info { cmd, reserved, u64 sset_mask, u32 data[] }:
        // one set asked for, so one word of data.
        let mask = 1u64 << ETH_SS_FEATURES;
        let info = [ETHTOOL_GSSET_INFO, 0, mask as u32, (mask >> 32) as u32, 0];
        // SAFETY: the header (4 words) and one data word for the one set in the mask.
        let info = unsafe { self.words("ETHTOOL_GSSET_INFO", ETHTOOL_GSSET_INFO, info) }?;
        let n = info[4] as usize;
        if n == 0 || n > 4096 {
            return Err(fail("ETHTOOL_GSSET_INFO", libc::EINVAL));
        }
        // struct ethtool_gstrings { cmd, string_set, len, u8 data[len * 32] }
        let mut buf = vec![0u32; 3 + n * ETH_GSTRING_LEN / 4];
        buf[0] = ETHTOOL_GSTRINGS;
        buf[1] = ETH_SS_FEATURES;
        buf[2] = n as u32;
        // SAFETY: room for the header and `len` strings of ETH_GSTRING_LEN bytes.
        unsafe { self.ioctl("ETHTOOL_GSTRINGS", buf.as_mut_ptr().cast()) }?;
        let bytes: Vec<u8> = buf[3..].iter().flat_map(|w| w.to_ne_bytes()).collect();
        Ok(bytes
            .chunks(ETH_GSTRING_LEN)
            .map(|c| {
                let end = c.iter().position(|&b| b == 0).unwrap_or(c.len());
                String::from_utf8_lossy(&c[..end]).into_owned()
            })
            .collect())
    }

    /// The `blocks` feature blocks (32 bits each, in [`Self::feature_names`] order).
    pub fn features(&self, blocks: usize) -> Result<Vec<FeatureBlock>, OpError> {
        // struct ethtool_gfeatures { cmd, size, struct ethtool_get_features_block features[size] }
        let mut buf = vec![0u32; 2 + 4 * blocks];
        buf[0] = ETHTOOL_GFEATURES;
        buf[1] = blocks as u32;
        // SAFETY: room for the header and `size` blocks of 4 words.
        unsafe { self.ioctl("ETHTOOL_GFEATURES", buf.as_mut_ptr().cast()) }?;
        Ok(buf[2..]
            .chunks_exact(4)
            .map(|b| FeatureBlock { available: b[0], requested: b[1], active: b[2], never_changed: b[3] })
            .collect())
    }

    /// Changes the features `valid` marks to what `requested` says, leaving the others alone.
    pub fn set_features(&self, blocks: &[FeatureChange]) -> Result<(), OpError> {
        // struct ethtool_sfeatures { cmd, size, struct ethtool_set_features_block features[size] }
        let mut buf = vec![0u32; 2 + 2 * blocks.len()];
        buf[0] = ETHTOOL_SFEATURES;
        buf[1] = blocks.len() as u32;
        for (i, b) in blocks.iter().enumerate() {
            buf[2 + 2 * i] = b.valid;
            buf[3 + 2 * i] = b.requested;
        }
        // SAFETY: room for the header and `size` blocks of 2 words.
        let rc = unsafe { self.ioctl("ETHTOOL_SFEATURES", buf.as_mut_ptr().cast()) }?;
        // ETHTOOL_F_UNSUPPORTED: a bit in `valid` the driver cannot change.
        if rc & 1 != 0 {
            return Err(fail("ETHTOOL_SFEATURES", libc::EOPNOTSUPP));
        }
        Ok(())
    }

    /// The RSS indirection table (entry -> rx queue).
    pub fn rss_indir(&self) -> Result<Vec<u32>, OpError> {
        // struct ethtool_rxfh_indir { cmd, size, u32 ring_index[size] }: size 0 asks for the size.
        // SAFETY: with size 0 the kernel writes only the 2-word header.
        let head = unsafe { self.words("ETHTOOL_GRXFHINDIR", ETHTOOL_GRXFHINDIR, [0u32; 2]) }?;
        let n = head[1] as usize;
        let mut buf = vec![0u32; 2 + n];
        buf[0] = ETHTOOL_GRXFHINDIR;
        buf[1] = n as u32;
        // SAFETY: room for the header and `size` entries.
        unsafe { self.ioctl("ETHTOOL_GRXFHINDIR", buf.as_mut_ptr().cast()) }?;
        Ok(buf[2..].to_vec())
    }

    pub fn set_rss_indir(&self, table: &[u32]) -> Result<(), OpError> {
        let mut buf = vec![0u32; 2 + table.len()];
        buf[0] = ETHTOOL_SRXFHINDIR;
        buf[1] = table.len() as u32;
        buf[2..].copy_from_slice(table);
        // SAFETY: the header and `size` entries, all initialised.
        unsafe { self.ioctl("ETHTOOL_SRXFHINDIR", buf.as_mut_ptr().cast()) }.map(drop)
    }

    /// The RSS hash key (empty if the device has none).
    pub fn rss_key(&self) -> Result<Vec<u8>, OpError> {
        // struct ethtool_rxfh { cmd, rss_context, indir_size, key_size, u8 hfunc,
        // u8 input_xfrm, u8 rsvd8[2], u32 rsvd32, u32 rss_config[] }
        // SAFETY: with indir_size and key_size 0 the kernel writes only the 6-word header.
        let head = unsafe { self.words("ETHTOOL_GRSSH", ETHTOOL_GRSSH, [0u32; 6]) }?;
        let key_size = head[3] as usize;
        if key_size == 0 {
            return Ok(vec![]);
        }
        let mut buf = vec![0u32; 6 + key_size.div_ceil(4)];
        buf[0] = ETHTOOL_GRSSH;
        buf[3] = key_size as u32; // indir_size 0: the key only
                                  // SAFETY: room for the header and key_size bytes of key.
        unsafe { self.ioctl("ETHTOOL_GRSSH", buf.as_mut_ptr().cast()) }?;
        let bytes: Vec<u8> = buf[6..].iter().flat_map(|w| w.to_ne_bytes()).collect();
        Ok(bytes[..key_size].to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_features_read_by_name() {
        let et = Ethtool::open("lo").unwrap();
        let names = et.feature_names().unwrap();
        assert!(names.iter().any(|n| n == "rx-gro"), "{names:?}");
        let blocks = et.features(names.len().div_ceil(32)).unwrap();
        assert_eq!(blocks.len(), names.len().div_ceil(32));
    }

    #[test]
    fn a_failed_command_is_named() {
        // No such interface: every command fails with ENODEV, named.
        let e = Ethtool::open("steer-nope0").unwrap().channels().unwrap_err();
        assert_eq!((e.op, e.source.raw_os_error()), ("ETHTOOL_GCHANNELS", Some(libc::ENODEV)));
    }
}
