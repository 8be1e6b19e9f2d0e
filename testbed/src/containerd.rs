//! containerd run the way a node runs it, once per host of a world, with nothing shared with the
//! machine: its own config, root, state and sockets in a directory of the test's, the CRI plugin
//! on with its CNI `bin_dir`/`conf_dir` pointing at the test's plugin and conflist directories,
//! inside the host's network namespace and a private mount namespace.
//!
//! The mount namespace is held by a small process of its own (`sleep`), so containerd can be
//! stopped and started again inside it and find its shims, as after a restart on a real node.
//! In it, a tmpfs over `/run` keeps what containerd and its shims put there by default (shim
//! sockets, fifos, runc's state) off the machine; `/opt/cni/bin` and `/etc/cni/net.d` (where
//! `ctr run --cni` looks, it has no flags for them) show the test's directories, and
//! `/var/lib/cni` (libcni's result cache, which the CRI plugin has no setting for either) a
//! directory of the test's. Pods' network namespaces are mounted under the state directory
//! (`netns_mounts_under_state_dir`). Dropping [`Containerd`] kills the containers, the shims and
//! the daemon (found by their mount namespace, so it works with containerd dead too); the mount
//! namespace and every mount in it go with them.
//!
//! What stays on the machine: the empty directories `/etc/cni/net.d` and `/var/lib/cni` if they
//! were missing (the bind mounts need them; podman's package ships the first), and, in each
//! cgroup hierarchy, the directory `k8s.io` runc makes as the parent of `ctr run` containers'
//! cgroups (empty once they are gone: their own cgroups go with them; callers name containers
//! uniquely, because these cgroups are the machine's).

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};

use crate::cmd::{on_path, stop, wait_until};

/// The containerd namespace the CRI plugin uses; images for pods must be imported into it.
pub const K8S_NAMESPACE: &str = "k8s.io";

/// Fails (never skips) when containerd, its shim or `ctr` is missing.
pub fn require() -> Result<()> {
    for tool in [
        "containerd",
        "containerd-shim-runc-v2",
        "ctr",
        "runc",
        "nsenter",
        "unshare",
    ] {
        ensure!(
            on_path(tool),
            "`{tool}` is missing: run scripts/install-deps.sh test (containerd, runc, util-linux)"
        );
    }
    Ok(())
}

/// The directories a host's containerd is configured with.
#[derive(Debug, Clone)]
pub struct Setup {
    /// The host's network namespace.
    pub host_ns: String,
    /// containerd's own directory: config, root, state, sockets, log.
    pub dir: PathBuf,
    /// The CNI plugin directory (`bin_dir`, and `/opt/cni/bin` inside).
    pub cni_bin: PathBuf,
    /// The CNI config directory (`conf_dir`, and `/etc/cni/net.d` inside).
    pub cni_conf: PathBuf,
    /// The sandbox image (`sandbox_image`), a full reference imported before pods run.
    pub sandbox_image: String,
}

/// One host's containerd; see the module docs.
pub struct Containerd {
    pub setup: Setup,
    holder: Child,
    daemon: Option<Child>,
}

impl Containerd {
    /// Writes the config, makes the mount namespace and starts containerd; returns once it
    /// answers on its socket.
    pub fn start(setup: Setup) -> Result<Containerd> {
        require()?;
        let dir = &setup.dir;
        std::fs::create_dir_all(dir.join("cni-cache")).context("containerd dir")?;
        std::fs::write(dir.join("config.toml"), config(&setup)).context("containerd config")?;
        let script = "set -e\n\
             mount -t tmpfs -o mode=0755 netd-test /run\n\
             mount -t tmpfs -o mode=0755 netd-test /opt\n\
             mkdir -p /opt/cni/bin /etc/cni/net.d /var/lib/cni\n\
             mount --bind \"$1\" /opt/cni/bin\n\
             mount --bind \"$2\" /etc/cni/net.d\n\
             mount --bind \"$3\" /var/lib/cni\n\
             echo ready\n\
             exec sleep 2147483647\n";
        let mut holder = Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c", script, "sh"])
            .arg(&setup.cni_bin)
            .arg(&setup.cni_conf)
            .arg(dir.join("cni-cache"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot run unshare")?;
        let mut line = String::new();
        if let Some(out) = holder.stdout.take() {
            let _ = BufReader::new(out).read_line(&mut line);
        }
        if line.trim() != "ready" {
            let mut err = String::new();
            if let Some(mut e) = holder.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            let _ = holder.kill();
            let _ = holder.wait();
            bail!(
                "setting up containerd's mount namespace failed: {}",
                err.trim()
            );
        }
        let mut c = Containerd {
            setup,
            holder,
            daemon: None,
        };
        c.start_daemon()?;
        Ok(c)
    }

    /// containerd's gRPC socket (also the CRI's).
    pub fn socket(&self) -> PathBuf {
        self.setup.dir.join("containerd.sock")
    }

    /// containerd's log (stdout and stderr of every run).
    pub fn log(&self) -> PathBuf {
        self.setup.dir.join("containerd.log")
    }

    /// libcni's cache as containerd's CNI calls left it (`results/<net>-<id>-<ifname>`).
    pub fn cni_cache(&self) -> PathBuf {
        self.setup.dir.join("cni-cache")
    }

    /// `nsenter` into the host's network namespace and the private mount namespace.
    fn enter(&self) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--mount=/proc/{}/ns/mnt", self.holder.id()))
            .arg(format!("--net=/run/netns/{}", self.setup.host_ns));
        cmd
    }

    fn start_daemon(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log())
            .context("containerd log")?;
        let child = self
            .enter()
            .arg("containerd")
            .arg("--config")
            .arg(self.setup.dir.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("containerd log")?)
            .stderr(log)
            .spawn()
            .context("cannot run containerd")?;
        self.daemon = Some(child);
        let sock = self.socket();
        let up = wait_until("containerd to answer", Duration::from_secs(20), || {
            sock.exists() && self.ctr(&["version"]).is_ok_and(|o| o.status.success())
        });
        if let Err(e) = up {
            bail!("{e}; its log:\n{}", self.log_tail());
        }
        Ok(())
    }

