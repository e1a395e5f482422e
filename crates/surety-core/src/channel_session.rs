//! The driver's end of a session whose work happens in a task of the transport's own
//! (the NATS, Redis, RabbitMQ and Kafka backends): commands go down one channel, events
//! come up another, and the first error ends the session for good. One type, so that
//! every backend's [`Session`] behaves the same at its edges.

use tokio::sync::mpsc;

use crate::error::TransportError;
use crate::transport::{BoxFuture, RequestId, Session, SessionEvent, Settle};

/// What the driver asks of the session task.
#[derive(Debug)]
pub enum SessionCommand {
    Settle(RequestId, Settle),
    Credit(u32),
    Drain,
}

/// What the session task answers with.
pub type EventSender = mpsc::UnboundedSender<Result<SessionEvent, TransportError>>;

/// A [`Session`] over the two channels of a session task.
#[derive(Debug)]
pub struct ChannelSession {
    commands: mpsc::UnboundedSender<SessionCommand>,
    events: mpsc::UnboundedReceiver<Result<SessionEvent, TransportError>>,
    ended: Option<TransportError>,
    /// Said when the task is gone without an error ("the Kafka session ended").
    gone: &'static str,
}

impl ChannelSession {
    /// The session, the task's command receiver and its event sender.
    pub fn new(
        gone: &'static str,
    ) -> (
        ChannelSession,
        mpsc::UnboundedReceiver<SessionCommand>,
        EventSender,
    ) {
        let (commands, command_rx) = mpsc::unbounded_channel();
        let (events_tx, events) = mpsc::unbounded_channel();
        let session = ChannelSession {
            commands,
            events,
            ended: None,
            gone,
        };
        (session, command_rx, events_tx)
    }
}

impl Session for ChannelSession {
    fn next(&mut self) -> BoxFuture<'_, Result<SessionEvent, TransportError>> {
        Box::pin(async move {
            if let Some(e) = &self.ended {
                return Err(e.clone());
            }
            // `recv` is cancel-safe, and nothing else here awaits.
            let item = self
                .events
                .recv()
                .await
                .unwrap_or_else(|| Err(TransportError::unavailable(self.gone)));
            if let Err(e) = &item {
                self.ended = Some(e.clone());
            }
            item
        })
    }

    fn settle(&mut self, id: RequestId, settle: Settle) {
        let _ = self.commands.send(SessionCommand::Settle(id, settle));
    }

    fn credit(&mut self, n: u32) {
        let _ = self.commands.send(SessionCommand::Credit(n));
    }

    fn drain(&mut self) {
        let _ = self.commands.send(SessionCommand::Drain);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::SettleOutcome;

    #[tokio::test]
    async fn commands_go_down_events_come_up_and_an_error_is_final() {
        let (mut s, mut commands, events) = ChannelSession::new("the test session ended");
        s.credit(3);
        assert!(matches!(
            commands.recv().await,
            Some(SessionCommand::Credit(3))
        ));
        events
            .send(Ok(SessionEvent::Settled {
                id: 1,
                outcomes: vec![SettleOutcome::Applied],
            }))
            .unwrap();
        assert!(matches!(
            s.next().await,
            Ok(SessionEvent::Settled { id: 1, .. })
        ));
        events
            .send(Err(TransportError::unavailable("broken")))
            .unwrap();
        events.send(Ok(SessionEvent::Drained)).unwrap();
        assert_eq!(s.next().await.unwrap_err().message, "broken");
        assert_eq!(
            s.next().await.unwrap_err().message,
            "broken",
            "an error ends it"
        );
        drop(events);
        let (mut s, _c, events) = ChannelSession::new("the test session ended");
        drop(events);
        assert_eq!(
            s.next().await.unwrap_err().message,
            "the test session ended"
        );
    }
}
