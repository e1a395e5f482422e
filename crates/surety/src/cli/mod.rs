//! The client commands: `publish`, `consume`, `ack`, `nack`, `peek`, `topics`,
//! `groups`, `dlq`. Each talks to a running `surety serve` over its REST API
//! (docs/design.md, "Interfaces"); `consume --exec` and `outbox relay` talk gRPC; and
//! the commands of the backend contract also run on the other brokers through the
//! transport seam (`backend.rs`).

mod backend;
mod consume;
mod contract;
mod dlq;
mod error;
mod exec;
mod groups;
mod http;
mod outbox;
mod output;
mod peek;
mod publish;
mod settle;
mod time;
mod topics;

use std::io::ErrorKind;

use backend::Backend;
use clap::{Args, Subcommand};

use error::CliError;

/// The backend when neither `--backend` nor `SURETY_BACKEND` (nor the older
/// `SURETY_SERVER`) names one.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:7333";

/// `--backend`'s default: `SURETY_SERVER` (its name before there were other backends),
/// else [`DEFAULT_SERVER`]. `SURETY_BACKEND` wins over both (clap's `env`).
fn default_backend() -> String {
    std::env::var("SURETY_SERVER")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_SERVER.to_owned())
}

/// How to reach the broker and how to print, given before the command
/// (`surety --backend URL --json topics list`). These read the environment and carry
/// the defaults; the same flags after the command ([`ClientArgs`]) win over them.
#[derive(Debug, Clone, Args)]
#[command(
    next_help_heading = "Backend and output (client commands; also accepted after the command)"
)]
pub struct GlobalArgs {
    /// The broker: a Surety server (http://HOST:PORT, or just HOST:PORT), NATS
    /// JetStream (nats://HOST:PORT), Redis Streams (redis://HOST:PORT), RabbitMQ
    /// (amqp://HOST:PORT) or Kafka (kafka://HOST:PORT) [also read from SURETY_SERVER]
    #[arg(
        long,
        visible_alias = "server",
        env = "SURETY_BACKEND",
        default_value_t = default_backend(),
        value_name = "URL"
    )]
    pub backend: String,
    /// Bearer token, if the server requires one
    #[arg(long, env = "SURETY_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Print JSON (for scripts) instead of tables
    #[arg(long)]
    pub json: bool,
    /// Refuse a backend whose confirms would not survive a power loss (NATS without
    /// `sync_interval: always`, Redis without `appendfsync always`, a Kafka topic of
    /// `publish`/`consume` with replication factor 1)
    #[arg(long, env = "SURETY_REQUIRE_FSYNC")]
    pub require_fsync: bool,
}

/// The same flags after the command (`surety topics list --server URL --json`), on
/// every client command and its subcommands. They have no defaults and read no
/// environment of their own, so that a flag given here wins over one given before the
/// command, which wins over the environment ([`ClientArgs::over`]).
#[derive(Debug, Clone, Default, Args)]
#[command(next_help_heading = "Backend and output")]
pub struct ClientArgs {
    /// The broker: a Surety server (http://HOST:PORT, or just HOST:PORT), NATS
    /// JetStream (nats://HOST:PORT), Redis Streams (redis://HOST:PORT), RabbitMQ
    /// (amqp://HOST:PORT) or Kafka (kafka://HOST:PORT) [env: SURETY_BACKEND] [default: http://127.0.0.1:7333]
    #[arg(long, visible_alias = "server", global = true, value_name = "URL")]
    pub backend: Option<String>,
    /// Bearer token, if the server requires one [env: SURETY_TOKEN]
    #[arg(long, global = true)]
    pub token: Option<String>,
    /// Print JSON (for scripts) instead of tables
    #[arg(long, global = true)]
    pub json: bool,
    /// Refuse a backend whose confirms would not survive a power loss (NATS without
    /// `sync_interval: always`, Redis without `appendfsync always`, a Kafka topic of
    /// `publish`/`consume` with replication factor 1) [env: SURETY_REQUIRE_FSYNC]
    #[arg(long, global = true)]
    pub require_fsync: bool,
}

impl ClientArgs {
    /// These flags over those given before the command (and the environment).
    pub fn over(&self, global: &GlobalArgs) -> Conn {
        Conn {
            backend: self
                .backend
                .clone()
                .unwrap_or_else(|| global.backend.clone()),
            token: self
                .token
                .clone()
                .or_else(|| global.token.clone())
                .filter(|t| !t.is_empty()),
            json: self.json || global.json,
            require_fsync: self.require_fsync || global.require_fsync,
        }
    }
}

