//! The AMQP connection: one per transport, opened again when it broke (a broker
//! restart), with channels made on whichever connection is live; and how a lapin error
//! reads as a seam error (may a retry help, did it happen).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use lapin::options::ConfirmSelectOptions;
use lapin::{Channel, Connection, ConnectionProperties};
use surety_core::{ErrorKind, Outcome, TransportError};
use tokio::sync::Mutex;

/// AMQP reply codes Surety tells apart (AMQP 0-9-1 §1.9).
pub const NOT_FOUND: u16 = 404;
pub const PRECONDITION_FAILED: u16 = 406;
pub const ACCESS_REFUSED: u16 = 403;
pub const RESOURCE_LOCKED: u16 = 405;

#[derive(Debug)]
pub(crate) struct Conn {
    url: String,
    pub timeout: Duration,
    live: Mutex<Option<Arc<Connection>>>,
}

impl Conn {
    pub fn new(url: String, timeout: Duration) -> Conn {
        Conn {
            url,
            timeout,
            live: Mutex::new(None),
        }
    }

    /// The live connection, opened (again) if there is none.
    pub async fn connection(&self) -> Result<Arc<Connection>, TransportError> {
        let mut live = self.live.lock().await;
        if let Some(c) = live.as_ref()
            && c.status().connected()
        {
            return Ok(c.clone());
        }
        let opened = tokio::time::timeout(
            self.timeout,
            Connection::connect(&self.url, ConnectionProperties::default()),
        )
        .await
        .map_err(|_| TransportError::timed_out("connecting to RabbitMQ"))?
        .map_err(|e| match error(&e, Outcome::Retryable) {
            // A refused login is final; anything else at connect is the broker being away.
            e if e.kind == ErrorKind::Unauthorized => e,
            e => TransportError::unavailable(format!("connecting to RabbitMQ: {}", e.message)),
        })?;
        let c = Arc::new(opened);
        *live = Some(c.clone());
        Ok(c)
    }

    /// A new channel.
    pub async fn channel(&self) -> Result<Channel, TransportError> {
        let c = self.connection().await?;
        self.bounded("opening a channel", c.create_channel(), Outcome::Retryable)
            .await
    }

    /// A new channel in confirm mode.
    pub async fn confirm_channel(&self) -> Result<Channel, TransportError> {
        let ch = self.channel().await?;
        self.bounded(
            "confirm.select",
            ch.confirm_select(ConfirmSelectOptions::default()),
            Outcome::Retryable,
        )
        .await?;
        Ok(ch)
    }

    /// Publishes one copy straight into `queue` (the default exchange) on confirm channel
    /// `ch` and waits for its confirm: the first half of every copy-then-ack the layer
    /// does (a retry, a dead letter, a resend, the backlog's move).
    pub async fn copy_into(
        &self,
        ch: &Channel,
        queue: &str,
        data: &[u8],
        properties: lapin::BasicProperties,
    ) -> Result<(), TransportError> {
        let confirm = self
            .bounded(
                "basic.publish",
                ch.basic_publish(
                    "".into(),
                    queue.into(),
                    lapin::options::BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    data,
                    properties,
                ),
                Outcome::Unknown,
            )
            .await?;
        let answer = self
            .bounded("publisher confirm", confirm, Outcome::Unknown)
            .await?;
        if answer.is_ack() && answer.take_message().is_none() {
            Ok(())
        } else {
            Err(TransportError::new(
                ErrorKind::Storage,
                Outcome::Unknown,
                format!(
                    "the copy into {queue} was not confirmed (queue missing, full or without a quorum)"
                ),
            ))
        }
    }

    /// `f` within the request timeout; a lapin error read with `outcome` (what a failure
    /// of this call leaves behind when the broker did not say).
    pub async fn bounded<T>(
        &self,
        what: &str,
        f: impl Future<Output = lapin::Result<T>>,
        outcome: Outcome,
    ) -> Result<T, TransportError> {
        match tokio::time::timeout(self.timeout, f).await {
            Err(_) => Err(TransportError::new(
                ErrorKind::TimedOut,
                match outcome {
                    Outcome::Retryable => Outcome::Retryable,
                    _ => Outcome::Unknown,
                },
                format!("{what}: no answer from RabbitMQ in {:?}", self.timeout),
            )),
            Ok(r) => r.map_err(|e| {
                let mut e = error(&e, outcome);
                e.message = format!("{what}: {}", e.message);
                e
            }),
        }
    }
}

/// The AMQP reply code of a channel or connection error, where the broker gave one.
pub fn reply_code(e: &lapin::Error) -> Option<u16> {
    match e.kind() {
        lapin::ErrorKind::ProtocolError(p) => Some(p.get_id()),
        _ => None,
    }
}

/// A lapin error as a seam error. A broker refusal (a reply code) is final and nothing
/// happened; a broken connection or channel leaves `outcome`.
pub fn error(e: &lapin::Error, outcome: Outcome) -> TransportError {
    let text = e.to_string();
    match reply_code(e) {
        Some(NOT_FOUND) => TransportError::refused(ErrorKind::TopicNotFound, text),
        Some(ACCESS_REFUSED) => TransportError::refused(ErrorKind::Unauthorized, text),
        Some(PRECONDITION_FAILED) => {
            TransportError::refused(ErrorKind::InvalidInput, text).with_code("precondition_failed")
        }
        Some(RESOURCE_LOCKED) => {
            TransportError::new(ErrorKind::Overloaded, Outcome::Retryable, text)
        }
        // 320 connection-forced (a broker shutting down), 541 internal error, ...
        Some(_) | None => TransportError::new(ErrorKind::Unavailable, outcome, text),
    }
}
