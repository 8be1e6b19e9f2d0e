//! The daemon: start-up order and the main loop.
//!
//! Start-up: KV endpoints (external or embedded) → network config (retried until valid) →
//! underlay and backend device → subnet lease → vtep address, forwarding, masquerade → first
//! peer listing and a full reconcile (stale kernel entries from earlier runs go here) → subnet
//! file → ready. Then one loop handles watch events, periodic reconciles, lease renewals and
//! re-acquisition. Shutdown leaves routes and records in place so containers keep working.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rtnetlink::Handle;
use tokio::sync::mpsc;

use crate::cli::Config;
use crate::config::{BackendConfig, NetworkConfig};
use crate::dataplane::RoutingMode;
use crate::dataplane::device::{self, Underlay, VxlanDevice, VxlanSpec};
use crate::dataplane::netlink::NetlinkDataplane;
use crate::error::{Error, Result};
use crate::http::{self, Health};
use crate::kv::Kv;
use crate::lease::{self, LeaseTiming, OwnLease};
use crate::metrics::Metrics;
use crate::peers::{OwnRecord, Peers};
use crate::subnet::{LeaseAttrs, VxlanData};
use crate::subnet_file::{self, SubnetEnv};
use crate::{embedded, masq, watch};

/// How long to wait before retrying a start-up step that failed for a reason outside netd
/// (store unreachable, config missing, no free subnet).
const RETRY: Duration = Duration::from_secs(1);

/// Runs the daemon until `shutdown` completes or a fatal error occurs.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<()> {
    config.validate()?;
    let metrics = Arc::new(Metrics::new());
    let ready = Arc::new(AtomicBool::new(false));
    let server = if config.daemon.healthz_port != 0 {
        let addr = SocketAddr::new(config.daemon.healthz_ip, config.daemon.healthz_port);
        let health = Health {
            ready: ready.clone(),
            metrics: metrics.clone(),
        };
        Some(http::serve(addr, health).await?)
    } else {
        None
    };
    let result = tokio::select! {
        r = main(&config, metrics, ready) => r,
        () = shutdown => {
            tracing::info!("shutting down; routes, devices and the subnet record are left in place");
            Ok(())
        }
    };
    if let Some(s) = server {
        s.abort();
    }
    result
}

/// Retries `step` every [`RETRY`], logging one line per distinct failure.
async fn retry<T, F, Fut>(what: &str, mut step: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let mut last = String::new();
    loop {
        match step().await {
            Ok(v) => return v,
            Err(e) => {
                let msg = e.to_string();
                if msg != last {
                    tracing::error!(error = %msg, "{what} failed; retrying every {RETRY:?}");
                    last = msg;
                }
                tokio::time::sleep(RETRY).await;
            }
        }
    }
}

/// The backend as set up on this host.
struct Backend {
    mode: RoutingMode,
    attrs: LeaseAttrs,
    mtu: u32,
    /// The VXLAN device spec and device; `None` for host-gw.
    vxlan: Option<(VxlanSpec, VxlanDevice)>,
}

async fn setup_backend(
    h: &Handle,
    net: &NetworkConfig,
    underlay: &Underlay,
    public_ip: std::net::Ipv4Addr,
) -> Result<Backend> {
    match &net.backend {
        BackendConfig::Vxlan(v) => {
            let spec = VxlanSpec {
                vni: v.vni,
                port: v.port,
                learning: v.learning,
                local: underlay.addr,
                underlay_index: underlay.index,
                mtu: underlay.mtu.saturating_sub(50),
            };
            let dev = device::ensure_vxlan(h, &spec).await?;
            Ok(Backend {
                mode: RoutingMode::Vxlan {
                    vni: v.vni,
                    direct: v.direct_routing,
                    segment: underlay.segment,
                },
                attrs: LeaseAttrs {
                    public_ip,
                    public_ipv6: None,
                    backend_type: "vxlan".into(),
                    backend_data: Some(VxlanData {
                        vni: v.vni,
                        vtep_mac: dev.mac,
                    }),
                },
                mtu: spec.mtu,
                vxlan: Some((spec, dev)),
            })
        }
        BackendConfig::HostGw => {
            if public_ip != underlay.addr {
                return Err(Error::PublicIpNotLocal {
                    ip: public_ip,
                    iface: underlay.name.clone(),
                });
            }
            Ok(Backend {
                mode: RoutingMode::HostGw,
                attrs: LeaseAttrs {
                    public_ip,
                    public_ipv6: None,
                    backend_type: "host-gw".into(),
                    backend_data: None,
                },
                mtu: underlay.mtu,
                vxlan: None,
            })
        }
    }
}

