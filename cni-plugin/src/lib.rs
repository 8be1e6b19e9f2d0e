//! netd-cni: the CNI plugin that attaches containers to the node subnet netd leased.
//!
//! # Layout
//! - [`env`]: the `CNI_*` environment, validated (nothing from it may escape a directory).
//! - [`config`]: the network config on stdin, its keys and defaults.
//! - [`version`]: spec versions and which commands each allows.
//! - [`subnet_env`]: the node's networks, subnets (IPv4, and IPv6 on a dual-stack node) and
//!   MTU from netd's `subnet.env`.
//! - [`ipam`]: the built-in host-local-compatible address store, or a delegated IPAM plugin.
//! - [`net`]: rtnetlink work — namespaces, the bridge and veth on the host, the container side.
//! - [`masq`]: outbound masquerade, one nf_tables rule per network and node subnet (netlink).
//! - [`naming`]: deterministic names derived from an attachment.
//! - [`result`]: CNI results, parsed and shaped per version.
//! - [`commands`]: ADD, DEL, CHECK, GC, STATUS, VERSION.
//! - [`error`]: the one error type, and its one conversion to CNI error JSON.
//! - [`file_trust`]: refusing files and directories other users could write.
//!
//! [`run`] is the whole plugin; `main.rs` only wires it to the process.

pub mod commands;
pub mod config;
pub mod env;
pub mod error;
/// Trust checks for runtime files (shared with netd).
pub use hostnet::file_trust;
#[doc(hidden)]
pub mod fuzz;
pub mod ipam;
pub mod masq;
pub mod naming;
pub mod net;
pub mod result;
pub mod subnet_env;
pub mod version;

use std::io::Write;

use serde_json::Value;

use crate::config::{NetConf, peek_version};
use crate::env::Command;
use crate::error::{CniError, Result};
use crate::version::CniVersion;

/// Run one invocation: environment from `getenv`, config from `stdin`, reply to `stdout`.
/// Returns the process exit code (0 on success, 1 with error JSON on stdout otherwise).
pub fn run(getenv: impl Fn(&str) -> Option<String>, stdin: &[u8], stdout: &mut dyn Write) -> i32 {
    let (reply, code) = match dispatch(getenv, stdin) {
        Ok(reply) => (reply, 0),
        Err(e) => {
            // Errors echo the config's version when it is one we know.
            let version = peek_version(stdin)
                .and_then(|v| CniVersion::parse(&v).ok())
                .unwrap_or(CniVersion::LATEST);
            (Some(e.to_json(version.as_str())), 1)
        }
    };
    if let Some(value) = reply {
        let text = serde_json::to_string(&value).unwrap_or_default();
        if writeln!(stdout, "{text}")
            .and_then(|_| stdout.flush())
            .is_err()
        {
            return 1;
        }
    }
    code
}

fn dispatch(getenv: impl Fn(&str) -> Option<String>, stdin: &[u8]) -> Result<Option<Value>> {
    let inv = env::from_lookup(getenv)?;
    if inv.command == Command::Version {
        return Ok(Some(commands::version::run(stdin)));
    }
    let conf = NetConf::parse(stdin)?;
    let allowed = match inv.command {
        Command::Check => conf.version.has_check(),
        Command::Gc | Command::Status => conf.version.has_gc_status(),
        _ => true,
    };
    if !allowed {
        return Err(CniError::CommandNotInVersion {
            command: inv.command.as_str(),
            version: conf.version.as_str().to_string(),
        });
    }
    match inv.command {
        Command::Gc => commands::gc::run(&inv, &conf).map(|()| None),
        Command::Status => commands::status::run(&inv, &conf).map(|()| None),
        _ => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .enable_time()
                .build()
                .map_err(|e| CniError::io("start async runtime", e))?;
            rt.block_on(async {
                match inv.command {
                    Command::Add => commands::add::run(&inv, &conf).await.map(Some),
                    Command::Del => commands::del::run(&inv, &conf).await.map(|()| None),
                    _ => commands::check::run(&inv, &conf).await.map(|()| None),
                }
            })
        }
    }
}
