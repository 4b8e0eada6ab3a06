//! The steering slots the XDP program reads (`RFS_WANT`: the hook's wish,
//! `RFS_SLOTS`: the XDP program's state), indexed by the flow hash the RSS path
//! computes: finding a flow's slot from userspace, joining it with the hook's
//! record for `steer flows`, emptying the slots of flows that left, and
//! rebuilding them when the hash changes.

use std::borrow::{Borrow, BorrowMut};

use aya::{
    maps::{Array, HashMap, MapData},
    Ebpf,
};
use steer_common::{
    flow, hash, names::map, FlowEntry, FlowKey, FlowSlot, HashKind, SteerConfig, ToeplitzTable,
};

use crate::{
    config::HashSettings,
    error::{Error, Result},
};

/// What picks a flow's slot: the hash settings the XDP program runs with and
/// the slot mask.
#[derive(Clone)]
pub struct SlotHash {
    kind: HashKind,
    seed: u32,
    symmetric: bool,
    table: Option<Box<ToeplitzTable>>,
    mask: u32,
}

impl PartialEq for SlotHash {
    fn eq(&self, o: &Self) -> bool {
        let tables = match (&self.table, &o.table) {
            (Some(a), Some(b)) => a.t == b.t,
            (None, None) => true,
            _ => false,
        };
        (self.kind, self.seed, self.symmetric, self.mask) == (o.kind, o.seed, o.symmetric, o.mask) && tables
    }
}

impl std::fmt::Debug for SlotHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SlotHash({:?}, seed {}, symmetric {}, mask {:#x})",
            self.kind, self.seed, self.symmetric, self.mask
        )
    }
}

impl SlotHash {
    /// For a run with these settings (RFS on; otherwise one slot).
    pub fn new(h: &HashSettings) -> Self {
        let table = (h.kind == HashKind::Toeplitz).then(|| Box::new(ToeplitzTable::new(&h.key)));
        Self { kind: h.kind, seed: h.seed, symmetric: h.symmetric, table, mask: h.steer_config().rfs_mask }
    }

    /// As the live program has it, from its CONFIG and TOEPLITZ maps.
    pub fn from_maps<C: Borrow<MapData>, T: Borrow<MapData>>(
        config: &Array<C, SteerConfig>,
        toeplitz: &Array<T, ToeplitzTable>,
    ) -> Result<Self> {
        let cfg = config.get(&0, 0).map_err(|e| Error::Ebpf(format!("reading CONFIG: {e}")))?;
        let kind = HashKind::from_u32(cfg.hash)
            .ok_or_else(|| Error::Ebpf(format!("CONFIG holds an unknown hash kind {}", cfg.hash)))?;
        let table = match kind {
            HashKind::Toeplitz => Some(Box::new(
                toeplitz.get(&0, 0).map_err(|e| Error::Ebpf(format!("reading TOEPLITZ: {e}")))?,
            )),
            HashKind::Fast => None,
        };
        Ok(Self { kind, seed: cfg.seed, symmetric: cfg.symmetric != 0, table, mask: cfg.rfs_mask })
    }

    /// `key`'s slot and flow hash (the slot's tag), as the XDP program and the hook compute them.
    pub fn slot(&self, key: &FlowKey) -> Option<(u32, u32)> {
        let h =
            hash::flow_hash(self.kind, self.seed, self.symmetric, self.table.as_deref(), &key.to_tuple())?;
        Some((h & self.mask, h))
    }
}

/// [`SlotHash`] of a loaded object.
pub fn slot_hash(ebpf: &Ebpf) -> Result<SlotHash> {
    let get = |name: &str| ebpf.map(name).ok_or_else(|| Error::Ebpf(format!("map {name} missing")));
    let config = Array::<_, SteerConfig>::try_from(get(map::CONFIG)?).map_err(Error::ebpf)?;
    let toeplitz = Array::<_, ToeplitzTable>::try_from(get(map::TOEPLITZ)?).map_err(Error::ebpf)?;
    SlotHash::from_maps(&config, &toeplitz)
}

