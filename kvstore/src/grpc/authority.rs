//! Tolerating the `:authority` etcd clients send for an endpoint given as a URL.
//!
//! etcdctl 3.4 dials `endpoint status` and `endpoint health` (and every `--cluster`
//! form, which takes members' client URLs) with the endpoint itself as the HTTP/2
//! `:authority`, e.g. `http://127.0.0.1:2379`. grpc-go servers accept that; the HTTP/2
//! server under tonic refuses it as malformed and resets the stream. This adapter sits
//! between the socket and the server: it reads a connection's first header block and,
//! only if its `:authority` carries a scheme, rewrites every header block of that
//! connection with the scheme (and any path) dropped. Any other connection is passed
//! through untouched after its first request.
//!
//! It must see HTTP/2 in clear: on a TLS listener it sits above the TLS stream (see
//! [`super::incoming`]), never between the socket and the TLS handshake.
//!
//! Everything it reads comes from an untrusted peer, so it holds bounded state and never
//! panics: a frame longer than the server's `SETTINGS_MAX_FRAME_SIZE`, a header block (HEADERS
//! and its CONTINUATION frames) or a decoded header list longer than [`MAX_HEADER_LIST`] ends
//! the connection. It ends it the HTTP/2 way, by handing the server a frame the protocol makes a
//! connection error (HEADERS on stream 0): the server answers GOAWAY(PROTOCOL_ERROR) and closes,
//! and nothing more is read. A first header block that does not decode is handed to the server
//! as it came, to judge with its own decoder (it answers GOAWAY(COMPRESSION_ERROR)); once blocks
//! are being rewritten, one that does not decode ends the connection as above. HPACK decoding is
//! `loona-hpack`'s, which returns errors where the `hpack` crate panicked (RUSTSEC-2023-0085).

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, ReadBuf};

const PREFACE_LEN: usize = 24;
const FRAME_HEADER: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The largest frame payload a peer must accept (HTTP/2's default SETTINGS_MAX_FRAME_SIZE); the
/// server advertises exactly this (see `super::routes`), so a longer frame is a protocol error.
pub(crate) const MAX_FRAME: usize = 16_384;
/// The largest header list the server takes (its SETTINGS_MAX_HEADER_LIST_SIZE: names and values
/// plus 32 bytes per field), and the largest header block gathered from HEADERS + CONTINUATION.
pub(crate) const MAX_HEADER_LIST: usize = 64 * 1024;
/// The HPACK dynamic table the server allows (HTTP/2's default SETTINGS_HEADER_TABLE_SIZE).
const HEADER_TABLE: usize = 4096;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Waiting for the client connection preface.
    Preface,
    /// Frames are parsed until the first header block tells which mode follows.
    Sniff,
    /// Every header block is decoded, fixed and encoded again.
    Rewrite,
    /// Bytes go through as read.
    Pass,
    /// The connection broke a bound: the server has been handed a connection error and nothing
    /// more is read from the peer.
    Closed,
}

/// A header block being gathered (HEADERS then CONTINUATION frames).
struct Block {
    stream: u32,
    flags: u8,
    priority: Vec<u8>,
    fragment: Vec<u8>,
    /// The frames as received, forwarded unchanged if nothing needs fixing.
    raw: Vec<u8>,
}

/// A server-side connection whose header blocks get a usable `:authority`.
pub struct AuthorityFix<S> {
    inner: S,
    mode: Mode,
    raw: BytesMut,
    out: BytesMut,
    block: Option<Block>,
    decoder: loona_hpack::Decoder<'static>,
    encoder: loona_hpack::Encoder<'static>,
}

impl<S> AuthorityFix<S> {
    /// Wraps the clear-text HTTP/2 connection `inner` (a socket, or a TLS stream).
    pub fn new(inner: S) -> AuthorityFix<S> {
        let mut decoder = loona_hpack::Decoder::new();
        decoder.set_max_allowed_table_size(HEADER_TABLE);
        AuthorityFix {
            inner,
            mode: Mode::Preface,
            raw: BytesMut::new(),
            out: BytesMut::new(),
            block: None,
            decoder,
            encoder: loona_hpack::Encoder::new(),
        }
    }

