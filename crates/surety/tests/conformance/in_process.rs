//! The `in_process` fixture: `surety_embedded::InProcess` over a `surety_broker::Broker`
//! on a temp dir, with its lease sweeper running as `surety serve` runs it.
//!
//! The "server" is the broker; a restart closes it and opens a new one on the same dir
//! (a new `InProcess`). So that a connection outlives a restart as a gRPC client does,
//! [`connect`](TransportFixture::connect) hands out a [`Connection`] that reaches
//! whichever broker is current: while none is (or when the one a call started on is
//! closed under it) calls fail as `Unavailable`, and sessions opened on the old broker
//! end with that error, so the consumer driver reconnects to the new one.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use surety_broker::{Broker, BrokerError, BrokerOptions};
use surety_conformance::{BoxFuture, KillMode, TransportFixture, Unsupported};
use surety_core::{
    Admin, Batch, Capabilities, Capable, DeadLetterPage, PublishAnswers, Publisher, RequestId,
    Selection, Session, SessionEvent, Settle, Subscriber, Subscription, TopicInfo, TopicSpec,
    Transport, TransportError,
};
use surety_embedded::InProcess;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub struct InProc {
    dir: PathBuf,
    shared: Arc<Shared>,
    _temp: tempfile::TempDir,
}

/// The broker that is up now, and a counter of restarts that ends old sessions.
struct Shared {
    live: RwLock<Option<Live>>,
    generation: watch::Sender<u64>,
    capabilities: Capabilities,
}

struct Live {
    transport: Arc<InProcess>,
    sweeper: JoinHandle<()>,
}

pub fn start() -> BoxFuture<'static, Arc<dyn TransportFixture>> {
    Box::pin(async {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path().join("broker");
        let live = open(&dir).await;
        let capabilities = live.transport.capabilities().clone();
        Arc::new(InProc {
            dir,
            shared: Arc::new(Shared {
                live: RwLock::new(Some(live)),
                generation: watch::Sender::new(0),
                capabilities,
            }),
            _temp: temp,
        }) as Arc<dyn TransportFixture>
    })
}

/// Opens the broker on `dir`, waiting while the previous one is still being let go (its
/// last in-flight calls and session tasks hold it, and with it the directory lock).
async fn open(dir: &std::path::Path) -> Live {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match Broker::open(dir, BrokerOptions::default()) {
            Ok(broker) => {
                let sweeper = broker.spawn_sweeper();
                return Live {
                    transport: Arc::new(InProcess::new(broker)),
                    sweeper,
                };
            }
            Err(BrokerError::DirectoryInUse(_)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("open the broker on {}: {e}", dir.display()),
        }
    }
}

impl Drop for InProc {
    fn drop(&mut self) {
        if let Some(live) = self.shared.live.write().unwrap().take() {
            live.sweeper.abort();
            live.transport.broker().close();
        }
    }
}

impl TransportFixture for InProc {
    fn name(&self) -> &'static str {
        "in_process"
    }

    fn connect(&self) -> BoxFuture<'_, Arc<dyn Transport>> {
        let c = Connection {
            shared: self.shared.clone(),
        };
        Box::pin(async move { Arc::new(c) as Arc<dyn Transport> })
    }

    fn restart_server(&self) -> BoxFuture<'_, Result<(), Unsupported>> {
        Box::pin(async move {
            let old = self.shared.live.write().unwrap().take();
            self.shared.generation.send_modify(|g| *g += 1);
            if let Some(old) = old {
                old.sweeper.abort();
                old.transport.broker().close();
            }
            let live = open(&self.dir).await;
            *self.shared.live.write().unwrap() = Some(live);
            Ok(())
        })
    }

    fn consumer_kill(&self) -> KillMode {
        KillMode::Task
    }
}

/// A connection to whichever broker is up.
struct Connection {
    shared: Arc<Shared>,
}

impl Connection {
    fn current(&self) -> Result<(Arc<InProcess>, u64), TransportError> {
        let live = self.shared.live.read().unwrap();
        let generation = *self.shared.generation.borrow();
        match &*live {
            Some(l) => Ok((l.transport.clone(), generation)),
            None => Err(TransportError::unavailable("the broker is restarting")),
        }
    }

