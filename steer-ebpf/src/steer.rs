//! How the CPU is chosen: flow hash -> bucket of the indirection table -> CPU,
//! then a redirect into that CPU's CPUMAP queue, or XDP_PASS when that CPU is
//! the one the packet is already on. With `--spread busy` a CPU also passes
//! what it would send to a CPU it does not spread to now (pressure.rs), once
//! nothing of the flow can still be queued there: a hand-off costs the other
//! CPU a kthread wake-up and a context switch, which only pays when this CPU
//! cannot keep up and that one has time to spare.
//!
//! A tunnelled packet takes two programs: `steer_xdp` finds the tunnel and
//! tail-calls `steer_inner`, which parses the inner flow and steers it the
//! same way (see parse.rs for why two).

use aya_ebpf::{
    bindings::xdp_action,
    helpers::{bpf_get_smp_processor_id, bpf_ktime_get_ns},
    programs::XdpContext,
};
use steer_common::{
    balance, hash, Counters, HashKind, PassReason, SteerConfig, Tuple, INDIR_MOVING, LOCAL_PASS_DRAINED,
    LOCAL_PASS_OFF, LOCAL_PASS_ON, SPREAD_BUSY,
};

use crate::{
    cpumap_trace,
    maps::{BUCKETS, CONFIG, CPUS, INDIR, INNER_PROG, MOVES, STATS, TARGETS, TOEPLITZ, TUNNEL_AT},
    parse::{parse, parse_tunnel, Parsed},
    pressure,
};

#[inline(always)]
fn frame_len(ctx: &XdpContext) -> u64 {
    (ctx.data_end() - ctx.data()) as u64
}

/// What `steer_xdp` does next.
pub enum Next {
    Verdict(u32),
    /// Tail-call `steer_inner`: the tunnel is in `TUNNEL_AT`.
    Tunnel,
}

#[inline(always)]
fn counters() -> Option<&'static mut Counters> {
    // SAFETY: a per-CPU slot, only touched by this CPU while the program runs.
    STATS.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}

#[inline(always)]
fn pass(c: &mut Counters, reason: PassReason) -> u32 {
    // `reason as usize` is a constant below PASS_REASONS at every call site.
    if let Some(slot) = c.passed.get_mut(reason as usize) {
        *slot += 1;
    }
    xdp_action::XDP_PASS
}

/// Counts a packet steered to `cpu` and returns its verdict. Called only once
/// the redirect succeeded, so that a CPU without a queue fails and is counted
/// as before; when we pass, the target the helper recorded is left unused.
/// `clean`: the flow never went through another CPU's queue (see rfs.rs).
#[inline(always)]
pub fn steered(c: &mut Counters, cfg: &SteerConfig, cpu: u32, verdict: u32, clean: bool) -> u32 {
    c.redirected += 1;
    if let Some(n) = TARGETS.get_ptr_mut(cpu) {
        // SAFETY: per-CPU slot, as above.
        unsafe { *n += 1 };
    }
    // SAFETY: no preconditions.
    let here = unsafe { bpf_get_smp_processor_id() };
    if cpu != here {
        // `--spread busy`: a CPU that does not spread to `cpu` now keeps the packet, unless something
        // may still be queued for `cpu` or on its way from its kthread to the sockets (a packet of
        // this flow could be among it). The other way round needs no check: the choice changes
        // only between two polls, when what it kept is in the stack (see pressure.rs for where it
        // may not be).
        if cfg.spread == SPREAD_BUSY
            && cfg.local_pass != LOCAL_PASS_OFF
            && !pressure::spreads_to(cpu)
            && cpumap_trace::nothing_on_its_way(cpu)
        {
            c.local += 1;
            c.kept += 1;
            return xdp_action::XDP_PASS;
        }
        // Marked under --spread always too: a SIGHUP may turn busy on while this frame is in the bulk.
        cpumap_trace::pending(cpu);
        return verdict;
    }
    // On the chosen CPU already: pass in place like RPS, not via our own queue, kthread and switch,
    // where nothing of the flow can be queued behind (see LOCAL_PASS_*).
    let in_place = match cfg.local_pass {
        LOCAL_PASS_ON if clean => true,
        LOCAL_PASS_ON | LOCAL_PASS_DRAINED => cpumap_trace::nothing_queued(here),
        _ => false,
    };
    if in_place {
        c.local += 1;
        return xdp_action::XDP_PASS;
    }
    cpumap_trace::pending(here);
    verdict
}

