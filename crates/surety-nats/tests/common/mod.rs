//! What the NATS tests share: a real server of the kind a test needs (skipped with the
//! reason when the machine has none, failed under `CI=true`), connections, names.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use surety_core::{GroupInfo, Transport};
use surety_nats::server::{self, Binary, NatsServer, Sync};
use surety_nats::{NatsOptions, NatsTransport};

/// A 2.10+ server with `sync`, or `None` (printed) when there is no binary here.
pub fn current(sync: Sync) -> Option<NatsServer> {
    start(Binary::current(), sync)
}

/// The machine's 2.9 server, or `None` (printed).
pub fn old() -> Option<NatsServer> {
    start(Binary::old(), Sync::Default)
}

fn start(bin: Result<Binary, String>, sync: Sync) -> Option<NatsServer> {
    match bin {
        Ok(b) => Some(NatsServer::start(b, sync).expect("nats-server starts")),
        Err(why) if server::required() => panic!("{why} (required under CI=true)"),
        Err(why) => {
            println!("SKIPPED: {why}");
            None
        }
    }
}

/// Options that read this server's monitoring endpoint.
pub fn options(s: &NatsServer) -> NatsOptions {
    NatsOptions {
        monitor: Some(s.monitor_url()),
        ..NatsOptions::default()
    }
}

pub async fn connect(s: &NatsServer, options: NatsOptions) -> Arc<dyn Transport> {
    Arc::new(
        NatsTransport::connect(&s.url(), options)
            .await
            .expect("connect"),
    )
}

/// A name no other run uses.
pub fn unique(prefix: &str) -> String {
    use std::hash::{BuildHasher, RandomState};
    let r = RandomState::new().hash_one(Instant::now()) & 0xff_ffff;
    format!("{prefix}-{r:06x}")
}

pub async fn group_info(t: &Arc<dyn Transport>, topic: &str, group: &str) -> Option<GroupInfo> {
    let info = t.describe_topic(topic).await.expect("describe");
    info.groups.into_iter().find(|g| g.name == group)
}

/// Polls `f` every 25 ms until it answers `Some`, at most `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + limit;
    loop {
        match f().await {
            Ok(v) => return v,
            Err(state) if Instant::now() >= deadline => {
                panic!("timed out after {limit:?} waiting for {what}; last: {state}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(25)).await,
        }
    }
}
