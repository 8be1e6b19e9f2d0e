//! Accepting client connections and telling gRPC from HTTP/1.1 on one port, as etcd serves
//! both there. Each connection is looked at in its own task (the accept loop never waits for
//! a peer): over TLS the handshake runs first (bounded by [`HANDSHAKE_TIMEOUT`]) and ALPN
//! decides when the client offered it; otherwise the first bytes do: the HTTP/2 client
//! preface goes to the gRPC server (through the `:authority` fix, [`super::authority`]),
//! anything else to an HTTP/1.1 server answering the JSON gateway and the plain paths
//! ([`crate::gateway`]). The bytes looked at are replayed to whichever server gets the
//! connection ([`Prefixed`]). A peer that sends nothing within [`SNIFF_TIMEOUT`] is dropped.
//! The accept loop ends when the gRPC server drops the stream of its connections.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

use super::authority::AuthorityFix;
use crate::gateway::Gateway;
use crate::tls::HANDSHAKE_TIMEOUT;

/// HTTP/2's client connection preface (RFC 9113 3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// How long a new connection may take to show what it speaks.
pub const SNIFF_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an HTTP/1.1 client may take to send a request's headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections whose kind is known but the gRPC server has not picked up yet.
const READY: usize = 64;

/// A gRPC connection handed to tonic.
pub type Conn<S> = AuthorityFix<Prefixed<S>>;

/// A connection whose first bytes were read already and are read again first.
pub struct Prefixed<S> {
    inner: S,
    prefix: Vec<u8>,
    at: usize,
}

