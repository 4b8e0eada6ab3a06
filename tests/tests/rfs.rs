//! RFS on a real kernel: TCP and UDP servers in the lab's receiving namespace with
//! reader threads pinned to CPUs, clients in the sending namespace, and
//! `steer run --mode rfs --xdp-mode skb` on the receiving veth (generic XDP is
//! the mode that sees the peer's socket traffic on veth).
//!
//! Every claim is checked against something the XDP program does not write:
//! the CPU the test pinned the reader to, the receiving socket's own segment
//! count (TCP_INFO tcpi_segs_in), and the namespace's TcpExt counters.

use std::{
    collections::HashMap as StdHashMap,
    io::{Read, Write},
    net::{IpAddr, SocketAddr, SocketAddrV6, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd,
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use aya::{maps::PerCpuArray, Ebpf};
use socket2::{Domain, Protocol, Socket, Type};
use steer::{
    config::{HashArg, HashSettings},
    loader::{self, PASS_PROG, STEER_PROG},
    packet::Frame,
    rfs::{self, FlowView, PinnedFlows, RfsSettings},
    testrun,
};
use steer_common::{
    tuple::{IPPROTO_TCP, IPPROTO_UDP},
    FlowEntry, FlowKey, FlowSlot, RfsCounters, Tuple,
};
use steer_tests::{in_ns, pin_to_cpu, require_root, tcp_ext_here, Lab, SenderRps, SteerRun};

/// Two CPUs at least, or the test cannot say anything about steering.
fn two_cpus() -> (u32, u32) {
    let online = steer::cpus::online().expect("reading online CPUs");
    assert!(online.len() >= 2, "RFS tests need two online CPUs, this machine has {online:?}");
    (online[0], online[1])
}

fn bytes16(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        IpAddr::V6(a) => a.octets(),
    }
}

/// Which kind of listener the server has.
#[derive(Clone, Copy, Debug)]
enum Listen {
    /// AF_INET on the IPv4 address.
    V4,
    /// AF_INET6 on the IPv6 address.
    V6,
    /// AF_INET6 on [::], reached over IPv4 (v4-mapped sockets).
    DualStack,
}

/// One accepted connection: the server side, read by one reader thread.
struct Conn {
    server: Arc<TcpStream>,
    client: Arc<TcpStream>,
    /// Flow key in packet direction (client -> server), as the XDP side sees it.
    key: FlowKey,
    /// What the fast hash over CPUs 0-1 (steer's default) would choose: RSS.
    rss_cpu: u32,
}

impl Conn {
    fn segs_in(&self) -> u64 {
        tcp_info(&self.server).tcpi_segs_in as u64
    }
}

fn tcp_info(s: &TcpStream) -> libc::tcp_info {
    // SAFETY: getsockopt into a zeroed tcp_info of the size we pass.
    unsafe {
        let mut info: libc::tcp_info = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        libc::getsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            &mut info as *mut _ as *mut libc::c_void,
            &mut len,
        );
        info
    }
}

/// `n` connections from the sending namespace to a listener of kind `listen`
/// in the receiving one.
fn connect(lab: &Lab, listen: Listen, port: u16, n: usize) -> Result<Vec<Conn>> {
    let (bind, dst): (SocketAddr, SocketAddr) = match listen {
        Listen::V4 => (format!("{}:{port}", lab.rx_ip).parse()?, format!("{}:{port}", lab.rx_ip).parse()?),
        Listen::V6 => {
            (format!("[{}]:{port}", lab.rx_ip6).parse()?, format!("[{}]:{port}", lab.rx_ip6).parse()?)
        }
        Listen::DualStack => (format!("[::]:{port}").parse()?, format!("{}:{port}", lab.rx_ip).parse()?),
    };
    let listener = in_ns(&lab.rx_ns, move || TcpListener::bind(bind))??;
    let clients = in_ns(&lab.tx_ns, move || -> Result<Vec<TcpStream>> {
        (0..n)
            .map(|_| {
                let c = TcpStream::connect_timeout(&dst, Duration::from_secs(5)).context("connecting")?;
                c.set_nodelay(true)?;
                Ok(c)
            })
            .collect()
    })??;
    let rss = HashSettings::new(HashArg::Fast, None, 0, false, 256, vec![0, 1])?;
    let mut accepted: Vec<(SocketAddr, TcpStream)> =
        (0..n).map(|_| listener.accept().map(|(s, peer)| (peer, s))).collect::<std::io::Result<_>>()?;
    let mut conns = Vec::new();
    for c in clients {
        let local = c.local_addr()?;
        // A dual-stack server sees the IPv4 peer as ::ffff:a.b.c.d: compare as 16 bytes.
        let i = accepted
            .iter()
            .position(|(peer, _)| bytes16(peer.ip()) == bytes16(local.ip()) && peer.port() == local.port())
            .context("no accepted socket for a client")?;
        let (_, server) = accepted.swap_remove(i);
        let sl = server.local_addr()?;
        let key = FlowKey::from_socket(
            IPPROTO_TCP,
            &bytes16(sl.ip()),
            sl.port(),
            &bytes16(local.ip()),
            local.port(),
        );
        let t = match (local.ip(), dst.ip()) {
            (s @ IpAddr::V4(_), d @ IpAddr::V4(_)) | (s @ IpAddr::V6(_), d @ IpAddr::V6(_)) => {
                Tuple::new(s, local.port(), d, port, IPPROTO_TCP).context("tuple")?
            }
            _ => bail!("client and server families differ"),
        };
        conns.push(Conn { server: Arc::new(server), client: Arc::new(c), key, rss_cpu: rss.choose(&t).cpu });
    }
    Ok(conns)
}

/// A thread reading some connections, pinned to `cpu` (changeable live).
struct Reader {
    cpu: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    bytes: Arc<AtomicU64>,
    handle: Option<JoinHandle<()>>,
}

impl Reader {
    fn start(name: &str, cpu: u32, conns: Vec<Arc<TcpStream>>) -> Self {
        let want = Arc::new(AtomicUsize::new(cpu as usize));
        let stop = Arc::new(AtomicBool::new(false));
        let bytes = Arc::new(AtomicU64::new(0));
        let (w, s, b) = (want.clone(), stop.clone(), bytes.clone());
        let handle = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let mut on = usize::MAX;
                let mut buf = vec![0u8; 65536];
                for c in &conns {
                    let _ = c.set_nonblocking(true);
                }
                while !s.load(Ordering::Relaxed) {
                    let cpu = w.load(Ordering::Relaxed);
                    if cpu != on {
                        pin_to_cpu(cpu);
                        on = cpu;
                    }
                    let mut fds: Vec<libc::pollfd> = conns
                        .iter()
                        .map(|c| libc::pollfd { fd: c.as_raw_fd(), events: libc::POLLIN, revents: 0 })
                        .collect();
                    // SAFETY: a valid array of pollfd.
                    unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 20) };
                    for (c, fd) in conns.iter().zip(&fds) {
                        if fd.revents & libc::POLLIN != 0 {
                            if let Ok(n) = (&**c).read(&mut buf) {
                                b.fetch_add(n as u64, Ordering::Relaxed);
                            }
                        }
                    }
                }
            })
            .expect("spawning a reader");
        Self { cpu: want, stop, bytes, handle: Some(handle) }
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Clients writing steadily: bursts of `burst` 1000-byte writes, then `gap`.
/// Pinned to one CPU: on veth the sender's CPU is where the frame enters the
/// receive path, and a sender hopping CPUs could reorder by itself.
struct Senders {
    stop: Arc<AtomicBool>,
    handles: Vec<JoinHandle<u64>>,
}

impl Senders {
    fn start(conns: &[Conn], cpu: u32, burst: usize, gap: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let handles = conns
            .iter()
            .map(|c| {
                let (c, s) = (c.client.clone(), stop.clone());
                std::thread::spawn(move || {
                    pin_to_cpu(cpu as usize);
                    let msg = [0x5au8; 1000];
                    let mut sent = 0;
                    while !s.load(Ordering::Relaxed) {
                        for _ in 0..burst {
                            if (&*c).write_all(&msg).is_err() {
                                return sent;
                            }
                            sent += msg.len() as u64;
                        }
                        std::thread::sleep(gap);
                    }
                    sent
                })
            })
            .collect();
        Self { stop, handles }
    }

    fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.handles.drain(..).map(|h| h.join().unwrap_or(0)).sum()
    }
}

impl Drop for Senders {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

/// The flow's record joined with its steering slot.
fn entry(flows: &PinnedFlows, key: &FlowKey) -> Option<FlowView> {
    flows.get(key)
}

fn counters(flows: &PinnedFlows) -> RfsCounters {
    rfs::counters(&flows.stats).expect("reading RFS counters")
}

/// Waits (bounded) until `f` holds; returns how long it took.
fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
    start.elapsed()
}

/// `TcpExt` of /proc/net/netstat in namespace `ns`.
fn tcp_ext(ns: &str) -> StdHashMap<String, u64> {
    in_ns(ns, tcp_ext_here).expect("entering the lab namespace")
}

/// The receiver's reordering evidence: segments it had to queue out of order.
const REORDER_COUNTERS: [&str; 3] = ["TCPOFOQueue", "TCPOFOMerge", "TCPOFODrop"];

/// Turns off TCP autocorking for the senders, so that each 1000-byte write
/// is one segment on the wire and one frame for XDP (then tcpi_segs_in and
/// the per-flow packet count measure the same thing).
fn one_segment_per_write(lab: &Lab) {
    // /proc/sys/net is the namespace of the thread that opens the file.
    let res = in_ns(&lab.tx_ns, || std::fs::write("/proc/sys/net/ipv4/tcp_autocorking", "0\n"))
        .expect("entering the sending namespace");
    assert!(res.is_ok(), "disabling autocorking: {res:?}");
}

fn start_rfs(lab: &Lab, extra: &[&str]) -> (SteerRun, PinnedFlows) {
    let mut args = vec!["--mode", "rfs", "--xdp-mode", "skb", "--cpus", "0-1"];
    args.extend_from_slice(extra);
    let run = SteerRun::start(lab, &args).expect("starting steer run --mode rfs");
    let id = lab.run_id(&lab.rx_if).expect("the receiving veth exists");
    let flows = PinnedFlows::open_id(&id).expect("opening the pinned flow table");
    (run, flows)
}

