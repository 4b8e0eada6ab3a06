//! The scenarios (what is set up on the lab's receiving veth) and how each is
//! measured: the same generator, the same sinks, the same lab, one after the
//! other. The headline number is the zero-loss throughput: the highest offered
//! rate with < 0.1 % loss (RFC 2544 style bisection, bounded in steps), plus
//! what was delivered at the highest rate the generator can offer.

use std::time::Duration;

use aya::{programs::XdpMode as AyaXdpMode, Ebpf, EbpfLoader};
use steer_common::names::prog;

use super::{
    check_stop,
    gen::{GenSettings, Generator},
    kernel::{KernelRps, Rfs},
    sink::Sinks,
    topology::Topology,
    CpuCounters, CpuPicture, LabError, Result,
};
use crate::{
    config::{HashArg, HashSettings, LocalPass, Spread, DEFAULT_QSIZE, DEFAULT_TABLE_SIZE},
    cpus, loader,
    stats::Snapshot,
};

/// What receives the traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Everything on the CPU the frames arrive on (a bare XDP_PASS program
    /// is attached only so that veth accepts xdp_frames).
    NoSteering,
    /// The kernel's RPS on the rx queue.
    KernelRps,
    /// The kernel's RPS + RFS.
    KernelRfs,
    /// steer's XDP + CPUMAP, RSS-style hash.
    SteerRss,
    /// steer with socket-tracking RFS (`--mode rfs`).
    SteerRfs,
    /// steer's RSS-style hash with `--rebalance` (default settings).
    SteerRebalance,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Scenario {
    pub name: String,
    pub kind: Kind,
    /// CPUs the scenario spreads over (empty for no steering).
    pub cpus: Vec<u32>,
    /// steer's `--spread` (the steer kinds only).
    pub spread: Spread,
}

impl Scenario {
    /// A scenario with steer's defaults, as `steer run` has them.
    pub fn new(name: impl Into<String>, kind: Kind, cpus: Vec<u32>) -> Self {
        Self { name: name.into(), kind, cpus, spread: Spread::default() }
    }

    pub fn with_spread(mut self, spread: Spread) -> Self {
        self.spread = spread;
        self
    }
}

/// The bench's scenarios for this machine: every mode over all CPUs and,
/// where there is more than one CPU, without the IRQ CPU; and steer with
/// `--spread always` over all CPUs, side by side with the default.
pub fn standard(online: &[u32], irq_cpu: u32) -> Vec<Scenario> {
    let all = online.to_vec();
    let rest: Vec<u32> = online.iter().copied().filter(|c| *c != irq_cpu).collect();
    let mut v = vec![Scenario::new("no steering", Kind::NoSteering, vec![])];
    let mut both = |kind: Kind, label: &str| {
        v.push(Scenario::new(format!("{label} all CPUs"), kind, all.clone()));
        if !rest.is_empty() {
            v.push(Scenario::new(format!("{label} without CPU {irq_cpu}"), kind, rest.clone()));
        }
    };
    both(Kind::KernelRps, "kernel RPS");
    both(Kind::KernelRfs, "kernel RPS+RFS");
    both(Kind::SteerRss, "steer rss");
    both(Kind::SteerRfs, "steer rfs");
    for (kind, label) in [(Kind::SteerRss, "steer rss"), (Kind::SteerRfs, "steer rfs")] {
        v.push(
            Scenario::new(format!("{label} --spread always all CPUs"), kind, all.clone())
                .with_spread(Spread::Always),
        );
    }
    v
}

/// The lab with its generator and sinks: everything a scenario runs on.
pub struct Bench {
    pub topo: Topology,
    pub gen: Generator,
    pub sinks: Sinks,
    pub online: Vec<u32>,
    /// CPUMAP queue size for the steer scenarios (frames per CPU).
    pub qsize: u32,
}

