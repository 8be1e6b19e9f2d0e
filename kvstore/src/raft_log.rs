//! raft-rs `Storage` on the backend: hard state, conf state, the log entries and the
//! point the log was truncated at. Entries since the truncation point are also kept in
//! memory (raft reads them on every step); the backend copy is what survives a crash.
//!
//! On disk the log is a run of segments, one per append (one per raft `Ready`): a key
//! holding several length-prefixed entries. Writing and truncating then cost one backend
//! operation per batch of entries instead of one per entry.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use parking_lot::RwLock;
use protobuf::Message as PbMessage;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, StorageError};

use crate::backend::{Backend, WriteBatch, keys};
use crate::error::{Error, Result};

#[derive(Default)]
struct Core {
    hard_state: HardState,
    conf_state: ConfState,
    /// Index and term of the last entry dropped from the log (0, 0 when none).
    snap_index: u64,
    snap_term: u64,
    /// Entries `snap_index + 1 ..= last`.
    entries: Vec<Entry>,
    /// Segments on disk: first index → last index.
    segments: BTreeMap<u64, u64>,
}

impl Core {
    fn last(&self) -> u64 {
        self.snap_index + self.entries.len() as u64
    }

    /// The held entries `from..=to`.
    fn slice(&self, from: u64, to: u64) -> &[Entry] {
        let lo = (from - self.snap_index - 1) as usize;
        let hi = (to - self.snap_index) as usize;
        &self.entries[lo..hi]
    }
}

pub(crate) fn encode_segment(ents: &[Entry]) -> Result<Vec<u8>> {
    let sizes: Vec<u32> = ents.iter().map(|e| e.compute_size()).collect();
    let total: usize = sizes.iter().map(|&n| n as usize + 4).sum();
    let mut out = Vec::with_capacity(total);
    for (e, size) in ents.iter().zip(sizes) {
        out.extend_from_slice(&size.to_be_bytes());
        e.write_to_vec(&mut out)?;
    }
    Ok(out)
}

pub(crate) fn decode_segment(mut b: &[u8]) -> Result<Vec<Entry>> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let (len, rest) = b
            .split_first_chunk::<4>()
            .ok_or_else(|| Error::Corrupt("truncated raft log segment".into()))?;
        let len = u32::from_be_bytes(*len) as usize;
        if rest.len() < len {
            return Err(Error::Corrupt("truncated raft log segment".into()));
        }
        out.push(Entry::parse_from_bytes(&rest[..len])?);
        b = &rest[len..];
    }
    Ok(out)
}

/// Produces the state machine's snapshot data and the applied index it was taken at.
pub type SnapshotSource = Box<dyn Fn() -> Result<(u64, Vec<u8>)> + Send + Sync>;

/// The raft log and its state. Cloning shares the same log.
#[derive(Clone)]
pub struct RaftLog {
    core: Arc<RwLock<Core>>,
    /// Where snapshots for lagging members come from (set once the state machine runs).
    source: Arc<OnceLock<SnapshotSource>>,
    /// The last snapshot built, reused while the log still joins on to it.
    cached: Arc<parking_lot::Mutex<Option<Snapshot>>>,
}

impl RaftLog {
    /// Loads the log from the backend. A fresh store is initialised with `voters` as the
    /// configuration every initial member starts from (empty when joining an existing
    /// cluster: the configuration then arrives from the leader).
    pub fn open(backend: &dyn Backend, voters: &[u64]) -> Result<(RaftLog, bool)> {
        let mut core = Core::default();
        let fresh =
            backend.get(keys::HARD_STATE)?.is_none() && backend.get(keys::CONF_STATE)?.is_none();
        if let Some(b) = backend.get(keys::HARD_STATE)? {
            core.hard_state = HardState::parse_from_bytes(&b)?;
        }
        if let Some(b) = backend.get(keys::CONF_STATE)? {
            core.conf_state = ConfState::parse_from_bytes(&b)?;
        } else if fresh {
            core.conf_state.set_voters(voters.to_vec());
        }
        if let Some(b) = backend.get(keys::SNAPSHOT_META)? {
            let meta = SnapshotMetadata::parse_from_bytes(&b)?;
            core.snap_index = meta.index;
            core.snap_term = meta.term;
        }
        let mut leftovers = WriteBatch::default();
        for (k, v) in backend.scan_prefix(keys::LOG_PREFIX)? {
            let ents = decode_segment(&v)?;
            let (Some(first), Some(last)) = (ents.first(), ents.last()) else {
                leftovers.delete(k);
                continue;
            };
            let (first, last) = (first.index, last.index);
            if last <= core.snap_index {
                // Truncated, but the delete did not reach the disk before a stop.
                leftovers.delete(k);
                continue;
            }
            core.segments.insert(first, last);
            for e in ents {
                if e.index <= core.snap_index {
                    continue;
                }
                let expected = core.last() + 1;
                if e.index != expected {
                    return Err(Error::Corrupt(format!(
                        "raft log has entry {} where {} was expected",
                        e.index, expected
                    )));
                }
                core.entries.push(e);
            }
        }
        if !leftovers.is_empty() {
            backend.write(leftovers)?;
        }
        Ok((
            RaftLog {
                core: Arc::new(RwLock::new(core)),
                source: Arc::new(OnceLock::new()),
                cached: Arc::new(parking_lot::Mutex::new(None)),
            },
            fresh,
        ))
    }

