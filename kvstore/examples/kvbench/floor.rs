//! The floor under each workload, measured in the same run as the servers: what this
//! machine's disk and a gRPC round trip through tonic cost with no store behind them, so
//! that each server's figure can be read as a fraction of what is there to gain.
//!
//! - [`fsync_floor`]: one thread appends a 256-byte record to a file on the filesystem the
//!   servers keep their data on and `fdatasync`s it, again and again: syncs per second and
//!   the latency of one. A durable put can complete no faster than one of these (group
//!   commit shares one among the puts queued meanwhile).
//! - [`serve`]: the floor server, started as a child process (`kvbench --floor-server DIR`)
//!   like the servers under test. It speaks etcd's KV and Watch services over tonic with
//!   only what no durable store can skip: a Put is appended to a file in DIR and answered
//!   after the `fdatasync` that covers it (one sync for every put queued meanwhile, a
//!   group commit), then sent to every watcher; a Range is answered at once, empty. The
//!   same workloads run against it, with the same clients and concurrency.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Instant;

use anyhow::Context;
use kvstore::proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, ResponseHeader, TxnRequest, TxnResponse,
    WatchRequest, WatchResponse,
    kv_server::{Kv, KvServer},
    watch_request::RequestUnion,
    watch_server::{Watch, WatchServer},
};
use kvstore::proto::mvccpb::{Event, KeyValue};
use tokio::sync::{broadcast, oneshot};
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

/// One thread's fsync loop on a file in `dir`: syncs per second and the p50 of one, in ms.
pub fn fsync_floor(dir: &Path, syncs: usize) -> anyhow::Result<(f64, f64)> {
    let path = dir.join("kvbench-fsync-floor");
    let file = std::fs::File::create(&path)
        .with_context(|| format!("creating {} for the fsync floor", path.display()))?;
    let record = [b'f'; 256];
    let mut lat = Vec::with_capacity(syncs);
    let start = Instant::now();
    for i in 0..syncs {
        let t = Instant::now();
        file.write_all_at(&record, (i * record.len()) as u64)?;
        file.sync_data()?;
        lat.push(t.elapsed());
    }
    let elapsed = start.elapsed();
    drop(file);
    let _ = std::fs::remove_file(&path);
    lat.sort_unstable();
    let p50 = lat
        .get(lat.len() / 2)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0);
    Ok((syncs as f64 / elapsed.as_secs_f64(), p50))
}

/// The floor server as a child process, killed on drop.
pub struct FloorServer {
    child: Child,
    pub endpoint: String,
    _dir: tempfile::TempDir,
}

impl FloorServer {
    /// Starts `kvbench --floor-server` (this very program) on a fresh temporary directory
    /// and waits for the port it listens on.
    pub fn start() -> anyhow::Result<FloorServer> {
        let dir = tempfile::tempdir()?;
        let mut child = Command::new(std::env::current_exe()?)
            .arg("--floor-server")
            .arg(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting the floor server")?;
        let mut line = String::new();
        let stdout = child.stdout.take().context("the floor server's stdout")?;
        BufReader::new(stdout).read_line(&mut line)?;
        let port: u16 = line
            .trim()
            .strip_prefix("listening on ")
            .and_then(|p| p.parse().ok())
            .with_context(|| format!("the floor server said {line:?}, not its port"))?;
        Ok(FloorServer {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        })
    }
}

impl Drop for FloorServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A put waiting for the sync that makes it durable.
type Durable = (Vec<u8>, oneshot::Sender<i64>);

/// The group commit: one thread takes every put queued, appends them to the journal in one
/// write, syncs once and answers each with its revision.
fn journal(path: PathBuf, rx: std::sync::mpsc::Receiver<Durable>) -> anyhow::Result<()> {
    let mut file = std::fs::File::create(&path)?;
    let mut revision = 0i64;
    let mut buf = Vec::new();
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        batch.extend(rx.try_iter());
        buf.clear();
        for (record, _) in &batch {
            buf.extend_from_slice(record);
        }
        file.write_all(&buf)?;
        file.sync_data()?;
        for (_, tx) in batch {
            revision += 1;
            let _ = tx.send(revision);
        }
    }
    Ok(())
}

#[derive(Clone)]
struct Floor {
    journal: std::sync::mpsc::Sender<Durable>,
    events: broadcast::Sender<Arc<Event>>,
    revision: Arc<AtomicI64>,
}

