//! Real TCP traffic between network namespaces, with every byte checked: a one-shot echo
//! exchange, and a long-lived paced stream whose receiver verifies the byte pattern and records
//! the longest pause between reads, so a test can prove a connection survived an event without
//! losing a byte or stalling.

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};

use crate::netns;

/// The byte at stream offset `i`: a pattern with a prime period, so a lost, repeated or
/// reordered chunk shows up as a mismatch.
fn pattern(i: u64) -> u8 {
    (i % 251) as u8
}

fn fill(buf: &mut [u8], offset: u64) {
    for (k, b) in buf.iter_mut().enumerate() {
        *b = pattern(offset + k as u64);
    }
}

/// Binds a listener on `ip` (free port) inside `ns` and runs `serve` on it there; returns the
/// address and the thread.
fn listen_in<T: Send + 'static>(
    ns: &str,
    ip: IpAddr,
    serve: impl FnOnce(TcpListener) -> Result<T> + Send + 'static,
) -> Result<(SocketAddr, JoinHandle<hostnet::Result<Result<T>>>)> {
    let (tx, rx) = mpsc::channel();
    let handle = netns::spawn_in(ns, move || {
        let l = match TcpListener::bind((ip, 0)).and_then(|l| l.local_addr().map(|a| (l, a))) {
            Ok((l, a)) => {
                let _ = tx.send(Ok(a));
                l
            }
            Err(e) => {
                let _ = tx.send(Err(e.to_string()));
                return Err(anyhow!("bind {ip}: {e}"));
            }
        };
        serve(l)
    })?;
    let addr = rx
        .recv_timeout(Duration::from_secs(10))
        .context("the listener thread did not report")?
        .map_err(anyhow::Error::msg)?;
    Ok((addr, handle))
}

/// Accepts one connection within `timeout`.
fn accept_within(l: &TcpListener, timeout: Duration) -> Result<TcpStream> {
    l.set_nonblocking(true)?;
    let t0 = Instant::now();
    loop {
        match l.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false)?;
                return Ok(s);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock && t0.elapsed() < timeout => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => bail!("no connection accepted within {timeout:?}: {e}"),
        }
    }
}

fn join<T>(h: JoinHandle<hostnet::Result<Result<T>>>, what: &str) -> Result<T> {
    h.join().map_err(|_| anyhow!("{what} thread panicked"))??
}