/// Readers on both CPUs; each flow goes to the reader whose CPU is NOT the
/// one RSS would pick, so that only RFS can get its packets there.
fn steers_each_flow_to_its_reader(listen: Listen) {
    require_root();
    let (c0, c1) = two_cpus();
    let lab = Lab::new().expect("making the lab");
    one_segment_per_write(&lab);
    let (run, flows) = start_rfs(&lab, &[]);
    let conns = connect(&lab, listen, 5001, 6).expect("connecting");
    let reader_cpu: Vec<u32> = conns.iter().map(|c| if c.rss_cpu == c0 { c1 } else { c0 }).collect();
    let mut readers = Vec::new();
    for cpu in [c0, c1] {
        let mine: Vec<Arc<TcpStream>> = conns
            .iter()
            .zip(&reader_cpu)
            .filter(|(_, r)| **r == cpu)
            .map(|(c, _)| c.server.clone())
            .collect();
        if !mine.is_empty() {
            readers.push(Reader::start(&format!("rfs-reader-{cpu}"), cpu, mine));
        }
    }
    let senders = Senders::start(&conns, c0, 1, Duration::from_millis(1));
    // Warm-up: the first reads record the flows, the first pause moves them.
    for (c, cpu) in conns.iter().zip(&reader_cpu) {
        wait_for(
            &format!("flow {:?} steered to its reader's CPU {cpu}", c.key),
            Duration::from_secs(5),
            || entry(&flows, &c.key).is_some_and(|e| e.cpu == Some(*cpu)),
        );
    }
    let before: Vec<(u64, u64)> =
        conns.iter().map(|c| (entry(&flows, &c.key).map_or(0, |e| e.pkts), c.segs_in())).collect();
    let hits0 = counters(&flows).hits;
    std::thread::sleep(Duration::from_secs(3));
    let after: Vec<(u64, u64, FlowView)> = conns
        .iter()
        .map(|c| {
            let e = entry(&flows, &c.key).expect("flow still in the table");
            (e.pkts, c.segs_in(), e)
        })
        .collect();
    let c = counters(&flows);
    let sent = senders.stop();
    assert!(sent > 0, "the clients sent nothing");
    for (i, ((p0, s0), (p1, s1, e))) in before.iter().zip(&after).enumerate() {
        let (steered, segs) = (p1 - p0, s1 - s0);
        assert!(segs >= 500, "flow {i}: only {segs} segments received in 3 s");
        assert_eq!(
            e.cpu,
            Some(reader_cpu[i]),
            "flow {i}: steered to CPU {:?} but read on {}",
            e.cpu,
            reader_cpu[i]
        );
        assert_eq!(e.want_cpu, reader_cpu[i], "flow {i}: hook recorded CPU {}", e.want_cpu);
        let share = steered as f64 / segs as f64;
        eprintln!(
            "{listen:?} flow {i}: reader CPU {} (RSS would pick {}), {steered} of {segs} segments steered there ({:.1} %)",
            reader_cpu[i],
            conns[i].rss_cpu,
            share * 100.0
        );
        assert!(
            share >= 0.95,
            "flow {i}: only {:.1} % of its packets went to its reader's CPU",
            share * 100.0
        );
    }
    let hit_rate = (c.hits - hits0) as f64;
    eprintln!("{listen:?}: counters {c:?}, hits in window {hit_rate}");
    assert!(c.hook_events > 0 && c.inserts as usize >= conns.len(), "hook counters: {c:?}");
    drop(readers);
    let (ok, log) = run.stop().expect("stopping steer");
    assert!(ok, "steer run failed: {log}");
}

#[test]
fn rfs_steers_ipv4_flows_to_their_readers() {
    steers_each_flow_to_its_reader(Listen::V4);
}

#[test]
fn rfs_steers_ipv6_flows_to_their_readers() {
    steers_each_flow_to_its_reader(Listen::V6);
}

#[test]
fn rfs_steers_dual_stack_flows_to_their_readers() {
    steers_each_flow_to_its_reader(Listen::DualStack);
}

/// A reader moves CPU mid-stream, back and forth: the flow follows each time
/// within a bounded time, every move is counted, and the receiver queues
/// nothing out of order.
///
/// The sender sits on the second CPU, so that a move towards the first one
/// could let new packets (idle CPU) overtake old ones still queued behind the
/// sender: with `--migrate-idle-us 0` this showed as TCPOFOQueue growing.
#[test]
fn rfs_flow_follows_a_moving_reader_without_reordering() {
    require_root();
    let (c0, c1) = two_cpus();
    let lab = Lab::new().expect("making the lab");
    one_segment_per_write(&lab);
    let (run, flows) = start_rfs(&lab, &[]);
    let conns = connect(&lab, Listen::V4, 5002, 1).expect("connecting");
    let c = &conns[0];
    let reader = Reader::start("rfs-mover", c0, vec![c.server.clone()]);
    // Bursts of 100 back-to-back segments (the reader reads, and so asks for
    // the move, in the middle of one), then a 5 ms pause: moves wait for it.
    let _acks = SenderRps::apply(&lab.tx_ns, &lab.tx_if, c1);
    let senders = Senders::start(&conns, c1, 100, Duration::from_millis(5));
    wait_for("flow steered to the reader's first CPU", Duration::from_secs(5), || {
        entry(&flows, &c.key).is_some_and(|e| e.cpu == Some(c0))
    });
    std::thread::sleep(Duration::from_millis(300));
    let ext0 = tcp_ext(&lab.rx_ns);
    let k0 = counters(&flows);
    let flow_moves0 = entry(&flows, &c.key).map_or(0, |e| e.moves);
    let rounds = 6;
    let mut slowest = Duration::ZERO;
    for i in 0..rounds * 2 {
        let to = if i % 2 == 0 { c1 } else { c0 };
        reader.cpu.store(to as usize, Ordering::Relaxed);
        let took =
            wait_for(&format!("flow following its reader to CPU {to}"), Duration::from_secs(2), || {
                entry(&flows, &c.key).is_some_and(|e| e.cpu == Some(to))
            });
        slowest = slowest.max(took);
        std::thread::sleep(Duration::from_millis(150));
    }
    let ext1 = tcp_ext(&lab.rx_ns);
    let k = counters(&flows);
    let e = entry(&flows, &c.key).expect("flow in the table");
    senders.stop();
    eprintln!(
        "{} moves, slowest followed in {slowest:?}; moves {} -> {}, deferred {} -> {}, reader bytes {}",
        rounds * 2,
        k0.moves,
        k.moves,
        k0.deferred,
        k.deferred,
        reader.bytes.load(Ordering::Relaxed)
    );
    assert!(e.moves >= flow_moves0 + rounds * 2, "the flow's moves were not counted: {e:?}");
    assert!(k.moves >= k0.moves + rounds as u64 * 2, "global moves counter: {k0:?} -> {k:?}");
    // Whether a read lands inside a burst depends on the scheduler, so
    // `deferred` is only reported here; rfs_idle_gate_in_the_kernel proves the gate.
    for name in REORDER_COUNTERS {
        let (a, b) = (ext0.get(name).copied().unwrap_or(0), ext1.get(name).copied().unwrap_or(0));
        assert_eq!(a, b, "TcpExt {name} grew from {a} to {b} across the moves: packets were reordered");
    }
    drop(reader);
    let (ok, log) = run.stop().expect("stopping steer");
    assert!(ok, "steer run failed: {log}");
}

/// Closing connections deletes their entries; a table smaller than the
/// number of flows evicts old ones (LRU) and nothing fails.
#[test]
fn rfs_close_deletes_entries_and_lru_overflow_is_harmless() {
    require_root();
    let (c0, _) = two_cpus();
    let lab = Lab::new().expect("making the lab");
    let (run, flows) = start_rfs(&lab, &["--flow-entries", "16"]);
    let conns = connect(&lab, Listen::V4, 5003, 64).expect("connecting 64 flows");
    let reader = Reader::start("rfs-lru", c0, conns.iter().map(|c| c.server.clone()).collect());
    for c in &conns {
        (&*c.client).write_all(&[1u8; 4000]).expect("sending");
    }
    wait_for("all 64 x 4000 bytes read", Duration::from_secs(5), || {
        reader.bytes.load(Ordering::Relaxed) == 64 * 4000
    });
    let k = counters(&flows);
    let live = rfs::entries(&flows.flows).len();
    eprintln!(
        "64 flows into 16 entries: live {live}, counters {k:?}, evictions {}",
        k.evictions(live as u64)
    );
    assert!(live <= 16, "{live} entries in a 16-entry table");
    assert!(k.inserts >= 64, "every flow should have been inserted once: {k:?}");
    assert!(k.evictions(live as u64) >= 64 - 16, "LRU evictions not visible: {k:?}");
    // Still steering: a second round of data arrives in full.
    for c in &conns {
        (&*c.client).write_all(&[2u8; 4000]).expect("sending again");
    }
    wait_for("second round read", Duration::from_secs(5), || {
        reader.bytes.load(Ordering::Relaxed) == 2 * 64 * 4000
    });
    let live_keys: Vec<FlowKey> =
        conns.iter().map(|c| c.key).filter(|k| entry(&flows, k).is_some()).collect();
    assert!(!live_keys.is_empty(), "no flow of ours in the table after the second round");
    let removed0 = counters(&flows).removed;
    drop(reader);
    drop(conns);
    wait_for("entries of closed connections deleted", Duration::from_secs(5), || {
        live_keys.iter().all(|k| entry(&flows, k).is_none())
    });
    let k = counters(&flows);
    assert!(k.removed >= removed0 + live_keys.len() as u64, "closes not counted: {k:?}");
    let (ok, log) = run.stop().expect("stopping steer");
    assert!(ok, "steer run failed: {log}");
}

