//! The machine's Postgres for the outbox tests: required under `CI=true`, skipped with a
//! printed reason elsewhere when it does not answer.

use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

pub const PG_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// A small pool on the `test` database, or `None` (after saying why) when Postgres is
/// not running outside CI.
pub async fn admin_pool() -> Option<PgPool> {
    match PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(5))
        .connect(PG_URL)
        .await
    {
        Ok(p) => Some(p),
        Err(e) => {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("Postgres at 127.0.0.1:5432 is required under CI=true: {e}");
            }
            eprintln!("SKIPPED: Postgres unavailable ({e})");
            None
        }
    }
}
