//! The embedded KV member: with no `--etcd-endpoints`, netd runs a kvstore member in-process
//! and talks to it through the same etcd v3 client it uses for an external cluster, so there
//! is one code path for both. Other hosts can use this member as a plain etcd endpoint. The
//! `--kv-*` flags are etcd's member flags: one member alone, or several netd daemons forming
//! one Raft cluster (`--kv-initial-cluster` naming every member). The `--kv-*` TLS flags are
//! etcd's member TLS flags; netd then reaches its member over TLS too.

use std::path::PathBuf;

use kvstore::config::defaults;

use crate::error::{Error, Result};
use crate::kv::ClientTls;

/// History the embedded member keeps when it compacts by itself (`--kv-auto-compaction-*`,
/// periodic mode). netd's peer watcher resumes a broken watch from the revision after the last
/// one it saw, and re-lists everything at least every 5 minutes ([`crate::watch`]), so the
/// oldest revision it ever resumes from is about 5 minutes plus its reconnect backoff (up to 5
/// s) old. One hour covers that twelve times over, so a resume never finds its revision
/// compacted while the store runs (a compacted one only costs a re-list), and bounds the
/// member's in-memory history to between one and two hours of writes.
pub const AUTO_COMPACTION_RETENTION: &str = "1h";

/// The `--kv-*` flags, named after etcd's member flags; their defaults are kvstore's
/// ([`kvstore::config::defaults`]), and every member setting without a flag here is kvstore's
/// default too ([`EmbeddedKvArgs::kv_config`]).
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct EmbeddedKvArgs {
    /// Member name of the embedded KV store (etcd's --name).
    #[arg(long = "kv-name", env = "NETD_KV_NAME", default_value = defaults::NAME)]
    pub name: String,
    /// Initial cluster of the embedded store: name=peer-url,... (etcd's --initial-cluster).
    #[arg(long = "kv-initial-cluster", env = "NETD_KV_INITIAL_CLUSTER")]
    pub initial_cluster: Option<String>,
    /// `new` to bootstrap the cluster of --kv-initial-cluster, `existing` to join a running one
    /// after `etcdctl member add` (etcd's --initial-cluster-state).
    #[arg(long = "kv-initial-cluster-state", env = "NETD_KV_INITIAL_CLUSTER_STATE",
          default_value = defaults::INITIAL_CLUSTER_STATE, value_parser = ["new", "existing"])]
    pub initial_cluster_state: String,
    /// Token that keeps this cluster's ids apart from another cluster started from the same
    /// --kv-initial-cluster (etcd's --initial-cluster-token).
    #[arg(
        long = "kv-initial-cluster-token",
        env = "NETD_KV_INITIAL_CLUSTER_TOKEN",
        default_value = defaults::INITIAL_CLUSTER_TOKEN
    )]
    pub initial_cluster_token: String,
    /// Peer URLs the other members reach this one at; default: --kv-listen-peer-urls (etcd's
    /// --initial-advertise-peer-urls).
    #[arg(
        long = "kv-initial-advertise-peer-urls",
        env = "NETD_KV_INITIAL_ADVERTISE_PEER_URLS"
    )]
    pub initial_advertise_peer_urls: Option<String>,
    /// Client URLs other hosts (and the other members' netd) reach this member at; default:
    /// --kv-listen-client-urls (etcd's --advertise-client-urls).
    #[arg(
        long = "kv-advertise-client-urls",
        env = "NETD_KV_ADVERTISE_CLIENT_URLS"
    )]
    pub advertise_client_urls: Option<String>,
    /// Peer URLs the embedded member listens on (etcd's --listen-peer-urls).
    #[arg(
        long = "kv-listen-peer-urls",
        env = "NETD_KV_LISTEN_PEER_URLS",
        default_value = defaults::LISTEN_PEER_URLS
    )]
    pub listen_peer_urls: String,
    /// Client URLs the embedded member serves the etcd v3 API on (etcd's --listen-client-urls).
    #[arg(
        long = "kv-listen-client-urls",
        env = "NETD_KV_LISTEN_CLIENT_URLS",
        default_value = defaults::LISTEN_CLIENT_URLS
    )]
    pub listen_client_urls: String,
    /// Data directory of the embedded member (etcd's --data-dir).
    #[arg(
        long = "kv-data-dir",
        env = "NETD_KV_DATA_DIR",
        default_value = "/var/lib/netd/kv"
    )]
    pub data_dir: std::path::PathBuf,
    /// Certificate (PEM) the member serves on https:// client URLs (etcd's --cert-file).
    #[arg(long = "kv-cert-file", env = "NETD_KV_CERT_FILE")]
    pub cert_file: Option<PathBuf>,
    /// Private key (PEM) of --kv-cert-file (etcd's --key-file).
    #[arg(long = "kv-key-file", env = "NETD_KV_KEY_FILE")]
    pub key_file: Option<PathBuf>,
    /// CA (PEM) client certificates must chain to; once set, clients need one (etcd's
    /// --trusted-ca-file).
    #[arg(long = "kv-trusted-ca-file", env = "NETD_KV_TRUSTED_CA_FILE")]
    pub trusted_ca_file: Option<PathBuf>,
    /// Refuse clients without a certificate from --kv-trusted-ca-file (etcd's
    /// --client-cert-auth).
    #[arg(long = "kv-client-cert-auth", env = "NETD_KV_CLIENT_CERT_AUTH",
          num_args = 0..=1, require_equals = true, default_missing_value = "true",
          default_value_t = false, action = clap::ArgAction::Set)]
    pub client_cert_auth: bool,
    /// Certificate (PEM) for https:// peer URLs (etcd's --peer-cert-file).
    #[arg(long = "kv-peer-cert-file", env = "NETD_KV_PEER_CERT_FILE")]
    pub peer_cert_file: Option<PathBuf>,
    /// Private key (PEM) of --kv-peer-cert-file (etcd's --peer-key-file).
    #[arg(long = "kv-peer-key-file", env = "NETD_KV_PEER_KEY_FILE")]
    pub peer_key_file: Option<PathBuf>,
    /// CA (PEM) other members' certificates must chain to (etcd's --peer-trusted-ca-file).
    #[arg(long = "kv-peer-trusted-ca-file", env = "NETD_KV_PEER_TRUSTED_CA_FILE")]
    pub peer_trusted_ca_file: Option<PathBuf>,
    /// Refuse members without a certificate from --kv-peer-trusted-ca-file (etcd's
    /// --peer-client-cert-auth).
    #[arg(long = "kv-peer-client-cert-auth", env = "NETD_KV_PEER_CLIENT_CERT_AUTH",
          num_args = 0..=1, require_equals = true, default_missing_value = "true",
          default_value_t = false, action = clap::ArgAction::Set)]
    pub peer_client_cert_auth: bool,
    /// How --kv-auto-compaction-retention is read: periodic (a duration) or revision (etcd's
    /// --auto-compaction-mode).
    #[arg(long = "kv-auto-compaction-mode", env = "NETD_KV_AUTO_COMPACTION_MODE",
          default_value = defaults::AUTO_COMPACTION_MODE)]
    pub auto_compaction_mode: String,
    /// History the embedded member keeps when it compacts by itself (hours when a bare number;
    /// 0 turns it off); the default covers netd's own watch resumption with a wide margin
    /// (etcd's --auto-compaction-retention, whose default is off).
    #[arg(long = "kv-auto-compaction-retention", env = "NETD_KV_AUTO_COMPACTION_RETENTION",
          default_value = AUTO_COMPACTION_RETENTION, allow_hyphen_values = true)]
    pub auto_compaction_retention: String,
}

