//! Counters of `/proc/net/snmp` (`Ip:`, `Tcp:`, `Udp:` ... pairs of a name
//! line and a value line) of the calling thread's network namespace.

use crate::error::{Error, Result};

/// `group`'s counter `name` ("Udp", "RcvbufErrors").
pub fn counter(group: &str, name: &str) -> Result<u64> {
    const PATH: &str = "/proc/thread-self/net/snmp";
    let text = std::fs::read_to_string(PATH).map_err(|e| Error::io(format!("reading {PATH}"), e))?;
    let prefix = format!("{group}:");
    let mut lines = text.lines().filter(|l| l.starts_with(&prefix));
    let (names, values) = (lines.next().unwrap_or_default(), lines.next().unwrap_or_default());
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == name)
        .and_then(|(_, v)| v.parse().ok())
        .ok_or_else(|| {
            Error::io(format!("no {group} {name} in {PATH}"), std::io::ErrorKind::InvalidData.into())
        })
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_a_counter_and_names_a_missing_one() {
        assert!(super::counter("Udp", "RcvbufErrors").is_ok());
        assert!(super::counter("Tcp", "InCsumErrors").is_ok());
        let e = super::counter("Udp", "NoSuchCounter").unwrap_err().to_string();
        assert!(e.contains("Udp NoSuchCounter"), "{e}");
    }
}