/// A table of two slots for eight flows read on both CPUs: flows collide
/// and share slots, the hook counts each wish it replaces (`collisions`, in
/// `steer flows` and `steer stats --json`), every flow's data arrives, and the
/// shared slots' moves (gated) queue nothing out of order.
#[test]
fn rfs_colliding_flows_share_slots_without_reordering_and_are_counted() {
    require_root();
    let (c0, c1) = two_cpus();
    let lab = Lab::new().expect("making the lab");
    one_segment_per_write(&lab);
    let (run, flows) = start_rfs(&lab, &["--flow-entries", "2"]);
    let conns = connect(&lab, Listen::V4, 5021, 8).expect("connecting");
    let ext0 = tcp_ext(&lab.rx_ns);
    let k0 = counters(&flows);
    let r0 = Reader::start("rfs-coll-a", c0, conns[..4].iter().map(|c| c.server.clone()).collect());
    let r1 = Reader::start("rfs-coll-b", c1, conns[4..].iter().map(|c| c.server.clone()).collect());
    // Bursts with pauses: the shared slots go idle now and then, so they do move.
    let _acks = SenderRps::apply(&lab.tx_ns, &lab.tx_if, c1);
    let senders = Senders::start(&conns, c1, 20, Duration::from_millis(20));
    std::thread::sleep(Duration::from_secs(2));
    let sent = senders.stop();
    wait_for("everything sent read", Duration::from_secs(5), || {
        r0.bytes.load(Ordering::Relaxed) + r1.bytes.load(Ordering::Relaxed) == sent
    });
    let (k, ext1) = (counters(&flows), tcp_ext(&lab.rx_ns));
    eprintln!("8 flows in 2 slots: {sent} bytes; counters {k:?}");
    let grew: Vec<(&String, u64)> = ext1
        .iter()
        .filter(|&(n, v)| ext0.get(n) != Some(v))
        .map(|(n, v)| (n, v - ext0.get(n).copied().unwrap_or(0)))
        .collect();
    eprintln!("TcpExt changes: {grew:?}");
    assert!(k.collisions > k0.collisions, "no collision counted with 8 flows in 2 slots: {k:?}");
    assert!(k.hits > k0.hits, "the shared slots steered nothing: {k:?}");
    for name in REORDER_COUNTERS {
        let (a, b) = (ext0.get(name).copied().unwrap_or(0), ext1.get(name).copied().unwrap_or(0));
        assert_eq!(a, b, "TcpExt {name} grew from {a} to {b}: a shared slot reordered packets");
    }
    let out = lab.steer(&["stats", "--iface", &lab.rx_if, "--json", "--once"]).output().expect("steer stats");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("\"collisions\""), "steer stats --json: {text}");
    drop((r0, r1));
    let (ok, log) = run.stop().expect("stopping steer");
    assert!(ok, "steer run failed: {log}");
}

/// `steer flows` shows the flow, its CPU and its reader (pid and thread name).
#[test]
fn steer_flows_shows_flow_cpu_and_reader() {
    require_root();
    let (c0, c1) = two_cpus();
    let lab = Lab::new().expect("making the lab");
    let (run, flows) = start_rfs(&lab, &[]);
    let conns = connect(&lab, Listen::V4, 5004, 2).expect("connecting");
    let _r0 = Reader::start("rfs-flows-a", c0, vec![conns[0].server.clone()]);
    let _r1 = Reader::start("rfs-flows-b", c1, vec![conns[1].server.clone()]);
    let senders = Senders::start(&conns, c0, 1, Duration::from_millis(2));
    for (c, cpu) in conns.iter().zip([c0, c1]) {
        wait_for("flow on its reader's CPU", Duration::from_secs(5), || {
            entry(&flows, &c.key).is_some_and(|e| e.cpu == Some(cpu))
        });
    }
    let out = lab.steer(&["flows", "--iface", &lab.rx_if, "--json"]).output().expect("running steer flows");
    assert!(out.status.success(), "steer flows: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("steer flows --json is JSON");
    let rows = v["flows"].as_array().expect("flows array");
    for (c, (cpu, comm)) in conns.iter().zip([(c0, "rfs-flows-a"), (c1, "rfs-flows-b")]) {
        let src = c.client.local_addr().expect("client address").to_string();
        let row =
            rows.iter().find(|r| r["src"] == src.as_str()).unwrap_or_else(|| panic!("no row for {src}: {v}"));
        assert_eq!(row["dst"], format!("{}:5004", lab.rx_ip).as_str(), "{row}");
        assert_eq!(row["cpu"], cpu, "{row}");
        assert_eq!(row["reader_cpu"], cpu, "{row}");
        assert_eq!(row["comm"], comm, "{row}");
        assert_eq!(row["pid"], std::process::id(), "{row}");
        assert!(row["packets"].as_u64().unwrap_or(0) > 0, "{row}");
    }
    assert!(v["counters"]["hits"].as_u64().unwrap_or(0) > 0, "{v}");
    let out =
        lab.steer(&["flows", "--iface", &lab.rx_if, "--top", "1"]).output().expect("running steer flows");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("(1 shown)") && text.contains("rfs-flows"), "{text}");
    senders.stop();
    let (ok, log) = run.stop().expect("stopping steer");
    assert!(ok, "steer run failed: {log}");
}

/// RFS options are checked before anything changes; `steer flows` on an RSS
/// run says what to do.
#[test]
fn rfs_bad_input_changes_nothing() {
    require_root();
    let lab = Lab::new().expect("making the lab");
    for (args, needle) in [
        (vec!["--mode", "rss", "--flow-entries", "64"], "--flow-entries 64"),
        (vec!["--mode", "rfs", "--flow-entries", "0"], "--flow-entries 0"),
        (vec!["--mode", "rfs", "--migrate-idle-us", "9000000"], "--migrate-idle-us 9000000"),
        (vec!["--mode", "rfs", "--udp-timeout-s", "0"], "--udp-timeout-s 0"),
        (vec!["--mode", "rss", "--udp-timeout-s", "5"], "--udp-timeout-s 5"),
    ] {
        let mut all = vec!["run", "--iface", lab.rx_if.as_str(), "--xdp-mode", "skb"];
        all.extend(args.iter().copied());
        let out = lab.steer(&all).output().expect("running steer");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(needle), "{args:?}: {err}");
        assert!(!lab.rx_has_xdp().expect("reading the XDP state of the link"), "{args:?} left XDP attached");
        assert!(!lab.pin_dir().exists(), "{args:?} left pins");
    }
    let run = SteerRun::start(&lab, &["--xdp-mode", "skb"]).expect("starting steer in rss mode");
    let out = lab.steer(&["flows", "--iface", &lab.rx_if]).output().expect("running steer flows");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--mode rfs"), "{err}");
    run.stop().expect("stopping steer");
}

/// The tracepoints fire for every socket on the host: reads on sockets whose
/// local address is not on the steered interface (loopback in the same
/// namespace, the clients' side in the other one) are counted and ignored.
#[test]
fn rfs_ignores_sockets_not_on_the_interface() {
    require_root();
    let (c0, _) = two_cpus();
    let lab = Lab::new().expect("making the lab");
    let (run, flows) = start_rfs(&lab, &[]);
    let k0 = counters(&flows);
    // Loopback inside the receiving namespace.
    let (lo_server, lo_client) = in_ns(&lab.rx_ns, || -> Result<(TcpStream, TcpStream)> {
        let l = TcpListener::bind("127.0.0.1:0")?;
        let c = TcpStream::connect(l.local_addr()?)?;
        Ok((l.accept()?.0, c))
    })
    .expect("entering the namespace")
    .expect("loopback connection");
    // A lab connection whose *client* side reads (data from server to client).
    let conns = connect(&lab, Listen::V4, 5006, 1).expect("connecting");
    let lo_reader = Reader::start("rfs-lo", c0, vec![Arc::new(lo_server.try_clone().expect("clone"))]);
    let client_reader = Reader::start("rfs-client", c0, vec![conns[0].client.clone()]);
    for _ in 0..50 {
        (&lo_client).write_all(&[7u8; 1000]).expect("loopback write");
        (&*conns[0].server).write_all(&[7u8; 1000]).expect("server write");
    }
    wait_for("both readers got their data", Duration::from_secs(5), || {
        lo_reader.bytes.load(Ordering::Relaxed) == 50_000
            && client_reader.bytes.load(Ordering::Relaxed) == 50_000
    });
    let k = counters(&flows);
    let live = rfs::entries(&flows.flows);
    assert!(k.hook_filtered > k0.hook_filtered, "reads on foreign sockets were not seen: {k:?}");
    assert_eq!(k.inserts, k0.inserts, "a foreign socket was recorded: {live:?}");
    assert!(live.is_empty(), "flow table should be empty: {live:?}");
    drop((lo_reader, client_reader));
    let (ok, log) = run.stop().expect("stopping steer");
    assert!(ok, "steer run failed: {log}");
}

/// An address added to the interface while steer runs is tracked within a
/// few monitor intervals.
#[test]
fn rfs_tracks_an_address_added_while_running() {
    require_root();
    let (c0, _) = two_cpus();
    let lab = Lab::new().expect("making the lab");
    let (run, flows) = start_rfs(&lab, &["--interval", "0.2"]);
    lab.rx().add_address(&lab.rx_if, "198.18.0.3".parse().expect("ip"), 24).expect("adding an address");
    std::thread::sleep(Duration::from_millis(600));
    let listener = in_ns(&lab.rx_ns, || TcpListener::bind("198.18.0.3:5007")).expect("ns").expect("bind");
    let client = in_ns(&lab.tx_ns, || TcpStream::connect("198.18.0.3:5007")).expect("ns").expect("connect");
    let (server, _) = listener.accept().expect("accept");
    let reader = Reader::start("rfs-newaddr", c0, vec![Arc::new(server)]);
    (&client).write_all(&[1u8; 3000]).expect("write");
    wait_for("data read", Duration::from_secs(5), || reader.bytes.load(Ordering::Relaxed) == 3000);
    let l = client.local_addr().expect("addr");
    let key = FlowKey::from_socket(
        IPPROTO_TCP,
        &bytes16("198.18.0.3".parse().expect("ip")),
        5007,
        &bytes16(l.ip()),
        l.port(),
    );
    wait_for("flow to the new address recorded", Duration::from_secs(2), || entry(&flows, &key).is_some());
    drop(reader);
    let (ok, log) = run.stop().expect("stopping steer");
    assert!(ok, "steer run failed: {log}");
}

