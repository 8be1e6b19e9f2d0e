//! The `netd-cni` binary: reads stdin and the environment, runs one CNI command, exits.

use std::io::Read;

fn main() {
    // Internal mode: the detached reaper DEL starts to destroy retired veths (see net::retire).
    if std::env::var_os("CNI_COMMAND").is_none()
        && let Ok(list) = std::env::var(netd_cni::net::retire::REAP_ENV)
    {
        std::process::exit(netd_cni::net::retire::reaper_main(&list));
    }
    let mut stdin = Vec::new();
    // VERSION may come with no stdin at all; a read error is then just empty input.
    let _ = std::io::stdin().read_to_end(&mut stdin);
    let code = netd_cni::run(|k| std::env::var(k).ok(), &stdin, &mut std::io::stdout());
    std::process::exit(code);
}
