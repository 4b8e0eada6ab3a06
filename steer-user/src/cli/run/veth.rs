//! Native XDP on veth, when the user asks for it: warnings for the traps seen
//! there on this kernel.

use steer::{
    config::RunOptions,
    iface,
    loader::{Attached, Steering},
    stats,
};

/// Native XDP on a veth has two traps, each warned about once:
/// - packets the device receives that the program never sees (frames that do
///   not arrive as xdp_frames bypass native XDP on some kernels);
/// - TCP from the peer namespace losing CHECKSUM_PARTIAL on its way through the
///   CPUMAP, so the receiver drops it as `Tcp: InCsumErrors` (measured on 6.18).
pub struct Watch {
    start: stats::Snapshot,
    rx0: Option<u64>,
    csum0: Option<u64>,
    warned_rx: bool,
    warned_csum: bool,
}

impl Watch {
    pub fn new(steering: &Steering, opts: &RunOptions, now: &stats::Snapshot) -> Option<Self> {
        (steering.mode == Attached::Native && steering.driver == "veth").then(|| Self {
            start: now.clone(),
            rx0: iface::rx_packets(&opts.iface).ok(),
            csum0: iface::tcp_in_csum_errors().ok(),
            warned_rx: false,
            warned_csum: false,
        })
    }

    pub fn check(&mut self, ifname: &str, driver: &str, now: &stats::Snapshot) {
        if let (false, Some(rx0), Ok(rx)) = (self.warned_rx, self.rx0, iface::rx_packets(ifname)) {
            let rx = rx.saturating_sub(rx0);
            let seen = now.since(&self.start).total().seen;
            if rx >= 100 && seen < rx / 2 {
                self.warned_rx = true;
                log::warn!(
                    "{ifname} received {rx} packets but the native XDP program saw only {seen}: on {driver} \
                     native XDP runs only on frames redirected into the device. Use --xdp-mode skb to steer \
                     socket traffic."
                );
            }
        }
        if let (false, Some(c0), Ok(c)) = (self.warned_csum, self.csum0, iface::tcp_in_csum_errors()) {
            if c > c0 {
                self.warned_csum = true;
                log::warn!(
                    "Tcp InCsumErrors grew by {} since steer attached natively to veth {ifname}: TCP from the \
                     peer namespace loses its partial checksum through the CPUMAP. Use --xdp-mode skb for \
                     socket traffic on veth (or turn tx checksumming off on the peer).",
                    c - c0
                );
            }
        }
    }
}
