//! etcd's metrics: the same test code scrapes a 3-member kvstore cluster and a 3-member
//! etcd 3.4 cluster on their `--listen-metrics-urls`. Every family kvstore chose (the ones
//! etcd's alerting rules and Grafana dashboard read, and their neighbours) must be there with
//! etcd's type, label names and bucket bounds — the table below, which the etcd run proves is
//! etcd's — and the values must move as etcd's do: proposals and puts with writes, ranges on
//! the member that served them, fsync and commit latencies observed, a leader change counted
//! after the leader is killed, a plausible resident memory (what `etcdctl check datascale`
//! reads). One more test diffs the `# HELP` and `# TYPE` lines of a kvstore scrape against an
//! etcd scrape, family by family.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::cluster::Cluster;
use common::{Kind, Proc, free_port};

/// One family of a scrape: its type, HELP, and samples (name, labels, value).
#[derive(Debug, Default, Clone)]
struct Family {
    kind: String,
    help: String,
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

type Scrape = BTreeMap<String, Family>;

/// Parses the text exposition format (what both servers write: one sample per line).
fn parse(text: &str) -> Scrape {
    let mut out = Scrape::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            out.entry(name.into()).or_default().help = help.into();
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE line");
            out.entry(name.into()).or_default().kind = kind.into();
        } else if !line.is_empty() && !line.starts_with('#') {
            let (series, value) = line.rsplit_once(' ').expect("sample line");
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                v => v
                    .parse()
                    .unwrap_or_else(|_| panic!("bad value in {line:?}")),
            };
            let (name, labels) = match series.split_once('{') {
                None => (series, BTreeMap::new()),
                Some((name, rest)) => {
                    let body = rest.strip_suffix('}').expect("labels end");
                    let labels = body
                        .split("\",")
                        .filter(|p| !p.is_empty())
                        .map(|p| {
                            let (k, v) = p.split_once("=\"").expect("label");
                            (k.to_string(), v.trim_end_matches('"').to_string())
                        })
                        .collect();
                    (name, labels)
                }
            };
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| {
                    let base = name.strip_suffix(s)?;
                    (out.get(base)?.kind == "histogram").then_some(base)
                })
                .unwrap_or(name);
            out.entry(family.into())
                .or_default()
                .samples
                .push((name.into(), labels, value));
        }
    }
    out
}

/// A GET of `/metrics` over HTTP/1.0, so that the body is never chunked (Go's server chunks
/// a long HTTP/1.1 answer).
fn scrape(port: u16) -> Scrape {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    write!(s, "GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n").expect("send");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    let (head, body) = out.split_once("\r\n\r\n").expect("headers end");
    assert!(head.contains(" 200 "), "{head}");
    parse(body)
}

/// The value of the sample `name` with `labels` (all of them) in `s`.
fn value(s: &Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    s.values().flat_map(|f| &f.samples).find_map(|(n, l, v)| {
        (n == name
            && labels
                .iter()
                .all(|(k, want)| l.get(*k).map(String::as_str) == Some(*want)))
        .then_some(*v)
    })
}

fn get(s: &Scrape, name: &str) -> f64 {
    value(s, name, &[]).unwrap_or_else(|| panic!("no sample {name}"))
}

/// Buckets of etcd's latency histograms: 1 ms doubling, 14 bounds.
const DISK: &[f64] = &[
    0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048, 4.096,
    8.192,
];
/// Round-trip time: 0.1 ms doubling, 16 bounds.
const RTT: &[f64] = &[
    0.0001, 0.0002, 0.0004, 0.0008, 0.0016, 0.0032, 0.0064, 0.0128, 0.0256, 0.0512, 0.1024, 0.2048,
    0.4096, 0.8192, 1.6384, 3.2768,
];
/// Lease TTLs: 1 s doubling, 24 bounds.
const TTL: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0,
    16384.0, 32768.0, 65536.0, 131072.0, 262144.0, 524288.0, 1048576.0, 2097152.0, 4194304.0,
    8388608.0,
];
/// Index compaction pauses: 0.5 ms doubling, 14 bounds.
const COMPACTION: &[f64] = &[
    0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0,
];

