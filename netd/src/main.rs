//! The `netd` binary: parse flags, set up logging, dispatch. The work is in [`netd::run`].

use clap::Parser;
use netd::cli::{Cli, Command};
use tracing_subscriber::EnvFilter;

fn init_logging(format: &str, filter: &str) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour only for a person at a terminal (and not when NO_COLOR asks otherwise): a log
    // file or journal gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => std::future::pending().await,
    }
}

fn main() {
    // flanneld's flag forms and FLANNELD_* variables become netd's flags first.
    let line = netd::flannel_args::command_line(
        std::env::args_os(),
        std::env::vars_os(),
        &<Cli as clap::CommandFactory>::command(),
    );
    let cli = Cli::parse_from(line);
    init_logging(&cli.log_format, &cli.log_filter());
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("netd: error: cannot start runtime: {e}");
            std::process::exit(1);
        }
    };
    let result = rt.block_on(async {
        let mut stdout = std::io::stdout();
        match &cli.command {
            Some(Command::Config { action }) => {
                netd::ctl::config(&cli.kv, action, &mut stdout).await
            }
            Some(Command::Leases { json }) => netd::ctl::leases(&cli.kv, *json, &mut stdout).await,
            Some(Command::Certs(args)) => netd::certs::run(args, &mut stdout),
            None => {
                let config = netd::Config {
                    kv: cli.kv.clone(),
                    daemon: cli.daemon.clone(),
                };
                netd::run(config, shutdown_signal()).await
            }
        }
    });
    if let Err(e) = result {
        if e.is_broken_pipe() {
            return;
        }
        eprintln!("netd: error: {e}");
        std::process::exit(1);
    }
}