    /// Sets where snapshot data comes from. Only the raft thread may call the source, as
    /// only it applies (so the data matches the applied index it reports).
    pub fn set_snapshot_source(&self, source: SnapshotSource) {
        let _ = self.source.set(source);
    }

    /// Records a new configuration (a fresh store's first one, or an applied conf change).
    pub fn set_conf_state(&self, cs: &ConfState, batch: &mut WriteBatch) -> Result<()> {
        batch.put(keys::CONF_STATE, cs.write_to_bytes()?);
        self.core.write().conf_state = cs.clone();
        Ok(())
    }

    /// Starts a fresh member of a new cluster as if it had installed a snapshot at index 1,
    /// term 1, holding the initial configuration: every initial member starts identical,
    /// and the log never holds index 1, so a member added later (whose log is empty) is
    /// caught up by a snapshot, which carries the configuration, rather than by entries.
    pub fn bootstrap(&self, voters: &[u64], batch: &mut WriteBatch) -> Result<()> {
        let mut cs = ConfState::default();
        cs.set_voters(voters.to_vec());
        let meta = SnapshotMetadata {
            index: 1,
            term: 1,
            conf_state: protobuf::SingularPtrField::some(cs),
            ..Default::default()
        };
        self.install_snapshot(&meta, batch)
    }

    /// Replaces the whole log with the point `meta` describes (a snapshot installed).
    pub fn install_snapshot(&self, meta: &SnapshotMetadata, batch: &mut WriteBatch) -> Result<()> {
        let mut core = self.core.write();
        for start in std::mem::take(&mut core.segments).into_keys() {
            batch.delete(keys::log(start));
        }
        core.entries.clear();
        core.snap_index = meta.index;
        core.snap_term = meta.term;
        core.conf_state = meta.get_conf_state().clone();
        if core.hard_state.commit < meta.index {
            core.hard_state.commit = meta.index;
        }
        if core.hard_state.term < meta.term {
            core.hard_state.term = meta.term;
        }
        batch.put(keys::SNAPSHOT_META, meta.write_to_bytes()?);
        batch.put(keys::CONF_STATE, core.conf_state.write_to_bytes()?);
        batch.put(keys::HARD_STATE, core.hard_state.write_to_bytes()?);
        Ok(())
    }

    /// Appends entries (a conflicting suffix is replaced), in memory and into `batch`.
    /// Returns them encoded as a log segment (empty when there are none), as the journal
    /// records them too.
    pub fn append(&self, ents: &[Entry], batch: &mut WriteBatch) -> Result<Vec<u8>> {
        let Some(first) = ents.first() else {
            return Ok(Vec::new());
        };
        let mut core = self.core.write();
        if first.index <= core.snap_index {
            return Err(Error::Corrupt(format!(
                "append at {} below the truncation point {}",
                first.index, core.snap_index
            )));
        }
        let last = core.snap_index + core.entries.len() as u64;
        if first.index > last + 1 {
            return Err(Error::Corrupt(format!(
                "append at {} leaves a gap after {last}",
                first.index
            )));
        }
        // Segments at or after the first new index are replaced; one that straddles it
        // is rewritten with only its older entries.
        // (Segments never overlap: only the last one starting before the new index can
        // reach it.)
        let straddling = core
            .segments
            .range(..first.index)
            .next_back()
            .filter(|(_, end)| **end >= first.index)
            .map(|(s, e)| (*s, *e));
        let stale: Vec<(u64, u64)> = straddling
            .into_iter()
            .chain(core.segments.range(first.index..).map(|(s, e)| (*s, *e)))
            .collect();
        for (start, _) in stale {
            core.segments.remove(&start);
            batch.delete(keys::log(start));
            if start < first.index {
                let kept_from = start.max(core.snap_index + 1);
                if kept_from < first.index {
                    let kept = encode_segment(core.slice(kept_from, first.index - 1))?;
                    batch.put(keys::log(kept_from), kept);
                    core.segments.insert(kept_from, first.index - 1);
                }
            }
        }
        let keep = (first.index - core.snap_index - 1) as usize;
        core.entries.truncate(keep);
        core.entries.extend_from_slice(ents);
        let last_new = first.index + ents.len() as u64 - 1;
        let segment = encode_segment(ents)?;
        batch.put(keys::log(first.index), segment.clone());
        core.segments.insert(first.index, last_new);
        Ok(segment)
    }