fn header(revision: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        cluster_id: 1,
        member_id: 1,
        revision,
        raft_term: 1,
    })
}

#[tonic::async_trait]
impl Kv for Floor {
    async fn range(&self, _: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        Ok(Response::new(RangeResponse {
            header: header(self.revision.load(Ordering::Relaxed)),
            ..Default::default()
        }))
    }

    async fn put(&self, req: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let req = req.into_inner();
        let mut record = Vec::with_capacity(req.key.len() + req.value.len());
        record.extend_from_slice(&req.key);
        record.extend_from_slice(&req.value);
        let (tx, rx) = oneshot::channel();
        self.journal
            .send((record, tx))
            .map_err(|_| Status::unavailable("the journal thread stopped"))?;
        let revision = rx
            .await
            .map_err(|_| Status::unavailable("the journal thread stopped"))?;
        self.revision.fetch_max(revision, Ordering::Relaxed);
        let _ = self.events.send(Arc::new(Event {
            r#type: 0,
            kv: Some(KeyValue {
                key: req.key,
                value: req.value,
                create_revision: revision,
                mod_revision: revision,
                version: 1,
                lease: 0,
            }),
            prev_kv: None,
        }));
        Ok(Response::new(PutResponse {
            header: header(revision),
            prev_kv: None,
        }))
    }

    async fn delete_range(
        &self,
        _: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        Err(Status::unimplemented("the floor server has no deletes"))
    }

    async fn txn(&self, _: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        Err(Status::unimplemented("the floor server has no txns"))
    }

    async fn compact(
        &self,
        _: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        Err(Status::unimplemented("the floor server has no history"))
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Watch for Floor {
    type WatchStream = WatchStream;

    /// Each create request is answered `created`; from then on every put reaches the stream
    /// (the fan-out workload's watchers all watch the prefix its writer puts under).
    async fn watch(
        &self,
        req: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<WatchStream>, Status> {
        let mut inbound = req.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        let mut events = self.events.subscribe();
        let revision = self.revision.clone();
        tokio::spawn(async move {
            let mut watch_id = None;
            loop {
                tokio::select! {
                    msg = inbound.message() => match msg {
                        Ok(Some(WatchRequest { request_union: Some(RequestUnion::CreateRequest(_)) })) => {
                            let id = watch_id.map_or(0, |i: i64| i + 1);
                            watch_id = Some(id);
                            let created = WatchResponse {
                                header: header(revision.load(Ordering::Relaxed)),
                                watch_id: id,
                                created: true,
                                ..Default::default()
                            };
                            if tx.send(Ok(created)).await.is_err() {
                                return;
                            }
                        }
                        Ok(Some(_)) => {}
                        _ => return,
                    },
                    ev = events.recv(), if watch_id.is_some() => match ev {
                        Ok(ev) => {
                            let rev = ev.kv.as_ref().map_or(0, |kv| kv.mod_revision);
                            let resp = WatchResponse {
                                header: header(rev),
                                watch_id: watch_id.unwrap_or_default(),
                                events: vec![Event::clone(&ev)],
                                ..Default::default()
                            };
                            if tx.send(Ok(resp)).await.is_err() {
                                return;
                            }
                        }
                        Err(broadcast::error::RecvError::Lagged(_)) => {}
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

/// `kvbench --floor-server DIR`: serves on a free loopback port, says which on stdout, and
/// runs until killed.
pub async fn serve(dir: &Path) -> anyhow::Result<()> {
    let (journal_tx, journal_rx) = std::sync::mpsc::channel();
    let path = dir.join("journal");
    std::thread::Builder::new()
        .name("floor-journal".into())
        .spawn(move || {
            if let Err(e) = journal(path, journal_rx) {
                eprintln!("floor server: journal: {e:#}");
                std::process::exit(1);
            }
        })?;
    let floor = Floor {
        journal: journal_tx,
        events: broadcast::channel(4096).0,
        revision: Arc::new(AtomicI64::new(0)),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    println!("listening on {port}");
    std::io::stdout().flush()?;
    tonic::transport::Server::builder()
        .add_service(KvServer::new(floor.clone()))
        .add_service(WatchServer::new(floor))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
        .await?;
    Ok(())
}

/// Syncs in the fsync floor's loop: enough for a steady p50, a second or two.
pub const FSYNC_SYNCS: usize = 2000;
