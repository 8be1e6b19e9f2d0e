//! Named network namespaces (`/run/netns/<name>`): create, delete (retrying while a process is
//! still leaving), run a closure on a thread inside one, probe another address from one, and
//! GET a local HTTP endpoint inside one.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::path::Path;
use std::time::Duration;

use anyhow::Result;

use crate::cmd::{output, run};
use crate::probe;

/// Creates namespace `name` and brings its loopback up.
pub fn add(name: &str) -> Result<()> {
    run(&["ip", "netns", "add", name])?;
    run(&["ip", "-n", name, "link", "set", "lo", "up"])?;
    Ok(())
}

/// True when namespace `name` exists.
pub fn exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

/// Deletes namespace `name`; deletion can race with a process still leaving it, so it retries
/// for a second. Returns false if it is still there.
pub fn del(name: &str) -> bool {
    for _ in 0..20 {
        let ok = output(&["ip", "netns", "del", name]).is_ok_and(|o| o.status.success());
        if ok || !exists(name) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Runs `f` on a new thread that has joined namespace `ns` ([`hostnet::netns`]); the calling
/// thread never changes namespace. Sockets `f` opens belong to `ns`.
pub fn spawn_in<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<std::thread::JoinHandle<hostnet::Result<T>>> {
    Ok(hostnet::netns::Netns::named(ns)?.spawn(f)?)
}

/// Runs `f` inside namespace `ns` (on its own thread) and waits for it.
pub fn within<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    Ok(hostnet::netns::Netns::named(ns)?.run(f)?)
}

/// One ICMP echo from namespace `ns` to `to`, waiting up to `wait_s` seconds: the round trip
/// in ms when answered ([`crate::probe`]; no `ping` binary involved).
pub fn ping(ns: &str, to: Ipv4Addr, wait_s: u32) -> Option<f64> {
    let wait = Duration::from_secs(u64::from(wait_s));
    let rtt = within(ns, move || probe::echo(to, wait)).ok()?.ok()??;
    Some(rtt.as_secs_f64() * 1000.0)
}

/// Like [`ping`], from the network namespace at `path` (such as `/proc/<pid>/ns/net`, how a
/// runtime that pins no named namespace exposes a pod's).
pub fn ping_in(path: &str, to: Ipv4Addr, wait_s: u32) -> Option<f64> {
    let wait = Duration::from_secs(u64::from(wait_s));
    let ns = hostnet::netns::Netns::open(path).ok()??;
    let rtt = ns.run(move || probe::echo(to, wait)).ok()?.ok()??;
    Some(rtt.as_secs_f64() * 1000.0)
}

/// HTTP/1.1 GET of `http://127.0.0.1:<port><path>` from inside namespace `ns` (a health or
/// metrics endpoint): (status, body); `None` when nothing answers within 5 s.
pub fn http_get(ns: &str, port: u16, path: &str) -> Option<(u16, String)> {
    let path = path.to_string();
    within(ns, move || -> Option<(u16, String)> {
        let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut buf = String::new();
        s.read_to_string(&mut buf).ok()?;
        let code = buf.split_whitespace().nth(1)?.parse().ok()?;
        let body = buf.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
        Some((code, body))
    })
    .ok()
    .flatten()
}
