//! KV access through the etcd v3 API only (kvstore's client, which speaks nothing else), so
//! netd runs unchanged against the embedded kvstore or a real etcd cluster.
//!
//! Keys follow flannel: `<prefix>/config` and `<prefix>/subnets/<a.b.c.d>-<len>`.

use std::path::PathBuf;
use std::time::Duration;

use kvstore::client::{Client, ConnectOptions, WatchStream, req};
use kvstore::proto::etcdserverpb::compare::CompareResult;
use kvstore::proto::etcdserverpb::{PutRequest, TxnRequest};

use crate::error::{Error, Result};
use crate::netconf::NetworkConfig;
use crate::store::{KvWatch, SubnetStore};
use crate::subnet::{LeaseAttrs, PeerRecord, SubnetKey, parse_record};

/// Default key prefix (flannel's).
pub const DEFAULT_PREFIX: &str = "/coreos.com/network";

/// etcd user/password authentication.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    // Never print the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// TLS towards the KV store, flannel's flags: `--etcd-cafile` verifies the servers,
/// `--etcd-certfile`/`--etcd-keyfile` is the client certificate servers with client-cert-auth
/// ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTls {
    pub ca_file: PathBuf,
    /// Certificate and key files, when the client presents one.
    pub identity: Option<(PathBuf, PathBuf)>,
}

impl ClientTls {
    /// Loads every file once, so a wrong path is a start-up error, not an endless retry.
    pub fn check(&self) -> Result<()> {
        self.options().map(|_| ())
    }

    fn options(&self) -> Result<kvstore::client::ClientTlsConfig> {
        let identity = self
            .identity
            .as_ref()
            .map(|(c, k)| (c.as_path(), k.as_path()));
        kvstore::tls::client_config(&self.ca_file, identity)
            .map_err(|e| Error::Usage(e.to_string()))
    }
}

/// A connected KV client plus the key prefix.
#[derive(Clone)]
pub struct Kv {
    client: Client,
    prefix: String,
}

/// One listing of `<prefix>/subnets/`.
#[derive(Debug, Default)]
pub struct Listing {
    /// Records that parsed and fit the config.
    pub records: Vec<PeerRecord>,
    /// Records that did not, with the reason (they are ignored, never programmed).
    pub rejected: Vec<Error>,
    /// Store revision the listing was taken at; watch from `revision + 1`.
    pub revision: i64,
}

impl Kv {
    /// Connects to the endpoints without authentication.
    pub async fn connect(endpoints: &[String], prefix: &str) -> Result<Self> {
        Self::connect_as(endpoints, prefix, None, None).await
    }

    /// Connects to the endpoints, as `creds` when given (etcd's user/password auth), over TLS
    /// when `tls` is given (then the endpoints are https://). Request and connect timeouts keep
    /// a dead store from blocking netd forever; HTTP/2 keep-alive pings notice a silently
    /// dropped connection.
    pub async fn connect_as(
        endpoints: &[String],
        prefix: &str,
        creds: Option<&Credentials>,
        tls: Option<&ClientTls>,
    ) -> Result<Self> {
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(3))
            .with_timeout(Duration::from_secs(5))
            // etcd refuses pings more often than every 5 s (--grpc-keepalive-min-time).
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5));
        if let Some(t) = tls {
            opts = opts.with_tls(t.options()?);
        }
        if let Some(c) = creds {
            opts = opts.with_user(c.username.clone(), c.password.clone());
        }
        let client = Client::connect(endpoints, Some(opts)).await?;
        Ok(Kv {
            client,
            prefix: prefix.trim_end_matches('/').to_string(),
        })
    }

    /// `<prefix>/config`
    pub fn config_key(&self) -> String {
        format!("{}/config", self.prefix)
    }

    /// `<prefix>/subnets/`
    pub fn subnets_prefix(&self) -> String {
        format!("{}/subnets/", self.prefix)
    }

    /// `<prefix>/subnets/<key>`
    pub fn subnet_key(&self, subnet: &SubnetKey) -> String {
        format!("{}{}", self.subnets_prefix(), subnet.key())
    }

    /// The raw stored config text, if any.
    pub async fn get_config_text(&self) -> Result<Option<String>> {
        let resp = self.client.get(self.config_key()).await?;
        match resp.kvs.first() {
            None => Ok(None),
            Some(kv) => Ok(Some(String::from_utf8_lossy(&kv.value).into_owned())),
        }
    }

    /// Reads and validates the network config.
    pub async fn get_config(&self) -> Result<NetworkConfig> {
        let key = self.config_key();
        let text = self
            .get_config_text()
            .await?
            .ok_or_else(|| Error::ConfigMissing { key: key.clone() })?;
        let cfg =
            NetworkConfig::parse(&text).map_err(|reason| Error::ConfigInvalid { key, reason })?;
        for w in crate::netconf::warnings(&text) {
            tracing::warn!("network config: {w}");
        }
        Ok(cfg)
    }

    /// Validates and stores the network config.
    pub async fn put_config(&self, text: &str) -> Result<NetworkConfig> {
        let key = self.config_key();
        let cfg = NetworkConfig::parse(text).map_err(|reason| Error::ConfigInvalid {
            key: key.clone(),
            reason,
        })?;
        self.client.put_kv(key, text).await?;
        Ok(cfg)
    }

    /// Raw listing for the `leases` subcommand: key suffix, value, lease id.
    pub async fn list_raw(&self) -> Result<Vec<(String, Vec<u8>, i64)>> {
        let prefix = self.subnets_prefix();
        let resp = self.client.get_prefix(&prefix).await?;
        Ok(resp
            .kvs
            .iter()
            .map(|kv| {
                let key = String::from_utf8_lossy(&kv.key);
                let suffix = key.strip_prefix(&prefix).unwrap_or(&key).to_string();
                (suffix, kv.value.to_vec(), kv.lease)
            })
            .collect())
    }

    /// Runs a compare-and-swap; true when the comparison held and the write happened.
    async fn succeeded(&self, txn: TxnRequest) -> Result<bool> {
        Ok(self.client.txn(txn).await?.succeeded)
    }

    /// Remaining TTL of a lease (−1 when it does not exist).
    pub async fn time_to_live(&self, id: i64) -> Result<i64> {
        Ok(self.client.lease_time_to_live(id, false).await?.ttl)
    }

    /// Opens a watch on `<prefix>/subnets/` from `start_revision`.
    pub async fn watch_subnets(&self, start_revision: i64) -> Result<WatchStream> {
        let mut create = req::watch_prefix(self.subnets_prefix(), start_revision);
        create.progress_notify = true;
        Ok(self.client.watch(create).await?)
    }
}

