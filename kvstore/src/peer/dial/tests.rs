use super::*;

#[test]
fn a_peer_url_names_host_and_port() {
    let a = |u: &str| address(&u.parse::<Uri>().expect("uri")).expect("address");
    assert_eq!(a("http://127.0.0.1:2380"), "127.0.0.1:2380");
    assert_eq!(a("https://[::1]:2380"), "[::1]:2380");
    assert_eq!(a("http://m1.example"), "m1.example:80");
    assert_eq!(a("https://m1.example"), "m1.example:443");
}

#[tokio::test]
async fn a_dial_connects_and_a_closed_port_is_refused_at_once() {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = l.local_addr().expect("addr").port();
    let uri: Uri = format!("http://127.0.0.1:{port}").parse().expect("uri");
    let s = dial(&uri).await.expect("connects");
    assert_eq!(s.peer_addr().expect("peer").port(), port);
    drop(l);
    let started = Instant::now();
    let e = dial(&uri).await.expect_err("nothing listens");
    assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused, "{e}");
    assert!(
        started.elapsed() < REDIAL,
        "refusal took {:?}",
        started.elapsed()
    );
}

/// Runs `cmd` (in the calling thread's network namespace: a child forks from it).
fn run(cmd: &[&str], stdin: &str) {
    use std::io::Write;
    let mut child = std::process::Command::new(cmd[0])
        .args(&cmd[1..])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (needs iproute2 and nftables)"));
    if let Some(mut i) = child.stdin.take() {
        i.write_all(stdin.as_bytes()).expect("stdin");
    }
    let status = child.wait().expect("wait");
    assert!(status.success(), "{cmd:?}: {status}");
}

/// On a connection whose packets are dropped (nftables, in a network namespace of this
/// test's own thread), a write fails once data has waited [`STALL`] for an acknowledgement,
/// where TCP would keep it queued behind its backed-off retransmissions.
#[test]
#[allow(unsafe_code)] // unshare(2): std has no call for it
fn a_write_to_a_stalled_connection_fails() {
    std::thread::spawn(|| {
        // SAFETY: unshare affects only this thread, which owns its new namespace until it ends.
        let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(
            rc,
            0,
            "unshare(CLONE_NEWNET): {} (run as root)",
            io::Error::last_os_error()
        );
        run(&["ip", "link", "set", "lo", "up"], "");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            use tokio::io::AsyncWriteExt;
            let l = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let port = l.local_addr().expect("addr").port();
            let uri: Uri = format!("http://127.0.0.1:{port}").parse().expect("uri");
            let mut c = Watched::new(dial(&uri).await.expect("connects"));
            let (_server, _) = l.accept().await.expect("accept");
            c.write_all(b"before")
                .await
                .expect("a healthy connection takes writes");
            run(
                &["nft", "-f", "-"],
                &format!(
                    "table inet stall {{ chain input {{ type filter hook input priority 0; \
                     tcp dport {port} drop; }}; }}\n"
                ),
            );
            c.write_all(b"lost").await.expect("queued, not yet stalled");
            let started = Instant::now();
            let e = loop {
                tokio::time::sleep(Duration::from_millis(60)).await;
                match c.write_all(b"more").await {
                    Err(e) => break e,
                    Ok(()) => assert!(
                        started.elapsed() < STALL * 4,
                        "still writing after {:?}",
                        started.elapsed()
                    ),
                }
            };
            assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
            assert!(e.to_string().contains("stalled"), "{e}");
            assert!(
                started.elapsed() >= STALL - CHECK_EVERY,
                "failed after {:?}",
                started.elapsed()
            );
        });
    })
    .join()
    .expect("test thread");
}
