//! Sending raft messages to peers. Each peer has a sender task and a bounded queue; the
//! raft thread only ever `try_send`s into it. A full queue (the peer is slow or down)
//! drops the message and tells raft the peer is unreachable, as raft tolerates loss.
//! Snapshot messages go out of band: a task streams the state-machine data in chunks
//! and reports the outcome back to raft.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use protobuf::Message as PbMessage;
use raft::eraftpb::{Message, MessageType};
use tokio::sync::mpsc;

use super::conn::{self, Dialer};
use crate::node::Msg;
use crate::proto::peerpb::{RaftBatch, SnapshotChunk};

/// Messages queued per peer before new ones are dropped.
const QUEUE: usize = 4096;
/// Messages sent in one RPC at most.
const BATCH: usize = 256;
/// How long one batch may take before the peer counts as unreachable.
const SEND_TIMEOUT: Duration = Duration::from_secs(3);
/// Size of one snapshot chunk.
const CHUNK: usize = 1024 * 1024;

struct Peer {
    url: String,
    queue: mpsc::Sender<Message>,
    task: tokio::task::JoinHandle<()>,
    /// A snapshot is being streamed to this peer.
    snapshot_busy: Arc<AtomicBool>,
}

/// The raft thread's way out to the other members.
pub struct Transport {
    me: u64,
    cluster_id: u64,
    raft: std::sync::mpsc::Sender<Msg>,
    runtime: tokio::runtime::Handle,
    dialer: Dialer,
    peers: Mutex<HashMap<u64, Peer>>,
}

impl Transport {
    /// A transport for member `me`; `raft` receives delivery failures; `dialer` reaches
    /// the peers (TLS for https:// peer URLs).
    pub fn new(
        me: u64,
        cluster_id: u64,
        raft: std::sync::mpsc::Sender<Msg>,
        runtime: tokio::runtime::Handle,
        dialer: Dialer,
    ) -> Transport {
        Transport {
            me,
            cluster_id,
            raft,
            runtime,
            dialer,
            peers: Mutex::new(HashMap::new()),
        }
    }

    /// Makes the peers exactly `members` (id, peer URL), this member excluded.
    pub fn set_peers(&self, members: &[(u64, String)]) {
        let mut peers = self.peers.lock();
        peers.retain(|id, p| {
            let keep = members.iter().any(|(m, url)| m == id && *url == p.url);
            if !keep {
                p.task.abort();
            }
            keep
        });
        for (id, url) in members {
            if *id == self.me || peers.contains_key(id) {
                continue;
            }
            let (tx, rx) = mpsc::channel(QUEUE);
            let task = self.runtime.spawn(run_peer(
                self.dialer.clone(),
                *id,
                url.clone(),
                self.cluster_id,
                rx,
                self.raft.clone(),
            ));
            peers.insert(
                *id,
                Peer {
                    url: url.clone(),
                    queue: tx,
                    task,
                    snapshot_busy: Arc::new(AtomicBool::new(false)),
                },
            );
        }
    }

    /// Queues `msgs` for their peers; never blocks. Undeliverable messages are dropped
    /// and reported to raft (unreachable peer, failed snapshot).
    pub fn send(&self, msgs: Vec<Message>) {
        if msgs.is_empty() {
            return;
        }
        let peers = self.peers.lock();
        for m in msgs {
            let to = m.to;
            let Some(p) = peers.get(&to) else {
                self.report(&m);
                continue;
            };
            if m.get_msg_type() == MessageType::MsgSnapshot {
                if p.snapshot_busy.swap(true, Ordering::AcqRel) {
                    self.report(&m);
                    continue;
                }
                self.runtime.spawn(send_snapshot(
                    self.dialer.clone(),
                    p.url.clone(),
                    self.cluster_id,
                    m,
                    self.raft.clone(),
                    p.snapshot_busy.clone(),
                ));
                continue;
            }
            if let Err(e) = p.queue.try_send(m) {
                let m = match e {
                    mpsc::error::TrySendError::Full(m) | mpsc::error::TrySendError::Closed(m) => m,
                };
                self.report(&m);
            }
        }
    }

