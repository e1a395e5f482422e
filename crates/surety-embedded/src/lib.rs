//! `surety-embedded`: the in-process transport. An application that runs the broker in
//! its own process (one binary, no server to deploy, or a test) uses the same
//! [`Producer`](surety_core::Producer) and [`Consumer`](surety_core::Consumer) as over
//! gRPC, with the same guarantees: [`InProcess`] implements the seam of `surety-core`
//! ([`Publisher`], [`Subscriber`], [`Admin`], so it is a [`Transport`](surety_core::Transport))
//! by calling the [`Broker`] directly — no sockets, no protobuf, no copy of the broker's
//! semantics.
//!
//! What is shared rather than repeated:
//! - the consume window (fetcher under credits, outstanding set, concurrent
//!   per-receipt settles, drain) is [`surety_broker::session`], the very code behind the
//!   gRPC `Consume` stream;
//! - every bound a client sends is checked by the broker (`surety_broker::limits`), so an
//!   in-process caller is refused exactly as a remote one, with the same stable codes;
//! - broker errors become transport errors in one table ([`transport_error`]).
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use surety_broker::{Broker, BrokerOptions};
//! use surety_core::{Admin, Consumer, Message, Producer, TopicSpec};
//! use surety_embedded::InProcess;
//!
//! let broker = Broker::open("/var/lib/myapp/surety", BrokerOptions::default())?;
//! let transport = std::sync::Arc::new(InProcess::new(broker));
//! transport.create_topic("orders", &TopicSpec::default()).await?;
//! Producer::new(transport.clone()).publish("orders", Message::new("hello")).await?;
//! let stats = Consumer::builder(transport, "orders", "billing")
//!     .run(|d| async move { println!("{:?}", d.payload); Ok::<_, String>(()) })
//!     .await?;
//! # let _ = stats; Ok(()) }
//! ```
//!
//! The broker's lease sweeper, scrub and retention are the application's to start
//! ([`Broker::spawn_sweeper`], [`Broker::spawn_scrubber`], as `surety serve` does);
//! without the sweeper an expired lease still comes back at the next fetch of its group,
//! and without the scrub damage in sealed segments is found only when they are read.

mod convert;
mod error;
mod session;

use std::time::Duration;

use surety_broker::Broker;
use surety_core::{
    Admin, Batch, BoxFuture, Capabilities, Capable, DeadLetterPage, PublishAnswers, Publisher,
    Selection, Session, Subscriber, Subscription, TopicInfo, TopicSpec, TransportError,
};

pub use error::transport_error;

/// Long-poll time of one fetch: how long a drain (a consumer's stop) waits for the
/// fetcher at most. Shorter than the gRPC stream's, since an idle in-process poll costs
/// no round trip.
pub const FETCH_WAIT: Duration = Duration::from_millis(200);

/// The broker as a transport, in this process.
#[derive(Debug, Clone)]
pub struct InProcess {
    broker: Broker,
    capabilities: Capabilities,
}

impl InProcess {
    pub fn new(broker: Broker) -> Self {
        Self {
            broker,
            capabilities: capabilities(),
        }
    }

    /// The broker underneath, for what the seam does not cover (seek, peek, groups,
    /// retention, the sweeper).
    pub fn broker(&self) -> &Broker {
        &self.broker
    }
}

/// What the broker does, said honestly (docs/seam.md §4, "in-process").
/// A Surety broker's capabilities (`surety_core::surety`, shared with the gRPC
/// transport); a test below holds them to this broker's own constants.
fn capabilities() -> Capabilities {
    surety_core::surety::capabilities("in-process")
}

impl Capable for InProcess {
    fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }
}

impl Publisher for InProcess {
    fn publish<'a>(
        &'a self,
        topic: &'a str,
        batch: &'a Batch,
    ) -> BoxFuture<'a, Result<PublishAnswers, TransportError>> {
        Box::pin(async move {
            let messages = batch.iter().map(convert::publish_message).collect();
            // Cancel-safe: the broker runs the publish in its own task, so a driver that
            // times out cannot strand its dedupe reservations.
            let results = self
                .broker
                .publish(topic, messages)
                .await
                .map_err(|e| transport_error(&e))?;
            if results.len() != batch.len() {
                return Err(TransportError::new(
                    surety_core::ErrorKind::Protocol,
                    surety_core::Outcome::Unknown,
                    format!(
                        "the broker answered {} results for {} messages",
                        results.len(),
                        batch.len()
                    ),
                ));
            }
            Ok(batch
                .sequences()
                .zip(results)
                .map(|(sequence, r)| Ok(convert::published(sequence, r)))
                .collect())
        })
    }
}

