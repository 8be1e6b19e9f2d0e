//! The storage seam: a narrow ordered key-value interface with atomic batches and an
//! explicit `sync` (fsync), implemented on sled. Raft log, hard state and the applied
//! state machine all live in one keyspace so that one batch can update them atomically.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use parking_lot::RwLock;

use crate::error::Result;

/// One atomic group of writes: `Some(value)` inserts, `None` removes.
#[derive(Default, Debug)]
pub struct WriteBatch {
    ops: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    /// The highest keyspace revision whose records the batch writes (0: none); once the
    /// batch is in the backend, the keyspace may stop holding those records in memory
    /// (see [`crate::mvcc`]).
    revision: i64,
}

impl WriteBatch {
    pub fn put(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.ops.push((key.into(), Some(value.into())));
    }

    pub fn delete(&mut self, key: impl Into<Vec<u8>>) {
        self.ops.push((key.into(), None));
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Operations in the batch.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Appends `other`'s writes after these.
    pub fn extend(&mut self, other: WriteBatch) {
        self.revision = self.revision.max(other.revision);
        if self.ops.is_empty() {
            self.ops = other.ops;
        } else {
            self.ops.extend(other.ops);
        }
    }

    /// Notes that the batch writes the records of keyspace revision `rev`.
    pub fn note_revision(&mut self, rev: i64) {
        self.revision = self.revision.max(rev);
    }

    /// The highest keyspace revision whose records the batch writes (0: none).
    pub fn revision(&self) -> i64 {
        self.revision
    }
}

/// What a scan calls with each key and value; false stops it.
pub type Visit<'a> = dyn FnMut(&[u8], &[u8]) -> Result<bool> + 'a;

/// An ordered, durable key-value engine.
pub trait Backend: Send + Sync + 'static {
    /// The value stored at `key`.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>>;
    /// Every pair whose key starts with `prefix`, in key order.
    fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>>;
    /// Calls `f` with every pair whose key is in `from..to`, in key order, until it returns
    /// false; nothing is gathered in memory (the keyspace's records are scanned this way).
    fn scan(&self, from: &[u8], to: &[u8], f: &mut Visit<'_>) -> Result<()>;
    /// Applies `batch` atomically (all or nothing after a crash). Not yet durable.
    fn write(&self, batch: WriteBatch) -> Result<()>;
    /// Makes every write issued so far durable (fsync).
    fn sync(&self) -> Result<()>;
    /// Bytes the engine occupies on disk.
    fn size_on_disk(&self) -> u64;
    /// The highest keyspace revision ([`WriteBatch::revision`]) of the batches written so
    /// far: readers find those records here from now on.
    fn written_revision(&self) -> i64;
    /// Rewrites the engine's files to hold only its live data (etcd's defragmentation);
    /// every handle sees the rewritten engine.
    fn defragment(&self) -> Result<crate::defrag::Defragmented>;
    /// Another handle on the same engine.
    fn share(&self) -> Arc<dyn Backend>;
}

/// sled's page cache.
const CACHE_BYTES: u64 = 32 * 1024 * 1024;

/// The sled engine.
#[derive(Clone)]
pub struct SledBackend {
    /// The open database: every handle from [`Backend::share`] sees the same one, also once a
    /// defragmentation has replaced it (see [`crate::defrag`]).
    engine: Arc<RwLock<Engine>>,
    /// sled's directory (`<data-dir>/db`).
    dir: Arc<PathBuf>,
    written: Arc<AtomicI64>,
}

/// How long [`Engine::open`] waits for a held lock on the database.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// Whether sled's open failed because its directory's lock is held.
fn is_lock_held(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::WouldBlock || e.to_string().contains("could not acquire lock")
}

/// One open sled database.
pub(crate) struct Engine {
    pub(crate) db: sled::Db,
    /// sled's data file, opened a second time: sled's own flush ends in
    /// `sync_file_range`, which neither commits the file's metadata nor flushes the
    /// drive's write cache, so `sync` follows it with an `fdatasync` of this file.
    file: std::fs::File,
    /// Set when a defragmentation failed after it moved this database aside: nothing may be
    /// written to it any more (the next start would not read it).
    pub(crate) retired: bool,
}

impl Engine {
    /// Opens (or creates) sled in `dir` with kvstore's settings.
    ///
    /// sled holds a lock on its directory while open. A database this process just closed
    /// keeps it for a moment (sled's background threads drop their handles after the last
    /// `Db`), so a held lock is retried for [`LOCK_WAIT`] before it is reported as the
    /// data dir being in use.
    pub(crate) fn open(dir: &Path) -> Result<Engine> {
        let config = sled::Config::new()
            .path(dir)
            // sled caches 1 GiB by default. What is read back while running is the values
            // of keys not written lately (the keyspace holds its key index in memory, and
            // the records of its latest revisions), so a modest cache keeps hot values
            // without holding the data set.
            .cache_capacity(CACHE_BYTES)
            .flush_every_ms(Some(500));
        let waited = std::time::Instant::now();
        let db = loop {
            match config.open() {
                Ok(db) => break db,
                Err(sled::Error::Io(e)) if is_lock_held(&e) => {
                    if waited.elapsed() >= LOCK_WAIT {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::WouldBlock,
                            format!(
                                "{} is in use by another process (its lock was held for {:?})",
                                dir.display(),
                                LOCK_WAIT
                            ),
                        )
                        .into());
                    }
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => return Err(e.into()),
            }
        };
        let file = std::fs::File::open(dir.join("db"))?;
        Ok(Engine {
            db,
            file,
            retired: false,
        })
    }

