//! The daemon: start-up order and the main loop.
//!
//! Start-up: KV endpoints (external or embedded) → network config (retried until valid) →
//! underlay and backend device → subnet lease → vtep address, forwarding, masquerade → first
//! peer listing and a full reconcile (stale kernel entries from earlier runs go here) → subnet
//! file → ready. Then one loop handles watch events, periodic reconciles, lease renewals and
//! re-acquisition. Shutdown leaves routes and records in place so containers keep working.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ipnetwork::IpNetwork;
use rtnetlink::Handle;
use tokio::sync::mpsc;

use crate::cli::Config;
use crate::dataplane::Families;
use crate::dataplane::device::{self, Underlay};
use crate::dataplane::netlink::NetlinkDataplane;
use crate::error::{Error, Result};
use crate::http::{self, Health};
use crate::kv::Kv;
use crate::lease::{self, LeaseTiming, OwnLease};
use crate::metrics::Metrics;
use crate::netconf::NetworkConfig;
use crate::overlay::Overlay;
use crate::peers::{OwnRecord, Peers};
use crate::sd_notify;
use crate::subnet::VxlanData;
use crate::subnet_file::{self, SubnetEnv};
use crate::{embedded, masq, overlay, watch};

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
            sd_notify::notify("STOPPING=1");
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

/// Everything that depends on which subnet we hold: vtep addresses, masquerade, blackhole routes.
async fn apply_own_subnet(
    h: &Handle,
    config: &Config,
    net: &NetworkConfig,
    backend: &Overlay,
    underlay: &Underlay,
    own: &OwnLease,
) -> Result<()> {
    ensure_vtep_addresses(h, net, backend, own).await?;
    masq::enable_forwarding(net.ipv4.is_some(), net.ipv6.is_some(), &underlay.name)?;
    let rules = config.daemon.nft_rules();
    if rules.any() {
        masq::install(masq_scope(net, own), rules)?;
    } else if let Err(e) = masq::remove() {
        tracing::debug!(error = %e, "no nftables table to remove");
    }
    if config.daemon.ip_blackhole_route {
        ensure_blackholes(h, own).await?;
    }
    Ok(())
}

/// The own subnets' network addresses on the VXLAN devices (`/32`, `/128`).
async fn ensure_vtep_addresses(
    h: &Handle,
    net: &NetworkConfig,
    backend: &Overlay,
    own: &OwnLease,
) -> Result<()> {
    if let (Some((_, dev)), Some(v4), Some(c4)) = (&backend.vxlan, own.subnet.v4, &net.ipv4) {
        let addr = IpAddr::V4(v4.addr());
        device::ensure_vtep_address(h, dev.index, addr, IpNetwork::V4(c4.network)).await?;
    }
    if let (Some((_, dev)), Some(v6), Some(c6)) = (&backend.vxlan6, own.subnet.v6, &net.ipv6) {
        let addr = IpAddr::V6(v6.addr());
        device::ensure_vtep_address(h, dev.index, addr, IpNetwork::V6(c6.network)).await?;
    }
    Ok(())
}

async fn ensure_blackholes(h: &Handle, own: &OwnLease) -> Result<()> {
    if let Some(v4) = own.subnet.v4 {
        device::ensure_blackhole(h, IpNetwork::V4(v4.0)).await?;
    }
    if let Some(v6) = own.subnet.v6 {
        device::ensure_blackhole(h, IpNetwork::V6(v6.0)).await?;
    }
    Ok(())
}

fn masq_scope(net: &NetworkConfig, own: &OwnLease) -> masq::Scope {
    masq::Scope {
        network: net.network4(),
        network6: net.network6(),
        subnet: own.subnet,
    }
}

fn write_subnet_file(
    config: &Config,
    net: &NetworkConfig,
    backend: &Overlay,
    own: &OwnLease,
) -> Result<()> {
    // As flannel's WriteSubnetFile: the pair of each family the network has.
    let mut env = SubnetEnv {
        ipv4: None,
        mtu: backend.mtu,
        ipmasq: config.daemon.ip_masq,
        ipv6: None,
    };
    if let (Some(c4), Some(v4)) = (&net.ipv4, own.subnet.v4) {
        env = SubnetEnv::new(c4.network, v4.0, backend.mtu, config.daemon.ip_masq);
    }
    if let (Some(c6), Some(v6)) = (&net.ipv6, own.subnet.v6) {
        env = env.with_ipv6(c6.network, v6.0);
    }
    env.write(&config.daemon.subnet_file)?;
    tracing::info!(path = %config.daemon.subnet_file.display(), subnet = %own.subnet, "subnet file written");
    Ok(())
}

