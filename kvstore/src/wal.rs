//! The write-ahead journal in front of the backend: what makes a raft `Ready` durable
//! with one `write` and one `fdatasync` of a preallocated file, as etcd's WAL does,
//! instead of a flush of the whole backend.
//!
//! The backend stays the home of the raft log, hard state and state machine: every
//! record written here is also written to the backend, right after this journal is
//! synced, and the backend is flushed in the background. So the backend never holds
//! raft state the journal does not, and the journal only has to cover what the backend
//! may not have flushed yet. Once the backend is flushed past a segment, the segment is
//! deleted (a checkpoint); at start the journal is replayed onto the backend, which is
//! then flushed, and the journal starts empty.
//!
//! On disk: `<seq>.wal` segments of `SEGMENT_BYTES`, preallocated. A record is
//! `len: u32 | crc32: u32 | kind: u8 | payload`, both integers big-endian, the checksum
//! over kind and payload. Reading a segment stops at the first zero length, short
//! record or bad checksum: the torn tail of a write a crash interrupted, never
//! acknowledged (the segment after it, if any, was started by a later run).
//!
//! Each fsync's latency and the bytes written are what `/metrics` reports as etcd's
//! `etcd_disk_wal_fsync_duration_seconds` and `etcd_disk_wal_write_bytes_total`, once the
//! raft loop hands the journal its member's metrics ([`Wal::count_into`]).

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use protobuf::Message as PbMessage;
use raft::eraftpb::{Entry, HardState, SnapshotMetadata};

use crate::backend::{Backend, WriteBatch};
use crate::error::{Error, Result};
use crate::raft_log::{RaftLog, decode_segment, encode_segment};

/// Size a segment is preallocated to; a segment is closed once it holds this much.
pub const SEGMENT_BYTES: u64 = 32 * 1024 * 1024;

const KIND_ENTRIES: u8 = 1;
const KIND_HARD_STATE: u8 = 2;
const KIND_SNAPSHOT: u8 = 3;
const HEADER: usize = 9;

/// One journal record.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    /// Entries appended to the log (replacing any conflicting suffix).
    Entries(Vec<Entry>),
    /// The hard state (term, vote, commit).
    HardState(HardState),
    /// A snapshot is about to replace the log and state machine.
    Snapshot(SnapshotMetadata),
}

/// A record to write, borrowing what it journals.
#[derive(Debug, Clone, Copy)]
pub enum RecordRef<'a> {
    Entries(&'a [Entry]),
    /// Entries already encoded as a log segment (what `RaftLog::append` returns).
    Segment(&'a [u8]),
    HardState(&'a HardState),
    Snapshot(&'a SnapshotMetadata),
}

impl Record {
    /// This record, borrowed for writing.
    pub fn as_ref(&self) -> RecordRef<'_> {
        match self {
            Record::Entries(e) => RecordRef::Entries(e),
            Record::HardState(h) => RecordRef::HardState(h),
            Record::Snapshot(m) => RecordRef::Snapshot(m),
        }
    }

    fn decode(kind: u8, payload: &[u8]) -> Result<Record> {
        Ok(match kind {
            KIND_ENTRIES => Record::Entries(decode_segment(payload)?),
            KIND_HARD_STATE => Record::HardState(HardState::parse_from_bytes(payload)?),
            KIND_SNAPSHOT => Record::Snapshot(SnapshotMetadata::parse_from_bytes(payload)?),
            k => {
                return Err(Error::Corrupt(format!(
                    "journal record of unknown kind {k}"
                )));
            }
        })
    }
}

impl RecordRef<'_> {
    fn encode_into(&self, out: &mut Vec<u8>) -> Result<()> {
        let (kind, payload): (u8, std::borrow::Cow<'_, [u8]>) = match self {
            RecordRef::Entries(ents) => (KIND_ENTRIES, encode_segment(ents)?.into()),
            RecordRef::Segment(bytes) => (KIND_ENTRIES, (*bytes).into()),
            RecordRef::HardState(hs) => (KIND_HARD_STATE, hs.write_to_bytes()?.into()),
            RecordRef::Snapshot(meta) => (KIND_SNAPSHOT, meta.write_to_bytes()?.into()),
        };
        let len = u32::try_from(payload.len() + 1)
            .map_err(|_| Error::Corrupt("journal record over 4 GiB".into()))?;
        let mut crc = crc32fast::Hasher::new();
        crc.update(&[kind]);
        crc.update(&payload);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&crc.finalize().to_be_bytes());
        out.push(kind);
        out.extend_from_slice(&payload);
        Ok(())
    }
}