/// A running embedded member. Dropping it stops the member.
///
/// netd's own client talks to this member only, also in a multi-member cluster: the member
/// answers whenever the cluster has a quorum this host can reach (it forwards to the leader),
/// and a host that cannot reach a quorum through its member cannot through the others' client
/// URLs either. The etcd client also balances over all of its endpoints, failing a share of
/// requests while one of them is down, which a single local endpoint avoids.
pub struct EmbeddedKv {
    /// Client endpoints netd connects to.
    pub endpoints: Vec<String>,
    /// The member's name, to tell it apart from the other members in the member list.
    pub name: String,
    _server: kvstore::Server,
}

impl EmbeddedKv {
    /// Resolves when the member stops on its own: removed from the cluster, or a storage error.
    pub async fn stopped(&self) {
        self._server.stopped().await;
    }
}

fn urls(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(String::from)
        .collect()
}

impl EmbeddedKvArgs {
    /// The member configuration these flags describe.
    pub fn kv_config(&self) -> kvstore::Config {
        kvstore::Config {
            name: self.name.clone(),
            data_dir: Some(self.data_dir.clone()),
            listen_client_urls: urls(&self.listen_client_urls),
            listen_peer_urls: urls(&self.listen_peer_urls),
            initial_cluster: self.initial_cluster.clone(),
            initial_cluster_state: self.initial_cluster_state.clone(),
            initial_cluster_token: self.initial_cluster_token.clone(),
            initial_advertise_peer_urls: self
                .initial_advertise_peer_urls
                .as_deref()
                .map(urls)
                .unwrap_or_default(),
            advertise_client_urls: self
                .advertise_client_urls
                .as_deref()
                .map(urls)
                .unwrap_or_default(),
            cert_file: self.cert_file.clone(),
            key_file: self.key_file.clone(),
            trusted_ca_file: self.trusted_ca_file.clone(),
            client_cert_auth: self.client_cert_auth,
            peer_cert_file: self.peer_cert_file.clone(),
            peer_key_file: self.peer_key_file.clone(),
            peer_trusted_ca_file: self.peer_trusted_ca_file.clone(),
            peer_client_cert_auth: self.peer_client_cert_auth,
            auto_compaction_mode: self.auto_compaction_mode.clone(),
            auto_compaction_retention: self.auto_compaction_retention.clone(),
            ..kvstore::Config::default()
        }
    }

