//! Defragmentation (etcd's `Maintenance.Defragment`, `etcdctl defrag`): the member's
//! backend is rewritten to hold only its live data.
//!
//! sled has no call for it. sled is log-structured and frees whole segments by itself, but a
//! segment that still holds one live page keeps its space, so after a compaction or many
//! overwrites the file can stay much larger than the data. Defragmenting copies every live
//! pair into a fresh sled database beside the old one and swaps it in. It runs on the backend
//! writer's thread, after the writes queued before it (a compaction just applied is then
//! reclaimed), holding the backend's write lock: this member's readers of the backend and the
//! writes queued after it wait (the raft loop does not: it applies into the keyspace's
//! in-memory tail, whose records reach the backend once the defragmentation is done). Other
//! members are not involved.
//!
//! On disk, `<data-dir>/db` is the database; the steps are:
//! 1. flush `db`; build `db.defrag` (copy, flush, fsync);
//! 2. rename `db` to `db.old`; 3. rename `db.defrag` to `db`; fsync the data dir;
//! 4. open `db`; 5. remove `db.old`.
//!
//! A crash at any point leaves a member that starts with all its data; [`recover`], run
//! before the backend opens, reads which step was reached from what is there:
//! - `db` and `db.defrag` (crashed in step 1): the copy may be partial; it is removed;
//! - `db.old` and `db.defrag`, no `db` (between 2 and 3): the copy is complete (`db` is moved
//!   aside only once it is); it becomes `db`, and `db.old` is removed;
//! - `db` and `db.old` (after 3): `db.old` is removed;
//! - `db.old` alone (not left by any step; the copy was removed by hand): it is taken back.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::backend::Engine;
use crate::error::{Error, Result};
use crate::node::Msg;
use crate::replica::Replica;

/// What one defragmentation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Defragmented {
    /// The backend's size on disk before and after.
    pub size_before: u64,
    pub size_after: u64,
    /// How long the backend was locked.
    pub took: Duration,
}

impl Replica {
    /// etcd's Defragment of this member: done by the backend writer once the writes applied
    /// before the call are in the backend (so a compaction just applied is reclaimed).
    pub async fn defragment(&self) -> Result<Defragmented> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.tx
            .send(Msg::Defragment { tx })
            .map_err(|_| Error::Stopped)?;
        rx.await.map_err(|_| Error::Stopped)?
    }
}

/// Pairs copied per sled batch.
const BATCH: usize = 10_000;

fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    dir.with_file_name(name)
}

/// The fresh copy being built.
fn building(dir: &Path) -> PathBuf {
    sibling(dir, ".defrag")
}

/// The old database, moved aside.
fn retired(dir: &Path) -> PathBuf {
    sibling(dir, ".old")
}

/// fsync of the directory holding `dir`, so renames in it are durable.
fn sync_parent(dir: &Path) -> Result<()> {
    if let Some(parent) = dir.parent() {
        std::fs::File::open(parent)?.sync_all()?;
    }
    Ok(())
}

/// Finishes or undoes a defragmentation of the sled database in `dir` that a crash
/// interrupted (see the module doc). Nothing to do when none was under way.
pub fn recover(dir: &Path) -> Result<()> {
    let (new, old) = (building(dir), retired(dir));
    if !dir.exists() && new.exists() {
        if !old.exists() {
            // `db` is renamed only once the copy is complete, and then to `db.old`: without
            // either, this is not a state a defragmentation leaves.
            return Err(Error::Corrupt(format!(
                "{} is missing and only an unfinished defragmentation copy {} is there",
                dir.display(),
                new.display()
            )));
        }
        tracing::warn!(dir = %dir.display(), "finishing an interrupted defragmentation");
        std::fs::rename(&new, dir)?;
        sync_parent(dir)?;
    }
    if !dir.exists() && old.exists() {
        // Not a state a defragmentation leaves (the copy was removed by hand?): the old
        // database is complete, so it is taken back rather than a new empty one made.
        tracing::warn!(dir = %old.display(), "taking back the database a defragmentation moved aside");
        std::fs::rename(&old, dir)?;
        sync_parent(dir)?;
    }
    if new.exists() {
        tracing::warn!(dir = %new.display(), "removing an unfinished defragmentation copy");
        std::fs::remove_dir_all(&new)?;
    }
    if old.exists() && dir.exists() {
        std::fs::remove_dir_all(&old)?;
    }
    Ok(())
}

/// Copies every pair of `from` into a fresh database at `to`, made durable; the pairs and
/// bytes copied.
fn copy(from: &sled::Db, to: &Path) -> Result<(u64, u64)> {
    if to.exists() {
        std::fs::remove_dir_all(to)?;
    }
    let fresh = Engine::open(to)?;
    let mut batch = sled::Batch::default();
    let (mut n, mut pairs, mut bytes) = (0, 0u64, 0u64);
    for item in from.iter() {
        let (k, v) = item?;
        pairs += 1;
        bytes += (k.len() + v.len()) as u64;
        batch.insert(k, v);
        n += 1;
        if n == BATCH {
            fresh.db.apply_batch(std::mem::take(&mut batch))?;
            n = 0;
        }
    }
    fresh.db.apply_batch(batch)?;
    fresh.sync()?;
    Ok((pairs, bytes))
}

