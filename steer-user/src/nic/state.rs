//! Apply a plan with a safety net, and put everything back.
//!
//! `apply` writes the snapshot (`/run/steer/netN/ifI/nic.json`, keyed by the
//! namespace and the interface index: every step with its old value) BEFORE
//! the first change, then applies the steps in order. If a
//! step fails, the steps already done are undone in reverse and the error says
//! which step, on which driver, which operation and the errno. `restore` reads
//! the snapshot (also after a SIGKILL), writes every old value back in reverse
//! order, checks that each reads back as it was, and removes the snapshot.
//! `apply_unsaved` and `undo` do the same without the snapshot file, for a
//! device that goes away with its namespace (the lab's veth).

use std::{
    io::Write as _,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use super::{
    ethtool::Ethtool,
    plan::{Knob, Plan, Step, Value},
    sysfs,
};
use crate::{
    error::{Error, Result},
    iface, pins,
};

/// The snapshot file of `iface` in the caller's network namespace, keyed by
/// the namespace and the interface index (or, for an interface that is gone,
/// the state recorded under its name there).
pub fn state_file(iface: &str) -> Result<PathBuf> {
    let id = pins::RunId::find(iface)?.ok_or_else(|| Error::NoSuchInterface(iface.to_string()))?;
    Ok(id.state_dir().join("nic.json"))
}

/// Whether `path` is a knob steer manages for `iface`: only such files are
/// written back from a snapshot, whatever the file says.
fn managed(path: &Path, iface: &str) -> bool {
    let dev = sysfs::net_dir(iface).join("queues");
    let queue_knob = path.strip_prefix(&dev).ok().is_some_and(|rest| {
        let parts: Vec<_> = rest.iter().filter_map(|p| p.to_str()).collect();
        matches!(parts.as_slice(), [q, f] if
            (q.starts_with("rx-") && (*f == "rps_cpus" || *f == "rps_flow_cnt"))
            || (q.starts_with("tx-") && *f == "xps_cpus"))
            && parts[0][3..].parse::<u32>().is_ok()
    });
    let irq_knob = path.strip_prefix("/proc/irq").ok().is_some_and(|rest| {
        let parts: Vec<_> = rest.iter().filter_map(|p| p.to_str()).collect();
        matches!(parts.as_slice(), [n, "smp_affinity"] if n.parse::<u32>().is_ok())
    });
    queue_knob || irq_knob || path == Path::new(sysfs::RPS_SOCK_FLOW_ENTRIES)
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct State {
    /// The process that restores on exit (`steer run`); None for `steer nic apply`.
    pub owner_pid: Option<u32>,
    pub plan: Plan,
}

/// Reads the snapshot of `iface`, if there is one.
pub fn load(iface: &str) -> Result<Option<State>> {
    let path = state_file(iface)?;
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
    };
    let state: State = serde_json::from_str(&text).map_err(|e| {
        Error::Nic(format!(
            "{} is not a steer NIC snapshot ({e}): inspect it, then remove it",
            path.display()
        ))
    })?;
    let plan = &state.plan;
    let foreign = plan.steps.iter().chain(plan.preserve.iter()).find_map(|s| match &s.knob {
        Knob::File { path, .. } if !managed(path, iface) => Some(path.display().to_string()),
        _ => None,
    });
    if plan.iface != iface || foreign.is_some() {
        return Err(Error::Nic(format!(
            "{} is not a snapshot steer made for \"{iface}\" (it names \"{}\"{}): nothing was written; \
             inspect it, then remove it",
            path.display(),
            plan.iface,
            foreign.map(|f| format!(" and the file {f}, which steer does not manage")).unwrap_or_default()
        )));
    }
    Ok(Some(state))
}

/// The live process that owns the snapshot of `iface`, if any (not us).
pub fn live_owner(iface: &str) -> Option<u32> {
    let pid = load(iface).ok()??.owner_pid?;
    pins::alive(pid).then_some(pid)
}

fn save(state: &State) -> Result<()> {
    let path = state_file(&state.plan.iface)?;
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    let tmp = dir.join("nic.json.tmp");
    let text =
        serde_json::to_string_pretty(state).map_err(|e| Error::Nic(format!("encoding the snapshot: {e}")))?;
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)
    };
    write().map_err(|e| Error::io(format!("writing the snapshot {}", path.display()), e))
}

fn remove_state(iface: &str) -> Result<()> {
    let path = state_file(iface)?;
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(format!("removing {}", path.display()), e)),
    }
    // The state directory may hold a running XDP steer's run.json: only remove it empty.
    if let Some(dir) = path.parent() {
        if std::fs::remove_dir(dir).is_ok() {
            // The namespace's directory too, once it holds no other interface.
            if let Some(ns_dir) = dir.parent() {
                let _ = std::fs::remove_dir(ns_dir);
            }
        }
    }
    Ok(())
}

