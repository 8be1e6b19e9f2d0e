//! The crate's one error type.
//!
//! Every fallible path in netd ends in [`Error`]; variants carry the context an operator needs to
//! act on a one-line message (which key, which file, which device).

/// Everything that can go wrong in netd.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The command line or environment is inconsistent; netd exits non-zero.
    #[error("invalid configuration: {0}")]
    Usage(String),

    /// `<prefix>/config` is missing from the KV store.
    #[error("network config not found at {key} (write it with `netd config set`)")]
    ConfigMissing { key: String },

    /// `<prefix>/config` exists but is not valid JSON or fails validation.
    #[error("invalid network config at {key}: {reason}")]
    ConfigInvalid { key: String, reason: String },

    /// A subnet record (key or value) could not be understood.
    #[error("malformed subnet record {key}: {reason}")]
    BadRecord { key: String, reason: String },

    /// Every subnet between SubnetMin and SubnetMax is taken.
    #[error(
        "out of subnets: all {total} subnets of {network} between SubnetMin and SubnetMax are taken"
    )]
    OutOfSubnets { network: String, total: u64 },

    /// The compare-and-swap race for a subnet was lost too many times in a row.
    #[error("could not acquire a subnet lease after {attempts} attempts (lost every race)")]
    LeaseRace { attempts: u32 },

    /// The KV lease backing our subnet record is gone (expired, revoked or record deleted).
    #[error("subnet lease lost: {0}")]
    LeaseLost(String),

    /// Talking to the KV store (etcd v3 API) failed.
    #[error("kv store: {0}")]
    Kv(#[from] kvstore::client::Error),

    /// The embedded KV member stopped under a running netd.
    #[error("embedded KV member: {0}")]
    EmbeddedKv(String),

    /// A netlink request failed.
    #[error("netlink {op}: {source}")]
    Netlink {
        op: String,
        #[source]
        source: rtnetlink::Error,
    },

    /// The task watching the other hosts' subnet records ended (only a bug ends it).
    #[error("watching the subnet records stopped: {0}")]
    Watcher(String),

    /// A kernel object netd needs is missing or looks wrong.
    #[error("kernel state: {0}")]
    Kernel(String),

    /// No usable underlay interface / address.
    #[error("interface: {0}")]
    Interface(String),

    /// The public IP is not on the chosen interface where the backend needs it to be.
    #[error("public IP {ip} is not an address of interface {iface}")]
    PublicIpNotLocal { ip: std::net::IpAddr, iface: String },

    /// A runtime file or directory others could write (see `file_trust`).
    #[error("refusing {path}: it {reason}")]
    Untrusted { path: String, reason: String },

    /// A file could not be read or written.
    #[error("{path}: {source}")]
    File {
        path: String,
        #[source]
        source: std::io::Error,
    },

    /// Programming netd's nf_tables tables over netlink failed.
    #[error("nftables: {0}")]
    Nftables(#[from] hostnet::nftables::Error),

    /// JSON (de)serialisation of our own data failed.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
}

impl Error {
    /// Wraps a netlink error with the operation that failed.
    pub fn netlink(op: impl Into<String>, source: rtnetlink::Error) -> Self {
        Error::Netlink {
            op: op.into(),
            source,
        }
    }

    /// True when output went to a reader that has gone (`netd leases | head`): the command
    /// should end quietly, as a tool killed by SIGPIPE does.
    pub fn is_broken_pipe(&self) -> bool {
        match self {
            Error::File { source, .. } => source.kind() == std::io::ErrorKind::BrokenPipe,
            Error::Json(e) => e.io_error_kind() == Some(std::io::ErrorKind::BrokenPipe),
            _ => false,
        }
    }

    /// Wraps an I/O error with the path it concerns.
    pub fn file(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Self {
        Error::File {
            path: path.as_ref().display().to_string(),
            source,
        }
    }
}

/// Shorthand used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<hostnet::Error> for Error {
    fn from(e: hostnet::Error) -> Self {
        match e {
            hostnet::Error::Untrusted { path, reason } => Error::Untrusted { path, reason },
            hostnet::Error::Io { path, source, .. } => Error::File { path, source },
            e @ (hostnet::Error::Enter { .. } | hostnet::Error::ThreadPanicked { .. }) => {
                Error::Kernel(e.to_string())
            }
        }
    }
}
