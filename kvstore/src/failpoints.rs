//! Failpoints for the robustness tests, as etcd's gofail ones: named points in the storage
//! and apply paths where a test can make the member panic (or sleep, or return early),
//! armed through the `FAILPOINTS` environment variable, `name=actions;name=actions`, in the
//! `fail` crate's syntax (e.g. `walAfterFsync=20*off->panic`: the 21st time the point is
//! reached, panic). They exist only in a build with the `failpoints` feature; a build
//! without it has none and ignores `FAILPOINTS`.
//!
//! A panic at a point ends the process, as a Go panic ends etcd: with points armed, the
//! panic hook SIGKILLs the process after printing the message, so no thread survives the
//! one that panicked and the member is left as a crash leaves it.
//!
//! Points can also be armed and disarmed while the member runs, over HTTP as gofail's
//! `GOFAIL_HTTP` allows: with `FAILPOINTS_HTTP=ADDR` (host:port) the member answers
//! `PUT /NAME` (the body is the actions), `GET /NAME`, `DELETE /NAME` and `GET /` (every
//! armed point, `name=actions` a line) on that address. The robustness runs use it for the
//! network points, which stand in for delays and losses the kernel here cannot make (no
//! netem): they act on the batches of raft messages this member sends to its peers.
//!
//! The points, each named after etcd's nearest one:
//!
//! | point | where |
//! |---|---|
//! | `walBeforeAppend`, `walAfterAppend` | `wal::Wal::append`: before / after the records are written to the journal segment |
//! | `walBeforeFsync`, `walAfterFsync` | `wal::Wal::sync`: before / after the journal's fsync |
//! | `applyBeforeEntry`, `applyAfterEntry` | `apply::StateMachine::apply`: before / after one committed request is applied (its writes not yet handed to the backend) |
//! | `backendBeforeWrite`, `backendAfterWrite` | the backend writer (`writer.rs`): before / after a batch of state-machine writes lands in sled |
//! | `compactBeforeApply`, `compactAfterApply` | `apply`: before / after a compaction is applied |
//! | `raftBeforeApplySnap`, `raftAfterApplySnap` | the raft loop: before / after a snapshot from the leader is installed (it is journaled first) |
//! | `raftBeforeSaveSnap` | the leader: before it encodes its state machine as a snapshot for a lagging follower |
//!
//! The network points (actions `return` for every batch, `N%return` for some, `N*return` for
//! the next N; arguments as below):
//!
//! | point | what `return` does to a batch of raft messages going to a peer (`peer::transport`) |
//! |---|---|
//! | `raftDropSend` | it is lost: not sent, and nobody told (the messages' senders learn it as raft does, from silence) |
//! | `raftDelaySend` | it is sent `MS` milliseconds later (`return(MS)`; 100 without an argument); batches delayed alike may arrive in another order |

/// The points a build with the feature has, as listed above.
pub const POINTS: &[&str] = &[
    "walBeforeAppend",
    "walAfterAppend",
    "walBeforeFsync",
    "walAfterFsync",
    "applyBeforeEntry",
    "applyAfterEntry",
    "backendBeforeWrite",
    "backendAfterWrite",
    "compactBeforeApply",
    "compactAfterApply",
    "raftBeforeApplySnap",
    "raftAfterApplySnap",
    "raftBeforeSaveSnap",
];

/// The network points (module doc), armed like the others.
pub const NETWORK_POINTS: &[&str] = &["raftDropSend", "raftDelaySend"];

/// Whether the build has a point of that name.
#[cfg(feature = "failpoints")]
fn known(name: &str) -> bool {
    POINTS.contains(&name) || NETWORK_POINTS.contains(&name)
}

/// What the network points do to one batch going to a peer.
#[cfg(feature = "failpoints")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PeerFault {
    Drop,
    Delay(std::time::Duration),
}

/// The network points' verdict on the next batch to a peer: none when neither fires.
#[cfg(feature = "failpoints")]
pub(crate) fn peer_send_fault() -> Option<PeerFault> {
    if fail::eval("raftDropSend", |_| ()).is_some() {
        return Some(PeerFault::Drop);
    }
    fail::eval("raftDelaySend", |arg| {
        arg.and_then(|a| a.trim().parse::<u64>().ok())
            .unwrap_or(100)
    })
    .map(|ms| PeerFault::Delay(std::time::Duration::from_millis(ms)))
}