/// Rewrites the database in `dir`, open as `engine` (the caller holds the backend's write
/// lock), to hold only its live data; afterwards `engine` is the rewritten one. An error
/// before the swap leaves the old database in place and in use; one after it retires the
/// old database (writes to it fail, so the member stops), as the next start reads the new.
pub(crate) fn defragment(dir: &Path, engine: &mut Engine) -> Result<Defragmented> {
    let started = Instant::now();
    let size_before = engine.db.size_on_disk().unwrap_or(0);
    engine.sync()?;
    let (new, old) = (building(dir), retired(dir));
    let (pairs, bytes) = copy(&engine.db, &new)?;
    std::fs::rename(dir, &old)?;
    let swapped = std::fs::rename(&new, dir)
        .map_err(Into::into)
        .and_then(|()| sync_parent(dir))
        .and_then(|()| Engine::open(dir));
    let fresh = match swapped {
        Ok(fresh) => fresh,
        Err(e) => {
            engine.retired = true;
            return Err(e);
        }
    };
    drop(std::mem::replace(engine, fresh));
    if let Err(e) = std::fs::remove_dir_all(&old) {
        // The next start removes it.
        tracing::warn!(dir = %old.display(), error = %e, "removing the old backend failed");
    }
    let done = Defragmented {
        size_before,
        size_after: engine.db.size_on_disk().unwrap_or(0),
        took: started.elapsed(),
    };
    tracing::info!(
        path = %dir.display(),
        current_db_size_bytes = done.size_before,
        new_db_size_bytes = done.size_after,
        pairs,
        live_bytes = bytes,
        took = ?done.took,
        "finished defragmenting directory"
    );
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{Backend, SledBackend, WriteBatch};

    fn fill(dir: &Path, n: u32, value_len: usize) {
        let be = SledBackend::open(dir).expect("open");
        for chunk in 0..n / 100 {
            let mut b = WriteBatch::default();
            for i in chunk * 100..(chunk + 1) * 100 {
                b.put(i.to_be_bytes().to_vec(), vec![i as u8; value_len]);
            }
            be.write(b).expect("write");
        }
        be.sync().expect("sync");
    }

    fn assert_holds(dir: &Path, n: u32, value_len: usize) {
        let be = SledBackend::open(dir).expect("open");
        for i in 0..n {
            let v = be.get(&i.to_be_bytes()).expect("get");
            assert_eq!(v, Some(vec![i as u8; value_len]), "key {i}");
        }
    }

    #[test]
    fn defragment_shrinks_and_every_handle_sees_the_new_db() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("db");
        let be = SledBackend::open(&dir).expect("open");
        let other = be.share();
        // Overwrite the same keys many times: the file holds many dead versions.
        for round in 0..20u8 {
            let mut b = WriteBatch::default();
            for i in 0..200u32 {
                b.put(i.to_be_bytes().to_vec(), vec![round; 4096]);
            }
            be.write(b).expect("write");
            be.sync().expect("sync");
        }
        let done = be.defragment().expect("defragment");
        assert!(
            done.size_after < done.size_before,
            "{done:?} did not shrink"
        );
        assert_eq!(other.size_on_disk(), done.size_after);
        assert_eq!(
            other.get(&7u32.to_be_bytes()).expect("get"),
            Some(vec![19; 4096])
        );
        let mut b = WriteBatch::default();
        b.put(b"after".to_vec(), b"v".to_vec());
        other.write(b).expect("write after");
        other.sync().expect("sync after");
        assert!(!building(&dir).exists() && !retired(&dir).exists());
        drop((be, other));
        let be = SledBackend::open(&dir).expect("reopen");
        assert_eq!(be.get(b"after").expect("get"), Some(b"v".to_vec()));
        assert_eq!(
            be.get(&199u32.to_be_bytes()).expect("get"),
            Some(vec![19; 4096])
        );
    }

    /// Each state a crash can leave between the steps starts with all the data.
    #[test]
    fn a_crash_between_any_two_steps_loses_nothing() {
        let n = 1_000;
        // Crashed while copying: a partial copy beside the database.
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("db");
        fill(&dir, n, 100);
        fill(&building(&dir), 10, 1);
        assert_holds(&dir, n, 100);
        assert!(!building(&dir).exists());

        // Crashed after moving the database aside, before the copy took its name.
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("db");
        fill(&dir, n, 100);
        {
            let engine = Engine::open(&dir).expect("open");
            copy(&engine.db, &building(&dir)).expect("copy");
        }
        std::fs::rename(&dir, retired(&dir)).expect("rename");
        assert_holds(&dir, n, 100);
        assert!(!retired(&dir).exists() && !building(&dir).exists());

        // Crashed after the swap, before the old database was removed.
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("db");
        fill(&dir, n, 100);
        fill(&retired(&dir), 10, 1);
        assert_holds(&dir, n, 100);
        assert!(!retired(&dir).exists());

        // The old database alone is taken back.
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("db");
        fill(&retired(&dir), n, 100);
        assert_holds(&dir, n, 100);
        assert!(!retired(&dir).exists());

        // A copy alone, with neither database, is refused rather than taken.
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("db");
        fill(&building(&dir), 10, 1);
        assert!(recover(&dir).is_err());
    }
}