/// The families chosen: name, type, label names of every sample (histograms: besides `le`),
/// bucket bounds.
const CHOSEN: &[(&str, &str, &[&str], &[f64])] = &[
    ("etcd_server_has_leader", "gauge", &[], &[]),
    ("etcd_server_is_leader", "gauge", &[], &[]),
    ("etcd_server_is_learner", "gauge", &[], &[]),
    ("etcd_server_leader_changes_seen_total", "counter", &[], &[]),
    ("etcd_server_proposals_committed_total", "gauge", &[], &[]),
    ("etcd_server_proposals_applied_total", "gauge", &[], &[]),
    ("etcd_server_proposals_pending", "gauge", &[], &[]),
    ("etcd_server_proposals_failed_total", "counter", &[], &[]),
    (
        "etcd_server_heartbeat_send_failures_total",
        "counter",
        &[],
        &[],
    ),
    ("etcd_server_slow_apply_total", "counter", &[], &[]),
    ("etcd_server_slow_read_indexes_total", "counter", &[], &[]),
    ("etcd_server_read_indexes_failed_total", "counter", &[], &[]),
    (
        "etcd_server_snapshot_apply_in_progress_total",
        "gauge",
        &[],
        &[],
    ),
    ("etcd_server_quota_backend_bytes", "gauge", &[], &[]),
    ("etcd_server_id", "gauge", &["server_id"], &[]),
    ("etcd_server_version", "gauge", &["server_version"], &[]),
    ("etcd_cluster_version", "gauge", &["cluster_version"], &[]),
    (
        "etcd_disk_wal_fsync_duration_seconds",
        "histogram",
        &[],
        DISK,
    ),
    (
        "etcd_disk_backend_commit_duration_seconds",
        "histogram",
        &[],
        DISK,
    ),
    ("etcd_disk_wal_write_bytes_total", "gauge", &[], &[]),
    ("etcd_mvcc_db_total_size_in_bytes", "gauge", &[], &[]),
    ("etcd_mvcc_db_total_size_in_use_in_bytes", "gauge", &[], &[]),
    (
        "etcd_debugging_mvcc_db_total_size_in_bytes",
        "gauge",
        &[],
        &[],
    ),
    ("etcd_debugging_mvcc_keys_total", "gauge", &[], &[]),
    ("etcd_debugging_mvcc_current_revision", "gauge", &[], &[]),
    ("etcd_debugging_mvcc_compact_revision", "gauge", &[], &[]),
    ("etcd_mvcc_put_total", "counter", &[], &[]),
    ("etcd_mvcc_delete_total", "counter", &[], &[]),
    ("etcd_mvcc_range_total", "counter", &[], &[]),
    ("etcd_mvcc_txn_total", "counter", &[], &[]),
    ("etcd_debugging_mvcc_put_total", "counter", &[], &[]),
    ("etcd_debugging_mvcc_delete_total", "counter", &[], &[]),
    ("etcd_debugging_mvcc_range_total", "counter", &[], &[]),
    ("etcd_debugging_mvcc_txn_total", "counter", &[], &[]),
    (
        "etcd_debugging_mvcc_total_put_size_in_bytes",
        "gauge",
        &[],
        &[],
    ),
    ("etcd_debugging_mvcc_watch_stream_total", "gauge", &[], &[]),
    ("etcd_debugging_mvcc_watcher_total", "gauge", &[], &[]),
    ("etcd_debugging_mvcc_slow_watcher_total", "gauge", &[], &[]),
    ("etcd_debugging_mvcc_events_total", "counter", &[], &[]),
    (
        "etcd_debugging_mvcc_index_compaction_pause_duration_milliseconds",
        "histogram",
        &[],
        COMPACTION,
    ),
    ("etcd_debugging_lease_granted_total", "counter", &[], &[]),
    ("etcd_debugging_lease_revoked_total", "counter", &[], &[]),
    ("etcd_debugging_lease_renewed_total", "counter", &[], &[]),
    (
        "etcd_debugging_server_lease_expired_total",
        "counter",
        &[],
        &[],
    ),
    ("etcd_debugging_lease_ttl_total", "histogram", &[], TTL),
    (
        "etcd_network_peer_sent_bytes_total",
        "counter",
        &["To"],
        &[],
    ),
    (
        "etcd_network_peer_received_bytes_total",
        "counter",
        &["From"],
        &[],
    ),
    (
        "etcd_network_peer_round_trip_time_seconds",
        "histogram",
        &["To"],
        RTT,
    ),
    ("process_cpu_seconds_total", "counter", &[], &[]),
    ("process_resident_memory_bytes", "gauge", &[], &[]),
    ("process_virtual_memory_bytes", "gauge", &[], &[]),
    ("process_virtual_memory_max_bytes", "gauge", &[], &[]),
    ("process_open_fds", "gauge", &[], &[]),
    ("process_max_fds", "gauge", &[], &[]),
    ("process_start_time_seconds", "gauge", &[], &[]),
];

