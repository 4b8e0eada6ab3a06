//! The shared test library: network namespaces and veth pairs made by the
//! tests themselves (unique names, always removed) through steer's own lab
//! library (`steer::lab::topology`, netlink: no `ip` binary), helpers to run
//! code or the steer binary inside a namespace, and readers for the kernel's
//! counters.
//!
//! Every privileged test calls [`require_root`] first: without root these
//! tests cannot say anything, so they fail with the reason instead of passing.

use std::{
    collections::HashMap,
    fs::File,
    os::{fd::AsRawFd, unix::process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use steer::{
    lab::topology::{self, NetNs},
    sys::{netlink::VethEnd, netns::NetnsExec},
};

pub fn require_root() {
    // SAFETY: no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test loads eBPF and creates network namespaces: run it as root (cargo xtask test)"
    );
}

/// The steer binary `cargo xtask test` built (STEER_BIN), or the workspace's debug build.
pub fn steer_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("STEER_BIN") {
        return PathBuf::from(p);
    }
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/steer");
    assert!(p.exists(), "no steer binary at {}: run the tests with `cargo xtask test`", p.display());
    p
}

fn unique() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("{:x}{}", std::process::id() & 0xfffff, N.fetch_add(1, Ordering::Relaxed))
}

/// Two namespaces joined by a veth pair: `tx` sends, `rx` receives and is
/// where steer attaches. Removed on drop, whatever happened.
pub struct Lab {
    pub tx_ns: String,
    pub rx_ns: String,
    pub tx_if: String,
    pub rx_if: String,
    pub tx_mac: [u8; 6],
    pub rx_mac: [u8; 6],
    pub tx_ip: &'static str,
    pub rx_ip: &'static str,
    pub tx_ip6: &'static str,
    pub rx_ip6: &'static str,
    tx: NetNs,
    rx: NetNs,
}

impl Lab {
    pub fn new() -> Result<Self> {
        require_root();
        let id = unique();
        let tx = NetNs::create(&format!("steer-tx-{id}"))?;
        let rx = NetNs::create(&format!("steer-rx-{id}"))?;
        let lab = Self {
            tx_ns: tx.name.clone(),
            rx_ns: rx.name.clone(),
            tx_if: format!("stt{id}"),
            rx_if: format!("str{id}"),
            tx_mac: [0x02, 0x5e, 0, 0, 0, 1],
            rx_mac: [0x02, 0x5e, 0, 0, 0, 2],
            tx_ip: "198.18.0.1",
            rx_ip: "198.18.0.2",
            tx_ip6: "2001:db8:5e::1",
            rx_ip6: "2001:db8:5e::2",
            tx,
            rx,
        };
        topology::create_veth(
            VethEnd::new(&lab.tx_if).mac(lab.tx_mac).netns(lab.tx.as_raw_fd()),
            VethEnd::new(&lab.rx_if).mac(lab.rx_mac).netns(lab.rx.as_raw_fd()),
        )?;
        // Static neighbours: no ARP/ND round trips in the way of the traffic.
        let (tx_ip, rx_ip) = (lab.tx_ip.parse()?, lab.rx_ip.parse()?);
        lab.tx.configure_end(&lab.tx_if, tx_ip, Some(lab.tx_ip6.parse()?), rx_ip, lab.rx_mac)?;
        lab.rx.configure_end(&lab.rx_if, rx_ip, Some(lab.rx_ip6.parse()?), tx_ip, lab.tx_mac)?;
        Ok(lab)
    }

    /// The sending namespace.
    pub fn tx(&self) -> &NetNs {
        &self.tx
    }

    /// The receiving namespace.
    pub fn rx(&self) -> &NetNs {
        &self.rx
    }

    /// Whether any XDP program is attached to the receiving veth (in any
    /// mode, as `ip -d link show` would list it).
    pub fn rx_has_xdp(&self) -> Result<bool> {
        let idx = self.rx.index(&self.rx_if)?;
        Ok(self.rx.run(move || steer::sys::netlink::Route::open()?.link_xdp(idx))??.is_some())
    }

