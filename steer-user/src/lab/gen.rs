//! The multi-flow generator: `lab_gen` (XDP_TX, source port cycling over the
//! flows per frame, so flows interleave packet by packet) driven by
//! BPF_PROG_TEST_RUN with live frames from a thread in the tx namespace pinned
//! to one CPU, the "IRQ CPU". Its frames reach the receiving veth through the
//! native XDP path, like frames from a NIC's receive ring.
//!
//! Pacing: each BPF_PROG_TEST_RUN call costs a fixed setup (a page pool,
//! measured ~20-30 ms on 6.18), so pacing from userspace between calls sends
//! bursts at the generator's top speed, and a zero-loss search then measures
//! whether a queue holds one burst, not capacity. So a paced send sets
//! `gap_ns` and `lab_gen` paces itself inside the call: a frame that is not
//! due yet is dropped unsent, and the frames that leave are evenly spaced.
//! Unpaced sends go in large calls, as fast as the generator goes.

use std::{sync::mpsc, time::Instant};

use steer_common::GenConfig;

use super::{topology::Topology, LabError, Result};
use crate::{loader, packet::Frame, testrun};

/// What the generator sends.
#[derive(Clone, Debug)]
pub struct GenSettings {
    /// Distinct flows (source ports base_port..base_port+flows).
    pub flows: u32,
    /// UDP payload bytes (18 makes a 60-byte frame, the minimum Ethernet size).
    pub payload: usize,
    /// Destination UDP port (the sinks listen there).
    pub dst_port: u16,
    pub base_port: u16,
    /// The CPU the generator thread is pinned to: where the "interrupt" work lands.
    pub irq_cpu: u32,
    /// Frames per BPF_PROG_TEST_RUN call when unpaced (paced calls size their own chunks).
    pub chunk: u32,
    /// How the frames are shared among the flows.
    pub skew: Skew,
}

/// How the generator's frames are shared among its flows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Skew {
    /// Every flow alike, round-robin.
    #[default]
    Uniform,
    /// One heavy flow carries half the frames, the other flows share the rest.
    HeavyLight,
    /// Zipf (s = 1): the k-th flow carries a share proportional to 1/k.
    Zipf,
}

/// Length of the Zipf schedule (the generator's schedule map holds 65536).
const ZIPF_FRAMES: usize = 1 << 16;

impl Skew {
    /// The generator's schedule for `flows` flows: frame n is flow
    /// `sched[n % len]` (flow i = source port base_port + i). `None`: round-robin.
    pub fn schedule(self, flows: u32) -> Option<Vec<u32>> {
        match self {
            Self::Uniform => None,
            // Alternating, so the heavy flow's frames interleave with the light ones.
            Self::HeavyLight => Some((1..flows.max(2)).flat_map(|light| [0, light]).collect()),
            Self::Zipf => {
                let h: f64 = (1..=flows).map(|k| 1.0 / k as f64).sum();
                let mut sched: Vec<u32> = (0..flows)
                    .flat_map(|i| {
                        let n = ((ZIPF_FRAMES as f64 / (i as f64 + 1.0) / h).round() as usize).max(1);
                        std::iter::repeat_n(i, n)
                    })
                    .take(ZIPF_FRAMES)
                    .collect();
                // Fisher-Yates with a fixed xorshift seed: interleaved, and the same every run.
                let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
                for i in (1..sched.len()).rev() {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    sched.swap(i, (x % (i as u64 + 1)) as usize);
                }
                Some(sched)
            }
        }
    }
}

impl Default for GenSettings {
    fn default() -> Self {
        Self {
            flows: 1024,
            payload: 18,
            dst_port: 9000,
            base_port: 10000,
            irq_cpu: 0,
            chunk: 1 << 22,
            skew: Skew::Uniform,
        }
    }
}

impl GenSettings {
    /// Checks the values before anything is built.
    pub fn validate(&self) -> Result<()> {
        let max = 65535 - self.base_port as u32;
        if self.flows == 0 || self.flows > max {
            return Err(LabError::Msg(format!(
                "invalid --flows {}: must be between 1 and {max}",
                self.flows
            )));
        }
        if self.chunk == 0 {
            return Err(LabError::Msg(
                "invalid chunk 0: the generator sends at least one frame per call".into(),
            ));
        }
        if self.skew == Skew::HeavyLight && self.flows < 2 {
            return Err(LabError::Msg(format!(
                "invalid --flows {} with --skew heavy-light: one heavy flow and at least one light one",
                self.flows
            )));
        }
        if self.skew == Skew::Zipf && self.flows as usize > ZIPF_FRAMES / 8 {
            return Err(LabError::Msg(format!(
                "invalid --flows {} with --skew zipf: at most {}",
                self.flows,
                ZIPF_FRAMES / 8
            )));
        }
        Ok(())
    }
}