/// What a client command runs with: one backend, one token, one output format.
#[derive(Debug, Clone)]
pub struct Conn {
    /// `--backend` as given ([`Conn::backend`] reads it).
    pub backend: String,
    pub token: Option<String>,
    pub json: bool,
    pub require_fsync: bool,
}

impl Conn {
    /// The broker `--backend` names, or why it names none.
    pub fn backend(&self) -> Result<Backend, CliError> {
        Backend::parse(&self.backend)
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Publish messages (argument, file, or stdin lines); prints where they were stored
    #[command(long_about = publish::LONG_ABOUT)]
    Publish(publish::PublishArgs),
    /// Fetch, print and ack messages of a consumer group
    #[command(long_about = consume::LONG_ABOUT)]
    Consume(consume::ConsumeArgs),
    /// Acknowledge deliveries by receipt (from `consume --no-ack --json`)
    #[command(long_about = settle::ACK_ABOUT)]
    Ack(settle::AckArgs),
    /// Hand deliveries back by receipt: redelivered after --delay, with a --reason
    #[command(long_about = settle::NACK_ABOUT)]
    Nack(settle::NackArgs),
    /// Read a partition's messages without delivering them (no lease, no delivery count)
    #[command(long_about = peek::LONG_ABOUT)]
    Peek(peek::PeekArgs),
    /// Create, list, describe and delete topics
    #[command(long_about = topics::LONG_ABOUT)]
    Topics(topics::TopicsArgs),
    /// A topic's consumer groups: list, delete, seek
    #[command(long_about = groups::LONG_ABOUT)]
    Groups(groups::GroupsArgs),
    /// A group's dead-letter queue: list, show, resend, purge
    #[command(long_about = dlq::LONG_ABOUT)]
    Dlq(dlq::DlqArgs),
    /// The transactional outbox of a Postgres or SQLite database: migrate, relay
    #[command(long_about = outbox::LONG_ABOUT)]
    Outbox(outbox::OutboxArgs),
}

impl Command {
    /// The flags given after the command (the outbox has its own).
    fn client_args(&self) -> Option<&ClientArgs> {
        Some(match self {
            Command::Publish(a) => &a.conn,
            Command::Consume(a) => &a.conn,
            Command::Ack(a) => &a.conn,
            Command::Nack(a) => &a.conn,
            Command::Peek(a) => &a.conn,
            Command::Topics(a) => &a.conn,
            Command::Groups(a) => &a.conn,
            Command::Dlq(a) => &a.conn,
            Command::Outbox(_) => return None,
        })
    }
}

/// Runs one client command and exits: 0, or 1 after one `error:` line (2 for usage
/// errors clap cannot see). Exiting here keeps `main`'s dispatch one line.
pub fn run(command: Command, global: &GlobalArgs) -> ! {
    std::process::exit(run_to_code(command, global))
}

fn run_to_code(command: Command, global: &GlobalArgs) -> i32 {
    let conn = match command.client_args() {
        Some(args) => args.over(global),
        None => {
            let Command::Outbox(args) = command else {
                unreachable!("only the outbox has no ClientArgs")
            };
            return outbox::run(args, global);
        }
    };
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
            Command::Publish(args) => publish::run(args, &conn).await,
            Command::Consume(args) => consume::run(args, &conn).await,
            Command::Ack(args) => settle::ack(args, &conn).await,
            Command::Nack(args) => settle::nack(args, &conn).await,
            Command::Peek(args) => peek::run(args, &conn).await,
            Command::Topics(args) => topics::run(args, &conn).await,
            Command::Groups(args) => groups::run(args, &conn).await,
            Command::Dlq(args) => dlq::run(args, &conn).await,
            Command::Outbox(_) => unreachable!("handled above"),
        }
    });
    match outcome {
        Ok(()) => 0,
        // The reader went away (`| head`): nothing left to say to anyone.
        Err(CliError::Io { source, .. }) if source.kind() == ErrorKind::BrokenPipe => 0,
        Err(e) => {
            eprintln!("error: {}", e.one_line());
            e.exit_code()
        }
    }
}
