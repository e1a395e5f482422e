//! `orders`: the outbox and inbox example (README, "Transactional outbox and inbox").

use std::time::Duration;

use anyhow::Result;
use clap::{Parser, Subcommand};
use surety_client::{Client, StopHandle};
use surety_outbox::{Database, Relay, RelayConfig};

#[derive(Debug, Parser)]
#[command(
    about = "Orders written with their outbox rows in one transaction, relayed to \
                   Surety, projected exactly once through the inbox"
)]
struct Cli {
    /// postgres://USER@HOST/DB or sqlite:PATH
    #[arg(
        long,
        env = "DATABASE_URL",
        global = true,
        default_value = "sqlite:orders.db"
    )]
    database_url: String,
    /// The Surety server
    #[arg(
        long,
        env = "SURETY_SERVER",
        global = true,
        default_value = "http://127.0.0.1:7333"
    )]
    server: String,
    /// Bearer token, if the server requires one (its auth_token_file)
    #[arg(long, env = "SURETY_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create the outbox, inbox, orders and order_totals tables, and the topic
    Setup,
    /// Place orders: each order row and its outbox row in one transaction
    Place {
        #[arg(long, default_value_t = 10)]
        count: u32,
    },
    /// Publish the outbox rows to Surety (until Ctrl-C, or --drain: until none is pending)
    Relay {
        #[arg(long)]
        drain: bool,
    },
    /// Consume `orders` into order_totals through the inbox, until Ctrl-C or --for SECONDS
    Project {
        #[arg(long = "for", value_name = "SECONDS")]
        seconds: Option<u64>,
    },
    /// Print the projection
    Totals,
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let db = Database::connect(&cli.database_url).await?;
    match cli.command {
        Command::Setup => {
            orders::migrate(&db).await?;
            let client = Client::connect(&cli.server, cli.token.as_deref()).await?;
            client.create_topic(orders::TOPIC, "").await?;
            println!("tables and topic {:?} ready", orders::TOPIC);
        }
        Command::Place { count } => {
            let run = std::process::id();
            for i in 0..count {
                let customer = format!("customer-{}", i % 3);
                orders::place_order(&db, &format!("{run}-{i}"), &customer, 1_000 + i as i64)
                    .await?;
            }
            println!("placed {count} orders");
        }
        Command::Relay { drain } => {
            let client = Client::connect(&cli.server, cli.token.as_deref()).await?;
            let relay = Relay::new(db.clone(), client, RelayConfig::default());
            let stop = relay.stop_handle();
            let counters = relay.counters();
            let task = tokio::spawn(relay.run());
            if drain {
                while pending(&db).await? > 0 {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            } else {
                tokio::signal::ctrl_c().await?;
            }
            stop.stop();
            task.await??;
            println!("relayed: {:?}", counters.snapshot());
        }
        Command::Project { seconds } => {
            let client = Client::connect(&cli.server, cli.token.as_deref()).await?;
            let stop = StopHandle::new();
            let s = stop.clone();
            tokio::spawn(async move {
                match seconds {
                    Some(n) => tokio::time::sleep(Duration::from_secs(n)).await,
                    None => {
                        let _ = tokio::signal::ctrl_c().await;
                    }
                }
                s.stop();
            });
            let stats = orders::run_projection(db.clone(), client, stop).await?;
            println!(
                "projected {} orders, skipped {} redeliveries, nacked {} deliveries it could not project",
                stats.applied, stats.skipped, stats.failed
            );
        }
        Command::Totals => {
            for (customer, n, cents) in orders::totals(&db).await? {
                println!("{customer}: {n} orders, {:.2} total", cents as f64 / 100.0);
            }
        }
    }
    db.close().await;
    Ok(())
}

async fn pending(db: &Database) -> Result<i64> {
    let sql = "SELECT count(*) FROM surety_outbox WHERE state = 'pending'";
    Ok(match db {
        Database::Postgres(p) => sqlx::query_scalar(sql).fetch_one(p).await?,
        Database::Sqlite(p) => sqlx::query_scalar(sql).fetch_one(p).await?,
    })
}
