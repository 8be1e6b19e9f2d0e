//! The `kvstore` binary: parses etcd-style flags and runs one member until SIGTERM/SIGINT.

use clap::Parser;

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cfg = kvstore::Config::parse();
    if let Err(e) = kvstore::run(cfg, shutdown_signal()).await {
        eprintln!("kvstore: {e}");
        std::process::exit(1);
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("kvstore: cannot install SIGTERM handler: {e}");
            std::process::exit(1);
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
