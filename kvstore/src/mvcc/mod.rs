//! The multi-version keyspace: every write gets the next global revision, every key keeps
//! its history (create/mod revision, version) until compaction, reads can ask for any
//! revision at or after the compaction point.
//!
//! Layout (as etcd's): `index`, in memory, maps each key to the revisions that touched it,
//! each with what a read needs besides the value (create and mod revision, version, lease,
//! tombstone), as etcd's treeIndex; so counts, keys-only reads, comparisons other than by
//! value and a put's bookkeeping never touch the disk. The records themselves (the
//! key-value written at each revision position) live in the backend, one key each (see
//! [`crate::history`]), and the latest ones also in `tail`, in memory: every record the
//! backend may not hold yet (the backend writer trails the state machine by up to a
//! batch), and the most recent beyond those up to `TAIL_BYTES`, from which watchers of
//! the present and reads of fresh values are served. Memory then grows with the number of
//! keys and revisions, not with the size of the values or of the history's records.
//!
//! A keyspace with no backend (unit tests, fuzzing, a snapshot being checked) keeps every
//! record in `tail`.

pub mod keyrange;
mod range;

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;

pub use keyrange::KeyRange;
pub use range::RangeResult;

use crate::backend::{Backend, keys};
use crate::error::{Error, Result};
use crate::proto::mvccpb::{Event, KeyValue, event::EventType};

/// Bytes of the latest records kept in memory beyond those the backend may not hold yet.
const TAIL_BYTES: u64 = 16 * 1024 * 1024;
/// What a record in `tail` costs besides its key and value (its position, its key-value's
/// other fields, the slot).
const RECORD_OVERHEAD: u64 = 128;

/// One record in the history: the key-value written at a revision, or a tombstone.
#[derive(Debug, Clone)]
pub struct Record {
    pub kv: KeyValue,
    pub tombstone: bool,
}

/// How much one batch of watch events may hold (whole revisions are never split, so a
/// single large revision can exceed it).
#[derive(Debug, Clone, Copy)]
pub struct EventLimit {
    pub events: usize,
    pub bytes: usize,
    /// Revisions examined per call, whether or not they hold a matching event: bounds how long
    /// one call holds the keyspace, however far back a watcher starts.
    pub revisions: usize,
}

/// What [`Mvcc::events`] gathered, and how far it looked.
#[derive(Debug, Default)]
pub struct Events {
    /// Matching events, grouped by revision.
    pub batches: Vec<(i64, Vec<Event>)>,
    /// The last revision examined: the next call starts after it.
    pub upto: i64,
}

/// Where a record sits in the history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Rev {
    pub main: i64,
    pub sub: i64,
}

/// One revision of a key, as the index holds it: everything of its record but the key
/// (the index's) and the value (the backend's).
#[derive(Debug, Clone, Copy)]
pub struct IndexEntry {
    pub rev: Rev,
    pub create_revision: i64,
    pub version: i64,
    pub lease: i64,
    /// Bytes of the record's key and value.
    size: u32,
    pub tombstone: bool,
}

impl IndexEntry {
    fn of(rev: Rev, rec: &Record) -> IndexEntry {
        IndexEntry {
            rev,
            create_revision: rec.kv.create_revision,
            version: rec.kv.version,
            lease: rec.kv.lease,
            size: u32::try_from(record_bytes(rec)).unwrap_or(u32::MAX),
            tombstone: rec.tombstone,
        }
    }

    /// The key-value this entry describes, without its value.
    pub fn key_value(&self, key: &Bytes) -> KeyValue {
        KeyValue {
            key: key.clone(),
            create_revision: self.create_revision,
            mod_revision: self.rev.main,
            version: self.version,
            value: Bytes::new(),
            lease: self.lease,
        }
    }
}

/// The records of one main revision, by sub-revision, ascending. Sparse: a sub-revision
/// compacted away leaves no slot, and a stored position costs one entry however large it is.
type Slots = Vec<(i64, Record)>;

/// The keyspace.
pub struct Mvcc {
    index: BTreeMap<Bytes, Vec<IndexEntry>>,
    /// The latest records (see the module's doc): every record at a main revision at or
    /// after `tail_from`; the backend holds every one before it.
    tail: BTreeMap<i64, Slots>,
    tail_from: i64,
    tail_bytes: u64,
    store: Option<Arc<dyn Backend>>,
    current: i64,
    compacted: i64,
    /// Key and value bytes of the records held (what `/metrics` reports in use).
    stored: u64,
}

