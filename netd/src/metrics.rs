//! Prometheus metrics (`/metrics`), one struct so every counter is registered in one place.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Label of the watch-event counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    /// `put`, `delete` or `rejected`.
    pub kind: String,
}

/// All of netd's metrics.
pub struct Metrics {
    registry: Registry,
    /// Peers currently programmed.
    pub peers: Gauge,
    /// 1 while this host holds a subnet lease.
    pub lease_held: Gauge,
    /// Leases acquired (first time and after losses).
    pub lease_acquisitions: Counter,
    /// Leases lost (expired, revoked, record deleted).
    pub lease_losses: Counter,
    /// KV watch events by kind.
    pub watch_events: Family<EventLabels, Counter>,
    /// Watch re-connects and re-lists.
    pub watch_restarts: Counter,
    /// Full reconcile runs.
    pub reconcile_runs: Counter,
    /// Reconcile steps that failed.
    pub reconcile_errors: Counter,
    /// Kernel objects a reconcile had to add, replace or remove.
    pub reconcile_fixes: Counter,
    /// Seconds to program one peer (neighbour, FDB, route).
    pub peer_program_seconds: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("netd");
        let m = Metrics {
            registry: Registry::default(),
            peers: Gauge::default(),
            lease_held: Gauge::default(),
            lease_acquisitions: Counter::default(),
            lease_losses: Counter::default(),
            watch_events: Family::default(),
            watch_restarts: Counter::default(),
            reconcile_runs: Counter::default(),
            reconcile_errors: Counter::default(),
            reconcile_fixes: Counter::default(),
            peer_program_seconds: Histogram::new(exponential_buckets(0.0001, 4.0, 10)),
        };
        registry.register("peers", "Peers currently programmed", m.peers.clone());
        registry.register(
            "lease_held",
            "1 while this host holds its subnet lease",
            m.lease_held.clone(),
        );
        registry.register(
            "lease_acquisitions",
            "Subnet leases acquired",
            m.lease_acquisitions.clone(),
        );
        registry.register("lease_losses", "Subnet leases lost", m.lease_losses.clone());
        registry.register(
            "kv_watch_events",
            "KV watch events by kind",
            m.watch_events.clone(),
        );
        registry.register(
            "kv_watch_restarts",
            "KV watch reconnects and re-lists",
            m.watch_restarts.clone(),
        );
        registry.register(
            "reconcile_runs",
            "Full kernel reconcile runs",
            m.reconcile_runs.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Reconcile steps that failed",
            m.reconcile_errors.clone(),
        );
        registry.register(
            "reconcile_fixes",
            "Kernel objects fixed by reconcile",
            m.reconcile_fixes.clone(),
        );
        registry.register(
            "peer_program_seconds",
            "Time to program one peer",
            m.peer_program_seconds.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Counts one watch event.
    pub fn watch_event(&self, kind: &str) {
        self.watch_events
            .get_or_create(&EventLabels { kind: kind.into() })
            .inc();
    }

    /// OpenMetrics text.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn encodes_registered_metrics() {
        let m = super::Metrics::new();
        m.peers.set(3);
        m.watch_event("put");
        m.peer_program_seconds.observe(0.002);
        let text = m.encode();
        assert!(text.contains("netd_peers 3"), "{text}");
        assert!(
            text.contains("netd_kv_watch_events_total{kind=\"put\"} 1"),
            "{text}"
        );
        assert!(text.contains("netd_peer_program_seconds_count 1"), "{text}");
    }
}
