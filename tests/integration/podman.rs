//! A real container runtime: podman (Debian's, CNI network backend) running containers through
//! netd-cni on two hosts of a netd world, one container per host, and the container on host 1
//! reaching the one on host 2 (ping, and TCP to a server answering with its hostname).
//!
//! Each host gets its own podman configuration, as a real machine would: a `containers.conf`
//! selecting the CNI backend with the conflist directory and a plugin directory holding the
//! installed `netd-cni`, and its own storage (`--root`, `--runroot`, `--tmpdir` in the test's temp
//! dir, so nothing touches the machine's podman storage). The image is built locally — a tarball
//! of busybox-static with its applet links — and brought in with `podman import`: no registry.
//! podman runs inside the host's namespace through `nsenter --net` (not `ip netns exec`, which
//! remounts /sys and would hide the cgroup hierarchy the OCI runtime needs).
//! The OCI runtime is runc: it handles both cgroup v1/hybrid machines and cgroup v2.
//! Outside the temp dir, podman still writes two caches it has no flag for: its image metadata
//! cache (`/var/lib/containers/cache`) and libcni's result cache (`/var/lib/cni/results`, emptied
//! again by DEL). No network object is created outside the test's namespaces.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use testbed::cmd::on_path;
use testbed::world::{VXLAN, World};

const IMAGE: &str = "localhost/netd-e2e-busybox";

/// One host's podman: its configuration, storage and namespace.
struct Podman {
    host_ns: String,
    dir: PathBuf,
}

impl Podman {
    /// Writes the host's `containers.conf`, conflist and plugin directory under `dir`.
    fn new(w: &World, host: usize, dir: PathBuf, image_tar: &Path) -> Podman {
        let net_d = dir.join("net.d");
        let bin = dir.join("cni-bin");
        std::fs::create_dir_all(&net_d).expect("net.d");
        std::fs::create_dir_all(&bin).expect("cni bin dir");
        // The install step of the README: the plugin into a CNI plugin directory.
        std::fs::copy(&w.bins.cni, bin.join("netd-cni")).expect("install netd-cni");
        // The shipped standalone conflist, pointed at this host's subnet file and store.
        let shipped = include_str!("../../examples/cni/10-netd.conflist");
        let mut conflist: serde_json::Value = serde_json::from_str(shipped).expect("conflist");
        conflist["plugins"][0]["subnetFile"] = w.subnet_file(host).to_string_lossy().into();
        conflist["plugins"][0]["dataDir"] = dir.join("ipam").to_string_lossy().into();
        std::fs::write(net_d.join("10-netd.conflist"), conflist.to_string()).expect("conflist");
        std::fs::write(
            dir.join("containers.conf"),
            format!(
                "[containers]\n\
                 # The test machine's hard limits are below podman's defaults for root.\n\
                 default_ulimits = [\"nofile=1024:1024\", \"nproc=1024:1024\"]\n\
                 [network]\n\
                 network_backend = \"cni\"\n\
                 network_config_dir = \"{}\"\n\
                 cni_plugin_dirs = [\"{}\"]\n\
                 [engine]\n\
                 cgroup_manager = \"cgroupfs\"\n\
                 events_logger = \"file\"\n\
                 runtime = \"runc\"\n",
                net_d.display(),
                bin.display()
            ),
        )
        .expect("containers.conf");
        let p = Podman {
            host_ns: w.host(host),
            dir,
        };
        p.ok(&["import", "--quiet", &image_tar.to_string_lossy(), IMAGE]);
        p
    }

    /// `podman ARGS` inside the host's network namespace with this host's config and storage.
    fn run(&self, args: &[&str]) -> Output {
        let d = |s: &str| self.dir.join(s).to_string_lossy().into_owned();
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.host_ns))
            .arg("podman")
            .args(["--root", &d("root"), "--runroot", &d("runroot")])
            .args(["--tmpdir", &d("tmp"), "--storage-driver", "vfs"])
            .args(args)
            .env("CONTAINERS_CONF", self.dir.join("containers.conf"))
            .output()
            .expect("run podman")
    }

    /// Like [`Podman::run`], panicking with podman's stderr on failure; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "podman {args:?} on {} failed: {}\n{}",
            self.host_ns,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn ip_of(&self, name: &str) -> std::net::Ipv4Addr {
        let ip = self.ok(&[
            "inspect",
            name,
            "--format",
            "{{.NetworkSettings.Networks.netd.IPAddress}}",
        ]);
        ip.parse()
            .unwrap_or_else(|_| panic!("podman reports no address for {name}: {ip:?}"))
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        // Removing the containers runs CNI DEL in the host namespace and unmounts their storage.
        let out = self.run(&["rm", "--all", "--force", "--time", "0"]);
        if !out.status.success() {
            eprintln!(
                "podman rm on {}: {}",
                self.host_ns,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // Anything podman left mounted under its directories goes before the temp dir does.
        if let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") {
            let prefix = self.dir.to_string_lossy().into_owned();
            let mut ours: Vec<&str> = mounts
                .lines()
                .filter_map(|l| l.split_whitespace().nth(1))
                .filter(|m| m.starts_with(&prefix))
                .collect();
            ours.sort_by_key(|m| std::cmp::Reverse(m.len()));
            for m in ours {
                let _ = Command::new("umount").args(["-l", m]).status();
            }
        }
    }
}

