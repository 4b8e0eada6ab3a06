//! TCP request/response between the lab's namespaces, like netperf TCP_RR:
//! each connection sends a small request and waits for the response; the
//! round trips give transactions per second and latency percentiles.

/// Outcome of one RR run.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct RrResult {
    pub connections: u32,
    pub secs: f64,
    pub transactions: u64,
    pub tps: f64,
    pub p50_us: f64,
    pub p99_us: f64,
}
