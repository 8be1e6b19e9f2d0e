//! The `netd` and `netd-cni` binaries an end-to-end world runs. They belong to other packages of
//! the workspace, so Cargo cannot hand their paths to this one (`CARGO_BIN_EXE_*` is per
//! package): they are built with `cargo build` into the target directory of the running program,
//! in its profile, and found there.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use anyhow::{Context, Result, bail, ensure};

/// Paths of the built binaries.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub netd: PathBuf,
    pub cni: PathBuf,
}

/// The profile directory (`target/debug`, `target/release`…) of the running program, which
/// lives in `<profile>/deps/` (tests) or `<profile>/examples/` (examples).
fn profile_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find this program's path")?;
    exe.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .context("cannot derive the target directory from this program's path")
}

/// Builds `netd` and `netd-cni` in the running program's profile (once per process) and
/// returns their paths. `quiet` hides cargo's progress output.
pub fn build(quiet: bool) -> Result<Binaries> {
    static BUILT: OnceLock<std::result::Result<Binaries, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| build_now(quiet).map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

/// A `cargo` command that builds as a user's shell would. A test inherits the variables Cargo
/// sets for the crate under test (`CARGO_MANIFEST_DIR`, `CARGO_PKG_*`, …); some build scripts
/// (ring's) rerun when one of them changes, which would rebuild the TLS stack and everything
/// above it on every test run, so they are removed.
pub fn cargo_command() -> Command {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    for (key, _) in std::env::vars_os() {
        let Some(k) = key.to_str() else { continue };
        let per_crate = k == "OUT_DIR"
            || k == "CARGO_MANIFEST_DIR"
            || k == "CARGO_MANIFEST_PATH"
            || k == "CARGO_MANIFEST_LINKS"
            || k == "CARGO_CRATE_NAME"
            || k == "CARGO_BIN_NAME"
            || k == "CARGO_PRIMARY_PACKAGE"
            || k == "CARGO_TARGET_TMPDIR"
            || k == "CARGO_RUSTC_CURRENT_DIR"
            || k.starts_with("CARGO_PKG_")
            || k.starts_with("CARGO_BIN_EXE_");
        if per_crate {
            cmd.env_remove(&key);
        }
    }
    cmd
}

fn build_now(quiet: bool) -> Result<Binaries> {
    let dir = profile_dir()?;
    let target_dir = dir.parent().context("profile dir has no parent")?;
    let profile = dir
        .file_name()
        .and_then(|n| n.to_str())
        .context("profile dir has no name")?;
    // The workspace's manifest, one level above this crate's.
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    let mut cmd = cargo_command();
    // `-p netd-project` (the root package's library, already built) puts the same crates in the
    // build as the running program's own, so every dependency resolves to the same features and
    // only the two binaries are compiled.
    cmd.args([
        "build",
        "-p",
        "netd",
        "-p",
        "netd-cni",
        "-p",
        "netd-project",
    ])
    .arg("--manifest-path")
    .arg(&manifest)
    .arg("--target-dir")
    .arg(target_dir);
    match profile {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    if quiet {
        cmd.arg("--quiet").stdout(Stdio::null());
    }
    let out = cmd
        .stderr(if quiet {
            Stdio::piped()
        } else {
            Stdio::inherit()
        })
        .output()
        .context("cannot run cargo (set CARGO or put cargo on PATH)")?;
    if !out.status.success() {
        bail!(
            "cargo build -p netd -p netd-cni failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let find = |name: &str| -> Result<PathBuf> {
        let p = dir.join(name);
        ensure!(p.is_file(), "{} is missing after the build", p.display());
        Ok(p)
    };
    Ok(Binaries {
        netd: find("netd")?,
        cni: find("netd-cni")?,
    })
}