/// One burst as it happened.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct Burst {
    pub sent: u64,
    pub secs: f64,
}

impl Burst {
    /// The rate actually offered.
    pub fn pps(&self) -> f64 {
        self.sent as f64 / self.secs.max(1e-9)
    }
}

enum Cmd {
    Send {
        frames: u64,
        rate: Option<f64>,
        chunk: u32,
    },
    /// Times a few small calls: the fixed cost of one call, in seconds.
    /// (A 1-frame call is nearly free; one that really transmits a batch
    /// pays the page pool's setup and teardown: ~27 ms measured here.)
    Calibrate,
}

/// A running generator thread; dropped, it ends.
pub struct Generator {
    cmds: Option<mpsc::Sender<Cmd>>,
    results: mpsc::Receiver<Result<Burst>>,
    handle: Option<std::thread::JoinHandle<Result<Result<()>>>>,
    pub settings: GenSettings,
    /// Fixed cost of one BPF_PROG_TEST_RUN live call, in seconds.
    pub call_secs: f64,
    /// The highest rate an unpaced burst reached so far.
    max_pps: std::cell::Cell<f64>,
}

impl Generator {
    /// Starts the generator thread in the lab's tx namespace and loads `lab_gen` there.
    pub fn start(topo: &Topology, settings: GenSettings) -> Result<Self> {
        if settings.flows == 0 || settings.flows > 65535 - settings.base_port as u32 {
            return Err(LabError::Msg(format!(
                "invalid --flows {}: must be between 1 and {}",
                settings.flows,
                65535 - settings.base_port as u32
            )));
        }
        if settings.chunk == 0 {
            return Err(LabError::Msg(
                "invalid chunk 0: the generator sends at least one frame per call".into(),
            ));
        }
        let frame = Frame::eth(topo.rx_mac, topo.tx_mac)
            .ipv4(topo.tx_ip, topo.rx_ip)
            .udp(settings.base_port, settings.dst_port)
            .payload(settings.payload);
        let sport_offset =
            frame.l4_offset().ok_or_else(|| LabError::Msg("the generator frame has no UDP header".into()))?
                as u32;
        let frame = frame.build();
        let (cmd_tx, cmd_rx) = mpsc::channel::<Cmd>();
        let (res_tx, res_rx) = mpsc::channel::<Result<Burst>>();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<()>>();
        let s = settings.clone();
        let ifindex = topo.tx_ifindex;
        let handle = topo.tx_ns.spawn(move || -> Result<()> {
            pin_to_cpu(s.irq_cpu);
            let cfg = GenConfig {
                flows: s.flows,
                base_port: s.base_port as u32,
                sport_offset,
                gap_ns: 0,
                sched_len: 0,
            };
            let sched = s.skew.schedule(s.flows).unwrap_or_default();
            let mut ebpf = match loader::generator_with(cfg, &sched) {
                Ok(e) => e,
                Err(e) => {
                    let msg = e.to_string();
                    let _ = ready_tx.send(Err(e.into()));
                    return Err(LabError::Msg(msg));
                }
            };
            let prog = loader::program(&mut ebpf, loader::GEN_PROG)?;
            let fd = prog.fd().map_err(crate::Error::ebpf)?.try_clone().map_err(crate::Error::ebpf)?;
            let _ = ready_tx.send(Ok(()));
            while let Ok(cmd) = cmd_rx.recv() {
                let r = match cmd {
                    Cmd::Send { frames, rate: Some(r), .. } => {
                        send_paced(&mut ebpf, &fd, &frame, ifindex, frames, r)
                    }
                    Cmd::Send { frames, rate: None, chunk } => send(&fd, &frame, ifindex, chunk, frames),
                    Cmd::Calibrate => (0..5)
                        .map(|_| send(&fd, &frame, ifindex, 64, 64))
                        .min_by(|a, b| match (a, b) {
                            (Ok(a), Ok(b)) => a.secs.total_cmp(&b.secs),
                            _ => std::cmp::Ordering::Equal,
                        })
                        .unwrap_or_else(|| Err(LabError::Msg("calibration".into()))),
                };
                if res_tx.send(r).is_err() {
                    break;
                }
            }
            Ok(())
        })?;
        // Dropped on error, it joins the thread that already ended.
        let mut g = Self {
            cmds: Some(cmd_tx),
            results: res_rx,
            handle: Some(handle),
            settings,
            call_secs: 0.0,
            max_pps: std::cell::Cell::new(0.0),
        };
        ready_rx.recv().map_err(|_| LabError::Msg("the generator thread died while loading".into()))??;
        g.call_secs = g.request(Cmd::Calibrate)?.secs;
        Ok(g)
    }

