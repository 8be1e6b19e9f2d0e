//! Member configuration: etcd's flag names and meanings (and `ETCD_*` environment
//! variables), parsed by clap for the `kvstore` binary and built directly by embedders.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::error::{Error, Result};

/// A kvstore member.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "kvstore",
    version,
    about = "A Raft-replicated MVCC key-value store serving the etcd v3 API.",
    long_about = "A Raft-replicated MVCC key-value store serving the etcd v3 gRPC API, so \
etcdctl and etcd client libraries work against it unchanged. With no flags it starts a \
single member serving clients on 127.0.0.1:2379 with its data in ./default.etcd, like etcd.\n\n\
Every flag can also be set through the environment variable etcd uses \
(e.g. ETCD_DATA_DIR for --data-dir)."
)]
pub struct Config {
    /// Human-readable name of this member.
    #[arg(long, env = "ETCD_NAME", default_value = "default")]
    pub name: String,

    /// Directory of the member's data (default: <name>.etcd).
    #[arg(long, env = "ETCD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// URLs to listen on for client traffic (comma-separated, http://host:port).
    #[arg(
        long,
        env = "ETCD_LISTEN_CLIENT_URLS",
        default_value = "http://127.0.0.1:2379",
        value_delimiter = ','
    )]
    pub listen_client_urls: Vec<String>,

    /// Client URLs of this member as the rest of the cluster and clients should use them
    /// (default: the listen client URLs).
    #[arg(long, env = "ETCD_ADVERTISE_CLIENT_URLS", value_delimiter = ',')]
    pub advertise_client_urls: Vec<String>,

    /// URLs to listen on for peer (raft) traffic.
    #[arg(
        long,
        env = "ETCD_LISTEN_PEER_URLS",
        default_value = "http://127.0.0.1:2380",
        value_delimiter = ','
    )]
    pub listen_peer_urls: Vec<String>,

    /// Peer URLs of this member as the rest of the cluster should use them
    /// (default: the listen peer URLs).
    #[arg(long, env = "ETCD_INITIAL_ADVERTISE_PEER_URLS", value_delimiter = ',')]
    pub initial_advertise_peer_urls: Vec<String>,

    /// The initial cluster, as name=peer-url pairs (default: <name>=<advertised peer URL>).
    #[arg(long, env = "ETCD_INITIAL_CLUSTER")]
    pub initial_cluster: Option<String>,

    /// `new` to bootstrap a cluster, `existing` to join a running one.
    #[arg(long, env = "ETCD_INITIAL_CLUSTER_STATE", default_value = "new")]
    pub initial_cluster_state: String,

    /// Token that makes this cluster's member and cluster ids unique.
    #[arg(
        long,
        env = "ETCD_INITIAL_CLUSTER_TOKEN",
        default_value = "etcd-cluster"
    )]
    pub initial_cluster_token: String,

    /// URLs to serve /health and /metrics on (HTTP; comma-separated). None by default.
    #[arg(long, env = "ETCD_LISTEN_METRICS_URLS", value_delimiter = ',')]
    pub listen_metrics_urls: Vec<String>,

    /// Time between raft heartbeats, in milliseconds.
    #[arg(long, env = "ETCD_HEARTBEAT_INTERVAL", default_value_t = 100)]
    pub heartbeat_interval: u64,

    /// Time without a leader before an election, in milliseconds.
    #[arg(long, env = "ETCD_ELECTION_TIMEOUT", default_value_t = 1000)]
    pub election_timeout: u64,

    /// Applied entries after which the raft log is truncated.
    #[arg(long, env = "ETCD_SNAPSHOT_COUNT", default_value_t = 10_000)]
    pub snapshot_count: u64,

    /// Largest request accepted, in bytes.
    #[arg(long, env = "ETCD_MAX_REQUEST_BYTES", default_value_t = 1_572_864)]
    pub max_request_bytes: usize,

    /// Most operations in one transaction.
    #[arg(long, env = "ETCD_MAX_TXN_OPS", default_value_t = 128)]
    pub max_txn_ops: usize,
}

impl Default for Config {
    /// The flag defaults, without reading the environment (for embedders).
    fn default() -> Self {
        Config {
            name: "default".into(),
            data_dir: None,
            listen_client_urls: vec!["http://127.0.0.1:2379".into()],
            advertise_client_urls: Vec::new(),
            listen_peer_urls: vec!["http://127.0.0.1:2380".into()],
            initial_advertise_peer_urls: Vec::new(),
            initial_cluster: None,
            initial_cluster_state: "new".into(),
            initial_cluster_token: "etcd-cluster".into(),
            listen_metrics_urls: Vec::new(),
            heartbeat_interval: 100,
            election_timeout: 1000,
            snapshot_count: 10_000,
            max_request_bytes: 1_572_864,
            max_txn_ops: 128,
        }
    }
}

/// One `name=peer-url` of the initial cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitialMember {
    pub name: String,
    pub peer_urls: Vec<String>,
}

