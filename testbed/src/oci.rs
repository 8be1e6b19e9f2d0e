//! Container images without a registry: an OCI image layout archive (the format `ctr images
//! import` reads) whose one layer is busybox-static with a link per applet, built in a directory
//! of the test's. The same layer serves as the pod sandbox ("pause") image, whose entry point only
//! has to hold the pod's namespaces, and as the image containers run.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, ensure};
use sha2::{Digest, Sha256};

/// Where the busybox binary comes from (Debian's busybox-static).
pub const BUSYBOX: &str = "/bin/busybox";

/// The OCI architecture name of this machine.
fn architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// Writes `data` as a blob of the layout at `oci`; returns its descriptor.
fn blob(oci: &Path, media_type: &str, data: &[u8]) -> Result<serde_json::Value> {
    let hex: String = Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let path = oci.join("blobs/sha256").join(&hex);
    std::fs::write(&path, data).with_context(|| format!("writing {}", path.display()))?;
    Ok(serde_json::json!({
        "mediaType": media_type,
        "digest": format!("sha256:{hex}"),
        "size": data.len(),
    }))
}

/// The layer: a tar of a root filesystem holding `/bin/busybox`, its applet links and `/etc`.
/// Built once per directory and reused by every image built there.
fn layer(dir: &Path) -> Result<Vec<u8>> {
    let tar = dir.join("busybox-layer.tar");
    if let Ok(data) = std::fs::read(&tar) {
        return Ok(data);
    }
    ensure!(
        Path::new(BUSYBOX).exists(),
        "{BUSYBOX} is missing: run scripts/install-deps.sh test (busybox-static)"
    );
    let rootfs = dir.join("busybox-rootfs");
    let bin = rootfs.join("bin");
    std::fs::create_dir_all(&bin).context("image rootfs")?;
    std::fs::create_dir_all(rootfs.join("etc")).context("image rootfs/etc")?;
    std::fs::copy(BUSYBOX, bin.join("busybox")).context("copying busybox")?;
    let list = Command::new(BUSYBOX)
        .arg("--list")
        .output()
        .context("busybox --list")?;
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" && !applet.is_empty() && !applet.contains('/') {
            std::os::unix::fs::symlink("busybox", bin.join(applet)).context("applet link")?;
        }
    }
    let st = Command::new("tar")
        .arg("-C")
        .arg(&rootfs)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .context("running tar")?;
    ensure!(st.success(), "tar of the image root filesystem failed");
    std::fs::read(&tar).context("reading the layer")
}

/// Builds `<dir>/<file>`, an OCI image layout archive of one image named `name` (a full
/// reference such as `localhost/netd-pause:1`, stored as `io.containerd.image.name`) whose entry
/// point is `entrypoint`, on the busybox layer. Returns the archive's path.
pub fn busybox_image(dir: &Path, file: &str, name: &str, entrypoint: &[&str]) -> Result<PathBuf> {
    let layer = layer(dir)?;
    let oci = dir.join(format!("{file}.d"));
    std::fs::create_dir_all(oci.join("blobs/sha256")).context("image layout")?;
    let layer_desc = blob(&oci, "application/vnd.oci.image.layer.v1.tar", &layer)?;
    let config = serde_json::json!({
        "architecture": architecture(),
        "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Entrypoint": entrypoint, "WorkingDir": "/"},
        // The layer is not compressed: its diff id is its digest.
        "rootfs": {"type": "layers", "diff_ids": [layer_desc["digest"]]},
    });
    let config_desc = blob(
        &oci,
        "application/vnd.oci.image.config.v1+json",
        config.to_string().as_bytes(),
    )?;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config_desc,
        "layers": [layer_desc],
    });
    let mut manifest_desc = blob(
        &oci,
        "application/vnd.oci.image.manifest.v1+json",
        manifest.to_string().as_bytes(),
    )?;
    manifest_desc["platform"] = serde_json::json!({"architecture": architecture(), "os": "linux"});
    manifest_desc["annotations"] = serde_json::json!({"io.containerd.image.name": name});
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [manifest_desc]});
    std::fs::write(oci.join("index.json"), index.to_string()).context("index.json")?;
    std::fs::write(oci.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)
        .context("oci-layout")?;
    let archive = dir.join(file);
    let st = Command::new("tar")
        .arg("-C")
        .arg(&oci)
        .arg("-cf")
        .arg(&archive)
        .arg(".")
        .status()
        .context("running tar")?;
    ensure!(st.success(), "tar of the image layout failed");
    Ok(archive)
}
