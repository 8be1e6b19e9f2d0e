//! A small certificate authority for test and small clusters: creates a CA (or reuses the one
//! already in a directory) and issues member certificates (server and client use, for the
//! client and peer ports) and client certificates, as PEM files with owner-only keys. Behind
//! `netd certs`; real deployments may use any CA that etcd would accept.
//!
//! Files, named the way etcd's guides name them: `ca.pem`, `ca-key.pem`, `<name>.pem`,
//! `<name>-key.pem`.

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

use crate::error::{Error, Result};

/// Days a generated CA is valid.
pub const CA_DAYS: u32 = 3650;

/// What a certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A member: serves clients and peers and dials peers, so it is valid for both server and
    /// client authentication. Always also valid for `localhost` and `127.0.0.1`, which local
    /// clients (an embedding netd) use.
    Member,
    /// A client (etcdctl, netd): client authentication only; etcd takes the common name as
    /// the user name when authentication is on.
    Client,
}

/// A CA able to sign certificates.
pub struct Ca {
    cert_pem: String,
    key_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A certificate and its key, PEM-encoded.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

fn cert_error(what: &str, e: rcgen::Error) -> Error {
    Error::Config(format!("certificate {what}: {e}"))
}

/// From an hour ago (clocks differ a little between hosts) to `days` from now.
fn validity(params: &mut CertificateParams, days: u32) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(i64::from(days.max(1)));
}

impl Ca {
    /// A new self-signed CA named `common_name`.
    pub fn generate(common_name: &str) -> Result<Ca> {
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        validity(&mut params, CA_DAYS);
        let key = KeyPair::generate().map_err(|e| cert_error("key", e))?;
        let cert = params.self_signed(&key).map_err(|e| cert_error("CA", e))?;
        Ok(Ca {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA in `dir` (`ca.pem`, `ca-key.pem`), if there is one.
    pub fn load(dir: &Path) -> Result<Option<Ca>> {
        let (cert_path, key_path) = (dir.join("ca.pem"), dir.join("ca-key.pem"));
        if !cert_path.exists() && !key_path.exists() {
            return Ok(None);
        }
        let read = |p: &PathBuf| {
            std::fs::read_to_string(p)
                .map_err(|e| Error::Config(format!("CA file {}: {e}", p.display())))
        };
        let (cert_pem, key_pem) = (read(&cert_path)?, read(&key_path)?);
        let key = KeyPair::from_pem(&key_pem)
            .map_err(|e| Error::Config(format!("CA key file {}: {e}", key_path.display())))?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key)
            .map_err(|e| Error::Config(format!("CA file {}: {e}", cert_path.display())))?;
        Ok(Some(Ca {
            cert_pem,
            key_pem,
            issuer,
        }))
    }

    /// The CA certificate, PEM-encoded (what `--trusted-ca-file` and `--cacert` point at).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Writes `ca.pem` (0644) and `ca-key.pem` (0600) into `dir`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        write_file(&dir.join("ca.pem"), &self.cert_pem, 0o644)?;
        write_file(&dir.join("ca-key.pem"), &self.key_pem, 0o600)
    }

    /// Issues a certificate for `name`, valid for `days`. `hosts` are IP addresses or DNS
    /// names the certificate is valid for (members); clients need none.
    pub fn issue(&self, role: Role, name: &str, hosts: &[String], days: u32) -> Result<Issued> {
        let mut sans: Vec<String> = hosts
            .iter()
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .collect();
        if role == Role::Member {
            for local in ["localhost", "127.0.0.1"] {
                if !sans.iter().any(|s| s == local) {
                    sans.push(local.to_string());
                }
            }
        }
        let mut params =
            CertificateParams::new(sans).map_err(|e| cert_error(&format!("for {name}"), e))?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = match role {
            Role::Member => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            Role::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
        };
        validity(&mut params, days);
        let key = KeyPair::generate().map_err(|e| cert_error("key", e))?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| cert_error(&format!("for {name}"), e))?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

impl Issued {
    /// Writes `<name>.pem` (0644) and `<name>-key.pem` (0600) into `dir`.
    pub fn write(&self, dir: &Path, name: &str) -> Result<()> {
        check_file_name(name)?;
        write_file(&dir.join(format!("{name}.pem")), &self.cert_pem, 0o644)?;
        write_file(&dir.join(format!("{name}-key.pem")), &self.key_pem, 0o600)
    }
}

/// Names become file names: keep them to one plain path component.
fn check_file_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name != "ca"
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "certificate name {name:?} must be letters, digits, '-', '_' or '.' (and not \"ca\")"
        )))
    }
}

/// Writes `contents` with `mode` through a temporary file and a rename, so a reader never
/// sees half a key and a key never exists, even briefly, with a wider mode.
fn write_file(path: &Path, contents: &str, mode: u32) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let fail = |e: std::io::Error| Error::Config(format!("cannot write {}: {e}", path.display()));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(fail)?;
    // The umask may have narrowed the mode further; never widen it past `mode` though.
    f.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(fail)?;
    f.write_all(contents.as_bytes()).map_err(fail)?;
    f.sync_all().map_err(fail)?;
    std::fs::rename(&tmp, path).map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issues_member_and_client_certs_with_private_keys() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = Ca::generate("test CA").expect("ca");
        ca.write(dir.path()).expect("write");
        ca.issue(
            Role::Member,
            "m1",
            &["192.0.2.1".into(), "h1.example".into()],
            30,
        )
        .expect("member")
        .write(dir.path(), "m1")
        .expect("write member");
        ca.issue(Role::Client, "root", &[], 30)
            .expect("client")
            .write(dir.path(), "root")
            .expect("write client");
        for (file, mode) in [
            ("ca.pem", 0o644),
            ("ca-key.pem", 0o600),
            ("m1.pem", 0o644),
            ("m1-key.pem", 0o600),
            ("root-key.pem", 0o600),
        ] {
            let meta = std::fs::metadata(dir.path().join(file)).expect(file);
            assert_eq!(meta.permissions().mode() & 0o777, mode, "{file}");
        }
        // The CA is found again and signs certificates that chain to the same root.
        let again = Ca::load(dir.path()).expect("load").expect("present");
        assert_eq!(again.cert_pem(), ca.cert_pem());
        let issued = again.issue(Role::Member, "m2", &[], 1).expect("m2");
        assert!(issued.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(
            Ca::load(&dir.path().join("missing"))
                .expect("none")
                .is_none()
        );
        assert!(issued.write(dir.path(), "../evil").is_err());
        assert!(issued.write(dir.path(), "ca").is_err());
    }
}