/// A flow as `steer flows` shows it: the hook's record joined with its slot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowView {
    pub entry: FlowEntry,
    /// The flow's slot.
    pub slot: u32,
    /// Where its packets go now (`None`: RSS).
    pub cpu: Option<u32>,
    /// The CPU it was last read on (the hook's record).
    pub want_cpu: u32,
    /// Packets, moves and the queued mark of the slot (shared with colliding flows).
    pub pkts: u64,
    pub moves: u32,
    pub queued: bool,
    /// The slot holds another flow's wish (a collision): this flow follows it.
    pub shared: bool,
}

impl FlowView {
    pub fn join<W: Borrow<MapData>, S: Borrow<MapData>>(
        key: &FlowKey,
        e: &FlowEntry,
        hash: &SlotHash,
        want: &Array<W, u64>,
        slots: &Array<S, FlowSlot>,
    ) -> Self {
        let Some((slot, h)) = hash.slot(key) else {
            return Self { entry: *e, want_cpu: e.want_cpu, ..Default::default() };
        };
        let w = want.get(&slot, 0).unwrap_or(0);
        let s = slots.get(&slot, 0).unwrap_or_default();
        Self {
            entry: *e,
            slot,
            cpu: s.cpu(),
            want_cpu: e.want_cpu,
            pkts: s.pkts,
            moves: s.moves,
            queued: s.queued != 0,
            shared: w != 0 && flow::want_tag(w) != h,
        }
    }
}

/// The two slot arrays: the hook's wishes and the XDP program's state.
type SlotArrays<M> = (Array<M, u64>, Array<M, FlowSlot>);

fn arrays(ebpf: &Ebpf) -> Result<SlotArrays<&MapData>> {
    let get = |name: &str| ebpf.map(name).ok_or_else(|| Error::Ebpf(format!("map {name} missing")));
    Ok((
        Array::try_from(get(map::RFS_WANT)?).map_err(Error::ebpf)?,
        Array::try_from(get(map::RFS_SLOTS)?).map_err(Error::ebpf)?,
    ))
}

/// `key`'s record joined with its slot in a loaded object, `None` when it is not in the table.
pub fn view(ebpf: &Ebpf, key: &FlowKey) -> Result<Option<FlowView>> {
    let flows: HashMap<_, FlowKey, FlowEntry> =
        HashMap::try_from(ebpf.map(map::FLOWS).ok_or_else(|| Error::Ebpf("map FLOWS missing".into()))?)
            .map_err(Error::ebpf)?;
    let Ok(e) = flows.get(key, 0) else { return Ok(None) };
    let (want, slots) = arrays(ebpf)?;
    Ok(Some(FlowView::join(key, &e, &slot_hash(ebpf)?, &want, &slots)))
}

/// Slot `slot` of a loaded object: the hook's wish and the XDP program's state.
pub fn get_slot(ebpf: &Ebpf, slot: u32) -> Result<(u64, FlowSlot)> {
    let (want, slots) = arrays(ebpf)?;
    Ok((want.get(&slot, 0).map_err(Error::ebpf)?, slots.get(&slot, 0).map_err(Error::ebpf)?))
}

/// Writes slot `slot` of a loaded object (tests, the bench): the wish, then the state.
pub fn set_slot(ebpf: &mut Ebpf, slot: u32, want: u64, state: FlowSlot) -> Result<()> {
    let [Some(w), Some(s)] = ebpf.maps_disjoint_mut([map::RFS_WANT, map::RFS_SLOTS]) else {
        return Err(Error::Ebpf("map RFS_WANT or RFS_SLOTS missing".into()));
    };
    Array::<_, u64>::try_from(w).map_err(Error::ebpf)?.set(slot, want, 0).map_err(Error::ebpf)?;
    Array::<_, FlowSlot>::try_from(s).map_err(Error::ebpf)?.set(slot, state, 0).map_err(Error::ebpf)
}

