//! `surety bench`: measurements of Surety's parts on this machine, each printed and
//! recorded in its own section of BENCHMARKS.md.

mod log;
mod progress;
mod report;
mod table;

use anyhow::Result;
use clap::{Args, Subcommand};

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    which: Which,
}

#[derive(Debug, Subcommand)]
enum Which {
    /// Append throughput and ack latency of surety-log, next to the raw disk's
    /// write + fdatasync figures
    #[command(long_about = log::LONG_ABOUT, after_help = log::AFTER_HELP)]
    Log(log::LogArgs),
}

pub fn run(args: BenchArgs) -> Result<()> {
    match args.which {
        Which::Log(args) => log::run(args),
    }
}