impl std::fmt::Debug for Mvcc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mvcc")
            .field("keys", &self.index.len())
            .field("tail_revisions", &self.tail.len())
            .field("tail_from", &self.tail_from)
            .field("on_disk", &self.store.is_some())
            .field("current", &self.current)
            .field("compacted", &self.compacted)
            .finish()
    }
}

impl Default for Mvcc {
    fn default() -> Self {
        Mvcc {
            index: BTreeMap::new(),
            tail: BTreeMap::new(),
            tail_from: 0,
            tail_bytes: 0,
            store: None,
            // etcd's store starts at revision 1, so the first write is revision 2.
            current: 1,
            compacted: 0,
            stored: 0,
        }
    }
}

impl Mvcc {
    /// The revision of the latest write.
    pub fn current_revision(&self) -> i64 {
        self.current
    }

    /// The revision history was compacted at (0 when never compacted).
    pub fn compact_revision(&self) -> i64 {
        self.compacted
    }

    /// Bytes of the keys and values of every record the history holds.
    pub fn stored_bytes(&self) -> u64 {
        self.stored
    }

    /// Number of live keys.
    pub fn live_keys(&self) -> usize {
        self.index
            .values()
            .filter(|h| h.last().is_some_and(|e| !e.tombstone))
            .count()
    }

    /// Records held in memory (the tail), and their bytes as counted against `TAIL_BYTES`.
    pub fn records_in_memory(&self) -> (usize, u64) {
        (self.tail.values().map(Vec::len).sum(), self.tail_bytes)
    }

    /// A checksum of the history held up to main revision `rev` (0: the latest), for
    /// comparing members (etcd's HashKV): every record's position, tombstone flag and
    /// key-value, in revision order. Members that applied the same log hold the same records
    /// (compaction is replicated too), so equal revisions give equal hashes.
    pub fn hash_kv(&self, rev: i64) -> Result<u32> {
        let upto = self.hash_upto(rev)?;
        let mut h = crc32fast::Hasher::new();
        self.hash_step(&mut h, 0, upto, usize::MAX)?;
        Ok(h.finalize())
    }

    /// The revision a hash at `rev` covers (0: the latest), or etcd's error for it.
    pub fn hash_upto(&self, rev: i64) -> Result<i64> {
        if rev > self.current_revision() {
            return Err(Error::FutureRevision);
        }
        if rev > 0 && rev <= self.compact_revision() {
            return Err(Error::Compacted);
        }
        Ok(if rev == 0 {
            self.current_revision()
        } else {
            rev
        })
    }

    /// Adds to `h` the records held at main revisions `from..=to`, as [`Mvcc::hash_kv`]
    /// hashes them, stopping before the first main revision met once `limit` records are
    /// hashed; returns that revision, where the next step starts (`None`: done). A history
    /// hashed in steps has the hash of one pass, as long as no compaction came in between.
    pub fn hash_step(
        &self,
        h: &mut crc32fast::Hasher,
        from: i64,
        to: i64,
        limit: usize,
    ) -> Result<Option<i64>> {
        let mut hashed = 0usize;
        let mut last_main = None;
        let mut next = None;
        self.walk(from, to, |at, r| {
            if hashed >= limit && last_main != Some(at.main) {
                next = Some(at.main);
                return Ok(false);
            }
            hashed += 1;
            last_main = Some(at.main);
            hash_record(h, at, r);
            Ok(true)
        })?;
        Ok(next)
    }

    /// Calls `f` with every record held at a main revision in `from..=to`, in revision order,
    /// until it returns false: those before the tail from the backend, the rest from memory.
    pub fn walk(
        &self,
        from: i64,
        to: i64,
        mut f: impl FnMut(Rev, &Record) -> Result<bool>,
    ) -> Result<()> {
        self.walk_in(from, to, None, |rev, r| match r {
            Some(r) => f(rev, r),
            None => Ok(true),
        })
    }

