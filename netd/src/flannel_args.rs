//! flanneld's command-line forms and environment, mapped onto netd's flags before clap parses
//! them, so that a flanneld unit file or environment file starts netd unchanged (but for the
//! binary's path).
//!
//! - Go's flag package takes long flags with one dash as well as two (`-iface=eth1`,
//!   `-ip-masq`); those are rewritten to two dashes when the name is one of netd's long flags.
//! - flanneld reads every flag not given on the command line from `FLANNELD_<FLAG>`
//!   (upper case, dashes as underscores). netd does the same for its top-level flags; netd's
//!   own `NETD_<FLAG>` wins over `FLANNELD_<FLAG>`, and the command line over both.

use std::ffi::OsString;

/// The command line netd parses: `args` (program name first) with Go's one-dash long flags
/// rewritten, and a `--flag=value` before the rest for each `FLANNELD_<FLAG>` in `env` that
/// neither the command line nor `NETD_<FLAG>` sets.
pub fn command_line(
    args: impl IntoIterator<Item = OsString>,
    env: impl IntoIterator<Item = (OsString, OsString)>,
    cmd: &clap::Command,
) -> Vec<OsString> {
    let longs = long_names(cmd);
    let mut out: Vec<OsString> = Vec::new();
    let mut rest_is_positional = false;
    for (i, arg) in args.into_iter().enumerate() {
        if i == 0 || rest_is_positional {
            out.push(arg);
            continue;
        }
        if arg == "--" {
            rest_is_positional = true;
            out.push(arg);
            continue;
        }
        out.push(match arg.to_str() {
            Some(a) if is_go_long_flag(a, &longs) => format!("-{a}").into(),
            _ => arg,
        });
    }
    let env: Vec<(String, String)> = env
        .into_iter()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect();
    let given = |long: &str| {
        out.iter().skip(1).any(|a| {
            a.to_str()
                .is_some_and(|a| a == format!("--{long}") || a.starts_with(&format!("--{long}=")))
        })
    };
    let mut from_env = Vec::new();
    for arg in cmd.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if long == "help" || long == "version" || given(long) {
            continue;
        }
        let suffix = long.to_uppercase().replace('-', "_");
        let netd_set = env.iter().any(|(k, _)| *k == format!("NETD_{suffix}"));
        let flannel = env.iter().find(|(k, _)| *k == format!("FLANNELD_{suffix}"));
        if let (false, Some((_, value))) = (netd_set, flannel) {
            from_env.push(OsString::from(format!("--{long}={value}")));
        }
    }
    let at = out.len().min(1);
    out.splice(at..at, from_env);
    out
}

/// `-name` or `-name=value` where `name` is a long flag (Go's one-dash form).
fn is_go_long_flag(arg: &str, longs: &[String]) -> bool {
    let Some(rest) = arg.strip_prefix('-') else {
        return false;
    };
    if rest.starts_with('-') {
        return false;
    }
    let name = rest.split_once('=').map_or(rest, |(n, _)| n);
    name.len() > 1 && longs.iter().any(|l| l == name)
}

/// Every long flag name of `cmd` and its subcommands.
fn long_names(cmd: &clap::Command) -> Vec<String> {
    let mut out: Vec<String> = cmd
        .get_arguments()
        .filter_map(|a| a.get_long().map(str::to_owned))
        .collect();
    for sub in cmd.get_subcommands() {
        out.extend(long_names(sub));
    }
    out
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::*;
    use crate::cli::Cli;

    fn parse(args: &[&str], env: &[(&str, &str)]) -> Result<Cli, clap::Error> {
        let line = command_line(
            args.iter().map(OsString::from),
            env.iter()
                .map(|(k, v)| (OsString::from(k), OsString::from(v))),
            &Cli::command(),
        );
        Cli::try_parse_from(line)
    }

    #[test]
    fn go_flag_forms_are_netd_flags() {
        let c = parse(
            &[
                "netd",
                "-etcd-endpoints=http://a:2379",
                "-iface",
                "eth1",
                "--iface=eth2",
                "-ip-masq",
                "-iptables-forward-rules=false",
                "-v=2",
            ],
            &[],
        )
        .expect("parse");
        assert_eq!(c.kv.etcd_endpoints, vec!["http://a:2379"]);
        assert_eq!(c.daemon.iface, vec!["eth1", "eth2"]);
        assert!(c.daemon.ip_masq);
        assert!(!c.daemon.iptables_forward_rules);
        assert_eq!(c.verbosity, Some(2));
        // A value that happens to start with a dash is left alone; so is everything after --.
        assert!(is_go_long_flag("-iface=x", &["iface".into()]));
        assert!(
            !is_go_long_flag("-x", &["x".into()]),
            "one letter stays short"
        );
        assert!(!is_go_long_flag("-nope", &["iface".into()]));
    }

    #[test]
    fn flanneld_environment_fills_what_nothing_else_sets() {
        let env = [
            ("FLANNELD_ETCD_ENDPOINTS", "http://e:2379"),
            ("FLANNELD_IFACE", "eth9"),
            ("FLANNELD_IP_MASQ", "true"),
            ("FLANNELD_ETCD_PREFIX", "/atomic.io/network"),
            ("NETD_ETCD_PREFIX", "/netd"),
        ];
        let c = parse(&["netd", "--iface", "eth1"], &env).expect("parse");
        assert_eq!(c.kv.etcd_endpoints, vec!["http://e:2379"]);
        assert_eq!(c.daemon.iface, vec!["eth1"], "the command line wins");
        assert!(c.daemon.ip_masq);
        // NETD_ETCD_PREFIX wins over FLANNELD_ETCD_PREFIX (clap reads NETD_ itself; here the
        // FLANNELD_ one is simply not turned into a flag).
        let line = command_line(
            ["netd"].iter().map(OsString::from),
            env.iter()
                .map(|(k, v)| (OsString::from(k), OsString::from(v))),
            &Cli::command(),
        );
        assert!(
            !line
                .iter()
                .any(|a| a.to_string_lossy().contains("atomic.io")),
            "{line:?}"
        );
        // With a subcommand, the flags from the environment still come before it.
        let c = parse(&["netd", "leases", "--json"], &env).expect("parse");
        assert!(c.command.is_some());
        assert_eq!(c.kv.etcd_endpoints, vec!["http://e:2379"]);
    }
}
