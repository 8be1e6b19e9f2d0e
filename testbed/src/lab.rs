//! The namespaces of one world, under one naming scheme, removed on drop.
//!
//! Every namespace a test, benchmark or the demo creates is named `<prefix>-<tag>`, where the
//! prefix is `tb<pid>x<n>`: the creating process's id and a per-process counter. Because the id
//! is in the name, [`sweep`] can tell a crashed run's leftovers (their process is gone) from a
//! running test's, and removes them, processes inside included; every [`Lab`] sweeps once per
//! process before it creates anything. A world the demo keeps on purpose is named
//! `tk<pid>x<n>` instead, which the sweep leaves alone; [`remove`] deletes one by prefix.
//!
//! The standard underlay: namespace `<prefix>-ul` holds bridge `br0` with
//! [`UNDERLAY_GW`]/24; host `i` is namespace `<prefix>-h<i>` whose `eth0` has
//! [`host_ip`]`(i)`/24 and whose veth peer `p<i>` sits on `br0`. Nothing is ever added to the
//! machine's root namespace.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::sync::Once;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Result, ensure};

use crate::cmd::{output, run};
use crate::netns;

/// The underlay bridge's own address (where a reference etcd in the underlay listens).
pub const UNDERLAY_GW: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 254);

/// The underlay bridge's IPv6 address (the underlay is dual-stack: `2001:db8::/64` beside
/// `192.0.2.0/24`).
pub const UNDERLAY_GW6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0xfe);

/// IPv6 underlay address of host `i`: `2001:db8::<i>`.
pub fn host_ip6(i: usize) -> Ipv6Addr {
    Ipv6Addr::new(
        0x2001,
        0xdb8,
        0,
        0,
        0,
        0,
        0,
        u16::try_from(i).unwrap_or(u16::MAX),
    )
}

/// Underlay address of host `i` (1..=250).
pub fn host_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(192, 0, 2, u8::try_from(i).unwrap_or(u8::MAX))
}

/// Tag of a prefix that [`sweep`] may remove once its process is gone.
const SWEPT: &str = "tb";
/// Tag of a prefix kept on purpose (the demo's `--keep`): never swept.
const KEPT: &str = "tk";

fn next_prefix(tag: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    loop {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let p = format!("{tag}{}x{n}", std::process::id());
        // A leftover of a run whose pid this process reuses is skipped, never adopted.
        if !names().iter().any(|ns| ns.starts_with(&format!("{p}-"))) {
            return p;
        }
    }
}

/// Every named network namespace on the machine.
fn names() -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The process id a swept-scheme namespace name carries.
fn owner(ns: &str) -> Option<u32> {
    let rest = ns.strip_prefix(SWEPT)?;
    let (pid, tail) = rest.split_once('x')?;
    tail.split_once('-')?;
    pid.parse().ok()
}

/// Removes the namespaces of crashed runs (their creating process is gone), killing what runs
/// inside them; returns how many were removed. Running tests' and kept worlds' are untouched.
pub fn sweep() -> usize {
    let mut removed = 0;
    for ns in names() {
        let Some(pid) = owner(&ns) else { continue };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        kill_inside(&ns);
        if netns::del(&ns) {
            removed += 1;
        }
    }
    removed
}

/// Removes every namespace named `<prefix>-…` (a world kept by the demo), killing what runs
/// inside; returns their names.
pub fn remove(prefix: &str) -> Result<Vec<String>> {
    ensure!(
        prefix.len() >= 3 && prefix.chars().all(|c| c.is_ascii_alphanumeric()),
        "a prefix is letters and digits, such as tk1234x0"
    );
    let mut gone = Vec::new();
    for ns in names()
        .into_iter()
        .filter(|n| n.starts_with(&format!("{prefix}-")))
    {
        kill_inside(&ns);
        if netns::del(&ns) {
            gone.push(ns);
        }
    }
    Ok(gone)
}