    /// [`Mvcc::walk`] for the records whose keys fall in `range` (all when `None`); a record
    /// outside it is passed as `None`, undecoded (a watcher far behind reads the history
    /// from the backend and most of it is other keys': their values are never decoded).
    pub fn walk_in(
        &self,
        from: i64,
        to: i64,
        range: Option<&KeyRange>,
        mut f: impl FnMut(Rev, Option<&Record>) -> Result<bool>,
    ) -> Result<()> {
        if from > to {
            return Ok(());
        }
        if from < self.tail_from
            && let Some(store) = &self.store
        {
            let disk_to = to.min(self.tail_from - 1);
            let lo = keys::rev(from.max(0), 0);
            let hi = match disk_to.checked_add(1) {
                Some(end) => keys::rev(end, 0),
                None => keys::REV_END.to_vec(),
            };
            let mut go_on = true;
            store.scan(&lo, &hi, &mut |k, v| {
                let (main, sub) = keys::parse_rev(k)
                    .ok_or_else(|| Error::Corrupt(format!("record key of {} bytes", k.len())))?;
                let rev = Rev { main, sub };
                let peeked = crate::history::peek_key(v);
                if let (Some(range), Some(key)) = (range, peeked)
                    && !range.contains(key)
                {
                    // A compaction deletes its records from the backend a batch later than
                    // from the index: below the compaction point, only what the index
                    // holds counts (as below).
                    if main > self.compacted || self.holds(key, rev) {
                        go_on = f(rev, None)?;
                    }
                    return Ok(go_on);
                }
                let rec = crate::history::decode(v, rev)?;
                if main <= self.compacted && !self.holds(&rec.kv.key, rev) {
                    return Ok(true);
                }
                let inside = range.is_none_or(|r| r.contains(&rec.kv.key));
                go_on = f(rev, inside.then_some(&rec))?;
                Ok(go_on)
            })?;
            if !go_on {
                return Ok(());
            }
        }
        let start = from.max(self.tail_from);
        if start > to {
            // Everything asked for lies before the tail (BTreeMap::range panics on start > end).
            return Ok(());
        }
        for (main, slots) in self.tail.range(start..=to) {
            for (sub, r) in slots {
                let inside = range.is_none_or(|range| range.contains(&r.kv.key));
                let rev = Rev {
                    main: *main,
                    sub: *sub,
                };
                if !f(rev, inside.then_some(r))? {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// True when `key`'s history still holds a record at `rev`.
    fn holds(&self, key: &[u8], rev: Rev) -> bool {
        self.index
            .get(key)
            .is_some_and(|h| h.binary_search_by_key(&rev, |e| e.rev).is_ok())
    }

    /// Rebuilds a keyspace in memory (no backend) from records (any order, each position
    /// once) and the compaction point. The records come from another member's snapshot or a fuzzer: a
    /// position no history can hold (a revision below 1 or at the very top of the range,
    /// where the next revision would overflow; a record index below 0; a compaction point
    /// outside the range) is refused as corruption.
    pub fn restore(records: Vec<(Rev, Record)>, compacted: i64) -> Result<Mvcc> {
        let mut m = Mvcc::empty(compacted)?;
        let mut records = records;
        for (rev, _) in &records {
            check_position(*rev)?;
        }
        records.sort_by_key(|(rev, _)| *rev);
        if let Some(w) = records.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(Error::Corrupt(format!(
                "two stored records at revision {}.{}",
                w[0].0.main, w[0].0.sub
            )));
        }
        for (rev, rec) in records {
            m.insert(rev, rec);
        }
        Ok(m)
    }

    /// Loads the keyspace of `store`: the key index from every record on disk (the values
    /// are read and dropped), nothing in memory but the index. Also returns the positions of
    /// records still on disk that the compaction at `compacted` removed (to be deleted).
    pub fn load(store: Arc<dyn Backend>, compacted: i64) -> Result<(Mvcc, Vec<Rev>)> {
        let mut m = Mvcc::empty(compacted)?;
        let mut last: Option<Rev> = None;
        store.scan(keys::REV_PREFIX, keys::REV_END, &mut |k, v| {
            let (main, sub) = keys::parse_rev(k)
                .ok_or_else(|| Error::Corrupt(format!("record key of {} bytes", k.len())))?;
            let rev = Rev { main, sub };
            check_position(rev)?;
            if last.is_some_and(|l| l >= rev) {
                return Err(Error::Corrupt(format!("record {main}.{sub} out of order")));
            }
            last = Some(rev);
            let rec = crate::history::decode(v, rev)?;
            let entry = IndexEntry::of(rev, &rec);
            m.stored += u64::from(entry.size);
            let hist = m.index.entry(rec.kv.key).or_default();
            push_history(hist, entry);
            m.current = m.current.max(main);
            Ok(true)
        })?;
        m.tail_from = m.current + 1;
        m.store = Some(store);
        // Records a compaction removed from the index but not yet from the disk (they are
        // deleted in runs after it, see `apply`): out of the index again, and named so
        // the caller deletes them.
        let leftovers = m.drop_superseded(compacted);
        Ok((m, leftovers))
    }

    fn empty(compacted: i64) -> Result<Mvcc> {
        if !(0..i64::MAX).contains(&compacted) {
            return Err(Error::Corrupt(format!("compaction point {compacted}")));
        }
        Ok(Mvcc {
            compacted,
            current: compacted.max(1),
            ..Mvcc::default()
        })
    }

    fn insert(&mut self, rev: Rev, rec: Record) {
        let entry = IndexEntry::of(rev, &rec);
        let hist = self.index.entry(rec.kv.key.clone()).or_default();
        push_history(hist, entry);
        self.stored += u64::from(entry.size);
        self.put_tail(rev, rec);
    }

    /// Holds `rec` at `rev` in the tail (its key's history is updated by the caller).
    fn put_tail(&mut self, rev: Rev, rec: Record) {
        self.tail_bytes += record_bytes(&rec) + RECORD_OVERHEAD;
        let slots = self.tail.entry(rev.main).or_default();
        match slots.binary_search_by_key(&rev.sub, |(sub, _)| *sub) {
            Ok(at) => {
                let old = std::mem::replace(&mut slots[at].1, rec);
                self.tail_bytes = self
                    .tail_bytes
                    .saturating_sub(record_bytes(&old) + RECORD_OVERHEAD);
                self.stored = self.stored.saturating_sub(record_bytes(&old));
            }
            Err(at) => {
                if slots.capacity() == 0 {
                    slots.reserve_exact(1);
                }
                slots.insert(at, (rev.sub, rec));
            }
        }
        self.current = self.current.max(rev.main);
    }

    /// Lets go of the oldest records in memory that the backend holds, down to
    /// `TAIL_BYTES`. Called by the state machine after each run of applied entries.
    pub fn release_written(&mut self) {
        let Some(store) = &self.store else { return };
        let written = store.written_revision();
        while self.tail_bytes > TAIL_BYTES {
            let Some(first) = self.tail.first_entry() else {
                break;
            };
            let main = *first.key();
            if main > written {
                break;
            }
            let gone: u64 = first
                .remove()
                .iter()
                .map(|(_, r)| record_bytes(r) + RECORD_OVERHEAD)
                .sum();
            self.tail_bytes = self.tail_bytes.saturating_sub(gone);
            self.tail_from = main + 1;
        }
    }

    /// Checks a requested read revision; returns the revision to read at.
    pub fn read_revision(&self, rev: i64) -> Result<i64> {
        if rev > self.current {
            return Err(Error::FutureRevision);
        }
        let rev = if rev <= 0 { self.current } else { rev };
        if rev < self.compacted {
            return Err(Error::Compacted);
        }
        Ok(rev)
    }

    /// The index entry of `key`'s record as of revision `rev`, if the key was live then.
    pub fn entry_at(&self, key: &[u8], rev: i64) -> Option<&IndexEntry> {
        visible(self.index.get(key)?, rev)
    }

    /// The key-value of `key` as of revision `rev`, if it was live then (its value read
    /// from memory or the backend).
    pub fn get_at(&self, key: &[u8], rev: i64) -> Result<Option<KeyValue>> {
        match self.index.get_key_value(key) {
            Some((k, hist)) => match visible(hist, rev) {
                Some(e) => self.key_value(k, e, true).map(Some),
                None => Ok(None),
            },
            None => Ok(None),
        }
    }

    /// The key-value `e` describes; its value only when `with_value` (from memory or the
    /// backend; the rest comes from the index).
    pub fn key_value(&self, key: &Bytes, e: &IndexEntry, with_value: bool) -> Result<KeyValue> {
        if !with_value {
            return Ok(e.key_value(key));
        }
        match self.record(e.rev)? {
            Some(r) if !r.tombstone && r.kv.key == *key => Ok(r.kv),
            _ => Err(Error::Corrupt(format!(
                "the record of revision {}.{} is missing",
                e.rev.main, e.rev.sub
            ))),
        }
    }

    /// The record at `rev`, from memory or the backend.
    fn record(&self, rev: Rev) -> Result<Option<Record>> {
        if rev.main >= self.tail_from {
            return Ok(self.tail.get(&rev.main).and_then(|slots| {
                slots
                    .binary_search_by_key(&rev.sub, |(sub, _)| *sub)
                    .ok()
                    .map(|at| slots[at].1.clone())
            }));
        }
        let Some(store) = &self.store else {
            return Ok(None);
        };
        match store.get(&keys::rev(rev.main, rev.sub))? {
            Some(v) => crate::history::decode(&v, rev).map(Some),
            None => Ok(None),
        }
    }

    /// Calls `f` with every key live at `rev` inside `range` and its index entry, in key
    /// order, until `f` returns false.
    pub fn scan_entries(
        &self,
        range: &KeyRange,
        rev: i64,
        mut f: impl FnMut(&Bytes, &IndexEntry) -> Result<bool>,
    ) -> Result<()> {
        let Some(bounds) = range.bounds() else {
            return Ok(());
        };
        for (key, hist) in self.index.range::<[u8], _>(bounds) {
            if let Some(e) = visible(hist, rev)
                && !f(key, e)?
            {
                break;
            }
        }
        Ok(())
    }

    /// Calls `f` with every key-value live at `rev` inside `range`, in key order, until
    /// `f` returns false; values are read only `with_values`.
    pub fn scan_at(
        &self,
        range: &KeyRange,
        rev: i64,
        with_values: bool,
        mut f: impl FnMut(KeyValue) -> bool,
    ) -> Result<()> {
        self.scan_entries(range, rev, |key, e| {
            Ok(f(self.key_value(key, e, with_values)?))
        })
    }

    /// Starts a write at the next revision. Reads through the transaction see its writes.
    pub fn write(&mut self) -> WriteTxn<'_> {
        let rev = self.current + 1;
        WriteTxn {
            mvcc: self,
            rev,
            written: Vec::new(),
        }
    }

    /// The events of revisions `from..=to` whose keys fall in `range`, grouped by revision.
    /// `prev_kv` fills each event's previous key-value (as of the revision before it).
    /// It stops between revisions once `limit` is reached (events, bytes, or revisions
    /// examined) and says in [`Events::upto`] how far it got.
    pub fn events(
        &self,
        from: i64,
        to: i64,
        range: &KeyRange,
        prev_kv: bool,
        limit: EventLimit,
    ) -> Result<Events> {
        let mut out = Events {
            batches: Vec::new(),
            upto: to,
        };
        let (mut total, mut bytes, mut examined) = (0usize, 0usize, 0usize);
        let mut group: Option<(i64, Vec<Event>)> = None;
        self.walk_in(from, to, Some(range), |rev, rec| {
            if group.as_ref().is_some_and(|(main, _)| *main != rev.main)
                && let Some((main, evs)) = group.take()
            {
                examined += 1;
                if !evs.is_empty() {
                    total += evs.len();
                    bytes += evs.iter().map(prost::Message::encoded_len).sum::<usize>();
                    out.batches.push((main, evs));
                }
                // Never split a revision; stop between revisions once enough is gathered
                // or seen.
                if total >= limit.events || bytes >= limit.bytes || examined >= limit.revisions {
                    out.upto = main;
                    return Ok(false);
                }
            }
            let (_, evs) = group.get_or_insert_with(|| (rev.main, Vec::new()));
            if let Some(rec) = rec {
                let prev = if prev_kv {
                    self.get_at(&rec.kv.key, rev.main - 1)?
                } else {
                    None
                };
                evs.push(Event {
                    r#type: if rec.tombstone {
                        EventType::Delete as i32
                    } else {
                        EventType::Put as i32
                    },
                    kv: Some(rec.kv.clone()),
                    prev_kv: prev,
                });
            }
            Ok(true)
        })?;
        if let Some((main, evs)) = group
            && !evs.is_empty()
        {
            out.batches.push((main, evs));
        }
        Ok(out)
    }

    /// Drops from the index every record at or below `rev` that a later one of its key at
    /// or below `rev` supersedes, and a tombstone at or below `rev` that is its key's
    /// latest there; returns their positions.
    fn drop_superseded(&mut self, rev: i64) -> Vec<Rev> {
        let mut removed = Vec::new();
        let mut freed = 0u64;
        self.index.retain(|_, hist| {
            let pos = hist.partition_point(|e| e.rev.main <= rev);
            if pos == 0 {
                return true;
            }
            let keep_last = !hist[pos - 1].tombstone;
            let drop_to = if keep_last { pos - 1 } else { pos };
            removed.extend(hist.drain(..drop_to).map(|e| {
                freed += u64::from(e.size);
                e.rev
            }));
            !hist.is_empty()
        });
        self.stored = self.stored.saturating_sub(freed);
        removed
    }

    /// Drops history before `rev`: per key, the latest record at or below `rev` is kept
    /// unless it is a tombstone. Returns the positions removed (for the disk copy).
    pub fn compact(&mut self, rev: i64) -> Result<Vec<Rev>> {
        if rev <= self.compacted {
            return Err(Error::Compacted);
        }
        if rev > self.current {
            return Err(Error::FutureRevision);
        }
        let removed = self.drop_superseded(rev);
        for r in &removed {
            if r.main < self.tail_from {
                continue;
            }
            if let Some(slots) = self.tail.get_mut(&r.main) {
                if let Ok(at) = slots.binary_search_by_key(&r.sub, |(sub, _)| *sub) {
                    let (_, gone) = slots.remove(at);
                    self.tail_bytes = self
                        .tail_bytes
                        .saturating_sub(record_bytes(&gone) + RECORD_OVERHEAD);
                }
                if slots.is_empty() {
                    self.tail.remove(&r.main);
                }
            }
        }
        self.compacted = rev;
        Ok(removed)
    }
}

/// Adds one record to a [`Mvcc::hash_kv`] checksum (a backup's is computed the same way).
pub fn hash_record(h: &mut crc32fast::Hasher, at: Rev, r: &Record) {
    h.update(&at.main.to_be_bytes());
    h.update(&at.sub.to_be_bytes());
    h.update(&[u8::from(r.tombstone)]);
    let kv = &r.kv;
    h.update(&(kv.key.len() as u64).to_be_bytes());
    h.update(&kv.key);
    h.update(&(kv.value.len() as u64).to_be_bytes());
    h.update(&kv.value);
    for n in [kv.create_revision, kv.mod_revision, kv.version, kv.lease] {
        h.update(&n.to_be_bytes());
    }
}

/// Refuses a record position no history can hold.
pub fn check_position(rev: Rev) -> Result<()> {
    if rev.main < 1 || rev.main == i64::MAX || rev.sub < 0 {
        return Err(Error::Corrupt(format!(
            "stored record at revision {}.{}",
            rev.main, rev.sub
        )));
    }
    Ok(())
}

/// The entry a key's history `hist` shows as of revision `rev`, unless the key was
/// deleted or not yet written then.
fn visible(hist: &[IndexEntry], rev: i64) -> Option<&IndexEntry> {
    let pos = hist.partition_point(|e| e.rev.main <= rev);
    let e = hist.get(pos.checked_sub(1)?)?;
    (!e.tombstone).then_some(e)
}

/// What a record counts in [`Mvcc::stored_bytes`].
fn record_bytes(rec: &Record) -> u64 {
    (rec.kv.key.len() + rec.kv.value.len()) as u64
}

/// Adds a record's entry to its key's history.
fn push_history(hist: &mut Vec<IndexEntry>, entry: IndexEntry) {
    // Exact reservations: a vector's first growth reserves room for four records, and
    // most revisions hold one record and most keys see few writes; across 100k keys the
    // spare room would outweigh the data.
    if hist.len() == hist.capacity() {
        hist.reserve_exact(hist.len().max(1));
    }
    hist.push(entry);
}

/// A write in progress at one revision. Records are in the keyspace as soon as they are
/// written (so later operations of the same transaction see them); the revision counter
/// moves only if something was written.
pub struct WriteTxn<'a> {
    mvcc: &'a mut Mvcc,
    rev: i64,
    written: Vec<(Rev, Record)>,
}

