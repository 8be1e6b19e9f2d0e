//! How the keyspace's history sits on disk: one backend key per record, `v/` + its main
//! and sub revision (big-endian, so key order is revision order), holding the record's
//! key-value and tombstone flag, as etcd's key bucket holds them. The key index in memory
//! ([`crate::mvcc`]) is rebuilt from these at start.
//!
//! A data dir written before this layout holds its records in chunks (`c/` + the first
//! main revision of a run of records); [`migrate_chunks`] rewrites them as records at
//! start, one chunk per atomic batch, so an interrupted conversion resumes where it stopped.

use prost::Message;

use crate::backend::{Backend, WriteBatch, keys};
use crate::error::{Error, Result};
use crate::mvcc::{Record, Rev};
use crate::proto::kvstorepb::{SnapshotRevision, StoredChunk, StoredRevision};

/// A record as a state-machine snapshot carries it.
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

/// The record a snapshot's one holds.
pub fn record(r: SnapshotRevision) -> Result<(Rev, Record)> {
    let rev = Rev {
        main: r.main,
        sub: r.sub,
    };
    let stored = r
        .record
        .ok_or_else(|| Error::Corrupt(format!("revision {rev:?} without a record")))?;
    Ok((rev, from_stored(stored, rev)?))
}

fn from_stored(stored: StoredRevision, rev: Rev) -> Result<Record> {
    let kv = stored
        .kv
        .ok_or_else(|| Error::Corrupt(format!("revision {rev:?} without a key-value")))?;
    Ok(Record {
        kv,
        tombstone: stored.tombstone,
    })
}

/// The bytes a record is stored as.
pub fn encode(rec: &Record) -> Vec<u8> {
    // Encoded from borrowed fields: the record stays in memory as it is.
    let stored = StoredRevision {
        kv: Some(rec.kv.clone()),
        tombstone: rec.tombstone,
    };
    stored.encode_to_vec()
}

/// The record stored as `bytes` at `rev`.
pub fn decode(bytes: &[u8], rev: Rev) -> Result<Record> {
    from_stored(StoredRevision::decode(bytes)?, rev)
}

/// The key of the record stored as `bytes`, read without decoding the rest (its value
/// above all), when the bytes have the layout `encode` gives them: the key-value first
/// (field 1), its key first within it (field 1). `None` otherwise: the caller decodes.
pub fn peek_key(bytes: &[u8]) -> Option<&[u8]> {
    fn varint(b: &[u8]) -> Option<(usize, &[u8])> {
        let mut n: u64 = 0;
        for (i, byte) in b.iter().enumerate().take(10) {
            n |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Some((usize::try_from(n).ok()?, b.get(i + 1..)?));
            }
        }
        None
    }
    // Field 1, length-delimited: 0x0a.
    let rest = bytes.strip_prefix(&[0x0a])?;
    let (len, rest) = varint(rest)?;
    let kv = rest.get(..len)?;
    let rest = kv.strip_prefix(&[0x0a])?;
    let (len, rest) = varint(rest)?;
    rest.get(..len)
}

/// Adds what one revision wrote (as `WriteTxn::finish` returns it) to `batch`.
pub fn persist(written: Vec<(Rev, Record)>, batch: &mut WriteBatch) {
    for (rev, rec) in written {
        batch.put(keys::rev(rev.main, rev.sub), encode(&rec));
        batch.note_revision(rev.main);
    }
}

/// Rewrites a data dir's chunks of records, if it has any, as one key per record, and
/// makes that durable; returns the number of records converted. A data dir with one key
/// per record under the older `k/` prefix is refused.
pub fn migrate_chunks(backend: &dyn Backend) -> Result<usize> {
    let mut legacy = false;
    backend.scan(
        keys::LEGACY_REV_PREFIX,
        &prefix_end(keys::LEGACY_REV_PREFIX),
        &mut |_, _| {
            legacy = true;
            Ok(false)
        },
    )?;
    if legacy {
        return Err(Error::Corrupt(
            "the data dir stores one key per revision under k/, a layout this kvstore no longer reads"
                .into(),
        ));
    }
    let mut chunks = Vec::new();
    backend.scan(
        keys::CHUNK_PREFIX,
        &prefix_end(keys::CHUNK_PREFIX),
        &mut |k, _| {
            chunks.push(k.to_vec());
            Ok(true)
        },
    )?;
    let mut converted = 0;
    let mut floor = i64::MIN;
    for key in &chunks {
        let start = <[u8; 8]>::try_from(&key[keys::CHUNK_PREFIX.len()..])
            .map(i64::from_be_bytes)
            .map_err(|_| Error::Corrupt(format!("chunk key of {} bytes", key.len())))?;
        // Chunks come in key (= start) order; each must lie past the one before.
        if start <= floor {
            return Err(Error::Corrupt(format!(
                "chunk at revision {start} overlaps the one before (up to {floor})"
            )));
        }
        let Some(bytes) = backend.get(key)? else {
            continue;
        };
        let mut batch = WriteBatch::default();
        let mut last: Option<Rev> = None;
        for r in StoredChunk::decode(bytes.as_slice())?.revisions {
            let (rev, rec) = record(r)?;
            if rev.main < start || last.is_some_and(|l| l >= rev) {
                return Err(Error::Corrupt(format!(
                    "revision {rev:?} out of order in the chunk at {start}"
                )));
            }
            last = Some(rev);
            floor = rev.main;
            batch.put(keys::rev(rev.main, rev.sub), encode(&rec));
            converted += 1;
        }
        batch.delete(key.clone());
        backend.write(batch)?;
    }
    if !chunks.is_empty() {
        backend.sync()?;
        tracing::info!(
            chunks = chunks.len(),
            records = converted,
            "history converted from chunks to one key per record"
        );
    }
    Ok(converted)
}

