//! The embedded KV member: with no `--etcd-endpoints`, netd runs a kvstore member in-process
//! and talks to it through the same etcd v3 client it uses for an external cluster, so there
//! is one code path for both. Other hosts can use this member as a plain etcd endpoint.

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

/// A running embedded member. Dropping it stops the member.
pub struct EmbeddedKv {
    /// Client endpoints netd connects to.
    pub endpoints: Vec<String>,
    _server: kvstore::Server,
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
            ..kvstore::Config::default()
        }
    }
}

/// Starts the embedded member; returns it with the client endpoints to connect to.
pub async fn start(args: &EmbeddedKvArgs) -> Result<EmbeddedKv> {
    let server = kvstore::Server::start(args.kv_config())
        .await
        .map_err(|e| Error::EmbeddedKv(e.to_string()))?;
    let endpoints = server
        .client_addrs
        .iter()
        .map(|a| {
            // A wildcard listener is reached through loopback from this host.
            let ip = if a.ip().is_unspecified() {
                std::net::IpAddr::from([127, 0, 0, 1])
            } else {
                a.ip()
            };
            format!("http://{}", std::net::SocketAddr::new(ip, a.port()))
        })
        .collect();
    tracing::info!(?endpoints, "embedded KV member started");
    Ok(EmbeddedKv {
        endpoints,
        _server: server,
    })
}