    /// Fails once the data file has no name left (its data dir was deleted under the
    /// running member), or the database was retired: what is written after that would be
    /// lost at the next start, so the writer stops and the member with it, rather than
    /// acknowledge writes into a file nobody can open again.
    fn check_writable(&self) -> Result<()> {
        use std::os::unix::fs::MetadataExt;
        if self.retired {
            return Err(std::io::Error::other(
                "the backend was retired by a failed defragmentation",
            )
            .into());
        }
        if self.file.metadata()?.nlink() == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "the backend's data file was deleted",
            )
            .into());
        }
        Ok(())
    }

    /// sled's flush, then an `fdatasync` of its file.
    pub(crate) fn sync(&self) -> Result<()> {
        self.db.flush()?;
        self.file.sync_data()?;
        Ok(())
    }
}

impl SledBackend {
    /// Opens (or creates) the engine in `dir`, first finishing or undoing a
    /// defragmentation a crash interrupted ([`crate::defrag::recover`]).
    pub fn open(dir: &Path) -> Result<Arc<Self>> {
        crate::defrag::recover(dir)?;
        Ok(Arc::new(SledBackend {
            engine: Arc::new(RwLock::new(Engine::open(dir)?)),
            dir: Arc::new(dir.to_path_buf()),
            written: Arc::new(AtomicI64::new(0)),
        }))
    }
}

impl Backend for SledBackend {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.engine.read().db.get(key)?.map(|v| v.to_vec()))
    }

    fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let engine = self.engine.read();
        let mut out = Vec::new();
        for item in engine.db.scan_prefix(prefix) {
            let (k, v) = item?;
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    fn scan(&self, from: &[u8], to: &[u8], f: &mut Visit<'_>) -> Result<()> {
        let engine = self.engine.read();
        for item in engine.db.range(from..to) {
            let (k, v) = item?;
            if !f(&k, &v)? {
                break;
            }
        }
        Ok(())
    }

    fn write(&self, batch: WriteBatch) -> Result<()> {
        let engine = self.engine.read();
        engine.check_writable()?;
        let mut b = sled::Batch::default();
        for (k, v) in batch.ops {
            match v {
                Some(v) => b.insert(k, v),
                None => b.remove(k),
            }
        }
        engine.db.apply_batch(b)?;
        self.written.fetch_max(batch.revision, Ordering::Release);
        Ok(())
    }

    fn sync(&self) -> Result<()> {
        let engine = self.engine.read();
        engine.check_writable()?;
        engine.sync()
    }

    fn size_on_disk(&self) -> u64 {
        self.engine.read().db.size_on_disk().unwrap_or(0)
    }

    fn written_revision(&self) -> i64 {
        self.written.load(Ordering::Acquire)
    }

    fn defragment(&self) -> Result<crate::defrag::Defragmented> {
        let mut engine = self.engine.write();
        crate::defrag::defragment(&self.dir, &mut engine)
    }

    fn share(&self) -> Arc<dyn Backend> {
        Arc::new(self.clone())
    }
}