/// The first key after every key that starts with `prefix` (a prefix ending in `/`).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    end
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;

    use super::*;
    use crate::backend::SledBackend;
    use crate::mvcc::{KeyRange, Mvcc};

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn put(mvcc: &mut Mvcc, key: &str, value: &str, batch: &mut WriteBatch) {
        let mut txn = mvcc.write();
        txn.put(b(key), b(value), 0, false).unwrap();
        persist(txn.finish(), batch);
    }

    /// What a keyspace shows: every record's position and key-value, in order.
    fn all(m: &Mvcc) -> Vec<(Rev, bool, crate::proto::mvccpb::KeyValue)> {
        let mut out = Vec::new();
        m.walk(i64::MIN, i64::MAX, |rev, r| {
            out.push((rev, r.tombstone, r.kv.clone()));
            Ok(true)
        })
        .unwrap();
        out
    }

    #[test]
    fn records_reload_from_the_backend_with_values_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let backend = SledBackend::open(dir.path()).unwrap();
        let mut mvcc = Mvcc::default();
        let mut batch = WriteBatch::default();
        for i in 0..10 {
            put(
                &mut mvcc,
                &format!("k{}", i % 4),
                &format!("v{i}"),
                &mut batch,
            );
        }
        let mut txn = mvcc.write();
        txn.delete_range(&KeyRange::Single(b("k1")), false).unwrap();
        persist(txn.finish(), &mut batch);
        assert_eq!(batch.len(), 11);
        assert_eq!(batch.revision(), 12);
        backend.write(batch).unwrap();
        assert_eq!(backend.written_revision(), 12);
        let (loaded, _) = Mvcc::load(backend.clone(), 0).unwrap();
        assert_eq!(loaded.current_revision(), 12);
        assert_eq!(
            loaded.records_in_memory().0,
            0,
            "only the index is in memory"
        );
        assert_eq!(all(&loaded), all(&mvcc));
        assert_eq!(loaded.stored_bytes(), mvcc.stored_bytes());
        let kv = loaded.get_at(b"k2", 12).unwrap().unwrap();
        assert_eq!((kv.value, kv.version, kv.create_revision), (b("v6"), 2, 4));
        assert!(loaded.get_at(b"k1", 12).unwrap().is_none());
        assert_eq!(
            loaded.get_at(b"k1", 11).unwrap().map(|kv| kv.value),
            Some(b("v9"))
        );
        assert_eq!(loaded.hash_kv(0).unwrap(), mvcc.hash_kv(0).unwrap());
    }

    /// The tail lets go of records only once the backend has them, and reads find them
    /// there afterwards.
    #[test]
    fn memory_holds_what_the_backend_lacks() {
        let dir = tempfile::tempdir().unwrap();
        let backend = SledBackend::open(dir.path()).unwrap();
        let (mut mvcc, _) = Mvcc::load(backend.clone(), 0).unwrap();
        let big = "x".repeat(1 << 20);
        let mut batch = WriteBatch::default();
        for i in 0..40 {
            put(&mut mvcc, &format!("k{i}"), &big, &mut batch);
        }
        mvcc.release_written();
        assert_eq!(mvcc.records_in_memory().0, 40, "nothing written yet");
        backend.write(batch).unwrap();
        mvcc.release_written();
        let (held, bytes) = mvcc.records_in_memory();
        assert!(
            held < 40 && bytes <= 17 << 20,
            "{held} records, {bytes} bytes"
        );
        for i in 0..40 {
            let kv = mvcc
                .get_at(format!("k{i}").as_bytes(), 41)
                .unwrap()
                .unwrap();
            assert_eq!(kv.value.len(), 1 << 20);
        }
        let limit = crate::mvcc::EventLimit {
            events: 1000,
            bytes: usize::MAX,
            revisions: 1000,
        };
        let evs = mvcc
            .events(2, 41, &KeyRange::new(&b("k"), &b("l")), true, limit)
            .unwrap();
        assert_eq!(evs.batches.len(), 40);
    }

    /// A compaction's deletions reach the backend a batch after the index drops the
    /// records: reads in between see the index's view.
    #[test]
    fn compacted_records_not_yet_deleted_stay_unseen() {
        let dir = tempfile::tempdir().unwrap();
        let backend = SledBackend::open(dir.path()).unwrap();
        let mut mvcc = Mvcc::default();
        let mut batch = WriteBatch::default();
        for v in ["1", "2", "3"] {
            put(&mut mvcc, "a", v, &mut batch);
        }
        backend.write(batch).unwrap();
        let (mut mvcc, _) = Mvcc::load(backend.clone(), 0).unwrap();
        let before = mvcc.hash_kv(4).unwrap();
        let removed = mvcc.compact(3).unwrap();
        assert_eq!(removed, vec![Rev { main: 2, sub: 0 }]);
        let revs: Vec<i64> = all(&mvcc).iter().map(|(r, _, _)| r.main).collect();
        assert_eq!(revs, vec![3, 4]);
        assert_ne!(mvcc.hash_kv(4).unwrap(), before);
    }

    #[test]
    fn keys_are_peeked_without_decoding() {
        for key in ["k", "a/longer/key", &"x".repeat(300)] {
            let rec = Record {
                kv: crate::proto::mvccpb::KeyValue {
                    key: b(key),
                    value: b(&"v".repeat(1000)),
                    create_revision: 2,
                    mod_revision: 9,
                    version: 3,
                    lease: 7,
                },
                tombstone: false,
            };
            assert_eq!(peek_key(&encode(&rec)), Some(key.as_bytes()));
        }
        for bad in [
            &b""[..],
            b"\x0a",
            b"\x0a\x05\x0a\x09abc",
            b"\x12\x00",
            b"\x0a\xff",
        ] {
            assert!(peek_key(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn chunks_are_converted_once() {
        let dir = tempfile::tempdir().unwrap();
        let backend = SledBackend::open(dir.path()).unwrap();
        let mut mvcc = Mvcc::default();
        let mut ignored = WriteBatch::default();
        for i in 0..5 {
            put(&mut mvcc, &format!("k{i}"), "v", &mut ignored);
        }
        // The old layout: revisions 2-4 in one chunk, 5-6 in another.
        let mut batch = WriteBatch::default();
        let mut chunk = |from: i64, to: i64| {
            let mut revisions = Vec::new();
            mvcc.walk(from, to, |rev, r| {
                revisions.push(stored(rev, r.clone()));
                Ok(true)
            })
            .unwrap();
            batch.put(keys::chunk(from), StoredChunk { revisions }.encode_to_vec());
        };
        chunk(2, 4);
        chunk(5, 6);
        backend.write(batch).unwrap();
        assert_eq!(migrate_chunks(&*backend).unwrap(), 5);
        assert_eq!(migrate_chunks(&*backend).unwrap(), 0);
        assert!(backend.get(&keys::chunk(2)).unwrap().is_none());
        let (loaded, _) = Mvcc::load(backend.clone() as Arc<dyn Backend>, 0).unwrap();
        assert_eq!(all(&loaded), all(&mvcc));
    }

    #[test]
    fn bad_records_and_chunks_are_refused() {
        let write = |k: Vec<u8>, v: Vec<u8>| {
            let dir = tempfile::tempdir().unwrap();
            let backend = SledBackend::open(dir.path()).unwrap();
            let mut batch = WriteBatch::default();
            batch.put(k, v);
            backend.write(batch).unwrap();
            (dir, backend)
        };
        let (_d, be) = write(keys::chunk(5), b"\xff\xff".to_vec());
        assert!(matches!(migrate_chunks(&*be), Err(Error::Corrupt(_))));
        let chunk = StoredChunk {
            revisions: vec![stored(
                Rev { main: 3, sub: 0 },
                Record {
                    kv: Default::default(),
                    tombstone: false,
                },
            )],
        };
        let (_d, be) = write(keys::chunk(5), chunk.encode_to_vec());
        assert!(matches!(migrate_chunks(&*be), Err(Error::Corrupt(_))));
        let (_d, be) = write(
            [keys::LEGACY_REV_PREFIX, &[0; 16]].concat(),
            b"old".to_vec(),
        );
        assert!(matches!(migrate_chunks(&*be), Err(Error::Corrupt(_))));
        let (_d, be) = write(keys::rev(2, 0), b"\xff\xff".to_vec());
        assert!(Mvcc::load(be, 0).is_err());
        let (_d, be) = write([keys::REV_PREFIX, b"short"].concat(), Vec::new());
        assert!(Mvcc::load(be, 0).is_err());
        let (_d, be) = write(keys::rev(-4, 0), Vec::new());
        assert!(Mvcc::load(be, 0).is_err());
    }
}
