//! netd started from a flanneld systemd unit and its environment file, as a distribution
//! packages them (`Type=notify`, `EnvironmentFile=/etc/sysconfig/flanneld`, Go one-dash flags
//! in `$FLANNEL_OPTIONS`), with only the binary's path changed. The test plays systemd's part:
//! it reads the unit, loads the environment files, expands `ExecStart` as systemd does
//! (`${VAR}` one word, `$VAR` split on white space), passes `NOTIFY_SOCKET` and waits for
//! `READY=1`.

use crate::common;

use std::collections::BTreeMap;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{DEFAULT_CONFIG, NETD, World};

const UNIT: &str = r#"[Unit]
Description=Flanneld overlay address etcd agent
After=network.target
After=network-online.target
Wants=network-online.target
After=etcd.service
Before=docker.service

[Service]
Type=notify
EnvironmentFile=/etc/sysconfig/flanneld
EnvironmentFile=-/etc/sysconfig/docker-network
ExecStart=/usr/bin/flanneld -etcd-endpoints=${FLANNEL_ETCD_ENDPOINTS} -etcd-prefix=${FLANNEL_ETCD_PREFIX} $FLANNEL_OPTIONS
Restart=on-failure

[Install]
WantedBy=multi-user.target
RequiredBy=docker.service
"#;

const ENV_FILE: &str = r#"# Flanneld configuration options

# etcd url location.  Point this to the server where etcd runs
FLANNEL_ETCD_ENDPOINTS="@ENDPOINTS@"

# etcd config key.  This is the configuration key that flannel queries
# For address range assignment
FLANNEL_ETCD_PREFIX="/atomic.io/network"

# Any additional options that you want to pass
FLANNEL_OPTIONS="-iface=eth0 -subnet-file=@SUBNET_FILE@ -healthz-port=@HEALTHZ@ -healthz-ip=127.0.0.1"

# flanneld reads any flag from FLANNELD_<FLAG> as well
FLANNELD_IP_MASQ=true
"#;

/// `KEY=value` lines of an environment file (quotes stripped, comments skipped).
fn env_file(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().trim_matches('"').to_string()))
        .collect()
}

/// `ExecStart` expanded as systemd expands it: `${VAR}` stays one word, `$VAR` splits.
fn exec_start(line: &str, env: &BTreeMap<String, String>) -> Vec<String> {
    let mut words = Vec::new();
    for word in line.split_whitespace() {
        if let Some(var) = word.strip_prefix('$').filter(|v| !v.starts_with('{')) {
            words.extend(
                env.get(var)
                    .map(String::as_str)
                    .unwrap_or("")
                    .split_whitespace()
                    .map(str::to_string),
            );
            continue;
        }
        let mut out = word.to_string();
        while let Some(start) = out.find("${") {
            let Some(len) = out[start..].find('}') else {
                break;
            };
            let var = out[start + 2..start + len].to_string();
            let value = env.get(&var).cloned().unwrap_or_default();
            out.replace_range(start..start + len + 1, &value);
        }
        words.push(out);
    }
    words
}

#[test]
fn netd_starts_from_a_flanneld_unit_and_environment_file() {
    let mut w = World::new(1);
    w.prefix_key = "/atomic.io/network".into();
    w.start_etcd(DEFAULT_CONFIG);
    let dir = w.dir.path().to_path_buf();

    // The package's files, with the binary's path changed and this test's paths filled in.
    let env_path = dir.join("flanneld.env");
    let subnet_file = dir.join("run-flannel/subnet.env");
    let env_text = ENV_FILE
        .replace("@ENDPOINTS@", &w.endpoints)
        .replace("@SUBNET_FILE@", &subnet_file.to_string_lossy())
        .replace("@HEALTHZ@", &w.healthz_port.to_string());
    std::fs::write(&env_path, env_text).expect("env file");
    let unit = UNIT
        .replace("/usr/bin/flanneld", NETD)
        .replace("/etc/sysconfig/flanneld", &env_path.to_string_lossy());

    // systemd's part.
    let mut env = BTreeMap::new();
    let mut exec = String::new();
    for line in unit.lines() {
        if let Some(file) = line.strip_prefix("EnvironmentFile=") {
            let (optional, file) = match file.strip_prefix('-') {
                Some(f) => (true, f),
                None => (false, file),
            };
            match std::fs::read_to_string(file) {
                Ok(text) => env.extend(env_file(&text)),
                Err(e) => assert!(optional, "{file}: {e}"),
            }
        }
        if let Some(cmd) = line.strip_prefix("ExecStart=") {
            exec = cmd.to_string();
        }
    }
    let argv = exec_start(&exec, &env);
    assert_eq!(argv[0], NETD);
    let notify_path = dir.join("notify");
    let notify = UnixDatagram::bind(&notify_path).expect("notify socket");
    notify
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let log = std::fs::File::create(dir.join("netd-h1.log")).expect("log");
    let mut netd = Command::new("ip")
        .args(["netns", "exec", &w.host(1)])
        .args(&argv)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(&env)
        .env("NOTIFY_SOCKET", &notify_path)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start netd as the unit says");

    // Type=notify: READY=1 once the subnet file is written.
    let mut buf = [0u8; 512];
    let n = notify
        .recv(&mut buf)
        .unwrap_or_else(|e| panic!("no READY=1 within 30 s ({e}):\n{}", w.netd_log(1)));
    let msg = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(msg.starts_with("READY=1"), "{msg}");
    let subnet = std::fs::read_to_string(&subnet_file).expect("subnet file written");
    assert!(subnet.contains("FLANNEL_IPMASQ=true"), "{subnet}");
    // The prefix from ${FLANNEL_ETCD_PREFIX}, the masquerade from FLANNELD_IP_MASQ.
    let records = w.records();
    assert_eq!(records.len(), 1, "{records:?}");
    let table = common::run(&[
        "ip",
        "netns",
        "exec",
        &w.host(1),
        "nft",
        "list",
        "table",
        "ip",
        "netd",
    ]);
    assert!(table.contains("masquerade"), "{table}");
    assert!(
        Path::new(&subnet_file).exists(),
        "the subnet file from $FLANNEL_OPTIONS"
    );

    // systemctl stop: SIGTERM, STOPPING=1, a clean exit.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(netd.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    let n = notify.recv(&mut buf).expect("STOPPING=1");
    assert_eq!(&buf[..n], b"STOPPING=1");
    let status = netd.wait().expect("netd exits");
    assert!(status.success(), "{status}");
}