/// The valid records at the start of `buf` (stopping at a torn tail).
pub(crate) fn parse_records(buf: &[u8]) -> Result<Vec<Record>> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while buf.len() - at >= HEADER {
        let len = u32::from_be_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]) as usize;
        let crc = u32::from_be_bytes([buf[at + 4], buf[at + 5], buf[at + 6], buf[at + 7]]);
        if len == 0 || buf.len() - at - 8 < len {
            break;
        }
        let body = &buf[at + 8..at + 8 + len];
        if crc32fast::hash(body) != crc {
            break;
        }
        out.push(Record::decode(body[0], &body[1..])?);
        at += 8 + len;
    }
    Ok(out)
}

fn segment_name(seq: u64) -> String {
    format!("{seq:016x}.wal")
}

/// The segments in `dir`, oldest first.
fn segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name();
        let Some(seq) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".wal"))
            .and_then(|s| u64::from_str_radix(s, 16).ok())
        else {
            continue;
        };
        out.push((seq, e.path()));
    }
    out.sort();
    Ok(out)
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)?.sync_all()?;
    Ok(())
}

/// Deletes the segments older than `seq` (the backend holds what they journaled).
pub fn remove_before(dir: &Path, seq: u64) -> Result<()> {
    for (s, path) in segments(dir)? {
        if s >= seq {
            break;
        }
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Reserves `len` bytes for `file` so that appends need no block allocation; where the
/// filesystem cannot, the file just grows as it is written.
#[allow(unsafe_code)] // fallocate(2): std has no call for it
fn preallocate(file: &File, len: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: fallocate on an open descriptor we own; it touches no memory of ours.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len as libc::off_t) };
    if rc != 0 {
        tracing::debug!(
            error = %std::io::Error::last_os_error(),
            "journal segment not preallocated"
        );
    }
}

/// The journal: the segment being written and where the next record goes.
pub struct Wal {
    dir: PathBuf,
    seq: u64,
    file: Option<File>,
    offset: u64,
    buf: Vec<u8>,
    /// Where fsync latencies and written bytes are counted (none before the raft loop runs).
    metrics: Option<Arc<crate::metrics::Metrics>>,
}

impl Wal {
    /// Counts this journal's fsyncs and writes in `metrics` from now on.
    pub fn count_into(&mut self, metrics: Arc<crate::metrics::Metrics>) {
        self.metrics = Some(metrics);
    }

    /// `fdatasync` of `f`, timed.
    fn sync_file(&self, f: &File) -> Result<()> {
        let start = Instant::now();
        f.sync_data()?;
        if let Some(m) = &self.metrics {
            m.disk.wal_fsync.observe_since(start);
        }
        Ok(())
    }

    /// Opens the journal in `dir` (created if missing) and returns the records it holds,
    /// oldest first. Nothing is written until [`Wal::reset`] (after the records are
    /// safely in the backend) starts a new segment.
    pub fn open(dir: &Path) -> Result<(Wal, Vec<Record>)> {
        std::fs::create_dir_all(dir)?;
        let mut records = Vec::new();
        let mut last = 0;
        for (seq, path) in segments(dir)? {
            let mut buf = Vec::new();
            File::open(&path)?.read_to_end(&mut buf)?;
            records.extend(parse_records(&buf)?);
            last = seq;
        }
        let wal = Wal {
            dir: dir.to_path_buf(),
            seq: last,
            file: None,
            offset: 0,
            buf: Vec::new(),
            metrics: None,
        };
        Ok((wal, records))
    }

    /// The directory the segments live in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Starts a new segment (syncing the current one first) and returns its number:
    /// every older segment holds only records whose backend writes were issued before
    /// this call.
    pub fn rotate(&mut self) -> Result<u64> {
        if let Some(f) = &self.file {
            self.sync_file(f)?;
        }
        let seq = self.seq + 1;
        let file = OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(self.dir.join(segment_name(seq)))?;
        preallocate(&file, SEGMENT_BYTES);
        file.sync_all()?;
        sync_dir(&self.dir)?;
        self.seq = seq;
        self.file = Some(file);
        self.offset = 0;
        Ok(seq)
    }

    /// Starts a new segment and deletes every older one: for when the backend has just
    /// been flushed with everything they hold.
    pub fn reset(&mut self) -> Result<()> {
        let seq = self.rotate()?;
        remove_before(&self.dir, seq)
    }