    /// Records the hard state, in memory and into `batch`.
    pub fn set_hard_state(&self, hs: &HardState, batch: &mut WriteBatch) -> Result<()> {
        batch.put(keys::HARD_STATE, hs.write_to_bytes()?);
        self.core.write().hard_state = hs.clone();
        Ok(())
    }

    /// Takes a journaled hard state over the stored one (see `wal::recover`): a newer
    /// term brings its vote; the commit index is the higher of the two, as the backend
    /// may hold a later commit than the journal (commits are not journaled).
    pub fn merge_hard_state(&self, hs: &HardState, batch: &mut WriteBatch) -> Result<()> {
        let merged = {
            let mut core = self.core.write();
            let last = core.last();
            let cur = &mut core.hard_state;
            if hs.term > cur.term {
                cur.term = hs.term;
                cur.vote = hs.vote;
            } else if hs.term == cur.term && cur.vote == 0 {
                cur.vote = hs.vote;
            }
            let commit = cur.commit.max(hs.commit);
            if commit > last {
                // Committed entries this member held are gone: a leader will send it a
                // commit index beyond its log, and raft-rs panics on that.
                tracing::warn!(
                    commit,
                    last_index = last,
                    "the raft log ends before its commit index after the journal replay"
                );
            }
            cur.commit = commit.min(last);
            cur.clone()
        };
        batch.put(keys::HARD_STATE, merged.write_to_bytes()?);
        Ok(())
    }

    /// Index and term of the last entry dropped from the log (0, 0 when none).
    pub fn snapshot_point(&self) -> (u64, u64) {
        let c = self.core.read();
        (c.snap_index, c.snap_term)
    }

    /// Records a new commit index.
    pub fn set_commit(&self, commit: u64, batch: &mut WriteBatch) -> Result<()> {
        let hs = {
            let mut core = self.core.write();
            core.hard_state.commit = commit;
            core.hard_state.clone()
        };
        batch.put(keys::HARD_STATE, hs.write_to_bytes()?);
        Ok(())
    }

    /// Drops entries up to and including `index` (which must be applied).
    pub fn truncate_prefix(&self, index: u64, batch: &mut WriteBatch) -> Result<()> {
        let mut core = self.core.write();
        if index <= core.snap_index {
            return Ok(());
        }
        let last = core.snap_index + core.entries.len() as u64;
        let index = index.min(last);
        let n = (index - core.snap_index) as usize;
        let term = core.entries[n - 1].term;
        // Whole segments at or below `index` go; one that straddles it stays (its older
        // entries are skipped when the log is loaded).
        let gone: Vec<u64> = core
            .segments
            .iter()
            .filter(|(_, end)| **end <= index)
            .map(|(s, _)| *s)
            .collect();
        for start in gone {
            core.segments.remove(&start);
            batch.delete(keys::log(start));
        }
        core.entries.drain(..n);
        core.snap_index = index;
        core.snap_term = term;
        let meta = SnapshotMetadata {
            index,
            term,
            conf_state: protobuf::SingularPtrField::some(core.conf_state.clone()),
            ..Default::default()
        };
        batch.put(keys::SNAPSHOT_META, meta.write_to_bytes()?);
        Ok(())
    }

    /// `(first index, last index)` held.
    pub fn span(&self) -> (u64, u64) {
        let c = self.core.read();
        (c.snap_index + 1, c.snap_index + c.entries.len() as u64)
    }
}

