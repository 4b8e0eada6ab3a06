//! Types and functions shared by steer's eBPF programs and its userspace.
//!
//! Everything the kernel side and the user side must agree on bit for bit lives
//! here: the flow tuple as the XDP program extracts it, the hash functions that
//! turn it into a bucket, and the layout of every map value. `steer hash` and the
//! in-kernel fixtures call the very same functions the XDP program runs.
#![no_std]

pub mod balance;
pub mod flow;
pub mod hash;
pub mod maps;
pub mod names;
pub mod tunnel;
pub mod tuple;

pub use balance::{BucketLoad, BucketMove, RebalanceState, INDIR_MOVING};
pub use flow::{FlowEntry, FlowKey, FlowSlot, RfsCounters, SockOffsets};
pub use hash::{HashKind, ToeplitzTable, MS_RSS_KEY};
pub use maps::{
    Counters, GenConfig, IdleWatch, PassReason, SteerConfig, BUSY_HOLD_JIFFIES, IDLE_RECENT_JIFFIES,
    LOCAL_PASS_DRAINED, LOCAL_PASS_OFF, LOCAL_PASS_ON, QUIET_NS, SPREAD_ALWAYS, SPREAD_BUSY,
};
pub use tunnel::Encap;
pub use tuple::Tuple;
