//! Hostile HTTP/2 on the client port of a running member: a one-byte header block (the input
//! that panicked the `hpack` crate, RUSTSEC-2023-0085), the same after the connection's blocks
//! are being rewritten, a CONTINUATION flood, and a frame far over the advertised size. Each
//! connection must be closed with an HTTP/2 error (GOAWAY), nothing may panic, memory stays
//! within the bounds, and another client is served throughout.

use crate::common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{Kind, Proc};
use kvstore::client::{Client, req};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A connection that has sent the client preface and an empty SETTINGS frame.
fn open(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.set_write_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut hello = PREFACE.to_vec();
    hello.extend(frame(SETTINGS, 0, 0, &[]));
    (&s).write_all(&hello).expect("preface");
    s
}

/// Reads frames until the server closes the connection; the GOAWAY error code it sent, if any.
fn goaway_then_close(mut s: &TcpStream) -> Option<u32> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        assert!(
            Instant::now() < deadline,
            "the server kept the connection open"
        );
    }
    let mut code = None;
    let mut rest = &buf[..];
    while rest.len() >= 9 {
        let len = (usize::from(rest[0]) << 16) | (usize::from(rest[1]) << 8) | usize::from(rest[2]);
        let Some(payload) = rest.get(9..9 + len) else {
            break;
        };
        if rest[3] == GOAWAY && payload.len() >= 8 {
            code = Some(u32::from_be_bytes([
                payload[4], payload[5], payload[6], payload[7],
            ]));
        }
        rest = &rest[9 + len..];
    }
    code
}

/// The header block of a gRPC call whose `:authority` is a URL, as etcdctl sends it: the
/// connection's blocks are rewritten from then on.
fn url_authority_block(port: u16) -> Vec<u8> {
    let authority = format!("http://127.0.0.1:{port}");
    let headers: Vec<(&[u8], &[u8])> = vec![
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":path", b"/etcdserverpb.Maintenance/Status"),
        (b":authority", authority.as_bytes()),
        (b"content-type", b"application/grpc"),
        (b"te", b"trailers"),
    ];
    loona_hpack::Encoder::new().encode(headers)
}

/// Sends CONTINUATION frames of 16 KiB after an open HEADERS until the server stops taking
/// them; the bytes it took.
fn continuation_flood(port: u16) -> (usize, Option<u32>) {
    let s = open(port);
    let mut sent = 0;
    let mut w = &s;
    if w.write_all(&frame(HEADERS, 0, 1, &[0x82])).is_ok() {
        let chunk = frame(CONTINUATION, 0, 1, &[0x40; 16 * 1024]);
        while sent < 64 * 1024 * 1024 && w.write_all(&chunk).is_ok() {
            sent += chunk.len();
        }
    }
    (sent, goaway_then_close(&s))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_http2_closes_the_connection_and_nothing_else() {
    let mut p = Proc::start(Kind::Kvstore);
    let port = p.client_port;
    // A client connected before the attacks, and used during and after them.
    let client = Client::connect([p.endpoint()], None).await.expect("client");
    client
        .put(req::put("/before", "1"))
        .await
        .expect("put before");

    // 1. The one-byte header block on a fresh connection: the server's own decoder judges it.
    let s = open(port);
    (&s).write_all(&frame(HEADERS, END_HEADERS | END_STREAM, 1, &[0x3f]))
        .unwrap();
    let code = goaway_then_close(&s);
    eprintln!("one-byte block: GOAWAY {code:?}");
    assert!(
        matches!(code, Some(c) if c != 0),
        "one-byte block: GOAWAY {code:?}"
    );

    // 2. The same block once the connection's blocks are being rewritten.
    let s = open(port);
    let mut first = frame(HEADERS, END_HEADERS, 1, &url_authority_block(port));
    first.extend(frame(HEADERS, END_HEADERS | END_STREAM, 3, &[0x3f]));
    (&s).write_all(&first).unwrap();
    let code = goaway_then_close(&s);
    assert!(
        matches!(code, Some(c) if c != 0),
        "rewritten then bad: GOAWAY {code:?}"
    );

    // 3. A frame announcing 16 MiB (the server advertises 16 KiB).
    let s = open(port);
    let mut big = frame(DATA, 0, 1, &[]);
    big[..3].copy_from_slice(&[0xff, 0xff, 0xff]);
    (&s).write_all(&big).unwrap();
    let _ = (&s).write_all(&[0u8; 64 * 1024]);
    let code = goaway_then_close(&s);
    assert!(
        matches!(code, Some(c) if c != 0),
        "oversized frame: GOAWAY {code:?}"
    );

    // 4. CONTINUATION floods, 50 at once: each is cut off early, memory stays bounded.
    let before = p.rss_kib();
    let floods: Vec<_> = (0..50)
        .map(|_| std::thread::spawn(move || continuation_flood(port)))
        .collect();
    // Another client is served while they run.
    for i in 0..20 {
        client
            .put(req::put(format!("/during/{i}"), "x"))
            .await
            .expect("put during the floods");
    }
    for f in floods {
        let (sent, code) = f.join().expect("flood thread");
        eprintln!("flood: {sent} bytes taken, GOAWAY {code:?}");
        assert!(
            sent < 8 * 1024 * 1024,
            "the server took {sent} bytes of one header block"
        );
        assert!(matches!(code, Some(c) if c != 0), "flood: GOAWAY {code:?}");
    }
    let after = p.rss_kib();
    eprintln!("resident: {before} KiB before the floods, {after} KiB after");
    assert!(
        after < before + 16 * 1024,
        "resident memory grew from {before} KiB to {after} KiB"
    );

    // The member and its clients carry on; nothing panicked.
    let got = client.get("/before").await.expect("get after");
    assert_eq!(got.kvs.len(), 1);
    let during = client.range(req::prefix("/during/")).await.expect("range");
    assert_eq!(during.count, 20);
    assert!(p.is_running(), "the member exited");
    let log = p.log();
    assert!(!log.contains("panicked"), "a panic in the log:\n{log}");
}
