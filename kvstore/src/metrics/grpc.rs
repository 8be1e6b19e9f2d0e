//! gRPC server metrics as etcd exports them through go-grpc-prometheus:
//! `grpc_server_started_total`, `grpc_server_handled_total` (by `grpc_code`),
//! `grpc_server_msg_received_total` and `grpc_server_msg_sent_total` per method, and etcd's
//! `etcd_network_client_grpc_{received,sent}_bytes_total` (message bytes, without gRPC's
//! 5-byte prefix, as etcd's codec counts them). The dashboards' RPC rate, failure and
//! open-stream panels and the `etcdHighNumberOfFailedGRPCRequests` alert read these.
//!
//! [`GrpcLayer`] is a tower layer for the client gRPC server: it counts a call when it starts,
//! counts messages as the request and response bodies stream through (a small parser of the
//! gRPC framing, no copy), and counts the call handled with the status code from the
//! response headers (trailers-only answers) or trailers; a response dropped before its
//! status (the client went away) counts as `Canceled`. Only etcd 3.4's methods are counted
//! (a fixed table, as go-grpc-prometheus pre-registers the served methods with zeros), so a
//! client cannot make up label values. Nothing is locked; each counted call costs a few
//! relaxed atomic adds, one reference count, and the boxing of its request body.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use hyper::body::Frame;
use tonic::body::Body;
use tonic::codegen::http::{HeaderMap, Request, Response};
use tonic::codegen::{Future, Service};

use super::Metrics;
use super::prom::{Counter, Text};

/// etcd 3.4's gRPC methods: service, method, go-grpc-prometheus' `grpc_type`.
const METHODS: [(&str, &str, &str); 41] = [
    ("etcdserverpb.Auth", "AuthDisable", UNARY),
    ("etcdserverpb.Auth", "AuthEnable", UNARY),
    ("etcdserverpb.Auth", "Authenticate", UNARY),
    ("etcdserverpb.Auth", "RoleAdd", UNARY),
    ("etcdserverpb.Auth", "RoleDelete", UNARY),
    ("etcdserverpb.Auth", "RoleGet", UNARY),
    ("etcdserverpb.Auth", "RoleGrantPermission", UNARY),
    ("etcdserverpb.Auth", "RoleList", UNARY),
    ("etcdserverpb.Auth", "RoleRevokePermission", UNARY),
    ("etcdserverpb.Auth", "UserAdd", UNARY),
    ("etcdserverpb.Auth", "UserChangePassword", UNARY),
    ("etcdserverpb.Auth", "UserDelete", UNARY),
    ("etcdserverpb.Auth", "UserGet", UNARY),
    ("etcdserverpb.Auth", "UserGrantRole", UNARY),
    ("etcdserverpb.Auth", "UserList", UNARY),
    ("etcdserverpb.Auth", "UserRevokeRole", UNARY),
    ("etcdserverpb.Cluster", "MemberAdd", UNARY),
    ("etcdserverpb.Cluster", "MemberList", UNARY),
    ("etcdserverpb.Cluster", "MemberPromote", UNARY),
    ("etcdserverpb.Cluster", "MemberRemove", UNARY),
    ("etcdserverpb.Cluster", "MemberUpdate", UNARY),
    ("etcdserverpb.KV", "Compact", UNARY),
    ("etcdserverpb.KV", "DeleteRange", UNARY),
    ("etcdserverpb.KV", "Put", UNARY),
    ("etcdserverpb.KV", "Range", UNARY),
    ("etcdserverpb.KV", "Txn", UNARY),
    ("etcdserverpb.Lease", "LeaseGrant", UNARY),
    ("etcdserverpb.Lease", "LeaseKeepAlive", BIDI),
    ("etcdserverpb.Lease", "LeaseLeases", UNARY),
    ("etcdserverpb.Lease", "LeaseRevoke", UNARY),
    ("etcdserverpb.Lease", "LeaseTimeToLive", UNARY),
    ("etcdserverpb.Maintenance", "Alarm", UNARY),
    ("etcdserverpb.Maintenance", "Defragment", UNARY),
    ("etcdserverpb.Maintenance", "Hash", UNARY),
    ("etcdserverpb.Maintenance", "HashKV", UNARY),
    ("etcdserverpb.Maintenance", "MoveLeader", UNARY),
    ("etcdserverpb.Maintenance", "Snapshot", SERVER_STREAM),
    ("etcdserverpb.Maintenance", "Status", UNARY),
    ("etcdserverpb.Watch", "Watch", BIDI),
    ("grpc.health.v1.Health", "Check", UNARY),
    ("grpc.health.v1.Health", "Watch", SERVER_STREAM),
];
const UNARY: &str = "unary";
const BIDI: &str = "bidi_stream";
const SERVER_STREAM: &str = "server_stream";