impl Bench {
    pub fn new(settings: GenSettings) -> Result<Self> {
        settings.validate()?;
        let online = cpus::online()?;
        if !online.contains(&settings.irq_cpu) {
            return Err(LabError::Msg(format!(
                "invalid --irq-cpu {}: not online (online: {})",
                settings.irq_cpu,
                cpus::format_list(&online)
            )));
        }
        for v in super::kernel::restore_stale() {
            log::warn!("restored net.core.rps_sock_flow_entries to {v} (left by a lab that was killed)");
        }
        let topo = Topology::new()?;
        let sinks = Sinks::start(&topo.rx_ns, topo.rx_ip, settings.dst_port, &online)?;
        let gen = Generator::start(&topo, settings)?;
        Ok(Self { topo, gen, sinks, online, qsize: DEFAULT_QSIZE })
    }
}

/// TCP request/response (`connections` connections, `secs`) on the active
/// scenario, with the context switches per transaction and, for steer, the
/// share of requests passed in place; then the bulk transfer (`bulk_secs`).
pub fn request_response(
    b: &Bench,
    active: &Active,
    port: u16,
    connections: u32,
    secs: f64,
    bulk_secs: f64,
) -> Result<super::rr::RrResult> {
    let (before, switches) = (active.snapshot(), crate::stats::procstat::context_switches()?);
    let mut r = super::rr::run(&b.topo, port, connections, 1, secs, 0.0)?;
    let (after, switches_after) = (active.snapshot(), crate::stats::procstat::context_switches()?);
    let tx = r.transactions.max(1) as f64;
    r.switches_per_tx = Some(switches_after.saturating_sub(switches) as f64 / tx);
    if let (Some(x), Some(y)) = (before, after) {
        let sum = |s: &Snapshot, f: fn(&steer_common::Counters) -> u64| s.per_cpu.iter().map(f).sum::<u64>();
        let seen = sum(&y, |c| c.seen).saturating_sub(sum(&x, |c| c.seen));
        let local = sum(&y, |c| c.local).saturating_sub(sum(&x, |c| c.local));
        r.in_place = (seen > 0).then(|| local as f64 / seen as f64);
    }
    if bulk_secs > 0.0 {
        r.bulk_gbps = Some(super::rr::bulk(&b.topo, port.wrapping_add(1), connections, bulk_secs)?);
    }
    Ok(r)
}

/// What a scenario keeps in place while it is measured.
pub struct Active {
    pub scenario: Scenario,
    /// `--rebalance`'s balancer, on its own thread (dropped first: it holds map fds).
    rebalance: Option<crate::rebalance::Running>,
    xdp: Option<Ebpf>,
    rps: Option<KernelRps>,
}

/// Loads `prog` (with steer's maps filled from `hash` when given) and
/// attaches it natively to the lab's rx veth, from inside its namespace; with
/// RFS in `hash`, also the socket-tracking tracepoints.
fn attach(topo: &Topology, hash: Option<HashSettings>, qsize: u32) -> Result<Ebpf> {
    let ifindex = topo.rx_ifindex;
    let rx_if = topo.rx_if.clone();
    // In place as `steer run` would on this native veth (`--local-pass auto`).
    let hash = hash.map(|h| HashSettings { local_pass: LocalPass::Auto.resolve(true, "veth"), ..h });
    topo.rx_ns.run(move || -> Result<Ebpf> {
        let rfs = hash.as_ref().is_some_and(|h| h.rfs.is_some());
        let (mut ebpf, name) = match hash {
            Some(h) => (loader::load(&h, qsize)?, loader::STEER_PROG),
            None => {
                let mut e = EbpfLoader::new()
                    .load(crate::EBPF_OBJECT)
                    .map_err(|e| LabError::Msg(format!("loading the eBPF object: {e}")))?;
                loader::program(&mut e, loader::PASS_PROG)?.load().map_err(crate::Error::ebpf)?;
                (e, loader::PASS_PROG)
            }
        };
        if name == loader::STEER_PROG {
            // The queue counters, as `steer run` has them: moves and passing in place read them.
            crate::stats::cpumap::attach(&mut ebpf)?;
        }
        loader::program(&mut ebpf, name)?
            .attach_to_if_index(ifindex, AyaXdpMode::Driver)
            .map_err(|e| LabError::Msg(format!("attaching {name} natively to the lab's rx veth: {e}")))?;
        if rfs {
            crate::rfs::start(&mut ebpf, &rx_if)?;
        }
        Ok(ebpf)
    })?
}

