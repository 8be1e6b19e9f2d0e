//! Per-peer network metrics, labelled by the peer's member id in hex as etcd labels them:
//! `etcd_network_peer_sent_bytes_total{To}`, `…_received_bytes_total{From}`,
//! `…_sent_failures_total{To}` and the `etcd_network_peer_round_trip_time_seconds{To}`
//! histogram (etcd's buckets: 0.1 ms doubling to 3.2768 s). The transport holds each peer's
//! [`PeerStats`] (looked up once, when the peer is added), so counting a sent batch is a
//! relaxed atomic add; the receiving side looks its sender up once per stream.
//!
//! A series appears once it has something to say (a counter above zero, a histogram with an
//! observation), as etcd's appear when first touched.

use std::sync::Arc;

use parking_lot::RwLock;

use super::prom::{Counter, Histogram, Text};

/// What this member counts about one peer.
#[derive(Debug)]
pub struct PeerStats {
    pub sent_bytes: Counter,
    pub received_bytes: Counter,
    pub sent_failures: Counter,
    pub round_trip: Histogram,
}

impl Default for PeerStats {
    fn default() -> Self {
        PeerStats {
            sent_bytes: Counter::default(),
            received_bytes: Counter::default(),
            sent_failures: Counter::default(),
            round_trip: Histogram::exponential(0.0001, 2.0, 16),
        }
    }
}

/// Reads one of a peer's counts.
type PeerCount = fn(&PeerStats) -> u64;

/// Every peer this member has talked to since it started (a removed member's counts stay,
/// as etcd's do until restart).
#[derive(Debug, Default)]
pub struct Peers {
    peers: RwLock<Vec<(u64, Arc<PeerStats>)>>,
}

impl Peers {
    /// Peer `id`'s stats, made on first use.
    pub fn get(&self, id: u64) -> Arc<PeerStats> {
        if let Some((_, s)) = self.peers.read().iter().find(|(p, _)| *p == id) {
            return s.clone();
        }
        let mut all = self.peers.write();
        if let Some((_, s)) = all.iter().find(|(p, _)| *p == id) {
            return s.clone();
        }
        let s = Arc::new(PeerStats::default());
        all.push((id, s.clone()));
        all.sort_by_key(|(p, _)| format!("{p:x}"));
        s
    }

    /// Adds the peer families to `out`.
    pub fn render(&self, out: &mut Text) {
        let peers: Vec<(String, Arc<PeerStats>)> = self
            .peers
            .read()
            .iter()
            .map(|(id, s)| (format!("{id:x}"), s.clone()))
            .collect();
        let counters: [(&str, &str, &str, PeerCount); 3] = [
            (
                "etcd_network_peer_sent_bytes_total",
                "The total number of bytes sent to peers.",
                "To",
                |s| s.sent_bytes.get(),
            ),
            (
                "etcd_network_peer_received_bytes_total",
                "The total number of bytes received from peers.",
                "From",
                |s| s.received_bytes.get(),
            ),
            (
                "etcd_network_peer_sent_failures_total",
                "The total number of send failures from peers.",
                "To",
                |s| s.sent_failures.get(),
            ),
        ];
        for (name, help, label, value) in counters {
            let touched: Vec<_> = peers
                .iter()
                .filter(|(_, s)| value(s) > 0)
                .map(|(id, s)| (id, value(s)))
                .collect();
            if touched.is_empty() {
                continue;
            }
            out.family(name, "counter", help);
            for (id, v) in touched {
                out.sample(name, &[(label, id)], v as f64);
            }
        }
        let name = "etcd_network_peer_round_trip_time_seconds";
        let observed: Vec<_> = peers
            .iter()
            .filter(|(_, s)| s.round_trip.count() > 0)
            .collect();
        if !observed.is_empty() {
            out.family(name, "histogram", "Round-Trip-Time histogram between peers");
            for (id, s) in observed {
                out.histogram(name, &[("To", id)], &s.round_trip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_touched_series_render() {
        let p = Peers::default();
        let a = p.get(0xa1);
        assert!(Arc::ptr_eq(&a, &p.get(0xa1)));
        let _b = p.get(0xb2);
        a.sent_bytes.add(10);
        a.round_trip.observe(0.0003);
        let mut t = Text::default();
        p.render(&mut t);
        let out = t.finish();
        assert!(
            out.contains("etcd_network_peer_sent_bytes_total{To=\"a1\"} 10\n"),
            "{out}"
        );
        assert!(!out.contains("b2"), "{out}");
        assert!(!out.contains("received_bytes"), "{out}");
        assert!(
            out.contains(
                "etcd_network_peer_round_trip_time_seconds_bucket{To=\"a1\",le=\"0.0004\"} 1\n"
            ),
            "{out}"
        );
    }
}
