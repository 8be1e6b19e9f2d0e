//! Proves the one-command demo (`examples/demo.rs`): runs it through `cargo run --example demo`
//! with 2 hosts and 1 container per host, asserts exit code 0 and a full connectivity matrix,
//! then asserts that nothing is left behind: no namespace with the demo's prefix, no process
//! mentioning it, no temp dir. It runs in the tests' own profile, whose build it reuses; CI runs
//! the README's exact command (`--release`, default size) in a fresh root. Needs root, `ip` and
//! `nft`; fails (never skips) without them.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Generous: the first run may also build netd and netd-cni.
const DEADLINE: Duration = Duration::from_secs(600);

fn require_prereqs() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the demo test needs root (it creates network namespaces); run the tests as root"
    );
    for tool in ["ip", "nft"] {
        let ok = Command::new(tool)
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        assert!(
            ok,
            "the demo test needs `{tool}` installed (scripts/install-deps.sh test: iproute2, nftables)"
        );
    }
}

#[test]
fn demo_connects_every_pair_and_leaves_nothing_behind() {
    require_prereqs();
    // A clean cargo environment: the test's own CARGO_* variables would rebuild the TLS stack.
    let mut child = testbed::binaries::cargo_command()
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["run", "-p", "netd-project", "--example", "demo", "--"])
        .args(["--hosts", "2", "--containers-per-host", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot run cargo");
    // Read both pipes on threads so a chatty build cannot block the child.
    let mut out_pipe = child.stdout.take().expect("stdout pipe");
    let mut err_pipe = child.stderr.take().expect("stderr pipe");
    let out_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut out_pipe, &mut s);
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut err_pipe, &mut s);
        s
    });
    let t0 = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait for the demo") {
            break st;
        }
        if t0.elapsed() > DEADLINE {
            // SIGTERM lets the demo tear its world down.
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            std::thread::sleep(Duration::from_secs(10));
            let _ = child.kill();
            panic!("the demo did not finish within {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = out_t.join().unwrap_or_default();
    let err = err_t.join().unwrap_or_default();
    let all = format!("--- stdout\n{out}\n--- stderr\n{err}");
    assert!(status.success(), "demo exited with {status}\n{all}");

    let prefix = out
        .lines()
        .find_map(|l| l.strip_prefix("demo prefix: "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("the demo printed no prefix\n{all}"))
        .to_string();
    assert!(prefix.len() >= 3, "odd prefix {prefix:?}");

    // A full matrix: 2 containers, 2 ordered pairs, each with an RTT.
    assert!(
        out.contains("2 of 2 pairs connected, 0 failed"),
        "no full matrix\n{all}"
    );
    assert!(!out.contains("FAIL"), "a failed pair\n{all}");
    for row in ["h1c1", "h2c1"] {
        let line = out
            .lines()
            // The header row starts with h1c1 too; the matrix row comes last.
            .rfind(|l| l.split_whitespace().next() == Some(row))
            .unwrap_or_else(|| panic!("no matrix row {row}\n{all}"));
        let rtts = line
            .split_whitespace()
            .skip(1)
            .filter(|v| v.parse::<f64>().is_ok())
            .count();
        assert_eq!(rtts, 1, "row {row} should have one RTT: {line:?}\n{all}");
    }
    // The hosts and subnets as read through the KV.
    let leases = out
        .lines()
        .filter(|l| l.contains("192.0.2.") && l.contains("vxlan"))
        .count();
    assert_eq!(leases, 2, "two leases in the KV listing\n{all}");

    // Nothing left behind.
    let netns = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    let netns = String::from_utf8_lossy(&netns.stdout);
    let left: Vec<&str> = netns
        .lines()
        .filter(|l| l.starts_with(&format!("{prefix}-")))
        .collect();
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
    let procs = processes_mentioning(&prefix);
    assert!(procs.is_empty(), "processes left behind: {procs:?}");
    let dir = std::env::temp_dir().join(&prefix);
    assert!(!dir.exists(), "temp dir left behind: {}", dir.display());
}

/// Command lines of live processes that contain `needle` (zombies have none).
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.chars().all(|c| c.is_ascii_digit()))
        else {
            continue;
        };
        if let Ok(raw) = std::fs::read(Path::new("/proc").join(pid).join("cmdline")) {
            let cmd = String::from_utf8_lossy(&raw).replace('\0', " ");
            if cmd.contains(needle) {
                found.push(format!("{pid}: {cmd}"));
            }
        }
    }
    found
}
