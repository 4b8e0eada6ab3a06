//! steer's userspace: loader, maps, interface checks and the pieces the CLI,
//! the lab and the tests share.

pub mod caps;
pub mod config;
pub mod cpus;
pub mod error;
pub mod iface;
pub mod lab;
pub mod loader;
pub mod metrics;
pub mod mounts;
pub mod nic;
pub mod options;
pub mod packet;
pub mod pins;
pub mod rfs;
pub mod stats;
pub mod testrun;
pub mod xdp_owner;

pub use error::Error;

/// The eBPF object built from steer-ebpf by build.rs.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/steer"));
