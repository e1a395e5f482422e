//! The `surety` command line.

mod bench;
mod cli;
mod serve;

use clap::{Parser, Subcommand};

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

Client commands talk to --server (env SURETY_SERVER, default http://127.0.0.1:7333).

Run `surety help <command>` for the options of a command.";

#[derive(Debug, Parser)]
#[command(name = "surety", version, about, long_about = LONG_ABOUT)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Measure Surety on this machine; results go to the terminal and BENCHMARKS.md
    #[command(
        long_about = "Measure Surety on this machine. Each benchmark prints a table and \
                      replaces its own section of BENCHMARKS.md.\n\n\
                      Example:\n  surety bench log --seconds 3"
    )]
    Bench(bench::BenchArgs),
    /// Run the broker: REST, gRPC and /metrics on one address, until SIGTERM or SIGINT
    #[command(
        long_about = "Run the broker: REST, gRPC, /metrics and /healthz on one address, \
                      until SIGTERM or SIGINT. Settings: flags, then SURETY_* environment \
                      variables, then --config FILE, then defaults (docs/config.md).\n\n\
                      Example:\n  surety serve --data ./surety-data --listen 127.0.0.1:7333"
    )]
    Serve(serve::ServeArgs),
    #[command(flatten)]
    Client(cli::Command),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Bench(args) => bench::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Client(command) => cli::run(command),
    }
}