impl Active {
    /// Sets the scenario up. `Ok(None)`: not available in this build (the reason is logged by the caller).
    pub fn setup(b: &Bench, sc: &Scenario) -> Result<Option<Self>> {
        let (topo, q) = (&b.topo, b.qsize);
        let (xdp, rps) = match sc.kind {
            Kind::NoSteering => (attach(topo, None, q)?, None),
            Kind::KernelRps => (attach(topo, None, q)?, Some(KernelRps::apply(topo, &sc.cpus, None)?)),
            Kind::KernelRfs => {
                (attach(topo, None, q)?, Some(KernelRps::apply(topo, &sc.cpus, Some(Rfs::default()))?))
            }
            Kind::SteerRss => {
                let h =
                    HashSettings::new(HashArg::Fast, None, 0, false, DEFAULT_TABLE_SIZE, sc.cpus.clone())?
                        .with_spread(sc.spread);
                (attach(topo, Some(h), q)?, None)
            }
            Kind::SteerRfs => {
                let rfs = crate::rfs::RfsSettings::new(
                    steer_common::flow::DEFAULT_FLOW_ENTRIES,
                    crate::rfs::DEFAULT_MIGRATE_IDLE_US,
                )?;
                let h =
                    HashSettings::new(HashArg::Fast, None, 0, false, DEFAULT_TABLE_SIZE, sc.cpus.clone())?
                        .with_rfs(Some(rfs))
                        .with_spread(sc.spread);
                (attach(topo, Some(h), q)?, None)
            }
            Kind::SteerRebalance => {
                let h =
                    HashSettings::new(HashArg::Fast, None, 0, false, DEFAULT_TABLE_SIZE, sc.cpus.clone())?
                        .with_move_idle_us(Some(crate::rebalance::DEFAULT_MOVE_IDLE_US))
                        .with_spread(sc.spread);
                let xdp = attach(topo, Some(h), q)?;
                let maps = crate::rebalance::Maps::of(&xdp)?;
                let running = crate::rebalance::Running::spawn(
                    maps,
                    crate::rebalance::Settings::default(),
                    sc.cpus.clone(),
                );
                return Ok(Some(Self {
                    scenario: sc.clone(),
                    rebalance: Some(running),
                    xdp: Some(xdp),
                    rps: None,
                }));
            }
        };
        Ok(Some(Self { scenario: sc.clone(), rebalance: None, xdp: Some(xdp), rps }))
    }

    /// The loaded steer program, for tests that set its maps up (None without one).
    pub fn xdp_mut(&mut self) -> Option<&mut Ebpf> {
        self.xdp.as_mut()
    }

    /// What `--rebalance` did so far (the state its balancer publishes).
    pub fn rebalance_state(&self) -> Option<steer_common::RebalanceState> {
        self.rebalance.as_ref()?;
        let m = self.xdp.as_ref()?.map(steer_common::names::map::REBALANCE)?;
        aya::maps::Array::<_, steer_common::RebalanceState>::try_from(m).ok()?.get(&0, 0).ok()
    }

    /// steer's counters, for the steering scenarios.
    pub fn snapshot(&self) -> Option<Snapshot> {
        match (self.scenario.kind, &self.xdp) {
            (Kind::SteerRss | Kind::SteerRfs | Kind::SteerRebalance, Some(e)) => loader::snapshot(e).ok(),
            _ => None,
        }
    }

    /// Detaches and restores what the scenario changed.
    pub fn teardown(mut self, topo: &Topology) -> Result<()> {
        if let Some(r) = self.rebalance.take() {
            r.stop()?;
        }
        self.xdp.take();
        match self.rps.take() {
            Some(r) => r.restore(topo),
            None => Ok(()),
        }
    }
}

