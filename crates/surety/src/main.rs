//! The `surety` command line.

mod cli;
mod serve;
mod verify;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

/// The server and the benchmarks allocate a buffer or two per message (protobuf decode,
/// log records, receipts) from many threads at once; glibc's malloc spent about 15% of
/// the server's CPU on that under `bench server` (perf), mimalloc a fraction of it.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const LONG_ABOUT: &str = "\
Surety: a messaging system that acknowledges a message only once it is on disk.

Start a server (data in ./surety-data, listening on 127.0.0.1:7333):
  surety serve

Then, from another terminal:
  surety topics create orders --partitions 2
  surety publish orders 'order 42 created'
  surety consume orders --group billing      # prints, then acks what it printed

Check every record of a stopped server's data (exit status 1 if anything is damaged):
  surety verify --data ./surety-data

Client commands talk to --backend (env SURETY_BACKEND, default http://127.0.0.1:7333):
a Surety server, or NATS JetStream (nats://HOST:4222), Redis Streams (redis://HOST:6379),
RabbitMQ (amqp://HOST:5672) or Kafka (kafka://HOST:9092) with the same reliability layer.
--backend (alias --server), --token and --json may come before or after the command:
  surety --backend 10.0.0.5:7333 --json topics list
  surety topics list --backend nats://127.0.0.1:4222 --json

Run `surety help <command>` for the options of a command.";

#[derive(Debug, Parser)]
#[command(name = "surety", version, about, long_about = LONG_ABOUT)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Not global: `serve`, `verify` and `bench` have flags of their own and do not take
    /// these.
    #[command(flatten)]
    client: cli::GlobalArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Measure Surety on this machine; results go to the terminal and BENCHMARKS.md
    #[command(
        long_about = "Measure Surety on this machine. Each benchmark prints a table and \
                      replaces its own section of BENCHMARKS.md.\n\n\
                      Example:\n  surety bench log --seconds 3"
    )]
    Bench(surety_bench::BenchArgs),
    /// Run the broker: REST, gRPC and /metrics on one address, until SIGTERM or SIGINT
    #[command(
        long_about = "Run the broker: REST, gRPC, /metrics and /healthz on one address, \
                      until SIGTERM or SIGINT. Settings: flags, then SURETY_* environment \
                      variables, then --config FILE, then defaults (docs/config.md).\n\n\
                      Example:\n  surety serve --data ./surety-data --listen 127.0.0.1:7333"
    )]
    Serve(serve::ServeArgs),
    /// Check every record of a stopped server's data directory; non-zero exit if damaged
    #[command(long_about = verify::LONG_ABOUT)]
    Verify(verify::VerifyArgs),
    #[command(flatten)]
    Client(cli::Command),
}

fn main() -> anyhow::Result<()> {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    if !matches!(cli.command, Command::Client(_)) {
        // `surety --json serve` would be silently ignored otherwise.
        if let Some(flag) = ["backend", "token", "json", "require_fsync"]
            .into_iter()
            .find(|id| matches.value_source(id) == Some(ValueSource::CommandLine))
        {
            Cli::command()
                .error(
                    clap::error::ErrorKind::ArgumentConflict,
                    format!(
                        "--{flag} goes with the client commands (publish, consume, topics, \
                         ...), not with serve, verify or bench; give verify its --json after \
                         the command"
                    ),
                )
                .exit();
        }
    }
    match cli.command {
        Command::Bench(args) => surety_bench::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Verify(args) => verify::run(args),
        Command::Client(command) => cli::run(command, &cli.client),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn client_flags_before_or_after_the_command() {
        let parse = |args: &[&str]| Cli::try_parse_from(args).unwrap();
        let before = parse(&["surety", "--server", "a:1", "--json", "topics", "list"]);
        let after = parse(&["surety", "topics", "list", "--server", "a:1", "--json"]);
        let middle = parse(&["surety", "topics", "--json", "list", "--server", "a:1"]);
        for cli in [&before, &after, &middle] {
            let Command::Client(cli::Command::Topics(t)) = &cli.command else {
                panic!("{cli:?}")
            };
            let conn = t.conn.over(&cli.client);
            assert_eq!(conn.backend, "a:1");
            assert!(conn.json);
        }
        // After the command wins over before it.
        let both = parse(&[
            "surety", "--server", "a:1", "dlq", "list", "t", "-g", "g", "--server", "b:2",
        ]);
        let Command::Client(cli::Command::Dlq(d)) = &both.command else {
            panic!()
        };
        assert_eq!(d.conn.over(&both.client).backend, "b:2");
    }

    #[test]
    fn serve_and_bench_keep_their_flags() {
        let cli = Cli::try_parse_from(["surety", "bench", "log", "--json", "--seconds", "1"]);
        assert!(cli.is_ok(), "{cli:?}");
        let cli = Cli::try_parse_from(["surety", "serve", "--listen", "127.0.0.1:0"]);
        assert!(cli.is_ok(), "{cli:?}");
        // Client flags are not flags of serve.
        assert!(Cli::try_parse_from(["surety", "serve", "--server", "x"]).is_err());
    }
}