impl Subscriber for InProcess {
    fn subscribe<'a>(
        &'a self,
        sub: &'a Subscription,
    ) -> BoxFuture<'a, Result<Box<dyn Session>, TransportError>> {
        Box::pin(async move {
            let session = session::InProcessSession::start(self.broker.clone(), sub, FETCH_WAIT)?;
            Ok(Box::new(session) as Box<dyn Session>)
        })
    }
}

/// A dead-letter id of this transport: the broker's number.
fn selection(which: &Selection) -> Result<surety_broker::Selection, TransportError> {
    Ok(match surety_core::surety::dead_letter_ids(which)? {
        None => surety_broker::Selection::All,
        Some(ids) => surety_broker::Selection::Ids(ids),
    })
}

impl Admin for InProcess {
    fn create_topic<'a>(
        &'a self,
        topic: &'a str,
        spec: &'a TopicSpec,
    ) -> BoxFuture<'a, Result<TopicInfo, TransportError>> {
        Box::pin(async move {
            let (info, _created) = self
                .broker
                .put_topic(topic, &convert::topic_patch(spec))
                .await
                .map_err(|e| transport_error(&e))?;
            Ok(convert::topic_info(info))
        })
    }

    fn describe_topic<'a>(
        &'a self,
        topic: &'a str,
    ) -> BoxFuture<'a, Result<TopicInfo, TransportError>> {
        Box::pin(async move {
            let info = self
                .broker
                .describe(topic)
                .await
                .map_err(|e| transport_error(&e))?;
            Ok(convert::topic_info(info))
        })
    }

    fn list_topics(&self) -> BoxFuture<'_, Result<Vec<String>, TransportError>> {
        Box::pin(async move { Ok(self.broker.topic_names()) })
    }

    fn dead_letters<'a>(
        &'a self,
        topic: &'a str,
        group: &'a str,
        after: Option<&'a str>,
        limit: u32,
    ) -> BoxFuture<'a, Result<DeadLetterPage, TransportError>> {
        Box::pin(async move {
            let after = after.map(surety_core::surety::dead_letter_id).transpose()?;
            let mut page = self
                .broker
                .dead_letter_page(topic, group, after, limit as usize)
                .await
                .map_err(|e| transport_error(&e))?;
            let mut items = Vec::new();
            for d in page.by_ref() {
                items.push(convert::dead_letter(d.map_err(|e| transport_error(&e))?));
            }
            Ok(DeadLetterPage {
                items,
                next: page.next_cursor().map(|id| id.to_string()),
            })
        })
    }

    fn resend<'a>(
        &'a self,
        topic: &'a str,
        group: &'a str,
        which: &'a Selection,
    ) -> BoxFuture<'a, Result<u64, TransportError>> {
        Box::pin(async move {
            let which = selection(which)?;
            let n = self
                .broker
                .resend(topic, group, &which)
                .await
                .map_err(|e| transport_error(&e))?;
            Ok(n as u64)
        })
    }

    fn purge<'a>(
        &'a self,
        topic: &'a str,
        group: &'a str,
        which: &'a Selection,
    ) -> BoxFuture<'a, Result<u64, TransportError>> {
        Box::pin(async move {
            let which = selection(which)?;
            let n = self
                .broker
                .purge(topic, group, &which)
                .await
                .map_err(|e| transport_error(&e))?;
            Ok(n as u64)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_letter_ids_are_numbers() {
        assert!(selection(&Selection::Ids(vec!["1".into(), "-2".into()])).is_err());
        assert_eq!(
            selection(&Selection::Ids(vec!["1".into(), "2".into()])).unwrap(),
            surety_broker::Selection::Ids(vec![1, 2])
        );
    }

    #[test]
    fn the_shared_figures_are_this_brokers() {
        use surety_broker::limits;
        use surety_core::surety;
        assert_eq!(
            surety::PRODUCER_WINDOW,
            surety_broker::DedupeConfig::default().producer_window
        );
        assert_eq!(
            surety::ID_DEDUPE_WINDOW,
            Duration::from_millis(surety_broker::TopicConfig::default().dedupe_window_ms)
        );
        assert_eq!(
            surety::MAX_NACK_DELAY,
            Duration::from_millis(limits::MAX_NACK_DELAY_MS)
        );
        assert_eq!(surety::MAX_CREDITS as usize, limits::MAX_CREDITS);
        assert!(!capabilities().dead_letters.now);
    }
}
