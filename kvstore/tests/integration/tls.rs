//! TLS on the client port with etcd's flags, against kvstore and etcd 3.4 alike: the stock
//! etcdctl with `--cacert --cert --key` works; without a client certificate, or with one from
//! another CA, it is refused; a server certificate from another CA is not trusted; plaintext
//! to the TLS port fails promptly and leaves the server serving; a trusted CA alone already
//! requires client certificates (etcd 3.4's behaviour); the `etcd-client` crate works
//! over TLS; https metrics URLs serve /health with the same rules; with client-cert-auth and
//! auth on, a request without a token runs as its certificate's Common Name (etcdctl, gRPC
//! statuses, watches; the gateway refuses such requests). Certificates come from the
//! project's own CA helper (`kvstore::certs`), so these tests also prove real etcd and Go's
//! TLS accept what it issues.

use crate::common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{ETCDCTL, Kind, Proc};
use kvstore::certs::{Ca, Role};
use kvstore::client::{Client, ConnectOptions};

/// Two unrelated CAs: `ours` signed the server's certificate and the good client's; `other`
/// signed an intruder's client certificate and an impostor server's.
struct Pki {
    ours: tempfile::TempDir,
    other: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        let pki = Pki {
            ours: tempfile::tempdir().expect("tempdir"),
            other: tempfile::tempdir().expect("tempdir"),
        };
        for (dir, member, client) in [
            (pki.ours.path(), "server", "client"),
            (pki.other.path(), "impostor", "intruder"),
        ] {
            let ca = Ca::generate("kvstore test CA").expect("CA");
            ca.write(dir).expect("write CA");
            ca.issue(Role::Member, member, &[], 2)
                .expect("member cert")
                .write(dir, member)
                .expect("write member cert");
            ca.issue(Role::Client, client, &[], 2)
                .expect("client cert")
                .write(dir, client)
                .expect("write client cert");
        }
        pki
    }

    fn ours(&self, file: &str) -> String {
        self.ours.path().join(file).display().to_string()
    }

    fn other(&self, file: &str) -> String {
        self.other.path().join(file).display().to_string()
    }

    /// etcdctl's flags for the good client.
    fn good_ctl(&self) -> Vec<String> {
        self.ctl_as("client")
    }

    /// etcdctl's flags for the client certificate `<name>.pem` of our CA.
    fn ctl_as(&self, name: &str) -> Vec<String> {
        vec![
            format!("--cacert={}", self.ours("ca.pem")),
            format!("--cert={}", self.ours(&format!("{name}.pem"))),
            format!("--key={}", self.ours(&format!("{name}-key.pem"))),
        ]
    }

    /// Issues (our CA) and writes client certificates whose Common Names are `names`.
    fn issue_clients(&self, names: &[&str]) {
        let ca = Ca::load(self.ours.path())
            .expect("load CA")
            .expect("our CA");
        for name in names {
            ca.issue(Role::Client, name, &[], 2)
                .expect("client cert")
                .write(self.ours.path(), name)
                .expect("write client cert");
        }
    }

    /// Server flags: our member certificate, our CA, and client-cert-auth when asked.
    fn server_flags(&self, client_cert_auth: bool) -> Vec<String> {
        let mut f = vec![
            "--cert-file".into(),
            self.ours("server.pem"),
            "--key-file".into(),
            self.ours("server-key.pem"),
            "--trusted-ca-file".into(),
            self.ours("ca.pem"),
        ];
        if client_cert_auth {
            f.push("--client-cert-auth".into());
        }
        f
    }
}

/// A TLS server of `kind` with our certificate; `more` are extra server flags.
fn start(kind: Kind, pki: &Pki, client_cert_auth: bool, more: &[String]) -> Proc {
    let mut flags = pki.server_flags(client_cert_auth);
    flags.extend_from_slice(more);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let ctl = pki.good_ctl();
    let ctl: Vec<&str> = ctl.iter().map(String::as_str).collect();
    Proc::start_with_scheme(kind, "https", &flags, &ctl)
}

/// etcdctl against `endpoint` with exactly `tls` (no harness defaults), short timeouts.
fn etcdctl_as(endpoint: &str, tls: &[String], args: &[&str]) -> Output {
    Command::new(ETCDCTL)
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .args(["--dial-timeout=2s", "--command-timeout=3s"])
        .args(tls)
        .args(args)
        .output()
        .expect("run etcdctl")
}