    fn report(&self, m: &Message) {
        let msg = if m.get_msg_type() == MessageType::MsgSnapshot {
            Msg::SnapshotStatus {
                to: m.to,
                failed: true,
            }
        } else {
            Msg::Unreachable(m.to)
        };
        let _ = self.raft.send(msg);
    }
}

impl Drop for Transport {
    fn drop(&mut self) {
        for p in self.peers.lock().values() {
            p.task.abort();
        }
    }
}

/// Sends everything queued for one peer, in order, a batch per RPC.
async fn run_peer(
    dialer: Dialer,
    to: u64,
    url: String,
    cluster_id: u64,
    mut rx: mpsc::Receiver<Message>,
    raft: std::sync::mpsc::Sender<Msg>,
) {
    let mut client = match dialer.client(&url) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(peer = format!("{to:x}"), error = %e, "cannot reach peer");
            return;
        }
    };
    let mut down = false;
    while let Some(first) = rx.recv().await {
        let mut msgs = Vec::with_capacity(16);
        let mut push = |m: Message| match m.write_to_bytes() {
            Ok(b) => msgs.push(bytes::Bytes::from(b)),
            Err(e) => tracing::error!(error = %e, "cannot encode raft message"),
        };
        push(first);
        for _ in 1..BATCH {
            match rx.try_recv() {
                Ok(m) => push(m),
                Err(_) => break,
            }
        }
        let batch = RaftBatch {
            cluster_id,
            messages: msgs,
        };
        let sent = tokio::time::timeout(SEND_TIMEOUT, client.raft(batch)).await;
        match sent {
            Ok(Ok(_)) => {
                if down {
                    tracing::info!(peer = format!("{to:x}"), "peer reachable again");
                    down = false;
                }
            }
            Ok(Err(s)) if s.code() == tonic::Code::PermissionDenied => {
                tracing::warn!(peer = format!("{to:x}"), "peer says: {}", s.message());
                let _ = raft.send(Msg::Removed);
                return;
            }
            failed => {
                if !down {
                    let why = match failed {
                        Ok(Err(s)) => conn::describe(&s),
                        _ => "timed out".into(),
                    };
                    tracing::warn!(peer = format!("{to:x}"), %url, error = %why, "peer unreachable");
                    down = true;
                }
                let _ = raft.send(Msg::Unreachable(to));
                // What queued meanwhile is stale; raft resends what still matters.
                while rx.try_recv().is_ok() {}
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Streams one snapshot message and its data to a peer, then reports the outcome.
async fn send_snapshot(
    dialer: Dialer,
    url: String,
    cluster_id: u64,
    mut m: Message,
    raft: std::sync::mpsc::Sender<Msg>,
    busy: Arc<AtomicBool>,
) {
    let to = m.to;
    let data = bytes::Bytes::copy_from_slice(m.get_snapshot().get_data());
    let index = m.get_snapshot().get_metadata().index;
    m.mut_snapshot().set_data(Default::default());
    let res = async {
        let head = m
            .write_to_bytes()
            .map_err(|e| tonic::Status::internal(e.to_string()))?;
        let mut chunks = vec![SnapshotChunk {
            cluster_id,
            message: head.into(),
            data: Default::default(),
        }];
        for c in data.chunks(CHUNK) {
            chunks.push(SnapshotChunk {
                cluster_id,
                message: Default::default(),
                data: bytes::Bytes::copy_from_slice(c),
            });
        }
        let mut client = dialer
            .client(&url)
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        client.snapshot(tokio_stream::iter(chunks)).await
    }
    .await;
    busy.store(false, Ordering::Release);
    match &res {
        Ok(_) => tracing::info!(
            peer = format!("{to:x}"),
            index,
            bytes = data.len(),
            "snapshot sent"
        ),
        Err(e) => {
            tracing::warn!(peer = format!("{to:x}"), error = %conn::describe(e), "sending snapshot failed")
        }
    }
    let _ = raft.send(Msg::SnapshotStatus {
        to,
        failed: res.is_err(),
    });
}