    /// Feeds `bytes` as if just read from the peer and returns what the server would read:
    /// the read path without a socket, for the fuzz target. Checks the adapter's own bounds.
    pub(crate) fn feed(&mut self, bytes: &[u8]) -> Vec<u8> {
        if self.mode != Mode::Closed {
            self.raw.extend_from_slice(bytes);
        }
        self.process();
        assert!(
            self.raw.len() < FRAME_HEADER + MAX_FRAME + bytes.len().max(1),
            "unbounded frame buffer"
        );
        assert!(
            self.block
                .as_ref()
                .is_none_or(|b| b.fragment.len() <= MAX_HEADER_LIST),
            "unbounded header block"
        );
        self.out.split().to_vec()
    }

    /// Ends the connection for breaking a bound: drops what is held, hands the server a HEADERS
    /// frame on stream 0 (a connection error: it answers GOAWAY and closes) and reads no more.
    fn refuse(&mut self, why: &str) {
        tracing::debug!("closing a client connection: {why}");
        self.block = None;
        self.raw = BytesMut::new();
        self.put_frame(HEADERS, END_HEADERS, 0, &[]);
        self.mode = Mode::Closed;
    }

    /// Hands the server the first header block as it came, and every byte after it: the server's
    /// own decoder judges it.
    fn pass_raw(&mut self, raw: &[u8]) {
        self.out.extend_from_slice(raw);
        self.mode = Mode::Pass;
    }

    /// Moves every complete unit of `raw` to `out`, fixing header blocks on the way.
    fn process(&mut self) {
        loop {
            match self.mode {
                Mode::Pass => {
                    let all = self.raw.split();
                    self.out.extend_from_slice(&all);
                    return;
                }
                Mode::Closed => {
                    self.raw.clear();
                    return;
                }
                Mode::Preface => {
                    if self.raw.len() < PREFACE_LEN {
                        return;
                    }
                    let p = self.raw.split_to(PREFACE_LEN);
                    self.out.extend_from_slice(&p);
                    self.mode = Mode::Sniff;
                }
                Mode::Sniff | Mode::Rewrite => {
                    if self.raw.len() < FRAME_HEADER {
                        return;
                    }
                    let h = &self.raw[..FRAME_HEADER];
                    let len =
                        (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]);
                    if len > MAX_FRAME {
                        self.refuse(&format!("a {len}-byte frame (limit {MAX_FRAME})"));
                        continue;
                    }
                    if self.raw.len() < FRAME_HEADER + len {
                        return;
                    }
                    let frame = self.raw.split_to(FRAME_HEADER + len);
                    self.frame(&frame);
                }
            }
        }
    }

    fn frame(&mut self, frame: &[u8]) {
        let (kind, flags) = (frame[3], frame[4]);
        let stream = u32::from_be_bytes([frame[5], frame[6], frame[7], frame[8]]) & 0x7fff_ffff;
        let payload = &frame[FRAME_HEADER..];
        match (kind, self.block.as_mut()) {
            (HEADERS, None) => {
                let mut p = payload;
                let mut pad = 0;
                if flags & PADDED != 0 {
                    let Some((&n, rest)) = p.split_first() else {
                        self.refuse("an empty padded HEADERS frame");
                        return;
                    };
                    pad = usize::from(n);
                    p = rest;
                }
                let mut priority = Vec::new();
                if flags & PRIORITY != 0 {
                    if p.len() < 5 {
                        self.refuse("a HEADERS frame too short for its priority");
                        return;
                    }
                    priority = p[..5].to_vec();
                    p = &p[5..];
                }
                let Some(fragment) = p.len().checked_sub(pad).map(|end| p[..end].to_vec()) else {
                    self.refuse("a HEADERS frame with more padding than payload");
                    return;
                };
                self.block = Some(Block {
                    stream,
                    flags,
                    priority,
                    fragment,
                    raw: frame.to_vec(),
                });
            }
            (CONTINUATION, Some(b)) if b.stream == stream => {
                if b.fragment.len() + payload.len() > MAX_HEADER_LIST {
                    self.refuse(&format!("a header block over {MAX_HEADER_LIST} bytes"));
                    return;
                }
                b.fragment.extend_from_slice(payload);
                b.raw.extend_from_slice(frame);
                b.flags |= flags & END_HEADERS;
            }
            (_, Some(_)) => {
                self.refuse("another frame inside a header block");
                return;
            }
            (_, None) => {
                self.out.extend_from_slice(frame);
                return;
            }
        }
        if self
            .block
            .as_ref()
            .is_some_and(|b| b.flags & END_HEADERS != 0)
            && let Some(b) = self.block.take()
        {
            self.finish_block(b);
        }
    }

    fn finish_block(&mut self, b: Block) {
        let mut headers = Vec::new();
        let mut list_size = 0usize;
        let decoded = self.decoder.decode_with_cb(&b.fragment, |k, v| {
            // RFC 7540 6.5.2: a field counts its name, its value and 32 bytes.
            list_size = list_size.saturating_add(k.len() + v.len() + 32);
            if list_size <= MAX_HEADER_LIST {
                headers.push((k.into_owned(), v.into_owned()));
            }
        });
        if let Err(e) = decoded {
            if self.mode == Mode::Sniff {
                self.pass_raw(&b.raw);
            } else {
                self.refuse(&format!("a header block that does not decode: {e}"));
            }
            return;
        }
        if list_size > MAX_HEADER_LIST {
            self.refuse(&format!(
                "a header list of {list_size} bytes (limit {MAX_HEADER_LIST})"
            ));
            return;
        }
        if self.mode == Mode::Sniff {
            let needs_fix = headers
                .iter()
                .any(|(k, v)| k.as_slice() == b":authority" && fixed(v).is_some());
            if !needs_fix {
                self.pass_raw(&b.raw);
                return;
            }
            self.mode = Mode::Rewrite;
        }
        for (k, v) in headers.iter_mut() {
            if k.as_slice() == b":authority"
                && let Some(f) = fixed(v)
            {
                *v = f;
            }
        }
        let block = self
            .encoder
            .encode(headers.iter().map(|(k, v)| (k.as_slice(), v.as_slice())));
        self.emit(b.stream, b.flags & END_STREAM, &b.priority, &block);
    }

    /// Writes a header block as HEADERS (+ CONTINUATION) frames.
    fn emit(&mut self, stream: u32, end_stream: u8, priority: &[u8], block: &[u8]) {
        let first_room = MAX_FRAME - priority.len();
        let (first, mut rest) = block.split_at(block.len().min(first_room));
        let mut flags = end_stream;
        if !priority.is_empty() {
            flags |= PRIORITY;
        }
        if rest.is_empty() {
            flags |= END_HEADERS;
        }
        let mut payload = priority.to_vec();
        payload.extend_from_slice(first);
        self.put_frame(HEADERS, flags, stream, &payload);
        while !rest.is_empty() {
            let (chunk, tail) = rest.split_at(rest.len().min(MAX_FRAME));
            rest = tail;
            let f = if rest.is_empty() { END_HEADERS } else { 0 };
            self.put_frame(CONTINUATION, f, stream, chunk);
        }
    }

    fn put_frame(&mut self, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
        let len = payload.len() as u32;
        self.out
            .extend_from_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags]);
        self.out.extend_from_slice(&stream.to_be_bytes());
        self.out.extend_from_slice(payload);
    }
}

