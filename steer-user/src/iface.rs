//! What steer asks of an interface: its index, its driver, its MTU, its rx
//! counter. All through calls that follow the caller's network namespace
//! (if_nametoindex, the ethtool ioctl, rtnetlink), never through /sys, which
//! `ip netns exec` remounts.

use std::ffi::CString;

use crate::{
    error::{Error, Result},
    sys::{self, ethtool::Ethtool, netlink},
};

/// Refuses what the kernel refuses as an interface name (`dev_valid_name`):
/// empty, 16 bytes or more, "." or "..", '/', ':' or whitespace. Checked before
/// any path or syscall sees the name.
pub fn check_name(name: &str) -> Result<()> {
    let why = if name.is_empty() {
        "it is empty"
    } else if name.len() >= libc::IFNAMSIZ {
        "it is 16 bytes or longer"
    } else if name == "." || name == ".." {
        "\".\" and \"..\" are not interface names"
    } else if name.chars().any(|c| c == '/' || c == ':' || c.is_whitespace() || c == '\0') {
        "it contains '/', ':', a NUL or whitespace"
    } else {
        return Ok(());
    };
    Err(Error::BadValue { what: "interface name", value: format!("{name:?}"), why: why.into() })
}

/// `--iface` as clap parses it: a name the kernel would accept.
pub fn parse_name(name: &str) -> std::result::Result<String, String> {
    check_name(name).map(|()| name.to_string()).map_err(|e| e.to_string())
}

/// The interface's index, or a clear error if it does not exist.
pub fn index(name: &str) -> Result<u32> {
    let c = CString::new(name).map_err(|_| Error::NoSuchInterface(name.to_string()))?;
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(Error::NoSuchInterface(name.to_string()));
    }
    sys::if_nametoindex(&c).ok_or_else(|| Error::NoSuchInterface(name.to_string()))
}

/// The interface's driver name as the kernel reports it ("veth", "tun", "mlx5_core").
pub fn driver(name: &str) -> Result<String> {
    let et = Ethtool::open(name).map_err(|e| Error::io("socket for SIOCETHTOOL", e))?;
    et.driver().map_err(|e| Error::io(format!("ETHTOOL_GDRVINFO on \"{name}\""), e.source))
}

/// The link `name` as rtnetlink reports it in the caller's network namespace.
fn link(name: &str) -> Result<netlink::Link> {
    check_name(name).map_err(|_| Error::NoSuchInterface(name.to_string()))?;
    netlink::Route::open()
        .and_then(|mut nl| nl.link_by_name(name))
        .map_err(|e| Error::io(format!("RTM_GETLINK for \"{name}\""), e))?
        .ok_or_else(|| Error::NoSuchInterface(name.to_string()))
}

/// The interface's MTU.
pub fn mtu(name: &str) -> Result<u32> {
    check_name(name)?;
    link(name)?.mtu.ok_or_else(|| missing(name, "IFLA_MTU"))
}

/// Packets the interface has received, from the kernel's link statistics
/// (IFLA_STATS, the counters getifaddrs(3) reports).
pub fn rx_packets(name: &str) -> Result<u64> {
    link(name)?.rx_packets.map(u64::from).ok_or_else(|| missing(name, "IFLA_STATS"))
}

fn missing(name: &str, attr: &str) -> Error {
    Error::io(format!("RTM_GETLINK for \"{name}\""), std::io::Error::other(format!("no {attr} in the reply")))
}

/// `Tcp: InCsumErrors` of the calling thread's network namespace.
pub fn tcp_in_csum_errors() -> Result<u64> {
    crate::stats::snmp::counter("Tcp", "InCsumErrors")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_interface_is_named() {
        let e = index("steer-nope0").unwrap_err().to_string();
        assert_eq!(e, "interface \"steer-nope0\" does not exist (list them with `ls /sys/class/net`)");
        assert!(index("").is_err());
        assert!(index("a-name-far-too-long-for-linux").is_err());
    }

    #[test]
    fn loopback_is_known() {
        assert_eq!(index("lo").unwrap(), 1);
        assert!(rx_packets("lo").is_ok());
        assert!(mtu("lo").unwrap() > 0);
    }

    #[test]
    fn a_missing_interface_is_named_by_every_reader() {
        for e in [rx_packets("steer-nope0").unwrap_err(), mtu("steer-nope0").unwrap_err()] {
            assert!(matches!(&e, Error::NoSuchInterface(n) if n == "steer-nope0"), "{e}");
        }
    }
}
