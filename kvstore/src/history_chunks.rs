//! How the keyspace's history sits on disk: in chunks, runs of whole consecutive
//! revisions stored under one backend key (`c/` + the first one's main revision), not
//! one key per revision.
//!
//! A chunk spans the main revisions from its start up to the next chunk's start. The
//! records a batch of raft entries writes go into one chunk, so a `Ready` of a few hundred
//! puts costs the backend one insert instead of a few hundred. A compaction rewrites each
//! chunk it took records from with what remains of it (or deletes it when nothing does).
//! The in-memory keyspace holds every record, so rewriting never reads the disk.

use std::collections::BTreeSet;

use prost::Message;

use crate::backend::{Backend, WriteBatch, keys};
use crate::error::{Error, Result};
use crate::mvcc::{Mvcc, Record, Rev};
use crate::proto::kvstorepb::{SnapshotRevision, StoredChunk, StoredRevision};

/// A chunk is sealed before a new revision is added once it holds this many records...
const CHUNK_RECORDS: usize = 1024;
/// ...or about this many bytes of keys and values.
const CHUNK_BYTES: usize = 1 << 20;

/// The chunks on disk, and the records applied since the last one was written.
#[derive(Debug, Default)]
pub struct HistoryChunks {
    /// The first main revision of every chunk on disk.
    starts: BTreeSet<i64>,
    /// Records not yet written: the next chunk.
    open: Vec<SnapshotRevision>,
    open_bytes: usize,
}

/// A record as stored in a chunk (and in a state-machine snapshot).
pub fn stored(rev: Rev, rec: Record) -> SnapshotRevision {
    SnapshotRevision {
        main: rev.main,
        sub: rev.sub,
        record: Some(StoredRevision {
            kv: Some(rec.kv),
            tombstone: rec.tombstone,
        }),
    }
}

/// The record a stored one holds.
pub fn record(r: SnapshotRevision) -> Result<(Rev, Record)> {
    let rev = Rev {
        main: r.main,
        sub: r.sub,
    };
    let stored = r
        .record
        .ok_or_else(|| Error::Corrupt(format!("revision {rev:?} without a record")))?;
    let kv = stored
        .kv
        .ok_or_else(|| Error::Corrupt(format!("revision {rev:?} without a key-value")))?;
    Ok((
        rev,
        Record {
            kv,
            tombstone: stored.tombstone,
        },
    ))
}

impl HistoryChunks {
    /// Reads every chunk: the chunk map and the records, in revision order.
    pub fn load(backend: &dyn Backend) -> Result<(HistoryChunks, Vec<(Rev, Record)>)> {
        if !backend.scan_prefix(keys::LEGACY_REV_PREFIX)?.is_empty() {
            return Err(Error::Corrupt(
                "the data dir stores one key per revision, a layout this kvstore no longer reads"
                    .into(),
            ));
        }
        let mut history = HistoryChunks::default();
        let mut records = Vec::new();
        for (k, v) in backend.scan_prefix(keys::CHUNK_PREFIX)? {
            let start = <[u8; 8]>::try_from(&k[keys::CHUNK_PREFIX.len()..])
                .map(i64::from_be_bytes)
                .map_err(|_| Error::Corrupt(format!("chunk key of {} bytes", k.len())))?;
            // Chunks come in key (= start) order; each must lie past the one before.
            let floor = records.last().map_or(i64::MIN, |(r, _): &(Rev, _)| r.main);
            if start <= floor {
                return Err(Error::Corrupt(format!(
                    "chunk at revision {start} overlaps the one before (up to {floor})"
                )));
            }
            for r in StoredChunk::decode(v.as_slice())?.revisions {
                let (rev, rec) = record(r)?;
                let last = records.last().map(|(r, _): &(Rev, _)| *r);
                if rev.main < start || last.is_some_and(|l| l >= rev) {
                    return Err(Error::Corrupt(format!(
                        "revision {rev:?} out of order in the chunk at {start}"
                    )));
                }
                records.push((rev, rec));
            }
            history.starts.insert(start);
        }
        Ok((history, records))
    }

    /// Adds what one revision wrote (as `WriteTxn::finish` returns it); the chunk it
    /// joins is written by `seal`, or before it grows past its bounds.
    pub fn add(&mut self, written: Vec<(Rev, Record)>, batch: &mut WriteBatch) {
        for (rev, rec) in written {
            self.push(stored(rev, rec), batch);
        }
    }

