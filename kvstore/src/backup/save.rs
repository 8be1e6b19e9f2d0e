//! Taking a backup of a running member (etcd's `Maintenance.Snapshot`): its keyspace up to
//! the revision current when the backup starts, its leases and its auth state, streamed
//! as the bytes of a backup file without stopping the member.
//!
//! The records are read in batches of about [`BATCH_BYTES`], each under the state
//! machine's read lock (a write waits for one batch at most, not for the backup). Records
//! never change once written, so the batches together are the history at the start
//! revision, except where a compaction applied in between removed records: it only removes
//! records that a later one of the same key, at or below its compaction point, supersedes.
//! If that point stays at or below the backup's revision, the superseding record is in the
//! backup too, and the trailer names the point so a restore drops what it supersedes. A
//! compaction past the backup's revision could have removed a key's only record at that
//! revision: the backup then fails and the client can take it again.

use std::sync::Arc;

use tokio::sync::mpsc;

use super::format::{Encoder, FORMAT};
use crate::error::{Error, Result};
use crate::proto::kvstorepb::{
    BackupHeader, BackupLeases, BackupTrailer, StoredChunk, StoredLease, backup_frame::Frame,
};
use crate::replica::Replica;

/// Records read per hold of the read lock (by key and value bytes).
pub const BATCH_BYTES: usize = 1 << 20;

/// The most bytes one response carries.
pub const BLOB_BYTES: usize = 1 << 20;

/// What a backup reports when it ends.
#[derive(Debug, Clone, Copy, Default)]
pub struct Taken {
    pub revision: i64,
    pub records: u64,
    pub bytes: u64,
}

/// Starts a backup of `member` on a blocking thread: the receiver yields the file's bytes
/// in order (then closes), or one error.
pub fn stream(member: Arc<Replica>) -> mpsc::Receiver<Result<Vec<u8>>> {
    let (tx, rx) = mpsc::channel(4);
    tokio::task::spawn_blocking(move || {
        let started = std::time::Instant::now();
        match produce(&member, &tx) {
            Ok(Some(t)) => tracing::info!(
                revision = t.revision,
                records = t.records,
                bytes = t.bytes,
                took = ?started.elapsed(),
                "sent a backup of the keyspace"
            ),
            // The client went away.
            Ok(None) => tracing::info!("a backup was abandoned by its client"),
            Err(e) => {
                tracing::warn!(error = %e, "a backup failed");
                let _ = tx.blocking_send(Err(e));
            }
        }
    });
    rx
}

/// Writes the backup into `tx`; `None` when the receiver is gone.
fn produce(member: &Replica, tx: &mpsc::Sender<Result<Vec<u8>>>) -> Result<Option<Taken>> {
    // etcd's clients take messages of any size; others' default limit is 4 MiB.
    let send = |bytes: Vec<u8>| {
        bytes
            .chunks(BLOB_BYTES)
            .all(|piece| tx.blocking_send(Ok(piece.to_vec())).is_ok())
    };
    let mut enc = Encoder::default();
    let ids = member.header(0).unwrap_or_default();
    let (revision, compacted, leases, auth) = {
        let sm = member.state().read();
        let leases: Vec<StoredLease> = sm
            .lessor
            .ttls()
            .into_iter()
            .map(|(id, ttl)| StoredLease { id, ttl })
            .collect();
        (
            sm.mvcc.current_revision(),
            sm.mvcc.compact_revision(),
            leases,
            sm.auth.to_stored(),
        )
    };
    enc.frame(Frame::Header(BackupHeader {
        format: FORMAT,
        revision,
        compacted,
        cluster_id: ids.cluster_id,
        member_id: ids.member_id,
        version: crate::version::ETCD_SERVER.to_string(),
    }))?;
    let mut taken = Taken {
        revision,
        ..Taken::default()
    };
    let mut from = i64::MIN;
    loop {
        let mut batch = Vec::new();
        let mut bytes = 0usize;
        let mut resume = None;
        {
            let sm = member.state().read();
            let mut last_main = None;
            sm.mvcc.walk(from, revision, |at, rec| {
                // A main revision's records stay in one batch.
                if bytes >= BATCH_BYTES && last_main != Some(at.main) {
                    resume = Some(at.main);
                    return Ok(false);
                }
                last_main = Some(at.main);
                bytes += rec.kv.key.len() + rec.kv.value.len();
                batch.push(crate::history::stored(at, rec.clone()));
                Ok(true)
            })?;
        }
        taken.records += batch.len() as u64;
        if !batch.is_empty() {
            enc.frame(Frame::Records(StoredChunk { revisions: batch }))?;
        }
        if enc.buffered() > 0 {
            let chunk = enc.take();
            taken.bytes += chunk.len() as u64;
            if !send(chunk) {
                return Ok(None);
            }
        }
        match resume {
            Some(main) => from = main,
            None => break,
        }
    }
    let compacted_end = member.state().read().mvcc.compact_revision();
    if compacted_end > revision {
        // A key's only record at the backup's revision may be gone: etcd's error for a
        // revision no longer held. The client can take the backup again.
        tracing::warn!(
            revision,
            compacted = compacted_end,
            "the keyspace was compacted past a backup's revision while it was taken"
        );
        return Err(Error::Compacted);
    }
    let lease_count = leases.len() as u64;
    enc.frame(Frame::Leases(BackupLeases { leases }))?;
    enc.frame(Frame::Auth(auth))?;
    enc.frame(Frame::Trailer(BackupTrailer {
        compacted: compacted_end,
        records: taken.records,
        leases: lease_count,
    }))?;
    let last = enc.finish();
    taken.bytes += last.len() as u64;
    if !send(last) {
        return Ok(None);
    }
    Ok(Some(taken))
}