/// A root filesystem of busybox-static and a link per applet, as an image tarball.
fn busybox_image(dir: &Path) -> PathBuf {
    let rootfs = dir.join("rootfs");
    let bin = rootfs.join("bin");
    std::fs::create_dir_all(&bin).expect("rootfs");
    std::fs::create_dir_all(rootfs.join("etc")).expect("rootfs/etc");
    std::fs::copy("/bin/busybox", bin.join("busybox")).expect("copy busybox");
    let list = Command::new("/bin/busybox")
        .arg("--list")
        .output()
        .expect("busybox --list");
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" && !applet.contains('/') && !applet.is_empty() {
            std::os::unix::fs::symlink("busybox", bin.join(applet)).expect("applet link");
        }
    }
    let tar = dir.join("image.tar");
    let st = Command::new("tar")
        .arg("-C")
        .arg(&rootfs)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .expect("tar");
    assert!(st.success(), "tar of the image rootfs failed");
    tar
}

#[test]
fn podman_containers_on_two_hosts_reach_each_other() {
    for tool in ["podman", "runc", "nsenter", "tar"] {
        assert!(
            on_path(tool),
            "`{tool}` is missing: run scripts/install-deps.sh test (podman, runc)"
        );
    }
    assert!(
        Path::new("/bin/busybox").exists(),
        "/bin/busybox is missing: apt-get install busybox-static"
    );
    let w = World::new(2, VXLAN).expect("world");
    let tmp = tempfile::Builder::new()
        .prefix("netd-podman-")
        .tempdir()
        .expect("temp dir");
    let image = busybox_image(tmp.path());
    // Declared after the world: dropped first, so containers go before the namespaces do.
    let pa = Podman::new(&w, 1, tmp.path().join("h1"), &image);
    let pb = Podman::new(&w, 2, tmp.path().join("h2"), &image);

    // Host 2: a TCP server answering every connection with the container's hostname.
    pb.ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "--hostname",
        "podman-web",
        "--network",
        "netd",
        IMAGE,
        "nc",
        "-ll",
        "-p",
        "8080",
        "-e",
        "hostname",
    ]);
    let web_ip = pb.ip_of("web");
    let (net2, len2) = w.subnet(2).expect("h2 subnet");
    assert_eq!(
        u32::from(web_ip) >> (32 - len2),
        u32::from(net2) >> (32 - len2),
        "{web_ip} is not in h2's subnet {net2}/{len2}"
    );
    // Host 1: a container that pings it and connects to it (retrying while the server starts).
    let script = format!(
        "ip -4 -o addr show eth0; ping -c 2 -W 2 {web_ip} || exit 1; \
         for i in 1 2 3 4 5 6 7 8 9 10; do nc -w 2 {web_ip} 8080 </dev/null && exit 0; sleep 0.3; done; exit 1"
    );
    let out = pa.ok(&[
        "run",
        "--rm",
        "--name",
        "client",
        "--network",
        "netd",
        IMAGE,
        "sh",
        "-c",
        &script,
    ]);
    assert!(
        out.contains("2 packets received"),
        "ping from host 1's container failed:\n{out}"
    );
    assert!(
        out.lines().any(|l| l.trim() == "podman-web"),
        "TCP from host 1's container to {web_ip} did not answer with the hostname:\n{out}"
    );
    // The client's address came from host 1's subnet.
    let (net1, len1) = w.subnet(1).expect("h1 subnet");
    let client_ip: std::net::Ipv4Addr = out
        .split_whitespace()
        .skip_while(|t| *t != "inet")
        .nth(1)
        .and_then(|a| a.split('/').next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in the client's output:\n{out}"));
    assert_eq!(
        u32::from(client_ip) >> (32 - len1),
        u32::from(net1) >> (32 - len1),
        "{client_ip} is not in h1's subnet {net1}/{len1}"
    );
    // Removing the server releases its address through CNI DEL.
    pb.ok(&["rm", "--force", "--time", "0", "web"]);
    let ipam = tmp.path().join("h2/ipam/netd").join(web_ip.to_string());
    assert!(!ipam.exists(), "{} survived podman rm", ipam.display());
}
