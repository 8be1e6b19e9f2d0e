//! The embedded KV seam: with no `--etcd-endpoints`, netd runs a kvstore member in-process and
//! talks to it through the same etcd v3 client as to an external cluster.
//!
//! MERGE NOTE: this build has no kvstore dependency yet. [`start`] is the one place to wire
//! `kvstore::run(config, shutdown)`: start the member from [`EmbeddedKvArgs`] and return its
//! client URLs. Until then it returns a clear error telling the user to pass `--etcd-endpoints`.

use crate::error::{Error, Result};

/// The `--kv-*` flags, named after etcd's member flags.
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct EmbeddedKvArgs {
    /// Member name of the embedded KV store (etcd's --name).
    #[arg(long = "kv-name", env = "NETD_KV_NAME", default_value = "default")]
    pub name: String,
    /// Initial cluster of the embedded store: name=peer-url,... (etcd's --initial-cluster).
    #[arg(long = "kv-initial-cluster", env = "NETD_KV_INITIAL_CLUSTER")]
    pub initial_cluster: Option<String>,
    /// Peer URLs the embedded member listens on (etcd's --listen-peer-urls).
    #[arg(
        long = "kv-listen-peer-urls",
        env = "NETD_KV_LISTEN_PEER_URLS",
        default_value = "http://127.0.0.1:2380"
    )]
    pub listen_peer_urls: String,
    /// Client URLs the embedded member serves the etcd v3 API on (etcd's --listen-client-urls).
    #[arg(
        long = "kv-listen-client-urls",
        env = "NETD_KV_LISTEN_CLIENT_URLS",
        default_value = "http://127.0.0.1:2379"
    )]
    pub listen_client_urls: String,
    /// Data directory of the embedded member (etcd's --data-dir).
    #[arg(
        long = "kv-data-dir",
        env = "NETD_KV_DATA_DIR",
        default_value = "/var/lib/netd/kv"
    )]
    pub data_dir: std::path::PathBuf,
}

/// Starts the embedded member and returns the client endpoints to connect to.
pub async fn start(args: &EmbeddedKvArgs) -> Result<Vec<String>> {
    let _ = args;
    Err(Error::EmbeddedKv(
        "embedded KV store not available in this build; pass --etcd-endpoints".into(),
    ))
}
