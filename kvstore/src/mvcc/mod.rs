//! The multi-version keyspace: every write gets the next global revision, every key keeps
//! its history (create/mod revision, version) until compaction, reads can ask for any
//! revision at or after the compaction point.
//!
//! Layout (as etcd's): `index` maps each key to the revisions that touched it; `log` maps
//! each main revision to the records written at it (one per sub-revision). The record
//! itself is stored once, in `log`; watchers read history straight from `log`.

pub mod keyrange;
mod range;

use std::collections::BTreeMap;

use bytes::Bytes;

pub use keyrange::KeyRange;
pub use range::RangeResult;

use crate::error::{Error, Result};
use crate::proto::mvccpb::{Event, KeyValue, event::EventType};

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

#[derive(Debug, Clone, Copy)]
struct IndexEntry {
    rev: Rev,
    tombstone: bool,
}

/// The records of one main revision, by sub-revision, ascending. Sparse: a sub-revision
/// compacted away leaves no slot, and a stored position costs one entry however large it is.
type Slots = Vec<(i64, Record)>;

/// The keyspace.
#[derive(Debug)]
pub struct Mvcc {
    index: BTreeMap<Bytes, Vec<IndexEntry>>,
    log: BTreeMap<i64, Slots>,
    current: i64,
    compacted: i64,
    /// Key and value bytes of the records held (what `/metrics` reports in use).
    stored: u64,
}