fn read_knob(eth: &Ethtool, knob: &Knob, like: &Value) -> Result<Value> {
    Ok(match knob {
        Knob::Channels => Value::Channels(eth.channels()?),
        Knob::Coalesce => Value::Coalesce(eth.coalesce()?),
        Knob::RssIndir => Value::Indir(eth.rss_indir()?),
        Knob::Features => {
            let all = eth.features()?;
            let Value::Features(names) = like else {
                return Err(Error::Nic("snapshot: features step without a feature map".into()));
            };
            Value::Features(
                names.keys().map(|n| (n.clone(), all.get(n).is_some_and(|f| f.requested))).collect(),
            )
        }
        Knob::File { path, .. } => {
            if path.exists() {
                Value::Text(sysfs::read(path)?)
            } else {
                Value::Absent
            }
        }
    })
}

fn write_knob(eth: &Ethtool, knob: &Knob, v: &Value) -> Result<()> {
    match (knob, v) {
        (Knob::Channels, Value::Channels(c)) => eth.set_channels(c),
        (Knob::Coalesce, Value::Coalesce(c)) => eth.set_coalesce(c),
        (Knob::RssIndir, Value::Indir(t)) => eth.set_rss_indir(t),
        (Knob::Features, Value::Features(f)) => eth.set_features(f),
        // A queue file that did not exist goes away with the channel change it came with.
        (Knob::File { .. }, Value::Absent) => Ok(()),
        (Knob::File { path, .. }, Value::Text(t)) => sysfs::write(path, t),
        (k, v) => Err(Error::Nic(format!("snapshot: {k:?} cannot take the value {v}"))),
    }
}

fn is_unsupported(e: &Error) -> bool {
    matches!(e, Error::NicOp { source, .. } if source.raw_os_error() == Some(libc::EOPNOTSUPP))
}

/// What `apply` did.
#[derive(Debug, Default)]
pub struct Applied {
    pub done: usize,
    /// Optional (profile) steps the driver refused, in words.
    pub skipped: Vec<String>,
}

/// A step that failed, after the steps done before it were undone (or not).
struct Failed {
    /// Which step, its change, the device and the error.
    head: String,
    undone: usize,
    undo: Result<()>,
}

/// Applies the steps of `plan` in order. An optional step the driver refuses
/// is skipped; any other failure undoes the steps done, in reverse.
fn run_steps(eth: &Ethtool, plan: &Plan) -> std::result::Result<(Applied, Vec<Step>), Failed> {
    let mut out = Applied::default();
    let mut done: Vec<Step> = vec![];
    let total = plan.steps.len();
    for (i, step) in plan.steps.iter().enumerate() {
        match write_knob(eth, &step.knob, &step.new) {
            Ok(()) => done.push(step.clone()),
            Err(e) if step.optional && is_unsupported(&e) => {
                let _ = write_knob(eth, &step.knob, &step.old);
                out.skipped.push(format!("{} ({}): {e}", step.what, step.equivalent));
            }
            Err(e) => {
                let _ = write_knob(eth, &step.knob, &step.old);
                let undo = rollback(eth, &done);
                let head = format!(
                    "step {}/{total} \"{}\" ({} → {}, as `{}`) failed on \"{}\" (driver {}): {e}",
                    i + 1,
                    step.what,
                    step.old,
                    step.new,
                    step.equivalent,
                    plan.iface,
                    plan.driver
                );
                return Err(Failed { head, undone: done.len(), undo });
            }
        }
    }
    out.done = done.len();
    Ok((out, done))
}

/// Checks that `plan` still describes the device it was made for.
fn open_planned(plan: &Plan) -> Result<Ethtool> {
    if iface::index(&plan.iface)? != plan.ifindex {
        return Err(Error::Nic(format!("\"{}\" was recreated since it was planned: plan again", plan.iface)));
    }
    sysfs::check(&plan.iface)?;
    Ethtool::open(&plan.iface)
}

/// Snapshots, then applies `plan`; on failure undoes what was done.
pub fn apply(plan: &Plan, owner_pid: Option<u32>) -> Result<Applied> {
    let path = state_file(&plan.iface)?;
    if path.exists() {
        return Err(Error::Nic(format!(
            "{} already holds the snapshot of an earlier apply on \"{}\": run `steer nic restore --iface {}` first",
            path.display(),
            plan.iface,
            plan.iface
        )));
    }
    let eth = open_planned(plan)?;
    let mut state = State { owner_pid, plan: plan.clone() };
    save(&state)?;
    let (out, done) = match run_steps(&eth, plan) {
        Ok(r) => r,
        Err(f) => {
            return Err(Error::Nic(match f.undo {
                Ok(()) => {
                    remove_state(&plan.iface)?;
                    format!("{}; rolled back the {} earlier step(s): nothing was changed", f.head, f.undone)
                }
                Err(r) => format!(
                    "{}; rolling back failed too ({r}): the snapshot stays at {}, run `steer nic restore --iface \
                     {}`",
                    f.head,
                    path.display(),
                    plan.iface
                ),
            }))
        }
    };
    // The snapshot keeps only what was changed.
    state.plan.steps = done;
    save(&state)?;
    Ok(out)
}

