//! BPF_PROG_TEST_RUN: runs an XDP program on a crafted frame (the fixtures),
//! or in live-frames mode, where XDP_TX really transmits (the lab generator).
//! aya 0.14 has no wrapper for it, so this is the raw syscall.

use std::os::fd::{AsFd, AsRawFd};

use crate::error::{Error, Result};

const BPF_PROG_TEST_RUN: libc::c_long = 10;
/// Frames really leave through the device (XDP_TX, redirects).
pub const BPF_F_TEST_XDP_LIVE_FRAMES: u32 = 1 << 1;

/// The `test` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct TestAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

/// `struct xdp_md` as test runs take it for a context.
#[repr(C)]
#[derive(Default, Clone, Copy)]
struct XdpMd {
    data: u32,
    data_end: u32,
    data_meta: u32,
    ingress_ifindex: u32,
    rx_queue_index: u32,
    egress_ifindex: u32,
}

/// Result of one test run.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub retval: u32,
    /// Average run time per repetition, as the kernel measured it.
    pub duration_ns: u32,
    pub data_out: Vec<u8>,
}

fn sys_test_run(attr: &mut TestAttr) -> std::io::Result<()> {
    // SAFETY: attr is a valid bpf_attr prefix; the size tells the kernel how much to read.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            attr as *mut TestAttr,
            std::mem::size_of::<TestAttr>(),
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Runs the program once per `repeat` on `frame` and returns its verdict.
pub fn run(prog: impl AsFd, frame: &[u8], repeat: u32) -> Result<Outcome> {
    let mut out = vec![0u8; frame.len() + 256];
    let mut attr = TestAttr {
        prog_fd: prog.as_fd().as_raw_fd() as u32,
        data_size_in: frame.len() as u32,
        data_in: frame.as_ptr() as u64,
        data_size_out: out.len() as u32,
        data_out: out.as_mut_ptr() as u64,
        repeat,
        ..Default::default()
    };
    sys_test_run(&mut attr).map_err(|e| Error::io("BPF_PROG_TEST_RUN", e))?;
    out.truncate(attr.data_size_out as usize);
    Ok(Outcome { retval: attr.retval, duration_ns: attr.duration, data_out: out })
}

/// Live frames: the program runs `count` times on copies of `frame` as if it
/// had been received on `ifindex` (in the calling thread's network namespace),
/// and what it returns is carried out: XDP_TX sends the frame out of that
/// device. This is how the lab feeds a veth like a NIC's receive ring.
pub fn run_live(prog: impl AsFd, frame: &[u8], ifindex: u32, count: u32, batch: u32) -> Result<Outcome> {
    let ctx = XdpMd { data_end: frame.len() as u32, ingress_ifindex: ifindex, ..Default::default() };
    let mut attr = TestAttr {
        prog_fd: prog.as_fd().as_raw_fd() as u32,
        data_size_in: frame.len() as u32,
        data_in: frame.as_ptr() as u64,
        repeat: count,
        ctx_size_in: std::mem::size_of::<XdpMd>() as u32,
        ctx_in: &ctx as *const XdpMd as u64,
        flags: BPF_F_TEST_XDP_LIVE_FRAMES,
        batch_size: batch,
        ..Default::default()
    };
    sys_test_run(&mut attr).map_err(|e| Error::io("BPF_PROG_TEST_RUN (live frames)", e))?;
    Ok(Outcome { retval: attr.retval, duration_ns: attr.duration, data_out: Vec::new() })
}