/// Puts `key` in a loaded object's table as the hook would after a read on
/// `cpu`, with its slot already steering there when `steered` (tests, the
/// bench). Returns the flow's slot.
pub fn insert_flow(ebpf: &mut Ebpf, key: &FlowKey, cpu: u32, steered: bool) -> Result<u32> {
    let hash = slot_hash(ebpf)?;
    let (slot, h) = hash.slot(key).ok_or_else(|| Error::Ebpf("no hash for the flow".into()))?;
    let mut flows: HashMap<_, FlowKey, FlowEntry> =
        HashMap::try_from(ebpf.map_mut(map::FLOWS).ok_or_else(|| Error::Ebpf("map FLOWS missing".into()))?)
            .map_err(Error::ebpf)?;
    flows.insert(key, FlowEntry { want_cpu: cpu, ..Default::default() }, 0).map_err(Error::ebpf)?;
    let state = FlowSlot { cur: if steered { cpu + 1 } else { 0 }, ..Default::default() };
    set_slot(ebpf, slot, flow::want(h, cpu), state)?;
    Ok(slot)
}

/// Empties `key`'s slot if it still holds this flow's wish (expiry): the slot
/// moves back to RSS through the XDP program's gate.
pub(super) fn unwish<W: BorrowMut<MapData>>(
    want: &mut Array<W, u64>,
    hash: &SlotHash,
    key: &FlowKey,
) -> Result<()> {
    let Some((slot, h)) = hash.slot(key) else { return Ok(()) };
    let w = want.get(&slot, 0).unwrap_or(0);
    if w != 0 && flow::want_tag(w) == h {
        want.set(slot, 0, 0).map_err(|e| Error::Ebpf(format!("emptying RFS slot {slot}: {e}")))?;
    }
    Ok(())
}

/// Empties every slot whose wish belongs to no flow of the table (the LRU
/// evicted it; no event tells the hook). A flow recorded meanwhile whose wish
/// goes with them writes it again on its next read. Returns how many.
pub fn sweep_orphans<F: Borrow<MapData>, W: BorrowMut<MapData>>(
    flows: &HashMap<F, FlowKey, FlowEntry>,
    want: &mut Array<W, u64>,
    hash: &SlotHash,
) -> Result<u64> {
    let live: std::collections::HashSet<(u32, u32)> =
        flows.keys().filter_map(|k| k.ok()).filter_map(|k| hash.slot(&k)).collect();
    let mut n = 0;
    for slot in 0..want.len() {
        let w = want.get(&slot, 0).unwrap_or(0);
        if w != 0 && !live.contains(&(slot, flow::want_tag(w))) {
            want.set(slot, 0, 0).map_err(|e| Error::Ebpf(format!("emptying RFS slot {slot}: {e}")))?;
            n += 1;
        }
    }
    Ok(n)
}

/// Refills the slots for a new hash (`hash`): every slot is emptied (RSS, its
/// state reset), then each flow of the table gets its reader's CPU as the
/// wish of its new slot, where it starts like a new flow: on RSS until it
/// pauses. Call with RFS paused in CONFIG (the XDP program then reads no
/// slot), so that no packet meets a slot filled for the old hash.
pub fn rebuild(ebpf: &mut Ebpf, hash: &SlotHash) -> Result<()> {
    let [Some(f), Some(w), Some(s)] = ebpf.maps_disjoint_mut([map::FLOWS, map::RFS_WANT, map::RFS_SLOTS])
    else {
        return Err(Error::Ebpf("map FLOWS, RFS_WANT or RFS_SLOTS missing".into()));
    };
    let flows: HashMap<_, FlowKey, FlowEntry> = HashMap::try_from(&*f).map_err(Error::ebpf)?;
    let mut want = Array::<_, u64>::try_from(w).map_err(Error::ebpf)?;
    let mut state = Array::<_, FlowSlot>::try_from(s).map_err(Error::ebpf)?;
    let err = |e: aya::maps::MapError| Error::Ebpf(format!("rebuilding the RFS slots: {e}"));
    for slot in 0..want.len() {
        want.set(slot, 0, 0).map_err(err)?;
        state.set(slot, FlowSlot::default(), 0).map_err(err)?;
    }
    for (k, e) in flows.iter().filter_map(|r| r.ok()) {
        if let Some((slot, h)) = hash.slot(&k) {
            want.set(slot, flow::want(h, e.want_cpu), 0).map_err(err)?;
        }
    }
    Ok(())
}
