//! Running the external tools an end-to-end world is built with (`ip`, `etcdctl`, `ping`…):
//! a failed command becomes an error that carries its command line and stderr; waiting for a
//! condition with a deadline; stopping a process; tearing down on Ctrl-C or SIGTERM.

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

/// Stops `child` with SIGTERM, then SIGKILL once `grace` has passed; true when it left on the
/// SIGTERM.
pub fn stop(child: &mut std::process::Child, grace: std::time::Duration) -> bool {
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    let start = std::time::Instant::now();
    while start.elapsed() < grace {
        if let Ok(Some(_)) = child.try_wait() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    false
}

/// On Ctrl-C or SIGTERM, runs `tear_down` and exits 130: a program that builds a world (the
/// demo, the benchmarks) removes it also when interrupted.
pub fn on_interrupt(tear_down: fn()) {
    std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async {
            let Ok(mut term) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            else {
                return;
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        });
        eprintln!("interrupted: tearing down");
        tear_down();
        std::process::exit(130);
    });
}
