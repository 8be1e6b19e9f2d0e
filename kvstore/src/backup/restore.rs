//! Reading a backup file: `kvstore snapshot status` (what it holds) and `kvstore snapshot
//! restore` (a data dir for a member of a new cluster holding the same keys, values,
//! revisions, leases and auth state, with a new cluster id and the members named by the
//! flags, as etcdutl's restore builds one).

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use crate::backend::{Backend, SledBackend, WriteBatch, keys};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::proto::kvstorepb::{BackupHeader, BackupTrailer, backup_frame::Frame};

use super::format::{Decoder, FORMAT};

/// What a backup file holds (`kvstore snapshot status`, etcdctl's fields).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    /// The checksum of its records, computed as `Maintenance.HashKV` computes a member's
    /// (equal to the member's HashKV at the backup's revision unless the member compacted
    /// while the backup was taken).
    pub hash: u32,
    pub revision: i64,
    /// Records (one per key per revision held), as etcd counts the keys of its file.
    pub total_key: u64,
    /// Bytes of the file.
    pub total_size: u64,
}

/// Reads the whole file, checking its frames, counts and checksum; `each` sees every frame.
fn read(
    path: &Path,
    check_hash: bool,
    mut each: impl FnMut(&Frame) -> Result<()>,
) -> Result<(BackupHeader, BackupTrailer, u64)> {
    let file = File::open(path)
        .map_err(|e| Error::Config(format!("cannot open {}: {e}", path.display())))?;
    if check_hash {
        // Not a kvstore backup at all: said so by the decoder, before the checksum.
        Decoder::new(File::open(path)?, false)?;
        super::format::verify_digest(path)?;
    }
    let mut dec = Decoder::new(BufReader::with_capacity(1 << 20, file), check_hash)?;
    let header = match dec.next_frame()? {
        Some(Frame::Header(h)) => h,
        _ => {
            return Err(Error::Corrupt(
                "the backup does not start with its header".into(),
            ));
        }
    };
    if header.format != FORMAT {
        return Err(Error::Config(format!(
            "backup format {} (this kvstore reads format {FORMAT})",
            header.format
        )));
    }
    let (mut records, mut leases) = (0u64, 0u64);
    let trailer = loop {
        let frame = dec
            .next_frame()?
            .ok_or_else(|| Error::Corrupt("the backup has no trailer".into()))?;
        match &frame {
            Frame::Header(_) => return Err(Error::Corrupt("a second backup header".into())),
            Frame::Records(c) => records += c.revisions.len() as u64,
            Frame::Leases(l) => leases += l.leases.len() as u64,
            Frame::Auth(_) => {}
            Frame::Trailer(t) => break *t,
        }
        each(&frame)?;
    };
    if trailer.records != records || trailer.leases != leases {
        return Err(Error::Corrupt(format!(
            "the backup's trailer counts {} records and {} leases; the file holds {records} and {leases}",
            trailer.records, trailer.leases
        )));
    }
    if !(header.compacted..=header.revision).contains(&trailer.compacted) {
        return Err(Error::Corrupt(format!(
            "the backup's compaction point {} is outside {}..={}",
            trailer.compacted, header.compacted, header.revision
        )));
    }
    Ok((header, trailer, dec.offset))
}

/// `kvstore snapshot status FILE`.
pub fn status(path: &Path) -> Result<Status> {
    let mut h = crc32fast::Hasher::new();
    let (header, trailer, size) = read(path, true, |frame| {
        if let Frame::Records(c) = frame {
            for r in &c.revisions {
                let (at, rec) = crate::history::record(r.clone())?;
                crate::mvcc::hash_record(&mut h, at, &rec);
            }
        }
        Ok(())
    })?;
    Ok(Status {
        hash: h.finalize(),
        revision: header.revision,
        total_key: trailer.records,
        total_size: std::fs::metadata(path).map_or(size, |m| m.len()),
    })
}

/// `kvstore snapshot restore FILE`: what the new member is called and where its data goes.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// The member the data dir is for (`--name`, `--initial-cluster`,
    /// `--initial-cluster-token`, `--initial-advertise-peer-urls`, `--data-dir`).
    pub member: Config,
    /// Restore a file whose checksum does not match (etcdctl's `--skip-hash-check`).
    pub skip_hash_check: bool,
}