/// Connects from `client_ns` to a TCP echo server on `server_ip` in `server_ns`, sends `bytes`
/// bytes and checks every byte comes back. Fails within about 10 s if the path is broken.
/// Either family: `server_ip` may be an IPv4 or an IPv6 address.
pub fn echo(
    client_ns: &str,
    server_ns: &str,
    server_ip: impl Into<IpAddr>,
    bytes: usize,
) -> Result<()> {
    let server_ip = server_ip.into();
    let (addr, server) = listen_in(server_ns, server_ip, |l| {
        let mut s = accept_within(&l, Duration::from_secs(10))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut buf = [0u8; 16 * 1024];
        loop {
            let n = s.read(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            s.write_all(&buf[..n])?;
        }
    })?;
    let client = netns::spawn_in(client_ns, move || -> Result<()> {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .with_context(|| format!("connect to {addr}"))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut reader = s.try_clone()?;
        // Read on another thread so neither side blocks on a full buffer.
        let check = std::thread::spawn(move || -> Result<()> {
            let mut got = 0usize;
            let mut buf = [0u8; 16 * 1024];
            while got < bytes {
                let n = reader.read(&mut buf)?;
                ensure!(n > 0, "echo closed after {got} of {bytes} bytes");
                for (k, b) in buf[..n].iter().enumerate() {
                    ensure!(
                        *b == pattern((got + k) as u64),
                        "echoed byte {} differs",
                        got + k
                    );
                }
                got += n;
            }
            Ok(())
        });
        let mut w = &s;
        let mut sent = 0usize;
        let mut chunk = vec![0u8; 16 * 1024];
        while sent < bytes {
            let n = chunk.len().min(bytes - sent);
            fill(&mut chunk[..n], sent as u64);
            w.write_all(&chunk[..n])?;
            sent += n;
        }
        let r = check.join().map_err(|_| anyhow!("reader panicked"))?;
        s.shutdown(Shutdown::Write)?;
        r
    })?;
    let c = join(client, "echo client");
    let s = join(server, "echo server");
    c.with_context(|| format!("TCP echo {client_ns} → {server_ip}"))?;
    s.with_context(|| format!("TCP echo server on {server_ip}"))
}

/// What the receiver of a [`Stream`] saw so far.
#[derive(Debug, Clone, Default)]
pub struct StreamStats {
    pub received: u64,
    /// Longest pause between two reads since the first byte.
    pub max_gap: Duration,
    last_read: Option<Instant>,
}

/// Outcome of a finished [`Stream`].
#[derive(Debug, Clone)]
pub struct StreamReport {
    pub sent: u64,
    pub received: u64,
    pub max_gap: Duration,
    pub duration: Duration,
}

/// A long-lived TCP connection from a client namespace to a server namespace carrying a paced,
/// verified byte stream (16 KiB every 10 ms, about 1.6 MB/s).
pub struct Stream {
    stop: Arc<AtomicBool>,
    stats: Arc<Mutex<StreamStats>>,
    client: Option<JoinHandle<hostnet::Result<Result<u64>>>>,
    server: Option<JoinHandle<hostnet::Result<Result<()>>>>,
    started: Instant,
}

impl Stream {
    /// Opens the connection and starts sending; returns once the first bytes arrived.
    pub fn start(client_ns: &str, server_ns: &str, server_ip: impl Into<IpAddr>) -> Result<Stream> {
        let server_ip = server_ip.into();
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(Mutex::new(StreamStats::default()));
        let st = stats.clone();
        let (addr, server) = listen_in(server_ns, server_ip, move |l| {
            let mut s = accept_within(&l, Duration::from_secs(10))?;
            // A stall longer than this fails the stream instead of hanging the test.
            s.set_read_timeout(Some(Duration::from_secs(30)))?;
            let mut buf = vec![0u8; 64 * 1024];
            let mut off = 0u64;
            loop {
                let n = s
                    .read(&mut buf)
                    .with_context(|| format!("stream read after {off} bytes"))?;
                if n == 0 {
                    return Ok(());
                }
                for (k, b) in buf[..n].iter().enumerate() {
                    ensure!(
                        *b == pattern(off + k as u64),
                        "stream byte {} differs",
                        off + k as u64
                    );
                }
                off += n as u64;
                let now = Instant::now();
                let mut g = st.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(last) = g.last_read {
                    g.max_gap = g.max_gap.max(now - last);
                }
                g.last_read = Some(now);
                g.received = off;
            }
        })?;
        let stop2 = stop.clone();
        let client = netns::spawn_in(client_ns, move || -> Result<u64> {
            let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
                .with_context(|| format!("connect to {addr}"))?;
            s.set_write_timeout(Some(Duration::from_secs(30)))?;
            let mut w = &s;
            let mut chunk = vec![0u8; 16 * 1024];
            let mut sent = 0u64;
            while !stop2.load(Ordering::SeqCst) {
                fill(&mut chunk, sent);
                w.write_all(&chunk)
                    .with_context(|| format!("stream write after {sent} bytes"))?;
                sent += chunk.len() as u64;
                std::thread::sleep(Duration::from_millis(10));
            }
            s.shutdown(Shutdown::Write)?;
            Ok(sent)
        })?;
        let stream = Stream {
            stop,
            stats,
            client: Some(client),
            server: Some(server),
            started: Instant::now(),
        };
        let t0 = Instant::now();
        while stream.stats().received == 0 {
            ensure!(
                t0.elapsed() < Duration::from_secs(10),
                "no stream bytes arrived within 10 s"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(stream)
    }

    pub fn stats(&self) -> StreamStats {
        self.stats.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Waits until at least `more` further bytes arrived (within `timeout`): the stream flows.
    pub fn wait_flowing(&self, more: u64, timeout: Duration) -> Result<()> {
        let base = self.stats().received;
        let t0 = Instant::now();
        while self.stats().received < base + more {
            ensure!(
                t0.elapsed() < timeout,
                "the stream did not carry {more} more bytes within {timeout:?} (at {})",
                self.stats().received
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    /// Stops sending, closes the connection and waits for the receiver to drain it; fails if
    /// either side saw an error or a byte is missing.
    pub fn finish(mut self) -> Result<StreamReport> {
        self.stop.store(true, Ordering::SeqCst);
        let sent = join(
            self.client.take().context("finished twice")?,
            "stream client",
        )?;
        join(
            self.server.take().context("finished twice")?,
            "stream server",
        )?;
        let st = self.stats();
        ensure!(
            st.received == sent,
            "sent {sent} bytes, received {}",
            st.received
        );
        Ok(StreamReport {
            sent,
            received: st.received,
            max_gap: st.max_gap,
            duration: self.started.elapsed(),
        })
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        // An unfinished stream (a failing test) stops its sender; the threads end on their own
        // when the namespaces go away or the read timeout passes.
        self.stop.store(true, Ordering::SeqCst);
    }
}
