//! What steer asks of an interface: its index, its driver, its rx counter.
//! All through calls that follow the caller's network namespace (ioctl,
//! getifaddrs), never through /sys, which `ip netns exec` remounts.

use std::ffi::{CStr, CString};

use crate::{
    error::{Error, Result},
    sys::{self, ethtool::Ethtool},
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

/// The interface's MTU (SIOCGIFMTU, in the caller's network namespace).
pub fn mtu(name: &str) -> Result<u32> {
    check_name(name)?;
    // SAFETY: plain socket syscall.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(Error::io("socket for SIOCGIFMTU", std::io::Error::last_os_error()));
    }
    // SAFETY: ifreq is plain data; the name is shorter than IFNAMSIZ (checked).
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    // SAFETY: fd is a socket we own, ifr outlives the call.
    let rc = unsafe { libc::ioctl(fd, libc::SIOCGIFMTU, &mut ifr) };
    let err = std::io::Error::last_os_error();
    // SAFETY: closing our own fd.
    unsafe { libc::close(fd) };
    if rc < 0 {
        return Err(Error::io(format!("SIOCGIFMTU on \"{name}\""), err));
    }
    // SAFETY: SIOCGIFMTU fills ifru_mtu.
    Ok(unsafe { ifr.ifr_ifru.ifru_mtu } as u32)
}

/// Packets the interface has received, from the kernel's link statistics.
pub fn rx_packets(name: &str) -> Result<u64> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head`, freed below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(Error::io("getifaddrs", std::io::Error::last_os_error()));
    }
    let mut found = None;
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: cur walks the list getifaddrs returned.
        let ifa = unsafe { &*cur };
        let is_packet = !ifa.ifa_addr.is_null()
            // SAFETY: ifa_addr checked non-null.
            && unsafe { (*ifa.ifa_addr).sa_family } as i32 == libc::AF_PACKET;
        // SAFETY: ifa_name is a valid C string for the list's lifetime.
        if is_packet
            && !ifa.ifa_data.is_null()
            && unsafe { CStr::from_ptr(ifa.ifa_name) }.to_bytes() == name.as_bytes()
        {
            // For AF_PACKET entries ifa_data points at struct rtnl_link_stats (u32 counters).
            // SAFETY: as documented in getifaddrs(3).
            let rx = unsafe { *(ifa.ifa_data as *const u32) };
            found = Some(rx as u64);
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: head came from getifaddrs.
    unsafe { libc::freeifaddrs(head) };
    found.ok_or_else(|| Error::NoSuchInterface(name.to_string()))
}

/// `Tcp: InCsumErrors` of this process's network namespace.
pub fn tcp_in_csum_errors() -> Result<u64> {
    let text = std::fs::read_to_string("/proc/self/net/snmp")
        .map_err(|e| Error::io("reading /proc/self/net/snmp", e))?;
    let mut tcp = text.lines().filter(|l| l.starts_with("Tcp:"));
    let (names, values) = (tcp.next().unwrap_or_default(), tcp.next().unwrap_or_default());
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "InCsumErrors")
        .and_then(|(_, v)| v.parse().ok())
        .ok_or_else(|| Error::io("parsing /proc/self/net/snmp", std::io::ErrorKind::InvalidData.into()))
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
    }
}