/// What a restore built.
#[derive(Debug, Clone)]
pub struct Restored {
    pub data_dir: PathBuf,
    pub revision: i64,
    pub records: u64,
    pub member_id: u64,
    pub cluster_id: u64,
}

/// Builds `opts.member`'s data dir from the backup at `path`. The data dir must not exist;
/// it appears whole or not at all (built beside it, then renamed).
pub fn restore(path: &Path, opts: &RestoreOptions) -> Result<Restored> {
    let cfg = &opts.member;
    let data_dir = cfg.data_dir();
    // As etcdctl: a data dir already there is refused, even an empty one.
    if data_dir.exists() {
        return Err(Error::Config(format!(
            "data-dir {:?} exists",
            data_dir.display().to_string()
        )));
    }
    // The members and ids first: a bad flag fails before any work.
    cfg.initial_members()?;
    let part = part_dir(&data_dir);
    if part.exists() {
        std::fs::remove_dir_all(&part)?;
    }
    let built = build(path, opts, &part);
    let built = match built {
        Ok(b) => b,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&part);
            return Err(e);
        }
    };
    std::fs::rename(&part, &data_dir)?;
    if let Some(parent) = data_dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        File::open(parent)?.sync_all()?;
    }
    Ok(Restored { data_dir, ..built })
}

fn part_dir(data_dir: &Path) -> PathBuf {
    let mut name = data_dir.as_os_str().to_owned();
    name.push(".restoring");
    PathBuf::from(name)
}

fn build(path: &Path, opts: &RestoreOptions, dir: &Path) -> Result<Restored> {
    std::fs::create_dir_all(dir)?;
    let backend = SledBackend::open(&dir.join("db"))?;
    let (header, trailer, _) = read(path, !opts.skip_hash_check, |frame| {
        let mut batch = WriteBatch::default();
        match frame {
            Frame::Records(c) => {
                let mut records = Vec::with_capacity(c.revisions.len());
                for r in &c.revisions {
                    let (rev, rec) = crate::history::record(r.clone())?;
                    crate::mvcc::check_position(rev)?;
                    records.push((rev, rec));
                }
                crate::history::persist(records, &mut batch);
            }
            Frame::Leases(l) => {
                for lease in &l.leases {
                    batch.put(keys::lease(lease.id), prost::Message::encode_to_vec(lease));
                }
            }
            Frame::Auth(a) => batch.put(keys::AUTH, prost::Message::encode_to_vec(a)),
            Frame::Header(_) | Frame::Trailer(_) => {}
        }
        if !batch.is_empty() {
            backend.write(batch)?;
        }
        Ok(())
    })?;
    let mut batch = WriteBatch::default();
    batch.put(keys::COMPACTED, header.compacted.to_be_bytes().to_vec());
    backend.write(batch)?;
    // The members, the raft log and this member's identity, as for a new cluster.
    let mut start = crate::bootstrap::new_cluster(&opts.member, backend.as_ref())?;
    if trailer.compacted > header.compacted {
        // A compaction ran while the backup was taken: what it supersedes goes now.
        let removed = start.sm.mvcc.compact(trailer.compacted)?;
        let mut batch = WriteBatch::default();
        for r in removed {
            batch.delete(keys::rev(r.main, r.sub));
        }
        batch.put(keys::COMPACTED, trailer.compacted.to_be_bytes().to_vec());
        backend.write(batch)?;
    }
    backend.sync()?;
    Ok(Restored {
        data_dir: dir.to_path_buf(),
        revision: header.revision,
        records: trailer.records,
        member_id: start.me,
        cluster_id: start.cluster_id,
    })
}

#[cfg(test)]
mod tests {
    use super::super::format::Encoder;
    use super::*;
    use crate::apply::StateMachine;
    use crate::mvcc::{Record, Rev};
    use crate::proto::kvstorepb::{BackupLeases, StoredAuth, StoredChunk, StoredLease};
    use crate::proto::mvccpb::KeyValue;

