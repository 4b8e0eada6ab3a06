//! The bpf(2) commands steer needs that aya 0.14 does not offer for what steer
//! holds. Everything else (loading, maps, links, pins of its own objects) goes
//! through aya.
//!
//! - BPF_PROG_TEST_RUN: aya's `TestRun::test_run` is a method of a loaded
//!   `Xdp`; steer runs programs from a bare fd (the lab generator's thread, the
//!   tests), which aya cannot wrap back into an `Xdp`.
//! - BPF_MAP_DELETE_ELEM on a CPUMAP: aya's `CpuMap` has no `remove`.
//! - BPF_PROG_GET_FD_BY_ID: aya reaches it only by walking every loaded
//!   program (`loaded_programs`), not for one known id.
//! - BPF_OBJ_PIN of a bare program fd: aya pins only programs it loaded
//!   itself. (The way back, BPF_OBJ_GET, is aya's `ProgramInfo::from_pin`.)

use std::{
    ffi::CString,
    io,
    mem::size_of,
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
    path::Path,
};

const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;

/// Frames really leave through the device (XDP_TX, redirects).
pub const BPF_F_TEST_XDP_LIVE_FRAMES: u32 = 1 << 1;

/// bpf(2) with `attr`, a prefix of `union bpf_attr` for `cmd`.
///
/// # Safety
/// `A` must be the `#[repr(C)]` layout the kernel expects for `cmd`, and every
/// pointer in it must be valid, for the length given beside it, for the call.
unsafe fn bpf<A>(cmd: libc::c_long, attr: &mut A) -> io::Result<libc::c_long> {
    // SAFETY: the caller vouches for the layout and the pointers; size_of is the true size.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut A, size_of::<A>()) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc)
}

/// An fd the kernel just returned, owned from here on.
fn own(fd: libc::c_long) -> OwnedFd {
    // SAFETY: bpf(2) returned a new descriptor that nothing else owns.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

/// BPF_MAP_DELETE_ELEM of the 4-byte `key` (a CPUMAP's CPU, an array index).
pub fn map_delete_u32(map: BorrowedFd<'_>, key: u32) -> io::Result<()> {
    // bpf_attr for BPF_MAP_*_ELEM: map_fd, pad, key pointer, value pointer, flags.
    #[repr(C)]
    struct Attr {
        map_fd: u32,
        _pad: u32,
        key: u64,
        value: u64,
        flags: u64,
    }
    let mut attr =
        Attr { map_fd: map.as_raw_fd() as u32, _pad: 0, key: &key as *const u32 as u64, value: 0, flags: 0 };
    // SAFETY: the map_elem layout; `key` outlives the call and is the map's 4-byte key.
    unsafe { bpf(BPF_MAP_DELETE_ELEM, &mut attr) }.map(drop)
}

/// An fd for the program with id `id` (keeps it alive however it is attached).
pub fn prog_get_fd_by_id(id: u32) -> io::Result<OwnedFd> {
    // bpf_attr for *_GET_FD_BY_ID: id, next_id, open_flags, fd_by_id_token_fd.
    let mut attr: [u32; 4] = [id, 0, 0, 0];
    // SAFETY: the get_fd_by_id layout; it holds no pointers.
    unsafe { bpf(BPF_PROG_GET_FD_BY_ID, &mut attr) }.map(own)
}

/// Pins the object `fd` at `path` in a bpffs.
pub fn obj_pin(path: &Path, fd: BorrowedFd<'_>) -> io::Result<()> {
    // bpf_attr for BPF_OBJ_*: pathname pointer, bpf_fd, file_flags.
    #[repr(C)]
    struct ObjAttr {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
    }
    let c = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))?;
    let mut attr = ObjAttr { pathname: c.as_ptr() as u64, bpf_fd: fd.as_raw_fd() as u32, file_flags: 0 };
    // SAFETY: the obj layout; `c` is NUL-terminated and outlives the call.
    unsafe { bpf(BPF_OBJ_PIN, &mut attr) }.map(drop)
}

/// `struct xdp_md` as test runs take it for a context.
#[repr(C)]
#[derive(Default, Clone, Copy, Debug)]
pub struct XdpMd {
    pub data: u32,
    pub data_end: u32,
    pub data_meta: u32,
    pub ingress_ifindex: u32,
    pub rx_queue_index: u32,
    pub egress_ifindex: u32,
}

/// What one BPF_PROG_TEST_RUN is given.
#[derive(Default)]
pub struct TestRun<'a> {
    pub data_in: &'a [u8],
    /// Where the frame as the program left it goes; None: nowhere.
    pub data_out: Option<&'a mut [u8]>,
    pub ctx_in: Option<&'a XdpMd>,
    /// A raw tracepoint program's arguments (its context), instead of `ctx_in`.
    pub args: &'a [u64],
    /// Run on this CPU (BPF_F_TEST_RUN_ON_CPU) instead of the calling one.
    pub cpu: Option<u32>,
    pub repeat: u32,
    pub flags: u32,
    pub batch_size: u32,
}

/// BPF_PROG_TEST_RUN flag: run on the CPU the attribute names.
const BPF_F_TEST_RUN_ON_CPU: u32 = 1;

/// What the kernel reports back.
#[derive(Clone, Copy, Debug)]
pub struct TestRunOut {
    pub retval: u32,
    /// Average run time per repetition, in ns.
    pub duration: u32,
    /// Bytes written to `data_out`.
    pub data_size_out: u32,
}

/// BPF_PROG_TEST_RUN of program `prog`.
pub fn prog_test_run(prog: BorrowedFd<'_>, t: TestRun<'_>) -> io::Result<TestRunOut> {
    // The `test` member of `union bpf_attr`.
    #[repr(C)]
    #[derive(Default)]
    struct Attr {
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
    let (data_out, data_size_out) = match t.data_out {
        Some(out) => (out.as_mut_ptr() as u64, out.len() as u32),
        None => (0, 0),
    };
    let (ctx_in, ctx_size_in) = match t.ctx_in {
        Some(ctx) => (ctx as *const XdpMd as u64, size_of::<XdpMd>() as u32),
        None if !t.args.is_empty() => (t.args.as_ptr() as u64, size_of_val(t.args) as u32),
        None => (0, 0),
    };
    let (flags, cpu) = match t.cpu {
        Some(cpu) => (t.flags | BPF_F_TEST_RUN_ON_CPU, cpu),
        None => (t.flags, 0),
    };
    let mut attr = Attr {
        prog_fd: prog.as_raw_fd() as u32,
        data_size_in: t.data_in.len() as u32,
        // No pointer for no data: a raw tracepoint's run refuses any.
        data_in: if t.data_in.is_empty() { 0 } else { t.data_in.as_ptr() as u64 },
        data_size_out,
        data_out,
        repeat: t.repeat,
        ctx_size_in,
        ctx_in,
        flags,
        cpu,
        batch_size: t.batch_size,
        ..Default::default()
    };
    // SAFETY: the test layout; data_in, data_out, ctx_in and args are borrowed for the
    // call and their sizes are their true lengths, so the kernel writes only within data_out.
    unsafe { bpf(BPF_PROG_TEST_RUN, &mut attr) }?;
    Ok(TestRunOut { retval: attr.retval, duration: attr.duration, data_size_out: attr.data_size_out })
}
