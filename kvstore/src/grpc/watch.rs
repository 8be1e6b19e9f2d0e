//! The Watch service. Each stream multiplexes many watchers; each watcher is a task that
//! pulls its events from the keyspace history, from its next revision up to the current
//! one, and then waits for the revision to move. Pulling (not pushing) means a slow
//! watcher only falls behind itself: writers and other watchers never wait for it, and
//! nothing is buffered for it beyond one response. Responses always hold whole revisions,
//! in revision order.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use super::caller::Credentials;
use crate::metrics::Held;
use crate::mvcc::{EventLimit, Events, KeyRange};
use crate::proto::etcdserverpb::{
    WatchCreateRequest, WatchRequest, WatchResponse, watch_create_request::FilterType,
    watch_request::RequestUnion, watch_server::Watch,
};
use crate::proto::mvccpb::event::EventType;
use crate::replica::Replica;

/// What one response gathers at most (whole revisions are never split). The byte bound
/// keeps responses under the 4 MiB that gRPC clients accept by default.
/// The revision bound keeps each step of a far-back watcher's catch-up short: the keyspace lock
/// is released (and the task yields) between steps, so applying writes never waits long.
const RESPONSE_LIMIT: EventLimit = EventLimit {
    events: 1000,
    bytes: 1024 * 1024,
    revisions: 1024,
};
/// Responses a watch stream holds for a client that is not reading. Watchers read from the
/// history, not from a queue: when a client stops reading, its watchers stop where they are
/// and catch up from the history once it reads again (or are cancelled if that history is
/// compacted meanwhile), so this small queue and HTTP/2 flow control are all a slow client costs.
const STREAM_QUEUE: usize = 4;
/// How far behind the newest revision a watcher must be for its next step to go to the catch-up
/// worker; a live watcher a few revisions behind steps on its own task.
const CATCH_UP_DISTANCE: i64 = 256;
/// Interval of progress notifications for idle watchers that asked for them (etcd: 10 min).
const PROGRESS_INTERVAL: Duration = Duration::from_secs(600);

type Tx = mpsc::Sender<Result<WatchResponse, Status>>;

pub struct WatchService {
    member: Arc<Replica>,
}

