//! Mutual TLS between members (`--peer-cert-file --peer-key-file --peer-trusted-ca-file
//! --peer-client-cert-auth`, https:// peer URLs) together with TLS for clients, on a
//! 3-member loopback cluster, against kvstore and etcd 3.4 alike: the cluster forms and
//! etcdctl's URL-endpoint commands work over TLS (`member list`, `endpoint status
//! --cluster`, `endpoint health --cluster`); it fails over when the leader is SIGKILLed; a
//! member whose peer certificate comes from another CA is kept out; plaintext peer
//! traffic to a TLS peer port is refused.

use crate::common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::cluster::{Cluster, Setup};
use common::{Kind, Proc};
use kvstore::certs::{Ca, Role};

/// Our CA (members m1..m4 and a client), and a foreign CA that issued its own "m3".
struct Pki {
    ours: tempfile::TempDir,
    foreign: tempfile::TempDir,
}

impl Pki {
    fn new() -> Arc<Pki> {
        let pki = Pki {
            ours: tempfile::tempdir().expect("tempdir"),
            foreign: tempfile::tempdir().expect("tempdir"),
        };
        let ca = Ca::generate("kvstore peer test CA").expect("CA");
        ca.write(pki.ours.path()).expect("write CA");
        for m in ["m1", "m2", "m3", "m4"] {
            ca.issue(Role::Member, m, &[], 2)
                .expect("member cert")
                .write(pki.ours.path(), m)
                .expect("write member cert");
        }
        ca.issue(Role::Client, "client", &[], 2)
            .expect("client cert")
            .write(pki.ours.path(), "client")
            .expect("write client cert");
        let other = Ca::generate("kvstore peer test CA").expect("foreign CA");
        other.write(pki.foreign.path()).expect("write foreign CA");
        for m in ["m3", "m4"] {
            other
                .issue(Role::Member, m, &[], 2)
                .expect("foreign member cert")
                .write(pki.foreign.path(), m)
                .expect("write foreign member cert");
        }
        Arc::new(pki)
    }

    fn path(dir: &Path, file: &str) -> String {
        dir.join(file).display().to_string()
    }

    fn ctl(&self) -> Vec<String> {
        let o = self.ours.path();
        vec![
            format!("--cacert={}", Pki::path(o, "ca.pem")),
            format!("--cert={}", Pki::path(o, "client.pem")),
            format!("--key={}", Pki::path(o, "client-key.pem")),
        ]
    }

    /// Member `name` with https client and peer URLs, its peer files from `dir`. The
    /// client side always uses our CA's files, so only the peer side differs.
    fn member(&self, p: &mut Proc, dir: &Path, name: &str) {
        let f = |s: &str| Pki::path(dir, s);
        p.scheme = "https";
        p.peer_scheme = "https";
        p.ctl_args = self.ctl();
        let o = self.ours.path();
        p.extra.extend([
            "--cert-file".into(),
            Pki::path(o, &format!("{name}.pem")),
            "--key-file".into(),
            Pki::path(o, &format!("{name}-key.pem")),
            "--trusted-ca-file".into(),
            Pki::path(o, "ca.pem"),
            "--client-cert-auth".into(),
            "--peer-cert-file".into(),
            f(&format!("{name}.pem")),
            "--peer-key-file".into(),
            f(&format!("{name}-key.pem")),
            "--peer-trusted-ca-file".into(),
            f("ca.pem"),
            "--peer-client-cert-auth".into(),
        ]);
    }

    /// Every member from our CA, except those named in `foreign`.
    fn setup(self: &Arc<Self>, foreign: &'static [usize]) -> Setup {
        let pki = self.clone();
        Arc::new(move |i, p| {
            let dir: PathBuf = if foreign.contains(&i) {
                pki.foreign.path().to_path_buf()
            } else {
                pki.ours.path().to_path_buf()
            };
            pki.member(p, &dir, &format!("m{}", i + 1));
        })
    }
}

fn json(out: &str) -> serde_json::Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("bad JSON ({e}): {out}"))
}

