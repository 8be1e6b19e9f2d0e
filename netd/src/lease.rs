//! The subnet lease manager: acquiring this host's subnet and keeping it.
//!
//! Acquisition, in order: this host's existing record (same PublicIP) — reused, with its KV lease
//! kept if still alive; then the subnet from the previous subnet file, if free; then a random free
//! subnet. New records are created with a compare-and-swap on `version == 0`, so two hosts never
//! get the same subnet; a lost race retries. A record without a KV lease is a reservation: only
//! the host whose PublicIP it names uses it, and it is never given a lease or taken.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::netconf::NetworkConfig;
use crate::store::SubnetStore;
use crate::subnet::{LeaseAttrs, SubnetKey, key_fits, pick_free, pick_free6};

/// How many compare-and-swap races to lose before giving up for this round.
const RACE_RETRIES: u32 = 10;

/// This host's subnet record as held in the KV store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OwnLease {
    pub subnet: SubnetKey,
    /// KV lease id; 0 for a reservation (nothing to keep alive).
    pub lease: i64,
}

/// Lease timing: the KV lease TTL and how long before expiry it is renewed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTiming {
    pub ttl: Duration,
    pub renew_margin: Duration,
}

impl LeaseTiming {
    /// How long to wait between keep-alives: expiry minus the margin (flannel's rule), or a third
    /// of the TTL when the margin is larger than the TTL (short test TTLs).
    pub fn renew_interval(&self) -> Duration {
        let every = if self.ttl > self.renew_margin {
            self.ttl - self.renew_margin
        } else {
            self.ttl / 3
        };
        every.max(Duration::from_secs(1))
    }
}

/// Acquires (or re-confirms) this host's subnet.
pub async fn acquire<S: SubnetStore>(
    kv: &S,
    config: &NetworkConfig,
    attrs: &LeaseAttrs,
    previous: Option<SubnetKey>,
    timing: LeaseTiming,
) -> Result<OwnLease> {
    let ttl = timing.ttl.as_secs().max(1) as i64;
    for attempt in 1..=RACE_RETRIES {
        let listing = kv.list_subnets(config).await?;
        // 1. A record that already names this host (by PublicIP; by PublicIPv6 in an
        // IPv6-only network, where every PublicIP is 0.0.0.0).
        let ipv4 = config.ipv4.is_some();
        let mut mine: Vec<_> = listing
            .records
            .iter()
            .filter(|r| r.attrs.same_host(attrs, ipv4))
            .collect();
        mine.sort_by_key(|r| (Some(r.subnet) != previous, r.subnet));
        for r in mine {
            if !r.is_reservation() && !key_fits(config, r.subnet) {
                tracing::warn!(subnet = %r.subnet, "own record does not fit the config; deleting it");
                kv.delete_subnet_if(&r.subnet, r.mod_revision).await?;
                continue;
            }
            if r.is_reservation() {
                if r.attrs != *attrs
                    && !kv
                        .update_subnet(&r.subnet, attrs, 0, r.mod_revision)
                        .await?
                {
                    break; // changed under us: list again
                }
                tracing::info!(subnet = %r.subnet, "using reserved subnet");
                if !key_fits(config, r.subnet) {
                    tracing::warn!(
                        subnet = %r.subnet,
                        "the reservation does not fit the network config (e.g. it has no IPv6 \
                         subnet in a dual-stack network); it is used as it is"
                    );
                }
                return Ok(OwnLease {
                    subnet: r.subnet,
                    lease: 0,
                });
            }
            // Reuse a live lease; the keep-alive also restores its full TTL, which an old lease
            // may be far from.
            if r.attrs == *attrs && kv.keep_alive_once(r.lease).await? > 0 {
                tracing::info!(subnet = %r.subnet, lease = r.lease, "reusing existing subnet lease");
                return Ok(OwnLease {
                    subnet: r.subnet,
                    lease: r.lease,
                });
            }
            let lease = kv.grant(ttl).await?;
            if kv
                .update_subnet(&r.subnet, attrs, lease, r.mod_revision)
                .await?
            {
                tracing::info!(subnet = %r.subnet, lease, "renewed own subnet record");
                return Ok(OwnLease {
                    subnet: r.subnet,
                    lease,
                });
            }
            revoke_quietly(kv, lease).await;
            break;
        }
        // 2./3. A new record: the previous subnets if free, else random free ones.
        let mut keys: Vec<SubnetKey> = listing.records.iter().map(|r| r.subnet).collect();
        for e in &listing.rejected {
            if let Error::BadRecord { key, .. } = e
                && let Ok(s) = SubnetKey::from_key(key)
            {
                keys.push(s);
            }
        }
        let taken: BTreeSet<Ipv4Addr> =
            keys.iter().filter_map(|k| k.v4).map(|s| s.addr()).collect();
        let taken6: BTreeSet<Ipv6Addr> =
            keys.iter().filter_map(|k| k.v6).map(|s| s.addr()).collect();
        let candidate = match previous {
            Some(p)
                if key_fits(config, p)
                    && p.v4.is_none_or(|s| !taken.contains(&s.addr()))
                    && p.v6.is_none_or(|s| !taken6.contains(&s.addr())) =>
            {
                p
            }
            _ => {
                let mut rng = rand::rng();
                SubnetKey {
                    v4: match &config.ipv4 {
                        Some(c4) => Some(pick_free(c4, &taken, &mut rng)?),
                        None => None,
                    },
                    v6: match &config.ipv6 {
                        Some(c6) => Some(pick_free6(c6, &taken6, &mut rng)?),
                        None => None,
                    },
                }
            }
        };
        let lease = kv.grant(ttl).await?;
        if kv.create_subnet(&candidate, attrs, lease).await? {
            if config.ipv6.is_some() && lost_to_an_older_record(kv, config, &candidate).await? {
                revoke_quietly(kv, lease).await;
                tracing::info!(subnet = %candidate, attempt, "an older record holds one of these subnets; retrying");
                continue;
            }
            tracing::info!(subnet = %candidate, lease, "acquired new subnet lease");
            return Ok(OwnLease {
                subnet: candidate,
                lease,
            });
        }
        revoke_quietly(kv, lease).await;
        tracing::info!(subnet = %candidate, attempt, "subnet taken by another host meanwhile; retrying");
    }
    Err(Error::LeaseRace {
        attempts: RACE_RETRIES,
    })
}

