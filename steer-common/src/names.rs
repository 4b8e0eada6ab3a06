//! Names of the maps and programs in steer's eBPF object, as userspace looks
//! them up. The kernel side defines them as symbols of exactly these names
//! (steer-ebpf/src/maps.rs and main.rs); steer-user's tests check that each
//! one is in the built object.

/// Map names.
pub mod map {
    pub const CPUS: &str = "CPUS";
    pub const INDIR: &str = "INDIR";
    pub const CONFIG: &str = "CONFIG";
    pub const TOEPLITZ: &str = "TOEPLITZ";
    pub const STATS: &str = "STATS";
    pub const TARGETS: &str = "TARGETS";
    pub const GEN_CONFIG: &str = "GEN_CONFIG";
    pub const GEN_SEQ: &str = "GEN_SEQ";
    pub const GEN_NEXT: &str = "GEN_NEXT";
    pub const FLOWS: &str = "FLOWS";
    pub const RFS_STATS: &str = "RFS_STATS";
    pub const LOCAL_ADDRS: &str = "LOCAL_ADDRS";
    pub const CPUMAP_ID: &str = "CPUMAP_ID";
    pub const CPUMAP_DROPS: &str = "CPUMAP_DROPS";
    pub const CLOSED: &str = "CLOSED";
    pub const INNER_PROG: &str = "INNER_PROG";
    pub const TUNNEL_AT: &str = "TUNNEL_AT";
    pub const SOCK_OFFSETS: &str = "SOCK_OFFSETS";
    pub const RFS_EXPIRED: &str = "RFS_EXPIRED";
    pub const BUCKETS: &str = "BUCKETS";
    pub const MOVES: &str = "MOVES";
    pub const REBALANCE: &str = "REBALANCE";
    pub const GEN_SCHED: &str = "GEN_SCHED";
    pub const RING: &str = "RING";
    pub const RFS_WANT: &str = "RFS_WANT";
    pub const RFS_SLOTS: &str = "RFS_SLOTS";
    pub const BUSY_UNTIL: &str = "BUSY_UNTIL";
    pub const PENDING: &str = "PENDING";
    pub const SPREAD_TO: &str = "SPREAD_TO";
    pub const LAST_IDLE: &str = "LAST_IDLE";
    pub const IDLE_WATCH: &str = "IDLE_WATCH";
    pub const HANDED: &str = "HANDED";
    pub const KTHREAD: &str = "KTHREAD";
    pub const PENDING_TO: &str = "PENDING_TO";
    pub const ALL: [&str; 34] = [
        CPUS,
        INDIR,
        CONFIG,
        TOEPLITZ,
        STATS,
        TARGETS,
        GEN_CONFIG,
        GEN_SEQ,
        GEN_NEXT,
        FLOWS,
        RFS_STATS,
        LOCAL_ADDRS,
        CPUMAP_ID,
        CPUMAP_DROPS,
        CLOSED,
        INNER_PROG,
        TUNNEL_AT,
        SOCK_OFFSETS,
        RFS_EXPIRED,
        BUCKETS,
        MOVES,
        REBALANCE,
        GEN_SCHED,
        RING,
        RFS_WANT,
        RFS_SLOTS,
        BUSY_UNTIL,
        PENDING,
        SPREAD_TO,
        LAST_IDLE,
        IDLE_WATCH,
        HANDED,
        KTHREAD,
        PENDING_TO,
    ];
}

/// Program names.
pub mod prog {
    /// The steering XDP program.
    pub const STEER: &str = "steer_xdp";
    /// Its second half for tunnelled frames (tail call through `INNER_PROG`).
    pub const STEER_INNER: &str = "steer_inner";
    /// The lab's traffic generator (XDP_TX).
    pub const LAB_GEN: &str = "lab_gen";
    /// A bare XDP_PASS: the baseline for per-packet cost.
    pub const PASS: &str = "xdp_pass";
    /// A bare redirect into the CPUMAP: the floor of any steering.
    pub const FLOOR: &str = "redirect_floor";
    /// RFS socket tracking.
    pub const RFS_READ: &str = "rfs_read";
    pub const RFS_STATE: &str = "rfs_state";
    pub const RFS_UDP_READ: &str = "rfs_udp_read";
    /// CPUMAP drop counters.
    pub const CPUMAP_ENQUEUE: &str = "cpumap_enqueue";
    pub const CPUMAP_KTHREAD: &str = "cpumap_kthread";
    /// What each cpumap kthread had handed to the stack when it last went to sleep.
    pub const CPUMAP_HANDED: &str = "cpumap_handed";
    /// Where a CPU hands packets during its next poll (`--spread busy`).
    pub const NAPI_POLL: &str = "napi_poll";
    /// When each CPU last idled (`--spread busy`).
    pub const CPU_IDLE: &str = "cpu_idle";
    /// The cost table's breakdown of `steer_xdp`: parser, then parser and hash, each before a redirect.
    pub const COST_PARSE: &str = "cost_parse";
    pub const COST_HASH: &str = "cost_hash";
    pub const ALL: [&str; 15] = [
        STEER,
        STEER_INNER,
        LAB_GEN,
        PASS,
        FLOOR,
        RFS_READ,
        RFS_STATE,
        RFS_UDP_READ,
        CPUMAP_ENQUEUE,
        CPUMAP_KTHREAD,
        CPUMAP_HANDED,
        NAPI_POLL,
        CPU_IDLE,
        COST_PARSE,
        COST_HASH,
    ];
}
