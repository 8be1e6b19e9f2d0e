//! The backend writer: a thread that hands the raft loop's writes to the backend in the
//! order they were made, so the raft thread never waits on the backend. Writes are
//! gathered for up to `INTERVAL` (or `MAX_OPS` operations) into one backend batch, as
//! etcd gathers its backend commits: each sled batch costs an I/O buffer written and
//! synced by sled's threads, which would otherwise compete with the journal's fsync on
//! every `Ready`. Log truncations, journal checkpoints (which first flush the backend)
//! and barriers take their turn in the same order, after the writes before them.
//!
//! Each backend commit (a gathered batch, or a flush) is timed into
//! `etcd_disk_backend_commit_duration_seconds`, the latency etcd reports for its bolt
//! commits.
//!
//! A defragmentation (`defrag`) takes its turn the same way: it runs here, after the
//! writes queued before it, and the writes queued meanwhile wait for it.
//!
//! Nothing here needs to be durable when it is queued: the journal already holds it
//! (see `wal`). A failed write stops the thread, and the raft loop's next call returns
//! the error, so the member stops rather than serve state it could not store.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, SyncSender};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::backend::{Backend, WriteBatch};
use crate::error::{Error, Result};
use crate::metrics::prom::Histogram;

/// How long writes are gathered before they go to the backend as one batch.
const INTERVAL: Duration = Duration::from_millis(100);
/// Operations gathered into one batch at most (bigger batches measured no faster and
/// cost resident memory).
const MAX_OPS: usize = 2_000;

enum Job {
    /// Writes to apply (not flushed), gathered with the ones around them.
    Write(WriteBatch),
    /// Done once every write queued before it is in the backend.
    Then(Step),
}

enum Step {
    /// Removes truncated log entries, after flushing everything written so far: the
    /// state machine must be on disk before the entries that rebuild it go.
    Truncate(WriteBatch),
    /// Flushes the backend, then deletes the journal segments older than `before`.
    Checkpoint { dir: PathBuf, before: u64 },
    /// Answered once everything queued before it is written.
    Barrier(SyncSender<()>),
    /// Defragments the backend once everything queued before it is written; the writes
    /// queued meanwhile wait (see `defrag`).
    Defragment(tokio::sync::oneshot::Sender<Result<crate::defrag::Defragmented>>),
}

/// The raft loop's handle on the writer thread.
pub(crate) struct Writer {
    tx: Option<Sender<Job>>,
    failed: Arc<Mutex<Option<String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    /// Starts the writer thread for `backend`, timing its commits into `commits`.
    pub fn spawn(
        backend: Arc<dyn Backend>,
        commits: Arc<crate::metrics::Metrics>,
    ) -> std::io::Result<Writer> {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let failed = Arc::new(Mutex::new(None));
        let report = failed.clone();
        let thread = std::thread::Builder::new()
            .name("backend-writer".into())
            .spawn(move || {
                let timed = Timed {
                    backend: backend.as_ref(),
                    commits: &commits.disk.backend_commit,
                };
                if let Err(e) = run(&timed, rx) {
                    tracing::error!(error = %e, "backend write failed; the member stops");
                    *report.lock() = Some(e.to_string());
                }
            })?;
        Ok(Writer {
            tx: Some(tx),
            failed,
            thread: Some(thread),
        })
    }

    fn send(&self, job: Job) -> Result<()> {
        let sent = self.tx.as_ref().is_some_and(|tx| tx.send(job).is_ok());
        if sent {
            return Ok(());
        }
        Err(self.error())
    }

    fn error(&self) -> Error {
        // The thread records its error just before it ends, but the jobs it held (a
        // barrier's reply, the queue itself) are dropped as its loop returns, a moment
        // earlier: wait for the end so the caller reports the cause, not "server stopped".
        if let Some(t) = &self.thread {
            let deadline = Instant::now() + Duration::from_secs(2);
            while !t.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        match self.failed.lock().as_ref() {
            Some(e) => Error::Io(std::io::Error::other(format!("backend write failed: {e}"))),
            None => Error::Stopped,
        }
    }

    /// Queues `batch` for the backend.
    pub fn write(&self, batch: WriteBatch) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        self.send(Job::Write(batch))
    }

