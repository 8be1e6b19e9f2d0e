//! The embedded KV member: with no `--etcd-endpoints`, netd runs a kvstore member in-process
//! and talks to it through the same etcd v3 client it uses for an external cluster, so there
//! is one code path for both. Other hosts can use this member as a plain etcd endpoint. The
//! `--kv-*` TLS flags are etcd's member TLS flags; netd then reaches its member over TLS too.

use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::kv::ClientTls;

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
            cert_file: self.cert_file.clone(),
            key_file: self.key_file.clone(),
            trusted_ca_file: self.trusted_ca_file.clone(),
            client_cert_auth: self.client_cert_auth,
            peer_cert_file: self.peer_cert_file.clone(),
            peer_key_file: self.peer_key_file.clone(),
            peer_trusted_ca_file: self.peer_trusted_ca_file.clone(),
            peer_client_cert_auth: self.peer_client_cert_auth,
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

/// Starts the embedded member; returns it with the client endpoints to connect to.
pub async fn start(args: &EmbeddedKvArgs) -> Result<EmbeddedKv> {
    let server = kvstore::Server::start(args.kv_config())
        .await
        .map_err(|e| Error::EmbeddedKv(e.to_string()))?;
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
        _server: server,
    })
}