impl WatchService {
    pub fn new(member: Arc<Replica>) -> Self {
        WatchService { member }
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Watch for WatchService {
    type WatchStream = WatchStream;

    async fn watch(
        &self,
        req: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let creds = Credentials::of(&self.member, &req);
        let inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        tokio::spawn(serve_stream(self.member.clone(), inbound, tx, creds));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

struct Watcher {
    task: tokio::task::JoinHandle<()>,
    /// The next revision this watcher will deliver.
    next: Arc<AtomicI64>,
}

/// Whether the stream's user may watch what `c` asks for (etcd's `isWatchPermitted`); the
/// reason to cancel it with if not.
fn watch_refused(member: &Replica, creds: &Credentials, c: &WatchCreateRequest) -> Option<String> {
    use crate::error::Error;
    let checked = super::caller::user_of(member, creds).and_then(|who| {
        member.state().read().auth.allowed(
            who.as_deref(),
            crate::auth::perms::Access::Read,
            &c.key,
            &c.range_end,
        )
    });
    let e = match checked {
        Ok(()) => return None,
        Err(e @ (Error::InvalidAuthToken | Error::UserEmpty | Error::AuthOldRevision)) => e,
        Err(_) => Error::PermissionDenied,
    };
    // etcd words the reason as its client prints the gRPC error: code and description.
    let status = tonic::Status::from(e);
    Some(format!(
        "rpc error: code = {:?} desc = {}",
        status.code(),
        status.message()
    ))
}

async fn serve_stream(
    member: Arc<Replica>,
    mut inbound: Streaming<WatchRequest>,
    tx: Tx,
    creds: Credentials,
) {
    let mut watchers: HashMap<i64, Watcher> = HashMap::new();
    let mut next_id: i64 = 0;
    let mut stopping = member.shared.stopping.subscribe();
    let _counted = Held::new(member.shared.metrics.clone(), |m| &m.mvcc.watch_streams);
    loop {
        let msg = tokio::select! {
            m = inbound.next() => m,
            _ = stopping.wait_for(|s| *s) => break,
            _ = tx.closed() => break,
        };
        let Some(Ok(req)) = msg else { break };
        let ok = match req.request_union {
            Some(RequestUnion::CreateRequest(c)) => {
                match watch_refused(&member, &creds, &c) {
                    None => create(&member, &tx, &mut watchers, &mut next_id, c).await,
                    Some(reason) => {
                        // As etcd: created and canceled at once, with no watch id.
                        let resp = WatchResponse {
                            header: member.header(member.current_revision()),
                            watch_id: -1,
                            created: true,
                            canceled: true,
                            cancel_reason: reason,
                            ..Default::default()
                        };
                        tx.send(Ok(resp)).await.is_ok()
                    }
                }
            }
            Some(RequestUnion::CancelRequest(c)) => {
                if let Some(w) = watchers.remove(&c.watch_id) {
                    w.task.abort();
                }
                let resp = WatchResponse {
                    header: member.header(member.current_revision()),
                    watch_id: c.watch_id,
                    canceled: true,
                    ..Default::default()
                };
                tx.send(Ok(resp)).await.is_ok()
            }
            Some(RequestUnion::ProgressRequest(_)) => {
                // Report only a revision every watcher on the stream has delivered.
                let current = member.current_revision();
                let rev = watchers
                    .values()
                    .map(|w| w.next.load(Ordering::Acquire) - 1)
                    .fold(current, i64::min);
                let resp = WatchResponse {
                    header: member.header(rev),
                    watch_id: -1,
                    ..Default::default()
                };
                tx.send(Ok(resp)).await.is_ok()
            }
            None => true,
        };
        if !ok {
            break;
        }
    }
    for (_, w) in watchers {
        w.task.abort();
    }
}

async fn create(
    member: &Arc<Replica>,
    tx: &Tx,
    watchers: &mut HashMap<i64, Watcher>,
    next_id: &mut i64,
    c: WatchCreateRequest,
) -> bool {
    let (current, compacted) = {
        let sm = member.state().read();
        (sm.mvcc.current_revision(), sm.mvcc.compact_revision())
    };
    let id = if c.watch_id != 0 {
        if watchers.contains_key(&c.watch_id) {
            let resp = WatchResponse {
                header: member.header(current),
                watch_id: c.watch_id,
                created: true,
                canceled: true,
                cancel_reason: "mvcc: duplicate watch ID provided on the WatchStream".into(),
                ..Default::default()
            };
            return tx.send(Ok(resp)).await.is_ok();
        }
        c.watch_id
    } else {
        while watchers.contains_key(next_id) {
            *next_id += 1;
        }
        let id = *next_id;
        *next_id += 1;
        id
    };
    let created = WatchResponse {
        header: member.header(current),
        watch_id: id,
        created: true,
        ..Default::default()
    };
    if tx.send(Ok(created)).await.is_err() {
        return false;
    }
    let start = if c.start_revision <= 0 {
        current + 1
    } else {
        c.start_revision
    };
    if start < compacted {
        let resp = WatchResponse {
            header: member.header(current),
            watch_id: id,
            canceled: true,
            compact_revision: compacted,
            ..Default::default()
        };
        return tx.send(Ok(resp)).await.is_ok();
    }
    let next = Arc::new(AtomicI64::new(start));
    let spec = Spec {
        id,
        range: KeyRange::new(&c.key, &c.range_end),
        prev_kv: c.prev_kv,
        no_put: c.filters.contains(&(FilterType::Noput as i32)),
        no_delete: c.filters.contains(&(FilterType::Nodelete as i32)),
        progress_notify: c.progress_notify,
    };
    let task = tokio::spawn(run_watcher(member.clone(), tx.clone(), spec, next.clone()));
    watchers.insert(id, Watcher { task, next });
    true
}

struct Spec {
    id: i64,
    range: KeyRange,
    prev_kv: bool,
    no_put: bool,
    no_delete: bool,
    progress_notify: bool,
}

/// One bounded step of a watcher's walk from `from`: the events found, the newest revision,
/// and the compaction point if `from` fell behind it; an error if the history could not be
/// read from the backend.
fn step(
    member: &Replica,
    from: i64,
    range: &KeyRange,
    prev_kv: bool,
) -> crate::error::Result<(Events, i64, Option<i64>)> {
    let sm = member.state().read();
    let current = sm.mvcc.current_revision();
    let compacted = sm.mvcc.compact_revision();
    Ok(if from < compacted {
        (Events::default(), current, Some(compacted))
    } else if from <= current {
        let found = sm
            .mvcc
            .events(from, current, range, prev_kv, RESPONSE_LIMIT)?;
        (found, current, None)
    } else {
        (Events::default(), current, None)
    })
}

async fn run_watcher(member: Arc<Replica>, tx: Tx, spec: Spec, next: Arc<AtomicI64>) {
    let mut revisions = member.revisions();
    let mut last_sent = tokio::time::Instant::now();
    let _counted = Held::new(member.shared.metrics.clone(), |m| &m.mvcc.watchers);
    // Counted as a slow (etcd: unsynced) watcher while it catches up from far behind.
    let mut slow: Option<Held> = None;
    loop {
        let from = next.load(Ordering::Acquire);
        let behind = member.current_revision() - from >= CATCH_UP_DISTANCE;
        if behind != slow.is_some() {
            slow =
                behind.then(|| Held::new(member.shared.metrics.clone(), |m| &m.mvcc.slow_watchers));
        }
        // A watcher far behind walks on the catch-up worker, in turn with the others; a live
        // one, a few revisions behind, right here.
        let stepped = if behind {
            let (m, range, prev_kv) = (member.clone(), spec.range.clone(), spec.prev_kv);
            match member
                .catch_up
                .run(move || step(&m, from, &range, prev_kv))
                .await
            {
                Some(r) => r,
                None => return,
            }
        } else {
            step(&member, from, &spec.range, spec.prev_kv)
        };
        let (found, current, compacted) = match stepped {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(watch_id = spec.id, from, error = %e, "watch cannot read the history");
                let _ = tx.send(Err(e.into())).await;
                return;
            }
        };
        if let Some(compacted) = compacted {
            let resp = WatchResponse {
                header: member.header(current),
                watch_id: spec.id,
                canceled: true,
                compact_revision: compacted,
                ..Default::default()
            };
            let _ = tx.send(Ok(resp)).await;
            return;
        }
        if from <= current {
            // When the walk was cut short, resume after the last revision it examined.
            let upto = found.upto;
            let events: Vec<_> = found
                .batches
                .into_iter()
                .flat_map(|(_, e)| e)
                .filter(|e| {
                    let put = e.r#type == EventType::Put as i32;
                    !(put && spec.no_put || !put && spec.no_delete)
                })
                .collect();
            if !events.is_empty() {
                let sent = events.len() as u64;
                let resp = WatchResponse {
                    header: member.header(upto),
                    watch_id: spec.id,
                    events,
                    ..Default::default()
                };
                if tx.send(Ok(resp)).await.is_err() {
                    return;
                }
                member.metrics().mvcc.events.add(sent);
                last_sent = tokio::time::Instant::now();
            }
            next.store(upto + 1, Ordering::Release);
            if upto < current {
                continue;
            }
        }
        let progress_at = last_sent + PROGRESS_INTERVAL;
        tokio::select! {
            changed = revisions.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            _ = tokio::time::sleep_until(progress_at), if spec.progress_notify => {
                let resp = WatchResponse {
                    header: member.header(next.load(Ordering::Acquire) - 1),
                    watch_id: spec.id,
                    ..Default::default()
                };
                if tx.send(Ok(resp)).await.is_err() {
                    return;
                }
                last_sent = tokio::time::Instant::now();
            }
        }
    }
}
