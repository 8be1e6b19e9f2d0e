//! Running the external tools an end-to-end world is built with (`ip`, `etcdctl`, `ping`…):
//! a failed command becomes an error that carries its command line and stderr; waiting for a
//! condition with a deadline.

use std::process::{Command, Output};

use anyhow::{Context, Result, ensure};

/// Runs `args[0]` with the rest as arguments; returns stdout, or an error carrying stderr.
pub fn run(args: &[&str]) -> Result<String> {
    let out = output(args)?;
    ensure!(
        out.status.success(),
        "`{}` failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `args[0]` with the rest as arguments and returns its output, whatever its exit status.
pub fn output(args: &[&str]) -> Result<Output> {
    let (prog, rest) = args.split_first().context("empty command line")?;
    Command::new(prog)
        .args(rest)
        .output()
        .with_context(|| format!("cannot run {prog}"))
}

/// True when `tool` is found on `PATH`.
pub fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(tool).is_file()))
}

/// Polls `cond` every 50 ms until it holds, or fails with `what` once `timeout` has passed.
pub fn wait_until(
    what: &str,
    timeout: std::time::Duration,
    mut cond: impl FnMut() -> bool,
) -> Result<()> {
    let start = std::time::Instant::now();
    while !cond() {
        ensure!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Ok(())
}