/// One measured burst.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Sample {
    /// The rate asked for (None: as fast as the generator goes).
    pub target_pps: Option<f64>,
    /// The rate actually offered.
    pub offered_pps: f64,
    /// Frames per generator call: the traffic arrives in bursts of this
    /// size at the generator's top speed, so queues must hold a burst.
    pub burst: u32,
    pub sent: u64,
    /// Datagrams the sinks read.
    pub delivered: u64,
    pub delivered_pps: f64,
    pub loss_pct: f64,
    /// Part of the loss: datagrams that reached a sink's socket while it was
    /// full (Udp RcvbufErrors of the receiving namespace): the reader, not the
    /// receive path, fell behind (on the generator's CPU the sink shares the
    /// CPU with the spinning generator).
    pub socket_full: u64,
    pub cpu: CpuPicture,
    /// Per CPU: frames steer redirected there (steer scenarios only).
    pub steered_in: Vec<u64>,
    pub redirected: u64,
    pub redirect_err: u64,
}

/// Sends `frames` at `rate` and measures what arrived.
pub fn measure(b: &Bench, active: &Active, frames: u64, rate: Option<f64>) -> Result<Sample> {
    check_stop()?;
    let s0 = active.snapshot();
    let rcvbuf = || b.topo.rx_ns.run(|| crate::stats::snmp::counter("Udp", "RcvbufErrors"));
    let (d0, f0) = (b.sinks.total(), rcvbuf()??);
    let c0 = CpuCounters::read()?;
    let burst = b.gen.send(frames, rate)?;
    let c1 = CpuCounters::read()?;
    let d1 = b.sinks.settle(Duration::from_secs(2));
    let f1 = rcvbuf()??;
    let delivered = d1.saturating_sub(d0);
    let mut s = Sample {
        target_pps: rate,
        offered_pps: burst.pps(),
        burst: match rate {
            Some(_) => 1,
            None => frames.min(b.gen.settings.chunk as u64) as u32,
        },
        sent: burst.sent,
        delivered,
        delivered_pps: delivered as f64 / burst.secs.max(1e-9),
        loss_pct: 100.0 * burst.sent.saturating_sub(delivered) as f64 / burst.sent.max(1) as f64,
        socket_full: f1.saturating_sub(f0),
        cpu: c1.since(&c0, burst.secs),
        ..Default::default()
    };
    if let (Some(a), Some(z)) = (active.snapshot(), s0) {
        let d = a.since(&z);
        let t = d.total();
        s.steered_in = d.steered_in;
        s.redirected = t.redirected;
        s.redirect_err = t.redirect_err;
    }
    Ok(s)
}

/// How long and how hard to search.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Plan {
    /// Frames of the unpaced burst (the "max offered" measurement).
    pub max_frames: u64,
    /// Seconds per bisection step.
    pub step_secs: f64,
    pub steps: u32,
    /// Loss below which a rate counts as zero-loss, in %.
    pub loss_pct: f64,
}

impl Plan {
    pub fn quick() -> Self {
        Self { max_frames: 300_000, step_secs: 0.4, steps: 4, loss_pct: 0.1 }
    }
    pub fn full() -> Self {
        Self { max_frames: 4_000_000, step_secs: 2.0, steps: 7, loss_pct: 0.1 }
    }
}

/// Result of one scenario's search.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Search {
    pub at_max: Sample,
    /// The highest rate with loss below the plan's threshold (None: none found).
    pub zero_loss: Option<Sample>,
    pub steps: Vec<Sample>,
}

impl Search {
    pub fn zero_loss_pps(&self) -> f64 {
        self.zero_loss.as_ref().map(|s| s.offered_pps).unwrap_or(0.0)
    }
}

