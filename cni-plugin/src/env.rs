//! The CNI environment (`CNI_COMMAND`, `CNI_CONTAINERID`, …), read and validated.
//!
//! Container ids, interface names and `CNI_ARGS` are checked here so that nothing derived from
//! them (data-directory file names, link names) can escape the plugin's own directories.

use crate::error::{CniError, Result};

/// The operation the runtime asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Gc,
    Status,
}

impl Command {
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Version => "VERSION",
            Command::Gc => "GC",
            Command::Status => "STATUS",
        }
    }
}

/// One attachment's identity and the runtime-supplied context.
#[derive(Debug, Clone)]
pub struct Invocation {
    pub command: Command,
    /// Validated container id; empty only for VERSION, GC and STATUS.
    pub container_id: String,
    /// Path of the container netns; `None` when unset or empty (allowed for DEL).
    pub netns: Option<String>,
    /// Validated interface name; empty only for VERSION, GC and STATUS.
    pub ifname: String,
    /// `CNI_ARGS` as given (forwarded to a delegated IPAM plugin).
    pub args: String,
    /// `CNI_PATH` split on `:`.
    pub path: Vec<String>,
}

/// Longest interface name the kernel accepts (IFNAMSIZ - 1).
const MAX_IFNAME: usize = 15;

/// Read the CNI environment through `get` (the process environment in production).
pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Invocation> {
    let command = match get("CNI_COMMAND").as_deref() {
        Some("ADD") => Command::Add,
        Some("DEL") => Command::Del,
        Some("CHECK") => Command::Check,
        Some("VERSION") => Command::Version,
        Some("GC") => Command::Gc,
        Some("STATUS") => Command::Status,
        Some(other) => {
            return Err(CniError::BadEnv {
                var: "CNI_COMMAND",
                reason: format!("unknown command {other:?}"),
            });
        }
        None => {
            return Err(CniError::BadEnv {
                var: "CNI_COMMAND",
                reason: "not set".into(),
            });
        }
    };
    let per_attachment = matches!(command, Command::Add | Command::Del | Command::Check);
    let container_id = get("CNI_CONTAINERID").unwrap_or_default();
    let ifname = get("CNI_IFNAME").unwrap_or_default();
    let netns = get("CNI_NETNS").filter(|s| !s.is_empty());
    if per_attachment {
        validate_container_id(&container_id)?;
        validate_ifname(&ifname)?;
        if command != Command::Del && netns.is_none() {
            return Err(CniError::BadEnv {
                var: "CNI_NETNS",
                reason: format!("required for {}", command.as_str()),
            });
        }
    }
    let path = get("CNI_PATH")
        .unwrap_or_default()
        .split(':')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    Ok(Invocation {
        command,
        container_id,
        netns,
        ifname,
        args: get("CNI_ARGS").unwrap_or_default(),
        path,
    })
}

/// Container ids follow libcni's rule: `^[a-zA-Z0-9][a-zA-Z0-9_.-]*$`.
pub fn validate_container_id(id: &str) -> Result<()> {
    let bad = |reason: &str| CniError::BadEnv {
        var: "CNI_CONTAINERID",
        reason: format!("{reason}: {id:?}"),
    };
    let mut chars = id.chars();
    match chars.next() {
        None => return Err(bad("empty")),
        Some(c) if !c.is_ascii_alphanumeric() => {
            return Err(bad("must start with a letter or digit"));
        }
        Some(_) => {}
    }
    if !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')) {
        return Err(bad("invalid characters"));
    }
    Ok(())
}

/// Interface names: 1..=15 bytes, not `.`/`..`, no `/`, `:` or whitespace (as the kernel wants).
pub fn validate_ifname(name: &str) -> Result<()> {
    let bad = |reason: &str| CniError::BadEnv {
        var: "CNI_IFNAME",
        reason: format!("{reason}: {name:?}"),
    };
    if name.is_empty() {
        return Err(bad("empty"));
    }
    if name.len() > MAX_IFNAME {
        return Err(bad("longer than 15 bytes"));
    }
    if name == "." || name == ".." {
        return Err(bad("not a valid name"));
    }
    if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
    {
        return Err(bad("invalid characters"));
    }
    Ok(())
}

/// Value of `key` in `CNI_ARGS` (`K=V;K=V`).
pub fn cni_arg<'a>(args: &'a str, key: &str) -> Option<&'a str> {
    args.split(';')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> Result<Invocation> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn add_needs_all_four_variables() {
        let full = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_NETNS", "/run/netns/x"),
            ("CNI_IFNAME", "eth0"),
        ];
        assert!(env(&full).is_ok());
        for skip in 0..4 {
            let partial: Vec<_> = full
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != skip)
                .map(|(_, p)| *p)
                .collect();
            assert!(matches!(env(&partial), Err(CniError::BadEnv { .. })));
        }
    }

    #[test]
    fn del_accepts_empty_netns() {
        let inv = env(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_NETNS", ""),
            ("CNI_IFNAME", "eth0"),
        ]);
        assert!(inv.is_ok_and(|i| i.netns.is_none()));
    }

    #[test]
    fn version_accepts_podman_dummy_env() {
        let inv = env(&[
            ("CNI_COMMAND", "VERSION"),
            ("CNI_CONTAINERID", ""),
            ("CNI_NETNS", "dummy"),
            ("CNI_IFNAME", "dummy"),
            ("CNI_PATH", "dummy"),
        ]);
        assert!(inv.is_ok_and(|i| i.command == Command::Version));
    }

    #[test]
    fn rejects_escaping_names() {
        for id in ["../x", "a/b", ".hidden", "", "a b"] {
            assert!(validate_container_id(id).is_err(), "{id}");
        }
        for name in [
            "..",
            ".",
            "a/b",
            "eth:0",
            "averyveryverylongname",
            "e 0",
            "",
        ] {
            assert!(validate_ifname(name).is_err(), "{name}");
        }
        assert!(validate_container_id("ctr-ns-1234_a.b").is_ok());
        assert!(validate_ifname("eth0").is_ok());
    }

    #[test]
    fn reads_cni_args() {
        let args = "IgnoreUnknown=1;K8S_POD_NAME=web;IP=10.0.0.5";
        assert_eq!(cni_arg(args, "IP"), Some("10.0.0.5"));
        assert_eq!(cni_arg(args, "NOPE"), None);
    }
}