    /// Sends `frames` frames at `rate` pps (None: as fast as the generator
    /// goes, chunk after chunk) and returns when the last one left.
    pub fn send(&self, frames: u64, rate: Option<f64>) -> Result<Burst> {
        let chunk = match rate {
            None => self.settings.chunk,
            // Paced in the kernel: frames leave one at a time.
            Some(_) => 1,
        };
        let b = self.request(Cmd::Send { frames, rate, chunk })?;
        if rate.is_none() && b.pps() > self.max_pps.get() {
            self.max_pps.set(b.pps());
        }
        Ok(b)
    }

    fn request(&self, cmd: Cmd) -> Result<Burst> {
        let gone = || LabError::Msg("the generator thread is gone".into());
        let cmds = self.cmds.as_ref().ok_or_else(gone)?;
        cmds.send(cmd).map_err(|_| gone())?;
        self.results.recv().map_err(|_| gone())?
    }
}

impl Drop for Generator {
    fn drop(&mut self) {
        self.cmds.take();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// As fast as the generator goes, in calls of `chunk` frames.
fn send(fd: &aya::programs::ProgramFd, frame: &[u8], ifindex: u32, chunk: u32, frames: u64) -> Result<Burst> {
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < frames {
        super::check_stop()?;
        let n = (frames - sent).min(chunk as u64) as u32;
        testrun::run_live(fd, frame, ifindex, n, 64.min(n))?;
        sent += n as u64;
    }
    Ok(Burst { sent, secs: start.elapsed().as_secs_f64() })
}

/// Test-run iterations per paced call: long enough that the call's setup is a
/// small share of it, short enough to notice Ctrl-C.
const PACED_ITERATIONS: u32 = 1 << 21;

/// `frames` evenly spaced at `rate` pps: `lab_gen` drops what is not due yet,
/// so the count of frames really sent comes from its sequence counter.
fn send_paced(
    ebpf: &mut aya::Ebpf,
    fd: &aya::programs::ProgramFd,
    frame: &[u8],
    ifindex: u32,
    frames: u64,
    rate: f64,
) -> Result<Burst> {
    let gap = (1e9 / rate.max(1.0)).clamp(1.0, u32::MAX as f64) as u32;
    loader::set_generator_gap(ebpf, gap)?;
    let first = loader::generator_sent(ebpf)?;
    let start = Instant::now();
    let mut sent = 0;
    let res = (|| -> Result<()> {
        while sent < frames {
            super::check_stop()?;
            testrun::run_live(fd, frame, ifindex, PACED_ITERATIONS, 64)?;
            sent = loader::generator_sent(ebpf)? - first;
        }
        Ok(())
    })();
    loader::set_generator_gap(ebpf, 0)?;
    res?;
    Ok(Burst { sent, secs: start.elapsed().as_secs_f64() })
}

/// Pins the calling thread to `cpu`.
pub fn pin_to_cpu(cpu: u32) {
    // SAFETY: a zeroed cpu_set_t with one bit set, for this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu as usize, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

#[cfg(test)]
mod tests {
    use super::Skew;

    fn shares(sched: &[u32], flows: u32) -> Vec<f64> {
        let mut n = vec![0usize; flows as usize];
        for f in sched {
            n[*f as usize] += 1;
        }
        n.iter().map(|c| *c as f64 / sched.len() as f64).collect()
    }

    #[test]
    fn heavy_light_gives_the_heavy_flow_half_and_interleaves() {
        let s = Skew::HeavyLight.schedule(65).unwrap();
        let sh = shares(&s, 65);
        assert_eq!(sh[0], 0.5);
        assert!(sh[1..].iter().all(|x| (*x - 0.5 / 64.0).abs() < 1e-12), "{sh:?}");
        assert!(s.chunks(2).all(|p| p[0] == 0 && p[1] != 0), "heavy frames alternate with light ones");
    }

    #[test]
    fn zipf_shares_fall_as_one_over_rank() {
        let s = Skew::Zipf.schedule(1024).unwrap();
        assert!(s.len() <= 1 << 16 && s.len() > 60_000, "{}", s.len());
        let sh = shares(&s, 1024);
        let h: f64 = (1..=1024).map(|k| 1.0 / k as f64).sum();
        assert!((sh[0] - 1.0 / h).abs() < 0.002, "top flow {} vs {}", sh[0], 1.0 / h);
        assert!((sh[1] / sh[0] - 0.5).abs() < 0.01 && sh.iter().all(|x| *x > 0.0));
        // Shuffled: the top flow is not sent in one run of frames.
        let longest = s.chunk_by(|a, b| a == b).map(|r| r.len()).max().unwrap();
        assert!(longest < 20, "longest run {longest}");
        assert_eq!(s, Skew::Zipf.schedule(1024).unwrap(), "the same every run");
    }

    #[test]
    fn uniform_has_no_schedule() {
        assert!(Skew::Uniform.schedule(1024).is_none());
    }
}
