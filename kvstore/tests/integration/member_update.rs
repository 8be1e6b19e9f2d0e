//! `etcdctl member update` (Cluster.MemberUpdate) on a 3-member cluster, the same test code
//! against kvstore and etcd 3.4: a member gets new peer URLs and is restarted there as an
//! operator does; every member lists the new URLs (one that was down meanwhile too, and on
//! kvstore it catches up by snapshot); writes commit only if the leader reaches the moved
//! member at its new URL; unknown ids and URLs another member has are refused with etcd's
//! code and message.

use crate::common;

use std::time::{Duration, Instant};

use common::cluster::Cluster;
use common::{Kind, free_port};
use kvstore::proto::etcdserverpb::{MemberUpdateRequest, cluster_client::ClusterClient};
use tonic::transport::Channel;

async fn cluster_client(endpoint: &str) -> ClusterClient<Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{endpoint}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    ClusterClient::new(channel)
}

/// The peer URLs member `i` lists for member `id` (hex), from its own `member list`.
fn listed_peer_urls(c: &Cluster, i: usize, id: &str) -> Option<String> {
    let out = c.members[i].etcdctl(&["member", "list"]);
    String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
        let f: Vec<&str> = l.split(", ").collect();
        if f.first() == Some(&id) {
            f.get(3).map(|s| s.to_string())
        } else {
            None
        }
    })
}

/// Waits until every running member lists `urls` for member `id`.
fn wait_listed_everywhere(c: &mut Cluster, id: &str, urls: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let running: Vec<usize> = (0..c.members.len())
            .filter(|&i| c.members[i].is_running())
            .collect();
        let seen: Vec<Option<String>> = running
            .into_iter()
            .map(|i| listed_peer_urls(c, i, id))
            .collect();
        if seen.iter().all(|s| s.as_deref() == Some(urls)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{:?}: member {id} not listed with {urls} everywhere: {seen:?}",
            c.kind
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The server's answers to bad updates, and the shape of a good one, through the gRPC API.
fn refusals_and_response(c: &Cluster, target: usize, other: usize) {
    let kind = c.kind;
    let target_id = c.id(target);
    let own_url = c.members[target].peer_url();
    let others_url = c.members[other].peer_url();
    let ep = c.members[other].endpoint();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let mut cl = cluster_client(&ep).await;
        let unknown = cl
            .member_update(MemberUpdateRequest {
                id: 0x1234,
                peer_ur_ls: vec![format!("http://127.0.0.1:{}", free_port())],
            })
            .await
            .expect_err("an unknown member is refused");
        assert_eq!(unknown.code(), tonic::Code::NotFound, "{kind:?}: {unknown}");
        assert_eq!(
            unknown.message(),
            "etcdserver: member not found",
            "{kind:?}"
        );

        let taken = cl
            .member_update(MemberUpdateRequest {
                id: target_id,
                peer_ur_ls: vec![others_url.clone()],
            })
            .await
            .expect_err("another member's URL is refused");
        assert_eq!(
            taken.code(),
            tonic::Code::FailedPrecondition,
            "{kind:?}: {taken}"
        );
        assert_eq!(
            taken.message(),
            "etcdserver: Peer URLs already exists",
            "{kind:?}"
        );

        // Its own URL again: accepted; the answer carries a full header and every member.
        let same = cl
            .member_update(MemberUpdateRequest {
                id: target_id,
                peer_ur_ls: vec![own_url.clone()],
            })
            .await
            .expect("an update to the same URLs")
            .into_inner();
        let h = same.header.expect("header");
        assert!(
            h.cluster_id != 0 && h.member_id != 0 && h.raft_term != 0,
            "{kind:?}: {h:?}"
        );
        assert_eq!(same.members.len(), 3, "{kind:?}: {:?}", same.members);
        let m = same.members.iter().find(|m| m.id == target_id);
        assert_eq!(
            m.map(|m| m.peer_ur_ls.clone()),
            Some(vec![own_url]),
            "{kind:?}"
        );
    });
    // etcdctl shows the server's message.
    let out = c.members[other].etcdctl(&["member", "update", "1234", "--peer-urls", &others_url]);
    assert!(!out.status.success(), "{kind:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("etcdserver: member not found"),
        "{kind:?}: {err}"
    );
}

