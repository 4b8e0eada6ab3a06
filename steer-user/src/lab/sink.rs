//! UDP sinks: one socket per CPU on the same port (SO_REUSEPORT), each with
//! SO_INCOMING_CPU set to its CPU and read by a thread pinned there, so a
//! datagram is read on the CPU whose stack delivered it (no cross-CPU wakeup).
//! They count what the application really got.

use std::{
    net::Ipv4Addr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use super::{gen::pin_to_cpu, topology::NetNs, LabError, Result};

/// Running sinks; stopped on drop.
pub struct Sinks {
    counts: Vec<Arc<AtomicU64>>,
    pub cpus: Vec<u32>,
    stop: Arc<AtomicBool>,
    handles: Vec<std::thread::JoinHandle<Result<()>>>,
}

fn setsockopt_int(fd: i32, level: i32, opt: i32, v: i32, what: &str) -> Result<()> {
    // SAFETY: fd is our socket; v lives through the call.
    let rc = unsafe {
        libc::setsockopt(fd, level, opt, (&v as *const i32).cast(), std::mem::size_of::<i32>() as u32)
    };
    if rc != 0 {
        return Err(LabError::io(format!("setsockopt {what}"), std::io::Error::last_os_error()));
    }
    Ok(())
}

fn socket(addr: Ipv4Addr, port: u16, cpu: u32) -> Result<OwnedFd> {
    // SAFETY: plain socket syscall.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(LabError::io("creating a UDP sink socket", std::io::Error::last_os_error()));
    }
    // SAFETY: fresh fd we own.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1, "SO_REUSEPORT")?;
    setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_INCOMING_CPU, cpu as i32, "SO_INCOMING_CPU")?;
    // Large buffers: a burst must not overflow a socket the reader drains a moment later.
    setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, 16 << 20, "SO_RCVBUFFORCE")?;
    let tv = libc::timeval { tv_sec: 0, tv_usec: 50_000 };
    // SAFETY: tv lives through the call.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        )
    };
    let sa = libc::sockaddr_in {
        sin_family: libc::AF_INET as u16,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(addr.octets()) },
        sin_zero: [0; 8],
    };
    // SAFETY: sa is a valid sockaddr_in.
    let rc = unsafe {
        libc::bind(
            fd,
            (&sa as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as u32,
        )
    };
    if rc != 0 {
        return Err(LabError::io(
            format!("binding a UDP sink to {addr}:{port}"),
            std::io::Error::last_os_error(),
        ));
    }
    Ok(owned)
}

/// Reads in batches (recvmmsg) until `stop`; adds each batch to `count`.
fn drain(fd: OwnedFd, count: Arc<AtomicU64>, stop: Arc<AtomicBool>) {
    const BATCH: usize = 64;
    let mut bufs = vec![[0u8; 256]; BATCH];
    while !stop.load(Ordering::Relaxed) {
        let mut iov: Vec<libc::iovec> = bufs
            .iter_mut()
            .map(|b| libc::iovec { iov_base: b.as_mut_ptr().cast(), iov_len: b.len() })
            .collect();
        // SAFETY: zeroed mmsghdr entries pointing at our iovecs.
        let mut msgs: Vec<libc::mmsghdr> = iov
            .iter_mut()
            .map(|v| {
                let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
                m.msg_hdr.msg_iov = v;
                m.msg_hdr.msg_iovlen = 1;
                m
            })
            .collect();
        // SAFETY: msgs/iov/bufs outlive the call; timeout null (SO_RCVTIMEO bounds the wait).
        let n = unsafe {
            libc::recvmmsg(
                fd.as_raw_fd(),
                msgs.as_mut_ptr(),
                BATCH as u32,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if n > 0 {
            count.fetch_add(n as u64, Ordering::Relaxed);
        }
    }
}

impl Sinks {
    /// One socket per CPU of `cpus`, bound to `addr:port` in namespace `ns`.
    pub fn start(ns: &NetNs, addr: Ipv4Addr, port: u16, cpus: &[u32]) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut sinks =
            Self { counts: Vec::new(), cpus: cpus.to_vec(), stop: stop.clone(), handles: Vec::new() };
        for &cpu in cpus {
            let fd = ns.run(move || socket(addr, port, cpu))??;
            let count = Arc::new(AtomicU64::new(0));
            sinks.counts.push(count.clone());
            let stop = stop.clone();
            sinks.handles.push(std::thread::spawn(move || {
                pin_to_cpu(cpu);
                drain(fd, count, stop);
                Ok(())
            }));
        }
        Ok(sinks)
    }

    /// Datagrams read so far, per sink (in the order of `cpus`).
    pub fn per_cpu(&self) -> Vec<u64> {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).collect()
    }

    pub fn total(&self) -> u64 {
        self.per_cpu().iter().sum()
    }

    /// Waits until the count stops growing (queues drained), at most `max`.
    pub fn settle(&self, max: Duration) -> u64 {
        let deadline = Instant::now() + max;
        let mut last = self.total();
        loop {
            std::thread::sleep(Duration::from_millis(60));
            let now = self.total();
            if now == last || Instant::now() > deadline {
                return now;
            }
            last = now;
        }
    }
}

impl Drop for Sinks {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}
