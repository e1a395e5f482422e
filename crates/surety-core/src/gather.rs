//! Gathering concurrent single-message publishes of one producer into one request.
//!
//! Users (and every peer benchmark) publish one message per call with many calls in
//! flight; sent one request each, every message pays a round trip, a request on each
//! side and its own share of a broker flush. Here a publish goes out at once when none of
//! this producer's gathered requests is in flight; otherwise it waits, at most `linger`,
//! for the others made meanwhile, and they travel as one batch. When the last request in
//! flight is answered, whatever waits goes out at once (Nagle's rule), so the linger
//! bounds the added latency and a lone caller never pays it.
//!
//! Each message is stamped when it joins, under the same lock that orders the batch, so
//! sequences follow request order. A caller that stops waiting does not withdraw its
//! message: it is sent with the others, as a Kafka producer sends a record once `send`
//! returned. On a transport that refuses a batch whole (one bad message refuses all),
//! a refused gathered batch is sent again one message at a time, so only the message at
//! fault is refused.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;

use crate::message::{Batch, Message, Published, StampedMessage};
use crate::producer::{Inner, PublishError};
use crate::transport::BoxFuture;

/// A gathered request carries at most this many messages; a full one goes out at once.
pub(crate) const MAX_GATHER: usize = 256;

type Answer = oneshot::Sender<Result<Published, PublishError>>;

pub(crate) struct Gather {
    linger: Duration,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Messages waiting, per topic.
    topics: HashMap<String, Waiting>,
    /// Gathered requests sent and not answered yet.
    in_flight: usize,
}

#[derive(Default)]
struct Waiting {
    messages: Vec<StampedMessage>,
    answers: Vec<Answer>,
    /// A linger timer is running for this topic.
    timer: bool,
}

impl Gather {
    pub(crate) fn new(linger: Duration) -> Self {
        Self {
            linger,
            state: Mutex::default(),
        }
    }

    pub(crate) fn linger(&self) -> Duration {
        self.linger
    }

    /// Publishes `message` in the next gathered request for `topic`.
    pub(crate) async fn publish(
        inner: &Arc<Inner>,
        topic: &str,
        message: Message,
    ) -> Result<Published, PublishError> {
        let (answer, answered) = oneshot::channel();
        let send_now = {
            let mut state = inner.gather.state.lock().unwrap();
            let idle = state.in_flight == 0;
            let waiting = match state.topics.get_mut(topic) {
                Some(w) => w,
                None => state.topics.entry(topic.to_owned()).or_default(),
            };
            waiting.messages.push(inner.stamp(message));
            waiting.answers.push(answer);
            if idle || waiting.messages.len() >= MAX_GATHER {
                let taken = std::mem::take(waiting);
                state.in_flight += 1;
                Some(taken)
            } else {
                if !waiting.timer {
                    waiting.timer = true;
                    tokio::spawn(linger_then_send(inner.clone(), topic.to_owned()));
                }
                None
            }
        };
        if let Some(waiting) = send_now {
            tokio::spawn(send(inner.clone(), topic.to_owned(), waiting));
        }
        // Every answer sender is answered before it is dropped; a panic in the send task
        // would drop it unanswered.
        answered
            .await
            .unwrap_or(Err(PublishError::Protocol { sent: 1, got: 0 }))
    }
}

/// After the linger, sends what waits for `topic` (if an earlier send took it, whatever
/// joined since).
async fn linger_then_send(inner: Arc<Inner>, topic: String) {
    tokio::time::sleep(inner.gather.linger).await;
    let taken = {
        let mut state = inner.gather.state.lock().unwrap();
        match state.topics.get_mut(&topic) {
            Some(w) if !w.messages.is_empty() => {
                let taken = std::mem::take(w);
                state.in_flight += 1;
                Some(taken)
            }
            Some(w) => {
                w.timer = false;
                None
            }
            None => None,
        }
    };
    if let Some(waiting) = taken {
        send(inner, topic, waiting).await;
    }
}

/// Sends one gathered request and answers each caller; then, if nothing else is in
/// flight, sends what waits at once.
/// Boxed: it spawns itself, and a recursive `async fn` has no nameable `Send` future.
fn send(inner: Arc<Inner>, topic: String, waiting: Waiting) -> BoxFuture<'static, ()> {
    Box::pin(send_and_answer(inner, topic, waiting))
}

async fn send_and_answer(inner: Arc<Inner>, topic: String, waiting: Waiting) {
    let Waiting {
        messages, answers, ..
    } = waiting;
    let batch = Batch::new(messages);
    match inner.send(&topic, &batch).await {
        Ok(published) => {
            for (answer, p) in answers.into_iter().zip(published) {
                let _ = answer.send(Ok(p));
            }
        }
        Err(PublishError::Refused(_)) if answers.len() > 1 && inner.refuses_batches_whole() => {
            // Nothing of the batch was stored; one message may have refused them all.
            for (i, answer) in answers.into_iter().enumerate() {
                let alone = inner.send(&topic, &batch.subset(&[i])).await;
                let _ =
                    answer.send(alone.and_then(|mut p| {
                        p.pop().ok_or(PublishError::Protocol { sent: 1, got: 0 })
                    }));
            }
        }
        Err(e) => {
            for answer in answers {
                let _ = answer.send(Err(e.clone()));
            }
        }
    }
    let next: Vec<(String, Waiting)> = {
        let mut state = inner.gather.state.lock().unwrap();
        state.in_flight -= 1;
        if state.in_flight > 0 {
            Vec::new()
        } else {
            let ready: Vec<(String, Waiting)> = state
                .topics
                .iter_mut()
                .filter(|(_, w)| !w.messages.is_empty())
                .map(|(t, w)| {
                    // A running timer finds the topic empty and stops.
                    let timer = w.timer;
                    let taken = std::mem::take(w);
                    w.timer = timer;
                    (t.clone(), taken)
                })
                .collect();
            state.in_flight += ready.len();
            ready
        }
    };
    for (topic, waiting) in next {
        tokio::spawn(send(inner.clone(), topic, waiting));
    }
}