fn member_update(kind: Kind) {
    let mut c = Cluster::start(kind, 3, &["--snapshot-count", "100"]);
    let leader = c.wait_leader(Duration::from_secs(10));
    let target = (leader + 1) % 3;
    let lagging = (leader + 2) % 3;
    refusals_and_response(&c, target, lagging);
    let id = format!("{:x}", c.id(target));
    c.ok(&["put", "before", "update"]);

    // One member is down through the update and the writes after it.
    c.members[lagging].kill();

    let old_url = c.members[target].peer_url();
    let new_port = free_port();
    let new_url = format!("http://127.0.0.1:{new_port}");
    let out = c.ok(&["member", "update", &id, "--peer-urls", &new_url]);
    // etcdctl prints the id with `%16x` (space-padded).
    assert!(
        out.starts_with("Member ") && out.contains(&format!("{id} updated in cluster")),
        "{kind:?}: {out}"
    );
    wait_listed_everywhere(&mut c, &id, &new_url);

    // The operator's part: restart the member listening on (and advertising) its new URL.
    let t = &mut c.members[target];
    t.terminate();
    t.peer_port = new_port;
    t.initial_cluster = t
        .initial_cluster
        .as_ref()
        .map(|ic| ic.replace(&old_url, &new_url));
    t.launch();
    t.wait_ready();

    // With the third member down, every commit needs the moved member: the leader reaches
    // it at its new URL. Enough writes that kvstore truncates its log past the member that
    // is down, which then catches up by snapshot.
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let eps = c.endpoints();
    rt.block_on(async {
        let cl = kvstore::client::Client::connect(eps.split(',').collect::<Vec<_>>(), None)
            .await
            .expect("connect");
        for i in 0..3000u32 {
            cl.put_kv(format!("after/{i:05}"), format!("v{i}"))
                .await
                .unwrap_or_else(|e| panic!("{kind:?}: put {i} after the update: {e}"));
        }
    });
    assert_eq!(
        c.members[target]
            .ok(&["get", "before", "--print-value-only"])
            .trim(),
        "update"
    );

    // The member that was down comes back knowing only the old URL from its own disk, and
    // learns the new one from the leader (kvstore: in a snapshot; etcd: from the log).
    c.members[lagging].launch();
    c.members[lagging].wait_ready();
    c.wait_converged(Duration::from_secs(30));
    wait_listed_everywhere(&mut c, &id, &new_url);
    if kind == Kind::Kvstore {
        let log = c.members[lagging].log();
        assert!(log.contains("snapshot installed"), "no snapshot in: {log}");
    }
    assert_eq!(c.full_range(lagging).len(), 3001, "{kind:?}");

    // Writes through every member still commit, and are read through every member.
    for w in 0..3 {
        let key = format!("last{w}");
        c.members[w].ok(&["put", &key, "v"]);
        for r in 0..3 {
            assert_eq!(
                c.members[r].ok(&["get", &key, "--print-value-only"]).trim(),
                "v",
                "{kind:?}: write via {w}, read via {r}"
            );
        }
    }
}

#[test]
fn member_update_kvstore() {
    member_update(Kind::Kvstore);
}

#[test]
fn member_update_etcd() {
    member_update(Kind::Etcd);
}

/// Malformed peer URLs: kvstore refuses them as MemberAdd does (etcdctl refuses them before
/// sending, against either server).
#[test]
fn member_update_bad_urls_kvstore() {
    let c = Cluster::start(Kind::Kvstore, 3, &[]);
    let id = c.id(0);
    let ep = c.members[1].endpoint();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let mut cl = cluster_client(&ep).await;
        for urls in [
            vec![],
            vec!["not a url".to_string()],
            vec!["ftp://127.0.0.1:1".into()],
        ] {
            let e = cl
                .member_update(MemberUpdateRequest {
                    id,
                    peer_ur_ls: urls.clone(),
                })
                .await
                .expect_err("refused");
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{urls:?}: {e}");
            assert_eq!(e.message(), "etcdserver: given member URLs are invalid");
        }
    });
    let out = c.members[1].etcdctl(&[
        "member",
        "update",
        &format!("{id:x}"),
        "--peer-urls",
        "notaurl",
    ]);
    assert!(!out.status.success());
    let unchanged = c.members[1].ok(&["member", "list"]);
    assert!(unchanged.contains(&c.members[0].peer_url()), "{unchanged}");
}