/// gRPC status codes by number, as grpc-go names them.
const CODES: [&str; 17] = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];
const CANCELED: usize = 1;
const UNKNOWN: usize = 2;

/// One method's counters.
#[derive(Default)]
struct Method {
    started: Counter,
    handled: [Counter; 17],
    received: Counter,
    sent: Counter,
}

/// Reads one of a method's counts.
type MethodCount = fn(&Method) -> u64;

/// The gRPC counters of a member.
pub struct Grpc {
    methods: Vec<Method>,
    /// `/service/method` paths and their index in `METHODS`, sorted for lookup.
    paths: Vec<(String, usize)>,
    received_bytes: Counter,
    sent_bytes: Counter,
    /// Set once a [`GrpcLayer`] was made: until then nothing counts calls, and the
    /// families are not rendered (a zero that never moves would be a lie).
    installed: AtomicBool,
}

impl Default for Grpc {
    fn default() -> Self {
        let mut paths: Vec<(String, usize)> = METHODS
            .iter()
            .enumerate()
            .map(|(i, (s, m, _))| (format!("/{s}/{m}"), i))
            .collect();
        paths.sort();
        Grpc {
            methods: METHODS.iter().map(|_| Method::default()).collect(),
            paths,
            received_bytes: Counter::default(),
            sent_bytes: Counter::default(),
            installed: AtomicBool::new(false),
        }
    }
}

impl Grpc {
    fn lookup(&self, path: &str) -> Option<usize> {
        self.paths
            .binary_search_by(|(p, _)| p.as_str().cmp(path))
            .ok()
            .and_then(|i| self.paths.get(i))
            .map(|(_, m)| *m)
    }

    fn method(&self, i: usize) -> Option<&Method> {
        self.methods.get(i)
    }

    /// Adds the gRPC families to `out` (nothing before a layer counts calls).
    pub fn render(&self, out: &mut Text) {
        if !self.installed.load(Ordering::Relaxed) {
            return;
        }
        out.counter(
            "etcd_network_client_grpc_received_bytes_total",
            "The total number of bytes received from grpc clients.",
            self.received_bytes.get() as f64,
        );
        out.counter(
            "etcd_network_client_grpc_sent_bytes_total",
            "The total number of bytes sent to grpc clients.",
            self.sent_bytes.get() as f64,
        );
        let per_method: [(&str, &str, MethodCount); 3] = [
            (
                "grpc_server_started_total",
                "Total number of RPCs started on the server.",
                |m| m.started.get(),
            ),
            (
                "grpc_server_msg_received_total",
                "Total number of RPC stream messages received on the server.",
                |m| m.received.get(),
            ),
            (
                "grpc_server_msg_sent_total",
                "Total number of gRPC stream messages sent by the server.",
                |m| m.sent.get(),
            ),
        ];
        for (name, help, value) in per_method {
            out.family(name, "counter", help);
            for ((service, method, kind), m) in METHODS.iter().zip(&self.methods) {
                let labels = [
                    ("grpc_method", *method),
                    ("grpc_service", *service),
                    ("grpc_type", *kind),
                ];
                out.sample(name, &labels, value(m) as f64);
            }
        }
        let name = "grpc_server_handled_total";
        out.family(
            name,
            "counter",
            "Total number of RPCs completed on the server, regardless of success or failure.",
        );
        for (code, code_name) in CODES.iter().enumerate() {
            for ((service, method, kind), m) in METHODS.iter().zip(&self.methods) {
                let labels = [
                    ("grpc_code", *code_name),
                    ("grpc_method", *method),
                    ("grpc_service", *service),
                    ("grpc_type", *kind),
                ];
                let v = m.handled.get(code).map_or(0, Counter::get);
                out.sample(name, &labels, v as f64);
            }
        }
    }
}