/// The RFC 2544-style search: one unpaced burst gives the highest offered
/// rate and what gets through at it; then a bounded bisection below it,
/// starting from the delivered rate.
pub fn search(b: &Bench, active: &Active, plan: &Plan) -> Result<Search> {
    let t = std::time::Instant::now();
    let at_max = measure(b, active, plan.max_frames, None)?;
    log::debug!(
        "max: offered {:.0} pps, delivered {:.0}, loss {:.3} %, {:.1} s (call setup {:.1} ms)",
        at_max.offered_pps,
        at_max.delivered_pps,
        at_max.loss_pct,
        t.elapsed().as_secs_f64(),
        b.gen.call_secs * 1e3
    );
    if at_max.loss_pct < plan.loss_pct {
        return Ok(Search { zero_loss: Some(at_max.clone()), at_max, steps: vec![] });
    }
    let (mut lo, mut hi) = (0.0f64, at_max.offered_pps);
    let mut best: Option<Sample> = None;
    let mut steps = Vec::new();
    let mut rate = (at_max.delivered_pps * 0.95).min(hi * 0.95);
    for _ in 0..plan.steps {
        std::thread::sleep(Duration::from_millis(100));
        let frames = ((rate * plan.step_secs) as u64).max(5_000);
        let t = std::time::Instant::now();
        let s = measure(b, active, frames, Some(rate))?;
        log::debug!(
            "step: target {rate:.0} pps, offered {:.0}, loss {:.3} %, {:.1} s",
            s.offered_pps,
            s.loss_pct,
            t.elapsed().as_secs_f64()
        );
        if s.loss_pct < plan.loss_pct {
            lo = lo.max(s.offered_pps.min(rate));
            if best.as_ref().is_none_or(|x| s.offered_pps > x.offered_pps) {
                best = Some(s.clone());
            }
        } else {
            hi = rate;
        }
        steps.push(s);
        // Geometric bisection: rates span orders of magnitude here.
        rate = if lo == 0.0 { hi / 2.0 } else { (lo * hi).sqrt() };
    }
    Ok(Search { at_max, zero_loss: best, steps })
}

/// Per-packet cost of the XDP programs, measured with BPF_PROG_TEST_RUN
/// repeat on the same 60-byte UDP frame, interleaved in rounds so drift hits
/// all alike. The minimum over the rounds is the headline (other work on a
/// shared machine only ever adds time); the medians are kept too.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Cost {
    pub repeat: u32,
    pub rounds: u32,
    pub pass_ns: f64,
    pub fast_ns: f64,
    pub toeplitz_ns: f64,
    /// Medians over the rounds: pass, fast, toeplitz.
    pub median_ns: [f64; 3],
    /// steer fast / bare XDP_PASS.
    pub fast_ratio: f64,
    pub toeplitz_ratio: f64,
    /// steer rfs is not in this build.
    /// steer with `--mode rfs` on a TCP frame whose flow is not in the table.
    pub rfs_miss_ns: f64,
    /// steer with `--mode rfs` on a TCP frame whose flow is in the table.
    pub rfs_hit_ns: f64,
    /// A bare redirect into the CPUMAP (fixed CPU, no parsing): the floor of any steering.
    pub floor_ns: f64,
    /// steer fast / the floor.
    pub fast_vs_floor: f64,
    /// steer fast with `--inner off` on the same plain frame: what looking for
    /// tunnels costs traffic that is not tunnelled is `fast_ns / inner_off_ns`.
    pub inner_off_ns: f64,
    /// steer fast on a VXLAN frame (both programs and the tail call between them).
    pub vxlan_ns: f64,
    /// steer fast on a frame whose bucket `--rebalance` is moving (not idle
    /// yet): the clock read and the idle check every packet of such a bucket pays.
    pub moving_ns: f64,
    /// steer fast's parser, then the floor's redirect: `parse_ns - floor_ns` is the parse.
    pub parse_ns: f64,
    /// Its parser, hash and indirection table, then the redirect: `hash_ns - parse_ns` is the
    /// hash and table, and `fast_ns - hash_ns` the counting and the choice to pass in place.
    pub hash_ns: f64,
}

/// steer fast with `frame`'s bucket marked moving to another CPU, and that
/// bucket. The idle time is the longest the configuration holds (71 minutes):
/// between two runs of this program the other ten run, seconds in a full
/// bench, and a bucket idle that long would switch and make the row the plain
/// path's. [`still_moving`] checks the bucket after the rounds.
fn moving_case(online: &[u32], frame_tuple: &steer_common::Tuple) -> Result<(Ebpf, u32)> {
    let s = HashSettings::new(HashArg::Fast, None, 0, false, DEFAULT_TABLE_SIZE, online.to_vec())?
        .with_move_idle_us(Some(u32::MAX));
    let mut e = loader::load(&s, DEFAULT_QSIZE)?;
    let c = s.choose(frame_tuple);
    let to = online.iter().copied().find(|x| *x != c.cpu).unwrap_or(c.cpu);
    let mv = steer_common::BucketMove { want: to, _pad: 0, last_ns: 0, tail: 0 };
    aya::maps::Array::<_, steer_common::BucketMove>::try_from(loader::map_mut(
        &mut e,
        steer_common::names::map::MOVES,
    )?)
    .map_err(crate::Error::ebpf)?
    .set(c.bucket, mv, 0)
    .map_err(crate::Error::ebpf)?;
    aya::maps::Array::<_, u32>::try_from(loader::map_mut(&mut e, steer_common::names::map::INDIR)?)
        .map_err(crate::Error::ebpf)?
        .set(c.bucket, c.cpu | steer_common::INDIR_MOVING, 0)
        .map_err(crate::Error::ebpf)?;
    Ok((e, c.bucket))
}