impl<S> Prefixed<S> {
    pub fn new(inner: S, prefix: Vec<u8>) -> Prefixed<S> {
        Prefixed {
            inner,
            prefix,
            at: 0,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.at < this.prefix.len() {
            let n = (this.prefix.len() - this.at).min(buf.remaining());
            buf.put_slice(&this.prefix[this.at..this.at + n]);
            this.at += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

super::write_through!(Prefixed);

/// What a connection speaks.
#[derive(Debug, PartialEq, Eq)]
enum Kind {
    Grpc,
    Http1,
}

/// Reads until the bytes are the HTTP/2 preface or stop matching it; returns which, and the
/// bytes read. At most the preface's 24 bytes are read.
async fn sniff<S: AsyncRead + Unpin>(io: &mut S) -> std::io::Result<(Kind, Vec<u8>)> {
    let mut seen = Vec::with_capacity(PREFACE.len());
    let mut buf = [0u8; PREFACE.len()];
    while seen.len() < PREFACE.len() {
        let n = io.read(&mut buf[..PREFACE.len() - seen.len()]).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        seen.extend_from_slice(&buf[..n]);
        if !PREFACE.starts_with(&seen) {
            return Ok((Kind::Http1, seen));
        }
    }
    Ok((Kind::Grpc, seen))
}

/// Where accepted connections go.
struct Dispatch<S> {
    grpc: mpsc::Sender<std::io::Result<Conn<S>>>,
    gateway: Arc<Gateway>,
    stop: broadcast::Sender<()>,
}

impl<S> Clone for Dispatch<S> {
    fn clone(&self) -> Self {
        Dispatch {
            grpc: self.grpc.clone(),
            gateway: self.gateway.clone(),
            stop: self.stop.clone(),
        }
    }
}

impl<S> Dispatch<S>
where
    S: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
{
    /// Hands `io` to the server for `kind`, once it knows (`alpn` is the protocol TLS agreed on).
    async fn dispatch(self, mut io: S, alpn: Option<Vec<u8>>) {
        let (kind, prefix) = match alpn.as_deref() {
            Some(b"h2") => (Kind::Grpc, Vec::new()),
            Some(b"http/1.1") => (Kind::Http1, Vec::new()),
            _ => match tokio::time::timeout(SNIFF_TIMEOUT, sniff(&mut io)).await {
                Ok(Ok(k)) => k,
                Ok(Err(e)) => return tracing::debug!(error = %e, "client connection closed"),
                Err(_) => return tracing::debug!("client connection sent nothing"),
            },
        };
        let io = Prefixed::new(io, prefix);
        match kind {
            // The server is gone when this fails: the connection just closes.
            Kind::Grpc => drop(self.grpc.send(Ok(AuthorityFix::new(io))).await),
            Kind::Http1 => serve_http1(self.gateway, io, self.stop.subscribe()).await,
        }
    }
}

/// Serves the gateway on one HTTP/1.1 connection until it closes or the member stops. Each
/// request carries the connection's info (its client certificate) in its extensions, as
/// tonic's requests do.
async fn serve_http1<S>(gateway: Arc<Gateway>, io: S, mut stop: broadcast::Receiver<()>)
where
    S: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
{
    let info = io.connect_info();
    let svc = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(info.clone());
        let gw = gateway.clone();
        let req = crate::gateway::incoming(req);
        async move { Ok::<_, std::convert::Infallible>(gw.handle(req).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(hyper_util::rt::TokioIo::new(io), svc);
    tokio::select! {
        r = conn => if let Err(e) = r {
            tracing::debug!(error = %e, "HTTP client connection ended");
        },
        _ = stop.recv() => {}
    }
}

/// The accept loop of `listener`: each connection goes through `handshake` (TLS, or none)
/// and then to the gRPC server (the returned stream) or the gateway.
fn accept<S, H, F>(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    stop: broadcast::Sender<()>,
    handshake: H,
) -> ReceiverStream<std::io::Result<Conn<S>>>
where
    S: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
    H: Fn(TcpStream) -> F + Send + 'static,
    F: Future<Output = Option<(S, Option<Vec<u8>>)>> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(READY);
    let dispatch = Dispatch {
        grpc: tx,
        gateway,
        stop,
    };
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = dispatch.grpc.closed() => return,
                a = listener.accept() => a,
            };
            let sock = match accepted {
                Ok((s, _)) => s,
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(error = %e, "accepting a client connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            // Small request/response RPCs: never let Nagle hold a reply back.
            let _ = sock.set_nodelay(true);
            let shake = handshake(sock);
            let dispatch = dispatch.clone();
            tokio::spawn(async move {
                if let Some((io, alpn)) = shake.await {
                    dispatch.dispatch(io, alpn).await;
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// The connections of a plain-TCP client listener that speak gRPC; the rest are served
/// by the gateway.
pub(crate) fn plain(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    stop: broadcast::Sender<()>,
) -> ReceiverStream<std::io::Result<Conn<TcpStream>>> {
    accept(listener, gateway, stop, |s| async move { Some((s, None)) })
}

/// Like [`plain`], over TLS with `config` (whose ALPN should offer `h2` and `http/1.1`).
/// Failed handshakes are logged and dropped.
pub(crate) fn tls(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    gateway: Arc<Gateway>,
    stop: broadcast::Sender<()>,
) -> ReceiverStream<std::io::Result<Conn<tokio_rustls::server::TlsStream<TcpStream>>>> {
    let acceptor = TlsAcceptor::from(config);
    accept(listener, gateway, stop, move |sock| {
        let acceptor = acceptor.clone();
        async move {
            let from = sock.peer_addr().ok();
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(sock)).await {
                Ok(Ok(tls)) => {
                    let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
                    Some((tls, alpn))
                }
                Ok(Err(e)) => {
                    tracing::info!(?from, error = %e, "rejected client connection (TLS)");
                    None
                }
                Err(_) => {
                    tracing::info!(?from, "client TLS handshake timed out");
                    None
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn preface_or_not() {
        let (mut a, mut b) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut a, PREFACE)
            .await
            .expect("write");
        assert_eq!(
            sniff(&mut b).await.expect("sniff"),
            (Kind::Grpc, PREFACE.to_vec())
        );
        tokio::io::AsyncWriteExt::write_all(&mut a, b"POST /v3/kv/range HTTP/1.1\r\n")
            .await
            .expect("write");
        let (kind, seen) = sniff(&mut b).await.expect("sniff");
        assert_eq!(kind, Kind::Http1);
        let mut p = Prefixed::new(b, seen);
        let mut line = vec![0u8; 28];
        p.read_exact(&mut line).await.expect("read");
        assert_eq!(&line, b"POST /v3/kv/range HTTP/1.1\r\n");
    }
}