impl Config {
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("{}.etcd", self.name)))
    }

    pub fn advertise_client_urls(&self) -> Vec<String> {
        if self.advertise_client_urls.is_empty() {
            self.listen_client_urls.clone()
        } else {
            self.advertise_client_urls.clone()
        }
    }

    pub fn advertise_peer_urls(&self) -> Vec<String> {
        if self.initial_advertise_peer_urls.is_empty() {
            self.listen_peer_urls.clone()
        } else {
            self.initial_advertise_peer_urls.clone()
        }
    }

    pub fn tick(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval.max(1))
    }

    /// Election timeout in ticks.
    pub fn election_ticks(&self) -> usize {
        (self.election_timeout / self.heartbeat_interval.max(1)).max(2) as usize
    }

    /// How long a request waits for raft before etcd's "request timed out": long enough
    /// for an election, short enough to answer within a client's 5 s command timeout.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(2) + Duration::from_millis(self.election_timeout * 2)
    }

    /// The initial cluster's members, grouped by name, in the order given.
    pub fn initial_members(&self) -> Result<Vec<InitialMember>> {
        let spec = match &self.initial_cluster {
            Some(s) => s.clone(),
            None => self
                .advertise_peer_urls()
                .iter()
                .map(|u| format!("{}={u}", self.name))
                .collect::<Vec<_>>()
                .join(","),
        };
        let mut out: Vec<InitialMember> = Vec::new();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, url) = part.split_once('=').ok_or_else(|| {
                Error::Config(format!("--initial-cluster entry {part:?} is not name=url"))
            })?;
            parse_url(url)?;
            match out.iter_mut().find(|m| m.name == name) {
                Some(m) => m.peer_urls.push(url.to_string()),
                None => out.push(InitialMember {
                    name: name.to_string(),
                    peer_urls: vec![url.to_string()],
                }),
            }
        }
        if !out.iter().any(|m| m.name == self.name) {
            return Err(Error::Config(format!(
                "--initial-cluster has no entry for this member's --name {:?}",
                self.name
            )));
        }
        Ok(out)
    }

    /// Checks the whole configuration; the error is one line for the operator.
    pub fn validate(&self) -> Result<()> {
        for u in self
            .listen_client_urls
            .iter()
            .chain(&self.listen_peer_urls)
            .chain(&self.advertise_client_urls)
            .chain(&self.initial_advertise_peer_urls)
            .chain(&self.listen_metrics_urls)
        {
            parse_url(u)?;
        }
        if self.listen_client_urls.is_empty() {
            return Err(Error::Config("--listen-client-urls is empty".into()));
        }
        if self.listen_peer_urls.is_empty() {
            return Err(Error::Config("--listen-peer-urls is empty".into()));
        }
        match self.initial_cluster_state.as_str() {
            "new" | "existing" => {}
            other => {
                return Err(Error::Config(format!(
                    "--initial-cluster-state must be new or existing, not {other:?}"
                )));
            }
        }
        let members = self.initial_members()?;
        let mine = self.advertise_peer_urls();
        if let Some(m) = members.iter().find(|m| m.name == self.name)
            && !m.peer_urls.iter().all(|u| mine.contains(u))
        {
            return Err(Error::Config(format!(
                "--initial-cluster gives {:?} peer URLs {:?}, but it advertises {mine:?}",
                self.name, m.peer_urls
            )));
        }
        let mut seen = std::collections::HashSet::new();
        for u in members.iter().flat_map(|m| &m.peer_urls) {
            if !seen.insert(u) {
                return Err(Error::Config(format!(
                    "--initial-cluster names peer URL {u} twice"
                )));
            }
        }
        if self.heartbeat_interval == 0 || self.election_timeout < 5 * self.heartbeat_interval {
            return Err(Error::Config(
                "--election-timeout must be at least 5 times --heartbeat-interval".into(),
            ));
        }
        Ok(())
    }
}

/// Parses `http://host:port` into a socket address (host must be an IP or `localhost`).
pub fn parse_url(url: &str) -> Result<SocketAddr> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| Error::Config(format!("URL {url:?} must start with http://")))?;
    let hostport = rest.trim_end_matches('/');
    let hostport = match hostport.strip_prefix("localhost:") {
        Some(port) => format!("127.0.0.1:{port}"),
        None => hostport.to_string(),
    };
    hostport
        .parse()
        .map_err(|_| Error::Config(format!("URL {url:?} is not http://IP:port")))
}

/// A stable 64-bit id (FNV-1a), never zero.
pub fn stable_id(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.bytes().chain(std::iter::once(0)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h.max(1)
}

/// The member id etcd-style: derived from the member's peer URLs and the cluster token.
pub fn member_id(peer_urls: &[String], token: &str) -> u64 {
    let mut urls: Vec<&str> = peer_urls.iter().map(String::as_str).collect();
    urls.sort_unstable();
    urls.push(token);
    stable_id(&urls)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_like_etcd() {
        let parsed = Config::parse_from(["kvstore"]);
        assert_eq!(format!("{parsed:?}"), format!("{:?}", Config::default()));
        let c = Config::default();
        assert_eq!(c.data_dir(), PathBuf::from("default.etcd"));
        assert_eq!(c.listen_client_urls, vec!["http://127.0.0.1:2379"]);
        assert!(c.validate().is_ok());
        assert_eq!(c.initial_members().expect("members")[0].name, "default");
    }

    #[test]
    fn bad_values_are_one_line_errors() {
        let c = Config::parse_from(["kvstore", "--listen-client-urls", "tcp://x"]);
        assert!(c.validate().is_err());
        let c = Config::parse_from(["kvstore", "--initial-cluster", "other=http://127.0.0.1:1"]);
        assert!(c.validate().is_err());
        assert_eq!(parse_url("http://localhost:80").expect("url").port(), 80);
    }
}