// --- UDP ---------------------------------------------------------------------
//
// The kernel's RFS records connected UDP sockets only (their 4-tuple is the
// flow); steer does the same. Where a datagram was processed is read back
// from the kernel's UDP code, not from steer: SO_INCOMING_CPU of a connected
// socket is the CPU that ran its latest datagram's receive (the cpumap kthread
// or the CPU that passed it in place), and at the rates here each read finds
// the queue empty behind the datagram it took.

/// A UDP socket bound to `addr` with SO_REUSEPORT (a QUIC server shares its
/// port between the listener and one connected socket per client), connected
/// to `peer` when given. IPv6 sockets also take IPv4 (dual-stack).
fn udp_socket(addr: SocketAddr, peer: Option<SocketAddr>) -> std::io::Result<UdpSocket> {
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_port(true)?;
    if addr.is_ipv6() {
        s.set_only_v6(false)?;
    }
    s.bind(&addr.into())?;
    if let Some(p) = peer {
        s.connect(&p.into())?;
    }
    Ok(s.into())
}

/// `a` as an AF_INET6 socket sees an IPv4 peer: `[::ffff:a.b.c.d]:port`.
fn v4_mapped(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V4(v) => SocketAddr::V6(SocketAddrV6::new(v.ip().to_ipv6_mapped(), v.port(), 0, 0)),
        v6 => v6,
    }
}

/// One client of a QUIC-style server: its connected socket in the sending
/// namespace and the server's socket connected to it in the receiving one.
struct UdpFlow {
    server: Arc<UdpSocket>,
    client: Arc<UdpSocket>,
    key: FlowKey,
    rss_cpu: u32,
}

/// A QUIC-style server on `port` of kind `listen`: an unconnected listener,
/// and per client a socket on the same port connected to it. `per_cpu`
/// clients for each CPU RSS picks (client ports chosen so), so that readers
/// on the other CPU can only be reached through RFS.
fn quic_flows(lab: &Lab, listen: Listen, port: u16, per_cpu: usize) -> Result<(UdpSocket, Vec<UdpFlow>)> {
    let (rx4, rx6): (IpAddr, IpAddr) = (lab.rx_ip.parse()?, lab.rx_ip6.parse()?);
    let (tx4, tx6): (IpAddr, IpAddr) = (lab.tx_ip.parse()?, lab.tx_ip6.parse()?);
    let (bind, dst, client_ip) = match listen {
        Listen::V4 => (SocketAddr::new(rx4, port), SocketAddr::new(rx4, port), tx4),
        Listen::V6 => (SocketAddr::new(rx6, port), SocketAddr::new(rx6, port), tx6),
        Listen::DualStack => ("[::]:0".parse::<SocketAddr>()?, SocketAddr::new(rx4, port), tx4),
    };
    let bind = SocketAddr::new(bind.ip(), port);
    let listener = in_ns(&lab.rx_ns, move || udp_socket(bind, None))??;
    let rss = HashSettings::new(HashArg::Fast, None, 0, false, 256, vec![0, 1])?;
    let mut per = [0usize; 2];
    let mut flows = Vec::new();
    for cport in 41000..42000u16 {
        if flows.len() == 2 * per_cpu {
            break;
        }
        let t = Tuple::new(client_ip, cport, dst.ip(), port, IPPROTO_UDP).context("tuple")?;
        let rss_cpu = rss.choose(&t).cpu;
        if per[rss_cpu as usize] == per_cpu {
            continue;
        }
        per[rss_cpu as usize] += 1;
        let caddr = SocketAddr::new(client_ip, cport);
        let client = in_ns(&lab.tx_ns, move || udp_socket(caddr, Some(dst)))??;
        let peer = if matches!(listen, Listen::DualStack) { v4_mapped(caddr) } else { caddr };
        let server = in_ns(&lab.rx_ns, move || udp_socket(bind, Some(peer)))??;
        let local = server.local_addr()?;
        let key = FlowKey::from_socket(IPPROTO_UDP, &bytes16(local.ip()), port, &bytes16(client_ip), cport);
        flows.push(UdpFlow { server: Arc::new(server), client: Arc::new(client), key, rss_cpu });
    }
    if flows.len() != 2 * per_cpu {
        bail!("no client ports that RSS splits {per_cpu} and {per_cpu} over CPUs 0 and 1");
    }
    Ok((listener, flows))
}

/// A thread reading UDP sockets, pinned to `cpu`. Per socket: datagrams read,
/// and how many of them SO_INCOMING_CPU says were processed on `cpu`.
struct UdpReader {
    stop: Arc<AtomicBool>,
    reads: Arc<Vec<AtomicU64>>,
    on_cpu: Arc<Vec<AtomicU64>>,
    handle: Option<JoinHandle<()>>,
}

impl UdpReader {
    fn start(name: &str, cpu: u32, socks: Vec<Arc<UdpSocket>>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let reads: Arc<Vec<AtomicU64>> = Arc::new(socks.iter().map(|_| AtomicU64::new(0)).collect());
        let on_cpu: Arc<Vec<AtomicU64>> = Arc::new(socks.iter().map(|_| AtomicU64::new(0)).collect());
        let (s, r, o) = (stop.clone(), reads.clone(), on_cpu.clone());
        let handle = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                pin_to_cpu(cpu as usize);
                let mut buf = [0u8; 2048];
                for sk in &socks {
                    let _ = sk.set_nonblocking(true);
                }
                while !s.load(Ordering::Relaxed) {
                    let mut fds: Vec<libc::pollfd> = socks
                        .iter()
                        .map(|c| libc::pollfd { fd: c.as_raw_fd(), events: libc::POLLIN, revents: 0 })
                        .collect();
                    // SAFETY: a valid array of pollfd.
                    unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 20) };
                    for (i, sk) in socks.iter().enumerate() {
                        while sk.recv(&mut buf).is_ok() {
                            r[i].fetch_add(1, Ordering::Relaxed);
                            if incoming_cpu(sk) == Some(cpu) {
                                o[i].fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                }
            })
            .expect("spawning a reader");
        Self { stop, reads, on_cpu, handle: Some(handle) }
    }

    /// (datagrams read, of which processed on the reader's CPU) of socket `i`.
    fn counts(&self, i: usize) -> (u64, u64) {
        (self.reads[i].load(Ordering::Relaxed), self.on_cpu[i].load(Ordering::Relaxed))
    }

    fn total(&self) -> u64 {
        self.reads.iter().map(|r| r.load(Ordering::Relaxed)).sum()
    }
}

impl Drop for UdpReader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// SO_INCOMING_CPU: the CPU that processed the socket's latest datagram.
fn incoming_cpu(s: &UdpSocket) -> Option<u32> {
    let mut v: libc::c_int = -1;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt into an int of the size we pass.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_INCOMING_CPU,
            &mut v as *mut libc::c_int as *mut libc::c_void,
            &mut len,
        )
    };
    (rc == 0 && v >= 0).then_some(v as u32)
}

/// Clients each sending a 200-byte datagram every `gap`, pinned to `cpu`
/// (on veth the sender's CPU is where the frame enters the receive path).
struct UdpSenders {
    stop: Arc<AtomicBool>,
    handles: Vec<JoinHandle<u64>>,
}

impl UdpSenders {
    fn start(clients: Vec<Arc<UdpSocket>>, cpu: u32, gap: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let handles = clients
            .into_iter()
            .map(|c| {
                let s = stop.clone();
                std::thread::spawn(move || {
                    pin_to_cpu(cpu as usize);
                    let mut sent = 0;
                    while !s.load(Ordering::Relaxed) {
                        if c.send(&[0x5au8; 200]).is_ok() {
                            sent += 1;
                        }
                        std::thread::sleep(gap);
                    }
                    sent
                })
            })
            .collect();
        Self { stop, handles }
    }

    /// Datagrams each client sent.
    fn stop(mut self) -> Vec<u64> {
        self.stop.store(true, Ordering::Relaxed);
        self.handles.drain(..).map(|h| h.join().unwrap_or(0)).collect()
    }
}

