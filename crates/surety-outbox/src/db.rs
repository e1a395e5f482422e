//! A connection pool to the application's database, Postgres or SQLite, chosen by URL.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};

use crate::error::ConnectError;

/// The application's database. Cheap to clone (pools are shared).
#[derive(Debug, Clone)]
pub enum Database {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

/// How long a SQLite writer waits for another's lock before failing with `busy`: the
/// relay and the application write the same file.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(10);

impl Database {
    /// Connects to `postgres://...` / `postgresql://...` or `sqlite:PATH` (created if
    /// missing, WAL mode so the application's writers and the relay do not block readers).
    pub async fn connect(url: &str) -> Result<Database, ConnectError> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let options = PgConnectOptions::from_str(url).map_err(ConnectError::Database)?;
            Self::connect_postgres(options).await
        } else if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url).map_err(ConnectError::Database)?;
            Self::connect_sqlite(options).await
        } else {
            Err(ConnectError::UnsupportedUrl { url: redact(url) })
        }
    }

    pub async fn connect_postgres(options: PgConnectOptions) -> Result<Database, ConnectError> {
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await
            .map_err(ConnectError::Database)?;
        Ok(Database::Postgres(pool))
    }

    pub async fn connect_sqlite(options: SqliteConnectOptions) -> Result<Database, ConnectError> {
        let options = options
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(SQLITE_BUSY_TIMEOUT);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .map_err(ConnectError::Database)?;
        Ok(Database::Sqlite(pool))
    }

    pub async fn close(&self) {
        match self {
            Database::Postgres(p) => p.close().await,
            Database::Sqlite(p) => p.close().await,
        }
    }
}

/// The URL without its password, for error messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme + 3],
                    &userinfo[..colon],
                    &url[at..]
                ),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_hides_only_the_password() {
        assert_eq!(redact("mysql://u:secret@h/db"), "mysql://u:***@h/db");
        assert_eq!(redact("mysql://u@h/db"), "mysql://u@h/db");
        assert_eq!(redact("nope"), "nope");
    }
}
