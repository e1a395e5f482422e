//! What a PubAck is worth is read at connect: `sync_interval: always` is safe; the
//! default (every 2 min) and a 2.9 server (which cannot be asked) are reported, and
//! refused under `require_fsync` with a message that says what is unsafe and the fix.

mod common;

use std::time::Duration;

use common::options;
use surety_core::{Confirm, ErrorKind, Outcome};
use surety_nats::server::Sync;
use surety_nats::{NatsOptions, NatsTransport, SyncSetting};

fn strict(o: NatsOptions) -> NatsOptions {
    NatsOptions {
        require_fsync: true,
        ..o
    }
}

#[tokio::test]
async fn sync_always_is_safe_and_allowed_under_require_fsync() {
    let Some(s) = common::current(Sync::Always) else {
        return;
    };
    let t = NatsTransport::connect(&s.url(), strict(options(&s)))
        .await
        .expect("a safe server is accepted under require_fsync");
    let d = t.durability();
    assert_eq!(d.sync, SyncSetting::Always);
    assert_eq!(d.confirm, Confirm::FsyncedOnNode);
    assert!(d.is_safe(), "{d}");
    use surety_core::Capable;
    assert_eq!(t.capabilities().confirm, Confirm::FsyncedOnNode);
}

#[tokio::test]
async fn the_default_sync_interval_is_flagged_and_refused_under_require_fsync() {
    let Some(s) = common::current(Sync::Default) else {
        return;
    };
    let t = NatsTransport::connect(&s.url(), options(&s))
        .await
        .expect("allowed without require_fsync");
    let two_min = Duration::from_secs(120);
    assert_eq!(t.durability().sync, SyncSetting::Interval(two_min));
    assert_eq!(
        t.durability().confirm,
        Confirm::PageCache {
            max_loss: Some(two_min)
        }
    );
    assert!(!t.durability().is_safe());
    let line = t.durability().to_string();
    assert!(line.contains("sync_interval 2 min"), "{line}");

    let e = NatsTransport::connect(&s.url(), strict(options(&s)))
        .await
        .expect_err("an unsafe server must be refused under require_fsync");
    assert_eq!(
        (e.kind, e.outcome),
        (ErrorKind::Unsupported, Outcome::Refused)
    );
    assert!(e.message.contains("sync_interval 2 min"), "says what: {e}");
    assert!(
        e.message.contains("sync_interval: always"),
        "says the fix: {e}"
    );
}

#[tokio::test]
async fn a_server_that_cannot_be_asked_is_unknown_and_refused_under_require_fsync() {
    let Some(s) = common::old() else {
        return;
    };
    let t = NatsTransport::connect(&s.url(), options(&s)).await.unwrap();
    assert!(
        matches!(&t.durability().sync, SyncSetting::Unreadable(why) if why.contains("predates")),
        "{}",
        t.durability()
    );
    assert_eq!(t.durability().confirm, Confirm::Unknown);
    let e = NatsTransport::connect(&s.url(), strict(options(&s)))
        .await
        .expect_err("unknown durability is refused under require_fsync");
    assert_eq!(
        (e.kind, e.outcome),
        (ErrorKind::Unsupported, Outcome::Refused)
    );
    assert!(e.message.contains("2.10"), "{e}");
}

#[tokio::test]
async fn a_monitor_of_another_server_is_not_believed() {
    let (Some(a), Some(b)) = (
        common::current(Sync::Default),
        common::current(Sync::Always),
    ) else {
        return;
    };
    // Connected to `a` (unsafe), asking `b`'s endpoint (safe): must not say safe.
    let t = NatsTransport::connect(
        &a.url(),
        NatsOptions {
            monitor: Some(b.monitor_url()),
            ..NatsOptions::default()
        },
    )
    .await
    .unwrap();
    assert!(
        matches!(&t.durability().sync, SyncSetting::Unreadable(why) if why.contains("another server")),
        "{}",
        t.durability()
    );
    assert!(!t.durability().is_safe());
}