/// The flow hash of `tuple` under the live settings: the RSS bucket and the
/// RFS slot both come from it, so a packet is hashed once.
#[inline(always)]
pub fn flow_hash(cfg: &SteerConfig, tuple: &Tuple) -> Option<u32> {
    let kind = if cfg.hash == HashKind::Toeplitz as u32 { HashKind::Toeplitz } else { HashKind::Fast };
    let table = if kind == HashKind::Toeplitz { TOEPLITZ.get(0) } else { None };
    hash::flow_hash(kind, cfg.seed, cfg.symmetric != 0, table, tuple)
}

/// The CPU the indirection table chooses for flow hash `h` (RSS), with the
/// packet (`len` bytes) counted in its bucket's load. Every packet steered by
/// the hash comes through here once, RFS-steered ones never.
#[inline(always)]
pub fn rss_cpu(cfg: &SteerConfig, h: u32, len: u64) -> Option<u32> {
    let bucket = h & cfg.table_mask;
    if let Some(load) = BUCKETS.get_ptr_mut(bucket) {
        // SAFETY: per-CPU slot, as above.
        unsafe {
            (*load).packets += 1;
            (*load).bytes += len;
        }
    }
    let cpu = *INDIR.get(bucket)?;
    if cpu & INDIR_MOVING == 0 {
        return Some(cpu);
    }
    Some(moving(cfg, bucket, cpu & !INDIR_MOVING))
}

/// A bucket the balancer is moving (balance.rs): it stays on `old` until one
/// of its packets follows a gap longer than `--migrate-idle-us` and finds the
/// old CPU's queue drained past the bucket's last packet there; then INDIR
/// points at the target for good. Only moving buckets read the clock.
#[inline(never)]
fn moving(cfg: &SteerConfig, bucket: u32, old: u32) -> u32 {
    let Some(m) = MOVES.get_ptr_mut(bucket) else { return old };
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: a map value; each field is an aligned word, so racing writers store whole values.
    let m = unsafe { &mut *m };
    let (put, taken) = cpumap_trace::ring(old);
    if balance::may_switch(m.last_ns, now, cfg.migrate_idle_us as u64 * 1000)
        && balance::drained(m.tail, put, taken)
    {
        let want = m.want;
        if let Some(e) = INDIR.get_ptr_mut(bucket) {
            // SAFETY: an aligned u32 of an array map; the balancer writes a moving entry never.
            unsafe { *e = want };
        }
        return want;
    }
    m.last_ns = now;
    // Queued on the old CPU (or passed in place there, which this errs on): the switch waits
    // until the queue moved past it.
    m.tail = put + balance::TAIL_SLACK;
    old
}

pub fn steer(ctx: &XdpContext) -> Next {
    let Some(c) = counters() else {
        return Next::Verdict(xdp_action::XDP_PASS);
    };
    c.seen += 1;
    let Some(cfg) = CONFIG.get(0) else {
        return Next::Verdict(pass(c, PassReason::NoConfig));
    };
    match parse(ctx, cfg) {
        Ok(Parsed::Flow(tuple)) => Next::Verdict(steer_flow(c, cfg, &tuple, frame_len(ctx))),
        Ok(Parsed::Tunnel(at)) => match TUNNEL_AT.get_ptr_mut(0) {
            Some(slot) => {
                // SAFETY: a per-CPU slot, read by the program tail-called next on this CPU.
                unsafe { *slot = at };
                Next::Tunnel
            }
            None => Next::Verdict(pass(c, PassReason::NoConfig)),
        },
        Err(reason) => Next::Verdict(pass(c, reason)),
    }
}