/// The gRPC families (the dashboards' RPC rate, failure and open-stream panels, the failed-RPC
/// alert): on kvstore, counted by `kvstore::metrics::GrpcLayer` once the client gRPC server
/// installs it.
const GRPC: &[(&str, &str, &[&str], &[f64])] = &[
    (
        "grpc_server_started_total",
        "counter",
        &["grpc_method", "grpc_service", "grpc_type"],
        &[],
    ),
    (
        "grpc_server_handled_total",
        "counter",
        &["grpc_code", "grpc_method", "grpc_service", "grpc_type"],
        &[],
    ),
    (
        "grpc_server_msg_received_total",
        "counter",
        &["grpc_method", "grpc_service", "grpc_type"],
        &[],
    ),
    (
        "grpc_server_msg_sent_total",
        "counter",
        &["grpc_method", "grpc_service", "grpc_type"],
        &[],
    ),
    (
        "etcd_network_client_grpc_sent_bytes_total",
        "counter",
        &[],
        &[],
    ),
    (
        "etcd_network_client_grpc_received_bytes_total",
        "counter",
        &[],
        &[],
    ),
];

/// Checks `s` has every family of `table` with its type, label names and buckets.
fn assert_shapes(kind: Kind, s: &Scrape, table: &[(&str, &str, &[&str], &[f64])]) {
    for (name, want_kind, want_labels, want_buckets) in table {
        let f = s
            .get(*name)
            .unwrap_or_else(|| panic!("{kind:?}: no family {name}"));
        assert_eq!(f.kind, *want_kind, "{kind:?}: type of {name}");
        assert!(!f.samples.is_empty(), "{kind:?}: {name} has no sample");
        let want: BTreeSet<&str> = want_labels.iter().copied().collect();
        for (sample, labels, _) in &f.samples {
            let got: BTreeSet<&str> = labels
                .keys()
                .map(String::as_str)
                .filter(|k| *k != "le")
                .collect();
            assert_eq!(got, want, "{kind:?}: labels of {sample}");
        }
        if *want_kind == "histogram" {
            let first = f
                .samples
                .first()
                .map(|(_, l, _)| l.clone())
                .unwrap_or_default();
            let bounds: Vec<f64> = f
                .samples
                .iter()
                .filter(|(n, l, _)| {
                    n.ends_with("_bucket")
                        && l.iter().all(|(k, v)| k == "le" || first.get(k) == Some(v))
                })
                .map(|(_, l, _)| l["le"].parse::<f64>().unwrap_or(f64::INFINITY))
                .collect();
            let mut want: Vec<f64> = want_buckets.to_vec();
            want.push(f64::INFINITY);
            assert_eq!(bounds, want, "{kind:?}: buckets of {name}");
        }
    }
}

/// A 3-member cluster whose members serve metrics; the metrics port of each member.
fn cluster(kind: Kind) -> (Cluster, Vec<u16>) {
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let p = ports.clone();
    let setup: common::cluster::Setup = Arc::new(move |i: usize, m: &mut Proc| {
        m.extra.extend([
            "--listen-metrics-urls".to_string(),
            format!("http://127.0.0.1:{}", p[i]),
        ]);
    });
    (Cluster::start_with(kind, 3, &[], setup), ports)
}

