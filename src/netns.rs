//! Named network namespaces (`/run/netns/<name>`): create, delete (retrying while a process is
//! still leaving), run a closure on a thread inside one, and ping from one.

use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};

use crate::cmd::{output, run};

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

/// Runs `f` on a new thread that has joined namespace `ns`; the calling thread never changes
/// namespace. Sockets `f` opens belong to `ns`.
pub fn spawn_in<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<std::thread::JoinHandle<Result<T>>> {
    let path = Path::new("/run/netns").join(ns);
    let file = std::fs::File::open(&path).with_context(|| format!("open {}", path.display()))?;
    Ok(std::thread::spawn(move || {
        nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
            .context("setns into the network namespace")?;
        Ok(f())
    }))
}

/// Runs `f` inside namespace `ns` (on its own thread) and waits for it.
pub fn within<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    spawn_in(ns, f)?
        .join()
        .map_err(|_| anyhow!("the thread inside {ns} panicked"))?
}

/// One ping (`-W` 1 s, or `wait_s`) from namespace `ns` to `to`; the RTT in ms when answered.
pub fn ping(ns: &str, to: Ipv4Addr, wait_s: u32) -> Option<f64> {
    let to = to.to_string();
    let wait = wait_s.to_string();
    let out = output(&[
        "ip", "netns", "exec", ns, "ping", "-c", "1", "-W", &wait, &to,
    ])
    .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.split("time=")
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}