/// In a dual-stack network a record's key names two subnets, so the create-if-absent on the
/// key cannot stop two hosts from taking the same IPv4 or the same IPv6 subnet under two keys
/// (flanneld has that race). After creating `mine`, the listing decides: when an older record
/// (lower create revision) shares one of its subnets, `mine` is deleted and this host tries
/// again. Both hosts look after their own create, so exactly the older record stays.
async fn lost_to_an_older_record<S: SubnetStore>(
    kv: &S,
    config: &NetworkConfig,
    mine: &SubnetKey,
) -> Result<bool> {
    let listing = kv.list_subnets(config).await?;
    let Some(own) = listing.records.iter().find(|r| r.subnet == *mine) else {
        // Gone already (deleted, or its lease revoked): not ours to keep.
        return Ok(true);
    };
    let older = listing.records.iter().any(|r| {
        r.subnet != *mine
            && ((r.subnet.v4.is_some() && r.subnet.v4 == mine.v4)
                || (r.subnet.v6.is_some() && r.subnet.v6 == mine.v6))
            && r.create_revision < own.create_revision
    });
    if older {
        kv.delete_subnet_if(mine, own.mod_revision).await?;
    }
    Ok(older)
}

async fn revoke_quietly<S: SubnetStore>(kv: &S, lease: i64) {
    if let Err(e) = kv.revoke(lease).await {
        tracing::debug!(lease, error = %e, "revoking unused lease failed; it will expire");
    }
}