/// SIGKILLs every process whose network namespace is `ns`.
fn kill_inside(ns: &str) {
    let Ok(out) = output(&["ip", "netns", "pids", ns]) else {
        return;
    };
    for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        if let Ok(pid) = pid.parse::<i32>() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// The namespaces of one world; see the module docs. Dropping it kills whatever still runs in
/// them and deletes them, newest first (a world stops its own processes gracefully before).
#[derive(Debug)]
pub struct Lab {
    prefix: String,
    namespaces: Vec<String>,
    kept: bool,
}

impl Lab {
    /// A new world's namespaces (none yet), after sweeping crashed runs' leftovers.
    pub fn new() -> Lab {
        static SWEEP: Once = Once::new();
        SWEEP.call_once(|| {
            let n = sweep();
            if n > 0 {
                eprintln!("testbed: removed {n} namespaces left by crashed runs");
            }
        });
        Lab {
            prefix: next_prefix(SWEPT),
            namespaces: Vec::new(),
            kept: false,
        }
    }

    /// Like [`Lab::new`], for a world that outlives this process (the demo's `--keep`): its
    /// prefix is never swept, and [`Lab::keep`] leaves it standing.
    pub fn new_kept() -> Lab {
        let mut lab = Lab::new();
        lab.prefix = next_prefix(KEPT);
        lab
    }

    /// The prefix every name of this world starts with.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The namespace name for `tag`.
    pub fn name(&self, tag: &str) -> String {
        format!("{}-{tag}", self.prefix)
    }

    /// Creates namespace `<prefix>-<tag>` with its loopback up, owned by this lab.
    pub fn add_ns(&mut self, tag: &str) -> Result<String> {
        let ns = self.name(tag);
        netns::add(&ns)?;
        self.namespaces.push(ns.clone());
        Ok(ns)
    }

    /// Deletes one of this lab's namespaces now; false if it is still there.
    pub fn del_ns(&mut self, ns: &str) -> bool {
        kill_inside(ns);
        let gone = netns::del(ns);
        if gone {
            self.namespaces.retain(|n| n != ns);
        }
        gone
    }

    /// Namespace of the underlay.
    pub fn underlay(&self) -> String {
        self.name("ul")
    }

    /// Namespace of host `i`.
    pub fn host(&self, i: usize) -> String {
        self.name(&format!("h{i}"))
    }

    /// Creates the underlay: namespace `ul` with bridge `br0` = [`UNDERLAY_GW`]/24 and
    /// [`UNDERLAY_GW6`]/64, up.
    pub fn add_underlay(&mut self) -> Result<String> {
        let ul = self.add_ns("ul")?;
        run(&["ip", "-n", &ul, "link", "add", "br0", "type", "bridge"])?;
        let addr = format!("{UNDERLAY_GW}/24");
        run(&["ip", "-n", &ul, "addr", "add", &addr, "dev", "br0"])?;
        let addr6 = format!("{UNDERLAY_GW6}/64");
        run(&[
            "ip", "-n", &ul, "addr", "add", &addr6, "dev", "br0", "nodad",
        ])?;
        run(&["ip", "-n", &ul, "link", "set", "br0", "up"])?;
        Ok(ul)
    }

    /// Creates host `i`'s namespace on the underlay (which must exist): `eth0` =
    /// [`host_ip`]`(i)`/24 and [`host_ip6`]`(i)`/64 (no duplicate address detection, so it is
    /// usable at once), its veth peer `p<i>` on `br0`.
    pub fn add_host(&mut self, i: usize) -> Result<String> {
        ensure!(
            (1..=250).contains(&i),
            "host index {i} out of range (1-250)"
        );
        let ns = self.add_ns(&format!("h{i}"))?;
        let ul = self.underlay();
        let port = format!("p{i}");
        run(&[
            "ip", "-n", &ul, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
            &ns,
        ])?;
        run(&["ip", "-n", &ul, "link", "set", &port, "master", "br0", "up"])?;
        let addr = format!("{}/24", host_ip(i));
        run(&["ip", "-n", &ns, "addr", "add", &addr, "dev", "eth0"])?;
        let addr6 = format!("{}/64", host_ip6(i));
        run(&[
            "ip", "-n", &ns, "addr", "add", &addr6, "dev", "eth0", "nodad",
        ])?;
        run(&["ip", "-n", &ns, "link", "set", "eth0", "up"])?;
        Ok(ns)
    }

    /// Leaves every namespace standing when this lab is dropped (a kept world).
    pub fn keep(&mut self) {
        self.kept = true;
    }
}

impl Default for Lab {
    fn default() -> Lab {
        Lab::new()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        for ns in self.namespaces.iter().rev() {
            kill_inside(ns);
            if !netns::del(ns) {
                eprintln!("teardown: could not delete netns {ns}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_reads_the_pid_of_swept_names_only() {
        assert_eq!(owner("tb1234x0-h1"), Some(1234));
        assert_eq!(owner("tb1234x17-ul"), Some(1234));
        assert_eq!(owner("tk1234x0-h1"), None);
        assert_eq!(owner("tb1234x0"), None);
        assert_eq!(owner("tbzzx0-h1"), None);
        assert_eq!(owner("other"), None);
    }
}