/// Waits until `ok` holds for a scrape of `port`, up to `within`; the last scrape.
fn scrape_until(port: u16, within: Duration, ok: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = Instant::now() + within;
    loop {
        let s = scrape(port);
        if ok(&s) || Instant::now() > deadline {
            return s;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn families_and_values_move(kind: Kind) {
    let (mut c, ports) = cluster(kind);
    let leader = c.wait_leader(Duration::from_secs(20));
    let follower = (leader + 1) % 3;
    let before: Vec<Scrape> = ports.iter().map(|p| scrape(*p)).collect();

    for i in 0..20 {
        c.members[leader].ok(&["put", &format!("k{i}"), "v"]);
    }
    c.members[follower].ok(&["get", "k1"]);
    c.members[follower].ok(&["get", "k", "--prefix"]);
    c.members[leader].ok(&["del", "k0"]);
    let txn = c.members[leader].etcdctl_stdin(&["txn"], "\nput t1 a\nput t2 b\n\n\n");
    assert!(txn.status.success(), "{kind:?}: txn failed");
    let lease = c.members[leader].ok(&["lease", "grant", "100"]);
    assert!(lease.contains("granted"), "{lease}");
    c.members[leader].ok(&["compact", "5"]);
    c.wait_converged(Duration::from_secs(10));

    // Round-trip times are measured a few seconds after the peers connect (etcd: 5 s).
    let leader_port = ports[leader];
    let after_leader = scrape_until(leader_port, Duration::from_secs(15), |s| {
        s.get("etcd_network_peer_round_trip_time_seconds").is_some()
            && get(s, "etcd_disk_backend_commit_duration_seconds_count") > 0.0
    });
    // Followers may apply the last entries (the compaction) a moment later.
    let after: Vec<Scrape> = ports
        .iter()
        .enumerate()
        .map(|(i, p)| match i == leader {
            true => after_leader.clone(),
            false => scrape_until(*p, Duration::from_secs(5), |s| {
                get(s, "etcd_debugging_mvcc_compact_revision") == 5.0
            }),
        })
        .collect();
    let without_peers: Vec<_> = CHOSEN
        .iter()
        .filter(|(name, ..)| !name.starts_with("etcd_network_peer_"))
        .copied()
        .collect();

    for (i, s) in after.iter().enumerate() {
        assert_shapes(kind, s, &without_peers);
        let grew = |name: &str| get(s, name) - get(&before[i], name);
        assert_eq!(get(s, "etcd_server_has_leader"), 1.0, "{kind:?} m{i}");
        assert_eq!(
            get(s, "etcd_server_is_leader"),
            f64::from(u8::from(i == leader)),
            "{kind:?} m{i}"
        );
        // 20 puts, a delete, a txn, a lease, a compaction: one entry each.
        assert!(
            grew("etcd_server_proposals_committed_total") >= 24.0,
            "{kind:?} m{i}"
        );
        assert!(
            grew("etcd_server_proposals_applied_total") >= 24.0,
            "{kind:?} m{i}"
        );
        // Writes are applied on every member: 20 puts and the txn's 2, a delete, a txn.
        assert!(grew("etcd_mvcc_put_total") >= 22.0, "{kind:?} m{i}");
        assert!(
            grew("etcd_debugging_mvcc_put_total") >= 22.0,
            "{kind:?} m{i}"
        );
        assert!(grew("etcd_mvcc_delete_total") >= 1.0, "{kind:?} m{i}");
        assert!(grew("etcd_mvcc_txn_total") >= 1.0, "{kind:?} m{i}");
        assert!(
            grew("etcd_debugging_lease_granted_total") >= 1.0,
            "{kind:?} m{i}"
        );
        assert_eq!(
            get(s, "etcd_debugging_mvcc_keys_total"),
            21.0,
            "{kind:?} m{i}"
        );
        assert_eq!(
            get(s, "etcd_debugging_mvcc_compact_revision"),
            5.0,
            "{kind:?} m{i}"
        );
        assert!(
            get(s, "etcd_disk_wal_fsync_duration_seconds_count") > 0.0,
            "{kind:?} m{i}"
        );
        assert!(
            get(s, "etcd_disk_wal_write_bytes_total") > 0.0,
            "{kind:?} m{i}"
        );
        assert!(
            get(s, "etcd_mvcc_db_total_size_in_bytes") > 0.0,
            "{kind:?} m{i}"
        );
        assert!(
            get(s, "etcd_mvcc_db_total_size_in_use_in_bytes") > 0.0,
            "{kind:?} m{i}"
        );
        let rss = get(s, "process_resident_memory_bytes");
        let proc_rss = c.members[i].rss_kib() as f64 * 1024.0;
        assert!(
            rss > 1e6 && rss < 4e9 && (rss / proc_rss - 1.0).abs() < 0.5,
            "{kind:?} m{i}: {rss} reported, {proc_rss} in /proc"
        );
        assert!(get(s, "process_open_fds") > 3.0, "{kind:?} m{i}");
        let id = format!("{:x}", c.id(i));
        assert_eq!(
            value(s, "etcd_server_id", &[("server_id", &id)]),
            Some(1.0),
            "{kind:?} m{i}"
        );
    }
    // Ranges count where they were served.
    let ranges = |s: &Scrape| get(s, "etcd_mvcc_range_total");
    assert!(
        ranges(&after[follower]) - ranges(&before[follower]) >= 2.0,
        "{kind:?}"
    );
    // The leader sent each follower its appends and measured the round trip to some peer.
    for peer in (0..3).filter(|p| *p != leader) {
        let to = format!("{:x}", c.id(peer));
        let sent = value(
            &after_leader,
            "etcd_network_peer_sent_bytes_total",
            &[("To", &to)],
        );
        assert!(sent.is_some_and(|b| b > 0.0), "{kind:?}: sent to {to}");
        let from = format!("{:x}", c.id(leader));
        let got = value(
            &after[peer],
            "etcd_network_peer_received_bytes_total",
            &[("From", &from)],
        );
        assert!(
            got.is_some_and(|b| b > 0.0),
            "{kind:?}: {to} received from {from}"
        );
    }
    assert_shapes(kind, &after_leader, CHOSEN);
    assert!(
        get(
            &after_leader,
            "etcd_disk_backend_commit_duration_seconds_count"
        ) > 0.0
    );
    {
        assert_shapes(kind, &after[follower], GRPC);
        let started = |s: &Scrape| {
            value(s, "grpc_server_started_total", &[("grpc_method", "Range")]).unwrap_or(0.0)
        };
        assert!(started(&after[follower]) - started(&before[follower]) >= 2.0);
    }

    // A leader change is counted by the members that see it.
    let changes: Vec<f64> = after
        .iter()
        .map(|s| get(s, "etcd_server_leader_changes_seen_total"))
        .collect();
    assert!(changes.iter().all(|c| *c >= 1.0), "{kind:?}: {changes:?}");
    c.members[leader].kill();
    c.wait_leader(Duration::from_secs(20));
    let port = ports[follower];
    let s = scrape_until(port, Duration::from_secs(5), |s| {
        get(s, "etcd_server_leader_changes_seen_total") > changes[follower]
    });
    assert!(
        get(&s, "etcd_server_leader_changes_seen_total") > changes[follower],
        "{kind:?}"
    );
    assert_eq!(get(&s, "etcd_server_has_leader"), 1.0, "{kind:?}");
}

#[test]
fn families_and_values_move_on_kvstore() {
    families_and_values_move(Kind::Kvstore);
}

#[test]
fn families_and_values_move_on_etcd() {
    families_and_values_move(Kind::Etcd);
}

/// Every family both servers export has the same `# HELP` and `# TYPE` on both, and every
/// chosen family is exported by both.
#[test]
fn help_and_type_lines_match_etcd() {
    let scrapes: Vec<Scrape> = [Kind::Kvstore, Kind::Etcd]
        .into_iter()
        .map(|kind| {
            let port = free_port();
            let url = format!("http://127.0.0.1:{port}");
            let p = Proc::start_with(kind, &["--listen-metrics-urls", &url]);
            p.ok(&["put", "a", "1"]);
            let s = scrape(port);
            drop(p);
            s
        })
        .collect();
    let (kv, etcd) = (&scrapes[0], &scrapes[1]);
    let mut compared = 0;
    for (name, f) in kv {
        if let Some(e) = etcd.get(name) {
            assert_eq!((&f.kind, &f.help), (&e.kind, &e.help), "{name}");
            compared += 1;
        }
    }
    for (name, ..) in CHOSEN {
        // Peer families need peers: a single member has none.
        if name.starts_with("etcd_network_peer_") {
            continue;
        }
        assert!(kv.contains_key(*name) && etcd.contains_key(*name), "{name}");
    }
    assert!(
        compared >= CHOSEN.len() - 3,
        "only {compared} families in common"
    );
}
