//! Member configuration: etcd's flag names and meanings (and `ETCD_*` environment
//! variables), parsed by clap for the `kvstore` binary and built directly by embedders.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::error::{Error, Result};
use crate::tls::TlsFiles;

/// The member defaults (etcd's), stated once: the `kvstore` flags, [`Config::default`] and
/// netd's `--kv-*` flags for its embedded member all take them from here.
pub mod defaults {
    pub const NAME: &str = "default";
    pub const LISTEN_CLIENT_URLS: &str = "http://127.0.0.1:2379";
    pub const LISTEN_PEER_URLS: &str = "http://127.0.0.1:2380";
    pub const INITIAL_CLUSTER_STATE: &str = "new";
    pub const INITIAL_CLUSTER_TOKEN: &str = "etcd-cluster";
    pub const HEARTBEAT_INTERVAL_MS: u64 = 100;
    pub const ELECTION_TIMEOUT_MS: u64 = 1000;
    pub const SNAPSHOT_COUNT: u64 = 10_000;
    pub const MAX_REQUEST_BYTES: usize = 1_572_864;
    pub const MAX_TXN_OPS: usize = 128;
    /// etcd's: no limit short of 2^32-1.
    pub const MAX_CONCURRENT_STREAMS: u32 = u32::MAX;
    pub const STRICT_RECONFIG_CHECK: bool = true;
    pub const AUTH_TOKEN: &str = "simple";
    /// Seconds an unused simple token stays valid (etcd's).
    pub const AUTH_TOKEN_TTL: u64 = 300;
    /// bcrypt's cost for password hashes (etcd's, bcrypt's default).
    pub const BCRYPT_COST: u32 = 10;
    /// etcd's: the retention is a duration (hours when a bare number).
    pub const AUTO_COMPACTION_MODE: &str = "periodic";
    /// etcd's: no automatic compaction.
    pub const AUTO_COMPACTION_RETENTION: &str = "0";
    /// etcd's: no periodic corruption check.
    pub const CORRUPT_CHECK_TIME: &str = "0s";
}

/// What `--version` says: the crate's version, and whether this build carries failpoints
/// (the test builds do; kvbench refuses to measure one).
#[cfg(not(feature = "failpoints"))]
const VERSION: &str = env!("CARGO_PKG_VERSION");
#[cfg(feature = "failpoints")]
const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (built with failpoints)");

/// A kvstore member.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "kvstore",
    version = VERSION,
    about = "A Raft-replicated MVCC key-value store serving the etcd v3 API.",
    long_about = "A Raft-replicated MVCC key-value store serving the etcd v3 gRPC API, so \
etcdctl and etcd client libraries work against it unchanged. With no flags it starts a \
single member serving clients on 127.0.0.1:2379 with its data in ./default.etcd, like etcd.\n\n\
Every flag can also be set through the environment variable etcd uses \
(e.g. ETCD_DATA_DIR for --data-dir)."
)]
pub struct Config {
    /// Human-readable name of this member.
    #[arg(long, env = "ETCD_NAME", default_value = defaults::NAME)]
    pub name: String,

