//! Which Linux capabilities steer needs, checked up front so that a missing
//! one is reported by name instead of as a bare EPERM from the verifier.
//!
//! Measured on 6.18 by dropping each from the bounding set (tests/tests/stats.rs):
//! - `CAP_BPF`: creating the maps and loading the programs.
//! - `CAP_NET_ADMIN`: loading an XDP program (a networking program type) and
//!   attaching it to an interface.
//! - `CAP_PERFMON`: the verifier accepts steer_xdp's pointer arithmetic on
//!   packet and map values only for "perfmon-capable" loaders (EACCES otherwise);
//!   also attaching the raw tracepoints (cpumap counters, RFS socket hooks).
//! - `CAP_SYS_ADMIN`: only to mount bpffs when it is not mounted
//!   (a container gets them as hostPath mounts instead). The kernel also
//!   accepts it in place of CAP_BPF and CAP_PERFMON, as before 5.8.

use crate::error::{Error, Result};

/// A capability: its bit and its name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cap(pub u32, pub &'static str);

pub const NET_ADMIN: Cap = Cap(12, "CAP_NET_ADMIN");
pub const SYS_ADMIN: Cap = Cap(21, "CAP_SYS_ADMIN");
pub const PERFMON: Cap = Cap(38, "CAP_PERFMON");
pub const BPF: Cap = Cap(39, "CAP_BPF");

/// What `steer run` needs: each with the reason, for the error message.
pub const RUN: [(Cap, &str); 3] = [
    (BPF, "to create maps and load the XDP program"),
    (NET_ADMIN, "to load and attach XDP"),
    (PERFMON, "for the verifier to accept steer_xdp"),
];

/// The effective capability set of the calling thread.
pub fn effective() -> Result<u64> {
    let status = std::fs::read_to_string("/proc/thread-self/status")
        .map_err(|e| Error::io("reading /proc/thread-self/status", e))?;
    parse_cap_eff(&status).ok_or_else(|| Error::Ebpf("no CapEff line in /proc/thread-self/status".into()))
}

fn parse_cap_eff(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("CapEff:"))?;
    u64::from_str_radix(line.trim_start_matches("CapEff:").trim(), 16).ok()
}

/// Whether `set` grants `cap`, counting CAP_SYS_ADMIN as the kernel does for
/// CAP_BPF and CAP_PERFMON.
pub fn grants(set: u64, cap: Cap) -> bool {
    let has = |c: Cap| set & (1u64 << c.0) != 0;
    has(cap) || ((cap == BPF || cap == PERFMON) && has(SYS_ADMIN))
}

/// The capabilities of `needed` that `set` lacks.
pub fn missing(set: u64, needed: &[(Cap, &'static str)]) -> Vec<(Cap, &'static str)> {
    needed.iter().copied().filter(|(c, _)| !grants(set, *c)).collect()
}

/// Fails, naming every missing capability and why it is needed.
pub fn require(needed: &[(Cap, &'static str)]) -> Result<()> {
    let miss = missing(effective()?, needed);
    if miss.is_empty() {
        return Ok(());
    }
    Err(Error::MissingCapabilities {
        missing: miss.iter().map(|(c, why)| format!("{} ({why})", c.1)).collect::<Vec<_>>().join(", "),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sys_admin_stands_in_for_bpf_and_perfmon_not_net_admin() {
        let sys_admin = 1u64 << 21;
        assert!(grants(sys_admin, BPF) && grants(sys_admin, PERFMON));
        assert!(!grants(sys_admin, NET_ADMIN));
        let three = (1u64 << 39) | (1u64 << 38) | (1u64 << 12);
        assert!(missing(three, &RUN).is_empty());
        let no_bpf = three & !(1u64 << 39);
        assert_eq!(missing(no_bpf, &RUN).iter().map(|m| m.0).collect::<Vec<_>>(), vec![BPF]);
    }

    #[test]
    fn parses_cap_eff() {
        let s = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000000c000001000\n";
        assert_eq!(parse_cap_eff(s), Some(0xc0_0000_1000));
    }

    #[test]
    fn deploy_files_grant_exactly_the_run_set() {
        let unit = include_str!("../../deploy/systemd/steer@.service");
        let names: Vec<&str> = RUN.iter().map(|(c, _)| c.1).collect();
        for key in ["CapabilityBoundingSet=", "AmbientCapabilities="] {
            let line = unit.lines().find(|l| l.starts_with(key)).unwrap();
            let got: Vec<&str> = line.trim_start_matches(key).split_whitespace().collect();
            assert_eq!(got, names, "{key}");
        }
        let k8s_names: Vec<String> =
            names.iter().map(|n| format!("\"{}\"", n.trim_start_matches("CAP_"))).collect();
        let want = format!("add: [{}]", k8s_names.join(", "));
        for y in
            [include_str!("../../deploy/k8s/daemonset.yaml"), include_str!("../../deploy/k8s/sidecar.yaml")]
        {
            assert!(y.contains(&want), "k8s capabilities differ from {want}");
            assert!(y.contains("drop: [\"ALL\"]"));
        }
    }
}