    /// Adds one record; a full chunk is written first unless the record continues its
    /// last revision (a revision never spans two chunks).
    pub fn push(&mut self, r: SnapshotRevision, batch: &mut WriteBatch) {
        let full = self.open.len() >= CHUNK_RECORDS || self.open_bytes >= CHUNK_BYTES;
        if full && self.open.last().is_some_and(|l| l.main != r.main) {
            self.seal(batch);
        }
        self.open_bytes += r
            .record
            .as_ref()
            .and_then(|s| s.kv.as_ref())
            .map_or(0, |kv| kv.key.len() + kv.value.len() + 32);
        self.open.push(r);
    }

    /// Writes the records added since the last seal as one chunk.
    pub fn seal(&mut self, batch: &mut WriteBatch) {
        let Some(first) = self.open.first().map(|r| r.main) else {
            return;
        };
        let chunk = StoredChunk {
            revisions: std::mem::take(&mut self.open),
        };
        self.open_bytes = 0;
        batch.put(keys::chunk(first), chunk.encode_to_vec());
        self.starts.insert(first);
    }

    /// After `mvcc` dropped the records at `removed` (a compaction): every chunk that held
    /// one is written again with what `mvcc` still holds in its span, or deleted.
    pub fn compacted(&mut self, removed: &[Rev], mvcc: &Mvcc, batch: &mut WriteBatch) {
        self.seal(batch);
        let touched: BTreeSet<i64> = removed
            .iter()
            .filter_map(|r| self.starts.range(..=r.main).next_back().copied())
            .collect();
        for start in touched {
            let end = self.starts.range(start + 1..).next().copied();
            let revisions: Vec<SnapshotRevision> = mvcc
                .records_in(start..end.unwrap_or(i64::MAX))
                .map(|(rev, rec)| stored(rev, rec.clone()))
                .collect();
            if revisions.is_empty() {
                batch.delete(keys::chunk(start));
                self.starts.remove(&start);
            } else {
                // A chunk keeps its key (its span's start) though its first record moved on.
                batch.put(
                    keys::chunk(start),
                    StoredChunk { revisions }.encode_to_vec(),
                );
            }
        }
    }