    /// Directory of the member's data (default: <name>.etcd).
    #[arg(long, env = "ETCD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// URLs to listen on for client traffic (comma-separated, http://host:port).
    #[arg(
        long,
        env = "ETCD_LISTEN_CLIENT_URLS",
        default_value = defaults::LISTEN_CLIENT_URLS,
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
        default_value = defaults::LISTEN_PEER_URLS,
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
    #[arg(
        long,
        env = "ETCD_INITIAL_CLUSTER_STATE",
        default_value = defaults::INITIAL_CLUSTER_STATE
    )]
    pub initial_cluster_state: String,

    /// Token that makes this cluster's member and cluster ids unique.
    #[arg(
        long,
        env = "ETCD_INITIAL_CLUSTER_TOKEN",
        default_value = defaults::INITIAL_CLUSTER_TOKEN
    )]
    pub initial_cluster_token: String,

    /// URLs to serve /health and /metrics on (HTTP; comma-separated). None by default.
    #[arg(long, env = "ETCD_LISTEN_METRICS_URLS", value_delimiter = ',')]
    pub listen_metrics_urls: Vec<String>,

    /// Time between raft heartbeats, in milliseconds.
    #[arg(long, env = "ETCD_HEARTBEAT_INTERVAL", default_value_t = defaults::HEARTBEAT_INTERVAL_MS)]
    pub heartbeat_interval: u64,

    /// Time without a leader before an election, in milliseconds.
    #[arg(long, env = "ETCD_ELECTION_TIMEOUT", default_value_t = defaults::ELECTION_TIMEOUT_MS)]
    pub election_timeout: u64,

    /// Applied entries after which the raft log is truncated.
    #[arg(long, env = "ETCD_SNAPSHOT_COUNT", default_value_t = defaults::SNAPSHOT_COUNT)]
    pub snapshot_count: u64,

    /// Largest request accepted, in bytes.
    #[arg(long, env = "ETCD_MAX_REQUEST_BYTES", default_value_t = defaults::MAX_REQUEST_BYTES)]
    pub max_request_bytes: usize,

    /// Most operations in one transaction.
    #[arg(long, env = "ETCD_MAX_TXN_OPS", default_value_t = defaults::MAX_TXN_OPS)]
    pub max_txn_ops: usize,

    /// Backend size (bytes) past which writes are refused and a NOSPACE alarm is raised;
    /// 0: the 2 GiB default; negative: no quota (see `crate::quota`).
    #[arg(
        long,
        env = "ETCD_QUOTA_BACKEND_BYTES",
        default_value_t = 0,
        allow_hyphen_values = true
    )]
    pub quota_backend_bytes: i64,

    /// Most concurrent HTTP/2 streams (calls, watch streams) one client connection may have
    /// open (etcd's default: no limit short of 2^32-1).
    #[arg(long, env = "ETCD_MAX_CONCURRENT_STREAMS", default_value_t = defaults::MAX_CONCURRENT_STREAMS)]
    pub max_concurrent_streams: u32,

    /// Refuse a membership change that would leave the cluster without a quorum of
    /// started members, or of members the leader hears from (as etcd does).
    #[arg(long, env = "ETCD_STRICT_RECONFIG_CHECK",
          num_args = 0..=1, require_equals = true, default_missing_value = "true",
          default_value_t = defaults::STRICT_RECONFIG_CHECK, action = clap::ArgAction::Set)]
    pub strict_reconfig_check: bool,

    /// Start this member's data as a new one-member cluster: every other member is
    /// removed, nothing committed is lost (etcd's recovery after a quorum lost for good;
    /// grow the cluster again with `member add`, see docs/kvstore.md). Ignored on an empty
    /// data dir.
    #[arg(long, env = "ETCD_FORCE_NEW_CLUSTER",
          num_args = 0..=1, require_equals = true, default_missing_value = "true",
          default_value_t = false, action = clap::ArgAction::Set)]
    pub force_new_cluster: bool,

    /// Kind of token a login returns: `simple` (etcd's default; JWT is not supported).
    #[arg(long, env = "ETCD_AUTH_TOKEN", default_value = defaults::AUTH_TOKEN, help_heading = "Authentication")]
    pub auth_token: String,

    /// Seconds an unused simple token stays valid; each request renews it.
    #[arg(long, env = "ETCD_AUTH_TOKEN_TTL", default_value_t = defaults::AUTH_TOKEN_TTL, help_heading = "Authentication")]
    pub auth_token_ttl: u64,

    /// bcrypt cost of password hashes (4 to 31; each step doubles the work of a login).
    #[arg(long, env = "ETCD_BCRYPT_COST", default_value_t = defaults::BCRYPT_COST, help_heading = "Authentication")]
    pub bcrypt_cost: u32,

    /// Certificate (PEM) served on https:// client and metrics URLs.
    #[arg(long, env = "ETCD_CERT_FILE", help_heading = "Client TLS")]
    pub cert_file: Option<PathBuf>,

    /// Private key (PEM) of --cert-file.
    #[arg(long, env = "ETCD_KEY_FILE", help_heading = "Client TLS")]
    pub key_file: Option<PathBuf>,

    /// CA bundle (PEM) that client certificates must chain to; as in etcd, setting it makes
    /// https client URLs require a client certificate.
    #[arg(long, env = "ETCD_TRUSTED_CA_FILE", help_heading = "Client TLS")]
    pub trusted_ca_file: Option<PathBuf>,

    /// Refuse clients without a certificate signed by --trusted-ca-file.
    #[arg(long, env = "ETCD_CLIENT_CERT_AUTH", help_heading = "Client TLS",
          num_args = 0..=1, require_equals = true, default_missing_value = "true",
          default_value_t = false, action = clap::ArgAction::Set)]
    pub client_cert_auth: bool,

    /// Certificate (PEM) served on https:// peer URLs and presented to other members.
    #[arg(long, env = "ETCD_PEER_CERT_FILE", help_heading = "Peer TLS")]
    pub peer_cert_file: Option<PathBuf>,

    /// Private key (PEM) of --peer-cert-file.
    #[arg(long, env = "ETCD_PEER_KEY_FILE", help_heading = "Peer TLS")]
    pub peer_key_file: Option<PathBuf>,

    /// CA bundle (PEM) that other members' certificates must chain to (required of them once
    /// set, as in etcd).
    #[arg(long, env = "ETCD_PEER_TRUSTED_CA_FILE", help_heading = "Peer TLS")]
    pub peer_trusted_ca_file: Option<PathBuf>,

    /// Refuse peers without a certificate signed by --peer-trusted-ca-file.
    #[arg(long, env = "ETCD_PEER_CLIENT_CERT_AUTH", help_heading = "Peer TLS",
          num_args = 0..=1, require_equals = true, default_missing_value = "true",
          default_value_t = false, action = clap::ArgAction::Set)]
    pub peer_client_cert_auth: bool,

    /// How --auto-compaction-retention is read: periodic (a duration of history to keep;
    /// hours when a bare number, e.g. 1, 30m, 5s) or revision (a number of revisions to keep).
    #[arg(long, env = "ETCD_AUTO_COMPACTION_MODE", default_value = defaults::AUTO_COMPACTION_MODE,
          help_heading = "Compaction")]
    pub auto_compaction_mode: String,

    /// History the member keeps when it compacts by itself; 0 turns automatic compaction off.
    #[arg(long, env = "ETCD_AUTO_COMPACTION_RETENTION",
          default_value = defaults::AUTO_COMPACTION_RETENTION, help_heading = "Compaction", allow_hyphen_values = true)]
    pub auto_compaction_retention: String,

    /// Milliseconds between the revision compactor's looks (etcd's fixed 5 minutes); for
    /// tests only.
    #[arg(long, hide = true, default_value_t = crate::compactor::REVISION_INTERVAL.as_millis() as u64)]
    pub auto_compaction_revision_interval_ms: u64,

    /// Before serving, compare this member's keyspace hash with every peer's at its revision
    /// and refuse to start on a mismatch (etcd 3.4's experimental flag).
    #[arg(long, env = "ETCD_EXPERIMENTAL_INITIAL_CORRUPT_CHECK", help_heading = "Corruption checks",
          num_args = 0..=1, require_equals = true, default_missing_value = "true",
          default_value_t = false, action = clap::ArgAction::Set)]
    pub experimental_initial_corrupt_check: bool,

    /// How often the leader compares every member's keyspace hash and raises a CORRUPT alarm
    /// on a mismatch: a Go duration (e.g. 5m); 0s never checks.
    #[arg(long, env = "ETCD_EXPERIMENTAL_CORRUPT_CHECK_TIME",
          default_value = defaults::CORRUPT_CHECK_TIME, help_heading = "Corruption checks",
          allow_hyphen_values = true)]
    pub experimental_corrupt_check_time: String,
}

