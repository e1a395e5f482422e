//! The `surety` command line.

mod bench;

use clap::{Parser, Subcommand};

const LONG_ABOUT: &str = "\
Surety: a messaging system that acknowledges a message only once it is on disk.

This binary will run the broker and its clients; for now it measures the durable core.

Example: measure the log against the raw disk and record the result in BENCHMARKS.md
  cargo run --release -p surety -- bench log

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
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Bench(args) => bench::run(args),
    }
}