    /// Queues the removal of truncated log entries.
    pub fn truncate(&self, batch: WriteBatch) -> Result<()> {
        self.send(Job::Then(Step::Truncate(batch)))
    }

    /// Queues a checkpoint: flush the backend, then delete the journal's segments in
    /// `dir` older than `before`.
    pub fn checkpoint(&self, dir: PathBuf, before: u64) -> Result<()> {
        self.send(Job::Then(Step::Checkpoint { dir, before }))
    }

    /// Queues a defragmentation of the backend, answered on `tx`.
    pub fn defragment(
        &self,
        tx: tokio::sync::oneshot::Sender<Result<crate::defrag::Defragmented>>,
    ) -> Result<()> {
        self.send(Job::Then(Step::Defragment(tx)))
    }

    /// Waits until everything queued so far is written (not flushed).
    pub fn barrier(&self) -> Result<()> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.send(Job::Then(Step::Barrier(tx)))?;
        rx.recv().map_err(|_| self.error())
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The backend, its writes and flushes timed.
struct Timed<'a> {
    backend: &'a dyn Backend,
    commits: &'a Histogram,
}

impl Timed<'_> {
    fn write(&self, batch: WriteBatch) -> Result<()> {
        let start = Instant::now();
        failpoint!("backendBeforeWrite");
        self.backend.write(batch)?;
        failpoint!("backendAfterWrite");
        self.commits.observe_since(start);
        Ok(())
    }

    fn sync(&self) -> Result<()> {
        let start = Instant::now();
        self.backend.sync()?;
        self.commits.observe_since(start);
        Ok(())
    }
}

