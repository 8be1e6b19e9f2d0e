//! Sending raft messages to peers. Each peer has one long-lived stream, kept open (and
//! reopened when it breaks) by a task of its own; the raft thread encodes the messages
//! of each `Ready` for a peer as one batch and `try_send`s it straight into the stream's
//! bounded queue, never waiting for an answer. A full queue or a broken stream (the peer
//! is slow or down) drops the batch and tells raft the peer is unreachable, as raft
//! tolerates loss.
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

/// Batches buffered towards one peer's stream before new ones are dropped.
const STREAM_QUEUE: usize = 256;
/// Size of one snapshot chunk.
const CHUNK: usize = 1024 * 1024;

/// The way into a peer's current stream (none while it is being reopened).
type StreamSlot = Arc<Mutex<Option<mpsc::Sender<RaftBatch>>>>;

struct Peer {
    url: String,
    stream: StreamSlot,
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
            let stream = StreamSlot::default();
            let task = self.runtime.spawn(run_peer(
                self.dialer.clone(),
                *id,
                url.clone(),
                stream.clone(),
                self.raft.clone(),
            ));
            peers.insert(
                *id,
                Peer {
                    url: url.clone(),
                    stream,
                    task,
                    snapshot_busy: Arc::new(AtomicBool::new(false)),
                },
            );
        }
    }

    /// Queues `msgs` for their peers, one batch per peer; never blocks. Undeliverable
    /// messages are dropped and reported to raft (unreachable peer, failed snapshot).
    pub fn send(&self, msgs: Vec<Message>) {
        if msgs.is_empty() {
            return;
        }
        let peers = self.peers.lock();
        let mut batches: Vec<(u64, Vec<bytes::Bytes>)> = Vec::new();
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
            let bytes = match m.write_to_bytes() {
                Ok(b) => bytes::Bytes::from(b),
                Err(e) => {
                    tracing::error!(error = %e, "cannot encode raft message");
                    continue;
                }
            };
            match batches.iter_mut().find(|(id, _)| *id == to) {
                Some((_, b)) => b.push(bytes),
                None => batches.push((to, vec![bytes])),
            }
        }
        for (to, messages) in batches {
            let Some(p) = peers.get(&to) else { continue };
            let batch = RaftBatch {
                cluster_id: self.cluster_id,
                messages,
            };
            let sent = match p.stream.lock().as_ref() {
                Some(tx) => tx.try_send(batch).is_ok(),
                None => false,
            };
            if !sent {
                let _ = self.raft.send(Msg::Unreachable(to));
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

/// Keeps one stream to a peer open: makes it the peer's `slot`, and when it breaks,
/// reports the peer unreachable and opens another.
async fn run_peer(
    dialer: Dialer,
    to: u64,
    url: String,
    slot: StreamSlot,
    raft: std::sync::mpsc::Sender<Msg>,
) {
    let client = match dialer.client(&url) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(peer = format!("{to:x}"), error = %e, "cannot reach peer");
            return;
        }
    };
    let mut down = false;
    loop {
        let (tx, batches) = mpsc::channel::<RaftBatch>(STREAM_QUEUE);
        *slot.lock() = Some(tx);
        let mut c = client.clone();
        let mut call = Box::pin(async move {
            c.raft(tokio_stream::wrappers::ReceiverStream::new(batches))
                .await
        });
        let early = if down {
            tokio::select! {
                r = &mut call => Some(r),
                _ = tokio::time::sleep(Duration::from_secs(1)) => None,
            }
        } else {
            None
        };
        let ended = match early {
            Some(r) => r,
            None => {
                if down {
                    // A stream that stayed open a while: the peer is back.
                    tracing::info!(peer = format!("{to:x}"), "peer reachable again");
                    down = false;
                }
                call.await
            }
        };
        *slot.lock() = None;
        match ended {
            Err(s) if s.code() == tonic::Code::PermissionDenied => {
                tracing::warn!(peer = format!("{to:x}"), "peer says: {}", s.message());
                let _ = raft.send(Msg::Removed);
                return;
            }
            res => {
                if !down {
                    let why = match res {
                        Err(s) => conn::describe(&s),
                        Ok(_) => "stream closed".into(),
                    };
                    tracing::warn!(peer = format!("{to:x}"), %url, error = %why, "peer unreachable");
                    down = true;
                }
                let _ = raft.send(Msg::Unreachable(to));
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