/// Everything that depends on which subnet we hold: vtep address, masquerade, subnet file.
async fn apply_own_subnet(
    h: &Handle,
    config: &Config,
    net: &NetworkConfig,
    backend: &Backend,
    own: &OwnLease,
) -> Result<()> {
    if let Some((_, dev)) = &backend.vxlan {
        device::ensure_vtep_address(h, dev.index, own.subnet.addr(), net.network).await?;
    }
    masq::enable_forwarding()?;
    if config.daemon.ip_masq {
        masq::install(net.network, own.subnet)?;
    } else if let Err(e) = masq::remove() {
        tracing::debug!(error = %e, "no masquerade table to remove");
    }
    Ok(())
}

fn write_subnet_file(
    config: &Config,
    net: &NetworkConfig,
    backend: &Backend,
    own: &OwnLease,
) -> Result<()> {
    let env = SubnetEnv {
        network: net.network,
        subnet: own.subnet,
        mtu: backend.mtu,
        ip_masq: config.daemon.ip_masq,
    };
    subnet_file::write(&config.daemon.subnet_file, &env)?;
    tracing::info!(path = %config.daemon.subnet_file.display(), subnet = %own.subnet, "subnet file written");
    Ok(())
}

async fn main(config: &Config, metrics: Arc<Metrics>, ready: Arc<AtomicBool>) -> Result<()> {
    // The embedded member lives as long as this function: dropping it stops the member.
    let mut _embedded = None;
    let endpoints = if config.kv.etcd_endpoints.is_empty() {
        let member = embedded::start(&config.kv.embedded).await?;
        let endpoints = member.endpoints.clone();
        _embedded = Some(member);
        endpoints
    } else {
        config.kv.etcd_endpoints.clone()
    };
    let prefix = config.kv.etcd_prefix.clone();
    let kv = retry("connecting to the KV store", || {
        Kv::connect(&endpoints, &prefix)
    })
    .await;
    let net = retry("reading the network config", || kv.get_config()).await;
    tracing::info!(network = %net.network, subnet_len = net.subnet_len, backend = net.backend.type_name(), "network config");

    let (conn, h, _) =
        rtnetlink::new_connection().map_err(|e| Error::Kernel(format!("netlink socket: {e}")))?;
    tokio::spawn(conn);
    let underlay = device::find_underlay(&h, config.daemon.iface.as_deref()).await?;
    let public_ip = config.daemon.public_ip.unwrap_or(underlay.addr);
    tracing::info!(iface = %underlay.name, local = %underlay.addr, %public_ip, "underlay");
    let mut backend = setup_backend(&h, &net, &underlay, public_ip).await?;

    let timing = LeaseTiming {
        ttl: Duration::from_secs(config.daemon.subnet_lease_ttl),
        renew_margin: Duration::from_secs(config.daemon.subnet_lease_renew_margin * 60),
    };
    let previous = subnet_file::read_previous_subnet(&config.daemon.subnet_file);
    let mut own = retry("acquiring a subnet lease", || {
        lease::acquire(&kv, &net, &backend.attrs, previous, timing)
    })
    .await;
    metrics.lease_acquisitions.inc();
    metrics.lease_held.set(1);
    apply_own_subnet(&h, config, &net, &backend, &own).await?;

    let overlay = backend.vxlan.as_ref().map(|(_, d)| d.index);
    let dp = NetlinkDataplane::new(h.clone(), overlay, underlay.index, net.network);
    let mut peers = Peers::new(
        dp,
        backend.mode.clone(),
        own.subnet,
        public_ip,
        metrics.clone(),
    );

    let (tx, mut rx) = mpsc::channel(1024);
    let watcher = tokio::spawn(watch::run(kv.clone(), net.clone(), tx, metrics.clone()));
    let _abort_watcher = AbortOnDrop(watcher);

    let mut reconcile = tokio::time::interval(config.reconcile_interval());
    reconcile.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    reconcile.reset();
    let mut renew_at = tokio::time::Instant::now() + timing.renew_interval();
    let mut written = false;
    let mut listed = false;
    // False while the lease must be (re-)acquired; the renewal timer then re-acquires.
    let mut lease_ok = true;

    loop {
        tokio::select! {
            ev = rx.recv() => {
                let Some(ev) = ev else {
                    return Err(Error::Kernel("peer watcher stopped".into()));
                };
                let is_snapshot = matches!(ev, watch::PeerEvent::Snapshot(_));
                match peers.handle(ev).await {
                    OwnRecord::Untouched => {}
                    OwnRecord::Updated(r) => {
                        if r.attrs == backend.attrs {
                            own.lease = r.lease;
                        } else {
                            tracing::warn!(subnet = %own.subnet, "own record was changed by someone else; rewriting it");
                            lease_ok = false;
                            renew_at = tokio::time::Instant::now();
                        }
                    }
                    OwnRecord::Lost(reason) => {
                        tracing::warn!(%reason, "subnet lease lost; re-acquiring");
                        metrics.lease_losses.inc();
                        lease_ok = false;
                        renew_at = tokio::time::Instant::now();
                    }
                }
                listed |= is_snapshot;
            }
            _ = reconcile.tick() => {
                if let Some((spec, dev)) = &mut backend.vxlan {
                    match device::ensure_vxlan(&h, spec).await {
                        Ok(now) if now.index != dev.index || now.mac != dev.mac => {
                            tracing::warn!("VXLAN device was recreated; re-programming");
                            *dev = now;
                            backend.attrs.backend_data = Some(VxlanData { vni: spec.vni, vtep_mac: now.mac });
                            peers.dp = NetlinkDataplane::new(h.clone(), Some(now.index), underlay.index, net.network);
                            if let Err(e) = device::ensure_vtep_address(&h, now.index, own.subnet.addr(), net.network).await {
                                tracing::warn!(error = %e, "re-adding the vtep address failed");
                            }
                            // Publish the new VtepMAC: the renewal path rewrites our record.
                            lease_ok = false;
                            renew_at = tokio::time::Instant::now();
                        }
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "checking the VXLAN device failed"),
                    }
                }
                peers.reconcile(false).await;
            }
            _ = tokio::time::sleep_until(renew_at) => {
                let result = if !lease_ok {
                    Err(Error::LeaseLost("re-acquiring".into()))
                } else {
                    lease::renew(&kv, &own).await
                };
                match result {
                    Ok(()) => renew_at = tokio::time::Instant::now() + timing.renew_interval(),
                    Err(Error::LeaseLost(reason)) => {
                        metrics.lease_held.set(0);
                        tracing::warn!(%reason, "subnet lease lost; re-acquiring");
                        match lease::acquire(&kv, &net, &backend.attrs, Some(own.subnet), timing).await {
                            Ok(new) => {
                                metrics.lease_acquisitions.inc();
                                metrics.lease_held.set(1);
                                lease_ok = true;
                                let changed = new.subnet != own.subnet;
                                own = new;
                                if changed {
                                    tracing::warn!(subnet = %own.subnet, "subnet changed; containers of the old subnet lose connectivity");
                                    peers.own_subnet = own.subnet;
                                    apply_own_subnet(&h, config, &net, &backend, &own).await?;
                                    if written {
                                        write_subnet_file(config, &net, &backend, &own)?;
                                    }
                                }
                                peers.reconcile(false).await;
                                renew_at = tokio::time::Instant::now() + timing.renew_interval();
                            }
                            Err(e) => {
                                tracing::error!(error = %e, "re-acquiring the subnet lease failed; retrying");
                                renew_at = tokio::time::Instant::now() + RETRY * 5;
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "renewing the subnet lease failed; retrying");
                        renew_at = tokio::time::Instant::now() + timing.renew_interval().min(RETRY * 5);
                    }
                }
            }
        }
        if listed && lease_ok && !written {
            write_subnet_file(config, &net, &backend, &own)?;
            written = true;
            ready.store(true, Ordering::SeqCst);
            tracing::info!(peers = peers.programmed_count(), "netd ready");
        }
    }
}

/// Aborts a background task when dropped (also when `run` is cancelled by shutdown).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
