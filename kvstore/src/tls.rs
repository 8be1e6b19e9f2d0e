//! TLS for a member, with etcd's meaning of its flags: a certificate and key to present, an
//! optional CA that client certificates must chain to (as in etcd, giving the CA is enough to
//! require client certificates; client-cert-auth additionally insists on a CA), and the
//! matching client side (CA to verify servers, own certificate to
//! present). One [`TlsFiles`] serves the client listener (`--cert-file` …) and the peer
//! listener and peer clients (`--peer-cert-file` …) alike. rustls with the ring provider
//! only; no OpenSSL.
//!
//! Every file problem is reported once, at start-up, as one line naming the file.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

use crate::config::{Config, is_https};
use crate::error::{Error, Result};

/// A TLS handshake that has not finished by then is dropped, so a silent client cannot hold a
/// connection slot.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Makes ring the process's rustls crypto provider unless one is installed already.
/// rustls picks a provider from its crate features only when exactly one is compiled in;
/// installing it explicitly keeps TLS working if another dependency ever adds a second one.
pub fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Losing a race with another thread installing one is fine: a provider is installed.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The TLS files of one side (client or peer), as etcd's flags name them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate (chain) this side presents (`--cert-file` / `--peer-cert-file`).
    pub cert_file: PathBuf,
    /// PEM private key of that certificate (`--key-file` / `--peer-key-file`).
    pub key_file: PathBuf,
    /// PEM CA bundle: connections must present a certificate it signed (etcd 3.4 requires
    /// one whenever this is set), and it verifies the other side's server certificate when
    /// this member connects out (peers).
    pub trusted_ca_file: Option<PathBuf>,
    /// Refuse connections without a certificate signed by `trusted_ca_file` (which must
    /// then be given).
    pub client_cert_auth: bool,
}

/// The files of a [`TlsFiles`], read and checked.
#[derive(Clone)]
pub struct LoadedTls {
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    ca_pem: Option<Vec<u8>>,
    certs: Vec<CertificateDer<'static>>,
    key: Arc<PrivateKeyDer<'static>>,
    roots: Option<Arc<RootCertStore>>,
}

impl std::fmt::Debug for LoadedTls {
    // Never print key material.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedTls")
            .field("certs", &self.certs.len())
            .field("client_cert_auth", &self.client_cert_auth())
            .finish_non_exhaustive()
    }
}

fn read(what: &str, path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::Config(format!("TLS {what} {}: {e}", path.display())))
}

/// The PEM certificates in `pem`, at least one.
fn parse_certs(what: &str, path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::Config(format!("TLS {what} {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(Error::Config(format!(
            "TLS {what} {}: no PEM certificate in it",
            path.display()
        )));
    }
    Ok(certs)
}

/// Reads a CA bundle into a root store.
pub fn load_roots(path: &Path) -> Result<(Vec<u8>, RootCertStore)> {
    let pem = read("CA file", path)?;
    let mut roots = RootCertStore::empty();
    for cert in parse_certs("CA file", path, &pem)? {
        roots.add(cert).map_err(|e| {
            Error::Config(format!("TLS CA file {}: unusable CA: {e}", path.display()))
        })?;
    }
    Ok((pem, roots))
}

impl TlsFiles {
    /// Reads every file and checks that the key belongs to the certificate.
    pub fn load(&self) -> Result<LoadedTls> {
        install_crypto_provider();
        let cert_pem = read("certificate file", &self.cert_file)?;
        let certs = parse_certs("certificate file", &self.cert_file, &cert_pem)?;
        let key_pem = read("key file", &self.key_file)?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
            Error::Config(format!(
                "TLS key file {}: no PEM private key (PKCS#8, PKCS#1 or SEC1): {e}",
                self.key_file.display()
            ))
        })?;
        warn_if_readable_by_others(&self.key_file);
        let (ca_pem, roots) = match &self.trusted_ca_file {
            Some(p) => {
                let (pem, roots) = load_roots(p)?;
                (Some(pem), Some(Arc::new(roots)))
            }
            None => (None, None),
        };
        if self.client_cert_auth && roots.is_none() {
            return Err(Error::Config(
                "client certificate authentication needs a trusted CA file".into(),
            ));
        }
        let loaded = LoadedTls {
            cert_pem,
            key_pem,
            ca_pem,
            certs,
            key: Arc::new(key),
            roots,
        };
        // Building a server config is what checks that key and certificate match.
        loaded.rustls_server(&[]).map_err(|e| {
            Error::Config(format!(
                "TLS key file {} does not fit certificate file {}: {e}",
                self.key_file.display(),
                self.cert_file.display()
            ))
        })?;
        Ok(loaded)
    }
}