/// Applies `plan` with no snapshot file, for a device that goes away with
/// its namespace (the lab's veth): a snapshot of it could never be restored
/// by name, so the caller keeps the steps done (with their old values) and
/// puts them back with [`undo`]. On failure undoes what was done.
pub fn apply_unsaved(plan: &Plan) -> Result<(Applied, Vec<Step>)> {
    let eth = open_planned(plan)?;
    run_steps(&eth, plan).map_err(|f| {
        Error::Nic(match f.undo {
            Ok(()) => {
                format!("{}; rolled back the {} earlier step(s): nothing was changed", f.head, f.undone)
            }
            Err(r) => format!("{}; rolling back failed too ({r})", f.head),
        })
    })
}

/// Puts back the old values of `steps` (done by [`apply_unsaved`] on
/// `iface`) in reverse order, and checks that each reads back as it was.
pub fn undo(iface_name: &str, steps: &[Step]) -> Result<()> {
    sysfs::check(iface_name)?;
    let eth = Ethtool::open(iface_name)?;
    let failed: Vec<String> = steps.iter().rev().filter_map(|s| put_back(&eth, s).err()).collect();
    if !failed.is_empty() {
        return Err(Error::Nic(format!("could not put back on \"{iface_name}\": {}", failed.join("; "))));
    }
    Ok(())
}

fn rollback(eth: &Ethtool, done: &[Step]) -> Result<()> {
    let mut first = None;
    for s in done.iter().rev() {
        if let Err(e) = write_knob(eth, &s.knob, &s.old) {
            first.get_or_insert(Error::Nic(format!("undoing \"{}\": {e}", s.what)));
        }
    }
    first.map_or(Ok(()), Err)
}

fn same(knob: &Knob, a: &Value, b: &Value) -> bool {
    match (knob, a, b) {
        (Knob::File { mask: true, .. }, Value::Text(x), Value::Text(y)) => {
            sysfs::mask_to_cpus(x).is_some() && sysfs::mask_to_cpus(x) == sysfs::mask_to_cpus(y)
        }
        (Knob::File { .. }, Value::Absent, _) => true,
        _ => a == b,
    }
}

/// Writes the old value of `s` back unless it already reads so, and checks
/// that it reads back. Ok(None): nothing to write; Ok/Err: what, in words.
fn put_back(eth: &Ethtool, s: &Step) -> std::result::Result<Option<String>, String> {
    let now = read_knob(eth, &s.knob, &s.old);
    if now.as_ref().is_ok_and(|n| same(&s.knob, &s.old, n)) {
        return Ok(None);
    }
    match write_knob(eth, &s.knob, &s.old) {
        Ok(()) => match read_knob(eth, &s.knob, &s.old) {
            Ok(v) if same(&s.knob, &s.old, &v) => Ok(Some(format!("{}: {}", s.what, s.old))),
            Ok(v) => Err(format!("{}: wrote {} but it reads {v}", s.what, s.old)),
            Err(e) => Err(format!("{}: {e}", s.what)),
        },
        Err(e) => Err(format!("{}: {e}", s.what)),
    }
}

/// Puts back what the snapshot of `iface` holds and removes it. Returns the
/// steps restored in words, or None when there is no snapshot.
pub fn restore(iface_name: &str) -> Result<Option<Vec<String>>> {
    let Some(state) = load(iface_name)? else {
        return Ok(None);
    };
    let plan = &state.plan;
    let present = iface::index(iface_name).ok() == Some(plan.ifindex);
    let dev_dir = sysfs::net_dir(iface_name);
    let mut done = vec![];
    let mut failed = vec![];
    let eth = if present {
        sysfs::check(iface_name)?;
        Some(Ethtool::open(iface_name)?)
    } else {
        None
    };
    let steps = plan.steps.iter().rev().chain(plan.preserve.iter());
    for s in steps {
        let device_knob = match &s.knob {
            Knob::File { path, .. } => path.starts_with(&dev_dir) || path.starts_with("/proc/irq"),
            _ => true,
        };
        let Some(eth) = eth.as_ref().filter(|_| present || !device_knob) else {
            if device_knob {
                done.push(format!(
                    "{}: skipped, \"{iface_name}\" is gone (it went with its settings)",
                    s.what
                ));
                continue;
            }
            // A global knob: write it without an ethtool handle.
            if let (Knob::File { path, .. }, Value::Text(t)) = (&s.knob, &s.old) {
                match sysfs::write(path, t) {
                    Ok(()) => done.push(format!("{}: {}", s.what, s.old)),
                    Err(e) => failed.push(format!("{}: {e}", s.what)),
                }
            }
            continue;
        };
        // Preserved queue files: only where they exist again and differ.
        if let (Knob::File { path, .. }, false) = (&s.knob, plan.steps.iter().any(|x| x.knob == s.knob)) {
            if !path.exists() {
                continue;
            }
        }
        match put_back(eth, s) {
            Ok(Some(d)) => done.push(d),
            Ok(None) => {}
            Err(f) => failed.push(f),
        }
    }
    if !failed.is_empty() {
        return Err(Error::Nic(format!(
            "could not restore on \"{iface_name}\": {}; the snapshot stays at {}",
            failed.join("; "),
            state_file(iface_name)?.display()
        )));
    }
    remove_state(iface_name)?;
    Ok(Some(done))
}
