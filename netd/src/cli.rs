//! Command line: the daemon's flags (flannel's names where the meaning is the same) and the
//! `config` / `leases` / `certs` subcommands. Every flag can also be set from the environment as
//! `NETD_<FLAG_IN_UPPER_SNAKE_CASE>`, e.g. `--iface` ↔ `NETD_IFACE`, or as flanneld's
//! `FLANNELD_<FLAG>`; flanneld's Go flag forms (`-iface=eth1`) are accepted too
//! ([`crate::flannel_args`]).

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::certs::CertsArgs;
use crate::embedded::EmbeddedKvArgs;
use crate::error::{Error, Result};
use crate::kv::{ClientTls, Credentials};

/// netd: per-host container networking daemon (flannel-compatible).
///
/// Leases a subnet for this host's containers from an etcd-v3-compatible KV store, watches the
/// other hosts' subnets and routes to them through VXLAN (`flannel.<VNI>`) or direct host-gw
/// routes. Writes subnet.env for the CNI plugin. With no subcommand, runs the daemon.
///
/// Every flag can also be set as an environment variable NETD_<FLAG>, e.g. NETD_IFACE=eth1, or
/// FLANNELD_<FLAG> as for flanneld (NETD_ wins); flanneld's one-dash forms (-iface=eth1) work.
/// Logging follows RUST_LOG (default "info"; -v N raises it as flanneld's -v does).
#[derive(Debug, Parser)]
#[command(name = "netd", version, about, long_about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub kv: KvArgs,
    #[command(flatten)]
    pub daemon: DaemonArgs,
    /// Log format: text or json.
    #[arg(long, env = "NETD_LOG_FORMAT", default_value = "text", global = true,
          value_parser = ["text", "json"])]
    pub log_format: String,
    /// Log verbosity, as flanneld's -v: 0 info, 1-4 debug, 5 and above trace. RUST_LOG, when
    /// set, wins.
    #[arg(
        short = 'v',
        long = "v",
        env = "NETD_V",
        global = true,
        value_name = "LEVEL"
    )]
    pub verbosity: Option<u8>,
}

impl Cli {
    /// The log filter: RUST_LOG when set, else the level -v asks for.
    pub fn log_filter(&self) -> String {
        if let Ok(f) = std::env::var("RUST_LOG") {
            return f;
        }
        match self.verbosity.unwrap_or(0) {
            0 => "info".into(),
            1..=4 => "info,netd=debug,kvstore=debug".into(),
            _ => "info,netd=trace,kvstore=trace".into(),
        }
    }
}

/// Subcommands that operate on the KV store and exit.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show or write the network config at <prefix>/config.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// List subnet leases (the records under <prefix>/subnets/).
    Leases {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Create a CA and member/client TLS certificates for a test or small cluster.
    Certs(CertsArgs),
}

/// `netd config ...`
#[derive(Debug, Subcommand)]
pub enum ConfigAction {
    /// Print the stored config.
    Show,
    /// Validate and store a config: JSON text, or @FILE to read it from a file.
    Set {
        /// e.g. '{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}' or @net-conf.json
        json: String,
    },
}

/// How to reach the KV store.
#[derive(Debug, Clone, Args)]
pub struct KvArgs {
    /// Comma-separated etcd v3 endpoints. Without it, netd runs an embedded KV member
    /// (see the --kv-* flags).
    #[arg(
        long,
        env = "NETD_ETCD_ENDPOINTS",
        value_delimiter = ',',
        global = true
    )]
    pub etcd_endpoints: Vec<String>,
    /// Key prefix of the network config and subnet records.
    #[arg(long, env = "NETD_ETCD_PREFIX", default_value = crate::kv::DEFAULT_PREFIX, global = true)]
    pub etcd_prefix: String,
    /// etcd user name (etcd's user/password authentication).
    #[arg(long, env = "NETD_ETCD_USERNAME", global = true)]
    pub etcd_username: Option<String>,
    /// etcd password; prefer the environment variable to keep it out of `ps`.
    #[arg(
        long,
        env = "NETD_ETCD_PASSWORD",
        global = true,
        hide_env_values = true
    )]
    pub etcd_password: Option<String>,
    /// CA bundle (PEM) that signed the etcd servers' certificates; needed for https://
    /// endpoints.
    #[arg(long, env = "NETD_ETCD_CAFILE", global = true)]
    pub etcd_cafile: Option<PathBuf>,
    /// Client certificate (PEM) presented to etcd servers that require one.
    #[arg(long, env = "NETD_ETCD_CERTFILE", global = true)]
    pub etcd_certfile: Option<PathBuf>,
    /// Private key (PEM) of --etcd-certfile.
    #[arg(long, env = "NETD_ETCD_KEYFILE", global = true)]
    pub etcd_keyfile: Option<PathBuf>,
    #[command(flatten)]
    pub embedded: EmbeddedKvArgs,
}

