//! Sending raft messages to peers. Each peer has one long-lived stream, kept open (and
//! reopened when it breaks) by a task of its own; the raft thread encodes the messages
//! of each `Ready` for a peer as one batch and `try_send`s it straight into the stream's
//! bounded queue, never waiting for an answer. A full queue or a broken stream (the peer
//! is slow or down) drops the batch and tells raft the peer is unreachable, as raft
//! tolerates loss.
//! Snapshot messages go out of band: a task streams the state-machine data in chunks
//! and reports the outcome back to raft.
//! What goes out is counted per peer (bytes sent, batches dropped, a dropped leader
//! heartbeat), and a prober measures each peer's round-trip time: the `etcd_network_peer_*`
//! and `etcd_server_heartbeat_send_failures_total` metrics (see [`crate::metrics`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use protobuf::Message as PbMessage;
use raft::eraftpb::{Message, MessageType};
use tokio::sync::mpsc;

use super::conn::{self, Dialer};
use crate::metrics::Metrics;
use crate::metrics::peer::PeerStats;
use crate::node::Msg;
use crate::proto::peerpb::{MembersRequest, RaftBatch, SnapshotChunk};

/// Batches buffered towards one peer's stream before new ones are dropped.
const STREAM_QUEUE: usize = 256;
/// Size of one snapshot chunk.
const CHUNK: usize = 1024 * 1024;
/// How often a peer's round-trip time is measured (etcd probes every 4 s).
const PROBE_INTERVAL: Duration = Duration::from_secs(5);
/// The first measurement, soon after the peer is added.
const FIRST_PROBE: Duration = Duration::from_secs(1);

/// The way into a peer's current stream (none while it is being reopened).
type StreamSlot = Arc<Mutex<Option<mpsc::Sender<RaftBatch>>>>;

struct Peer {
    url: String,
    stream: StreamSlot,
    task: tokio::task::JoinHandle<()>,
    /// Measures the peer's round-trip time.
    probe: tokio::task::JoinHandle<()>,
    /// A snapshot is being streamed to this peer.
    snapshot_busy: Arc<AtomicBool>,
    /// What this member counts about the peer.
    stats: Arc<PeerStats>,
}

/// The raft thread's way out to the other members.
pub struct Transport {
    me: u64,
    cluster_id: u64,
    raft: std::sync::mpsc::Sender<Msg>,
    runtime: tokio::runtime::Handle,
    dialer: Dialer,
    peers: Mutex<HashMap<u64, Peer>>,
    metrics: Arc<Metrics>,
}

impl Transport {
    /// A transport for member `me`; `raft` receives delivery failures; `dialer` reaches
    /// the peers (TLS for https:// peer URLs); what goes out is counted in `metrics`.
    pub fn new(
        me: u64,
        cluster_id: u64,
        raft: std::sync::mpsc::Sender<Msg>,
        runtime: tokio::runtime::Handle,
        dialer: Dialer,
        metrics: Arc<Metrics>,
    ) -> Transport {
        Transport {
            me,
            cluster_id,
            raft,
            runtime,
            dialer,
            peers: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    /// Makes the peers exactly `members` (id, peer URL), this member excluded.
    pub fn set_peers(&self, members: &[(u64, String)]) {
        let mut peers = self.peers.lock();
        peers.retain(|id, p| {
            let keep = members.iter().any(|(m, url)| m == id && *url == p.url);
            if !keep {
                p.task.abort();
                p.probe.abort();
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
            let stats = self.metrics.peers.get(*id);
            let probe =
                self.runtime
                    .spawn(probe_peer(self.dialer.clone(), url.clone(), stats.clone()));
            peers.insert(
                *id,
                Peer {
                    url: url.clone(),
                    stream,
                    task,
                    probe,
                    snapshot_busy: Arc::new(AtomicBool::new(false)),
                    stats,
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
        // Per peer: the encoded messages, and whether a leader heartbeat is among them.
        let mut batches: Vec<(u64, Vec<bytes::Bytes>, bool)> = Vec::new();
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
                    p.stats.clone(),
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
            let heartbeat = m.get_msg_type() == MessageType::MsgHeartbeat;
            match batches.iter_mut().find(|(id, _, _)| *id == to) {
                Some((_, b, h)) => {
                    b.push(bytes);
                    *h |= heartbeat;
                }
                None => batches.push((to, vec![bytes], heartbeat)),
            }
        }
        for (to, messages, heartbeat) in batches {
            let Some(p) = peers.get(&to) else { continue };
            let len: usize = messages.iter().map(bytes::Bytes::len).sum();
            let batch = RaftBatch {
                cluster_id: self.cluster_id,
                messages,
            };
            #[cfg(feature = "failpoints")]
            let Some(batch) = self.network_fault(to, p, batch) else {
                continue;
            };
            let sent = match p.stream.lock().as_ref() {
                Some(tx) => tx.try_send(batch).is_ok(),
                None => false,
            };
            if sent {
                p.stats.sent_bytes.add(len as u64);
            } else {
                p.stats.sent_failures.inc();
                if heartbeat {
                    self.metrics.server.heartbeat_send_failures.inc();
                }
                let _ = self.raft.send(Msg::Unreachable(to));
            }
        }
    }

    /// The network failpoints (`crate::failpoints`, test builds only): the batch back to be
    /// sent now, or none when they took it, to lose it or to send it later.
    #[cfg(feature = "failpoints")]
    fn network_fault(&self, to: u64, p: &Peer, batch: RaftBatch) -> Option<RaftBatch> {
        use crate::failpoints::PeerFault;
        match crate::failpoints::peer_send_fault() {
            None => Some(batch),
            Some(PeerFault::Drop) => None,
            Some(PeerFault::Delay(d)) => {
                let (slot, raft) = (p.stream.clone(), self.raft.clone());
                self.runtime.spawn(async move {
                    tokio::time::sleep(d).await;
                    let tx = slot.lock().clone();
                    if tx.is_none_or(|tx| tx.try_send(batch).is_err()) {
                        let _ = raft.send(Msg::Unreachable(to));
                    }
                });
                None
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
            p.probe.abort();
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
                let gone = matches!(&res, Err(s) if conn::refused(s));
                if !down {
                    let why = match res {
                        Err(s) => conn::describe(&s),
                        Ok(_) => "stream closed".into(),
                    };
                    tracing::warn!(peer = format!("{to:x}"), %url, error = %why, "peer unreachable");
                    down = true;
                }
                let _ = raft.send(Msg::Unreachable(to));
                if gone {
                    let _ = raft.send(Msg::PeerGone(to));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Measures the round-trip time to the peer at `url` every [`PROBE_INTERVAL`] with a small
/// call of the peer service (the member list), as etcd's prober does with its own.
async fn probe_peer(dialer: Dialer, url: String, stats: Arc<PeerStats>) {
    let Ok(client) = dialer.client(&url) else {
        return;
    };
    let mut wait = FIRST_PROBE;
    loop {
        tokio::time::sleep(wait).await;
        wait = PROBE_INTERVAL;
        let mut c = client.clone();
        let start = Instant::now();
        if let Ok(Ok(_)) = tokio::time::timeout(PROBE_INTERVAL, c.members(MembersRequest {})).await
        {
            stats.round_trip.observe_since(start);
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
    stats: Arc<PeerStats>,
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
        Ok(_) => stats.sent_bytes.add(data.len() as u64),
        Err(_) => stats.sent_failures.inc(),
    }
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