impl Default for Config {
    /// The flag defaults, without reading the environment (for embedders).
    fn default() -> Self {
        Config {
            name: defaults::NAME.into(),
            data_dir: None,
            listen_client_urls: vec![defaults::LISTEN_CLIENT_URLS.into()],
            advertise_client_urls: Vec::new(),
            listen_peer_urls: vec![defaults::LISTEN_PEER_URLS.into()],
            initial_advertise_peer_urls: Vec::new(),
            initial_cluster: None,
            initial_cluster_state: defaults::INITIAL_CLUSTER_STATE.into(),
            initial_cluster_token: defaults::INITIAL_CLUSTER_TOKEN.into(),
            listen_metrics_urls: Vec::new(),
            heartbeat_interval: defaults::HEARTBEAT_INTERVAL_MS,
            election_timeout: defaults::ELECTION_TIMEOUT_MS,
            snapshot_count: defaults::SNAPSHOT_COUNT,
            max_request_bytes: defaults::MAX_REQUEST_BYTES,
            max_txn_ops: defaults::MAX_TXN_OPS,
            quota_backend_bytes: 0,
            max_concurrent_streams: defaults::MAX_CONCURRENT_STREAMS,
            strict_reconfig_check: defaults::STRICT_RECONFIG_CHECK,
            force_new_cluster: false,
            auth_token: defaults::AUTH_TOKEN.into(),
            auth_token_ttl: defaults::AUTH_TOKEN_TTL,
            bcrypt_cost: defaults::BCRYPT_COST,
            cert_file: None,
            key_file: None,
            trusted_ca_file: None,
            client_cert_auth: false,
            peer_cert_file: None,
            peer_key_file: None,
            peer_trusted_ca_file: None,
            peer_client_cert_auth: false,
            auto_compaction_mode: defaults::AUTO_COMPACTION_MODE.into(),
            auto_compaction_retention: defaults::AUTO_COMPACTION_RETENTION.into(),
            auto_compaction_revision_interval_ms: crate::compactor::REVISION_INTERVAL.as_millis()
                as u64,
            experimental_initial_corrupt_check: false,
            experimental_corrupt_check_time: defaults::CORRUPT_CHECK_TIME.into(),
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

    /// The client side's TLS files (`--cert-file` …), if a certificate is configured.
    pub fn client_tls(&self) -> Result<Option<TlsFiles>> {
        tls_files(
            "",
            &self.cert_file,
            &self.key_file,
            &self.trusted_ca_file,
            self.client_cert_auth,
        )
    }

    /// The peer side's TLS files (`--peer-cert-file` …), if a certificate is configured: for
    /// the peer listener and for dialling other members.
    pub fn peer_tls(&self) -> Result<Option<TlsFiles>> {
        tls_files(
            "peer-",
            &self.peer_cert_file,
            &self.peer_key_file,
            &self.peer_trusted_ca_file,
            self.peer_client_cert_auth,
        )
    }

    /// etcd's TLS rules: an https:// URL needs the side's certificate and key; client-cert-auth
    /// needs a CA to check certificates against; a member dialling https:// peers needs a CA to
    /// check them. Certificates given with only http:// URLs are ignored (with a warning at
    /// start-up), as etcd ignores them.
    fn validate_tls(&self) -> Result<()> {
        let client = self.client_tls()?;
        for u in self
            .listen_client_urls
            .iter()
            .chain(&self.listen_metrics_urls)
        {
            if is_https(u) && client.is_none() {
                return Err(Error::Config(format!(
                    "TLS key/cert (--cert-file, --key-file) must be provided for client URL {u}"
                )));
            }
        }
        let peer = self.peer_tls()?;
        let mut peer_urls: Vec<String> = self
            .listen_peer_urls
            .iter()
            .chain(&self.initial_advertise_peer_urls)
            .cloned()
            .collect();
        if let Some(spec) = &self.initial_cluster {
            peer_urls.extend(
                spec.split(',')
                    .filter_map(|p| p.split_once('='))
                    .map(|(_, u)| u.trim().to_string()),
            );
        }
        if let Some(u) = peer_urls.iter().find(|u| is_https(u)) {
            match &peer {
                None => {
                    return Err(Error::Config(format!(
                        "TLS key/cert (--peer-cert-file, --peer-key-file) must be provided for peer URL {u}"
                    )));
                }
                Some(p) if p.trusted_ca_file.is_none() => {
                    return Err(Error::Config(format!(
                        "--peer-trusted-ca-file must be provided to verify the members at peer URL {u}"
                    )));
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// What the auto-compaction flags ask for (see [`crate::compactor`]).
    pub fn auto_compaction(&self) -> Result<crate::compactor::AutoCompaction> {
        crate::compactor::AutoCompaction::parse(
            &self.auto_compaction_mode,
            &self.auto_compaction_retention,
        )
    }

    /// `--experimental-corrupt-check-time` as a duration (zero: no periodic check). A value Go
    /// cannot parse is refused with etcd's message; unlike etcd (which then checks without
    /// pause), so is a negative one.
    pub fn corrupt_check_time(&self) -> Result<Duration> {
        let v = &self.experimental_corrupt_check_time;
        let nanos = crate::compactor::go_duration_nanos(v).map_err(|_| {
            Error::Config(format!(
                "invalid value {v:?} for flag -experimental-corrupt-check-time: parse error"
            ))
        })?;
        let nanos = u64::try_from(nanos).map_err(|_| {
            Error::Config(format!(
                "--experimental-corrupt-check-time {v}: must not be negative"
            ))
        })?;
        Ok(Duration::from_nanos(nanos))
    }

    /// Checks the whole configuration; the error is one line for the operator.
    pub fn validate(&self) -> Result<()> {
        self.validate_tls()?;
        self.auto_compaction()?;
        self.corrupt_check_time()?;
        let kind = self.auth_token.split(',').next().unwrap_or_default();
        if kind != "simple" {
            return Err(Error::Config(format!(
                "--auth-token {kind}: kvstore supports only simple tokens"
            )));
        }
        if !(4..=31).contains(&self.bcrypt_cost) {
            return Err(Error::Config(format!(
                "--bcrypt-cost {}: must be between 4 and 31",
                self.bcrypt_cost
            )));
        }
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

/// The TLS files of one side, from its four flags (`prefix` is "" or "peer-").
fn tls_files(
    prefix: &str,
    cert: &Option<PathBuf>,
    key: &Option<PathBuf>,
    ca: &Option<PathBuf>,
    cert_auth: bool,
) -> Result<Option<TlsFiles>> {
    let files = match (cert, key) {
        (Some(cert), Some(key)) => Some(TlsFiles {
            cert_file: cert.clone(),
            key_file: key.clone(),
            trusted_ca_file: ca.clone(),
            client_cert_auth: cert_auth,
        }),
        (None, None) => None,
        _ => {
            return Err(Error::Config(format!(
                "--{prefix}cert-file and --{prefix}key-file must be given together"
            )));
        }
    };
    if cert_auth && ca.is_none() {
        return Err(Error::Config(format!(
            "--{prefix}client-cert-auth needs --{prefix}trusted-ca-file to check certificates against"
        )));
    }
    if cert_auth && files.is_none() {
        return Err(Error::Config(format!(
            "--{prefix}client-cert-auth needs --{prefix}cert-file and --{prefix}key-file (https)"
        )));
    }
    Ok(files)
}

/// Whether `url` is served (or dialled) over TLS.
pub fn is_https(url: &str) -> bool {
    url.starts_with("https://")
}

/// Parses `http://host:port` or `https://host:port` into a socket address (host must be an IP
/// or `localhost`).
pub fn parse_url(url: &str) -> Result<SocketAddr> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| Error::Config(format!("URL {url:?} must start with http:// or https://")))?;
    let hostport = rest.trim_end_matches('/');
    let hostport = match hostport.strip_prefix("localhost:") {
        Some(port) => format!("127.0.0.1:{port}"),
        None => hostport.to_string(),
    };
    hostport
        .parse()
        .map_err(|_| Error::Config(format!("URL {url:?} is not http(s)://IP:port")))
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

    #[test]
    fn tls_flags_follow_etcd_rules() {
        let ok = |args: &[&str]| {
            let mut all = vec!["kvstore"];
            all.extend_from_slice(args);
            Config::try_parse_from(all).expect("parse").validate()
        };
        // https needs the side's certificate and key.
        let e = ok(&["--listen-client-urls", "https://127.0.0.1:2379"]).expect_err("no cert");
        assert!(e.to_string().contains("--cert-file"), "{e}");
        let tls = ["--cert-file", "c.pem", "--key-file", "k.pem"];
        let mut args = vec!["--listen-client-urls", "https://127.0.0.1:2379"];
        args.extend_from_slice(&tls);
        assert!(ok(&args).is_ok());
        let e = ok(&["--cert-file", "c.pem"]).expect_err("cert without key");
        assert!(e.to_string().contains("together"), "{e}");
        // client-cert-auth needs a CA; etcd's =true form and the environment both work.
        let mut args = tls.to_vec();
        args.push("--client-cert-auth");
        assert!(
            ok(&args)
                .expect_err("no CA")
                .to_string()
                .contains("--trusted-ca-file")
        );
        args.extend_from_slice(&["--trusted-ca-file", "ca.pem"]);
        assert!(ok(&args).is_ok());
        let c = Config::try_parse_from(["kvstore", "--client-cert-auth=true"]).expect("parse");
        assert!(c.client_cert_auth);
        let c = Config::try_parse_from(["kvstore", "--client-cert-auth=false"]).expect("parse");
        assert!(!c.client_cert_auth);
        // https metrics URLs use the client certificate, as in etcd.
        let e = ok(&["--listen-metrics-urls", "https://127.0.0.1:2381"]).expect_err("metrics");
        assert!(e.to_string().contains("--cert-file"), "{e}");
        // https peers need the peer certificate and a CA to verify the other members.
        let e = ok(&["--listen-peer-urls", "https://127.0.0.1:2380"]).expect_err("peer");
        assert!(e.to_string().contains("--peer-cert-file"), "{e}");
        let peer = [
            "--listen-peer-urls",
            "https://127.0.0.1:2380",
            "--peer-cert-file",
            "p.pem",
            "--peer-key-file",
            "pk.pem",
        ];
        let e = ok(&peer).expect_err("peer CA");
        assert!(e.to_string().contains("--peer-trusted-ca-file"), "{e}");
        let mut args = peer.to_vec();
        args.extend_from_slice(&[
            "--peer-trusted-ca-file",
            "ca.pem",
            "--peer-client-cert-auth",
        ]);
        assert!(ok(&args).is_ok());
        let mut all = vec!["kvstore"];
        all.extend_from_slice(&args);
        let files = Config::parse_from(all)
            .peer_tls()
            .expect("peer tls")
            .expect("some");
        assert!(files.client_cert_auth);
        assert_eq!(files.trusted_ca_file, Some(PathBuf::from("ca.pem")));
        let e = ok(&["--peer-client-cert-auth"]).expect_err("no peer files");
        assert!(e.to_string().contains("--peer-trusted-ca-file"), "{e}");
    }
}
