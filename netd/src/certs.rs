//! `netd certs`: creates a CA in a directory (or reuses the one there) and issues member
//! certificates (for kvstore members or netd's embedded member: client and peer ports) and
//! client certificates (netd's `--etcd-certfile`, etcdctl's `--cert`), for a test or small
//! cluster. Keys are written owner-only (0600).

use std::io::Write;
use std::path::{Path, PathBuf};

use kvstore::certs::{Ca, Role};

use crate::error::{Error, Result};

/// `netd certs` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct CertsArgs {
    /// Directory for the files (created if missing). A CA already there (ca.pem, ca-key.pem)
    /// signs the new certificates, so members can be added later.
    #[arg(long)]
    pub dir: PathBuf,
    /// A member certificate: NAME=HOST[,HOST…] with the IP addresses and DNS names the member
    /// is reached at (localhost and 127.0.0.1 are always added). Repeatable.
    #[arg(long = "member", value_name = "NAME=HOSTS")]
    pub members: Vec<String>,
    /// A client certificate with common name NAME. Repeatable.
    #[arg(long = "client", value_name = "NAME")]
    pub clients: Vec<String>,
    /// Days the member and client certificates stay valid (the CA: ten years).
    #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u32).range(1..))]
    pub days: u32,
}

fn cert_err(e: kvstore::Error) -> Error {
    Error::Usage(e.to_string())
}

/// Writes the CA (if new) and every requested certificate; reports each file on `out`.
pub fn run(args: &CertsArgs, out: &mut impl Write) -> Result<()> {
    let members: Vec<(String, Vec<String>)> = args
        .members
        .iter()
        .map(|m| parse_member(m))
        .collect::<Result<_>>()?;
    if members.is_empty()
        && args.clients.is_empty()
        && Ca::load(&args.dir).is_ok_and(|c| c.is_some())
    {
        return Err(Error::Usage(
            "nothing to do: the CA exists; name certificates with --member or --client".into(),
        ));
    }
    create_dir(&args.dir)?;
    let say = |out: &mut dyn Write, line: String| {
        writeln!(out, "{line}").map_err(|e| Error::file("stdout", e))
    };
    let ca = match Ca::load(&args.dir).map_err(cert_err)? {
        Some(ca) => {
            say(
                out,
                format!("using CA {}", args.dir.join("ca.pem").display()),
            )?;
            ca
        }
        None => {
            let ca = Ca::generate("netd cluster CA").map_err(cert_err)?;
            ca.write(&args.dir).map_err(cert_err)?;
            say(
                out,
                format!("created CA {}", args.dir.join("ca.pem").display()),
            )?;
            ca
        }
    };
    for (name, hosts) in &members {
        ca.issue(Role::Member, name, hosts, args.days)
            .and_then(|c| c.write(&args.dir, name))
            .map_err(cert_err)?;
        say(out, format!("member {name}: {}", pair(&args.dir, name)))?;
    }
    for name in &args.clients {
        ca.issue(Role::Client, name, &[], args.days)
            .and_then(|c| c.write(&args.dir, name))
            .map_err(cert_err)?;
        say(out, format!("client {name}: {}", pair(&args.dir, name)))?;
    }
    Ok(())
}

fn pair(dir: &Path, name: &str) -> String {
    format!(
        "{} {}",
        dir.join(format!("{name}.pem")).display(),
        dir.join(format!("{name}-key.pem")).display()
    )
}

/// `NAME=HOST,HOST` (hosts optional).
fn parse_member(spec: &str) -> Result<(String, Vec<String>)> {
    let (name, hosts) = spec.split_once('=').unwrap_or((spec, ""));
    if name.trim().is_empty() {
        return Err(Error::Usage(format!(
            "--member {spec:?} must be NAME=HOST[,HOST...]"
        )));
    }
    let hosts = hosts
        .split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(String::from)
        .collect();
    Ok((name.trim().to_string(), hosts))
}

/// The directory holds private keys: create it owner-only.
fn create_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| Error::file(dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_ca_members_and_clients() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("pki");
        let args = CertsArgs {
            dir: dir.clone(),
            members: vec!["h1=192.0.2.1,h1.example".into(), "h2".into()],
            clients: vec!["netd".into()],
            days: 30,
        };
        let mut out = Vec::new();
        run(&args, &mut out).expect("certs");
        let text = String::from_utf8(out).expect("utf8");
        assert!(text.contains("created CA"), "{text}");
        for f in [
            "ca.pem",
            "ca-key.pem",
            "h1.pem",
            "h1-key.pem",
            "h2.pem",
            "netd-key.pem",
        ] {
            assert!(dir.join(f).is_file(), "{f} missing");
        }
        // A second run reuses the CA.
        let again = CertsArgs {
            members: vec!["h3=192.0.2.3".into()],
            clients: vec![],
            ..args.clone()
        };
        let mut out = Vec::new();
        run(&again, &mut out).expect("certs again");
        assert!(String::from_utf8_lossy(&out).contains("using CA"));
        assert!(parse_member("=1.2.3.4").is_err());
        let nothing = CertsArgs {
            members: vec![],
            clients: vec![],
            ..args
        };
        assert!(run(&nothing, &mut Vec::new()).is_err());
    }
}