    /// Chunks on disk (sealed).
    pub fn chunks(&self) -> usize {
        self.starts.len()
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::backend::SledBackend;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    /// Puts `key` in `mvcc`, adding the write to `history`.
    fn put(mvcc: &mut Mvcc, history: &mut HistoryChunks, key: &str, batch: &mut WriteBatch) {
        let mut txn = mvcc.write();
        txn.put(b(key), b("v"), 0);
        history.add(txn.finish(), batch);
    }

    /// An empty key-value stored at `main`.`sub`.
    fn empty_at(main: i64, sub: i64) -> SnapshotRevision {
        stored(
            Rev { main, sub },
            Record {
                kv: Default::default(),
                tombstone: false,
            },
        )
    }

    fn reload(backend: &SledBackend) -> (HistoryChunks, Mvcc) {
        let (h, records) = HistoryChunks::load(backend).unwrap();
        (h, Mvcc::restore(records, 0).unwrap())
    }

    #[test]
    fn sealed_chunks_reload_with_every_record() {
        let dir = tempfile::tempdir().unwrap();
        let backend = SledBackend::open(dir.path()).unwrap();
        let (mut mvcc, mut h) = (Mvcc::default(), HistoryChunks::default());
        let mut batch = WriteBatch::default();
        for i in 0..10 {
            put(&mut mvcc, &mut h, &format!("k{i}"), &mut batch);
            if i % 3 == 2 {
                h.seal(&mut batch);
            }
        }
        h.seal(&mut batch);
        assert_eq!(h.chunks(), 4);
        // Three puts and a seal: one backend write per chunk.
        assert_eq!(batch.len(), 4);
        backend.write(batch).unwrap();
        let (h2, m2) = reload(&backend);
        assert_eq!(h2.chunks(), 4);
        assert_eq!(m2.current_revision(), mvcc.current_revision());
        let all: Vec<_> = m2.records().map(|(r, rec)| (r, rec.kv.clone())).collect();
        let want: Vec<_> = mvcc.records().map(|(r, rec)| (r, rec.kv.clone())).collect();
        assert_eq!(all, want);
    }

    #[test]
    fn a_full_chunk_is_sealed_between_revisions_only() {
        let mut h = HistoryChunks::default();
        let mut batch = WriteBatch::default();
        for i in 0..CHUNK_RECORDS as i64 {
            h.push(empty_at(2 + i, 0), &mut batch);
        }
        // The chunk is full: the last revision's second record still joins it.
        h.push(empty_at(1 + CHUNK_RECORDS as i64, 1), &mut batch);
        assert!(batch.is_empty());
        h.push(empty_at(2 + CHUNK_RECORDS as i64, 0), &mut batch);
        assert_eq!(batch.len(), 1);
        assert_eq!(h.chunks(), 1);
        assert_eq!(h.open.len(), 1);
    }

    #[test]
    fn compaction_rewrites_or_deletes_the_chunks_it_touched() {
        let dir = tempfile::tempdir().unwrap();
        let backend = SledBackend::open(dir.path()).unwrap();
        let (mut mvcc, mut h) = (Mvcc::default(), HistoryChunks::default());
        let mut batch = WriteBatch::default();
        // Chunk A: a@2 b@3. Chunk B: a@4 a@5. Chunk C: c@6 (unsealed until the compaction).
        for (keys, seal) in [
            (&["a", "b"][..], true),
            (&["a", "a"], true),
            (&["c"], false),
        ] {
            for k in keys {
                put(&mut mvcc, &mut h, k, &mut batch);
            }
            if seal {
                h.seal(&mut batch);
            }
        }
        backend.write(std::mem::take(&mut batch)).unwrap();
        // Compacting at 5 drops a@2 (chunk A keeps b@3) and a@4 (chunk B keeps a@5).
        let removed = mvcc.compact(5).unwrap();
        h.compacted(&removed, &mvcc, &mut batch);
        backend.write(std::mem::take(&mut batch)).unwrap();
        let (h2, m2) = reload(&backend);
        assert_eq!(h2.chunks(), 3);
        let revs: Vec<i64> = m2.records().map(|(r, _)| r.main).collect();
        assert_eq!(revs, vec![3, 5, 6]);
        // Deleting b and compacting past it empties chunk A: its key goes.
        let mut txn = mvcc.write();
        txn.delete_range(&crate::mvcc::KeyRange::Single(b("b")));
        let mut h = h2;
        h.add(txn.finish(), &mut batch);
        let removed = mvcc.compact(7).unwrap();
        h.compacted(&removed, &mvcc, &mut batch);
        backend.write(batch).unwrap();
        // Chunk A (b@3) and the one sealed for b's tombstone (b@7) are left empty.
        let (h3, m3) = reload(&backend);
        assert_eq!(h3.chunks(), 2);
        let revs: Vec<i64> = m3.records().map(|(r, _)| r.main).collect();
        assert_eq!(revs, vec![5, 6]);
        assert!(backend.get(&keys::chunk(2)).unwrap().is_none());
        assert!(backend.get(&keys::chunk(7)).unwrap().is_none());
    }

    #[test]
    fn bad_chunks_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let backend = SledBackend::open(dir.path()).unwrap();
        let mut batch = WriteBatch::default();
        batch.put(keys::chunk(5), b"\xff\xff".to_vec());
        backend.write(batch).unwrap();
        assert!(matches!(
            HistoryChunks::load(&*backend),
            Err(Error::Corrupt(_))
        ));

        let dir = tempfile::tempdir().unwrap();
        let backend = SledBackend::open(dir.path()).unwrap();
        let mut batch = WriteBatch::default();
        // A record below its chunk's start.
        let chunk = StoredChunk {
            revisions: vec![empty_at(3, 0)],
        };
        batch.put(keys::chunk(5), chunk.encode_to_vec());
        backend.write(batch).unwrap();
        assert!(matches!(
            HistoryChunks::load(&*backend),
            Err(Error::Corrupt(_))
        ));

        let dir = tempfile::tempdir().unwrap();
        let backend = SledBackend::open(dir.path()).unwrap();
        let mut batch = WriteBatch::default();
        batch.put(
            [keys::LEGACY_REV_PREFIX, &[0; 16]].concat(),
            b"old".to_vec(),
        );
        backend.write(batch).unwrap();
        assert!(matches!(
            HistoryChunks::load(&*backend),
            Err(Error::Corrupt(_))
        ));
    }
}