impl raft::Storage for RaftLog {
    fn initial_state(&self) -> raft::Result<RaftState> {
        let c = self.core.read();
        Ok(RaftState::new(c.hard_state.clone(), c.conf_state.clone()))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let c = self.core.read();
        if low <= c.snap_index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        let last = c.snap_index + c.entries.len() as u64;
        if high > last + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let lo = (low - c.snap_index - 1) as usize;
        let hi = (high - c.snap_index - 1) as usize;
        let mut out = c.entries[lo..hi].to_vec();
        raft::util::limit_size(&mut out, max_size.into());
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        let c = self.core.read();
        if idx == c.snap_index {
            return Ok(c.snap_term);
        }
        if idx < c.snap_index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        let off = (idx - c.snap_index - 1) as usize;
        c.entries
            .get(off)
            .map(|e| e.term)
            .ok_or(raft::Error::Store(StorageError::Unavailable))
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.core.read().snap_index + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        let c = self.core.read();
        Ok(c.snap_index + c.entries.len() as u64)
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let unavailable = raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable);
        let snap_index = self.core.read().snap_index;
        let mut cached = self.cached.lock();
        if let Some(s) = cached.as_ref() {
            let index = s.get_metadata().index;
            if index >= request_index && index >= snap_index {
                return Ok(s.clone());
            }
        }
        let Some(source) = self.source.get() else {
            return Err(unavailable);
        };
        let (applied, data) = match source() {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode a state-machine snapshot");
                return Err(unavailable);
            }
        };
        let c = self.core.read();
        let term = if applied == c.snap_index {
            c.snap_term
        } else if applied > c.snap_index {
            match c.entries.get((applied - c.snap_index - 1) as usize) {
                Some(e) => e.term,
                None => return Err(unavailable),
            }
        } else {
            return Err(unavailable);
        };
        if applied == 0 || applied < request_index {
            return Err(unavailable);
        }
        let mut snap = Snapshot::default();
        snap.set_data(data.into());
        let meta = snap.mut_metadata();
        meta.index = applied;
        meta.term = term;
        meta.set_conf_state(c.conf_state.clone());
        *cached = Some(snap.clone());
        Ok(snap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::SledBackend;
    use raft::Storage;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            ..Default::default()
        }
    }

    #[test]
    fn append_truncate_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let be = SledBackend::open(dir.path()).expect("open");
        let (log, fresh) = RaftLog::open(be.as_ref(), &[1]).expect("log");
        assert!(fresh);
        let mut b = WriteBatch::default();
        log.append(&[entry(1, 1), entry(2, 1), entry(3, 1)], &mut b)
            .expect("append");
        log.append(&[entry(2, 2)], &mut b).expect("replace suffix");
        let hs = HardState {
            term: 2,
            ..Default::default()
        };
        log.set_hard_state(&hs, &mut b).expect("hs");
        be.write(b).expect("write");
        assert_eq!(log.span(), (1, 2));
        let mut b = WriteBatch::default();
        log.truncate_prefix(1, &mut b).expect("truncate");
        be.write(b).expect("write");
        drop(log);
        let (log, fresh) = RaftLog::open(be.as_ref(), &[1]).expect("reopen");
        assert!(!fresh);
        assert_eq!(log.span(), (2, 2));
        assert_eq!(log.term(1).expect("snap term"), 1);
        assert_eq!(log.term(2).expect("term"), 2);
        assert!(
            log.entries(1, 3, None, GetEntriesContext::empty(false))
                .is_err()
        );
        assert_eq!(log.initial_state().expect("state").hard_state.term, 2);
    }

    #[test]
    fn segments_rewrite_and_truncate() {
        let dir = tempfile::tempdir().expect("tempdir");
        let be = SledBackend::open(dir.path()).expect("open");
        let (log, _) = RaftLog::open(be.as_ref(), &[1]).expect("log");
        let mut b = WriteBatch::default();
        log.append(&[entry(1, 1), entry(2, 1), entry(3, 1)], &mut b)
            .expect("append");
        log.append(&[entry(4, 1), entry(5, 1), entry(6, 1)], &mut b)
            .expect("append");
        be.write(b).expect("write");
        // A conflicting suffix from the middle of the second segment.
        let mut b = WriteBatch::default();
        log.append(&[entry(5, 2)], &mut b).expect("replace");
        log.truncate_prefix(3, &mut b).expect("truncate");
        be.write(b).expect("write");
        drop(log);
        let (log, _) = RaftLog::open(be.as_ref(), &[1]).expect("reopen");
        assert_eq!(log.span(), (4, 5));
        assert_eq!(log.term(4).expect("term"), 1);
        assert_eq!(log.term(5).expect("term"), 2);
        assert_eq!(log.term(3).expect("snapshot term"), 1);
        assert_eq!(be.scan_prefix(keys::LOG_PREFIX).expect("scan").len(), 2);
    }
}