/// Private keys should be readable by their owner only; etcd does not insist, so neither do
/// we, but the operator hears about it.
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(
            file = %path.display(),
            mode = format!("{:o}", meta.permissions().mode() & 0o777),
            "TLS private key is readable by group or others; chmod 600 it"
        );
    }
}

impl LoadedTls {
    /// Whether connections must present a certificate signed by the trusted CA: whenever a
    /// trusted CA is configured, as etcd 3.4's listeners do.
    pub fn client_cert_auth(&self) -> bool {
        self.roots.is_some()
    }

    /// Whether a trusted CA is configured (needed to dial https:// members).
    pub fn has_ca(&self) -> bool {
        self.ca_pem.is_some()
    }

    /// A rustls server configuration advertising `alpn` (e.g. `http/1.1` for the metrics
    /// listener), requiring client certificates when a trusted CA is configured.
    pub fn rustls_server(&self, alpn: &[&[u8]]) -> Result<Arc<rustls::ServerConfig>> {
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Config(format!("TLS: {e}")))?;
        let builder = match &self.roots {
            Some(roots) => {
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
                        .build()
                        .map_err(|e| Error::Config(format!("TLS client verifier: {e}")))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut cfg = builder
            .with_single_cert(self.certs.clone(), self.key.clone_key())
            .map_err(|e| Error::Config(format!("TLS: {e}")))?;
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(cfg))
    }

    /// The gRPC server side: for the client listener (`--cert-file` …) or the peer listener
    /// (`--peer-cert-file` …): `Server::builder().tls_config(loaded.grpc_server())?`.
    pub fn grpc_server(&self) -> ServerTlsConfig {
        let mut cfg = ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .timeout(HANDSHAKE_TIMEOUT);
        if let Some(ca) = &self.ca_pem {
            cfg = cfg.client_ca_root(Certificate::from_pem(ca));
        }
        cfg
    }

    /// The gRPC client side, as a member dials other members: verifies their certificates
    /// against the trusted CA and presents this member's certificate:
    /// `Endpoint::from_shared(url)?.tls_config(loaded.grpc_client()?)?`.
    pub fn grpc_client(&self) -> Result<ClientTlsConfig> {
        let ca = self.ca_pem.as_ref().ok_or_else(|| {
            Error::Config("TLS: connecting to https URLs needs a trusted CA file".into())
        })?;
        Ok(ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca))
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .timeout(HANDSHAKE_TIMEOUT))
    }
}

/// A member's TLS, loaded once at start-up from its configuration: `client` for the client
/// (and metrics) listeners, `peer` for the peer listener and for dialling other members.
#[derive(Debug, Default)]
pub struct MemberTls {
    pub client: Option<LoadedTls>,
    pub peer: Option<LoadedTls>,
}

impl MemberTls {
    /// Loads and checks every configured file. As etcd does, certificates configured for a
    /// side whose URLs are all http:// are not used, and the operator is told so.
    pub fn load(cfg: &Config) -> Result<MemberTls> {
        let client = cfg.client_tls()?.map(|f| f.load()).transpose()?;
        let peer = cfg.peer_tls()?.map(|f| f.load()).transpose()?;
        let https = |urls: &[String]| urls.iter().any(|u| is_https(u));
        if client.is_some() && !https(&cfg.listen_client_urls) && !https(&cfg.listen_metrics_urls) {
            tracing::warn!(
                "--cert-file/--key-file given but no client URL is https://; they are ignored"
            );
        }
        if peer.is_some() && !https(&cfg.listen_peer_urls) {
            tracing::warn!(
                "--peer-cert-file/--peer-key-file given but no peer URL is https://; the peer listener is plaintext"
            );
        }
        Ok(MemberTls { client, peer })
    }

