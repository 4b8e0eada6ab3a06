//! BPF_PROG_TEST_RUN: runs an XDP program on a crafted frame (the fixtures),
//! or in live-frames mode, where XDP_TX really transmits (the lab generator);
//! or a raw tracepoint program on given arguments, on a given CPU (fixtures).
//! The syscall is [`crate::sys::bpf::prog_test_run`].

use std::os::fd::AsFd;

use crate::{
    error::{Error, Result},
    sys::bpf::{self, TestRun, XdpMd},
};

pub use crate::sys::bpf::BPF_F_TEST_XDP_LIVE_FRAMES;

/// Result of one test run.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub retval: u32,
    /// Average run time per repetition, as the kernel measured it.
    pub duration_ns: u32,
    pub data_out: Vec<u8>,
}

/// Runs the program once per `repeat` on `frame` and returns its verdict.
pub fn run(prog: impl AsFd, frame: &[u8], repeat: u32) -> Result<Outcome> {
    let mut out = vec![0u8; frame.len() + 256];
    let t = TestRun { data_in: frame, data_out: Some(&mut out), repeat, ..Default::default() };
    let r = bpf::prog_test_run(prog.as_fd(), t).map_err(|e| Error::io("BPF_PROG_TEST_RUN", e))?;
    out.truncate(r.data_size_out as usize);
    Ok(Outcome { retval: r.retval, duration_ns: r.duration, data_out: out })
}

/// Live frames: the program runs `count` times on copies of `frame` as if it
/// had been received on `ifindex` (in the calling thread's network namespace),
/// and what it returns is carried out: XDP_TX sends the frame out of that
/// device. This is how the lab feeds a veth like a NIC's receive ring.
pub fn run_live(prog: impl AsFd, frame: &[u8], ifindex: u32, count: u32, batch: u32) -> Result<Outcome> {
    let ctx = XdpMd { data_end: frame.len() as u32, ingress_ifindex: ifindex, ..Default::default() };
    let t = TestRun {
        data_in: frame,
        ctx_in: Some(&ctx),
        repeat: count,
        flags: BPF_F_TEST_XDP_LIVE_FRAMES,
        batch_size: batch,
        ..Default::default()
    };
    let r =
        bpf::prog_test_run(prog.as_fd(), t).map_err(|e| Error::io("BPF_PROG_TEST_RUN (live frames)", e))?;
    Ok(Outcome { retval: r.retval, duration_ns: r.duration, data_out: Vec::new() })
}

/// Runs a raw tracepoint program once on CPU `cpu` with the tracepoint's
/// arguments `args`, as if the event had fired there; returns its return value.
pub fn run_raw_tracepoint(prog: impl AsFd, args: &[u64], cpu: u32) -> Result<u32> {
    let t = TestRun { args, cpu: Some(cpu), ..Default::default() };
    let r = bpf::prog_test_run(prog.as_fd(), t)
        .map_err(|e| Error::io("BPF_PROG_TEST_RUN (raw tracepoint)", e))?;
    Ok(r.retval)
}