/// Fails when `bucket` of `e` is no longer moving: the cost table's moving row
/// would then be the plain path's cost under the moving row's name.
fn still_moving(e: &mut Ebpf, bucket: u32) -> Result<()> {
    let indir = aya::maps::Array::<_, u32>::try_from(loader::map_mut(e, steer_common::names::map::INDIR)?)
        .map_err(crate::Error::ebpf)?;
    if indir.get(&bucket, 0).map_err(crate::Error::ebpf)? & steer_common::INDIR_MOVING == 0 {
        return Err(LabError::Msg(format!(
            "the cost table's moving bucket {bucket} switched CPUs during the measurement: its row would \
             measure the plain path"
        )));
    }
    Ok(())
}

/// A TCP frame between the lab's addresses and an RFS-enabled steer, with the
/// frame's flow in its table when `hit` (the CPU is the first online one).
fn rfs_case(online: &[u32], hit: bool) -> Result<(Ebpf, Vec<u8>)> {
    let (src, dst) = (std::net::Ipv4Addr::new(198, 18, 0, 1), std::net::Ipv4Addr::new(198, 18, 0, 2));
    let frame = crate::packet::Frame::eth([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1])
        .ipv4(src, dst)
        .tcp(40000, 80)
        .build();
    let rfs = crate::rfs::RfsSettings::new(1024, crate::rfs::DEFAULT_MIGRATE_IDLE_US)?;
    let s = HashSettings::new(HashArg::Fast, None, 0, false, DEFAULT_TABLE_SIZE, online.to_vec())?
        .with_rfs(Some(rfs));
    let mut e = loader::load(&s, DEFAULT_QSIZE)?;
    if hit {
        let t = steer_common::Tuple::new(src.into(), 40000, dst.into(), 80, steer_common::tuple::IPPROTO_TCP)
            .ok_or_else(|| LabError::Msg("tuple".into()))?;
        let key = steer_common::FlowKey::from_tuple(&t).ok_or_else(|| LabError::Msg("flow key".into()))?;
        let cpu = online.first().copied().unwrap_or(0);
        crate::rfs::insert_flow(&mut e, &key, cpu, true)?;
    }
    Ok((e, frame))
}