    fn transport(&self) -> Result<Arc<InProcess>, TransportError> {
        self.current().map(|(t, _)| t)
    }
}

impl Capable for Connection {
    fn capabilities(&self) -> &Capabilities {
        &self.shared.capabilities
    }
}

impl Publisher for Connection {
    fn publish<'a>(
        &'a self,
        topic: &'a str,
        batch: &'a Batch,
    ) -> BoxFuture<'a, Result<PublishAnswers, TransportError>> {
        Box::pin(async move { self.transport()?.publish(topic, batch).await })
    }
}

impl Subscriber for Connection {
    fn subscribe<'a>(
        &'a self,
        sub: &'a Subscription,
    ) -> BoxFuture<'a, Result<Box<dyn Session>, TransportError>> {
        Box::pin(async move {
            let (t, generation) = self.current()?;
            let inner = t.subscribe(sub).await?;
            Ok(Box::new(RestartableSession {
                inner: Some(inner),
                generation,
                restarts: self.shared.generation.subscribe(),
            }) as Box<dyn Session>)
        })
    }
}

/// A session on one broker; it ends (`Unavailable`) when that broker is restarted.
struct RestartableSession {
    inner: Option<Box<dyn Session>>,
    generation: u64,
    restarts: watch::Receiver<u64>,
}

impl RestartableSession {
    fn gone() -> TransportError {
        TransportError::unavailable("the broker was restarted")
    }
}

impl Session for RestartableSession {
    fn next(&mut self) -> BoxFuture<'_, Result<SessionEvent, TransportError>> {
        Box::pin(async move {
            let generation = self.generation;
            let Some(inner) = self.inner.as_mut() else {
                return Err(Self::gone());
            };
            let restarted = self.restarts.wait_for(|g| *g != generation);
            let event = tokio::select! {
                e = inner.next() => Some(e),
                _ = restarted => None,
            };
            match event {
                Some(e) => e,
                None => {
                    // Let go of the old broker now, so that it can be reopened.
                    self.inner = None;
                    Err(Self::gone())
                }
            }
        })
    }

    fn settle(&mut self, id: RequestId, settle: Settle) {
        if let Some(inner) = self.inner.as_mut() {
            inner.settle(id, settle);
        }
    }

    fn credit(&mut self, n: u32) {
        if let Some(inner) = self.inner.as_mut() {
            inner.credit(n);
        }
    }

    fn drain(&mut self) {
        if let Some(inner) = self.inner.as_mut() {
            inner.drain();
        }
    }
}

impl Admin for Connection {
    fn create_topic<'a>(
        &'a self,
        topic: &'a str,
        spec: &'a TopicSpec,
    ) -> BoxFuture<'a, Result<TopicInfo, TransportError>> {
        Box::pin(async move { self.transport()?.create_topic(topic, spec).await })
    }

    fn describe_topic<'a>(
        &'a self,
        topic: &'a str,
    ) -> BoxFuture<'a, Result<TopicInfo, TransportError>> {
        Box::pin(async move { self.transport()?.describe_topic(topic).await })
    }

    fn list_topics(&self) -> BoxFuture<'_, Result<Vec<String>, TransportError>> {
        Box::pin(async move { self.transport()?.list_topics().await })
    }

    fn dead_letters<'a>(
        &'a self,
        topic: &'a str,
        group: &'a str,
        after: Option<&'a str>,
        limit: u32,
    ) -> BoxFuture<'a, Result<DeadLetterPage, TransportError>> {
        Box::pin(async move {
            self.transport()?
                .dead_letters(topic, group, after, limit)
                .await
        })
    }

    fn resend<'a>(
        &'a self,
        topic: &'a str,
        group: &'a str,
        which: &'a Selection,
    ) -> BoxFuture<'a, Result<u64, TransportError>> {
        Box::pin(async move { self.transport()?.resend(topic, group, which).await })
    }

    fn purge<'a>(
        &'a self,
        topic: &'a str,
        group: &'a str,
        which: &'a Selection,
    ) -> BoxFuture<'a, Result<u64, TransportError>> {
        Box::pin(async move { self.transport()?.purge(topic, group, which).await })
    }
}