/// Arms the points `FAILPOINTS` names; an unknown point or action is an error naming it.
/// With any armed, a panic anywhere aborts the process (module doc).
#[cfg(feature = "failpoints")]
pub fn setup_from_env() -> Result<(), String> {
    let mut armed = 0;
    if let Ok(spec) = std::env::var("FAILPOINTS") {
        for item in spec.split(';').map(str::trim).filter(|s| !s.is_empty()) {
            let Some((name, actions)) = item.split_once('=') else {
                return Err(format!("FAILPOINTS: {item:?} is not name=actions"));
            };
            arm(name.trim(), actions.trim()).map_err(|e| format!("FAILPOINTS: {e}"))?;
            armed += 1;
        }
    }
    let http = match std::env::var("FAILPOINTS_HTTP") {
        Ok(addr) => {
            Some(control::start(&addr).map_err(|e| format!("FAILPOINTS_HTTP={addr}: {e}"))?)
        }
        Err(_) => None,
    };
    if armed > 0 || http.is_some() {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            default(info);
            kill_self();
        }));
    }
    Ok(())
}

/// Arms point `name` with `actions` (the `fail` crate's syntax); an unknown point or an
/// action that does not parse is an error naming it.
#[cfg(feature = "failpoints")]
fn arm(name: &str, actions: &str) -> Result<(), String> {
    if !known(name) {
        return Err(format!(
            "no failpoint {name:?} (there are: {}, {})",
            POINTS.join(", "),
            NETWORK_POINTS.join(", ")
        ));
    }
    fail::cfg(name, actions).map_err(|e| format!("{name}: {e}"))
}

/// The HTTP control of `FAILPOINTS_HTTP` (module doc), served by a thread of its own.
#[cfg(feature = "failpoints")]
mod control {
    use std::convert::Infallible;

    use http_body_util::{BodyExt, Full};
    use hyper::body::{Bytes, Incoming};
    use hyper::server::conn::http1;
    use hyper::service::service_fn;
    use hyper::{Method, Request, Response, StatusCode};
    use hyper_util::rt::TokioIo;

    /// Binds `addr` now (so a taken address fails the start) and serves it on a thread.
    pub(super) fn start(addr: &str) -> Result<(), String> {
        let listener = std::net::TcpListener::bind(addr).map_err(|e| e.to_string())?;
        listener.set_nonblocking(true).map_err(|e| e.to_string())?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        std::thread::Builder::new()
            .name("failpoints-http".into())
            .spawn(move || runtime.block_on(serve(listener)))
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    async fn serve(listener: std::net::TcpListener) {
        let listener = match tokio::net::TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "failpoints HTTP: cannot listen");
                return;
            }
        };
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = service_fn(|req: Request<Incoming>| async move {
                    Ok::<_, Infallible>(answer(req).await)
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    }

    fn reply(status: StatusCode, body: String) -> Response<Full<Bytes>> {
        let mut resp = Response::new(Full::new(Bytes::from(body)));
        *resp.status_mut() = status;
        resp
    }

    async fn answer(req: Request<Incoming>) -> Response<Full<Bytes>> {
        let name = req.uri().path().trim_start_matches('/').to_string();
        let method = req.method().clone();
        match (method, name.as_str()) {
            (Method::GET, "") => {
                let mut list: Vec<String> = fail::list()
                    .into_iter()
                    .map(|(n, a)| format!("{n}={a}\n"))
                    .collect();
                list.sort();
                reply(StatusCode::OK, list.concat())
            }
            (Method::GET, _) => match fail::list().into_iter().find(|(n, _)| *n == name) {
                Some((_, actions)) => reply(StatusCode::OK, actions),
                None => reply(StatusCode::NOT_FOUND, "failpoint not armed\n".into()),
            },
            (Method::PUT, _) => {
                let body = match req.into_body().collect().await {
                    Ok(b) => b.to_bytes(),
                    Err(e) => return reply(StatusCode::BAD_REQUEST, format!("{e}\n")),
                };
                let actions = String::from_utf8_lossy(&body).trim().to_string();
                match super::arm(&name, &actions) {
                    Ok(()) => {
                        tracing::warn!(failpoint = %name, %actions, "failpoint armed");
                        reply(StatusCode::NO_CONTENT, String::new())
                    }
                    Err(e) => reply(StatusCode::BAD_REQUEST, format!("{e}\n")),
                }
            }
            (Method::DELETE, _) => {
                fail::remove(&name);
                tracing::warn!(failpoint = %name, "failpoint disarmed");
                reply(StatusCode::NO_CONTENT, String::new())
            }
            _ => reply(
                StatusCode::METHOD_NOT_ALLOWED,
                "GET, PUT or DELETE\n".into(),
            ),
        }
    }
}

/// Ends the process with SIGKILL, as the fault tests kill members (an abort would leave a
/// core file where core dumps are on).
#[cfg(feature = "failpoints")]
#[allow(unsafe_code)] // kill(2) on ourselves: std has no call for it
fn kill_self() -> ! {
    // SAFETY: kill and getpid only make system calls; SIGKILL cannot be caught.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGKILL);
    }
    std::process::abort()
}

/// Without the `failpoints` feature there is nothing to arm.
#[cfg(not(feature = "failpoints"))]
pub fn setup_from_env() -> Result<(), String> {
    Ok(())
}