/// The tower layer counting the client gRPC server's calls into a member's [`Metrics`]:
/// `Server::builder().layer(GrpcLayer::new(metrics))`.
#[derive(Clone)]
pub struct GrpcLayer {
    metrics: Arc<Metrics>,
}

impl GrpcLayer {
    pub fn new(metrics: Arc<Metrics>) -> GrpcLayer {
        metrics.grpc.installed.store(true, Ordering::Relaxed);
        GrpcLayer { metrics }
    }
}

impl<S> tower_layer::Layer<S> for GrpcLayer {
    type Service = Counted<S>;

    fn layer(&self, inner: S) -> Counted<S> {
        Counted {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// A gRPC service whose calls are counted.
#[derive(Clone)]
pub struct Counted<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

/// A counted call: the member's metrics and the method's index.
#[derive(Clone)]
struct Call {
    metrics: Arc<Metrics>,
    method: usize,
}

impl Call {
    fn with(&self, f: impl FnOnce(&Grpc, &Method)) {
        let g = &self.metrics.grpc;
        if let Some(m) = g.method(self.method) {
            f(g, m);
        }
    }

    fn handled(&self, code: usize) {
        self.with(|_, m| {
            if let Some(c) = m.handled.get(code) {
                c.inc();
            }
        });
    }
}

impl<S, B> Service<Request<Body>> for Counted<S>
where
    S: Service<Request<Body>, Response = Response<B>>,
    S::Future: Unpin,
    B: hyper::body::Body<Data = Bytes> + Unpin,
{
    type Response = Response<CountedBody<B>>;
    type Error = S::Error;
    type Future = CountedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let call = self
            .metrics
            .grpc
            .lookup(req.uri().path())
            .map(|method| Call {
                metrics: self.metrics.clone(),
                method,
            });
        let req = match &call {
            None => req,
            Some(c) => {
                c.with(|_, m| m.started.inc());
                let c = c.clone();
                req.map(|b| {
                    Body::new(Inbound {
                        inner: b,
                        frames: Frames::default(),
                        call: c,
                    })
                })
            }
        };
        CountedFuture {
            inner: self.inner.call(req),
            call,
        }
    }
}

/// The request body, counting the messages it carries.
struct Inbound {
    inner: Body,
    frames: Frames,
    call: Call,
}

impl hyper::body::Body for Inbound {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        if let Some(Ok(f)) = &frame
            && let Some(data) = f.data_ref()
        {
            let (messages, bytes) = this.frames.feed(data);
            this.call.with(|g, m| {
                m.received.add(messages);
                g.received_bytes.add(bytes);
            });
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// The future of a counted call: its response gets a counting body.
pub struct CountedFuture<F> {
    inner: F,
    call: Option<Call>,
}

impl<F, B, E> Future for CountedFuture<F>
where
    F: Future<Output = Result<Response<B>, E>> + Unpin,
{
    type Output = Result<Response<CountedBody<B>>, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let resp = ready!(Pin::new(&mut this.inner).poll(cx))?;
        let mut call = this.call.take();
        if let Some(c) = &call
            && let Some(code) = status(resp.headers())
        {
            // A trailers-only answer (an error, mostly): handled now.
            c.handled(code);
            let sent = c.clone();
            return Poll::Ready(Ok(resp.map(|inner| CountedBody {
                inner,
                frames: Frames::default(),
                call: None,
                sent: Some(sent),
            })));
        }
        let sent = call.clone();
        Poll::Ready(Ok(resp.map(|inner| CountedBody {
            inner,
            frames: Frames::default(),
            call: call.take(),
            sent,
        })))
    }
}

/// A response body counting the messages it carries and, from its trailers, the call's
/// status.
pub struct CountedBody<B> {
    inner: B,
    frames: Frames,
    /// The call, until its status is counted.
    call: Option<Call>,
    /// The call whose sent messages are counted.
    sent: Option<Call>,
}

impl<B> hyper::body::Body for CountedBody<B>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let Some(data) = f.data_ref()
                    && let Some(c) = &this.sent
                {
                    let (messages, bytes) = this.frames.feed(data);
                    c.with(|g, m| {
                        m.sent.add(messages);
                        g.sent_bytes.add(bytes);
                    });
                }
                if let Some(trailers) = f.trailers_ref()
                    && let Some(c) = this.call.take()
                {
                    c.handled(status(trailers).unwrap_or(UNKNOWN));
                }
            }
            Some(Err(_)) | None => {
                if let Some(c) = this.call.take() {
                    c.handled(UNKNOWN);
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for CountedBody<B> {
    /// Dropped before its status went out: the client cancelled (or the connection broke).
    fn drop(&mut self) {
        if let Some(c) = self.call.take() {
            c.handled(CANCELED);
        }
    }
}

/// The `grpc-status` in `headers`, as an index into [`CODES`] (an unknown number is
/// `Unknown`).
fn status(headers: &HeaderMap) -> Option<usize> {
    let v = headers.get("grpc-status")?;
    let code = v
        .to_str()
        .ok()
        .and_then(|s| s.parse::<usize>().ok())
        .filter(|c| *c < CODES.len())
        .unwrap_or(UNKNOWN);
    Some(code)
}

/// Where a body's gRPC framing stands: each message is a 1-byte flag, a 4-byte big-endian
/// length, then that many bytes.
#[derive(Default)]
struct Frames {
    header: [u8; 5],
    /// Header bytes read so far.
    have: usize,
    /// Bytes of the current message still to come.
    remaining: u64,
}

impl Frames {
    /// Reads `data`; returns the messages that started in it and the message bytes it held.
    fn feed(&mut self, mut data: &[u8]) -> (u64, u64) {
        let (mut messages, mut bytes) = (0, 0);
        while !data.is_empty() {
            if self.remaining > 0 {
                let n = self.remaining.min(data.len() as u64);
                self.remaining -= n;
                bytes += n;
                data = data.get(n as usize..).unwrap_or_default();
                continue;
            }
            let n = (5 - self.have).min(data.len());
            if let (Some(dst), Some(src)) =
                (self.header.get_mut(self.have..self.have + n), data.get(..n))
            {
                dst.copy_from_slice(src);
            }
            self.have += n;
            data = data.get(n..).unwrap_or_default();
            if self.have == 5 {
                let [_, a, b, c, d] = self.header;
                self.remaining = u64::from(u32::from_be_bytes([a, b, c, d]));
                self.have = 0;
                messages += 1;
            }
        }
        (messages, bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(messages: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for m in messages {
            out.push(0);
            out.extend_from_slice(&(m.len() as u32).to_be_bytes());
            out.extend_from_slice(m);
        }
        out
    }

    #[test]
    fn frames_are_counted_across_any_split() {
        let wire = framed(&[b"hello", b"", b"world!!"]);
        for split in 0..wire.len() {
            let mut f = Frames::default();
            let (a, b) = wire.split_at(split);
            let (m1, b1) = f.feed(a);
            let (m2, b2) = f.feed(b);
            assert_eq!((m1 + m2, b1 + b2), (3, 12), "split at {split}");
        }
    }

    #[test]
    fn every_etcd_method_is_found_and_nothing_else() {
        let g = Grpc::default();
        assert_eq!(g.lookup("/etcdserverpb.KV/Range"), Some(24));
        assert_eq!(g.lookup("/etcdserverpb.Watch/Watch"), Some(38));
        assert_eq!(g.lookup("/etcdserverpb.KV/Nope"), None);
        assert_eq!(g.lookup("/"), None);
        for (i, (s, m, _)) in METHODS.iter().enumerate() {
            assert_eq!(g.lookup(&format!("/{s}/{m}")), Some(i));
        }
    }

    #[test]
    fn status_codes_read_from_headers() {
        let mut h = HeaderMap::new();
        assert_eq!(status(&h), None);
        h.insert("grpc-status", "0".parse().expect("value"));
        assert_eq!(status(&h), Some(0));
        h.insert("grpc-status", "14".parse().expect("value"));
        assert_eq!(status(&h).map(|c| CODES[c]), Some("Unavailable"));
        h.insert("grpc-status", "99".parse().expect("value"));
        assert_eq!(status(&h), Some(UNKNOWN));
    }

    #[tokio::test]
    async fn a_call_is_counted_started_handled_and_its_messages() {
        use http_body_util::BodyExt;
        use tower_layer::Layer;

        let metrics = Arc::new(Metrics::new());
        let layer = GrpcLayer::new(metrics.clone());
        let reply = framed(&[b"answer"]);
        let inner = tower_service_fn(move |req: Request<Body>| {
            let reply = reply.clone();
            async move {
                // The handler reads the request, as tonic does.
                let _ = req.into_body().collect().await;
                let mut trailers = HeaderMap::new();
                trailers.insert("grpc-status", "5".parse().expect("value"));
                let body = http_body_util::Full::new(Bytes::from(reply))
                    .map_err(|never| match never {})
                    .with_trailers(std::future::ready(Some(Ok(trailers))));
                Ok::<_, std::convert::Infallible>(Response::new(body))
            }
        });
        let mut svc = layer.layer(inner);
        let req = Request::builder()
            .uri("/etcdserverpb.KV/Range")
            .body(Body::new(http_body_util::Full::new(Bytes::from(framed(
                &[b"ask"],
            )))))
            .expect("request");
        let resp = std::future::poll_fn(|cx| svc.poll_ready(cx))
            .await
            .map(|()| svc.call(req));
        let resp = match resp {
            Ok(f) => f.await.expect("response"),
            Err(e) => match e {},
        };
        let _ = resp.into_body().collect().await;
        let g = &metrics.grpc;
        let m = g.method(24).expect("Range");
        assert_eq!(m.started.get(), 1);
        assert_eq!(m.received.get(), 1);
        assert_eq!(m.sent.get(), 1);
        assert_eq!(m.handled[5].get(), 1, "NotFound");
        assert_eq!(g.received_bytes.get(), 3);
        assert_eq!(g.sent_bytes.get(), 6);
        let mut t = Text::default();
        g.render(&mut t);
        let out = t.finish();
        assert!(out.contains(
            "grpc_server_handled_total{grpc_code=\"NotFound\",grpc_method=\"Range\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"} 1\n"
        ), "{out}");
    }

    /// A tower service from a closure (tower's `service_fn`, without tower's features).
    fn tower_service_fn<F>(f: F) -> FnService<F> {
        FnService(f)
    }

    #[derive(Clone)]
    struct FnService<F>(F);

    impl<F, Fut, T, E> Service<Request<Body>> for FnService<F>
    where
        F: FnMut(Request<Body>) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        type Response = T;
        type Error = E;
        type Future = Pin<Box<Fut>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), E>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, req: Request<Body>) -> Self::Future {
            Box::pin((self.0)(req))
        }
    }
}