    /// Whether netd reaches its member over TLS (an https:// client URL).
    fn serves_tls(&self) -> bool {
        urls(&self.listen_client_urls)
            .iter()
            .any(|u| kvstore::config::is_https(u))
    }

    /// TLS for netd's own client of the embedded member: `explicit` (--etcd-cafile …) when
    /// given; otherwise the member's CA (--kv-trusted-ca-file) to verify it and the member's
    /// own certificate as client certificate (member certificates are valid for both uses).
    pub fn client_tls(&self, explicit: Option<ClientTls>) -> Result<Option<ClientTls>> {
        if !self.serves_tls() {
            return Ok(None);
        }
        if explicit.is_some() {
            return Ok(explicit);
        }
        let ca_file = self.trusted_ca_file.clone().ok_or_else(|| {
            Error::Usage(
                "an https:// --kv-listen-client-urls needs --kv-trusted-ca-file or --etcd-cafile \
                 for netd to verify its own member"
                    .into(),
            )
        })?;
        let identity = self.cert_file.clone().zip(self.key_file.clone());
        let tls = ClientTls { ca_file, identity };
        tls.check()?;
        Ok(Some(tls))
    }
}

/// How long the embedded member waits for a port in use to be freed before giving up.
const PORT_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// The one line for a member port another process holds: most likely an etcd serving on the
/// member's ports, whose client URL netd can be pointed at.
fn port_taken(url: &str, client_urls: &str) -> String {
    let client = urls(client_urls)
        .into_iter()
        .next()
        .unwrap_or_else(|| url.to_string());
    format!(
        "embedded KV member: {url} is in use by another process (an etcd already running \
         there?); to use that store, start netd with --etcd-endpoints {client}; to run the \
         embedded member anyway, give it free ports (--kv-listen-client-urls, \
         --kv-listen-peer-urls)"
    )
}

