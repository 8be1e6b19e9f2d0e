//! Running `nft`, the nftables tool, for netd's masquerade table and netd-cni's: one way to
//! find the binary (runtimes may run plugins with a minimal `PATH`), feed it a script, and turn
//! a failure into one line.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

/// The `nft` binary: the usual absolute paths first, then `PATH`.
pub fn binary() -> &'static str {
    ["/usr/sbin/nft", "/sbin/nft", "/usr/bin/nft"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("nft")
}

/// True when nftables tooling is installed.
pub fn available() -> bool {
    binary() != "nft"
        || std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("nft").is_file()))
}

/// Runs `nft args...`, with `script` on its stdin when given; its stdout, or the reason it
/// failed as one line (nft's own message, lines joined with "; ").
pub fn run(args: &[&str], script: Option<&str>) -> Result<String, String> {
    let mut child = Command::new(binary())
        .args(args)
        .stdin(if script.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run nft: {e}"))?;
    if let (Some(text), Some(mut pipe)) = (script, child.stdin.take()) {
        pipe.write_all(text.as_bytes())
            .map_err(|e| format!("write to nft: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("wait for nft: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr)
            .trim()
            .replace('\n', "; "));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
