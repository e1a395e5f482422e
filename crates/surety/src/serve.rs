//! `surety serve`: run the broker behind REST, gRPC and `/metrics` until SIGTERM/SIGINT.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Context;
use surety_server::{Config, Server, Settings};
use tracing_subscriber::EnvFilter;

/// Flags override environment variables (clap reads both), which override the config
/// file, which overrides the defaults. Every key: docs/config.md.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// TOML config file (see surety.example.toml)
    #[arg(long, value_name = "PATH", env = "SURETY_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory [default: ./surety-data]
    #[arg(long, value_name = "DIR", env = "SURETY_DATA")]
    data: Option<PathBuf>,
    /// Address to listen on; port 0 picks a free port [default: 127.0.0.1:7333]
    #[arg(long, value_name = "ADDR", env = "SURETY_LISTEN")]
    listen: Option<String>,
    /// File of bearer tokens, one per line; without it, no auth
    #[arg(long, value_name = "PATH", env = "SURETY_AUTH_TOKEN_FILE")]
    auth_token_file: Option<PathBuf>,
    /// Largest message accepted (payload + key + headers) [default: 1048576]
    #[arg(long, value_name = "BYTES", env = "SURETY_MAX_MESSAGE_BYTES")]
    max_message_bytes: Option<usize>,
    /// Largest request body accepted [default: 16777216]
    #[arg(long, value_name = "BYTES", env = "SURETY_MAX_REQUEST_BYTES")]
    max_request_bytes: Option<usize>,
    /// How fast the background scrub re-reads sealed segments to CRC-check them; 0 turns
    /// it off [default: 33554432 (32 MiB/s)]
    #[arg(long, value_name = "BYTES", env = "SURETY_SCRUB_BYTES_PER_SEC")]
    scrub_bytes_per_sec: Option<u64>,
}

impl ServeArgs {
    fn overrides(&self) -> Settings {
        Settings {
            data: self.data.clone(),
            listen: self.listen.clone(),
            auth_token_file: self.auth_token_file.clone(),
            max_message_bytes: self.max_message_bytes,
            max_request_bytes: self.max_request_bytes,
            scrub_bytes_per_sec: self.scrub_bytes_per_sec,
        }
    }
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    // Logs go to stderr so stdout carries only the ready line.
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let config = Config::resolve(args.overrides(), args.config.as_deref())?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(serve(config))
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let shutdown = shutdown_signal()?;
    let server = Server::bind(config).await?;
    if server.exposed_without_auth() {
        // Also outside the log, where an operator cannot filter it away.
        eprintln!(
            "WARNING: surety listens on {} without auth; anyone who can reach it can read, \
             publish and delete messages. Set --auth-token-file.",
            server.local_addr()
        );
    }
    // Tests and scripts wait for this exact line.
    println!(
        "surety listening on http://{} (data {})",
        server.local_addr(),
        server.config().data.display()
    );
    server.run(shutdown).await?;
    Ok(())
}

/// Registers for SIGTERM and SIGINT now (so a signal right after the ready line is not
/// missed) and returns a future that completes at the first of them.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
        let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
        Ok(async move {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
                _ = int.recv() => tracing::info!("SIGINT: shutting down"),
            }
        })
    }
    #[cfg(not(unix))]
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("interrupted: shutting down");
    })
}