/// Hands a tunnelled packet to `steer_inner`.
#[inline(always)]
pub fn tail_call_inner(ctx: &XdpContext) -> u32 {
    // SAFETY: the index is in range; on success this does not return.
    let _ = unsafe { INNER_PROG.tail_call(ctx, 0) };
    // Only with an empty program array (steer_inner not loaded).
    counters().map_or(xdp_action::XDP_PASS, |c| pass(c, PassReason::NoConfig))
}

/// `steer_inner`: the tunnel `steer_xdp` found, steered by its inner flow.
pub fn steer_inner(ctx: &XdpContext) -> u32 {
    let Some(c) = counters() else {
        return xdp_action::XDP_PASS;
    };
    let (Some(cfg), Some(at)) = (CONFIG.get(0), TUNNEL_AT.get(0)) else {
        return pass(c, PassReason::NoConfig);
    };
    match parse_tunnel(ctx, at) {
        Ok(tuple) => {
            if tuple.encap != 0 {
                c.inner += 1;
            }
            steer_flow(c, cfg, &tuple, frame_len(ctx))
        }
        Err(reason) => pass(c, reason),
    }
}

/// RFS, then RSS, then the redirect: the same for a plain and an inner flow.
#[inline(always)]
fn steer_flow(c: &mut Counters, cfg: &SteerConfig, tuple: &Tuple, len: u64) -> u32 {
    let Some(h) = flow_hash(cfg, tuple) else {
        return pass(c, PassReason::NoConfig);
    };
    // RFS first: a flow whose reader is known goes to the reader's CPU.
    let mut rfs = crate::rfs::Fallback::default();
    if cfg.rfs != 0 {
        if let Some(verdict) = crate::rfs::steer(tuple, h, cfg, c, &mut rfs, len) {
            return verdict;
        }
    }
    let Some(cpu) = rfs.rss.or_else(|| rss_cpu(cfg, h, len)) else {
        return pass(c, PassReason::NoConfig);
    };
    // The low bits of the flags are the verdict when the CPU has no queue: pass.
    // A flow's RSS CPU never changes (but on SIGHUP), so passing it in place keeps its order
    // where the flow always arrives on one CPU (`local_pass`), unless its RFS slot sent it
    // through another CPU's queue before (see rfs.rs).
    match CPUS.redirect(cpu, xdp_action::XDP_PASS as u64) {
        Ok(verdict) => steered(c, cfg, cpu, verdict, !rfs.queued),
        Err(verdict) => {
            c.redirect_err += 1;
            verdict
        }
    }
}

/// `cost_parse`: what parsing adds to a redirect (the bench's cost table).
pub fn cost_parse(ctx: &XdpContext) -> u32 {
    let Some(cfg) = CONFIG.get(0) else { return xdp_action::XDP_PASS };
    match parse(ctx, cfg) {
        // The tuple's protocol is read so that the parse is not optimised away.
        Ok(Parsed::Flow(t)) if t.proto != 0 => match CPUS.redirect(0, xdp_action::XDP_PASS as u64) {
            Ok(v) | Err(v) => v,
        },
        _ => xdp_action::XDP_PASS,
    }
}

/// `cost_hash`: what parsing, hashing and the indirection table add to a redirect.
pub fn cost_hash(ctx: &XdpContext) -> u32 {
    let Some(cfg) = CONFIG.get(0) else { return xdp_action::XDP_PASS };
    let Ok(Parsed::Flow(t)) = parse(ctx, cfg) else { return xdp_action::XDP_PASS };
    let Some(cpu) = flow_hash(cfg, &t).and_then(|h| INDIR.get(h & cfg.table_mask)) else {
        return xdp_action::XDP_PASS;
    };
    match CPUS.redirect(*cpu & !INDIR_MOVING, xdp_action::XDP_PASS as u64) {
        Ok(v) | Err(v) => v,
    }
}
