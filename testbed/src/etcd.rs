//! A member of an etcd-API store started the way etcd's docs start one: the reference etcd 3.4
//! (Debian's `/usr/bin/etcd`), or kvstore, which takes the same flags. One place states those
//! flags, for every test world, benchmark and cluster harness.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Result, ensure};

/// The reference etcd server.
pub const ETCD: &str = "/usr/bin/etcd";
/// The stock etcd client.
pub const ETCDCTL: &str = "/usr/bin/etcdctl";

/// Fails (never skips) when the reference etcd or etcdctl is missing.
pub fn require() -> Result<()> {
    for tool in [ETCD, ETCDCTL] {
        ensure!(
            Path::new(tool).exists(),
            "{tool} is missing: run scripts/install-deps.sh test (etcd-server, etcd-client)"
        );
    }
    Ok(())
}

/// One member's identity and addresses; [`Member::args`] renders etcd's flags.
#[derive(Debug, Clone)]
pub struct Member {
    pub name: String,
    pub data_dir: PathBuf,
    /// Listened on and advertised.
    pub client_url: String,
    /// Listened on and advertised to peers.
    pub peer_url: String,
    /// `--initial-cluster` (`name=peer-url,…`); `None`: this member alone.
    pub initial_cluster: Option<String>,
    /// `new` or `existing`.
    pub state: String,
    pub token: Option<String>,
    /// Further flags (TLS, timing…).
    pub extra: Vec<OsString>,
}

impl Member {
    /// A member `name` of a new cluster, with no token and no further flags.
    pub fn new(name: &str, data_dir: &Path, client_url: &str, peer_url: &str) -> Member {
        Member {
            name: name.into(),
            data_dir: data_dir.into(),
            client_url: client_url.into(),
            peer_url: peer_url.into(),
            initial_cluster: None,
            state: "new".into(),
            token: None,
            extra: Vec::new(),
        }
    }

    /// The member's command-line flags.
    pub fn args(&self) -> Vec<OsString> {
        let initial = self
            .initial_cluster
            .clone()
            .unwrap_or_else(|| format!("{}={}", self.name, self.peer_url));
        let mut args: Vec<OsString> = [
            "--name",
            &self.name,
            "--listen-client-urls",
            &self.client_url,
            "--advertise-client-urls",
            &self.client_url,
            "--listen-peer-urls",
            &self.peer_url,
            "--initial-advertise-peer-urls",
            &self.peer_url,
            "--initial-cluster",
            &initial,
            "--initial-cluster-state",
            &self.state,
        ]
        .iter()
        .map(OsString::from)
        .collect();
        args.push("--data-dir".into());
        args.push(self.data_dir.clone().into_os_string());
        if let Some(token) = &self.token {
            args.extend(["--initial-cluster-token".into(), token.into()]);
        }
        args.extend(self.extra.iter().cloned());
        args
    }

    /// The command that runs server binary `bin` as this member, inside namespace `ns` when
    /// given (`ip netns exec`, which execs: the child's pid is the server's own).
    pub fn command(&self, bin: &Path, ns: Option<&str>) -> Command {
        let mut cmd = match ns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        cmd.args(self.args());
        cmd
    }
}

/// The stock `etcdctl` (API v3) against `endpoints` (comma-separated), run inside namespace
/// `ns` when given; add the arguments (TLS flags, then the command) and run it.
pub fn etcdctl(ns: Option<&str>, endpoints: &str) -> Command {
    let mut cmd = match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, ETCDCTL]);
            c
        }
        None => Command::new(ETCDCTL),
    };
    cmd.env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoints}"));
    cmd
}

/// `--initial-cluster` for `(name, peer_url)` pairs.
pub fn initial_cluster<'a>(members: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    members
        .into_iter()
        .map(|(n, p)| format!("{n}={p}"))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lone_member_names_itself_as_the_initial_cluster() {
        let m = Member::new("e1", Path::new("/d"), "http://a:2379", "http://a:2380");
        let args: Vec<String> = m
            .args()
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let at = args.iter().position(|a| a == "--initial-cluster");
        assert_eq!(at.map(|i| args[i + 1].as_str()), Some("e1=http://a:2380"));
        assert!(!args.iter().any(|a| a == "--initial-cluster-token"));
    }

    #[test]
    fn initial_cluster_joins_pairs() {
        assert_eq!(
            initial_cluster([("a", "http://x:1"), ("b", "http://y:2")]),
            "a=http://x:1,b=http://y:2"
        );
    }
}