impl KvArgs {
    /// TLS towards the KV store from --etcd-cafile/--etcd-certfile/--etcd-keyfile, checked
    /// against the endpoints: https:// endpoints need the CA, TLS files need https:// (or
    /// scheme-less) endpoints, certificate and key go together, and every file must load.
    pub fn client_tls(&self) -> Result<Option<ClientTls>> {
        let identity = match (&self.etcd_certfile, &self.etcd_keyfile) {
            (Some(c), Some(k)) => Some((c.clone(), k.clone())),
            (None, None) => None,
            _ => {
                return Err(Error::Usage(
                    "--etcd-certfile and --etcd-keyfile must be given together".into(),
                ));
            }
        };
        let https = self
            .etcd_endpoints
            .iter()
            .any(|e| e.starts_with("https://"));
        let tls = match (&self.etcd_cafile, identity) {
            (Some(ca), identity) => Some(ClientTls {
                ca_file: ca.clone(),
                identity,
            }),
            (None, Some(_)) => {
                return Err(Error::Usage(
                    "--etcd-certfile needs --etcd-cafile (the CA of the etcd servers)".into(),
                ));
            }
            (None, None) if https => {
                return Err(Error::Usage(
                    "https:// endpoints need --etcd-cafile (the CA of the etcd servers)".into(),
                ));
            }
            (None, None) => None,
        };
        if tls.is_some()
            && let Some(e) = self
                .etcd_endpoints
                .iter()
                .find(|e| e.starts_with("http://"))
        {
            return Err(Error::Usage(format!(
                "endpoint {e} is plaintext but --etcd-cafile/--etcd-certfile ask for TLS; use https://"
            )));
        }
        if let Some(t) = &tls {
            t.check()?;
        }
        Ok(tls)
    }

    /// The credentials, if any; one of user name and password without the other is an error.
    pub fn credentials(&self) -> Result<Option<Credentials>> {
        match (&self.etcd_username, &self.etcd_password) {
            (Some(u), Some(p)) => Ok(Some(Credentials {
                username: u.clone(),
                password: p.clone(),
            })),
            (None, None) => Ok(None),
            _ => Err(Error::Usage(
                "--etcd-username and --etcd-password must be given together".into(),
            )),
        }
    }
}

