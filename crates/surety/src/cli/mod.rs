//! The client commands: `publish`, `consume`, `topics`, `groups`, `dlq`. Each talks to
//! a running `surety serve` over its REST API (docs/design.md, "Interfaces").

mod consume;
mod dlq;
mod error;
mod groups;
mod http;
mod outbox;
mod output;
mod publish;
mod topics;

use std::io::ErrorKind;

use clap::{Args, Subcommand};

use error::CliError;

/// How to reach the server and how to print; every client command takes these.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Server and output")]
pub struct ClientArgs {
    /// URL of the Surety server
    #[arg(
        long,
        global = true,
        env = "SURETY_SERVER",
        default_value = "http://127.0.0.1:7333",
        value_name = "URL"
    )]
    pub server: String,
    /// Bearer token, if the server requires one
    #[arg(long, global = true, env = "SURETY_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Print JSON (for scripts) instead of tables
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Publish messages (argument, file, or stdin lines); prints where they were stored
    #[command(long_about = publish::LONG_ABOUT)]
    Publish(publish::PublishArgs),
    /// Fetch, print and ack messages of a consumer group
    #[command(long_about = consume::LONG_ABOUT)]
    Consume(consume::ConsumeArgs),
    /// Create, list and describe topics
    #[command(long_about = topics::LONG_ABOUT)]
    Topics(topics::TopicsArgs),
    /// A topic's consumer groups: lag, in flight, dead letters
    #[command(long_about = groups::LONG_ABOUT)]
    Groups(groups::GroupsArgs),
    /// A group's dead-letter queue: list, show, resend, purge
    #[command(long_about = dlq::LONG_ABOUT)]
    Dlq(dlq::DlqArgs),
    /// The transactional outbox of a Postgres or SQLite database: migrate, relay
    #[command(long_about = outbox::LONG_ABOUT)]
    Outbox(outbox::OutboxArgs),
}

/// Runs one client command and exits: 0, or 1 after one `error:` line (2 for usage
/// errors clap cannot see). Exiting here keeps `main`'s dispatch one line.
pub fn run(command: Command) -> ! {
    std::process::exit(run_to_code(command))
}

fn run_to_code(command: Command) -> i32 {
    if let Command::Outbox(args) = command {
        return outbox::run(args);
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return 1;
        }
    };
    let outcome = runtime.block_on(async {
        match command {
            Command::Publish(args) => publish::run(args).await,
            Command::Consume(args) => consume::run(args).await,
            Command::Topics(args) => topics::run(args).await,
            Command::Groups(args) => groups::run(args).await,
            Command::Dlq(args) => dlq::run(args).await,
            Command::Outbox(_) => unreachable!("handled above"),
        }
    });
    match outcome {
        Ok(()) => 0,
        // The reader went away (`| head`): nothing left to say to anyone.
        Err(CliError::Io { source, .. }) if source.kind() == ErrorKind::BrokenPipe => 0,
        Err(e) => {
            eprintln!("error: {e}");
            e.exit_code()
        }
    }
}