async fn main(config: &Config, metrics: Arc<Metrics>, ready: Arc<AtomicBool>) -> Result<()> {
    // The embedded member lives as long as this function: dropping it stops the member.
    let mut embedded = None;
    // Refuse a subnet file (or its directory) others could write before touching anything.
    subnet_file::read_previous_subnet(&config.daemon.subnet_file)?;
    let explicit_tls = config.kv.client_tls()?;
    let (endpoints, tls) = if config.kv.etcd_endpoints.is_empty() {
        tracing::info!(
            client_urls = %config.kv.embedded.listen_client_urls,
            data_dir = %config.kv.embedded.data_dir.display(),
            "KV store: an embedded member (no --etcd-endpoints given; with them netd uses that \
             etcd cluster instead)"
        );
        let member = embedded::start(&config.kv.embedded).await?;
        let endpoints = member.endpoints.clone();
        let tls = config.kv.embedded.client_tls(explicit_tls)?;
        embedded = Some(member);
        (endpoints, tls)
    } else {
        tracing::info!(endpoints = ?config.kv.etcd_endpoints, "KV store: the etcd cluster at --etcd-endpoints");
        (config.kv.etcd_endpoints.clone(), explicit_tls)
    };
    let prefix = config.kv.etcd_prefix.clone();
    let creds = config.kv.credentials()?;
    let kv = retry("connecting to the KV store", || {
        Kv::connect_as(&endpoints, &prefix, creds.as_ref(), tls.as_ref())
    })
    .await;
    let net = retry("reading the network config", || kv.get_config()).await;
    tracing::info!(
        network = ?net.network4(),
        subnet_len = ?net.ipv4.as_ref().map(|c| c.subnet_len),
        ipv6_network = ?net.network6(),
        ipv6_subnet_len = ?net.ipv6.as_ref().map(|c| c.subnet_len),
        backend = net.backend.type_name(),
        "network config"
    );

    let (conn, h, _) =
        rtnetlink::new_connection().map_err(|e| Error::Kernel(format!("netlink socket: {e}")))?;
    tokio::spawn(conn);
    let underlay =
        device::choose_underlay(&h, &config.daemon.iface_choice()?, net.ipv4.is_some()).await?;
    tracing::info!(iface = %underlay.name, local = ?underlay.v4.map(|n| n.ip()), local6 = ?underlay.v6.map(|n| n.ip()), public_ip = ?config.daemon.public_ip, public_ipv6 = ?config.daemon.public_ipv6, "underlay");
    let backend = overlay::set_up(
        &h,
        &net,
        &underlay,
        config.daemon.public_ip,
        config.daemon.public_ipv6,
    )
    .await?;
    let families = Families::of(&net);

    let timing = LeaseTiming {
        ttl: Duration::from_secs(config.daemon.subnet_lease_ttl),
        renew_margin: Duration::from_secs(config.daemon.subnet_lease_renew_margin * 60),
    };
    let previous = subnet_file::read_previous_subnet(&config.daemon.subnet_file)?;
    let own = retry("acquiring a subnet lease", || {
        lease::acquire(&kv, &net, &backend.attrs, previous, timing)
    })
    .await;
    metrics.lease_acquisitions.inc();
    metrics.lease_held.set(1);
    apply_own_subnet(&h, config, &net, &backend, &underlay, &own).await?;

    let dp = dataplane(&h, &net, &backend, &underlay);
    let peers = Peers::new(
        dp,
        backend.mode.clone(),
        families,
        own.subnet,
        backend.attrs.host_ip(families.v4),
        metrics.clone(),
    );

    let (tx, mut rx) = mpsc::channel(1024);
    let watcher = tokio::spawn(watch::run(kv.clone(), net.clone(), tx, metrics.clone()));
    let mut watcher = AbortOnDrop(watcher);

    let mut nft_resync = tokio::time::interval(Duration::from_secs(config.daemon.iptables_resync));
    nft_resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    nft_resync.reset();
    let mut reconcile = tokio::time::interval(config.reconcile_interval());
    reconcile.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    reconcile.reset();
    let mut d = Running {
        config,
        kv,
        h,
        net,
        underlay,
        backend,
        timing,
        own,
        peers,
        metrics,
        ready,
        lease_ok: true,
        renew_at: tokio::time::Instant::now() + timing.renew_interval(),
        listed: false,
        written: false,
    };
    loop {
        tokio::select! {
            ev = rx.recv() => {
                let Some(ev) = ev else {
                    return Err(Error::Watcher(watcher.why_stopped().await));
                };
                d.on_event(ev).await;
            }
            _ = reconcile.tick() => d.on_reconcile_tick().await,
            _ = nft_resync.tick() => d.on_nft_resync(),
            _ = tokio::time::sleep_until(d.renew_at) => d.on_renew_due().await?,
            () = member_stopped(embedded.as_ref()) => return Err(Error::EmbeddedKv(
                "it stopped (removed from the cluster, or a storage error: see \
                 the log above); routes stay in place".into(),
            )),
        }
        d.mark_ready_once()?;
    }
}