/// The daemon's own flags.
#[derive(Debug, Clone, Args)]
pub struct DaemonArgs {
    /// Interface (name, or IPv4 or IPv6 address) to use for inter-host traffic; repeat it to
    /// try several in order, the first that exists wins. Default: the interface of the default
    /// route (the IPv6 one in an IPv6-only network).
    #[arg(long, env = "NETD_IFACE", value_name = "IFACE")]
    pub iface: Vec<String>,
    /// Regular expression matched against interface names and IP addresses; repeat it to
    /// try several in order, after every --iface.
    #[arg(long, env = "NETD_IFACE_REGEX", value_name = "REGEX")]
    pub iface_regex: Vec<String>,
    /// Use the interface this address is reached through (as `ip route get ADDR` shows it).
    #[arg(long, env = "NETD_IFACE_CAN_REACH", value_name = "ADDR")]
    pub iface_can_reach: Option<Ipv4Addr>,
    /// IPv4 address other hosts use to reach this one; default: the interface's address. Not
    /// used in an IPv6-only network (records then say 0.0.0.0, as flanneld's).
    #[arg(long, env = "NETD_PUBLIC_IP")]
    pub public_ip: Option<Ipv4Addr>,
    /// Where to write the subnet file for the CNI plugin.
    #[arg(
        long,
        env = "NETD_SUBNET_FILE",
        default_value = "/run/flannel/subnet.env"
    )]
    pub subnet_file: PathBuf,
    /// IPv6 address other hosts use to reach this one in a network with IPv6 (EnableIPv6);
    /// default: the interface's first global IPv6 address.
    #[arg(long, env = "NETD_PUBLIC_IPV6")]
    pub public_ipv6: Option<std::net::Ipv6Addr>,
    /// Masquerade traffic leaving the cluster network (nftables table `ip netd`).
    #[arg(long, env = "NETD_IP_MASQ", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", default_value = "false",
          value_parser = clap::builder::BoolishValueParser::new(), action = clap::ArgAction::Set)]
    pub ip_masq: bool,
    /// Masquerade without fully-random source port mapping.
    #[arg(long, env = "NETD_IP_MASQ_FULLY_RANDOM_DISABLE", num_args = 0..=1,
          require_equals = true, default_missing_value = "true", default_value = "false",
          value_parser = clap::builder::BoolishValueParser::new(), action = clap::ArgAction::Set)]
    pub ip_masq_fully_random_disable: bool,
    /// Accept forwarded traffic from and to the cluster network (flannel's name; nftables rules
    /// in table `ip netd`).
    #[arg(long, env = "NETD_IPTABLES_FORWARD_RULES", num_args = 0..=1,
          require_equals = true, default_missing_value = "true", default_value = "true",
          value_parser = clap::builder::BoolishValueParser::new(), action = clap::ArgAction::Set)]
    pub iptables_forward_rules: bool,
    /// Seconds between checks that netd's nftables rules are still in place (flannel's name).
    #[arg(long, env = "NETD_IPTABLES_RESYNC", default_value_t = 5,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub iptables_resync: u64,
    /// Route this host's own subnet to a blackhole: traffic to its unused addresses is dropped
    /// here instead of following the default route.
    #[arg(long, env = "NETD_IP_BLACKHOLE_ROUTE", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", default_value = "false",
          value_parser = clap::builder::BoolishValueParser::new(), action = clap::ArgAction::Set)]
    pub ip_blackhole_route: bool,
    #[command(flatten)]
    pub kube: KubeArgs,
    /// Address of the health/metrics server.
    #[arg(long, env = "NETD_HEALTHZ_IP", default_value = "0.0.0.0")]
    pub healthz_ip: IpAddr,
    /// Port of the health/metrics server (/healthz, /readyz, /metrics); 0 disables it.
    #[arg(long, env = "NETD_HEALTHZ_PORT", default_value_t = 0)]
    pub healthz_port: u16,
    /// Minutes before the subnet lease expires at which it is renewed (1-1439).
    #[arg(long, env = "NETD_SUBNET_LEASE_RENEW_MARGIN", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..=1439))]
    pub subnet_lease_renew_margin: u64,
    /// Seconds a subnet lease lives without renewal (flannel: 24 h).
    #[arg(long, env = "NETD_SUBNET_LEASE_TTL", default_value_t = 86400,
          value_parser = clap::value_parser!(u64).range(5..))]
    pub subnet_lease_ttl: u64,
    /// Seconds between full reconciles of kernel state against the KV store.
    #[arg(long, env = "NETD_RECONCILE_INTERVAL", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub reconcile_interval: u64,
}

impl DaemonArgs {
    /// The nftables rules netd's table holds.
    pub fn nft_rules(&self) -> crate::masq::Rules {
        crate::masq::Rules {
            masquerade: self.ip_masq,
            fully_random: !self.ip_masq_fully_random_disable,
            forward: self.iptables_forward_rules,
        }
    }

    /// How to pick the underlay interface, from --iface, --iface-regex and --iface-can-reach.
    pub fn iface_choice(&self) -> Result<crate::dataplane::device::IfaceChoice> {
        let regexes = self
            .iface_regex
            .iter()
            .map(|r| {
                regex_lite::Regex::new(r)
                    .map_err(|e| Error::Usage(format!("--iface-regex {r:?}: {e}")))
            })
            .collect::<Result<_>>()?;
        Ok(crate::dataplane::device::IfaceChoice {
            ifaces: self.iface.clone(),
            regexes,
            can_reach: self.iface_can_reach,
        })
    }
}