/// Starts the embedded member; returns it with the client endpoints to connect to.
///
/// Flags that can never work are an error at once. Anything else is retried every second with
/// one log line per distinct failure, as netd waits for an unreachable etcd: a member joining
/// an `existing` cluster waits for the other members to answer. A port in use is waited for
/// ten seconds (a netd that is exiting frees it), then it is an error that names
/// `--etcd-endpoints`. A member of a `new` cluster starts without waiting for the others; it
/// serves clients once a quorum of members runs and has elected a leader.
pub async fn start(args: &EmbeddedKvArgs) -> Result<EmbeddedKv> {
    let cfg = args.kv_config();
    cfg.validate()
        .map_err(|e| Error::Usage(format!("embedded KV member: {e}")))?;
    let members = cfg
        .initial_members()
        .map_err(|e| Error::Usage(e.to_string()))?;
    if members.len() > 1 {
        let names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
        tracing::info!(
            name = %cfg.name,
            state = %cfg.initial_cluster_state,
            ?names,
            quorum = members.len() / 2 + 1,
            "embedded KV member of a multi-member cluster: the KV answers once a quorum of members runs"
        );
    }
    let mut last = String::new();
    let started = std::time::Instant::now();
    let server = loop {
        match kvstore::Server::start(cfg.clone()).await {
            Ok(s) => break s,
            // A port another process keeps: most likely an etcd (or kvstore) serving there,
            // which netd can use as it is. A netd that is exiting frees its ports within
            // seconds, so that much is waited for.
            Err(kvstore::Error::Listen { url, source })
                if source.kind() == std::io::ErrorKind::AddrInUse
                    && started.elapsed() >= PORT_GRACE =>
            {
                return Err(Error::Usage(port_taken(&url, &args.listen_client_urls)));
            }
            Err(e) => {
                let msg = e.to_string();
                if msg != last {
                    tracing::error!(error = %msg, "starting the embedded KV member failed; retrying every 1s");
                    last = msg;
                }
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        }
    };
    // Listener addresses come in the order of the URLs. netd's client speaks TLS or not to
    // all of its endpoints, so with any https:// URL it uses only those.
    let tls = args.serves_tls();
    let endpoints = urls(&args.listen_client_urls)
        .iter()
        .zip(&server.client_addrs)
        .filter(|(u, _)| kvstore::config::is_https(u) == tls)
        .map(|(_, a)| {
            // A wildcard listener is reached through loopback from this host.
            let ip = if a.ip().is_unspecified() {
                std::net::IpAddr::from([127, 0, 0, 1])
            } else {
                a.ip()
            };
            let scheme = if tls { "https" } else { "http" };
            format!("{scheme}://{}", std::net::SocketAddr::new(ip, a.port()))
        })
        .collect();
    tracing::info!(?endpoints, "embedded KV member started");
    Ok(EmbeddedKv {
        endpoints,
        name: cfg.name,
        _server: server,
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        kv: EmbeddedKvArgs,
    }

    #[test]
    fn cluster_flags_reach_the_member_config() {
        let f = Flags::try_parse_from([
            "netd",
            "--kv-name",
            "h2",
            "--kv-initial-cluster",
            "h1=http://10.0.0.1:2380,h2=http://10.0.0.2:2380,h3=http://10.0.0.3:2380",
            "--kv-initial-cluster-state",
            "existing",
            "--kv-initial-cluster-token",
            "netd-a",
            "--kv-listen-peer-urls",
            "http://0.0.0.0:2380",
            "--kv-initial-advertise-peer-urls",
            "http://10.0.0.2:2380",
            "--kv-listen-client-urls",
            "http://0.0.0.0:2379",
            "--kv-advertise-client-urls",
            "http://10.0.0.2:2379, http://10.0.0.2:2479",
        ])
        .expect("parse");
        let c = f.kv.kv_config();
        assert_eq!(c.initial_cluster_state, "existing");
        assert_eq!(c.initial_cluster_token, "netd-a");
        assert_eq!(c.advertise_peer_urls(), vec!["http://10.0.0.2:2380"]);
        assert_eq!(
            c.advertise_client_urls(),
            vec!["http://10.0.0.2:2379", "http://10.0.0.2:2479"]
        );
        assert_eq!(c.initial_members().expect("members").len(), 3);
        assert!(c.validate().is_ok(), "{:?}", c.validate());
        assert!(
            Flags::try_parse_from(["netd", "--kv-initial-cluster-state", "old"]).is_err(),
            "only new or existing"
        );
        // Defaults: etcd's, a single member advertising what it listens on.
        let d = Flags::try_parse_from(["netd"])
            .expect("parse")
            .kv
            .kv_config();
        assert_eq!(d.initial_cluster_state, "new");
        assert_eq!(d.initial_cluster_token, "etcd-cluster");
        assert_eq!(d.advertise_peer_urls(), d.listen_peer_urls);
    }

    #[test]
    fn no_flags_is_the_kvstore_default_member_with_netd_data_dir_and_compaction() {
        let netd = Flags::try_parse_from(["netd"])
            .expect("parse")
            .kv
            .kv_config();
        let kvstore = kvstore::Config {
            data_dir: Some("/var/lib/netd/kv".into()),
            auto_compaction_retention: AUTO_COMPACTION_RETENTION.into(),
            ..kvstore::Config::default()
        };
        assert_eq!(format!("{netd:?}"), format!("{kvstore:?}"));
    }

    #[tokio::test]
    async fn a_bad_compaction_retention_fails_at_once_with_etcds_message() {
        let f =
            Flags::try_parse_from(["netd", "--kv-auto-compaction-retention", "-1"]).expect("parse");
        let e = start(&f.kv).await.err().expect("bad retention");
        assert!(matches!(e, Error::Usage(_)), "{e}");
        assert!(
            e.to_string()
                .contains("error parsing CompactionRetention: time: missing unit"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn impossible_flags_fail_at_once() {
        let f = Flags::try_parse_from([
            "netd",
            "--kv-name",
            "h9",
            "--kv-initial-cluster",
            "h1=http://127.0.0.1:1",
        ])
        .expect("parse");
        let e = start(&f.kv).await.err().expect("no entry for h9");
        assert!(matches!(e, Error::Usage(_)), "{e}");
    }
}