/// `host:port` of an authority given as a URL; `None` when it is fine as it is.
fn fixed(authority: &[u8]) -> Option<Vec<u8>> {
    let s = std::str::from_utf8(authority).ok()?;
    let (_, rest) = s.split_once("://")?;
    let host = rest.split('/').next().unwrap_or(rest);
    Some(host.as_bytes().to_vec())
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityFix<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.out.is_empty() {
                let n = this.out.len().min(buf.remaining());
                buf.put_slice(&this.out[..n]);
                this.out.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.mode == Mode::Pass && this.raw.is_empty() {
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            }
            if this.mode == Mode::Closed {
                // End of input for the server, which has its connection error to answer.
                return Poll::Ready(Ok(()));
            }
            let mut tmp = [0u8; 16 * 1024];
            let mut rb = ReadBuf::new(&mut tmp);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut rb))?;
            if rb.filled().is_empty() {
                // End of stream: whatever is left goes through for the server to judge.
                let rest = this.raw.split();
                this.out.extend_from_slice(&rest);
                if this.out.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            this.raw.extend_from_slice(rb.filled());
            this.process();
        }
    }
}

super::write_through!(AuthorityFix);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_urls_are_fixed() {
        assert_eq!(
            fixed(b"http://127.0.0.1:2379"),
            Some(b"127.0.0.1:2379".to_vec())
        );
        assert_eq!(fixed(b"https://h:1/x"), Some(b"h:1".to_vec()));
        assert_eq!(fixed(b"127.0.0.1:2379"), None);
    }
}