    fn rec(key: &str, value: &str, create: i64, main: i64, version: i64) -> (Rev, Record) {
        let kv = KeyValue {
            key: key.as_bytes().to_vec().into(),
            value: value.as_bytes().to_vec().into(),
            create_revision: create,
            mod_revision: main,
            version,
            lease: 0,
        };
        (
            Rev { main, sub: 0 },
            Record {
                kv,
                tombstone: false,
            },
        )
    }

    /// A backup of k@2, k@3 and j@4, during which the keyspace was compacted at 3.
    fn file(dir: &Path) -> PathBuf {
        let mut enc = Encoder::default();
        enc.frame(Frame::Header(BackupHeader {
            format: FORMAT,
            revision: 4,
            compacted: 0,
            ..Default::default()
        }))
        .expect("header");
        let revisions = [
            rec("k", "1", 2, 2, 1),
            rec("k", "2", 2, 3, 2),
            rec("j", "x", 4, 4, 1),
        ]
        .into_iter()
        .map(|(at, r)| crate::history::stored(at, r))
        .collect();
        enc.frame(Frame::Records(StoredChunk { revisions }))
            .expect("records");
        enc.frame(Frame::Leases(BackupLeases {
            leases: vec![StoredLease { id: 9, ttl: 60 }],
        }))
        .expect("leases");
        enc.frame(Frame::Auth(StoredAuth::default())).expect("auth");
        enc.frame(Frame::Trailer(BackupTrailer {
            compacted: 3,
            records: 3,
            leases: 1,
        }))
        .expect("trailer");
        let mut bytes = enc.take();
        bytes.extend(enc.finish());
        let path = dir.join("b.db");
        std::fs::write(&path, bytes).expect("write");
        path
    }

    fn member(dir: &Path) -> RestoreOptions {
        RestoreOptions {
            member: Config {
                name: "a".into(),
                data_dir: Some(dir.join("a.etcd")),
                initial_cluster: Some("a=http://127.0.0.1:2380".into()),
                ..Config::default()
            },
            skip_hash_check: false,
        }
    }

    #[test]
    fn a_compaction_during_the_backup_is_completed_by_the_restore() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = file(dir.path());
        let s = status(&path).expect("status");
        assert_eq!((s.revision, s.total_key), (4, 3));
        let r = restore(&path, &member(dir.path())).expect("restore");
        assert_eq!(r.revision, 4);
        let be = SledBackend::open(&r.data_dir.join("db")).expect("open");
        let sm = StateMachine::load(be.as_ref()).expect("load");
        assert_eq!(sm.mvcc.compact_revision(), 3);
        assert_eq!(sm.mvcc.current_revision(), 4);
        let k = sm.mvcc.get_at(b"k", 4).expect("read").expect("k");
        assert_eq!((k.value.as_ref(), k.version), (b"2".as_slice(), 2));
        assert!(be.get(&keys::rev(2, 0)).expect("get").is_none());
        assert_eq!(sm.lessor.ttls(), vec![(9, 60)]);
        assert_eq!(sm.members.ids().len(), 1);
        // The data dir is there now: a second restore is refused.
        let again = restore(&path, &member(dir.path())).expect_err("second restore");
        assert!(again.to_string().contains("exists"), "{again}");
    }

    #[test]
    fn a_truncated_or_altered_file_is_refused_and_leaves_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = file(dir.path());
        let bytes = std::fs::read(&path).expect("read");
        for cut in [10, 30, bytes.len() / 2, bytes.len() - 40, bytes.len() - 1] {
            std::fs::write(&path, &bytes[..cut]).expect("write");
            assert!(status(&path).is_err(), "a file cut at {cut} passed");
            assert!(restore(&path, &member(dir.path())).is_err());
            assert!(!dir.path().join("a.etcd").exists());
            assert!(!dir.path().join("a.etcd.restoring").exists());
        }
        let mut altered = bytes.clone();
        altered[40] ^= 1;
        std::fs::write(&path, &altered).expect("write");
        let e = status(&path).expect_err("altered");
        assert!(e.to_string().contains("SHA-256"), "{e}");
        // Past the check, what the frames say is still checked.
        let mut opts = member(dir.path());
        opts.skip_hash_check = true;
        std::fs::write(&path, &bytes).expect("write");
        restore(&path, &opts).expect("an intact file with the check skipped");
    }
}
