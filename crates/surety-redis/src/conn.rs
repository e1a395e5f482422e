//! One connection to the server that comes back after an outage: a multiplexed
//! connection, dropped on the first I/O failure and opened again by the next call, so a
//! transport survives a `redis-server` restart (calls during the outage fail as
//! retryable; later ones reach the new server). Scripts are sent by SHA and loaded again
//! where the server says NOSCRIPT (a restarted server has an empty script cache).

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{Cmd, FromRedisValue, Script};
use surety_core::{ErrorKind, Outcome, TransportError};
use tokio::sync::Mutex;

#[derive(Debug)]
pub(crate) struct Conn {
    client: redis::Client,
    current: Mutex<Option<MultiplexedConnection>>,
    pub timeout: Duration,
}

impl Conn {
    pub fn new(client: redis::Client, timeout: Duration) -> Conn {
        Conn {
            client,
            current: Mutex::new(None),
            timeout,
        }
    }

    async fn get(&self) -> Result<MultiplexedConnection, TransportError> {
        let mut current = self.current.lock().await;
        if let Some(c) = &*current {
            return Ok(c.clone());
        }
        let c = tokio::time::timeout(self.timeout, self.client.get_multiplexed_async_connection())
            .await
            .map_err(|_| TransportError::unavailable("connecting to Redis timed out"))?
            .map_err(|e| TransportError::unavailable(format!("connect to Redis: {e}")))?;
        *current = Some(c.clone());
        Ok(c)
    }

    async fn reset(&self) {
        *self.current.lock().await = None;
    }

    /// Runs `cmd`, waiting at most `timeout` (longer than any BLOCK it has).
    pub async fn query_for<T: FromRedisValue>(
        &self,
        cmd: &Cmd,
        timeout: Duration,
    ) -> Result<T, TransportError> {
        let mut c = self.get().await?;
        let done = tokio::time::timeout(timeout, cmd.query_async::<T>(&mut c)).await;
        self.finish(done).await
    }

    pub async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> Result<T, TransportError> {
        self.query_for(cmd, self.timeout).await
    }

    /// Runs `script` with `keys` and `args`.
    pub async fn script<T: FromRedisValue>(
        &self,
        script: &Script,
        keys: &[&str],
        args: &[Vec<u8>],
    ) -> Result<T, TransportError> {
        let mut inv = script.prepare_invoke();
        for k in keys {
            inv.key(*k);
        }
        for a in args {
            inv.arg(a.as_slice());
        }
        let mut c = self.get().await?;
        let done = tokio::time::timeout(self.timeout, inv.invoke_async::<T>(&mut c)).await;
        self.finish(done).await
    }

    async fn finish<T>(
        &self,
        done: Result<redis::RedisResult<T>, tokio::time::error::Elapsed>,
    ) -> Result<T, TransportError> {
        match done {
            Err(_) => {
                self.reset().await;
                Err(TransportError::timed_out("a Redis call"))
            }
            Ok(Err(e)) => {
                let e = map_error(e);
                if e.kind == ErrorKind::Unavailable {
                    self.reset().await;
                }
                Err(e)
            }
            Ok(Ok(v)) => Ok(v),
        }
    }
}

/// A client error in the seam's terms.
pub(crate) fn map_error(e: redis::RedisError) -> TransportError {
    if e.is_connection_refusal() {
        return TransportError::unavailable(format!("Redis: {e}"));
    }
    if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() {
        // The request may have reached the server: it may have happened.
        return TransportError::new(
            ErrorKind::Unavailable,
            Outcome::Unknown,
            format!("Redis: {e}"),
        );
    }
    let text = e.to_string();
    let (kind, outcome) = match e.code() {
        Some("NOGROUP") => (ErrorKind::GroupNotFound, Outcome::Refused),
        Some("LOADING") | Some("BUSY") | Some("TRYAGAIN") | Some("MASTERDOWN") => {
            (ErrorKind::Overloaded, Outcome::Retryable)
        }
        Some("NOAUTH") | Some("NOPERM") | Some("WRONGPASS") => {
            (ErrorKind::Unauthorized, Outcome::Refused)
        }
        Some("OOM") => (ErrorKind::Storage, Outcome::Retryable),
        Some("READONLY") => (ErrorKind::Unavailable, Outcome::Retryable),
        _ => (ErrorKind::Other, Outcome::Refused),
    };
    TransportError::new(kind, outcome, format!("Redis: {text}"))
}

impl Conn {
    /// Runs a pipeline (MULTI/EXEC where it is atomic).
    pub async fn query_pipe<T: FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
    ) -> Result<T, TransportError> {
        let mut c = self.get().await?;
        let done = tokio::time::timeout(self.timeout, pipe.query_async::<T>(&mut c)).await;
        self.finish(done).await
    }
}