/// A put of `key = value` attached to `lease` (0: no lease, a reservation).
fn put_leased(key: &str, value: &[u8], lease: i64) -> PutRequest {
    let mut p = req::put(key, value);
    p.lease = lease;
    p
}

/// The store seam over the etcd v3 API (see [`crate::store`]).
impl SubnetStore for Kv {
    /// Lists every subnet record, checked against `config`.
    async fn list_subnets(&self, config: &NetworkConfig) -> Result<Listing> {
        let prefix = self.subnets_prefix();
        let resp = self.client.get_prefix(&prefix).await?;
        let revision = resp.header.map(|h| h.revision).unwrap_or(0);
        let mut listing = Listing {
            revision,
            ..Listing::default()
        };
        for kv in &resp.kvs {
            let key = String::from_utf8_lossy(&kv.key);
            let suffix = key.strip_prefix(&prefix).unwrap_or(&key);
            match parse_record(
                config,
                suffix,
                &kv.value,
                kv.lease,
                kv.create_revision,
                kv.mod_revision,
            ) {
                Ok(r) => listing.records.push(r),
                Err(e) => listing.rejected.push(e),
            }
        }
        Ok(listing)
    }

    /// Creates a record only if the key does not exist (version == 0). Returns false when
    /// another host got there first.
    async fn create_subnet(
        &self,
        subnet: &SubnetKey,
        attrs: &LeaseAttrs,
        lease: i64,
    ) -> Result<bool> {
        let key = self.subnet_key(subnet);
        let value = serde_json::to_vec(attrs)?;
        let txn = req::txn(
            [req::version_is(&key, CompareResult::Equal, 0)],
            [req::op_put(put_leased(&key, &value, lease))],
            [],
        );
        self.succeeded(txn).await
    }

    /// Rewrites a record only if it was not changed since `mod_revision`. Returns false otherwise.
    async fn update_subnet(
        &self,
        subnet: &SubnetKey,
        attrs: &LeaseAttrs,
        lease: i64,
        mod_revision: i64,
    ) -> Result<bool> {
        let key = self.subnet_key(subnet);
        let value = serde_json::to_vec(attrs)?;
        let txn = req::txn(
            [req::mod_revision_is(
                &key,
                CompareResult::Equal,
                mod_revision,
            )],
            [req::op_put(put_leased(&key, &value, lease))],
            [],
        );
        self.succeeded(txn).await
    }

    /// Deletes a record if it was not changed since `mod_revision`.
    async fn delete_subnet_if(&self, subnet: &SubnetKey, mod_revision: i64) -> Result<bool> {
        let key = self.subnet_key(subnet);
        let txn = req::txn(
            [req::mod_revision_is(
                &key,
                CompareResult::Equal,
                mod_revision,
            )],
            [req::op_delete(req::delete(&key))],
            [],
        );
        self.succeeded(txn).await
    }

    /// Grants a KV lease of `ttl` seconds.
    async fn grant(&self, ttl: i64) -> Result<i64> {
        Ok(self.client.lease_grant(ttl).await?.id)
    }

    /// Revokes a lease (best effort callers ignore the error).
    async fn revoke(&self, id: i64) -> Result<()> {
        self.client.lease_revoke(id).await?;
        Ok(())
    }

    /// One keep-alive round trip; returns the remaining TTL (≤ 0: the lease is gone).
    async fn keep_alive_once(&self, id: i64) -> Result<i64> {
        Ok(self.client.lease_keep_alive_once(id).await?)
    }

    type Watch = KvWatch;

    async fn watch_subnets(&self, start_revision: i64) -> Result<KvWatch> {
        Ok(KvWatch {
            stream: Kv::watch_subnets(self, start_revision).await?,
            prefix: self.subnets_prefix(),
        })
    }
}