    /// Where a steer run on `iface` of the receiving namespace keeps its pins and state.
    pub fn run_id(&self, iface: &str) -> Result<steer::pins::RunId> {
        let iface = iface.to_string();
        Ok(in_ns(&self.rx_ns, move || steer::pins::RunId::of(&iface))??)
    }

    /// The pin directory of a steer run on the receiving veth.
    pub fn pin_dir(&self) -> PathBuf {
        self.run_id(&self.rx_if).expect("the receiving veth exists").pin_dir()
    }

    /// The state directory (run.json, nic.json) of a steer run on the receiving veth.
    pub fn state_dir(&self) -> PathBuf {
        self.run_id(&self.rx_if).expect("the receiving veth exists").state_dir()
    }

    /// `steer ARGS` inside the receiving namespace.
    pub fn steer(&self, args: &[&str]) -> Command {
        in_ns_command(&self.rx_ns, steer_bin(), args)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // The namespaces (`tx`, `rx`) are removed after this, when the fields
        // drop, and the veth pair with them.
        if let Ok(id) = self.run_id(&self.rx_if) {
            let _ = std::fs::remove_dir_all(id.pin_dir());
            let _ = std::fs::remove_dir_all(id.state_dir());
        }
    }
}

fn ns_file(ns: &str) -> Result<File> {
    File::open(format!("/run/netns/{ns}")).with_context(|| format!("opening network namespace {ns}"))
}