/// The netlink dataplane for the backend's devices, owning routes inside the cluster networks.
fn dataplane(
    h: &Handle,
    net: &NetworkConfig,
    backend: &Overlay,
    underlay: &Underlay,
) -> NetlinkDataplane {
    let overlay = backend.vxlan.as_ref().map(|(_, d)| d.index);
    let dp = match net.network4() {
        Some(n) => NetlinkDataplane::new(h.clone(), overlay, underlay.index, n),
        None => NetlinkDataplane::ipv6_only(h.clone(), underlay.index),
    };
    match &net.ipv6 {
        Some(c6) => dp.with_ipv6(c6.network, backend.vxlan6.as_ref().map(|(_, d)| d.index)),
        None => dp,
    }
}

/// Resolves when the embedded member (if any) stops on its own; never without one.
async fn member_stopped(member: Option<&embedded::EmbeddedKv>) {
    match member {
        Some(m) => m.stopped().await,
        None => std::future::pending().await,
    }
}

/// The daemon's state once started.
struct Running<'a> {
    config: &'a Config,
    kv: Kv,
    h: Handle,
    net: NetworkConfig,
    underlay: Underlay,
    backend: Overlay,
    timing: LeaseTiming,
    own: OwnLease,
    peers: Peers<NetlinkDataplane>,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    /// False while the lease must be (re-)acquired; the renewal timer then re-acquires.
    lease_ok: bool,
    /// When the lease is next renewed (or re-acquired).
    renew_at: tokio::time::Instant,
    /// The first peer listing has been applied.
    listed: bool,
    /// The subnet file has been written (and /readyz turned 200).
    written: bool,
}

