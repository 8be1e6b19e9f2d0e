//! End-to-end with the embedded KV store: netd on h1 runs a kvstore member in-process (no
//! external store at all); h2 and h3 use it as a plain etcd v3 endpoint. Subnets, routes and
//! real packets across VXLAN, the records visible to the stock etcdctl, and h1's store
//! surviving a netd restart.

use crate::common;

use std::net::Ipv4Addr;
use std::time::Duration;

use common::{DEFAULT_CONFIG, World};

#[test]
fn embedded_member_serves_the_cluster() {
    let mut w = World::new(3);
    let h1 = World::host_ip(1);
    let client_url = format!("http://{h1}:2379");
    let kv_dir = w.dir.path().join("kv-h1");
    let kv_dir = kv_dir.to_string_lossy().into_owned();
    let embedded_flags = [
        "--kv-name",
        "h1",
        "--kv-listen-client-urls",
        &client_url,
        "--kv-listen-peer-urls",
        "http://127.0.0.1:2380",
        "--kv-data-dir",
        &kv_dir,
    ];
    w.endpoints = String::new();
    w.start_netd(1, &embedded_flags);
    // From here on, everyone (etcdctl included) talks to h1's member.
    w.endpoints = client_url.clone();
    common::wait_until(
        "the embedded member to answer",
        Duration::from_secs(20),
        || {
            std::process::Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &w.underlay(),
                    "etcdctl",
                    "--endpoints",
                    &client_url,
                ])
                .args(["endpoint", "health"])
                .env("ETCDCTL_API", "3")
                .output()
                .is_ok_and(|o| o.status.success())
        },
    );
    // No config yet: netd on h1 waits and retries; writing it lets it proceed.
    w.etcdctl(&["put", "/coreos.com/network/config", DEFAULT_CONFIG]);
    w.start_netd(2, &[]);
    w.start_netd(3, &[]);
    let subnets: Vec<_> = (1..=3).map(|i| w.wait_ready(i)).collect();
    let distinct: std::collections::BTreeSet<_> = subnets.iter().collect();
    assert_eq!(distinct.len(), 3, "distinct subnets: {subnets:?}");
    assert_eq!(
        w.records().len(),
        3,
        "records through etcdctl: {:?}",
        w.records()
    );
    w.wait_converged(&[1, 2, 3]);

    let c: Vec<(String, Ipv4Addr)> = (1..=3).map(|i| w.add_container(i)).collect();
    for (from, _) in &c {
        for (_, to) in &c {
            common::wait_until(
                &format!("ping {from} -> {to}"),
                Duration::from_secs(10),
                || World::ping(from, *to),
            );
        }
    }

    // netd on h1 restarts: its member comes back from disk with every record, and h1 keeps
    // its subnet.
    assert!(w.stop_netd(1).success(), "netd exits cleanly on SIGTERM");
    w.endpoints = String::new();
    w.start_netd(1, &embedded_flags);
    w.endpoints = client_url.clone();
    assert_eq!(w.wait_ready(1), subnets[0], "same subnet after restart");
    assert_eq!(w.records().len(), 3);
    w.wait_converged(&[1, 2, 3]);
    common::wait_until(
        "ping c2 -> c1 after restart",
        Duration::from_secs(10),
        || World::ping(&c[1].0, c[0].1),
    );
}

/// With no `--etcd-endpoints`, netd runs an embedded member on etcd's default ports. When an
/// etcd already listens there, netd does not retry for ever: after the grace a netd that is
/// exiting would need, it stops with one line that names `--etcd-endpoints` for that etcd.
#[test]
fn embedded_member_on_a_taken_port_fails_naming_the_store_there() {
    let mut w = World::new(1);
    let ns = w.host(1);
    let data = w.dir.path().join("etcd-h1");
    let member = testbed::etcd::Member::new(
        "e1",
        &data,
        "http://127.0.0.1:2379",
        "http://127.0.0.1:2380",
    );
    let mut etcd = member
        .command(std::path::Path::new(testbed::etcd::ETCD), Some(&ns))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start etcd in h1");
    common::wait_until("etcd to listen in h1", Duration::from_secs(20), || {
        common::try_run(&[
            "ip",
            "netns",
            "exec",
            &ns,
            "etcdctl",
            "--endpoints",
            "http://127.0.0.1:2379",
            "endpoint",
            "health",
        ])
        .status
        .success()
    });
    let kv_dir = w.dir.path().join("kv-h1");
    w.endpoints = String::new();
    w.start_netd(1, &["--kv-data-dir", &kv_dir.to_string_lossy()]);
    common::wait_until("netd to give up", Duration::from_secs(30), || {
        !w.netd_running(1)
    });
    let status = w.stop_netd(1);
    assert!(!status.success(), "a non-zero exit: {status}");
    let log = w.netd_log(1);
    assert!(
        log.contains("KV store: an embedded member"),
        "says which store: {log}"
    );
    assert!(
        log.contains("is in use by another process")
            && log.contains("--etcd-endpoints http://127.0.0.1:2379"),
        "{log}"
    );
    // netd touched nothing of the etcd there: it still answers.
    assert!(matches!(etcd.try_wait(), Ok(None)), "etcd still runs");
    let _ = etcd.kill();
    let _ = etcd.wait();
}