fn run(backend: &Timed<'_>, rx: Receiver<Job>) -> Result<()> {
    let mut pending = WriteBatch::default();
    // When the oldest write in `pending` arrived.
    let mut since: Option<Instant> = None;
    loop {
        let job = match since {
            None => match rx.recv() {
                Ok(j) => j,
                Err(_) => break,
            },
            Some(t) => match rx.recv_timeout(INTERVAL.saturating_sub(t.elapsed())) {
                Ok(j) => j,
                Err(RecvTimeoutError::Timeout) => {
                    backend.write(std::mem::take(&mut pending))?;
                    since = None;
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            },
        };
        let step = match job {
            Job::Write(b) => {
                pending.extend(b);
                since.get_or_insert_with(Instant::now);
                if pending.len() >= MAX_OPS {
                    backend.write(std::mem::take(&mut pending))?;
                    since = None;
                }
                continue;
            }
            Job::Then(step) => step,
        };
        if !pending.is_empty() {
            backend.write(std::mem::take(&mut pending))?;
        }
        since = None;
        match step {
            Step::Truncate(batch) => {
                if let Err(e) = backend.sync().and_then(|()| backend.write(batch)) {
                    // The entries stay on disk; the next start skips them.
                    tracing::warn!(error = %e, "removing truncated raft log entries failed");
                }
            }
            Step::Checkpoint { dir, before } => {
                let res = backend
                    .sync()
                    .and_then(|()| crate::wal::remove_before(&dir, before));
                if let Err(e) = res {
                    // The segments stay; the next start replays them again.
                    tracing::warn!(error = %e, "journal checkpoint failed");
                }
            }
            Step::Barrier(tx) => {
                let _ = tx.send(());
            }
            Step::Defragment(tx) => {
                let _ = tx.send(backend.backend.defragment());
            }
        }
    }
    if !pending.is_empty() {
        backend.write(pending)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::SledBackend;

    #[test]
    fn writes_land_in_order_and_merge() {
        let dir = tempfile::tempdir().expect("tempdir");
        let be = SledBackend::open(dir.path()).expect("open");
        let w = Writer::spawn(be.clone(), Arc::new(crate::metrics::Metrics::new())).expect("spawn");
        for i in 0..100u32 {
            let mut b = WriteBatch::default();
            b.put(b"k".to_vec(), i.to_be_bytes().to_vec());
            b.put(i.to_be_bytes().to_vec(), b"v".to_vec());
            w.write(b).expect("write");
        }
        let mut b = WriteBatch::default();
        b.delete(0u32.to_be_bytes().to_vec());
        w.write(b).expect("write");
        w.barrier().expect("barrier");
        assert_eq!(
            be.get(b"k").expect("get"),
            Some(99u32.to_be_bytes().to_vec()),
            "the last write wins"
        );
        assert_eq!(be.get(&0u32.to_be_bytes()).expect("get"), None);
        assert_eq!(
            be.get(&1u32.to_be_bytes()).expect("get"),
            Some(b"v".to_vec())
        );
    }

    #[test]
    fn checkpoint_deletes_older_segments() {
        let dir = tempfile::tempdir().expect("tempdir");
        let be = SledBackend::open(&dir.path().join("db")).expect("open");
        let wal_dir = dir.path().join("wal");
        let mut wal = crate::wal::recover(&wal_dir, be.as_ref()).expect("wal");
        let next = wal.rotate().expect("rotate");
        let w = Writer::spawn(be.clone(), Arc::new(crate::metrics::Metrics::new())).expect("spawn");
        w.checkpoint(wal_dir.clone(), next).expect("checkpoint");
        w.barrier().expect("barrier");
        let left = std::fs::read_dir(&wal_dir).expect("dir").count();
        assert_eq!(left, 1, "only the new segment is left");
    }

    /// A backend whose writes fail as a full disk's do.
    struct FullDisk(Arc<dyn Backend>);

    impl Backend for FullDisk {
        fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
            self.0.get(key)
        }
        fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
            self.0.scan_prefix(prefix)
        }
        fn scan(&self, from: &[u8], to: &[u8], f: &mut crate::backend::Visit<'_>) -> Result<()> {
            self.0.scan(from, to, f)
        }
        fn write(&self, _: WriteBatch) -> Result<()> {
            Err(Error::Io(std::io::Error::from_raw_os_error(libc::ENOSPC)))
        }
        fn sync(&self) -> Result<()> {
            self.0.sync()
        }
        fn size_on_disk(&self) -> u64 {
            self.0.size_on_disk()
        }
        fn written_revision(&self) -> i64 {
            self.0.written_revision()
        }
        fn defragment(&self) -> Result<crate::defrag::Defragmented> {
            self.0.defragment()
        }
        fn share(&self) -> Arc<dyn Backend> {
            Arc::new(FullDisk(self.0.share()))
        }
    }

    /// Whatever call sees the failure first, it reports the backend's error, never a bare
    /// "server stopped" (the member's one error line must name the cause; CI once printed
    /// "server stopped" for a full disk).
    #[test]
    fn a_failed_write_is_reported_with_its_cause() {
        let dir = tempfile::tempdir().expect("tempdir");
        let be = SledBackend::open(dir.path()).expect("open");
        for _ in 0..50 {
            let w = Writer::spawn(
                Arc::new(FullDisk(be.share())),
                Arc::new(crate::metrics::Metrics::new()),
            )
            .expect("spawn");
            let mut failed = None;
            for i in 0..1000u32 {
                let mut b = WriteBatch::default();
                b.put(i.to_be_bytes().to_vec(), b"v".to_vec());
                let res = w.write(b).and_then(|()| w.barrier());
                if let Err(e) = res {
                    failed = Some(e.to_string());
                    break;
                }
            }
            let failed = failed.expect("the writes failed");
            assert!(failed.contains("No space left on device"), "{failed}");
        }
    }
}
