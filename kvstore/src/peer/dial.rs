//! The TCP connections under the peer channels, built so that a member finds its peers again
//! within a fraction of a second once a network fault between them ends.
//!
//! TCP alone does not: while packets are lost it retransmits with exponential backoff (0.2 s,
//! then 0.4, 0.8, 1.6 s ...), so a connection that lost its packets for a second or two sends
//! nothing for up to as long again after the network is back, and the raft messages queued
//! behind it (heartbeats, appends, a new leader's votes) wait. Two things here cut that wait:
//!
//! - [`Watched`]: a write to a connection that has had data unacknowledged for [`STALL`],
//!   with the retransmission timer running, fails instead of queueing behind it (read from
//!   the kernel's `TCP_INFO`). The stream on it breaks; the peer sender opens another. The
//!   stalled connection is closed abortively (`SO_LINGER` 0): what it still held is
//!   discarded, never delivered late.
//! - [`PeerConnector`]: a dial starts a fresh connection attempt every [`REDIAL`] while
//!   earlier ones are still waiting (a lost SYN is retried by TCP only after a second), the
//!   first to connect winning, within the channel's connect timeout.
//!
//! raft takes the messages lost with a broken connection as it takes any loss.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tonic::codegen::Service;
use tonic::codegen::http::Uri;

/// How long data may stay unacknowledged, the retransmission timer running, before the
/// connection counts as stalled: two minimum retransmission timeouts and some, well above
/// a healthy peer's round trip.
pub const STALL: Duration = Duration::from_millis(500);
/// How often a write looks at the connection's state (a system call).
const CHECK_EVERY: Duration = Duration::from_millis(50);
/// How often a dial that has not connected yet starts another attempt.
pub const REDIAL: Duration = Duration::from_millis(250);

/// Dials peers for tonic channels: plain TCP (TLS, for `https://` URLs, is layered on top by
/// tonic), `TCP_NODELAY` set, attempts overlapping every [`REDIAL`].
#[derive(Clone, Copy, Debug, Default)]
pub struct PeerConnector;

impl Service<Uri> for PeerConnector {
    type Response = TokioIo<Watched>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        Box::pin(async move {
            let stream = dial(&uri).await?;
            stream.set_nodelay(true)?;
            Ok(TokioIo::new(Watched::new(stream)))
        })
    }
}

/// The `host:port` a peer URL names (the scheme's port when it names none).
fn address(uri: &Uri) -> io::Result<String> {
    let host = uri
        .host()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("no host in {uri}")))?;
    let port = uri.port_u16().unwrap_or(match uri.scheme_str() {
        Some("https") => 443,
        _ => 80,
    });
    Ok(if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    })
}

/// Connects to `uri`, starting a new attempt every [`REDIAL`] while none has connected; the
/// first connection wins and the other attempts are dropped. A refused connection (nothing
/// listens: the peer's process is gone) ends the dial at once, so that the caller can tell
/// (`conn::refused`); otherwise it runs until one connects (the caller bounds it with its
/// connect timeout).
async fn dial(uri: &Uri) -> io::Result<TcpStream> {
    let addr = address(uri)?;
    let mut attempts = futures::stream::FuturesUnordered::new();
    let mut redial = tokio::time::interval(REDIAL);
    loop {
        tokio::select! {
            _ = redial.tick() => attempts.push(TcpStream::connect(addr.clone())),
            Some(res) = futures::StreamExt::next(&mut attempts) => match res {
                Ok(s) => return Ok(s),
                Err(e) if !retry_after(&e) => return Err(e),
                // Unreachable for now, or timed out: a later attempt may connect.
                Err(_) => {}
            },
        }
    }
}

/// Whether another attempt may connect where `e` ended one: not when the peer refused, nor
/// when the address itself is unusable.
fn retry_after(e: &io::Error) -> bool {
    !matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::InvalidInput
            | io::ErrorKind::AddrNotAvailable
            | io::ErrorKind::Unsupported
    )
}

/// A peer connection whose writes fail once it has stalled ([`STALL`]): see the module doc.
#[derive(Debug)]
pub struct Watched {
    stream: TcpStream,
    checked: Instant,
}

impl Watched {
    fn new(stream: TcpStream) -> Watched {
        Watched {
            stream,
            checked: Instant::now(),
        }
    }

    /// An error when the connection has stalled; looks at most every [`CHECK_EVERY`].
    fn stalled(&mut self) -> Option<io::Error> {
        if self.checked.elapsed() < CHECK_EVERY {
            return None;
        }
        self.checked = Instant::now();
        let since = unacknowledged_for(&self.stream)?;
        if since < STALL {
            return None;
        }
        // Closed abortively: what waits in it is discarded rather than delivered whenever
        // the network comes back (a request sent again meanwhile must not arrive twice
        // after the leader forgot the first; see `node::resend`).
        if let Err(e) = self.stream.set_zero_linger() {
            tracing::debug!(error = %e, "SO_LINGER on a stalled peer connection");
        }
        Some(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "peer connection stalled: data unacknowledged for {} ms",
                since.as_millis()
            ),
        ))
    }
}

/// How long since the peer last acknowledged anything, when data is waiting for an
/// acknowledgement and the retransmission timer has fired; `None` otherwise (or when the
/// kernel does not say).
#[cfg(target_os = "linux")]
#[allow(unsafe_code)] // getsockopt(2) TCP_INFO: std has no call for it
fn unacknowledged_for(stream: &TcpStream) -> Option<Duration> {
    use std::os::fd::AsRawFd;
    // SAFETY: an all-zero tcp_info is valid (plain integers); getsockopt writes at most `len`
    // bytes into it, on a descriptor the stream owns for the whole call.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    if rc != 0 || info.tcpi_unacked == 0 || (info.tcpi_retransmits == 0 && info.tcpi_backoff == 0) {
        return None;
    }
    Some(Duration::from_millis(u64::from(info.tcpi_last_ack_recv)))
}

#[cfg(not(target_os = "linux"))]
fn unacknowledged_for(_: &TcpStream) -> Option<Duration> {
    None
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Some(e) = self.stalled() {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if let Some(e) = self.stalled() {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