fn assert_refused(p: &Proc, out: &Output, what: &str, key: &str) {
    assert!(
        !out.status.success(),
        "{:?}: {what} was let in: {}",
        p.kind,
        String::from_utf8_lossy(&out.stdout)
    );
    // Nothing it tried reached the store.
    assert_eq!(
        p.ok(&["get", key, "--print-value-only"]),
        "",
        "{:?}",
        p.kind
    );
}

fn client_certificate_from_our_ca_works(kind: Kind) {
    let pki = Pki::new();
    let p = start(kind, &pki, true, &[]);
    p.ok(&["put", "/tls/k", "v1"]);
    assert_eq!(p.ok(&["get", "/tls/k", "--print-value-only"]), "v1\n");
    // The same, spelled out rather than through the harness.
    let out = etcdctl_as(
        &p.url(),
        &pki.good_ctl(),
        &["get", "/tls/k", "--print-value-only"],
    );
    assert!(out.status.success(), "{:?}: {out:?}", p.kind);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "v1\n");
}

/// etcdctl 3.4 sends a URL (`https://127.0.0.1:P`) as the HTTP/2 `:authority` of `endpoint
/// status`, `endpoint health` and every `--cluster` form; over TLS too.
fn url_endpoint_commands_work(kind: Kind) {
    let pki = Pki::new();
    let p = start(kind, &pki, true, &[]);
    for args in [
        &["endpoint", "status", "-w", "json"][..],
        &["endpoint", "health"],
        &["endpoint", "status", "--cluster", "-w", "json"],
        &["endpoint", "health", "--cluster"],
        &["member", "list"],
    ] {
        let out = etcdctl_as(&p.url(), &pki.good_ctl(), args);
        assert!(
            out.status.success(),
            "{:?}: etcdctl {args:?}: {out:?}",
            p.kind
        );
    }
    let out = etcdctl_as(
        &p.url(),
        &pki.good_ctl(),
        &["endpoint", "status", "-w", "json"],
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status json");
    assert!(
        v[0]["Status"]["header"]["member_id"].as_u64().is_some(),
        "{:?}: {v}",
        p.kind
    );
}

fn no_client_certificate_is_refused(kind: Kind) {
    let pki = Pki::new();
    let p = start(kind, &pki, true, &[]);
    let out = etcdctl_as(
        &p.url(),
        &[format!("--cacert={}", pki.ours("ca.pem"))],
        &["put", "/tls/nocert", "x"],
    );
    assert_refused(&p, &out, "a client without a certificate", "/tls/nocert");
}

fn client_certificate_from_another_ca_is_refused(kind: Kind) {
    let pki = Pki::new();
    let p = start(kind, &pki, true, &[]);
    let intruder = [
        format!("--cacert={}", pki.ours("ca.pem")),
        format!("--cert={}", pki.other("intruder.pem")),
        format!("--key={}", pki.other("intruder-key.pem")),
    ];
    let out = etcdctl_as(&p.url(), &intruder, &["put", "/tls/intruder", "x"]);
    assert_refused(&p, &out, "a certificate from another CA", "/tls/intruder");
}

fn server_from_another_ca_is_not_trusted(kind: Kind) {
    let pki = Pki::new();
    let p = start(kind, &pki, true, &[]);
    let wrong_ca = [
        format!("--cacert={}", pki.other("ca.pem")),
        format!("--cert={}", pki.ours("client.pem")),
        format!("--key={}", pki.ours("client-key.pem")),
    ];
    let out = etcdctl_as(&p.url(), &wrong_ca, &["put", "/tls/mitm", "x"]);
    assert_refused(
        &p,
        &out,
        "a server the client's CA did not sign",
        "/tls/mitm",
    );
}

fn plaintext_to_the_tls_port_fails_cleanly(kind: Kind) {
    let pki = Pki::new();
    let p = start(kind, &pki, true, &[]);
    let started = Instant::now();
    let out = etcdctl_as(
        &format!("http://127.0.0.1:{}", p.client_port),
        &[],
        &["put", "/tls/plain", "x"],
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}: a plaintext client hung",
        p.kind
    );
    assert_refused(&p, &out, "a plaintext client", "/tls/plain");

    // A raw plaintext request gets the connection closed, not an answer and not a hang.
    let mut s = TcpStream::connect(("127.0.0.1", p.client_port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    let mut buf = Vec::new();
    match s.read_to_end(&mut buf) {
        Ok(_) => {}
        Err(e) => assert!(
            e.kind() == std::io::ErrorKind::ConnectionReset,
            "{:?}: plaintext connection neither closed nor reset: {e}",
            p.kind
        ),
    }
    let text = String::from_utf8_lossy(&buf);
    assert!(!text.contains("health"), "{:?}: answered {text:?}", p.kind);

    // And the server goes on serving TLS clients.
    p.ok(&["put", "/tls/after", "ok"]);
}

fn trusted_ca_alone_requires_client_certificates(kind: Kind) {
    // etcd 3.4's meaning: --trusted-ca-file alone already makes client certificates required.
    let pki = Pki::new();
    let p = start(kind, &pki, false, &[]);
    let out = etcdctl_as(
        &p.url(),
        &[format!("--cacert={}", pki.ours("ca.pem"))],
        &["put", "/tls/ca-only", "x"],
    );
    assert_refused(&p, &out, "a client without a certificate", "/tls/ca-only");
    p.ok(&["put", "/tls/ca-only", "ok"]);
}

fn server_certificate_alone_encrypts_without_client_auth(kind: Kind) {
    // Only --cert-file/--key-file: TLS for privacy, any client that trusts the server.
    let pki = Pki::new();
    let flags = [
        "--cert-file".to_string(),
        pki.ours("server.pem"),
        "--key-file".into(),
        pki.ours("server-key.pem"),
    ];
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let ca = format!("--cacert={}", pki.ours("ca.pem"));
    let p = Proc::start_with_scheme(kind, "https", &flags, &[&ca]);
    p.ok(&["put", "/tls/open", "x"]);
    assert_eq!(p.ok(&["get", "/tls/open", "--print-value-only"]), "x\n");
}

/// GET `path` over TLS on `port`, trusting `ca`, presenting `identity` when given. `Err` when
/// the TLS session fails.
async fn https_get(
    port: u16,
    path: &str,
    ca: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<String, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let (_, roots) = kvstore::tls::load_roots(ca).map_err(|e| e.to_string())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let cfg = match identity {
        Some((cert, key)) => {
            let certs = CertificateDer::pem_file_iter(cert)
                .and_then(|i| i.collect::<Result<Vec<_>, _>>())
                .map_err(|e| e.to_string())?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| e.to_string())?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| e.to_string())?
        }
        None => builder.with_no_client_auth(),
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let name = ServerName::try_from("127.0.0.1").map_err(|e| e.to_string())?;
    let mut tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    tls.write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut out))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