fn forms_over_tls(kind: Kind) {
    let pki = Pki::new();
    let mut c = Cluster::start_with(kind, 3, &[], pki.setup(&[]));
    // `member list`: three started members, https peer and client URLs.
    let list = json(&c.ok(&["member", "list", "-w", "json"]));
    let members = list["members"].as_array().expect("members");
    assert_eq!(members.len(), 3, "{kind:?}: {list}");
    for m in members {
        let peer = m["peerURLs"][0].as_str().unwrap_or("");
        let client = m["clientURLs"][0].as_str().unwrap_or("");
        assert!(peer.starts_with("https://"), "{kind:?}: {m}");
        assert!(client.starts_with("https://"), "{kind:?}: {m}");
    }
    // `endpoint status --cluster`: URL endpoints over TLS, exactly one leader.
    let status = json(&c.ok(&["endpoint", "status", "--cluster", "-w", "json"]));
    let all = status.as_array().expect("array");
    assert_eq!(all.len(), 3, "{kind:?}: {status}");
    let leaders = all
        .iter()
        .filter(|s| s["Status"]["leader"] == s["Status"]["header"]["member_id"])
        .count();
    assert_eq!(leaders, 1, "{kind:?}: {status}");
    let health = c.etcdctl(&["endpoint", "health", "--cluster"]);
    assert!(health.status.success(), "{kind:?}: {health:?}");
    assert_eq!(
        String::from_utf8_lossy(&health.stderr)
            .matches("is healthy")
            .count(),
        3,
        "{kind:?}: {health:?}"
    );
    // Writes replicate over the TLS peer links.
    c.members[0].ok(&["put", "/peer-tls/k", "v"]);
    c.wait_converged(Duration::from_secs(10));
    for i in 0..3 {
        assert_eq!(
            c.members[i].ok(&[
                "get",
                "/peer-tls/k",
                "--print-value-only",
                "--consistency=s"
            ]),
            "v\n",
            "{kind:?}: m{}",
            i + 1
        );
    }
}

fn fails_over_over_tls(kind: Kind) {
    let pki = Pki::new();
    let mut c = Cluster::start_with(kind, 3, &[], pki.setup(&[]));
    let old = c.wait_leader(Duration::from_secs(10));
    let old_id = c.id(old);
    c.ok(&["put", "/peer-tls/before", "1"]);
    c.members[old].kill();
    let killed = Instant::now();
    let new = c.wait_leader(Duration::from_secs(10));
    println!(
        "{kind:?}: new leader m{} after {:?} (peer mTLS)",
        new + 1,
        killed.elapsed()
    );
    assert_ne!(c.id(new), old_id, "{kind:?}");
    // Writes continue through the survivors.
    c.ok(&["put", "/peer-tls/after", "2"]);
    c.wait_converged(Duration::from_secs(10));
    for i in (0..3).filter(|&i| i != old) {
        let got = c.members[i].ok(&["get", "/peer-tls/", "--prefix", "--print-value-only"]);
        assert_eq!(got, "2\n1\n", "{kind:?}: m{}", i + 1);
    }
}