/// A command that runs in network namespace `ns` and nothing else: unlike
/// `ip netns exec` it keeps the mount namespace, so bpffs pins are shared
/// with the test and with other steer processes.
pub fn in_ns_command(ns: &str, program: impl Into<PathBuf>, args: &[&str]) -> Command {
    let mut c = Command::new(program.into());
    c.args(args);
    let path = format!("/run/netns/{ns}");
    // SAFETY: only async-signal-safe calls (open, setns) between fork and exec.
    unsafe {
        c.pre_exec(move || {
            let f = File::open(&path)?;
            if libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    c
}

/// `PROGRAM ARGS` run the way `ip netns exec NS PROGRAM ARGS` runs it (the
/// user's path in README), without the `ip` binary: the child enters
/// /run/netns/NS, takes its own mount namespace and mounts a fresh /sys that
/// shows NS, then execs ([`NetnsExec`]).
pub fn netns_exec(ns: &str, program: impl Into<PathBuf>, args: &[&str]) -> Command {
    let switch = NetnsExec::new(Path::new("/run/netns"), ns).expect("a namespace name without NUL");
    let mut c = Command::new(program.into());
    c.args(args);
    // SAFETY: NetnsExec::enter makes system calls only, as a child between fork and exec must.
    unsafe { c.pre_exec(move || switch.enter()) };
    c
}

/// Like [`netns_exec`], inside a fresh PID namespace whose PID 1 stays in the
/// caller's network namespace and has that PID namespace's /proc, as
/// `unshare --pid --fork --mount-proc sh -c '"$@"; exit $?' sh ip netns exec NS ...`
/// would run it. Three processes: the spawned child waits for PID 1, which
/// mounts /proc and waits for the program, which switches and execs.
pub fn netns_exec_in_pid_ns(ns: &str, program: impl Into<PathBuf>, args: &[&str]) -> Command {
    let switch = NetnsExec::new(Path::new("/run/netns"), ns).expect("a namespace name without NUL");
    let mut c = Command::new(program.into());
    c.args(args);
    // SAFETY: only system calls (unshare, mount, fork, waitpid, close_range, _exit)
    // between fork and exec, and each process is single-threaded.
    unsafe {
        c.pre_exec(move || {
            if libc::unshare(libc::CLONE_NEWPID | libc::CLONE_NEWNS) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The /proc mounted below stays in this mount namespace.
            let private = libc::MS_REC | libc::MS_PRIVATE;
            if libc::mount(std::ptr::null(), c"/".as_ptr(), std::ptr::null(), private, std::ptr::null()) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            match libc::fork() {
                -1 => return Err(std::io::Error::last_os_error()),
                0 => {}
                pid1 => wait_then_exit(pid1),
            }
            // PID 1 of the new PID namespace.
            let proc_flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
            if libc::mount(
                c"proc".as_ptr(),
                c"/proc".as_ptr(),
                c"proc".as_ptr(),
                proc_flags,
                std::ptr::null(),
            ) != 0
            {
                libc::_exit(126);
            }
            match libc::fork() {
                -1 => libc::_exit(126),
                0 => switch.enter(),
                child => wait_then_exit(child),
            }
        });
    }
    c
}

/// For a process between fork and exec that only relays its child's exit:
/// closes every fd but stdio (so the parent's spawn, which waits for the
/// exec-status pipe to close, sees the program's exec rather than this
/// process's exit), waits for `pid` and exits as it did.
///
/// # Safety
/// Only in a forked child of which `pid` is a child.
unsafe fn wait_then_exit(pid: libc::pid_t) -> ! {
    // SAFETY: closing fds this process does not use again.
    unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    let mut status = 0;
    loop {
        // SAFETY: waiting for our own child into a status we own.
        if unsafe { libc::waitpid(pid, &mut status, 0) } == pid {
            break;
        }
        if std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            // SAFETY: exiting without running the parent's destructors or atexit handlers.
            unsafe { libc::_exit(125) };
        }
    }
    let code = if libc::WIFEXITED(status) { libc::WEXITSTATUS(status) } else { 128 + libc::WTERMSIG(status) };
    // SAFETY: as above.
    unsafe { libc::_exit(code) }
}

/// Runs `f` on a new thread that has entered network namespace `ns`.
pub fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    let file = ns_file(ns)?;
    std::thread::spawn(move || {
        // SAFETY: setns on this thread only, with a namespace fd we hold.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(anyhow::anyhow!("setns: {}", std::io::Error::last_os_error()));
        }
        Ok(f())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("thread in namespace panicked"))?
}

/// The run id of `iface` in whichever of the tests' namespaces (`steer-*`)
/// holds it: test interface names are unique, and steer keys runs by
/// namespace and index, so the id must be resolved inside the namespace.
pub fn run_id(iface: &str) -> Result<steer::pins::RunId> {
    for e in std::fs::read_dir("/run/netns").context("listing /run/netns")?.flatten() {
        let ns = e.file_name().to_string_lossy().into_owned();
        if !ns.starts_with("steer-") {
            continue;
        }
        let i = iface.to_string();
        if let Ok(Ok(id)) = in_ns(&ns, move || steer::pins::RunId::of(&i)) {
            return Ok(id);
        }
    }
    bail!("no test namespace holds an interface named {iface}")
}

/// Pins the calling thread to one CPU.
pub fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t with one bit set, for this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// `/proc/net/snmp` and `/proc/net/netstat` (TcpExt, IpExt, ...) of the
/// namespace the calling thread is in, as "Group.Field" -> value.
pub fn snmp_here() -> Result<HashMap<String, u64>> {
    let mut text = std::fs::read_to_string("/proc/thread-self/net/snmp").context("reading snmp")?;
    text += &std::fs::read_to_string("/proc/thread-self/net/netstat").context("reading netstat")?;
    let mut out = HashMap::new();
    let lines: Vec<&str> = text.lines().collect();
    for pair in lines.chunks(2) {
        if let [names, values] = pair {
            let (group, names) = names.split_once(':').unwrap_or(("", names));
            let values = values.split_once(':').map(|v| v.1).unwrap_or(values);
            for (n, v) in names.split_whitespace().zip(values.split_whitespace()) {
                if let Ok(v) = v.parse::<i64>() {
                    out.insert(format!("{group}.{n}"), v.max(0) as u64);
                }
            }
        }
    }
    Ok(out)
}

/// The `TcpExt` counters (/proc/net/netstat) of the calling thread's namespace, by their names.
pub fn tcp_ext_here() -> HashMap<String, u64> {
    snmp_here()
        .expect("reading snmp and netstat")
        .into_iter()
        .filter_map(|(k, v)| Some((k.strip_prefix("TcpExt.")?.to_string(), v)))
        .collect()
}

/// Packets dropped by every device of the calling thread's namespace so far:
/// the rx and tx "drop" columns of `/proc/net/dev` (a veth whose peer's ring
/// is full counts its drop there).
pub fn device_drops_here() -> Result<u64> {
    let text = std::fs::read_to_string("/proc/thread-self/net/dev").context("reading /proc/net/dev")?;
    let mut total = 0;
    // "  if: rx_bytes rx_packets rx_errs rx_drop ... (8 rx fields) tx_bytes tx_packets tx_errs tx_drop ..."
    for line in text.lines().skip(2) {
        let Some((_, fields)) = line.split_once(':') else { continue };
        let v: Vec<u64> = fields.split_whitespace().filter_map(|f| f.parse().ok()).collect();
        if v.len() >= 12 {
            total += v[3] + v[11];
        }
    }
    Ok(total)
}

/// TCP between a lab's two namespaces over a stretch of traffic: how much
/// arrived out of order, whether the sender itself recognised reordering, and
/// how many packets were dropped on the way. A dropped segment leaves a hole
/// that the receiver also queues out of order, so its out-of-order count
/// proves reordering only where nothing was dropped; the sender's reordering
/// detection (a segment it took for lost arriving after all) is no drop's
/// doing.
#[derive(Debug)]
pub struct TcpOrder {
    /// TcpExt.TCPOFOQueue + TCPOFODrop of the receiver.
    pub out_of_order: u64,
    /// TcpExt.TCPSACKReorder + TCPTSReorder + TCPRenoReorder of the sender.
    pub sender_saw_reordering: u64,
    /// Device drops in either namespace, plus what the caller counted (steer's CPUMAP queues).
    pub dropped: u64,
}

impl TcpOrder {
    /// Nothing was dropped, so `out_of_order` is all reordering.
    pub fn conclusive(&self) -> bool {
        self.dropped == 0
    }

    /// Reordering for certain.
    pub fn reordered(&self) -> bool {
        self.sender_saw_reordering > 0 || (self.conclusive() && self.out_of_order > 0)
    }
}

/// The counters [`TcpOrder`] is the difference of, for `tx_ns` -> `rx_ns`.
pub struct TcpOrderProbe {
    tx_ns: String,
    rx_ns: String,
    tx: HashMap<String, u64>,
    rx: HashMap<String, u64>,
    drops: u64,
}

const OUT_OF_ORDER: [&str; 2] = ["TcpExt.TCPOFOQueue", "TcpExt.TCPOFODrop"];
const SENDER_REORDER: [&str; 3] = ["TcpExt.TCPSACKReorder", "TcpExt.TCPTSReorder", "TcpExt.TCPRenoReorder"];

impl TcpOrderProbe {
    pub fn start(tx_ns: &str, rx_ns: &str) -> Result<Self> {
        let (tx, rx) = (snmp(tx_ns)?, snmp(rx_ns)?);
        let drops = Self::device_drops(tx_ns, rx_ns)?;
        Ok(Self { tx_ns: tx_ns.into(), rx_ns: rx_ns.into(), tx, rx, drops })
    }

    fn device_drops(tx_ns: &str, rx_ns: &str) -> Result<u64> {
        Ok(in_ns(tx_ns, device_drops_here)?? + in_ns(rx_ns, device_drops_here)??)
    }

    /// What happened since [`TcpOrderProbe::start`]; `other_drops`: drops
    /// counted elsewhere over the same stretch.
    pub fn finish(self, other_drops: u64) -> Result<TcpOrder> {
        let (tx, rx) = (snmp(&self.tx_ns)?, snmp(&self.rx_ns)?);
        let drops = Self::device_drops(&self.tx_ns, &self.rx_ns)?;
        let grew = |a: &HashMap<String, u64>, z: &HashMap<String, u64>, keys: &[&str]| -> u64 {
            keys.iter()
                .map(|k| z.get(*k).copied().unwrap_or(0).saturating_sub(a.get(*k).copied().unwrap_or(0)))
                .sum()
        };
        Ok(TcpOrder {
            out_of_order: grew(&self.rx, &rx, &OUT_OF_ORDER),
            sender_saw_reordering: grew(&self.tx, &tx, &SENDER_REORDER),
            dropped: drops.saturating_sub(self.drops) + other_drops,
        })
    }
}

/// Kernel RPS on a lab's sending veth, the receive path of its ACKs, onto the
/// senders' CPU: TCP sends new segments from wherever an ACK is processed, so
/// without it a flow's segments leave from the readers' CPUs too, and two CPUs
/// feeding the receiving veth at once reorder them before any XDP program sees
/// them. Put back on drop, so that no NIC snapshot outlives the lab.
pub struct SenderRps {
    ns: String,
    iface: String,
}

impl SenderRps {
    pub fn apply(ns: &str, iface: &str, cpu: u32) -> Self {
        let out =
            netns_exec(ns, steer_bin(), &["nic", "apply", "--iface", iface, "--rps-cpus", &cpu.to_string()])
                .output()
                .unwrap();
        assert!(out.status.success(), "rps on the sender's veth: {}", String::from_utf8_lossy(&out.stderr));
        Self { ns: ns.into(), iface: iface.into() }
    }
}

impl Drop for SenderRps {
    fn drop(&mut self) {
        let out = netns_exec(&self.ns, steer_bin(), &["nic", "restore", "--iface", &self.iface]).output();
        if !out.as_ref().is_ok_and(|o| o.status.success()) {
            eprintln!("steer nic restore on {}: {out:?}", self.iface);
        }
    }
}

/// `/proc/net/snmp` of network namespace `ns`.
pub fn snmp(ns: &str) -> Result<HashMap<String, u64>> {
    in_ns(ns, snmp_here)?
}

/// Per-CPU "processed" column of /proc/net/softnet_stat, indexed by CPU id
/// (the file lists online CPUs only; an offline one reads 0), through steer's own reader.
pub fn softnet_processed() -> Result<Vec<u64>> {
    let rows = steer::stats::softnet::read()?;
    let mut v = vec![0; rows.iter().map(|r| r.cpu as usize + 1).max().unwrap_or(0)];
    for r in rows {
        v[r.cpu as usize] = r.processed.into();
    }
    Ok(v)
}

/// A running `steer run`, stopped with SIGTERM on drop.
pub struct SteerRun {
    pub child: Child,
    pub iface: String,
}

impl SteerRun {
    /// Starts `steer run --iface IF ARGS` in the lab's receiving namespace and
    /// waits until its maps are pinned.
    pub fn start(lab: &Lab, args: &[&str]) -> Result<Self> {
        Self::start_on(lab, &lab.rx_if, args)
    }

    /// Like [`SteerRun::start`], on another interface of the receiving namespace.
    pub fn start_on(lab: &Lab, iface: &str, args: &[&str]) -> Result<Self> {
        let mut all = vec!["run", "--iface", iface, "--quiet"];
        all.extend_from_slice(args);
        let child = lab
            .steer(&all)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting steer run")?;
        let mut run = Self { child, iface: iface.to_string() };
        let link = lab.run_id(iface)?.pin_dir().join("link");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !link.exists() {
            if let Some(st) = run.child.try_wait()? {
                let out = run.output_now();
                bail!("steer run exited early ({st}): {out}");
            }
            if Instant::now() > deadline {
                bail!("steer run did not pin {} within 20 s", link.display());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(run)
    }

    fn output_now(&mut self) -> String {
        use std::io::Read;
        let mut s = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut s);
        }
        s
    }

    /// SIGTERM, then wait (bounded); returns the exit status success and stderr.
    pub fn stop(mut self) -> Result<(bool, String)> {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(st) = self.child.try_wait()? {
                let out = self.output_now();
                return Ok((st.success(), out));
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                bail!("steer run did not exit within 15 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for SteerRun {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
            let _ = self.child.wait();
        }
    }
}