impl WriteTxn<'_> {
    /// The revision reads inside this transaction see.
    pub fn read_rev(&self) -> i64 {
        if self.written.is_empty() {
            self.mvcc.current
        } else {
            self.rev
        }
    }

    /// The keyspace as this transaction sees it.
    pub fn view(&self) -> &Mvcc {
        self.mvcc
    }

    /// The live key-value of `key` (including this transaction's writes).
    pub fn get(&self, key: &[u8]) -> Result<Option<KeyValue>> {
        self.mvcc.get_at(key, self.rev)
    }

    /// True when `key` is live (including this transaction's writes).
    pub fn exists(&self, key: &[u8]) -> bool {
        self.mvcc.entry_at(key, self.rev).is_some()
    }

    /// Writes `key`; returns the previous key-value, with its value only when
    /// `prev_value` (the rest, from the index, is enough to move a lease).
    pub fn put(
        &mut self,
        key: Bytes,
        value: Bytes,
        lease: i64,
        prev_value: bool,
    ) -> Result<Option<KeyValue>> {
        let rev = Rev {
            main: self.rev,
            sub: self.written.len() as i64,
        };
        let m = &mut *self.mvcc;
        let prev = match m.index.get_key_value(&key[..]) {
            Some((k, hist)) => match visible(hist, rev.main) {
                Some(e) => Some(m.key_value(k, e, prev_value)?),
                None => None,
            },
            None => None,
        };
        let (create_revision, version) = match &prev {
            Some(p) => (p.create_revision, p.version + 1),
            None => (rev.main, 1),
        };
        let rec = Record {
            kv: KeyValue {
                key,
                create_revision,
                mod_revision: rev.main,
                version,
                value,
                lease,
            },
            tombstone: false,
        };
        self.written.push((rev, rec.clone()));
        m.insert(rev, rec);
        Ok(prev)
    }

    /// Deletes every live key in `range`; returns the deleted key-values, with their
    /// values only when `values`.
    pub fn delete_range(&mut self, range: &KeyRange, values: bool) -> Result<Vec<KeyValue>> {
        let mut victims = Vec::new();
        self.mvcc.scan_at(range, self.rev, values, |kv| {
            victims.push(kv);
            true
        })?;
        for kv in &victims {
            self.push(Record {
                kv: KeyValue {
                    key: kv.key.clone(),
                    mod_revision: self.rev,
                    ..KeyValue::default()
                },
                tombstone: true,
            });
        }
        Ok(victims)
    }

    fn push(&mut self, rec: Record) {
        let rev = Rev {
            main: self.rev,
            sub: self.written.len() as i64,
        };
        self.written.push((rev, rec.clone()));
        self.mvcc.insert(rev, rec);
    }

    /// Ends the transaction; returns what it wrote (empty for a no-op: no new revision).
    pub fn finish(self) -> Vec<(Rev, Record)> {
        self.written
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn revisions_and_versions() {
        let mut m = Mvcc::default();
        let mut t = m.write();
        t.put(b("a"), b("1"), 0, true).expect("put");
        assert_eq!(t.finish().len(), 1);
        assert_eq!(m.current_revision(), 2);
        let mut t = m.write();
        let prev = t.put(b("a"), b("2"), 0, true).expect("put");
        t.finish();
        assert_eq!(prev.map(|p| p.value), Some(b("1")));
        let kv = m.get_at(b"a", 3).expect("read").expect("live");
        assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 3, 2));
        assert_eq!(
            m.get_at(b"a", 2).expect("read").map(|k| k.value),
            Some(b("1"))
        );
        let mut t = m.write();
        assert_eq!(
            t.delete_range(&KeyRange::new(&b("a"), &Bytes::new()), true)
                .expect("delete")
                .len(),
            1
        );
        t.finish();
        assert!(m.get_at(b"a", 4).expect("read").is_none());
        let mut t = m.write();
        t.put(b("a"), b("3"), 0, true).expect("put");
        t.finish();
        let kv = m.get_at(b"a", 5).expect("read").expect("live");
        assert_eq!((kv.create_revision, kv.version), (5, 1));
    }

    #[test]
    fn noop_delete_keeps_revision() {
        let mut m = Mvcc::default();
        let mut t = m.write();
        assert!(
            t.delete_range(&KeyRange::new(&b("x"), &Bytes::new()), true)
                .expect("delete")
                .is_empty()
        );
        assert!(t.finish().is_empty());
        assert_eq!(m.current_revision(), 1);
    }

    #[test]
    fn compaction_keeps_latest() {
        let mut m = Mvcc::default();
        for v in ["1", "2", "3"] {
            let mut t = m.write();
            t.put(b("a"), b(v), 0, true).expect("put");
            t.finish();
        }
        let mut t = m.write();
        t.put(b("gone"), b("x"), 0, true).expect("put");
        t.finish();
        let mut t = m.write();
        t.delete_range(&KeyRange::new(&b("gone"), &Bytes::new()), false)
            .expect("delete");
        t.finish();
        // revs: a=2,3,4 gone=5, del=6
        let removed = m.compact(6).expect("compact");
        assert_eq!(removed.len(), 4);
        assert_eq!(
            m.get_at(b"a", 6).expect("read").map(|k| k.value),
            Some(b("3"))
        );
        assert_eq!(
            m.read_revision(5).err().map(|e| e.to_string()),
            Some(Error::Compacted.to_string())
        );
        assert!(m.read_revision(6).is_ok());
        assert!(matches!(m.compact(6), Err(Error::Compacted)));
        assert!(matches!(m.compact(99), Err(Error::FutureRevision)));
    }

    #[test]
    fn restore_round_trip() {
        let mut m = Mvcc::default();
        let mut all = Vec::new();
        for v in ["1", "2"] {
            let mut t = m.write();
            t.put(b("k"), b(v), 0, true).expect("put");
            t.put(b("j"), b(v), 0, true).expect("put");
            all.extend(t.finish());
        }
        let r = Mvcc::restore(all, 0).expect("restore");
        assert_eq!(r.current_revision(), 3);
        assert_eq!(r.get_at(b"j", 3).expect("read").map(|k| k.version), Some(2));
        let k = KeyRange::new(&b("k"), &Bytes::new());
        let lim = EventLimit {
            events: 100,
            bytes: 1 << 20,
            revisions: 100,
        };
        let all = r.events(2, 3, &k, true, lim).expect("events");
        assert_eq!((all.batches.len(), all.upto), (2, 3));
        let one = EventLimit {
            events: 100,
            bytes: 1,
            revisions: 100,
        };
        let first = r.events(2, 3, &k, true, one).expect("events");
        assert_eq!((first.batches.len(), first.upto), (1, 2));
    }

    /// A far-back watcher on an idle key walks the history in bounded steps: each call examines
    /// at most `revisions` revisions, and `upto` moves on even when none of them matched.
    #[test]
    fn events_walk_in_bounded_steps() {
        let mut m = Mvcc::default();
        for _ in 0..10 {
            let mut t = m.write();
            t.put(b("busy"), b("v"), 0, true).expect("put");
            t.finish();
        }
        let mut t = m.write();
        t.put(b("idle"), b("v"), 0, true).expect("put");
        t.finish();
        let to = m.current_revision();
        let idle = KeyRange::new(&b("idle"), &Bytes::new());
        let step = EventLimit {
            events: 100,
            bytes: 1 << 20,
            revisions: 4,
        };
        let (mut from, mut calls, mut found) = (1, 0, Vec::new());
        while from <= to {
            let e = m.events(from, to, &idle, false, step).expect("events");
            assert!(e.upto >= from && e.upto <= to);
            found.extend(e.batches);
            from = e.upto + 1;
            calls += 1;
        }
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].0, to);
        assert_eq!(calls, 3, "11 revisions in steps of 4");
    }

    /// Found by the snapshot fuzz target: a stored record index of 2^40 made restore allocate
    /// a slot vector that size and abort the process. Slots are sparse now; impossible
    /// positions are refused.
    #[test]
    fn restore_refuses_impossible_positions() {
        let rec = |main, sub| {
            (
                Rev { main, sub },
                Record {
                    kv: KeyValue {
                        key: b("k"),
                        ..Default::default()
                    },
                    tombstone: false,
                },
            )
        };
        // A large record index (a revision that deleted many keys, the rest compacted) is fine.
        let m = Mvcc::restore(vec![rec(2, 0), rec(3, 1 << 40)], 0).expect("sparse");
        assert_eq!(m.records_in_memory().0, 2);
        for bad in [
            rec(2, -1),
            rec(0, 0),
            rec(-5, 3),
            rec(i64::MAX, 0),
            rec(2, 0),
        ] {
            let e = Mvcc::restore(vec![rec(2, 0), bad], 0).expect_err("impossible position");
            assert!(e.to_string().contains("stored record"), "{e}");
        }
        assert!(Mvcc::restore(vec![rec(2, 0)], i64::MAX).is_err());
        assert!(Mvcc::restore(vec![rec(2, 0)], -1).is_err());
    }
}
