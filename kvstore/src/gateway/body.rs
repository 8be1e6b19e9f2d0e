//! Reading request bodies, bounded: a unary call's whole body, or a streaming call's body as
//! the stream of JSON objects grpc-gateway reads from it (one request message each, with or
//! without whitespace between them). Splitting the stream scans each byte once (nesting depth
//! and strings only), so a client sending a message in many small pieces costs linear time.

use std::future::Future;
use std::pin::Pin;

use bytes::{Buf, Bytes, BytesMut};
use http_body_util::BodyExt;
use tonic::Status;

/// A request body, whatever connection it came on.
pub(crate) type Incoming = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// Any error a request body may end with.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The whole of `body`, refused past `limit` bytes. (Boxed where its lifetimes are concrete,
/// for the compiler to prove it `Send`.)
pub(crate) fn whole(
    mut body: Incoming,
    limit: usize,
) -> Pin<Box<dyn Future<Output = Result<Bytes, Status>> + Send>> {
    Box::pin(async move {
        let mut all = BytesMut::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| Status::invalid_argument(e.to_string()))?;
            if let Some(data) = frame.data_ref() {
                if all.len() + data.len() > limit {
                    return Err(too_large());
                }
                all.extend_from_slice(data);
            }
        }
        Ok(all.freeze())
    })
}

fn too_large() -> Status {
    // Go's `http.MaxBytesReader` words it so.
    Status::invalid_argument("http: request body too large")
}

/// The JSON objects of a streaming request body, one at a time.
pub(crate) struct Values {
    body: Incoming,
    ended: bool,
    limit: usize,
    buf: BytesMut,
    /// Bytes of `buf` already scanned for the current value's end.
    scanned: usize,
    depth: usize,
    started: bool,
    in_string: bool,
    escaped: bool,
}

impl Values {
    /// The values of `body`, none longer than `limit` bytes.
    pub(crate) fn new(body: Incoming, limit: usize) -> Values {
        Values {
            body,
            ended: false,
            limit,
            buf: BytesMut::new(),
            scanned: 0,
            depth: 0,
            started: false,
            in_string: false,
            escaped: false,
        }
    }

    /// The next value: `Ok(None)` when the body ended between values; an error for one that
    /// does not parse, is cut short, or is too long.
    pub(crate) async fn next(&mut self) -> Result<Option<serde_json::Value>, String> {
        loop {
            if let Some(end) = self.scan() {
                let value = self.buf.split_to(end).freeze();
                self.reset();
                return serde_json::from_slice(&value)
                    .map(Some)
                    .map_err(|e| e.to_string());
            }
            if self.buf.len() > self.limit {
                return Err(too_large().message().to_string());
            }
            if self.ended {
                return if self.started {
                    Err("unexpected EOF".into())
                } else {
                    Ok(None)
                };
            }
            match self.body.frame().await {
                None => self.ended = true,
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        self.buf.extend_from_slice(data);
                    }
                }
                Some(Err(e)) => return Err(e.to_string()),
            }
        }
    }

    fn reset(&mut self) {
        self.scanned = 0;
        self.depth = 0;
        self.started = false;
        self.in_string = false;
        self.escaped = false;
    }

    /// Where the value at the front of `buf` ends, once it has all arrived. Whitespace before
    /// a value is dropped. A value that is not an object or array ends at its first byte (it
    /// cannot be a request message; the parser says why).
    fn scan(&mut self) -> Option<usize> {
        while self.scanned < self.buf.len() {
            let c = self.buf[self.scanned];
            self.scanned += 1;
            if !self.started {
                match c {
                    b' ' | b'\t' | b'\r' | b'\n' => {
                        self.buf.advance(1);
                        self.scanned = 0;
                    }
                    b'{' | b'[' => {
                        self.started = true;
                        self.depth = 1;
                    }
                    _ => return Some(self.scanned),
                }
                continue;
            }
            if self.in_string {
                match c {
                    _ if self.escaped => self.escaped = false,
                    b'\\' => self.escaped = true,
                    b'"' => self.in_string = false,
                    _ => {}
                }
                continue;
            }
            match c {
                b'"' => self.in_string = true,
                b'{' | b'[' => self.depth += 1,
                b'}' | b']' => {
                    self.depth = self.depth.saturating_sub(1);
                    if self.depth == 0 {
                        return Some(self.scanned);
                    }
                }
                _ => {}
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::StreamBody;
    use hyper::body::Frame;

    fn body(chunks: &[&'static str]) -> Incoming {
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = chunks
            .iter()
            .map(|c| Ok(Frame::data(Bytes::from_static(c.as_bytes()))))
            .collect();
        StreamBody::new(futures::stream::iter(frames)).boxed_unsync()
    }

    #[tokio::test]
    async fn objects_split_across_pieces() {
        let mut v = Values::new(body(&[" {\"a\":\"}\\\"", "\"}\n{\"b\":[1", ",{}]}  "]), 100);
        assert_eq!(v.next().await, Ok(Some(serde_json::json!({"a": "}\""}))));
        assert_eq!(v.next().await, Ok(Some(serde_json::json!({"b": [1, {}]}))));
        assert_eq!(v.next().await, Ok(None));
        let mut v = Values::new(body(&["{\"a\":"]), 100);
        assert!(v.next().await.is_err());
        let mut v = Values::new(body(&["{bad}"]), 100);
        assert!(v.next().await.is_err());
        let mut v = Values::new(body(&["{\"a\":\"", "xxxxxxxxxxxxxxxxxxxx"]), 10);
        assert!(v.next().await.is_err());
    }
}