/// flanneld's Kubernetes subnet-manager flags: netd keeps subnets in the KV store only, so each
/// of them is refused with a reason rather than ignored.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "flanneld's Kubernetes flags (refused: netd uses the KV store)")]
pub struct KubeArgs {
    /// Refused.
    #[arg(long, env = "NETD_KUBE_SUBNET_MGR", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", default_value = "false",
          value_parser = clap::builder::BoolishValueParser::new(), action = clap::ArgAction::Set)]
    pub kube_subnet_mgr: bool,
    /// Refused.
    #[arg(long, env = "NETD_KUBE_API_URL")]
    pub kube_api_url: Option<String>,
    /// Refused.
    #[arg(long, env = "NETD_KUBECONFIG_FILE")]
    pub kubeconfig_file: Option<String>,
    /// Refused.
    #[arg(long, env = "NETD_KUBE_ANNOTATION_PREFIX")]
    pub kube_annotation_prefix: Option<String>,
    /// Refused (netd reads the network config from the KV store: `netd config set`).
    #[arg(long, env = "NETD_NET_CONFIG_PATH")]
    pub net_config_path: Option<String>,
    /// Refused.
    #[arg(long, env = "NETD_SET_NODE_NETWORK_UNAVAILABLE")]
    pub set_node_network_unavailable: Option<String>,
}

impl KubeArgs {
    /// The first Kubernetes flag given, if any.
    fn given(&self) -> Option<&'static str> {
        [
            (self.kube_subnet_mgr, "--kube-subnet-mgr"),
            (self.kube_api_url.is_some(), "--kube-api-url"),
            (self.kubeconfig_file.is_some(), "--kubeconfig-file"),
            (
                self.kube_annotation_prefix.is_some(),
                "--kube-annotation-prefix",
            ),
            (self.net_config_path.is_some(), "--net-config-path"),
            (
                self.set_node_network_unavailable.is_some(),
                "--set-node-network-unavailable",
            ),
        ]
        .into_iter()
        .find_map(|(set, flag)| set.then_some(flag))
    }
}

/// Everything [`crate::run`] needs.
#[derive(Debug, Clone)]
pub struct Config {
    pub kv: KvArgs,
    pub daemon: DaemonArgs,
}

impl Config {
    /// Checks what clap cannot.
    pub fn validate(&self) -> Result<()> {
        for e in &self.kv.etcd_endpoints {
            if e.trim().is_empty() {
                return Err(Error::Usage(
                    "--etcd-endpoints contains an empty endpoint".into(),
                ));
            }
        }
        self.kv.credentials()?;
        self.kv.client_tls()?;
        if let Some(flag) = self.daemon.kube.given() {
            return Err(Error::Usage(format!(
                "{flag}: netd has no Kubernetes subnet manager; it keeps subnets in an etcd v3 \
                 store (--etcd-endpoints, or its embedded member) and reads the network config \
                 from it (`netd config set`)"
            )));
        }
        self.daemon.iface_choice()?;
        if !self.kv.etcd_prefix.starts_with('/') {
            return Err(Error::Usage(format!(
                "--etcd-prefix {:?} must start with '/'",
                self.kv.etcd_prefix
            )));
        }
        Ok(())
    }

    pub fn reconcile_interval(&self) -> Duration {
        Duration::from_secs(self.daemon.reconcile_interval)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_flannel_flags_and_env() {
        let cli = Cli::try_parse_from([
            "netd",
            "--etcd-endpoints",
            "http://a:2379,http://b:2379",
            "--iface",
            "eth1",
            "--ip-masq",
            "--healthz-port",
            "8081",
        ])
        .unwrap();
        assert_eq!(cli.kv.etcd_endpoints.len(), 2);
        assert_eq!(cli.daemon.iface, vec!["eth1"]);
        assert!(cli.daemon.ip_masq);
        assert_eq!(cli.kv.etcd_prefix, "/coreos.com/network");
        assert!(Cli::try_parse_from(["netd", "--subnet-lease-renew-margin", "0"]).is_err());
        assert!(Cli::try_parse_from(["netd", "--public-ip", "nope"]).is_err());
        let c = Cli::try_parse_from(["netd", "leases", "--json", "--etcd-prefix", "/x"]).unwrap();
        assert!(matches!(c.command, Some(Command::Leases { json: true })));
        let bad = Config {
            kv: KvArgs {
                etcd_prefix: "x".into(),
                ..c.kv
            },
            daemon: c.daemon,
        };
        assert!(bad.validate().is_err());
    }
}
