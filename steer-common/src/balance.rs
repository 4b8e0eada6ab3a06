//! Load-aware rebalancing of the indirection table: what the XDP program and
//! the balancer in `steer run --rebalance` share.
//!
//! A bucket moves in two steps so that none of its packets overtakes another:
//! the balancer writes the target into [`BucketMove`] (with `last_ns` = 0) and
//! then sets [`INDIR_MOVING`] on the bucket's INDIR entry; the XDP program, for
//! a bucket with that bit, keeps sending it to the old CPU and stamps the time
//! of each packet, and switches INDIR to the target only on a packet that
//! follows a gap longer than `--migrate-idle-us` ([`may_switch`]) and once the
//! old CPU's queue has been drained past the bucket's last packet ([`drained`]).
//! The checks are done where packet times are known, so a packet that arrives
//! while userspace decides cannot slip between a check and the switch, and
//! buckets that are not moving pay no clock read.
//!
//! The idle time alone is not enough: measured in the lab, the old CPU's
//! cpumap kthread, sharing its CPU with busy readers, held a moved TCP
//! bucket's last packets for more than 2 ms at times, and packets sent to the
//! new CPU overtook them. So the XDP program also compares how many frames the
//! old CPU's queue has taken in and given out (counted by the cpumap
//! tracepoints), as the kernel's RFS compares a backlog's head with a flow's
//! last tail.

/// Set on an INDIR entry whose bucket is moving: the low bits are still the
/// CPU its packets go to, the target is in the bucket's [`BucketMove`].
pub const INDIR_MOVING: u32 = 1 << 31;

/// Packets and bytes steered by the hash through one bucket (a per-CPU array
/// indexed by bucket). RFS-steered packets are not counted: they do not follow
/// the bucket.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BucketLoad {
    pub packets: u64,
    pub bytes: u64,
}

/// A bucket on its way to another CPU (an array indexed by bucket; read only
/// while the bucket's INDIR entry has [`INDIR_MOVING`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BucketMove {
    /// The CPU the bucket moves to.
    pub want: u32,
    pub _pad: u32,
    /// bpf_ktime_get_ns of the bucket's last packet since the move was asked
    /// for; 0 until the first one (which never switches).
    pub last_ns: u64,
    /// A count of frames taken out of the old CPU's queue by which the
    /// bucket's last packet queued there has left it (0: none queued).
    pub tail: u64,
}

/// Frames another CPU may add to a queue between a packet's redirect and
/// the flush that puts it in (cpumap bulks of 8, several receiving CPUs).
pub const TAIL_SLACK: u64 = 64;

/// Whether nothing of a moving bucket can still be in the old CPU's queue:
/// the queue has given out `taken` frames of the `put` it took in, and the
/// bucket's last packet there had left once `tail` were given out.
#[inline(always)]
pub fn drained(tail: u64, put: u64, taken: u64) -> bool {
    taken >= tail || taken >= put
}

/// What the balancer of a run last did, written by `steer run --rebalance`
/// into a one-entry array so that `steer stats` in another process shows it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RebalanceState {
    /// Intervals the balancer has run.
    pub intervals: u64,
    /// Moves asked for (buckets marked moving), since the start.
    pub planned: u64,
    /// Moves the XDP program completed (the bucket went idle and switched).
    pub moves: u64,
    /// Moves given up on: the bucket never went idle, so it stayed.
    pub cancelled: u64,
    /// Buckets marked moving now.
    pub pending: u32,
    /// Buckets whose load alone exceeds a CPU's fair share times the threshold.
    pub unsplittable: u32,
    /// The heaviest such bucket (u32::MAX: none).
    pub unsplittable_bucket: u32,
    /// max/mean of the per-CPU load the balancer measured, x1000 (0: no load).
    pub imbalance_before_milli: u32,
    /// The same after its planned moves (predicted), x1000.
    pub imbalance_after_milli: u32,
    pub _pad: u32,
}

/// The idle gate of a moving bucket, on a packet at `now`: true when the
/// bucket's previous packet (`last_ns`, 0 = none seen since the move was asked
/// for) is older than `idle_ns`, so nothing of it can still be queued on the
/// old CPU behind this one (the rule of RFS moves).
#[inline(always)]
pub fn may_switch(last_ns: u64, now: u64, idle_ns: u64) -> bool {
    last_ns != 0 && now.saturating_sub(last_ns) > idle_ns
}

#[cfg(test)]
mod tests {
    use super::may_switch;

    #[test]
    fn a_bucket_switches_only_after_a_gap_longer_than_the_idle_time() {
        assert!(!may_switch(0, 10_000_000, 500_000), "no packet stamped since the mark: stay");
        assert!(!may_switch(1_000, 1_000 + 500_000, 500_000), "exactly the idle time: stay");
        assert!(may_switch(1_000, 1_000 + 500_001, 500_000));
        assert!(!may_switch(2_000, 1_000, 500_000), "a stamp from another CPU's later clock read");
    }

    #[test]
    fn a_bucket_switches_only_once_the_old_queue_gave_out_its_last_packet() {
        use super::drained;
        assert!(!drained(164, 200, 163), "the last packet may still be queued");
        assert!(drained(164, 200, 164));
        assert!(drained(164, 120, 120), "an empty queue holds nothing");
        assert!(drained(0, 0, 0), "nothing queued (counters off: the idle time decides)");
    }
}