    /// The gRPC (HTTP/2) server TLS for client URL `url`: some for https://, none for
    /// http://.
    pub fn grpc_for(&self, url: &str) -> Result<Option<Arc<rustls::ServerConfig>>> {
        match &self.client {
            Some(t) if is_https(url) => t.rustls_server(&[b"h2", b"http/1.1"]).map(Some),
            _ => Ok(None),
        }
    }

    /// The HTTP/1.1 server TLS for metrics URL `url`: some for https://, none for http://.
    pub fn http_for(&self, url: &str) -> Result<Option<Arc<rustls::ServerConfig>>> {
        match &self.client {
            Some(t) if is_https(url) => t.rustls_server(&[b"http/1.1"]).map(Some),
            _ => Ok(None),
        }
    }
}

/// A gRPC client TLS configuration from files: the CA that signed the servers' certificates
/// and, optionally, a certificate and key to present (for servers with client-cert-auth).
/// This is what etcd clients' `--cacert --cert --key` mean.
pub fn client_config(ca_file: &Path, identity: Option<(&Path, &Path)>) -> Result<ClientTlsConfig> {
    install_crypto_provider();
    let (ca_pem, _) = load_roots(ca_file)?;
    let mut cfg = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .timeout(HANDSHAKE_TIMEOUT);
    if let Some((cert, key)) = identity {
        let loaded = TlsFiles {
            cert_file: cert.to_path_buf(),
            key_file: key.to_path_buf(),
            trusted_ca_file: None,
            client_cert_auth: false,
        }
        .load()?;
        cfg = cfg.identity(Identity::from_pem(&loaded.cert_pem, &loaded.key_pem));
    }
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::{Ca, Role};

    fn files(dir: &Path) -> TlsFiles {
        let ca = Ca::generate("test CA").expect("ca");
        ca.write(dir).expect("write ca");
        ca.issue(Role::Member, "m1", &["127.0.0.1".into()], 1)
            .expect("issue")
            .write(dir, "m1")
            .expect("write member");
        TlsFiles {
            cert_file: dir.join("m1.pem"),
            key_file: dir.join("m1-key.pem"),
            trusted_ca_file: Some(dir.join("ca.pem")),
            client_cert_auth: true,
        }
    }

    #[test]
    fn loads_generated_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = files(dir.path());
        let loaded = f.load().expect("load");
        assert!(loaded.client_cert_auth());
        loaded.rustls_server(&[b"h2"]).expect("server config");
        loaded.grpc_client().expect("client config");
        client_config(
            &dir.path().join("ca.pem"),
            Some((&f.cert_file, &f.key_file)),
        )
        .expect("client config from files");
    }

    #[test]
    fn errors_name_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = files(dir.path());
        let missing = TlsFiles {
            cert_file: dir.path().join("nope.pem"),
            ..f.clone()
        };
        let e = missing.load().expect_err("missing cert").to_string();
        assert!(e.contains("nope.pem") && !e.contains('\n'), "{e}");

        std::fs::write(dir.path().join("garbage.pem"), "not pem").expect("write");
        let garbage_key = TlsFiles {
            key_file: dir.path().join("garbage.pem"),
            ..f.clone()
        };
        let e = garbage_key.load().expect_err("bad key").to_string();
        assert!(e.contains("key file") && e.contains("garbage.pem"), "{e}");
        let garbage_ca = TlsFiles {
            trusted_ca_file: Some(dir.path().join("garbage.pem")),
            ..f.clone()
        };
        let e = garbage_ca.load().expect_err("bad CA").to_string();
        assert!(
            e.contains("CA file") && e.contains("no PEM certificate"),
            "{e}"
        );

        // The CA's key does not belong to the member's certificate.
        let mismatched = TlsFiles {
            key_file: dir.path().join("ca-key.pem"),
            ..f.clone()
        };
        let e = mismatched.load().expect_err("key mismatch").to_string();
        assert!(e.contains("does not fit"), "{e}");

        let no_ca = TlsFiles {
            trusted_ca_file: None,
            ..f
        };
        assert!(no_ca.load().is_err());
    }
}
