//! The NIC and kernel knobs the seeds tune by hand (`ethtool -L/-C/-K/-X`,
//! IRQ affinity, rps_cpus, rps_flow_cnt, rps_sock_flow_entries, xps_cpus),
//! done as one reviewed plan that is always put back:
//!
//! - [`show`] reads them all (`steer nic show`);
//! - [`plan`] turns a profile and overrides into "old → new" steps (`steer nic plan`);
//! - [`state`] snapshots every value a plan touches to `/run/steer/netN/ifI/nic.json`
//!   (keyed by namespace and interface index) before changing anything, applies, rolls back on failure, and restores
//!   from the snapshot (`steer nic apply|restore`, `steer restore`).
//!
//! - [`guard`] holds a plan applied for the life of `steer run`.
//!
//! Device settings go through the ethtool ioctl ([`ethtool`]), the rest
//! through sysfs/procfs ([`sysfs`], [`irq`]). steer never runs ethtool or ip.

pub mod ethtool;
pub mod guard;
pub mod irq;
pub mod plan;
pub mod show;
pub mod state;
pub mod sysfs;

pub use plan::{Plan, Profile, Request};
