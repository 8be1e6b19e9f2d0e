//! The subnet lease manager: acquiring this host's subnet and keeping it.
//!
//! Acquisition, in order: this host's existing record (same PublicIP) — reused, with its KV lease
//! kept if still alive; then the subnet from the previous subnet file, if free; then a random free
//! subnet. New records are created with a compare-and-swap on `version == 0`, so two hosts never
//! get the same subnet; a lost race retries. A record without a KV lease is a reservation: only
//! the host whose PublicIP it names uses it, and it is never given a lease or taken.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::Duration;

use crate::config::NetworkConfig;
use crate::error::{Error, Result};
use crate::kv::Kv;
use crate::subnet::{LeaseAttrs, Subnet, in_allocatable_range, pick_free};

/// How many compare-and-swap races to lose before giving up for this round.
const RACE_RETRIES: u32 = 10;

/// This host's subnet record as held in the KV store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OwnLease {
    pub subnet: Subnet,
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
pub async fn acquire(
    kv: &Kv,
    config: &NetworkConfig,
    attrs: &LeaseAttrs,
    previous: Option<Subnet>,
    timing: LeaseTiming,
) -> Result<OwnLease> {
    let ttl = timing.ttl.as_secs().max(1) as i64;
    for attempt in 1..=RACE_RETRIES {
        let listing = kv.list_subnets(config).await?;
        // 1. A record that already names this host.
        let mut mine: Vec<_> = listing
            .records
            .iter()
            .filter(|r| r.attrs.public_ip == attrs.public_ip)
            .collect();
        mine.sort_by_key(|r| (Some(r.subnet) != previous, r.subnet));
        for r in mine {
            if !r.is_reservation() && !in_allocatable_range(config, r.subnet) {
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
        // 2./3. A new record: the previous subnet if free, else a random free one.
        let mut taken: BTreeSet<Ipv4Addr> =
            listing.records.iter().map(|r| r.subnet.addr()).collect();
        for e in &listing.rejected {
            if let Error::BadRecord { key, .. } = e
                && let Ok(s) = Subnet::from_key(key)
            {
                taken.insert(s.addr());
            }
        }
        let candidate = match previous {
            Some(p) if in_allocatable_range(config, p) && !taken.contains(&p.addr()) => p,
            _ => pick_free(config, &taken, &mut rand::rng())?,
        };
        let lease = kv.grant(ttl).await?;
        if kv.create_subnet(&candidate, attrs, lease).await? {
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

async fn revoke_quietly(kv: &Kv, lease: i64) {
    if let Err(e) = kv.revoke(lease).await {
        tracing::debug!(lease, error = %e, "revoking unused lease failed; it will expire");
    }
}

/// Renews the KV lease once. `Err(LeaseLost)` when the store says the lease is gone.
pub async fn renew(kv: &Kv, own: &OwnLease) -> Result<()> {
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
}
