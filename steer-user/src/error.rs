//! Errors of the steer library. Each says what was wrong, with the value, and
//! what to do about it.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("interface \"{0}\" does not exist (list them with `ls /sys/class/net`)")]
    NoSuchInterface(String),
    #[error("invalid CPU list \"{list}\": {why}")]
    BadCpuList { list: String, why: String },
    #[error("CPU {cpu} is offline (online: {online})")]
    CpuOffline { cpu: u32, online: String },
    #[error("the CPU list is empty")]
    EmptyCpuList,
    #[error("invalid RSS key: {0}")]
    BadKey(String),
    #[error("invalid {what} {value}: {why}")]
    BadValue { what: &'static str, value: String, why: String },
    /// A command-line or config-file option the parser refused, in one line.
    #[error("{0}")]
    BadOption(String),
    #[error("--{option} {why}")]
    NotApplicable { option: String, why: String },
    #[error("config file {path}: {why}")]
    Config { path: String, why: String },
    #[error(
        "interface \"{iface}\" is a TAP device: native XDP there redirects frames written through a \
         blocking fd into the CPUMAP with skb->mac_len 0, so the target CPU reads the Ethernet header as \
         the IP header and drops the frame (kfree_skb reason IP_INHDR; a kernel bug in tun + cpumap on \
         6.18). Use --xdp-mode skb (or auto, which picks it on TAP): generic XDP steers TAP traffic \
         correctly"
    )]
    TapNative { iface: String },
    #[error(
        "interface \"{iface}\" already has an XDP program attached; stop it first, or pass --replace \
         (after a crash, `steer restore --iface {iface}` removes steer's own leftovers)"
    )]
    XdpBusy { iface: String },
    #[error("{what} failed: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("eBPF: {0}")]
    Ebpf(String),
    #[error(
        "missing capability {missing}: run as root. A non-root user needs CAP_BPF, CAP_NET_ADMIN and \
         CAP_PERFMON (e.g. `setpriv --inh-caps=+bpf,+net_admin,+perfmon --ambient-caps=+bpf,+net_admin,+perfmon`) \
         and also write access to /sys/fs/bpf and read access to /sys/kernel/tracing, which are root's by default"
    )]
    MissingCapabilities { missing: String },
    #[error("{what}: permission denied; run as root (reading steer's maps needs CAP_BPF, and CAP_SYS_ADMIN to open them by id)")]
    PermissionDenied { what: String },
    #[error("no steer run is attached to \"{iface}\" (no run recorded at {path})")]
    NotRunning { iface: String, path: PathBuf },
    #[error("{op} on \"{iface}\" (driver {driver}) failed: {source}{}", unsupported_hint(source))]
    NicOp {
        iface: String,
        driver: String,
        op: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Nic(String),
}

/// Says in words what EOPNOTSUPP from a driver means for the user.
fn unsupported_hint(e: &std::io::Error) -> &'static str {
    if e.raw_os_error() == Some(libc::EOPNOTSUPP) {
        " (the driver does not support this operation)"
    } else {
        ""
    }
}

impl Error {
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io { what: what.into(), source }
    }

    pub fn ebpf(e: impl std::fmt::Display) -> Self {
        Self::Ebpf(e.to_string())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