/// Key layout of the one keyspace.
pub mod keys {
    pub const HARD_STATE: &[u8] = b"r/h";
    pub const CONF_STATE: &[u8] = b"r/c";
    pub const SNAPSHOT_META: &[u8] = b"r/s";
    pub const LOG_PREFIX: &[u8] = b"r/l/";
    /// The keyspace's records, one per revision position: `v/` + main + sub, both
    /// big-endian (see `history`).
    pub const REV_PREFIX: &[u8] = b"v/";
    /// The key right after every record's.
    pub const REV_END: &[u8] = b"v0";
    /// Runs of revision records under their first main revision, the layout before one key
    /// per record: converted at start (see `history`).
    pub const CHUNK_PREFIX: &[u8] = b"c/";
    /// One record per key, the layout before chunks: refused at load.
    pub const LEGACY_REV_PREFIX: &[u8] = b"k/";
    pub const LEASE_PREFIX: &[u8] = b"e/";
    pub const APPLIED: &[u8] = b"m/applied";
    pub const COMPACTED: &[u8] = b"m/compact";
    pub const MEMBERS: &[u8] = b"m/members";
    /// The replicated alarm list (see `alarm`).
    pub const ALARMS: &[u8] = b"m/alarms";
    /// The replicated users, roles and enabled flag (see `auth`).
    pub const AUTH: &[u8] = b"m/auth";
    /// Everything under this prefix belongs to the state machine (with CHUNK_ and LEASE_).
    pub const META_PREFIX: &[u8] = b"m/";
    /// This member's id and its cluster's: identity, never replaced by a snapshot.
    pub const SELF_ID: &[u8] = b"i/self";
    pub const CLUSTER_ID: &[u8] = b"i/cluster";

    pub fn log(index: u64) -> Vec<u8> {
        [LOG_PREFIX, &index.to_be_bytes()].concat()
    }

    /// The key of the record at revision `main`.`sub`.
    pub fn rev(main: i64, sub: i64) -> Vec<u8> {
        let mut k = Vec::with_capacity(REV_PREFIX.len() + 16);
        k.extend_from_slice(REV_PREFIX);
        k.extend_from_slice(&main.to_be_bytes());
        k.extend_from_slice(&sub.to_be_bytes());
        k
    }

    /// The revision position a record key names, if it is one.
    pub fn parse_rev(key: &[u8]) -> Option<(i64, i64)> {
        let rest = key.strip_prefix(REV_PREFIX)?;
        let main: [u8; 8] = rest.get(..8)?.try_into().ok()?;
        let sub: [u8; 8] = rest.get(8..)?.try_into().ok()?;
        Some((i64::from_be_bytes(main), i64::from_be_bytes(sub)))
    }

    pub fn chunk(first_main: i64) -> Vec<u8> {
        [CHUNK_PREFIX, &first_main.to_be_bytes()].concat()
    }

    pub fn lease(id: i64) -> Vec<u8> {
        [LEASE_PREFIX, &id.to_be_bytes()].concat()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A database closed in this process opens again at once, however soon after.
    #[test]
    fn a_closed_database_reopens_at_once() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("db");
        for i in 0..30u32 {
            let be = SledBackend::open(&dir).expect("open");
            let mut b = WriteBatch::default();
            b.put(i.to_be_bytes().to_vec(), vec![1; 64]);
            be.write(b).expect("write");
            be.sync().expect("sync");
        }
        let be = SledBackend::open(&dir).expect("open");
        assert_eq!(
            be.get(&29u32.to_be_bytes()).expect("get"),
            Some(vec![1; 64])
        );
    }

    /// A database another holder keeps open is reported as in use, not opened twice.
    #[test]
    fn a_database_held_open_is_reported_in_use() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("db");
        let _held = SledBackend::open(&dir).expect("open");
        let err = SledBackend::open(&dir).err().expect("second open refused");
        assert!(err.to_string().contains("is in use"), "{err}");
    }
}