/// Member m3 presents a peer certificate from another CA (and trusts only that CA): m1 and
/// m2 form a quorum and serve; m3 never learns a leader, never receives the data, never
/// publishes its client URLs; logs show certificate refusals.
fn foreign_member_is_kept_out(kind: Kind) {
    let pki = Pki::new();
    let mut c = Cluster::launch(kind, 3, &[], pki.setup(&[2]));
    c.members[0].wait_ready();
    c.members[1].wait_ready();
    c.members[0].ok(&["put", "/peer-tls/quorum", "yes"]);
    // Several election timeouts: m3 keeps trying, and must keep failing.
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        if let Some(s) = c.status(2) {
            assert_eq!(s.leader, 0, "{kind:?}: m3 follows a leader: {s:?}");
            assert!(s.revision <= 1, "{kind:?}: m3 got data: {s:?}");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let list = c.members[0].ok(&["member", "list"]);
    let m3 = list
        .lines()
        .find(|l| l.contains(&c.members[2].peer_url()))
        .unwrap_or_else(|| panic!("{kind:?}: m3 missing from {list}"));
    let fields: Vec<&str> = m3.split(", ").collect();
    assert_eq!(fields.get(4), Some(&""), "{kind:?}: m3 published: {m3}");
    // The quorum still serves linearizable reads and writes.
    c.members[1].ok(&["put", "/peer-tls/still", "yes"]);
    assert_eq!(
        c.members[0].ok(&["get", "/peer-tls/still", "--print-value-only"]),
        "yes\n"
    );
    let outsider = c.members[2].log();
    assert!(
        outsider.contains("certificate"),
        "{kind:?}: m3's log shows no certificate refusal:\n{outsider}"
    );
    let insiders = c.members[0].log() + &c.members[1].log();
    assert!(
        insiders.contains("certificate"),
        "{kind:?}: m1/m2 logs show no certificate refusal:\n{insiders}"
    );
}

/// `member add` of m4, started with a peer certificate from another CA: it cannot fetch
/// the member list (kvstore) or never catches up (etcd); the cluster keeps serving.
fn foreign_member_cannot_join(kind: Kind) {
    let pki = Pki::new();
    let mut c = Cluster::start_with(kind, 3, &[], pki.setup(&[]));
    c.ok(&["put", "/peer-tls/k", "v"]);
    let foreign = pki.clone();
    let i = c.add_member_launched(&move |_, p: &mut Proc| {
        foreign.member(p, foreign.foreign.path(), "m4");
    });
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        if let Some(s) = c.status(i) {
            assert!(s.revision <= 1, "{kind:?}: m4 caught up: {s:?}");
            assert_eq!(s.leader, 0, "{kind:?}: m4 follows a leader: {s:?}");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    // Three of four voters still form a quorum.
    assert_eq!(
        c.members[0].ok(&["get", "/peer-tls/k", "--print-value-only"]),
        "v\n",
        "{kind:?}"
    );
    let log = c.members[i].log();
    assert!(
        log.contains("certificate"),
        "{kind:?}: m4's log shows no certificate refusal:\n{log}"
    );
}

/// A plaintext gRPC client gets nothing from a TLS peer port, nor a TLS client with a
/// certificate from another CA; the same call with a member certificate of our CA works
/// (so the refusals are about transport security, not the call).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_peer_traffic_is_refused() {
    use kvstore::proto::peerpb::MembersRequest;
    use kvstore::proto::peerpb::peer_client::PeerClient;
    use tonic::transport::Endpoint;

    let pki = Pki::new();
    let c =
        tokio::task::block_in_place(|| Cluster::start_with(Kind::Kvstore, 1, &[], pki.setup(&[])));
    let port = c.members[0].peer_port;
    let members = |ep: Endpoint| async move {
        let ch = ep
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(3))
            .connect_lazy();
        PeerClient::new(ch).members(MembersRequest {}).await
    };

    let plain = Endpoint::from_shared(format!("http://127.0.0.1:{port}")).expect("endpoint");
    let res = members(plain).await;
    assert!(res.is_err(), "plaintext peer call was served: {res:?}");

    let tls = |dir: &Path, ca: &Path| {
        kvstore::tls::client_config(
            &ca.join("ca.pem"),
            Some((&dir.join("m2.pem"), &dir.join("m2-key.pem"))),
        )
        .expect("client TLS")
    };
    let https = format!("https://127.0.0.1:{port}");
    // Foreign certificate, but trusting our CA (so only the server's check can refuse it).
    let foreign_dir = tempfile::tempdir().expect("tempdir");
    let other = Ca::generate("intruder CA").expect("CA");
    other
        .issue(Role::Member, "m2", &[], 1)
        .expect("cert")
        .write(foreign_dir.path(), "m2")
        .expect("write");
    let ep = Endpoint::from_shared(https.clone())
        .expect("endpoint")
        .tls_config(tls(foreign_dir.path(), pki.ours.path()))
        .expect("tls");
    let res = members(ep).await;
    assert!(res.is_err(), "foreign peer certificate was served: {res:?}");

    let ep = Endpoint::from_shared(https)
        .expect("endpoint")
        .tls_config(tls(pki.ours.path(), pki.ours.path()))
        .expect("tls");
    let res = members(ep)
        .await
        .expect("a member certificate of our CA is served");
    assert_eq!(res.into_inner().members.len(), 1);
    drop(c);
}

/// One `#[test]` per server kind for each suite function `fn(Kind)`.
macro_rules! against_both {
    ($($name:ident),* $(,)?) => {
        mod on_kvstore {
            $(#[test] fn $name() { super::$name(super::Kind::Kvstore); })*
        }
        mod on_etcd {
            $(#[test] fn $name() { super::$name(super::Kind::Etcd); })*
        }
    };
}

against_both!(
    forms_over_tls,
    fails_over_over_tls,
    foreign_member_is_kept_out,
    foreign_member_cannot_join,
);