pub fn cost(repeat: u32, rounds: u32) -> Result<Cost> {
    let online = cpus::online()?;
    let frame = crate::packet::Frame::eth([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1])
        .ipv4(
            "198.18.0.1".parse().map_err(|_| LabError::Msg("addr".into()))?,
            "198.18.0.2".parse().map_err(|_| LabError::Msg("addr".into()))?,
        )
        .udp(10000, 9000)
        .payload(18)
        .build();
    let load = |h: HashArg| -> Result<Ebpf> {
        let s = HashSettings::new(h, None, 0, false, DEFAULT_TABLE_SIZE, online.clone())?;
        Ok(loader::load(&s, DEFAULT_QSIZE)?)
    };
    let mut tunnel = load(HashArg::Fast)?;
    let mut inner_off = {
        let s = HashSettings::new(HashArg::Fast, None, 0, false, DEFAULT_TABLE_SIZE, online.clone())?
            .with_inner(crate::inner::InnerSettings::new(Some("off"), None)?);
        loader::load(&s, DEFAULT_QSIZE)?
    };
    let vxlan = crate::packet::Frame::eth([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1])
        .ipv4(std::net::Ipv4Addr::new(192, 0, 2, 1), std::net::Ipv4Addr::new(192, 0, 2, 2))
        .udp(40000, 4789)
        .vxlan(1, true)
        .inner_eth([2, 0, 0, 0, 0, 4], [2, 0, 0, 0, 0, 3])
        .ipv4(std::net::Ipv4Addr::new(10, 0, 0, 1), std::net::Ipv4Addr::new(10, 0, 0, 2))
        .udp(10000, 9000)
        .payload(18)
        .build();
    let mut fast = load(HashArg::Fast)?;
    let mut toep = load(HashArg::Toeplitz)?;
    let mut pass = EbpfLoader::new()
        .load(crate::EBPF_OBJECT)
        .map_err(|e| LabError::Msg(format!("loading the eBPF object: {e}")))?;
    loader::program(&mut pass, loader::PASS_PROG)?.load().map_err(crate::Error::ebpf)?;
    let (mut miss, tcp) = rfs_case(&online, false)?;
    let (mut hit, _) = rfs_case(&online, true)?;
    let with = |p: &str| -> Result<Ebpf> {
        let mut e = load(HashArg::Fast)?;
        loader::program(&mut e, p)?.load().map_err(crate::Error::ebpf)?;
        Ok(e)
    };
    let (mut floor, mut parse_only, mut hash_only) =
        (with(loader::FLOOR_PROG)?, with(prog::COST_PARSE)?, with(prog::COST_HASH)?);
    let udp = steer_common::Tuple::new(
        std::net::Ipv4Addr::new(198, 18, 0, 1).into(),
        10000,
        std::net::Ipv4Addr::new(198, 18, 0, 2).into(),
        9000,
        steer_common::tuple::IPPROTO_UDP,
    )
    .ok_or_else(|| LabError::Msg("tuple".into()))?;
    let (mut moving, moving_bucket) = moving_case(&online, &udp)?;
    let mut runs: [Vec<f64>; 11] = Default::default();
    for _ in 0..rounds {
        for (i, (e, name, f)) in [
            (&mut pass, loader::PASS_PROG, &frame),
            (&mut fast, loader::STEER_PROG, &frame),
            (&mut toep, loader::STEER_PROG, &frame),
            (&mut miss, loader::STEER_PROG, &tcp),
            (&mut hit, loader::STEER_PROG, &tcp),
            (&mut floor, loader::FLOOR_PROG, &frame),
            (&mut inner_off, loader::STEER_PROG, &frame),
            (&mut tunnel, loader::STEER_PROG, &vxlan),
            (&mut moving, loader::STEER_PROG, &frame),
            (&mut parse_only, prog::COST_PARSE, &frame),
            (&mut hash_only, prog::COST_HASH, &frame),
        ]
        .into_iter()
        .enumerate()
        {
            let p = loader::program(e, name)?;
            let fd = p.fd().map_err(crate::Error::ebpf)?;
            let out = crate::testrun::run(fd, f, repeat)?;
            runs[i].push(out.duration_ns as f64);
        }
    }
    still_moving(&mut moving, moving_bucket)?;
    for v in runs.iter_mut() {
        v.sort_by(|a, b| a.total_cmp(b));
    }
    let med = |v: &Vec<f64>| v.get(v.len() / 2).copied().unwrap_or(0.0);
    let min = |v: &Vec<f64>| v.first().copied().unwrap_or(0.0);
    let (p, f, t) = (min(&runs[0]), min(&runs[1]), min(&runs[2]));
    Ok(Cost {
        repeat,
        rounds,
        median_ns: [med(&runs[0]), med(&runs[1]), med(&runs[2])],
        pass_ns: p,
        fast_ns: f,
        toeplitz_ns: t,
        fast_ratio: f / p.max(1e-9),
        toeplitz_ratio: t / p.max(1e-9),
        rfs_miss_ns: min(&runs[3]),
        rfs_hit_ns: min(&runs[4]),
        floor_ns: min(&runs[5]),
        fast_vs_floor: f / min(&runs[5]).max(1e-9),
        inner_off_ns: min(&runs[6]),
        vxlan_ns: min(&runs[7]),
        moving_ns: min(&runs[8]),
        parse_ns: min(&runs[9]),
        hash_ns: min(&runs[10]),
    })
}
