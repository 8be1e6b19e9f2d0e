//! End-to-end with TLS, in network namespaces, certificates made by `netd certs`:
//! - etcd 3.4 with client-cert-auth in the underlay; netd on every host with flannel's
//!   `--etcd-cafile --etcd-certfile --etcd-keyfile`; containers ping across hosts. A netd
//!   without a client certificate gets nothing from the store and writes no subnet file.
//! - netd's embedded member serving https with `--kv-cert-file … --kv-client-cert-auth` (and
//!   an https peer URL with `--kv-peer-*`); the other hosts and etcdctl reach it with client
//!   certificates, and only with them.

use crate::common;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{DEFAULT_CONFIG, UNDERLAY_GW, World};

/// `netd certs` into `<world>/pki`: member `etcd` (the underlay's etcd), members h1..h3 at
/// their underlay addresses, client `netd`.
fn make_certs(w: &World) -> PathBuf {
    let dir = w.dir.path().join("pki");
    let d = dir.to_string_lossy().into_owned();
    let etcd = format!("etcd={UNDERLAY_GW}");
    let members: Vec<String> = (1..=3)
        .map(|i| format!("h{i}={}", World::host_ip(i)))
        .collect();
    let mut args = vec!["certs", "--dir", &d, "--member", &etcd, "--client", "netd"];
    for m in &members {
        args.extend_from_slice(&["--member", m]);
    }
    let out = common::netd_cli(&args);
    assert!(
        out.status.success(),
        "netd certs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir
}

fn client_flags(dir: &Path) -> Vec<String> {
    vec![
        "--etcd-cafile".into(),
        dir.join("ca.pem").display().to_string(),
        "--etcd-certfile".into(),
        dir.join("netd.pem").display().to_string(),
        "--etcd-keyfile".into(),
        dir.join("netd-key.pem").display().to_string(),
    ]
}

fn ping_all(containers: &[(String, Ipv4Addr)]) {
    for (from, _) in containers {
        for (_, to) in containers {
            common::wait_until(
                &format!("ping {from} -> {to}"),
                Duration::from_secs(10),
                || World::ping(from, *to),
            );
        }
    }
}

#[test]
fn netd_with_client_certificates_against_tls_etcd() {
    let mut w = World::new(3);
    let pki = make_certs(&w);
    w.tls_dir = Some(pki.clone());
    w.start_etcd(DEFAULT_CONFIG);
    assert!(w.endpoints.starts_with("https://"), "{}", w.endpoints);

    let flags = client_flags(&pki);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    w.start_netd(1, &flags);
    w.start_netd(2, &flags);
    let s1 = w.wait_ready(1);
    let s2 = w.wait_ready(2);
    assert_ne!(s1, s2);
    w.wait_converged(&[1, 2]);
    let c = vec![w.add_container(1), w.add_container(2)];
    ping_all(&c);

    // h3 trusts the CA but has no client certificate: etcd refuses it, so it leases nothing.
    let ca_only = ["--etcd-cafile", flags[1]];
    w.start_netd(3, &ca_only);
    std::thread::sleep(Duration::from_secs(5));
    assert!(w.netd_running(3), "netd keeps retrying: {}", w.netd_log(3));
    assert!(
        w.subnet_of(3).is_none(),
        "h3 got a subnet without a client certificate"
    );
    assert_eq!(w.records().len(), 2, "records: {:?}", w.records());
    w.kill_netd(3);

    // Plaintext to the TLS store, or TLS files with an http:// endpoint: a usage error at once.
    let http = format!("http://{UNDERLAY_GW}:2379");
    let mut args = vec!["leases", "--etcd-endpoints", &http];
    args.extend_from_slice(&flags);
    let out = common::netd_cli(&args);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("use https://"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn embedded_member_serves_tls_with_client_cert_auth() {
    let mut w = World::new(2);
    let pki = make_certs(&w);
    let h1 = World::host_ip(1);
    let client_url = format!("https://{h1}:2379");
    let kv_dir = w.dir.path().join("kv-h1").display().to_string();
    let p = |f: &str| pki.join(f).display().to_string();
    let embedded = [
        "--kv-name".to_string(),
        "h1".into(),
        "--kv-listen-client-urls".into(),
        client_url.clone(),
        // Peer mTLS too: the member's peer listener serves TLS with the same certificate.
        "--kv-listen-peer-urls".into(),
        "https://127.0.0.1:2380".into(),
        "--kv-data-dir".into(),
        kv_dir,
        "--kv-cert-file".into(),
        p("h1.pem"),
        "--kv-key-file".into(),
        p("h1-key.pem"),
        "--kv-trusted-ca-file".into(),
        p("ca.pem"),
        "--kv-client-cert-auth".into(),
        "--kv-peer-cert-file".into(),
        p("h1.pem"),
        "--kv-peer-key-file".into(),
        p("h1-key.pem"),
        "--kv-peer-trusted-ca-file".into(),
        p("ca.pem"),
        "--kv-peer-client-cert-auth".into(),
    ];
    let embedded: Vec<&str> = embedded.iter().map(String::as_str).collect();
    w.endpoints = String::new();
    w.start_netd(1, &embedded);
    // etcdctl in the underlay reaches h1's member with the client certificate.
    w.endpoints = client_url.clone();
    w.tls_dir = Some(pki.clone());
    common::wait_until(
        "the embedded member to answer over TLS",
        Duration::from_secs(20),
        || w.etcdctl_try(&["endpoint", "health"]).status.success(),
    );
    w.etcdctl(&["put", "/coreos.com/network/config", DEFAULT_CONFIG]);

    // Without a client certificate the member refuses etcdctl.
    let ul = w.underlay();
    let cacert = format!("--cacert={}", p("ca.pem"));
    let out = Command::new("ip")
        .args(["netns", "exec", &ul, "etcdctl", "--endpoints", &client_url])
        .args([cacert.as_str(), "--dial-timeout=2s", "--command-timeout=3s"])
        .args(["put", "/intruder", "x"])
        .env("ETCDCTL_API", "3")
        .output()
        .expect("etcdctl");
    assert!(
        !out.status.success(),
        "member served a client without a certificate"
    );
    assert_eq!(w.etcdctl(&["get", "/intruder", "--print-value-only"]), "");

    // h2 uses h1's member as its etcd, over TLS with flannel's flags.
    let flags = client_flags(&pki);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    w.start_netd(2, &flags);
    let s1 = w.wait_ready(1);
    let s2 = w.wait_ready(2);
    assert_ne!(s1, s2);
    assert_eq!(w.records().len(), 2);
    w.wait_converged(&[1, 2]);
    let c = vec![w.add_container(1), w.add_container(2)];
    ping_all(&c);
}