    /// Writes `records` (not yet durable: see [`Wal::sync`]). Returns the new segment's
    /// number when the current one was full and a new one was started, so the caller
    /// can checkpoint the older ones.
    pub fn append(&mut self, records: &[RecordRef<'_>]) -> Result<Option<u64>> {
        let mut rotated = None;
        if self.file.is_none() || self.offset >= SEGMENT_BYTES {
            rotated = Some(self.rotate()?);
        }
        self.buf.clear();
        for r in records {
            r.encode_into(&mut self.buf)?;
        }
        let file = self
            .file
            .as_ref()
            .ok_or_else(|| Error::Corrupt("journal has no open segment".into()))?;
        failpoint!("walBeforeAppend");
        file.write_all_at(&self.buf, self.offset)?;
        failpoint!("walAfterAppend");
        self.offset += self.buf.len() as u64;
        if let Some(m) = &self.metrics {
            m.disk.wal_write_bytes.add(self.buf.len() as u64);
        }
        Ok(rotated)
    }

    /// Makes every record written so far durable.
    pub fn sync(&self) -> Result<()> {
        if let Some(f) = &self.file {
            failpoint!("walBeforeFsync");
            self.sync_file(f)?;
            failpoint!("walAfterFsync");
        }
        Ok(())
    }
}

/// Opens the journal in `dir` and replays it onto `backend`: the log entries and hard
/// state it holds that the backend may not have flushed. The backend is then flushed and
/// the journal starts afresh.
pub fn recover(dir: &Path, backend: &dyn Backend) -> Result<Wal> {
    let (mut wal, mut records) = Wal::open(dir)?;
    if !records.is_empty() {
        let (log, _) = RaftLog::open(backend, &[])?;
        let (snap_index, _) = log.snapshot_point();
        // A snapshot install journals its point first. If the backend has it, the
        // records before it describe a log the snapshot replaced; if not, the install
        // never finished and the record is dropped (nothing can follow it).
        let last_snapshot = records.iter().enumerate().rev().find_map(|(i, r)| match r {
            Record::Snapshot(meta) => Some((i, meta.index)),
            _ => None,
        });
        if let Some((pos, index)) = last_snapshot {
            if snap_index >= index {
                records.drain(..=pos);
            } else {
                records.truncate(pos);
            }
        }
        let mut batch = WriteBatch::default();
        let mut replayed = 0usize;
        let mut hard_state = None;
        for r in records {
            match r {
                Record::Entries(ents) => {
                    let (snap_index, _) = log.snapshot_point();
                    let ents: Vec<Entry> =
                        ents.into_iter().filter(|e| e.index > snap_index).collect();
                    replayed += ents.len();
                    log.append(&ents, &mut batch)?;
                }
                Record::HardState(hs) => hard_state = Some(hs),
                Record::Snapshot(_) => {}
            }
        }
        // Merged once the log is whole again (a replayed append truncates it for a moment).
        if let Some(hs) = hard_state {
            log.merge_hard_state(&hs, &mut batch)?;
        }
        backend.write(batch)?;
        backend.sync()?;
        tracing::info!(entries = replayed, "journal replayed");
    }
    wal.reset()?;
    Ok(wal)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::SledBackend;
    use raft::Storage;

    fn write(wal: &mut Wal, records: &[Record]) -> Option<u64> {
        let refs: Vec<RecordRef<'_>> = records.iter().map(Record::as_ref).collect();
        wal.append(&refs).expect("append")
    }

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            data: vec![index as u8; 40].into(),
            ..Default::default()
        }
    }

    #[test]
    fn records_round_trip_and_torn_tail_is_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut wal, recs) = Wal::open(dir.path()).expect("open");
        assert!(recs.is_empty());
        let hs = HardState {
            term: 3,
            vote: 2,
            commit: 5,
            ..Default::default()
        };
        let written = vec![
            Record::Entries(vec![entry(1, 1), entry(2, 1)]),
            Record::HardState(hs),
        ];
        write(&mut wal, &written);
        wal.sync().expect("sync");
        // A torn record after them: a length and part of a body.
        let seg = dir.path().join(segment_name(wal.seq));
        let f = OpenOptions::new().write(true).open(&seg).expect("segment");
        f.write_all_at(&[0, 0, 0, 50, 1, 2, 3, 4, 1, 9, 9], wal.offset)
            .expect("torn write");
        drop(wal);
        let (_, recs) = Wal::open(dir.path()).expect("reopen");
        assert_eq!(recs, written);
    }

    #[test]
    fn corrupt_record_ends_the_segment() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut wal, _) = Wal::open(dir.path()).expect("open");
        write(&mut wal, &[Record::Entries(vec![entry(1, 1)])]);
        let first_end = wal.offset;
        write(&mut wal, &[Record::Entries(vec![entry(2, 1)])]);
        let seg = dir.path().join(segment_name(wal.seq));
        let f = OpenOptions::new().write(true).open(&seg).expect("segment");
        // Flip a byte of the second record's body.
        f.write_all_at(&[0xff], first_end + 12).expect("flip");
        let (_, recs) = Wal::open(dir.path()).expect("reopen");
        assert_eq!(recs, vec![Record::Entries(vec![entry(1, 1)])]);
    }

    #[test]
    fn replay_restores_what_the_backend_lost() {
        let dir = tempfile::tempdir().expect("tempdir");
        let be = SledBackend::open(&dir.path().join("db")).expect("backend");
        let wal_dir = dir.path().join("wal");
        let mut wal = recover(&wal_dir, be.as_ref()).expect("recover");
        // Journaled but never written to the backend (as after a crash between the
        // journal's sync and the backend's flush).
        let hs = HardState {
            term: 2,
            vote: 1,
            commit: 3,
            ..Default::default()
        };
        write(
            &mut wal,
            &[
                Record::Entries(vec![entry(1, 1), entry(2, 1), entry(3, 1)]),
                Record::Entries(vec![entry(3, 2), entry(4, 2)]),
                Record::HardState(hs.clone()),
            ],
        );
        wal.sync().expect("sync");
        drop(wal);
        let wal = recover(&wal_dir, be.as_ref()).expect("recover");
        let (log, _) = RaftLog::open(be.as_ref(), &[]).expect("log");
        assert_eq!(log.span(), (1, 4));
        assert_eq!(log.term(3).expect("term"), 2);
        assert_eq!(log.initial_state().expect("state").hard_state, hs);
        // The journal starts empty once the backend holds it all.
        assert_eq!(segments(wal.dir()).expect("segments").len(), 1);
        drop(wal);
        let (_, recs) = Wal::open(&wal_dir).expect("reopen");
        assert!(recs.is_empty());
    }

    #[test]
    fn replay_keeps_the_backends_later_commit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let be = SledBackend::open(&dir.path().join("db")).expect("backend");
        let wal_dir = dir.path().join("wal");
        let mut wal = recover(&wal_dir, be.as_ref()).expect("recover");
        let early = HardState {
            term: 1,
            vote: 1,
            commit: 1,
            ..Default::default()
        };
        let records = [
            Record::Entries(vec![entry(1, 1), entry(2, 1)]),
            Record::HardState(early),
            Record::Entries(vec![entry(3, 1), entry(4, 1)]),
        ];
        write(&mut wal, &records);
        wal.sync().expect("sync");
        // The backend got the same writes, and later commits (which are not journaled).
        let (log, _) = RaftLog::open(be.as_ref(), &[1]).expect("log");
        let mut b = WriteBatch::default();
        log.append(&[entry(1, 1), entry(2, 1)], &mut b)
            .expect("append");
        log.append(&[entry(3, 1), entry(4, 1)], &mut b)
            .expect("append");
        log.set_commit(4, &mut b).expect("commit");
        be.write(b).expect("write");
        drop((wal, log));
        recover(&wal_dir, be.as_ref()).expect("recover");
        let (log, _) = RaftLog::open(be.as_ref(), &[]).expect("log");
        let hs = log.initial_state().expect("state").hard_state;
        assert_eq!((hs.term, hs.vote, hs.commit), (1, 1, 4));
        assert_eq!(log.span(), (1, 4));
    }

    #[test]
    fn replay_skips_what_a_snapshot_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let be = SledBackend::open(&dir.path().join("db")).expect("backend");
        let wal_dir = dir.path().join("wal");
        let mut wal = recover(&wal_dir, be.as_ref()).expect("recover");
        let (log, _) = RaftLog::open(be.as_ref(), &[1]).expect("log");
        // Stale entries of an old term beyond the snapshot point, then the snapshot.
        let meta = SnapshotMetadata {
            index: 10,
            term: 3,
            ..Default::default()
        };
        write(
            &mut wal,
            &[
                Record::Entries(vec![entry(1, 1), entry(2, 1)]),
                Record::Entries((3..=12).map(|i| entry(i, 1)).collect()),
                Record::Snapshot(meta.clone()),
            ],
        );
        wal.sync().expect("sync");
        let mut b = WriteBatch::default();
        log.install_snapshot(&meta, &mut b).expect("install");
        be.write(b).expect("write");
        be.sync().expect("sync");
        drop((wal, log));
        recover(&wal_dir, be.as_ref()).expect("recover");
        let (log, _) = RaftLog::open(be.as_ref(), &[]).expect("log");
        assert_eq!(log.span(), (11, 10), "nothing after the snapshot point");
    }

    #[test]
    fn full_segment_rotates() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut wal, _) = Wal::open(dir.path()).expect("open");
        assert_eq!(write(&mut wal, &[]), Some(1));
        wal.offset = SEGMENT_BYTES;
        assert_eq!(
            write(&mut wal, &[Record::Entries(vec![entry(1, 1)])]),
            Some(2)
        );
        remove_before(dir.path(), 2).expect("remove");
        let names: Vec<u64> = segments(dir.path())
            .expect("segments")
            .into_iter()
            .map(|(s, _)| s)
            .collect();
        assert_eq!(names, vec![2]);
        let (_, recs) = Wal::open(dir.path()).expect("reopen");
        assert_eq!(recs, vec![Record::Entries(vec![entry(1, 1)])]);
    }
}
