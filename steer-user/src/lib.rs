//! steer's userspace: loader, maps, interface checks and the pieces the CLI,
//! the lab and the tests share.

pub mod caps;
pub mod config;
pub mod cpus;
pub mod error;
pub mod iface;
pub mod inner;
pub mod lab;
pub mod loader;
pub mod metrics;
pub mod mounts;
pub mod nic;
pub mod options;
pub mod packet;
pub mod pins;
pub mod rebalance;
pub mod rfs;
pub mod stats;
pub mod sys;
pub mod testrun;
pub mod xdp_owner;

pub use error::Error;

/// The eBPF object built from steer-ebpf by build.rs.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/steer"));

#[cfg(test)]
mod tests {
    use steer_common::names::{map, prog};

    /// The names userspace looks up are symbols of the built object (NUL-delimited in its string table).
    #[test]
    fn every_map_and_program_name_is_in_the_object() {
        for n in map::ALL.iter().chain(prog::ALL.iter()) {
            let want = [&[0u8][..], n.as_bytes(), &[0u8]].concat();
            assert!(
                super::EBPF_OBJECT.windows(want.len()).any(|w| w == want),
                "{n} is not in the eBPF object"
            );
        }
        assert!(!super::EBPF_OBJECT.windows(9).any(|w| w == b"\0NOTHERE\0"));
    }
}