/// Renews the KV lease once. `Err(LeaseLost)` when the store says the lease is gone.
pub async fn renew<S: SubnetStore>(kv: &S, own: &OwnLease) -> Result<()> {
    if own.lease == 0 {
        return Ok(());
    }
    let ttl = kv.keep_alive_once(own.lease).await?;
    if ttl <= 0 {
        return Err(Error::LeaseLost(format!(
            "KV lease {:x} for {} expired or was revoked",
            own.lease, own.subnet
        )));
    }
    tracing::debug!(subnet = %own.subnet, ttl, "subnet lease renewed");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renew_interval_follows_margin() {
        let t = LeaseTiming {
            ttl: Duration::from_secs(86400),
            renew_margin: Duration::from_secs(3600),
        };
        assert_eq!(t.renew_interval(), Duration::from_secs(82800));
        let short = LeaseTiming {
            ttl: Duration::from_secs(9),
            renew_margin: Duration::from_secs(3600),
        };
        assert_eq!(short.renew_interval(), Duration::from_secs(3));
    }

    use std::sync::atomic::{AtomicBool, Ordering};

    use crate::kv::Listing;
    use crate::store::MemoryStore;
    use crate::subnet::{MacAddr, VxlanData};

    const TIMING: LeaseTiming = LeaseTiming {
        ttl: Duration::from_secs(60),
        renew_margin: Duration::from_secs(10),
    };

    fn config() -> NetworkConfig {
        NetworkConfig::parse(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#)
            .expect("config")
    }

    fn host(n: u8) -> LeaseAttrs {
        LeaseAttrs {
            public_ip: Ipv4Addr::new(192, 0, 2, n),
            public_ipv6: None,
            backend_type: "vxlan".into(),
            backend_data: Some(VxlanData {
                vni: 1,
                vtep_mac: MacAddr([2, 0, 0, 0, 0, n]),
            }),
            backend_v6_data: None,
        }
    }

    #[tokio::test]
    async fn reuse_after_restart_keeps_subnet_and_lease() {
        let kv = MemoryStore::default();
        let first = acquire(&kv, &config(), &host(1), None, TIMING)
            .await
            .expect("acquire");
        assert_ne!(first.lease, 0);
        // netd restarts (no previous subnet file): its own live record is reused as it is.
        let again = acquire(&kv, &config(), &host(1), None, TIMING)
            .await
            .expect("again");
        assert_eq!(again, first);
        assert_eq!(kv.keys().len(), 1);
        assert_eq!(kv.live_leases(), vec![first.lease]);
        // Another host never gets the same subnet.
        let other = acquire(&kv, &config(), &host(2), Some(first.subnet), TIMING)
            .await
            .expect("other host");
        assert_ne!(other.subnet, first.subnet);
    }

    #[tokio::test]
    async fn reservation_is_honoured_for_its_host_only() {
        let kv = MemoryStore::default();
        let attrs = serde_json::to_string(&host(1)).expect("json");
        kv.put_raw("10.244.7.0-24", &attrs, 0);
        let mine = acquire(&kv, &config(), &host(1), None, TIMING)
            .await
            .expect("acquire");
        assert_eq!(mine.subnet.key(), "10.244.7.0-24");
        assert_eq!(mine.lease, 0, "a reservation gets no lease");
        // Another host asking for that subnet gets another one.
        let other = acquire(&kv, &config(), &host(2), Some(mine.subnet), TIMING)
            .await
            .expect("other");
        assert_ne!(other.subnet, mine.subnet);
        renew(&kv, &mine)
            .await
            .expect("nothing to renew on a reservation");
    }

    #[tokio::test]
    async fn lost_lease_is_reported_then_reacquired_with_the_same_subnet() {
        let kv = MemoryStore::default();
        let own = acquire(&kv, &config(), &host(1), None, TIMING)
            .await
            .expect("acquire");
        renew(&kv, &own).await.expect("renew while alive");
        kv.expire(own.lease);
        assert!(kv.keys().is_empty(), "the record went with its lease");
        let lost = renew(&kv, &own).await.expect_err("lease gone");
        assert!(matches!(lost, Error::LeaseLost(_)), "{lost}");
        let back = acquire(&kv, &config(), &host(1), Some(own.subnet), TIMING)
            .await
            .expect("re-acquire");
        assert_eq!(back.subnet, own.subnet, "the previous subnet, free again");
        assert_ne!(back.lease, own.lease);
    }

    /// A store where another host writes a record (`theirs`, given this host's candidate key)
    /// just before this host's first create.
    struct RaceOnce<F> {
        inner: MemoryStore,
        raced: AtomicBool,
        theirs: F,
    }

    impl<F: Fn(&SubnetKey) -> (SubnetKey, LeaseAttrs)> RaceOnce<F> {
        fn new(theirs: F) -> Self {
            RaceOnce {
                inner: MemoryStore::default(),
                raced: AtomicBool::new(false),
                theirs,
            }
        }
    }

    impl<F: Fn(&SubnetKey) -> (SubnetKey, LeaseAttrs) + Send + Sync> SubnetStore for RaceOnce<F> {
        async fn list_subnets(&self, config: &NetworkConfig) -> Result<Listing> {
            self.inner.list_subnets(config).await
        }
        async fn create_subnet(
            &self,
            s: &SubnetKey,
            attrs: &LeaseAttrs,
            lease: i64,
        ) -> Result<bool> {
            if !self.raced.swap(true, Ordering::SeqCst) {
                let (key, theirs) = (self.theirs)(s);
                let theirs = serde_json::to_string(&theirs).expect("json");
                self.inner.put_raw(&key.key(), &theirs, 0);
            }
            self.inner.create_subnet(s, attrs, lease).await
        }
        async fn update_subnet(
            &self,
            s: &SubnetKey,
            a: &LeaseAttrs,
            l: i64,
            m: i64,
        ) -> Result<bool> {
            self.inner.update_subnet(s, a, l, m).await
        }
        async fn delete_subnet_if(&self, s: &SubnetKey, m: i64) -> Result<bool> {
            self.inner.delete_subnet_if(s, m).await
        }
        async fn grant(&self, ttl: i64) -> Result<i64> {
            self.inner.grant(ttl).await
        }
        async fn revoke(&self, id: i64) -> Result<()> {
            self.inner.revoke(id).await
        }
        async fn keep_alive_once(&self, id: i64) -> Result<i64> {
            self.inner.keep_alive_once(id).await
        }
        type Watch = crate::store::MemoryWatch;
        async fn watch_subnets(&self, start: i64) -> Result<Self::Watch> {
            self.inner.watch_subnets(start).await
        }
    }

    #[tokio::test]
    async fn conflict_on_create_retries_with_another_subnet() {
        // Another host creates the same subnet just before this one does.
        let kv = RaceOnce::new(|s: &SubnetKey| (*s, host(9)));
        let wanted = SubnetKey::from_key("10.244.42.0-24").expect("subnet");
        let own = acquire(&kv, &config(), &host(1), Some(wanted), TIMING)
            .await
            .expect("acquire after losing a race");
        assert_ne!(own.subnet, wanted, "the other host kept it");
        let keys = kv.inner.keys();
        assert_eq!(keys.len(), 2, "{keys:?}");
        // The lease granted for the lost attempt was revoked, not leaked.
        assert_eq!(kv.inner.live_leases(), vec![own.lease]);
    }

    /// Dual-stack: each host gets an IPv4 and an IPv6 subnet, distinct per family; an
    /// IPv4-only record of this host left from before IPv6 was turned on is replaced (flannel's
    /// compatibility rule), and the previous subnets from the subnet file are reused.
    #[tokio::test]
    async fn dual_stack_leases_carry_both_families() {
        let net = NetworkConfig::parse(
            r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56"}"#,
        )
        .expect("config");
        let kv = MemoryStore::default();
        let host = |n: u8| LeaseAttrs {
            public_ipv6: Some(std::net::Ipv6Addr::new(
                0x2001,
                0xdb8,
                0,
                0,
                0,
                0,
                0,
                n.into(),
            )),
            backend_v6_data: Some(VxlanData {
                vni: 1,
                vtep_mac: MacAddr([2, 0, 0, 0, 6, n]),
            }),
            ..host(n)
        };
        // Host 1 held an IPv4-only record.
        let old = SubnetKey::from_key("10.244.7.0-24").expect("key");
        let lease = kv.grant(60).await.expect("grant");
        assert!(
            kv.create_subnet(&old, &host(1), lease)
                .await
                .expect("create")
        );
        let a = acquire(&kv, &net, &host(1), None, TIMING)
            .await
            .expect("acquire");
        let b = acquire(&kv, &net, &host(2), None, TIMING)
            .await
            .expect("acquire");
        let (a6, b6) = (a.subnet.v6.expect("v6"), b.subnet.v6.expect("v6"));
        assert_ne!(a6, b6);
        assert_ne!(a.subnet.v4, b.subnet.v4);
        let c6 = net.ipv6.as_ref().expect("v6 config");
        assert!(crate::subnet::in_allocatable_range6(c6, a6));
        let keys = kv.keys();
        assert_eq!(keys.len(), 2, "the IPv4-only record is gone: {keys:?}");
        assert!(keys.iter().all(|(k, _)| k.contains('&')), "{keys:?}");
        // After the records are gone, the previous subnets come back.
        let listing = kv.list_subnets(&net).await.expect("list");
        let rec = listing
            .records
            .iter()
            .find(|r| r.subnet == a.subnet)
            .expect("a's record");
        assert!(
            kv.delete_subnet_if(&a.subnet, rec.mod_revision)
                .await
                .expect("delete")
        );
        let keys = kv.keys();
        assert_eq!(keys.len(), 1, "{keys:?}");
        let again = acquire(&kv, &net, &host(1), Some(a.subnet), TIMING)
            .await
            .expect("acquire");
        assert_eq!(again.subnet, a.subnet);
    }

    /// Another host takes the same IPv6 subnet under another key (another IPv4 subnet) just
    /// before this one creates its record: the create succeeds, and this host gives the subnet
    /// up to the older record and takes another.
    #[tokio::test]
    async fn dual_stack_race_on_the_ipv6_subnet_keeps_the_older_record() {
        let net = NetworkConfig::parse(
            r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56"}"#,
        )
        .expect("config");
        // Another host takes the same IPv6 subnet, with another IPv4 subnet, just before.
        let kv = RaceOnce::new(|s: &SubnetKey| {
            let other = SubnetKey {
                v4: Some(
                    crate::subnet::Subnet::new(Ipv4Addr::new(10, 244, 250, 0), 24).expect("subnet"),
                ),
                v6: s.v6,
            };
            let theirs = LeaseAttrs {
                public_ipv6: Some("2001:db8::9".parse().expect("ip")),
                backend_v6_data: host(9).backend_data,
                ..host(9)
            };
            (other, theirs)
        });
        let attrs = LeaseAttrs {
            public_ipv6: Some("2001:db8::1".parse().expect("ip")),
            backend_v6_data: host(1).backend_data,
            ..host(1)
        };
        let own = acquire(&kv, &net, &attrs, None, TIMING)
            .await
            .expect("acquire after losing the IPv6 subnet");
        let listing = kv.list_subnets(&net).await.expect("list");
        assert_eq!(listing.records.len(), 2, "{:?}", listing.records);
        let v6s: BTreeSet<_> = listing.records.iter().map(|r| r.subnet.v6).collect();
        assert_eq!(
            v6s.len(),
            2,
            "two distinct IPv6 subnets: {:?}",
            listing.records
        );
        assert!(listing.records.iter().any(|r| r.subnet == own.subnet));
        // The lease of the record given up was revoked, not leaked.
        assert_eq!(kv.inner.live_leases(), vec![own.lease]);
    }

    /// IPv6-only (`"EnableIPv4": false`): records keyed `0.0.0.0-0&<v6>-<len>` with PublicIP
    /// 0.0.0.0, as flanneld writes them; hosts are told apart by PublicIPv6, so a restart
    /// finds its own record and two hosts never share one.
    #[tokio::test]
    async fn ipv6_only_hosts_are_known_by_their_public_ipv6() {
        let net = NetworkConfig::parse(
            r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10:244::/56"}"#,
        )
        .expect("config");
        let v6host = |n: u8| LeaseAttrs {
            public_ip: Ipv4Addr::UNSPECIFIED,
            public_ipv6: Some(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, n.into())),
            backend_type: "vxlan".into(),
            backend_data: None,
            backend_v6_data: Some(VxlanData {
                vni: 1,
                vtep_mac: MacAddr([2, 0, 0, 0, 6, n]),
            }),
        };
        let kv = MemoryStore::default();
        let a = acquire(&kv, &net, &v6host(1), None, TIMING)
            .await
            .expect("acquire");
        let b = acquire(&kv, &net, &v6host(2), None, TIMING)
            .await
            .expect("acquire");
        assert_eq!((a.subnet.v4, b.subnet.v4), (None, None));
        assert_ne!(a.subnet.v6, b.subnet.v6);
        let keys = kv.keys();
        assert_eq!(keys.len(), 2, "{keys:?}");
        assert!(
            keys.iter()
                .all(|(k, _)| k.starts_with("0.0.0.0-0&fd00:10:244:")),
            "{keys:?}"
        );
        let listing = kv.list_subnets(&net).await.expect("list");
        assert!(listing.rejected.is_empty(), "{:?}", listing.rejected);
        // A restart of host 2 (no subnet file) finds its own record, not host 1's.
        let again = acquire(&kv, &net, &v6host(2), None, TIMING)
            .await
            .expect("again");
        assert_eq!(again, b);
        assert_eq!(kv.keys().len(), 2);
    }
}