impl Drop for UdpSenders {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

/// Readers on both CPUs, one connected UDP socket per client; each flow is
/// read on the CPU RSS does NOT pick for it, so only RFS can put its
/// datagrams there. Counted from the first datagram on (the ones before the
/// first read and the first pause go by RSS), per flow, by SO_INCOMING_CPU.
fn udp_steers_each_flow_to_its_reader(listen: Listen, port: u16) {
    require_root();
    let (c0, c1) = two_cpus();
    let lab = Lab::new().expect("making the lab");
    let (run, flows) = start_rfs(&lab, &[]);
    let k0 = flows.counters().expect("counters");
    let (_listener, conns) = quic_flows(&lab, listen, port, 2).expect("connecting");
    let reader_cpu: Vec<u32> = conns.iter().map(|c| if c.rss_cpu == c0 { c1 } else { c0 }).collect();
    // (reader, index in it) of each flow.
    let mut at = vec![(0usize, 0usize); conns.len()];
    let mut readers = Vec::new();
    for cpu in [c0, c1] {
        let mine: Vec<usize> = (0..conns.len()).filter(|i| reader_cpu[*i] == cpu).collect();
        for (j, i) in mine.iter().enumerate() {
            at[*i] = (readers.len(), j);
        }
        let socks = mine.iter().map(|i| conns[*i].server.clone()).collect();
        readers.push(UdpReader::start(&format!("udp-reader-{cpu}"), cpu, socks));
    }
    let senders =
        UdpSenders::start(conns.iter().map(|c| c.client.clone()).collect(), c0, Duration::from_millis(1));
    for (c, cpu) in conns.iter().zip(&reader_cpu) {
        wait_for(
            &format!("UDP flow {:?} steered to its reader's CPU {cpu}", c.key),
            Duration::from_secs(5),
            || entry(&flows, &c.key).is_some_and(|e| e.cpu == Some(*cpu)),
        );
    }
    std::thread::sleep(Duration::from_secs(3));
    let sent = senders.stop();
    let counts = |i: usize| readers[at[i].0].counts(at[i].1);
    wait_for("every datagram sent was read", Duration::from_secs(3), || {
        (0..conns.len()).all(|i| counts(i).0 == sent[i])
    });
    let k = flows.counters().expect("counters");
    for (i, c) in conns.iter().enumerate() {
        let (read, on_cpu) = counts(i);
        let e = entry(&flows, &c.key).expect("flow still in the table");
        let share = on_cpu as f64 / read as f64;
        eprintln!(
            "{listen:?} UDP flow {i}: reader CPU {} (RSS would pick {}): {on_cpu} of {read} datagrams \
             processed there ({:.1} %); steer's entry: cpu {:?} reader {} packets {} moves {}",
            reader_cpu[i],
            c.rss_cpu,
            share * 100.0,
            e.cpu,
            e.want_cpu,
            e.pkts,
            e.moves
        );
        assert!(read >= 1000, "flow {i}: only {read} datagrams in 3 s");
        assert_eq!((e.cpu, e.want_cpu), (Some(reader_cpu[i]), reader_cpu[i]), "flow {i}: {e:?}");
        assert!(
            share >= 0.9,
            "flow {i}: only {:.1} % of its datagrams were processed on its reader's CPU",
            share * 100.0
        );
        assert!(
            e.pkts as f64 >= 0.9 * read as f64,
            "flow {i}: steer counted {} hits for {read} datagrams",
            e.pkts
        );
    }
    assert!(
        k.hook_events > k0.hook_events && k.inserts >= k0.inserts + conns.len() as u64,
        "hook counters: {k0:?} -> {k:?}"
    );
    // `steer flows` names the protocol.
    let out = lab.steer(&["flows", "--iface", &lab.rx_if, "--json"]).output().expect("running steer flows");
    assert!(out.status.success(), "steer flows: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("steer flows --json is JSON");
    for (c, cpu) in conns.iter().zip(&reader_cpu) {
        let src = c.client.local_addr().expect("client address");
        let src = src.to_string();
        let row = v["flows"]
            .as_array()
            .and_then(|rows| rows.iter().find(|r| r["src"] == src.as_str()))
            .unwrap_or_else(|| panic!("no row for {src}: {v}"));
        assert_eq!((row["proto"].as_str(), row["cpu"].as_u64()), (Some("udp"), Some(*cpu as u64)), "{row}");
    }
    let out = lab.steer(&["flows", "--iface", &lab.rx_if]).output().expect("running steer flows");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.lines().any(|l| l.starts_with("udp ") && l.contains(&port.to_string())), "{text}");
    drop(readers);
    let (ok, log) = run.stop().expect("stopping steer");
    assert!(ok, "steer run failed: {log}");
}

#[test]
fn rfs_steers_connected_udp_flows_to_their_readers() {
    udp_steers_each_flow_to_its_reader(Listen::V4, 5101);
}

#[test]
fn rfs_steers_connected_udp_ipv6_flows_to_their_readers() {
    udp_steers_each_flow_to_its_reader(Listen::V6, 5102);
}

#[test]
fn rfs_steers_connected_udp_dual_stack_flows_to_their_readers() {
    udp_steers_each_flow_to_its_reader(Listen::DualStack, 5103);
}

/// Unconnected UDP sockets (a DNS-style server, on the interface's address and
/// on the wildcard) read datagrams of many peers: like the kernel's RFS, steer
/// records none of them and counts the reads; every datagram still arrives (by
/// RSS). Once one of them connects, its reads are recorded as its flow.
#[test]
fn rfs_counts_unconnected_udp_reads_and_records_none() {
    require_root();
    let (_, c1) = two_cpus();
    let lab = Lab::new().expect("making the lab");
    let (run, flows) = start_rfs(&lab, &[]);
    let rx_ip: IpAddr = lab.rx_ip.parse().expect("ip");
    let servers: Vec<Arc<UdpSocket>> = [SocketAddr::new(rx_ip, 5301), "0.0.0.0:5302".parse().expect("addr")]
        .into_iter()
        .map(|a| Arc::new(in_ns(&lab.rx_ns, move || udp_socket(a, None)).expect("ns").expect("binding")))
        .collect();
    let reader = UdpReader::start("udp-unconnected", c1, servers.clone());
    let clients: Vec<UdpSocket> = (0..8)
        .map(|_| in_ns(&lab.tx_ns, || UdpSocket::bind("198.18.0.1:0")).expect("ns").expect("binding"))
        .collect();
    let snmp0 = steer_tests::snmp(&lab.rx_ns).expect("snmp");
    let k0 = flows.counters().expect("counters");
    const PER: u64 = 50;
    for _ in 0..PER {
        for c in &clients {
            for port in [5301, 5302] {
                c.send_to(&[1u8; 100], SocketAddr::new(rx_ip, port)).expect("sending");
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let sent = PER * clients.len() as u64 * 2;
    wait_for("every datagram read", Duration::from_secs(5), || reader.total() == sent);
    let k = flows.counters().expect("counters");
    let snmp1 = steer_tests::snmp(&lab.rx_ns).expect("snmp");
    let ours: Vec<(FlowKey, FlowEntry)> = rfs::entries(&flows.flows)
        .into_iter()
        .filter(|(key, _)| key.is_udp() && [5301, 5302].contains(&key.dport()))
        .collect();
    eprintln!(
        "unconnected: {sent} datagrams read; hook_unconnected +{}, rfs misses +{}, entries {ours:?}",
        k.hook_unconnected - k0.hook_unconnected,
        k.misses - k0.misses
    );
    assert!(ours.is_empty(), "unconnected sockets were recorded: {ours:?}");
    assert!(k.hook_unconnected >= k0.hook_unconnected + sent, "reads not counted: {k0:?} -> {k:?}");
    assert!(k.misses >= k0.misses + sent, "the datagrams were not looked up (and missed): {k0:?} -> {k:?}");
    for f in ["Udp.InErrors", "Udp.RcvbufErrors", "Udp.NoPorts"] {
        assert_eq!(snmp0.get(f), snmp1.get(f), "{f} changed: datagrams were dropped");
    }
    // The socket on the interface's address connects to one client: now it is a flow.
    let peer = clients[0].local_addr().expect("client address");
    servers[0].connect(peer).expect("connecting the server socket");
    let key = FlowKey::from_socket(IPPROTO_UDP, &bytes16(rx_ip), 5301, &bytes16(peer.ip()), peer.port());
    for _ in 0..5 {
        clients[0].send_to(&[2u8; 100], SocketAddr::new(rx_ip, 5301)).expect("sending");
        std::thread::sleep(Duration::from_millis(2));
    }
    wait_for("the connected socket's flow recorded", Duration::from_secs(2), || {
        entry(&flows, &key).is_some_and(|e| e.want_cpu == c1)
    });
    drop(reader);
    let (ok, log) = run.stop().expect("stopping steer");
    assert!(ok, "steer run failed: {log}");
}

/// UDP has no close: an entry goes after `--udp-timeout-s` without a read or
/// a packet (counted as `expired`, not as an eviction); a flow that keeps
/// going stays, and so does an idle TCP connection (it leaves on close).
#[test]
fn rfs_udp_entries_age_out() {
    require_root();
    let (c0, _) = two_cpus();
    let lab = Lab::new().expect("making the lab");
    let (run, flows) = start_rfs(&lab, &["--udp-timeout-s", "1", "--interval", "0.2"]);
    let k0 = flows.counters().expect("counters");
    let (_listener, conns) = quic_flows(&lab, Listen::V4, 5311, 1).expect("connecting");
    let (quiet, busy) = (&conns[0], &conns[1]);
    let reader = UdpReader::start("udp-ageing", c0, conns.iter().map(|c| c.server.clone()).collect());
    let tcp = connect(&lab, Listen::V4, 5312, 1).expect("connecting TCP");
    let tcp_reader = Reader::start("tcp-ageing", c0, vec![tcp[0].server.clone()]);
    (&*tcp[0].client).write_all(&[1u8; 3000]).expect("TCP write");
    // The busy flow: a datagram every 200 ms, well inside the timeout.
    let senders = UdpSenders::start(vec![busy.client.clone()], c0, Duration::from_millis(200));
    for _ in 0..5 {
        quiet.client.send(&[3u8; 200]).expect("sending");
        std::thread::sleep(Duration::from_millis(2));
    }
    wait_for("the quiet flow's datagrams read", Duration::from_secs(2), || reader.counts(0).0 == 5);
    let last_read = Instant::now();
    for key in [quiet.key, busy.key, tcp[0].key] {
        wait_for(&format!("{key:?} recorded"), Duration::from_secs(2), || entry(&flows, &key).is_some());
    }
    wait_for("the quiet UDP entry expired", Duration::from_secs(5), || entry(&flows, &quiet.key).is_none());
    let gone_after = last_read.elapsed();
    let k = flows.counters().expect("counters");
    let live = rfs::entries(&flows.flows).len() as u64;
    eprintln!("quiet UDP entry gone {gone_after:?} after its last read; counters {k:?}");
    assert!(gone_after >= Duration::from_secs(1), "expired after {gone_after:?}, before the 1 s timeout");
    assert!(entry(&flows, &busy.key).is_some(), "a UDP flow with a datagram every 200 ms expired");
    assert!(entry(&flows, &tcp[0].key).is_some(), "an idle TCP entry expired");
    assert!(k.expired > k0.expired, "expiry not counted: {k0:?} -> {k:?}");
    assert_eq!(k.evictions(live), 0, "an expiry was counted as an eviction: {k:?}, {live} live");
    let out = lab.steer(&["flows", "--iface", &lab.rx_if, "--json"]).output().expect("running steer flows");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("steer flows --json is JSON");
    assert!(v["counters"]["expired"].as_u64().unwrap_or(0) >= 1, "{v}");
    // The busy flow stops: it goes too.
    senders.stop();
    wait_for("the busy UDP entry expired once idle", Duration::from_secs(5), || {
        entry(&flows, &busy.key).is_none()
    });
    drop((reader, tcp_reader));
    let (ok, log) = run.stop().expect("stopping steer");
    assert!(ok, "steer run failed: {log}");
}

// --- In the kernel, through BPF_PROG_TEST_RUN --------------------------------

/// A peer that resets its connections before the application reads them:
/// the reads come after the close, and must not leave entries behind.
#[test]
fn rfs_reads_after_a_reset_leave_no_entries() {
    require_root();
    let lab = Lab::new().expect("making the lab");
    let (run, flows) = start_rfs(&lab, &[]);
    let k0 = counters(&flows);
    const N: usize = 200;
    let rx_ip: IpAddr = lab.rx_ip.parse().expect("ip");
    let listener =
        in_ns(&lab.rx_ns, move || TcpListener::bind((rx_ip, 5011))).expect("ns").expect("listening");
    let addr = SocketAddr::new(rx_ip, 5011);
    let accepted: Vec<TcpStream> = {
        // Accepted while the clients connect: more than the listen backlog.
        let acceptor = std::thread::spawn(move || {
            (0..N).map(|_| listener.accept().expect("accepting").0).collect::<Vec<_>>()
        });
        let clients = in_ns(&lab.tx_ns, move || -> Vec<TcpStream> {
            (0..N).filter_map(|_| TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()).collect()
        })
        .expect("ns");
        assert_eq!(clients.len(), N, "connecting");
        let accepted = acceptor.join().expect("accepting thread");
        for mut c in clients {
            c.write_all(b"request").expect("sending");
            // SO_LINGER 0: close sends a reset.
            let linger = libc::linger { l_onoff: 1, l_linger: 0 };
            // SAFETY: a valid socket and a linger struct of the right size.
            let rc = unsafe {
                libc::setsockopt(
                    c.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_LINGER,
                    &linger as *const libc::linger as *const libc::c_void,
                    std::mem::size_of::<libc::linger>() as libc::socklen_t,
                )
            };
            assert_eq!(rc, 0, "SO_LINGER");
        }
        accepted
    };
    // The resets arrive; only then does the application read.
    std::thread::sleep(Duration::from_millis(300));
    for mut s in accepted {
        let mut buf = [0u8; 64];
        let _ = s.read(&mut buf);
        let _ = s.read(&mut buf);
    }
    std::thread::sleep(Duration::from_millis(300));
    let k = counters(&flows);
    let left = rfs::entries(&flows.flows).into_iter().filter(|(key, _)| key.dport() == 5011).count();
    println!(
        "reset connections: {N}, entries left {left}, reads on closed sockets {}",
        k.hook_closed - k0.hook_closed
    );
    assert_eq!(left, 0, "entries of reset connections stayed in the table");
    assert!(k.hook_closed > k0.hook_closed, "no read after a close was seen: the test proves nothing");
    let (ok, log) = run.stop().expect("stopping steer");
    assert!(ok, "steer run failed: {log}");
}

// --- Network namespaces ------------------------------------------------------
//
// The tracepoints fire for the sockets of every namespace, and namespaces
// reuse addresses: every lab of these tests has the same ones, as pods do.

/// A TCP connection in `lab` from the sending side's `cport` to the receiving
/// side's `port`: fixed ports, so that two labs make the very same 4-tuple.
/// (server, client, flow key).
fn tcp_fixed(lab: &Lab, port: u16, cport: u16) -> Result<(Arc<TcpStream>, Arc<TcpStream>, FlowKey)> {
    let srv = SocketAddr::new(lab.rx_ip.parse()?, port);
    let cli = SocketAddr::new(lab.tx_ip.parse()?, cport);
    let listener = in_ns(&lab.rx_ns, move || TcpListener::bind(srv))??;
    let client = in_ns(&lab.tx_ns, move || -> std::io::Result<TcpStream> {
        let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
        s.bind(&cli.into())?;
        s.connect_timeout(&srv.into(), Duration::from_secs(5))?;
        Ok(s.into())
    })??;
    let (server, peer) = listener.accept()?;
    if peer != cli {
        bail!("accepted {peer}, expected {cli}");
    }
    let key = FlowKey::from_socket(IPPROTO_TCP, &bytes16(srv.ip()), port, &bytes16(cli.ip()), cport);
    Ok((Arc::new(server), Arc::new(client), key))
}

/// A connected UDP socket pair in `lab`, ports fixed as in [`tcp_fixed`].
fn udp_fixed(lab: &Lab, port: u16, cport: u16) -> Result<(Arc<UdpSocket>, Arc<UdpSocket>, FlowKey)> {
    let srv = SocketAddr::new(lab.rx_ip.parse()?, port);
    let cli = SocketAddr::new(lab.tx_ip.parse()?, cport);
    let server = in_ns(&lab.rx_ns, move || udp_socket(srv, Some(cli)))??;
    let client = in_ns(&lab.tx_ns, move || udp_socket(cli, Some(srv)))??;
    let key = FlowKey::from_socket(IPPROTO_UDP, &bytes16(srv.ip()), port, &bytes16(cli.ip()), cport);
    Ok((Arc::new(server), Arc::new(client), key))
}

/// Closes `s` with a reset (SO_LINGER 0): its state goes to TCP_CLOSE within
/// the close call, so the hook has seen the close when this returns.
fn close_now(s: Arc<TcpStream>) {
    let s = Arc::into_inner(s).expect("the last reference to the socket");
    socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO)).expect("SO_LINGER 0");
    drop(s);
}

fn comm(e: &FlowEntry) -> String {
    let n = e.comm.iter().position(|&b| b == 0).unwrap_or(e.comm.len());
    String::from_utf8_lossy(&e.comm[..n]).into_owned()
}

/// A lab's two flows: `writes` TCP writes of 1000 bytes and
/// as many datagrams, each waited for until read.
fn lab_traffic(tcp: &TcpStream, tr: &Reader, udp: &UdpSocket, ur: &UdpReader, writes: u64) {
    let (b0, d0) = (tr.bytes.load(Ordering::Relaxed), ur.total());
    for _ in 0..writes {
        (&*tcp).write_all(&[3u8; 1000]).expect("TCP write");
        udp.send(&[4u8; 200]).expect("UDP send");
        std::thread::sleep(Duration::from_millis(1));
    }
    wait_for("every write read", Duration::from_secs(5), || {
        tr.bytes.load(Ordering::Relaxed) == b0 + writes * 1000 && ur.total() == d0 + writes
    });
}

/// Two labs with the same addresses, steer on lab A only. Lab B's TCP and
/// connected UDP readers, of exactly A's 4-tuples, are counted
/// (`hook_other_netns`) and never recorded, moved or closed in A's table;
/// A's own readers of the same tuples are recorded as usual.
#[test]
fn rfs_records_only_sockets_of_the_interfaces_namespace() {
    require_root();
    let (c0, c1) = two_cpus();
    let a = Lab::new().expect("making lab A");
    let b = Lab::new().expect("making lab B");
    assert_eq!((a.rx_ip, a.tx_ip), (b.rx_ip, b.tx_ip), "the two labs must share their addresses");
    assert_ne!(a.run_id(&a.rx_if).expect("A").netns, b.run_id(&b.rx_if).expect("B").netns);
    let (run, flows) = start_rfs(&a, &[]);
    let k0 = counters(&flows);

    // Lab B alone: reads on c1.
    let (b_srv, b_cli, tcp_key) = tcp_fixed(&b, 5030, 41030).expect("lab B TCP");
    let (b_usrv, b_ucli, udp_key) = udp_fixed(&b, 5031, 41031).expect("lab B UDP");
    let b_tr = Reader::start("rfs-nsb-tcp", c1, vec![b_srv.clone()]);
    let b_ur = UdpReader::start("rfs-nsb-udp", c1, vec![b_usrv.clone()]);
    lab_traffic(&b_cli, &b_tr, &b_ucli, &b_ur, 50);
    let k = counters(&flows);
    let live = rfs::entries(&flows.flows);
    eprintln!(
        "lab B only: hook_other_netns +{}, hook_events +{}, inserts +{}, entries {}",
        k.hook_other_netns - k0.hook_other_netns,
        k.hook_events - k0.hook_events,
        k.inserts - k0.inserts,
        live.len()
    );
    let readers: Vec<String> = live.iter().map(|(_, e)| comm(e)).collect();
    assert!(live.is_empty(), "{} foreign sockets recorded in lab A's table, read by {readers:?}", live.len());
    assert_eq!(
        (k.hook_events, k.inserts),
        (k0.hook_events, k0.inserts),
        "lab B's reads were recorded: {k:?}"
    );
    // 50 UDP reads, and TCP reads and state changes.
    assert!(k.hook_other_netns > k0.hook_other_netns + 50, "lab B's reads were not counted: {k0:?} -> {k:?}");

    // Lab A's own readers of the same 4-tuples, on c0; then lab B reads again, last.
    let (a_srv, a_cli, a_tcp_key) = tcp_fixed(&a, 5030, 41030).expect("lab A TCP");
    let (a_usrv, a_ucli, a_udp_key) = udp_fixed(&a, 5031, 41031).expect("lab A UDP");
    assert_eq!((a_tcp_key, a_udp_key), (tcp_key, udp_key), "the labs' flows must be the same 4-tuples");
    let a_tr = Reader::start("rfs-nsa-tcp", c0, vec![a_srv.clone()]);
    let a_ur = UdpReader::start("rfs-nsa-udp", c0, vec![a_usrv.clone()]);
    let k1 = counters(&flows);
    lab_traffic(&a_cli, &a_tr, &a_ucli, &a_ur, 50);
    let k2 = counters(&flows);
    lab_traffic(&b_cli, &b_tr, &b_ucli, &b_ur, 50);
    let k3 = counters(&flows);
    eprintln!(
        "lab A: hook_events +{}, hook_other_netns +{}; lab B again: hook_events +{}, hook_other_netns +{}",
        k2.hook_events - k1.hook_events,
        k2.hook_other_netns - k1.hook_other_netns,
        k3.hook_events - k2.hook_events,
        k3.hook_other_netns - k2.hook_other_netns
    );
    assert_eq!(k3.hook_events, k2.hook_events, "lab B's reads were recorded: {k3:?}");
    for (key, name) in [(tcp_key, "rfs-nsa-tcp"), (udp_key, "rfs-nsa-udp")] {
        let e = entry(&flows, &key).unwrap_or_else(|| panic!("lab A's reader {name} was not recorded"));
        assert_eq!(
            (e.want_cpu, comm(&e.entry).as_str()),
            (c0, name),
            "lab B's reader took lab A's entry: {e:?}"
        );
    }
    assert_eq!(rfs::entries(&flows.flows).len(), 2, "lab A's table holds lab A's two flows only");

    // Lab B's connection closes: lab A's entry of the same 4-tuple stays.
    drop(b_tr);
    let (other0, removed0) = (counters(&flows).hook_other_netns, counters(&flows).removed);
    close_now(b_srv);
    let k = counters(&flows);
    assert!(entry(&flows, &tcp_key).is_some(), "lab B's close removed lab A's entry: {k:?}");
    assert_eq!(k.removed, removed0, "lab B's close was counted as lab A's: {k:?}");
    assert!(k.hook_other_netns > other0, "lab B's close was not seen: {k:?}");
    // Lab A's own close still removes it.
    drop(a_tr);
    close_now(a_srv);
    assert!(entry(&flows, &tcp_key).is_none(), "lab A's close did not remove its entry");
    assert_eq!(counters(&flows).removed, removed0 + 1);
    drop((b_ur, a_ur, b_cli, a_cli));
    let (ok, log) = run.stop().expect("stopping steer");
    assert!(ok, "steer run failed: {log}");
}

const XDP_REDIRECT: u32 = 4;
const MAC_A: [u8; 6] = [2, 0, 0, 0, 0, 1];
const MAC_B: [u8; 6] = [2, 0, 0, 0, 0, 2];

fn load_rfs(cpus: Vec<u32>, rfs: Option<RfsSettings>) -> (Ebpf, HashSettings) {
    let s = HashSettings::new(HashArg::Fast, None, 0, false, 256, cpus).expect("settings").with_rfs(rfs);
    (loader::load(&s, 256).expect("loading steer (verifier)"), s)
}

/// Puts `key` in the table read on `cpu`, its slot steering there when `steered`
/// (else still on RSS, as the hook leaves a new flow). Returns (slot, flow hash).
fn set_flow(ebpf: &mut Ebpf, key: &FlowKey, cpu: u32, steered: bool) -> (u32, u32) {
    rfs::insert_flow(ebpf, key, cpu, steered).expect("putting a flow in the table");
    rfs::slot_hash(ebpf).expect("slot hash").slot(key).expect("a slot")
}

fn get_flow(ebpf: &Ebpf, key: &FlowKey) -> Option<FlowView> {
    rfs::view(ebpf, key).expect("reading the flow table")
}

fn slot_state(ebpf: &Ebpf, slot: u32) -> FlowSlot {
    rfs::get_slot(ebpf, slot).expect("reading a slot").1
}

/// The hook's wish for `slot` (flow hash `h` read on `cpu`) over the slot state `st`.
fn set_slot(ebpf: &mut Ebpf, slot: u32, h: u32, cpu: u32, st: FlowSlot) {
    rfs::set_slot(ebpf, slot, steer_common::flow::want(h, cpu), st).expect("writing a slot");
}

fn rfs_totals(ebpf: &Ebpf) -> RfsCounters {
    let m: PerCpuArray<_, RfsCounters> =
        PerCpuArray::try_from(ebpf.map(steer_common::names::map::RFS_STATS).expect("RFS_STATS map"))
            .expect("per-CPU array");
    rfs::counters(&m).expect("reading RFS counters")
}

fn diff(a: &RfsCounters, b: &RfsCounters) -> RfsCounters {
    RfsCounters {
        hits: a.hits - b.hits,
        misses: a.misses - b.misses,
        moves: a.moves - b.moves,
        deferred: a.deferred - b.deferred,
        not_steerable: a.not_steerable - b.not_steerable,
        ..Default::default()
    }
}

/// Runs `frame` once: verdict, the one CPU it was redirected to, RFS counter delta.
/// A frame steered to the CPU the test run ran on is passed in place (the
/// local fast path) unless its flow has been in another CPU's queue (then it
/// goes through this CPU's own): checked here, and reported as XDP_REDIRECT ("steered").
fn step(ebpf: &mut Ebpf, frame: &[u8]) -> (u32, Option<u32>, RfsCounters) {
    let (s0, r0) = (loader::snapshot(ebpf).expect("snapshot"), rfs_totals(ebpf));
    let prog = loader::program(ebpf, STEER_PROG).expect("steer_xdp");
    let out = testrun::run(prog.fd().expect("loaded"), frame, 1).expect("BPF_PROG_TEST_RUN");
    let d = loader::snapshot(ebpf).expect("snapshot").since(&s0);
    let cpus: Vec<u32> =
        d.steered_in.iter().enumerate().filter(|(_, n)| **n > 0).map(|(c, _)| c as u32).collect();
    let cpu = (cpus.len() == 1).then(|| cpus[0]);
    let ran_on = d.per_cpu.iter().position(|c| c.seen > 0).map(|c| c as u32);
    let verdict = if cpu.is_some() && cpu == ran_on {
        let local = d.total().local;
        assert!(
            matches!((out.retval, local), (2, 1) | (XDP_REDIRECT, 0)),
            "steered to this CPU: in place (local) or through its own queue: {} local {local}",
            out.retval
        );
        XDP_REDIRECT
    } else {
        assert_eq!(d.total().local, 0, "steered elsewhere: not local");
        out.retval
    };
    (verdict, cpu, diff(&rfs_totals(ebpf), &r0))
}

fn v4_flow() -> (Vec<u8>, Tuple) {
    let (a, b) = ("198.18.0.1".parse().expect("ip"), "198.18.0.2".parse().expect("ip"));
    let frame = Frame::eth(MAC_B, MAC_A).ipv4(a, b).tcp(40000, 80).payload(10).build();
    (frame, Tuple::new(IpAddr::V4(a), 40000, IpAddr::V4(b), 80, IPPROTO_TCP).expect("tuple"))
}

/// The XDP side of RFS, one step at a time on a crafted frame: miss, a new
/// flow held on RSS until idle, a hit, a move held back while the flow is
/// busy and done once it is idle, a reader CPU without a queue, IPv6, UDP.
#[test]
fn rfs_idle_gate_in_the_kernel() {
    require_root();
    let (c0, c1) = two_cpus();
    let (mut ebpf, s) = load_rfs(vec![c0, c1], Some(RfsSettings::new(1024, 1_000_000).expect("settings")));
    let (frame, t) = v4_flow();
    let key = FlowKey::from_tuple(&t).expect("tcp flow key");
    let rss = s.choose(&t).cpu;
    let other = if rss == c0 { c1 } else { c0 };

    let (v, cpu, d) = step(&mut ebpf, &frame);
    assert_eq!((v, cpu, d.misses, d.hits), (XDP_REDIRECT, Some(rss), 1, 0), "miss goes by RSS");

    // As the hook inserts it: still on RSS, reader elsewhere. The first packet
    // since the wish stamps the slot and stays on RSS (its predecessors may be queued there).
    let (slot, h) = set_flow(&mut ebpf, &key, other, false);
    let (v, cpu, d) = step(&mut ebpf, &frame);
    assert_eq!((v, cpu, d.deferred, d.moves), (XDP_REDIRECT, Some(rss), 1, 0), "new flow stays on RSS");
    let st = slot_state(&ebpf, slot);
    assert!(st.last_ns > 0 && st.cur == 0, "the pending move is stamped: {st:?}");
    // Busy (the last packet just now, idle time 1 s): still on RSS.
    let (_, cpu, d) = step(&mut ebpf, &frame);
    assert_eq!((cpu, d.deferred, d.moves), (Some(rss), 1, 0), "busy new flow stays on RSS");
    // Idle for 2 s (> 1 s): it moves to the reader.
    let st = slot_state(&ebpf, slot);
    set_slot(&mut ebpf, slot, h, other, FlowSlot { last_ns: rfs::now_ns() - 2_000_000_000, ..st });
    let (v, cpu, d) = step(&mut ebpf, &frame);
    assert_eq!((v, cpu, d.moves, d.hits), (XDP_REDIRECT, Some(other), 1, 1), "idle flow moves to its reader");
    let e = get_flow(&ebpf, &key).expect("entry");
    assert_eq!((e.cpu, e.moves, e.pkts), (Some(other), 1, 1));
    assert_eq!(slot_state(&ebpf, slot).last_ns, 0, "no move pending: no stamp");

    // The reader moves back to the RSS CPU while packets keep coming: deferred.
    let st = slot_state(&ebpf, slot);
    set_slot(&mut ebpf, slot, h, rss, st);
    let (_, cpu, d) = step(&mut ebpf, &frame);
    assert_eq!((cpu, d.deferred, d.moves, d.hits), (Some(other), 1, 0, 1), "busy flow is not moved");
    let (_, cpu, d) = step(&mut ebpf, &frame);
    assert_eq!((cpu, d.deferred, d.moves, d.hits), (Some(other), 1, 0, 1), "still busy");
    let st = slot_state(&ebpf, slot);
    set_slot(&mut ebpf, slot, h, rss, FlowSlot { last_ns: rfs::now_ns() - 2_000_000_000, ..st });
    let (_, cpu, d) = step(&mut ebpf, &frame);
    assert_eq!((cpu, d.moves), (Some(rss), 1), "idle flow follows");
    assert_eq!(get_flow(&ebpf, &key).expect("entry").moves, 2);

    // UDP: the protocol is part of the key, so a TCP entry of the same ports
    // is not the UDP flow's (a miss); its own entry is a hit.
    let (a, b) = ("198.18.0.1".parse().expect("ip"), "198.18.0.2".parse().expect("ip"));
    let udp = Frame::eth(MAC_B, MAC_A).ipv4(a, b).udp(40000, 80).payload(10).build();
    let (_, _, d) = step(&mut ebpf, &udp);
    assert_eq!((d.misses, d.hits), (1, 0), "UDP with only a TCP entry is a miss");
    let ut = Tuple::new(IpAddr::V4(a), 40000, IpAddr::V4(b), 80, IPPROTO_UDP).expect("tuple");
    let ukey = FlowKey::from_tuple(&ut).expect("UDP flow key");
    let urss = s.choose(&ut).cpu;
    let uother = if urss == c0 { c1 } else { c0 };
    set_flow(&mut ebpf, &ukey, uother, true);
    let (v, cpu, d) = step(&mut ebpf, &udp);
    assert_eq!((v, cpu, d.hits, d.misses), (XDP_REDIRECT, Some(uother), 1, 0), "UDP hit goes to its reader");
    // A UDP fragment (the first, which still carries the ports) is hashed on
    // addresses like every fragment of its datagram: never in the table.
    let frag = Frame::eth(MAC_B, MAC_A).ipv4(a, b).fragment(0, true).udp(40000, 80).payload(10).build();
    let (_, _, d) = step(&mut ebpf, &frag);
    assert_eq!((d.misses, d.hits), (1, 0), "a fragment is a miss");

    // IPv6: the key is the addresses as they are.
    let (a6, b6): (std::net::Ipv6Addr, std::net::Ipv6Addr) =
        ("2001:db8::1".parse().expect("ip"), "2001:db8::2".parse().expect("ip"));
    let f6 = Frame::eth(MAC_B, MAC_A).ipv6(a6, b6).tcp(1234, 443).build();
    let k6 = FlowKey::from_socket(IPPROTO_TCP, &b6.octets(), 443, &a6.octets(), 1234);
    set_flow(&mut ebpf, &k6, other, true);
    let (v, cpu, d) = step(&mut ebpf, &f6);
    assert_eq!((v, cpu, d.hits), (XDP_REDIRECT, Some(other), 1), "IPv6 hit");

    // A reader on a CPU outside --cpus: no queue there, RSS steers, counted.
    let (mut only0, s0) = load_rfs(vec![c0], Some(RfsSettings::default()));
    set_flow(&mut only0, &key, c1, true);
    let (v, cpu, d) = step(&mut only0, &frame);
    assert_eq!((v, cpu, d.not_steerable), (XDP_REDIRECT, Some(s0.choose(&t).cpu), 1), "outside --cpus");
}

/// Restores kernel.bpf_stats_enabled on drop.
struct BpfStats(String);

impl BpfStats {
    const PATH: &'static str = "/proc/sys/kernel/bpf_stats_enabled";
    fn enable() -> Self {
        let old = std::fs::read_to_string(Self::PATH).expect("reading bpf_stats_enabled");
        std::fs::write(Self::PATH, "1").expect("enabling bpf stats");
        Self(old.trim().to_string())
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write(Self::PATH, &self.0);
    }
}

/// (run_time_ns, run_cnt) of each BPF program `pid` holds, by program name.
fn prog_stats(pid: u32) -> StdHashMap<String, (u64, u64)> {
    let names: StdHashMap<u32, String> = aya::programs::loaded_programs()
        .filter_map(|p| p.ok())
        .filter_map(|p| Some((p.id(), p.name_as_str()?.to_string())))
        .collect();
    let mut out = StdHashMap::new();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fdinfo")).expect("fdinfo").flatten() {
        let text = std::fs::read_to_string(fd.path()).unwrap_or_default();
        let field =
            |k: &str| text.lines().find_map(|l| l.strip_prefix(k)).and_then(|v| v.trim().parse::<u64>().ok());
        if let (Some(id), Some(ns), Some(cnt)) = (field("prog_id:"), field("run_time_ns:"), field("run_cnt:"))
        {
            if let Some(name) = names.get(&(id as u32)) {
                out.insert(name.clone(), (ns, cnt));
            }
        }
    }
    out
}

/// Measurements for the note (printed; ratios, no thresholds): the hook's cost
/// per event and the live XDP cost from the kernel's bpf stats on the lab
/// workload, the RFS hit rate there, and the XDP per-packet cost with RFS off,
/// on (hit) and on (miss) through BPF_PROG_TEST_RUN, interleaved in one run.
#[test]
fn rfs_costs_for_the_note() {
    require_root();
    let (c0, c1) = two_cpus();
    // Test-run costs first: rss, rfs hit, rfs miss, bare pass, three rounds.
    let (frame, t) = v4_flow();
    let (mut rss, _) = load_rfs(vec![c0, c1], None);
    let (mut on, _) = load_rfs(vec![c0, c1], Some(RfsSettings::default()));
    let key = FlowKey::from_tuple(&t).expect("key");
    set_flow(&mut on, &key, c1, true);
    let (a, b) = ("198.18.0.1".parse().expect("ip"), "198.18.0.2".parse().expect("ip"));
    let miss_frame = Frame::eth(MAC_B, MAC_A).ipv4(a, b).tcp(40001, 80).payload(10).build();
    // UDP: a flow in the table, and one not (every datagram of an unconnected socket).
    let udp_frame = Frame::eth(MAC_B, MAC_A).ipv4(a, b).udp(40000, 443).payload(10).build();
    let udp_miss = Frame::eth(MAC_B, MAC_A).ipv4(a, b).udp(40001, 443).payload(10).build();
    let ut = Tuple::new(IpAddr::V4(a), 40000, IpAddr::V4(b), 443, IPPROTO_UDP).expect("tuple");
    let ukey = FlowKey::from_tuple(&ut).expect("UDP key");
    set_flow(&mut on, &ukey, c1, true);
    loader::program(&mut rss, PASS_PROG).expect("xdp_pass").load().expect("loading xdp_pass");
    let reps = 1_000_000;
    let mut cost: StdHashMap<&str, Vec<u32>> = StdHashMap::new();
    let mut objs = [rss, on];
    for _ in 0..3 {
        for (name, i, prog, f) in [
            ("xdp_pass", 0, PASS_PROG, &frame),
            ("rfs_miss", 1, STEER_PROG, &miss_frame),
            ("rfs_off", 0, STEER_PROG, &frame),
            ("rfs_hit", 1, STEER_PROG, &frame),
            ("rfs_udp_miss", 1, STEER_PROG, &udp_miss),
            ("rfs_udp_hit", 1, STEER_PROG, &udp_frame),
        ] {
            let p = loader::program(&mut objs[i], prog).expect("program");
            let out = testrun::run(p.fd().expect("loaded"), f, reps).expect("test run");
            cost.entry(name).or_default().push(out.duration_ns);
        }
    }
    let med = |v: &Vec<u32>| {
        let mut v = v.clone();
        v.sort();
        v[v.len() / 2]
    };
    eprintln!(
        "XDP ns/packet (BPF_PROG_TEST_RUN, {reps} reps, median of 3): xdp_pass {} | rfs off {} | rfs on, miss {} | rfs on, hit {} | rfs on, UDP miss {} | rfs on, UDP hit {}",
        med(&cost["xdp_pass"]),
        med(&cost["rfs_off"]),
        med(&cost["rfs_miss"]),
        med(&cost["rfs_hit"]),
        med(&cost["rfs_udp_miss"]),
        med(&cost["rfs_udp_hit"])
    );
    for k in [key, ukey] {
        let e = get_flow(&objs[1], &k).expect("entry");
        assert!(e.pkts >= 3 * reps as u64, "the hit path ran: {e:?}");
    }

    // Live: the lab workload with bpf stats on.
    let lab = Lab::new().expect("making the lab");
    one_segment_per_write(&lab);
    let (run, flows) = start_rfs(&lab, &[]);
    let stats = BpfStats::enable();
    let per_run = |p0: &StdHashMap<String, (u64, u64)>, p1: &StdHashMap<String, (u64, u64)>, name: &str| {
        let (Some(a), Some(b)) = (p0.get(name), p1.get(name)) else {
            panic!("no bpf stats for {name} in steer's fds: {p1:?}");
        };
        let (ns, cnt) = (b.0 - a.0, b.1 - a.1);
        assert!(cnt > 0, "{name} did not run");
        (cnt, ns as f64 / cnt as f64)
    };
    // Connected UDP flows alone first: the UDP hook also runs (and returns at
    // once) on every TCP recvmsg, so its cost on UDP reads is measured without them.
    {
        let (_listener, udp) = quic_flows(&lab, Listen::V4, 5013, 1).expect("UDP flows");
        let _ur = UdpReader::start("rfs-cost-udp", c1, udp.iter().map(|c| c.server.clone()).collect());
        let senders =
            UdpSenders::start(udp.iter().map(|c| c.client.clone()).collect(), c0, Duration::from_millis(1));
        std::thread::sleep(Duration::from_secs(1));
        let p0 = prog_stats(run.child.id());
        std::thread::sleep(Duration::from_secs(2));
        let p1 = prog_stats(run.child.id());
        senders.stop();
        let (cnt, ns) = per_run(&p0, &p1, "rfs_udp_read");
        eprintln!("live rfs_udp_read on connected UDP reads: {cnt} runs, {ns:.0} ns/run (bpf_stats)");
    }
    let conns = connect(&lab, Listen::DualStack, 5005, 4).expect("connecting");
    let _r0 = Reader::start("rfs-cost-a", c0, conns[..2].iter().map(|c| c.server.clone()).collect());
    let _r1 = Reader::start("rfs-cost-b", c1, conns[2..].iter().map(|c| c.server.clone()).collect());
    let senders = Senders::start(&conns, c0, 1, Duration::from_millis(1));
    std::thread::sleep(Duration::from_secs(1));
    let (p0, k0) = (prog_stats(run.child.id()), counters(&flows));
    std::thread::sleep(Duration::from_secs(3));
    let (p1, k1) = (prog_stats(run.child.id()), counters(&flows));
    senders.stop();
    drop(stats);
    for name in ["rfs_read", "rfs_udp_read", "steer_xdp"] {
        let (cnt, ns) = per_run(&p0, &p1, name);
        eprintln!("live {name} (TCP workload): {cnt} runs, {ns:.0} ns/run (bpf_stats run_time_ns/run_cnt)");
    }
    let (hits, misses) = (k1.hits - k0.hits, k1.misses - k0.misses);
    eprintln!(
        "lab hit rate: {hits} hits, {misses} misses ({:.2} %); hook events {}",
        100.0 * hits as f64 / (hits + misses).max(1) as f64,
        k1.hook_events - k0.hook_events
    );
    let (ok, log) = run.stop().expect("stopping steer");
    assert!(ok, "steer run failed: {log}");
}