async fn https_metrics_url_serves_health_with_client_cert_auth(kind: Kind) {
    let pki = Pki::new();
    let mport = common::free_port();
    let p = start(
        kind,
        &pki,
        true,
        &[
            "--listen-metrics-urls".into(),
            format!("https://127.0.0.1:{mport}"),
        ],
    );
    let ca = pki.ours.path().join("ca.pem");
    let cert = pki.ours.path().join("client.pem");
    let key = pki.ours.path().join("client-key.pem");
    let deadline = Instant::now() + Duration::from_secs(10);
    let body = loop {
        match https_get(mport, "/health", &ca, Some((&cert, &key))).await {
            Ok(b) if b.contains("\"health\":\"true\"") => break b,
            other => assert!(
                Instant::now() < deadline,
                "{:?}: /health over TLS: {other:?}",
                p.kind
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(body.starts_with("HTTP/1.1 200"), "{:?}: {body}", p.kind);
    let anonymous = https_get(mport, "/health", &ca, None).await;
    assert!(
        !matches!(&anonymous, Ok(b) if b.contains("200")),
        "{:?}: /health answered without a client certificate: {anonymous:?}",
        p.kind
    );
    let other = pki.other.path();
    let intruder = https_get(
        mport,
        "/health",
        &ca,
        Some((&other.join("intruder.pem"), &other.join("intruder-key.pem"))),
    )
    .await;
    assert!(
        !matches!(&intruder, Ok(b) if b.contains("200")),
        "{:?}: /health answered a certificate from another CA: {intruder:?}",
        p.kind
    );
}

async fn client_over_tls(kind: Kind) {
    let pki = Pki::new();
    let p = start(kind, &pki, true, &[]);
    let ca = pki.ours.path().join("ca.pem");
    let (cert, key) = (
        pki.ours.path().join("client.pem"),
        pki.ours.path().join("client-key.pem"),
    );
    let tls = kvstore::tls::client_config(&ca, Some((&cert, &key))).expect("client TLS");
    let opts = ConnectOptions::new()
        .with_tls(tls)
        .with_connect_timeout(Duration::from_secs(3))
        .with_timeout(Duration::from_secs(5));
    let c = Client::connect([p.url()], Some(opts))
        .await
        .expect("connect over TLS");
    c.put_kv("/tls/crate", "v").await.expect("put");
    let got = c.get("/tls/crate").await.expect("get");
    assert_eq!(&got.kvs[0].value[..], b"v");

    // Without a client certificate the server refuses the session.
    let tls = kvstore::tls::client_config(&ca, None).expect("client TLS");
    let opts = ConnectOptions::new()
        .with_tls(tls)
        .with_connect_timeout(Duration::from_secs(3))
        .with_timeout(Duration::from_secs(5));
    let res = match Client::connect([p.url()], Some(opts)).await {
        Ok(c) => c.put_kv("/tls/crate-anon", "x").await.map(|_| ()),
        Err(e) => Err(e),
    };
    assert!(res.is_err(), "{:?}: anonymous client was served", p.kind);
    assert_eq!(p.ok(&["get", "/tls/crate-anon", "--print-value-only"]), "");
}

/// One `#[test]` per server kind for each TLS suite function `fn(Kind)`.
macro_rules! tls_against_both {
    ($($name:ident),* $(,)?) => {
        mod on_kvstore {
            $(#[test] fn $name() { super::$name(super::Kind::Kvstore); })*
        }
        mod on_etcd {
            $(#[test] fn $name() { super::$name(super::Kind::Etcd); })*
        }
    };
}

/// The async twin of `tls_against_both!`.
macro_rules! tls_against_both_async {
    ($($name:ident),* $(,)?) => {
        mod on_kvstore_async {
            $(#[tokio::test] async fn $name() { super::$name(super::Kind::Kvstore).await; })*
        }
        mod on_etcd_async {
            $(#[tokio::test] async fn $name() { super::$name(super::Kind::Etcd).await; })*
        }
    };
}

/// The JSON gateway over https, on HTTP/1.1 and on HTTP/2 (what curl's ALPN picks by default).
fn json_gateway_over_https(kind: Kind) {
    let pki = Pki::new();
    let p = start(kind, &pki, true, &[]);
    p.ok(&["put", "j", "1"]);
    for version in ["--http1.1", "--http2"] {
        let mut curl = Command::new("curl");
        curl.args(["-s", version, "-d", r#"{"key":"ag=="}"#]);
        // etcdctl's `--flag=value` as curl takes them: `--flag value`.
        for f in pki.good_ctl() {
            curl.args(f.splitn(2, '=').collect::<Vec<_>>());
        }
        let out = curl
            .arg(format!("{}/v3/kv/range", p.url()))
            .output()
            .expect("curl");
        let body = String::from_utf8_lossy(&out.stdout);
        assert!(
            body.contains(r#""value":"MQ==""#),
            "{kind:?} {version}: {body}"
        );
    }
}

/// A TLS server of `kind` with client-cert-auth, `auth::set_up`'s users and roles (root; alice
/// with readwrite on `app/`) and auth on, and client certificates named root, alice and
/// mallory (no such user). Its etcdctl runs present root's certificate and no token.
fn cert_users(kind: Kind, client_cert_auth: bool) -> (Pki, Proc) {
    let pki = Pki::new();
    pki.issue_clients(&["root", "alice", "mallory"]);
    let flags = pki.server_flags(client_cert_auth);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let ctl = pki.ctl_as("root");
    let ctl: Vec<&str> = ctl.iter().map(String::as_str).collect();
    let p = Proc::start_with_scheme(kind, "https", &flags, &ctl);
    crate::auth::set_up(&p);
    (pki, p)
}

/// With client-cert-auth, a request without a token runs as its certificate's Common Name; a
/// token wins over the certificate.
fn client_certificate_names_the_user(kind: Kind) {
    use crate::auth::{DENIED, last_line};
    let (pki, p) = cert_users(kind, true);
    let run = |name: &str, args: &[&str]| etcdctl_as(&p.url(), &pki.ctl_as(name), args);
    let ok = |name: &str, args: &[&str]| {
        let out = run(name, args);
        assert!(
            out.status.success(),
            "{kind:?} as {name}: {args:?}: {out:?}"
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let fails = |name: &str, args: &[&str]| {
        let out = run(name, args);
        assert!(
            !out.status.success(),
            "{kind:?} as {name}: {args:?} was let through"
        );
        last_line(&String::from_utf8_lossy(&out.stderr))
    };
    // root's certificate: anything, auth management too.
    assert_eq!(ok("root", &["put", "zz", "1"]).trim(), "OK");
    assert!(ok("root", &["user", "list"]).contains("alice"), "{kind:?}");
    // alice's: her prefix only.
    assert_eq!(ok("alice", &["put", "app/x", "2"]).trim(), "OK");
    assert_eq!(ok("alice", &["get", "app/x", "--print-value-only"]), "2\n");
    assert_eq!(fails("alice", &["put", "zz", "3"]), DENIED);
    assert_eq!(fails("alice", &["get", "zz"]), DENIED);
    assert_eq!(fails("alice", &["user", "list"]), DENIED);
    // A token says who it is, whatever the certificate.
    assert_eq!(
        ok("alice", &["--user=root:rootpw", "put", "zz", "4"]).trim(),
        "OK"
    );
    assert_eq!(
        fails("root", &["--user=alice:alicepw", "put", "zz", "5"]),
        DENIED
    );
    // A Common Name that is no user: denied, and no user for what only root may do.
    assert_eq!(fails("mallory", &["put", "app/x", "6"]), DENIED);
    assert_eq!(fails("mallory", &["get", "app/x"]), DENIED);
    assert_eq!(
        fails("mallory", &["user", "list"]),
        "Error: etcdserver: user name not found"
    );
    assert_eq!(ok("root", &["get", "zz", "--print-value-only"]), "4\n");
    assert_eq!(ok("root", &["get", "app/x", "--print-value-only"]), "2\n");
}

/// A trusted CA without client-cert-auth requires certificates but takes no user from them;
/// with it, a JSON request whose certificate names a user is refused while auth is on (etcd:
/// the gateway cannot pass the name on).
fn certificate_names_no_user_without_client_cert_auth_nor_on_the_gateway(kind: Kind) {
    use crate::auth::last_line;
    let json = |p: &Proc, pki: &Pki, version: &str| {
        let mut curl = Command::new("curl");
        curl.args([
            "-s",
            version,
            "-w",
            "\n%{http_code}",
            "-d",
            r#"{"key":"ag=="}"#,
        ]);
        for f in pki.ctl_as("alice") {
            curl.args(f.splitn(2, '=').collect::<Vec<_>>());
        }
        let out = curl
            .arg(format!("{}/v3/kv/range", p.url()))
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let (pki, p) = cert_users(kind, false);
    assert_eq!(
        last_line(&p.fails(&["put", "x", "1"])),
        "Error: etcdserver: user name is empty"
    );
    for version in ["--http1.1", "--http2"] {
        let got = json(&p, &pki, version);
        assert!(
            got.ends_with("\n400") && got.contains("user name is empty"),
            "{kind:?} {version}: {got}"
        );
    }
    let (pki, p) = cert_users(kind, true);
    for version in ["--http1.1", "--http2"] {
        assert_eq!(
            json(&p, &pki, version),
            "CommonName of client sending a request against gateway will be ignored and not used as expected\n\n400",
            "{kind:?} {version}"
        );
    }
    // Not while authentication is off.
    p.ok(&["auth", "disable"]);
    for version in ["--http1.1", "--http2"] {
        let got = json(&p, &pki, version);
        assert!(got.ends_with("\n200"), "{kind:?} {version}: {got}");
    }
}

/// The same over gRPC with the statuses etcd answers, and the watch check.
async fn client_certificate_user_over_grpc(kind: Kind) {
    use crate::auth::{err_of, with_token};
    use kvstore::client::req;
    use kvstore::proto::etcdserverpb::{
        WatchRequest, kv_client::KvClient, watch_client::WatchClient, watch_request,
    };
    use tokio_stream::StreamExt;
    use tonic::Code;

    let (pki, p) = cert_users(kind, true);
    let channel = |name: &str| {
        let ca = pki.ours.path().join("ca.pem");
        let cert = pki.ours.path().join(format!("{name}.pem"));
        let key = pki.ours.path().join(format!("{name}-key.pem"));
        let tls = kvstore::tls::client_config(&ca, Some((&cert, &key))).expect("client TLS");
        let ep = tonic::transport::Endpoint::from_shared(p.url())
            .expect("endpoint")
            .tls_config(tls)
            .expect("TLS config");
        async move { ep.connect().await.expect("connect") }
    };
    let denied = (
        Code::PermissionDenied,
        "etcdserver: permission denied".to_string(),
    );

    let mut alice = KvClient::new(channel("alice").await);
    alice.put(req::put("app/g", "v")).await.expect("put app/g");
    assert_eq!(err_of(alice.put(req::put("zz", "v")).await), denied);
    // An unknown token is refused, not replaced by the certificate.
    let bogus = "bogus.1".parse().expect("ascii");
    assert_eq!(
        err_of(alice.put(with_token(req::put("app/g", "w"), &bogus)).await),
        (
            Code::Unauthenticated,
            "etcdserver: invalid auth token".into()
        )
    );
    let mut mallory = KvClient::new(channel("mallory").await);
    assert_eq!(err_of(mallory.put(req::put("app/g", "m")).await), denied);

    // Watches are checked as the certificate's user too.
    let mut watch = WatchClient::new(channel("alice").await);
    for (key, allowed) in [("app/", true), ("zz", false)] {
        let create = WatchRequest {
            request_union: Some(watch_request::RequestUnion::CreateRequest(
                req::watch_prefix(key, 0),
            )),
        };
        let mut stream = watch
            .watch(tokio_stream::iter([create]).chain(tokio_stream::pending()))
            .await
            .expect("watch")
            .into_inner();
        let first = tokio::time::timeout(Duration::from_secs(5), stream.message())
            .await
            .expect("in time")
            .expect("message")
            .expect("a response");
        assert!(first.created, "{kind:?} {key}: {first:?}");
        assert_eq!(first.canceled, !allowed, "{kind:?} {key}: {first:?}");
    }
    assert_eq!(p.ok(&["get", "app/g", "--print-value-only"]), "v\n");
}

tls_against_both!(
    client_certificate_names_the_user,
    certificate_names_no_user_without_client_cert_auth_nor_on_the_gateway,
    json_gateway_over_https,
    client_certificate_from_our_ca_works,
    url_endpoint_commands_work,
    no_client_certificate_is_refused,
    client_certificate_from_another_ca_is_refused,
    server_from_another_ca_is_not_trusted,
    plaintext_to_the_tls_port_fails_cleanly,
    trusted_ca_alone_requires_client_certificates,
    server_certificate_alone_encrypts_without_client_auth,
);

tls_against_both_async!(
    client_certificate_user_over_grpc,
    https_metrics_url_serves_health_with_client_cert_auth,
    client_over_tls,
);

/// kvstore's own start-up checks: each TLS mistake is one line naming the flag or file.
#[test]
fn tls_mistakes_are_one_line_errors_at_start_up() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let port = common::free_port();
    let url = format!("https://127.0.0.1:{port}");
    let run = |args: &[String]| {
        let out = Command::new(env!("CARGO_BIN_EXE_kvstore"))
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--listen-client-urls", &url])
            .args([
                "--listen-peer-urls",
                &format!("http://127.0.0.1:{}", common::free_port()),
            ])
            .args(args)
            .env("RUST_LOG", "off")
            .output()
            .expect("run kvstore");
        assert!(!out.status.success(), "kvstore started with {args:?}");
        let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
        assert_eq!(err.lines().count(), 1, "{err}");
        err
    };
    assert!(run(&[]).contains("--cert-file"));
    let missing = [
        "--cert-file".into(),
        pki.ours("nope.pem"),
        "--key-file".into(),
        pki.ours("server-key.pem"),
    ];
    assert!(run(&missing).contains("nope.pem"));
    let mismatch = [
        "--cert-file".into(),
        pki.ours("server.pem"),
        "--key-file".into(),
        pki.ours("client-key.pem"),
    ];
    assert!(run(&mismatch).contains("does not fit"));
    let no_ca = [
        "--cert-file".into(),
        pki.ours("server.pem"),
        "--key-file".into(),
        pki.ours("server-key.pem"),
        "--client-cert-auth".into(),
    ];
    assert!(run(&no_ca).contains("--trusted-ca-file"));
}
