//! The storage seam: a narrow ordered key-value interface with atomic batches and an
//! explicit `sync` (fsync), implemented on sled. Raft log, hard state and the applied
//! state machine all live in one keyspace so that one batch can update them atomically.

use std::path::Path;
use std::sync::Arc;

use crate::error::Result;

/// One atomic group of writes: `Some(value)` inserts, `None` removes.
#[derive(Default, Debug)]
pub struct WriteBatch {
    ops: Vec<(Vec<u8>, Option<Vec<u8>>)>,
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
        if self.ops.is_empty() {
            self.ops = other.ops;
        } else {
            self.ops.extend(other.ops);
        }
    }
}

/// An ordered, durable key-value engine.
pub trait Backend: Send + Sync + 'static {
    /// The value stored at `key`.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>>;
    /// Every pair whose key starts with `prefix`, in key order.
    fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>>;
    /// Applies `batch` atomically (all or nothing after a crash). Not yet durable.
    fn write(&self, batch: WriteBatch) -> Result<()>;
    /// Makes every write issued so far durable (fsync).
    fn sync(&self) -> Result<()>;
    /// Bytes the engine occupies on disk.
    fn size_on_disk(&self) -> u64;
}

/// The sled engine.
pub struct SledBackend {
    db: sled::Db,
    /// sled's data file, opened a second time: sled's own flush ends in
    /// `sync_file_range`, which neither commits the file's metadata nor flushes the
    /// drive's write cache, so `sync` follows it with an `fdatasync` of this file.
    file: std::fs::File,
}

impl SledBackend {
    /// Opens (or creates) the engine in `dir`.
    pub fn open(dir: &Path) -> Result<Arc<Self>> {
        let db = sled::Config::new()
            .path(dir)
            // sled caches 1 GiB by default. Nothing is read back from it while running (the
            // state machine and the raft log since its truncation point are in memory), so
            // a small cache only slows the start-up scan.
            .cache_capacity(8 * 1024 * 1024)
            .flush_every_ms(Some(500))
            .open()?;
        let file = std::fs::File::open(dir.join("db"))?;
        Ok(Arc::new(SledBackend { db, file }))
    }
}

impl Backend for SledBackend {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.db.get(key)?.map(|v| v.to_vec()))
    }

    fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut out = Vec::new();
        for item in self.db.scan_prefix(prefix) {
            let (k, v) = item?;
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    fn write(&self, batch: WriteBatch) -> Result<()> {
        let mut b = sled::Batch::default();
        for (k, v) in batch.ops {
            match v {
                Some(v) => b.insert(k, v),
                None => b.remove(k),
            }
        }
        self.db.apply_batch(b)?;
        Ok(())
    }

    fn sync(&self) -> Result<()> {
        self.db.flush()?;
        self.file.sync_data()?;
        Ok(())
    }

    fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }
}

/// Key layout of the one keyspace.
pub mod keys {
    pub const HARD_STATE: &[u8] = b"r/h";
    pub const CONF_STATE: &[u8] = b"r/c";
    pub const SNAPSHOT_META: &[u8] = b"r/s";
    pub const LOG_PREFIX: &[u8] = b"r/l/";
    /// Runs of revision records, each under its first main revision (see `history`).
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

    pub fn chunk(first_main: i64) -> Vec<u8> {
        [CHUNK_PREFIX, &first_main.to_be_bytes()].concat()
    }

    pub fn lease(id: i64) -> Vec<u8> {
        [LEASE_PREFIX, &id.to_be_bytes()].concat()
    }
}