    /// The last lines of containerd's log, for an error message.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Stops containerd (SIGTERM) and starts it again in the same namespaces; the shims and
    /// containers keep running meanwhile, as on a node whose containerd restarts.
    pub fn restart(&mut self) -> Result<()> {
        if let Some(mut d) = self.daemon.take() {
            stop(&mut d, Duration::from_secs(10));
        }
        self.start_daemon()
    }

    /// `ctr -a <socket> -n k8s.io ARGS` inside the namespaces, whatever its exit status.
    pub fn ctr(&self, args: &[&str]) -> Result<Output> {
        self.enter()
            .arg("ctr")
            .arg("-a")
            .arg(self.socket())
            .args(["-n", K8S_NAMESPACE])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .context("cannot run ctr")
    }

    /// Like [`Containerd::ctr`], failing with ctr's stderr unless it succeeds; returns stdout.
    pub fn ctr_ok(&self, args: &[&str]) -> Result<String> {
        let out = self.ctr(args)?;
        ensure!(
            out.status.success(),
            "ctr {} on {} failed ({}): {}{}",
            args.join(" "),
            self.setup.host_ns,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Imports an image archive ([`crate::oci`]) into the k8s.io namespace.
    pub fn import(&self, archive: &Path) -> Result<()> {
        let path = archive.to_string_lossy();
        self.ctr_ok(&["images", "import", &path])?;
        Ok(())
    }

    /// Kills every process of this containerd (see the module docs) and waits until they are
    /// gone.
    fn kill_all(&mut self) {
        let Ok(ns) = std::fs::read_link(format!("/proc/{}/ns/mnt", self.holder.id())) else {
            return;
        };
        let procs = processes();
        let ours: Vec<i32> = procs
            .iter()
            .filter(|p| p.mnt.as_ref() == Some(&ns))
            .map(|p| p.pid)
            .collect();
        // Containers' first processes are the shims' children, in mount namespaces of their own.
        let containers: Vec<i32> = procs
            .iter()
            .filter(|p| ours.contains(&p.ppid) && !ours.contains(&p.pid))
            .map(|p| p.pid)
            .collect();
        for group in [&containers, &ours] {
            for &pid in group.iter() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        if let Some(mut d) = self.daemon.take() {
            let _ = d.wait();
        }
        let _ = self.holder.kill();
        let _ = self.holder.wait();
        let gone = |pid: &i32| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| s.contains(") Z "))
                .unwrap_or(true)
        };
        let _ = wait_until(
            "containerd's processes to exit",
            Duration::from_secs(5),
            || containers.iter().chain(&ours).all(gone),
        );
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// A process as `/proc` shows it: its parent and its mount namespace.
struct Proc {
    pid: i32,
    ppid: i32,
    mnt: Option<PathBuf>,
}

fn processes() -> Vec<Proc> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // The command name may hold spaces and parentheses: the fields follow the last ')'.
            let rest = &stat[stat.rfind(')')? + 1..];
            let ppid = rest.split_whitespace().nth(1)?.parse().ok()?;
            let mnt = std::fs::read_link(format!("/proc/{pid}/ns/mnt")).ok();
            Some(Proc { pid, ppid, mnt })
        })
        .collect()
}

/// containerd's config (version 2, containerd 1.6): everything under `dir`, the CRI plugin with
/// the test's CNI directories, and the plugins that would reach for the machine turned off.
fn config(s: &Setup) -> String {
    let d = s.dir.display();
    format!(
        r#"version = 2
root = "{d}/root"
state = "{d}/state"
# btrfs, zfs, devmapper and aufs need the machine's storage; "opt" installs into /opt.
disabled_plugins = [
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.internal.v1.opt",
  "io.containerd.tracing.processor.v1.otlp",
]

[grpc]
  address = "{d}/containerd.sock"

[ttrpc]
  address = "{d}/containerd.sock.ttrpc"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{image}"
  netns_mounts_under_state_dir = true
  disable_apparmor = true
  # Sandboxes get oom_score_adj -998, which needs CAP_SYS_RESOURCE; a test machine (a VM's
  # container) may lack it. Restricted, no container goes below containerd's own score.
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"

    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"

  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{bin}"
    conf_dir = "{conf}"
    max_conf_num = 1
"#,
        image = s.sandbox_image,
        bin = s.cni_bin.display(),
        conf = s.cni_conf.display(),
    )
}