impl Running<'_> {
    /// Schedules an immediate re-acquisition of the subnet lease.
    fn lease_lost(&mut self, reason: &str) {
        tracing::warn!(%reason, "subnet lease lost; re-acquiring");
        self.metrics.lease_losses.inc();
        self.metrics.lease_held.set(0);
        self.lease_ok = false;
        self.renew_at = tokio::time::Instant::now();
    }

    async fn on_event(&mut self, ev: watch::PeerEvent) {
        self.listed |= matches!(ev, watch::PeerEvent::Snapshot(_));
        match self.peers.handle(ev).await {
            OwnRecord::Untouched => {}
            OwnRecord::Updated(r) if r.attrs == self.backend.attrs => self.own.lease = r.lease,
            OwnRecord::Updated(_) => self.lease_lost("own record was rewritten by someone else"),
            OwnRecord::Lost(reason) => self.lease_lost(&reason),
        }
    }

    /// Periodic: recreate a VXLAN device that vanished, restore the vtep addresses (and the
    /// blackhole routes) if they were removed, then reconcile every peer.
    async fn on_reconcile_tick(&mut self) {
        let mut recreated = false;
        for v6 in [false, true] {
            let slot = if v6 {
                &mut self.backend.vxlan6
            } else {
                &mut self.backend.vxlan
            };
            let Some((spec, dev)) = slot else { continue };
            match device::ensure_vxlan(&self.h, spec).await {
                Ok(now) if now != *dev => {
                    tracing::warn!(device = %spec.name(), "VXLAN device was recreated; re-programming");
                    *dev = now;
                    let data = Some(VxlanData {
                        vni: spec.vni,
                        vtep_mac: now.mac,
                    });
                    if v6 {
                        self.backend.attrs.backend_v6_data = data;
                    } else {
                        self.backend.attrs.backend_data = data;
                    }
                    recreated = true;
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "checking the VXLAN device failed"),
            }
        }
        if recreated {
            self.peers.replace_dataplane(dataplane(
                &self.h,
                &self.net,
                &self.backend,
                &self.underlay,
            ));
            // Publish the new VtepMAC: re-acquisition rewrites our record.
            self.lease_ok = false;
            self.renew_at = tokio::time::Instant::now();
        }
        if let Err(e) = ensure_vtep_addresses(&self.h, &self.net, &self.backend, &self.own).await {
            tracing::warn!(error = %e, "checking the vtep address failed");
        }
        if self.config.daemon.ip_blackhole_route
            && let Err(e) = ensure_blackholes(&self.h, &self.own).await
        {
            tracing::warn!(error = %e, "checking the blackhole route failed");
        }
        self.peers.reconcile(false).await;
    }

    /// Periodic (`--iptables-resync`): put netd's nftables tables back if someone removed them.
    fn on_nft_resync(&mut self) {
        if let Err(e) = masq::ensure(
            masq_scope(&self.net, &self.own),
            self.config.daemon.nft_rules(),
        ) {
            tracing::warn!(error = %e, "checking the nftables rules failed");
        }
    }

    /// The renewal timer fired: renew, or re-acquire when the lease is gone.
    async fn on_renew_due(&mut self) -> Result<()> {
        if self.lease_ok {
            match lease::renew(&self.kv, &self.own).await {
                Ok(()) => {
                    self.renew_at = tokio::time::Instant::now() + self.timing.renew_interval();
                    return Ok(());
                }
                Err(Error::LeaseLost(reason)) => self.lease_lost(&reason),
                Err(e) => {
                    tracing::warn!(error = %e, "renewing the subnet lease failed; retrying");
                    self.renew_at =
                        tokio::time::Instant::now() + self.timing.renew_interval().min(RETRY * 5);
                    return Ok(());
                }
            }
        }
        self.reacquire().await
    }

    async fn reacquire(&mut self) -> Result<()> {
        let attrs = &self.backend.attrs;
        let new = match lease::acquire(
            &self.kv,
            &self.net,
            attrs,
            Some(self.own.subnet),
            self.timing,
        )
        .await
        {
            Ok(new) => new,
            Err(e) => {
                tracing::error!(error = %e, "re-acquiring the subnet lease failed; retrying");
                self.renew_at = tokio::time::Instant::now() + RETRY * 5;
                return Ok(());
            }
        };
        self.metrics.lease_acquisitions.inc();
        self.metrics.lease_held.set(1);
        self.lease_ok = true;
        let changed = new.subnet != self.own.subnet;
        self.own = new;
        if changed {
            tracing::warn!(subnet = %self.own.subnet, "subnet changed; containers of the old subnet lose connectivity");
            self.peers.set_own_subnet(self.own.subnet);
            apply_own_subnet(
                &self.h,
                self.config,
                &self.net,
                &self.backend,
                &self.underlay,
                &self.own,
            )
            .await?;
            if self.written {
                write_subnet_file(self.config, &self.net, &self.backend, &self.own)?;
            }
        }
        self.peers.reconcile(false).await;
        self.renew_at = tokio::time::Instant::now() + self.timing.renew_interval();
        Ok(())
    }

    /// Writes the subnet file and turns ready once the first listing is applied and the lease
    /// is held.
    fn mark_ready_once(&mut self) -> Result<()> {
        if self.listed && self.lease_ok && !self.written {
            write_subnet_file(self.config, &self.net, &self.backend, &self.own)?;
            self.written = true;
            self.ready.store(true, Ordering::SeqCst);
            tracing::info!(peers = self.peers.programmed_count(), "netd ready");
            sd_notify::notify(&format!(
                "READY=1\nSTATUS=subnet {} leased, {} peers routed",
                self.own.subnet,
                self.peers.programmed_count()
            ));
        }
        Ok(())
    }
}

/// Aborts a background task when dropped (also when `run` is cancelled by shutdown).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl AbortOnDrop {
    /// Why the task ended: it retries every KV error, so only a panic (a bug) ends it.
    async fn why_stopped(&mut self) -> String {
        match (&mut self.0).await {
            Ok(()) => "it returned".into(),
            Err(e) if e.is_panic() => {
                let p = e.into_panic();
                let msg = p
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| p.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown payload".into());
                format!("it panicked: {msg}")
            }
            Err(e) => format!("it was cancelled: {e}"),
        }
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