impl Default for Mvcc {
    fn default() -> Self {
        Mvcc {
            index: BTreeMap::new(),
            log: BTreeMap::new(),
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

    /// A checksum of the history held up to main revision `rev` (0: the latest), for
    /// comparing members (etcd's HashKV): every record's position, tombstone flag and
    /// key-value, in revision order. Members that applied the same log hold the same records
    /// (compaction is replicated too), so equal revisions give equal hashes.
    pub fn hash_kv(&self, rev: i64) -> Result<u32> {
        if rev > self.current_revision() {
            return Err(Error::FutureRevision);
        }
        if rev > 0 && rev <= self.compact_revision() {
            return Err(Error::Compacted);
        }
        let rev = if rev == 0 {
            self.current_revision()
        } else {
            rev
        };
        let mut h = crc32fast::Hasher::new();
        for (at, r) in self.records_in(..=rev) {
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
        Ok(h.finalize())
    }

    /// Every record held (history since the compaction point), in revision order.
    pub fn records(&self) -> impl Iterator<Item = (Rev, &Record)> {
        self.records_in(..)
    }

    /// The records held at main revisions inside `mains`, in revision order.
    pub fn records_in(
        &self,
        mains: impl std::ops::RangeBounds<i64>,
    ) -> impl Iterator<Item = (Rev, &Record)> {
        self.log.range(mains).flat_map(|(main, slots)| {
            slots.iter().map(move |(sub, r)| {
                (
                    Rev {
                        main: *main,
                        sub: *sub,
                    },
                    r,
                )
            })
        })
    }

    /// Rebuilds the keyspace from stored records (any order) and the compaction point. The
    /// records come from disk or from another member's snapshot: a position no history can
    /// hold (a revision below 1 or at the very top of the range, where the next revision would
    /// overflow; a record index below 0; a compaction point outside the range) is refused as
    /// corruption.
    pub fn restore(records: Vec<(Rev, Record)>, compacted: i64) -> Result<Mvcc> {
        let mut m = Mvcc {
            compacted,
            current: compacted.max(1),
            ..Mvcc::default()
        };
        let mut records = records;
        if !(0..i64::MAX).contains(&compacted) {
            return Err(Error::Corrupt(format!("compaction point {compacted}")));
        }
        if let Some((rev, _)) = records
            .iter()
            .find(|(rev, _)| rev.main < 1 || rev.main == i64::MAX || rev.sub < 0)
        {
            return Err(Error::Corrupt(format!(
                "stored record at revision {}.{}",
                rev.main, rev.sub
            )));
        }
        records.sort_by_key(|(rev, _)| *rev);
        for (rev, rec) in records {
            m.insert(rev, rec);
        }
        Ok(m)
    }

    fn insert(&mut self, rev: Rev, rec: Record) {
        let hist = self.index.entry(rec.kv.key.clone()).or_default();
        push_history(hist, rev, rec.tombstone);
        self.put_log(rev, rec);
    }

    /// Stores `rec` at `rev` in the log (its key's history is updated by the caller).
    fn put_log(&mut self, rev: Rev, rec: Record) {
        self.stored += record_bytes(&rec);
        let slots = self.log.entry(rev.main).or_default();
        match slots.binary_search_by_key(&rev.sub, |(sub, _)| *sub) {
            Ok(at) => {
                let old = std::mem::replace(&mut slots[at].1, rec);
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

    /// The key-value of `key` as of revision `rev`, if it was live then.
    pub fn get_at(&self, key: &[u8], rev: i64) -> Option<&KeyValue> {
        let hist = self.index.get(key)?;
        self.visible(hist, rev)
    }

    fn visible<'a>(&'a self, hist: &[IndexEntry], rev: i64) -> Option<&'a KeyValue> {
        visible_in(&self.log, hist, rev)
    }

    /// Calls `f` with every key-value live at `rev` inside `range`, in key order, until
    /// `f` returns false.
    pub fn scan_at(&self, range: &KeyRange, rev: i64, mut f: impl FnMut(&KeyValue) -> bool) {
        let Some(bounds) = range.bounds() else { return };
        for (_, hist) in self.index.range::<[u8], _>(bounds) {
            if let Some(kv) = self.visible(hist, rev)
                && !f(kv)
            {
                return;
            }
        }
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
    ) -> Events {
        let mut out = Events {
            batches: Vec::new(),
            upto: to,
        };
        let mut total = 0;
        let mut bytes = 0;
        for (examined, (&rev, slots)) in self.log.range(from..=to).enumerate() {
            let mut evs = Vec::new();
            for (_, rec) in slots {
                if !range.contains(&rec.kv.key) {
                    continue;
                }
                let prev = if prev_kv {
                    self.get_at(&rec.kv.key, rev - 1).cloned()
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
            if !evs.is_empty() {
                total += evs.len();
                bytes += evs.iter().map(prost::Message::encoded_len).sum::<usize>();
                out.batches.push((rev, evs));
            }
            // Never split a revision; stop between revisions once enough is gathered or seen.
            if total >= limit.events || bytes >= limit.bytes || examined + 1 >= limit.revisions {
                out.upto = rev;
                break;
            }
        }
        out
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
        let mut removed = Vec::new();
        self.index.retain(|_, hist| {
            let pos = hist.partition_point(|e| e.rev.main <= rev);
            if pos == 0 {
                return true;
            }
            let keep_last = !hist[pos - 1].tombstone;
            let drop_to = if keep_last { pos - 1 } else { pos };
            removed.extend(hist.drain(..drop_to).map(|e| e.rev));
            !hist.is_empty()
        });
        for r in &removed {
            if let Some(slots) = self.log.get_mut(&r.main) {
                if let Ok(at) = slots.binary_search_by_key(&r.sub, |(sub, _)| *sub) {
                    let (_, gone) = slots.remove(at);
                    self.stored = self.stored.saturating_sub(record_bytes(&gone));
                }
                if slots.is_empty() {
                    self.log.remove(&r.main);
                }
            }
        }
        self.compacted = rev;
        Ok(removed)
    }
}

/// The key-value a key's history `hist` shows as of revision `rev`, read from `log`.
fn visible_in<'a>(
    log: &'a BTreeMap<i64, Slots>,
    hist: &[IndexEntry],
    rev: i64,
) -> Option<&'a KeyValue> {
    let pos = hist.partition_point(|e| e.rev.main <= rev);
    let e = hist.get(pos.checked_sub(1)?)?;
    if e.tombstone {
        return None;
    }
    let slots = log.get(&e.rev.main)?;
    let at = slots
        .binary_search_by_key(&e.rev.sub, |(sub, _)| *sub)
        .ok()?;
    Some(&slots[at].1.kv)
}

/// What a record counts in [`Mvcc::stored_bytes`].
fn record_bytes(rec: &Record) -> u64 {
    (rec.kv.key.len() + rec.kv.value.len()) as u64
}

/// Adds a record's position to its key's history.
fn push_history(hist: &mut Vec<IndexEntry>, rev: Rev, tombstone: bool) {
    // Exact reservations: a vector's first growth reserves room for four records, and
    // most revisions hold one record and most keys see few writes; across 100k keys the
    // spare room would outweigh the data.
    if hist.len() == hist.capacity() {
        hist.reserve_exact(hist.len().max(1));
    }
    hist.push(IndexEntry { rev, tombstone });
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
    pub fn get(&self, key: &[u8]) -> Option<&KeyValue> {
        self.mvcc.get_at(key, self.rev)
    }

    /// Writes `key`; returns the previous key-value. The key's history is looked up
    /// once, for both the previous value and the new record.
    pub fn put(&mut self, key: Bytes, value: Bytes, lease: i64) -> Option<KeyValue> {
        let rev = Rev {
            main: self.rev,
            sub: self.written.len() as i64,
        };
        let m = &mut *self.mvcc;
        let hist = m.index.entry(key.clone()).or_default();
        let prev = visible_in(&m.log, hist, rev.main).cloned();
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
        push_history(hist, rev, false);
        self.written.push((rev, rec.clone()));
        m.put_log(rev, rec);
        prev
    }

    /// Deletes every live key in `range`; returns the deleted key-values.
    pub fn delete_range(&mut self, range: &KeyRange) -> Vec<KeyValue> {
        let mut victims = Vec::new();
        self.mvcc.scan_at(range, self.rev, |kv| {
            victims.push(kv.clone());
            true
        });
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
        victims
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
        t.put(b("a"), b("1"), 0);
        assert_eq!(t.finish().len(), 1);
        assert_eq!(m.current_revision(), 2);
        let mut t = m.write();
        let prev = t.put(b("a"), b("2"), 0);
        t.finish();
        assert_eq!(prev.map(|p| p.value), Some(b("1")));
        let kv = m.get_at(b"a", 3).cloned().expect("live");
        assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 3, 2));
        assert_eq!(m.get_at(b"a", 2).map(|k| k.value.clone()), Some(b("1")));
        let mut t = m.write();
        assert_eq!(
            t.delete_range(&KeyRange::new(&b("a"), &Bytes::new())).len(),
            1
        );
        t.finish();
        assert!(m.get_at(b"a", 4).is_none());
        let mut t = m.write();
        t.put(b("a"), b("3"), 0);
        t.finish();
        let kv = m.get_at(b"a", 5).cloned().expect("live");
        assert_eq!((kv.create_revision, kv.version), (5, 1));
    }

    #[test]
    fn noop_delete_keeps_revision() {
        let mut m = Mvcc::default();
        let mut t = m.write();
        assert!(
            t.delete_range(&KeyRange::new(&b("x"), &Bytes::new()))
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
            t.put(b("a"), b(v), 0);
            t.finish();
        }
        let mut t = m.write();
        t.put(b("gone"), b("x"), 0);
        t.finish();
        let mut t = m.write();
        t.delete_range(&KeyRange::new(&b("gone"), &Bytes::new()));
        t.finish();
        // revs: a=2,3,4 gone=5, del=6
        let removed = m.compact(6).expect("compact");
        assert_eq!(removed.len(), 4);
        assert_eq!(m.get_at(b"a", 6).map(|k| k.value.clone()), Some(b("3")));
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
            t.put(b("k"), b(v), 0);
            t.put(b("j"), b(v), 0);
            all.extend(t.finish());
        }
        let r = Mvcc::restore(all, 0).expect("restore");
        assert_eq!(r.current_revision(), 3);
        assert_eq!(r.get_at(b"j", 3).map(|k| k.version), Some(2));
        let k = KeyRange::new(&b("k"), &Bytes::new());
        let lim = EventLimit {
            events: 100,
            bytes: 1 << 20,
            revisions: 100,
        };
        let all = r.events(2, 3, &k, true, lim);
        assert_eq!((all.batches.len(), all.upto), (2, 3));
        let one = EventLimit {
            events: 100,
            bytes: 1,
            revisions: 100,
        };
        let first = r.events(2, 3, &k, true, one);
        assert_eq!((first.batches.len(), first.upto), (1, 2));
    }

    /// A far-back watcher on an idle key walks the history in bounded steps: each call examines
    /// at most `revisions` revisions, and `upto` moves on even when none of them matched.
    #[test]
    fn events_walk_in_bounded_steps() {
        let mut m = Mvcc::default();
        for _ in 0..10 {
            let mut t = m.write();
            t.put(b("busy"), b("v"), 0);
            t.finish();
        }
        let mut t = m.write();
        t.put(b("idle"), b("v"), 0);
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
            let e = m.events(from, to, &idle, false, step);
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
        assert_eq!(m.records_in(..).count(), 2);
        for bad in [rec(2, -1), rec(0, 0), rec(-5, 3), rec(i64::MAX, 0)] {
            let e = Mvcc::restore(vec![rec(2, 0), bad], 0).expect_err("impossible position");
            assert!(e.to_string().contains("stored record"), "{e}");
        }
        assert!(Mvcc::restore(vec![rec(2, 0)], i64::MAX).is_err());
        assert!(Mvcc::restore(vec![rec(2, 0)], -1).is_err());
    }
}
