//! A rough figure: how fast one host programs and removes a couple of hundred peers that appear
//! in the store at once (prints the numbers; asserts only generous bounds).

use crate::common;

use std::time::{Duration, Instant};

use netd::kv::Kv;

use common::{World, in_netns};

const PEERS: u32 = 200;

fn put_or_delete_peers(w: &World, delete: bool) {
    let endpoints = vec![w.endpoints.clone()];
    in_netns(&w.underlay(), move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let kv = Kv::connect(&endpoints, netd::kv::DEFAULT_PREFIX).await.expect("connect");
            let client = kvstore::client::Client::connect(&endpoints, None)
                .await
                .expect("client");
            for i in 0..PEERS {
                let (hi, lo) = ((i / 250) as u8, (i % 250) as u8);
                let key = format!("{}10.244.{}.0-24", kv.subnets_prefix(), 10 + i);
                if delete {
                    client
                        .delete_range(kvstore::client::req::delete(key))
                        .await
                        .expect("delete");
                } else {
                    let v = format!(
                        r#"{{"PublicIP":"198.51.{hi}.{}","BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"02:00:00:00:{hi:02x}:{lo:02x}"}}}}"#,
                        lo + 1
                    );
                    client.put_kv(key, v).await.expect("put");
                }
            }
        })
    });
}

#[test]
fn two_hundred_peers_are_programmed_and_removed_quickly() {
    let mut w = World::new(1);
    w.start_etcd(common::DEFAULT_CONFIG);
    w.start_netd(1, &[]);
    w.wait_ready(1);

    let start = Instant::now();
    put_or_delete_peers(&w, false);
    let written = start.elapsed();
    common::wait_until("200 peers programmed", Duration::from_secs(30), || {
        w.cluster_routes(1).len() == PEERS as usize
    });
    let programmed = start.elapsed();
    w.wait_converged(&[1]);
    let (_, metrics) = w.http_get(1, "/metrics").expect("metrics");
    let sum = metric(&metrics, "netd_peer_program_seconds_sum");
    let count = metric(&metrics, "netd_peer_program_seconds_count");

    let start = Instant::now();
    put_or_delete_peers(&w, true);
    common::wait_until("200 peers removed", Duration::from_secs(30), || {
        w.cluster_routes(1).is_empty()
    });
    let removed = start.elapsed();
    w.wait_converged(&[1]);
    eprintln!(
        "figures: {PEERS} peers: store writes {written:?}, all programmed after {programmed:?}, \
         mean program time {:.3} ms over {count} peers, all removed after {removed:?}",
        1000.0 * sum / count.max(1.0)
    );
    assert!(count > 0.0, "program time is measured");
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
}
