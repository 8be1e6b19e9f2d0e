//! The crate's single error type and its one conversion into a CNI error reply.
//!
//! Every failure in the plugin is a [`CniError`]; `lib::run` turns it into the JSON object the
//! spec defines (`{cniVersion, code, msg, details}`) on stdout with a non-zero exit. Nowhere else
//! builds error JSON.

use serde_json::json;

/// CNI error codes used by this plugin (spec 1.1 §"Error" plus plugin-specific codes ≥ 100).
pub mod code {
    /// Incompatible CNI version.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// Unsupported field in network configuration.
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// Invalid necessary environment variables.
    pub const BAD_ENV: u32 = 4;
    /// I/O failure.
    pub const IO: u32 = 5;
    /// Failed to decode content.
    pub const DECODE: u32 = 6;
    /// Invalid network config.
    pub const INVALID_CONFIG: u32 = 7;
    /// Try again later.
    pub const TRY_AGAIN: u32 = 11;
    /// STATUS: plugin not available.
    pub const UNAVAILABLE: u32 = 50;
    /// Plugin-specific: a kernel (netlink / netns) operation failed.
    pub const KERNEL: u32 = 100;
    /// Plugin-specific: CHECK found the attachment not as ADD left it.
    pub const CHECK_FAILED: u32 = 101;
    /// Plugin-specific: no free address left in the node subnet.
    pub const EXHAUSTED: u32 = 102;
    /// Plugin-specific: the interface or allocation already exists.
    pub const ALREADY_EXISTS: u32 = 103;
    /// Plugin-specific: the delegated IPAM plugin failed.
    pub const DELEGATE: u32 = 104;
    /// Plugin-specific: nftables masquerade setup failed.
    pub const FIREWALL: u32 = 105;
    /// Plugin-specific: a file or directory the plugin reads is writable by other users.
    pub const UNTRUSTED_FILE: u32 = 106;
}

/// Everything that can go wrong in one plugin invocation.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    #[error("incompatible CNI version {0:?} (supported: 0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0)")]
    IncompatibleVersion(String),
    #[error("command {command} is not supported by config version {version}")]
    CommandNotInVersion {
        command: &'static str,
        version: String,
    },
    #[error("invalid environment variable {var}: {reason}")]
    BadEnv { var: &'static str, reason: String },
    #[error("cannot decode {what}: {reason}")]
    Decode { what: &'static str, reason: String },
    #[error("invalid network config: {0}")]
    InvalidConfig(String),
    #[error("subnet file {path} not available yet: {reason}")]
    SubnetFileMissing { path: String, reason: String },
    #[error("subnet file {path} is invalid: {reason}")]
    SubnetFileInvalid { path: String, reason: String },
    #[error("refusing {path}: it {reason}")]
    Untrusted { path: String, reason: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{context}: {reason}")]
    Kernel { context: String, reason: String },
    #[error("interface {0} already exists in the container")]
    InterfaceExists(String),
    #[error("address {0} is already allocated")]
    AddressTaken(String),
    #[error("no free address left in {0}")]
    Exhausted(String),
    #[error("check failed: {0}")]
    CheckFailed(String),
    #[error("IPAM plugin {plugin} failed (code {code}): {msg}")]
    Delegate {
        plugin: String,
        code: u32,
        msg: String,
    },
    #[error("nftables: {0}")]
    Firewall(String),
    #[error("plugin unavailable: {0}")]
    Unavailable(String),
    #[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    Several(Vec<CniError>),
}

impl CniError {
    /// Shorthand for an I/O error with the operation that failed.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        CniError::Io {
            context: context.into(),
            source,
        }
    }

    /// Shorthand for a failed netlink or namespace operation.
    pub fn kernel(context: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        CniError::Kernel {
            context: context.into(),
            reason: reason.to_string(),
        }
    }

    /// The CNI error code reported to the runtime.
    pub fn code(&self) -> u32 {
        match self {
            CniError::IncompatibleVersion(_) | CniError::CommandNotInVersion { .. } => {
                code::INCOMPATIBLE_VERSION
            }
            CniError::BadEnv { .. } => code::BAD_ENV,
            CniError::Decode { .. } => code::DECODE,
            CniError::InvalidConfig(_) | CniError::SubnetFileInvalid { .. } => code::INVALID_CONFIG,
            CniError::SubnetFileMissing { .. } => code::TRY_AGAIN,
            CniError::Io { .. } => code::IO,
            CniError::Untrusted { .. } => code::UNTRUSTED_FILE,
            CniError::Kernel { .. } => code::KERNEL,
            CniError::InterfaceExists(_) | CniError::AddressTaken(_) => code::ALREADY_EXISTS,
            CniError::Exhausted(_) => code::EXHAUSTED,
            CniError::CheckFailed(_) => code::CHECK_FAILED,
            CniError::Delegate { code, .. } => *code,
            CniError::Firewall(_) => code::FIREWALL,
            CniError::Unavailable(_) => code::UNAVAILABLE,
            CniError::Several(errs) => errs.first().map_or(code::IO, CniError::code),
        }
    }

    /// Combine the errors of a best-effort teardown; `None` when all steps succeeded.
    pub fn combine(mut errs: Vec<CniError>) -> Option<CniError> {
        match errs.len() {
            0 => None,
            1 => errs.pop(),
            _ => Some(CniError::Several(errs)),
        }
    }

    /// The CNI error reply, the only place where error JSON is built.
    pub fn to_json(&self, cni_version: &str) -> serde_json::Value {
        let details = match self {
            CniError::Io { source, .. } => source.to_string(),
            CniError::Delegate { plugin, .. } => format!("delegated IPAM plugin: {plugin}"),
            _ => String::new(),
        };
        json!({
            "cniVersion": cni_version,
            "code": self.code(),
            "msg": self.to_string(),
            "details": details,
        })
    }
}

pub type Result<T> = std::result::Result<T, CniError>;

impl From<hostnet::Error> for CniError {
    fn from(e: hostnet::Error) -> Self {
        match e {
            hostnet::Error::Untrusted { path, reason } => CniError::Untrusted { path, reason },
            hostnet::Error::Io { op, path, source } => CniError::io(format!("{op} {path}"), source),
            hostnet::Error::Enter { path, source } => {
                CniError::kernel(format!("enter netns {path}"), source)
            }
            hostnet::Error::ThreadPanicked { .. } => CniError::kernel("netns thread", "panicked"),
        }
    }
}
