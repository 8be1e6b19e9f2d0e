//! A 3-member cluster of real server processes on loopback (kvstore, or the reference etcd 3.4:
//! both take etcd's flags, stated once in `testbed::etcd`): free ports, a temporary data dir per
//! member, SIGKILL and restart of one member on the same data, and the leader as the members
//! report it through the stock client. Dropping the cluster kills every member.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use etcd_client::Client;

/// One member: how to start it, and its process while it runs.
struct Member {
    spec: testbed::etcd::Member,
    endpoint: String,
    log: PathBuf,
    child: Option<Child>,
}

pub struct Cluster {
    bin: PathBuf,
    members: Vec<Member>,
    /// Holds every member's data dir and log.
    _dir: tempfile::TempDir,
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Cluster {
    /// Starts `n` members of `bin` and waits until each answers a read.
    pub async fn start(bin: &Path, n: usize) -> Result<Cluster> {
        ensure!(bin.exists(), "{} not found", bin.display());
        let dir = tempfile::tempdir()?;
        let mut urls = Vec::new();
        for i in 0..n {
            urls.push((
                format!("lk{i}"),
                format!("http://127.0.0.1:{}", free_port()?),
                format!("http://127.0.0.1:{}", free_port()?),
            ));
        }
        let initial = testbed::etcd::initial_cluster(
            urls.iter()
                .map(|(name, _, peer)| (name.as_str(), peer.as_str())),
        );
        let mut members = Vec::new();
        for (name, client, peer) in urls {
            let mut spec =
                testbed::etcd::Member::new(&name, &dir.path().join(&name), &client, &peer);
            spec.initial_cluster = Some(initial.clone());
            spec.token = Some(format!("leaderkill-{}", std::process::id()));
            members.push(Member {
                spec,
                endpoint: client,
                log: dir.path().join(format!("{name}.log")),
                child: None,
            });
        }
        let mut cluster = Cluster {
            bin: bin.to_path_buf(),
            members,
            _dir: dir,
        };
        for i in 0..n {
            cluster.launch(i)?;
        }
        for i in 0..n {
            cluster.wait_ready(i).await?;
        }
        Ok(cluster)
    }

    /// Every member's client URL.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.endpoint.clone()).collect()
    }

    /// Starts member `i` (again, on the same data: a restart after a kill).
    pub fn launch(&mut self, i: usize) -> Result<()> {
        let m = &mut self.members[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&m.log)?;
        let child = m
            .spec
            .command(&self.bin, None)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        m.child = Some(child);
        Ok(())
    }

    /// SIGKILL member `i`: no chance to flush or hand anything over.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits until member `i` answers a linearizable read; fails with its log if it exits.
    async fn wait_ready(&mut self, i: usize) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let m = &mut self.members[i];
            if let Some(c) = m.child.as_mut()
                && let Some(st) = c.try_wait()?
            {
                let log = std::fs::read_to_string(&m.log).unwrap_or_default();
                bail!("{} exited ({st}): {log}", m.endpoint);
            }
            if let Ok(mut c) = connect_one(&m.endpoint).await
                && c.get("ready", None).await.is_ok()
            {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "{} never became ready",
                m.endpoint
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The index of the member that the running members agree leads, if they do now.
    pub async fn leader(&self) -> Option<usize> {
        let mut ids = Vec::new();
        let mut leaders = Vec::new();
        for m in &self.members {
            if m.child.is_none() {
                ids.push(None);
                continue;
            }
            let status = match connect_one(&m.endpoint).await {
                Ok(mut c) => tokio::time::timeout(Duration::from_secs(1), c.status())
                    .await
                    .ok()
                    .and_then(|r| r.ok()),
                Err(_) => None,
            };
            let status = status?;
            ids.push(status.header().map(|h| h.member_id()));
            leaders.push(status.leader());
        }
        let first = *leaders.first()?;
        if first == 0 || leaders.iter().any(|&l| l != first) {
            return None;
        }
        ids.iter().position(|id| *id == Some(first))
    }

    /// Waits up to `within` for an agreed leader.
    pub async fn wait_leader(&self, within: Duration) -> Option<usize> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(i) = self.leader().await {
                return Some(i);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

/// A stock client of one member only.
async fn connect_one(endpoint: &str) -> Result<Client> {
    let opts = etcd_client::ConnectOptions::new().with_connect_timeout(Duration::from_secs(1));
    Ok(Client::connect([endpoint], Some(opts)).await?)
}
