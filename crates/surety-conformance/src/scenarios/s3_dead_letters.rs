//! Scenario 3: A message whose handler fails `max_deliveries` (3) times ends in group G1's
//! dead-letter store, with the last reason, its attempts (3) and times; group G2, which
//! acked it, sees nothing more. `resend` puts it back for G1 only (G1 runs it again, G2
//! does not); `purge` answers 1 and leaves the page empty.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use surety_core::{DeadLetter, Message, Selection, TopicSpec, Transport};

use crate::support::{
    ConsumerOpts, Record, create_topic, eventually, group_info, now_ms, producer, retrying,
    start_consumer, start_recording, unique,
};
use crate::{TransportFixture, Verdict};

const MAX_DELIVERIES: u32 = 3;
const LEASE: Duration = Duration::from_secs(5);

pub(crate) async fn run(fx: &dyn TransportFixture) -> Verdict {
    let t = fx.connect().await;
    let topic = unique("s3");
    create_topic(
        &t,
        &topic,
        TopicSpec {
            max_deliveries: Some(MAX_DELIVERIES),
            ack_wait: Some(LEASE),
            ..TopicSpec::default()
        },
    )
    .await;
    let (g1, g2) = (unique("g1"), unique("g2"));
    let failed = Record::default();
    let runs = Arc::new(AtomicU32::new(0));
    let c1 = {
        let (failed, runs) = (failed.clone(), runs.clone());
        start_consumer(
            &t,
            &topic,
            &g1,
            ConsumerOpts {
                nack_delay: Duration::from_millis(50),
                ..ConsumerOpts::lease(LEASE)
            },
            move |d| {
                failed.push(&d);
                let run = runs.fetch_add(1, Ordering::SeqCst) + 1;
                async move { Err(reason(run)) }
            },
        )
    };
    let acked = Record::default();
    let c2 = start_recording(&t, &topic, &g2, ConsumerOpts::lease(LEASE), &acked);
    let started_ms = now_ms();
    let published = producer(&t)
        .publish(&topic, Message::new("doomed").with_key("k"))
        .await
        .unwrap();

    let dl = one_dead_letter(&t, &topic, &g1, "after 3 failed runs").await;
    assert_eq!(
        failed.len(),
        MAX_DELIVERIES as usize,
        "G1 ran the handler {} times before the dead letter; max_deliveries is {MAX_DELIVERIES}",
        failed.len()
    );
    assert!(
        dl.reason.contains(&reason(MAX_DELIVERIES)),
        "the dead letter's reason {:?} is not the last handler error {:?}",
        dl.reason,
        reason(MAX_DELIVERIES)
    );
    assert_eq!(dl.attempts, MAX_DELIVERIES, "attempts: {dl:?}");
    assert_eq!(dl.group, g1);
    assert_eq!(dl.payload, b"doomed");
    assert_eq!(dl.key.as_deref(), Some(&b"k"[..]));
    assert_eq!(dl.origin, published.position, "origin of {dl:?}");
    assert_eq!(
        (dl.producer_id.is_some(), dl.sequence),
        (true, Some(published.sequence)),
        "stamps kept in {dl:?}"
    );
    let runs_seen = failed.all();
    let (first_run, last_run) = (&runs_seen[0], &runs_seen[runs_seen.len() - 1]);
    assert!(
        dl.dead_lettered_ms >= started_ms && dl.dead_lettered_ms <= now_ms(),
        "dead_lettered_ms {} outside the test run",
        dl.dead_lettered_ms
    );
    if let Some(first) = dl.first_delivered_ms {
        assert!(
            first >= started_ms && first <= first_run.wall_ms,
            "first_delivered_ms {first} not before the first run at {}",
            first_run.wall_ms
        );
    }
    if let Some(last) = dl.last_delivered_ms {
        assert!(
            last >= dl.first_delivered_ms.unwrap_or(started_ms)
                && last <= last_run.wall_ms
                && last <= dl.dead_lettered_ms,
            "last_delivered_ms {last}: first {:?}, last run {}, dead-lettered {}",
            dl.first_delivered_ms,
            last_run.wall_ms,
            dl.dead_lettered_ms
        );
    }
    let info1 = group_info(&t, &topic, &g1).await.unwrap();
    assert_eq!((info1.dead_letters, info1.lag), (1, 0), "G1: {info1:?}");

    // G2 acked it: nothing more there, before or after G1's resend.
    eventually(Duration::from_secs(10), "G2 acked its copy", || async {
        match group_info(&t, &topic, &g2).await {
            Some(g) if g.lag == 0 && acked.len() == 1 => Ok(()),
            other => Err(format!("{other:?}, {} deliveries", acked.len())),
        }
    })
    .await;
    let page2 = dead_letters(&t, &topic, &g2).await;
    assert!(page2.is_empty(), "G2 has dead letters: {page2:?}");

    let just_this = Selection::Ids(vec![dl.id.clone()]);
    let resent = retrying("resend", || t.resend(&topic, &g1, &just_this))
        .await
        .unwrap();
    assert_eq!(resent, 1, "resend of one dead letter");
    eventually(Duration::from_secs(20), "G1 runs it again", || async {
        if failed.len() > MAX_DELIVERIES as usize {
            Ok(())
        } else {
            Err(format!("{} runs", failed.len()))
        }
    })
    .await;
    // A resend may store a new copy (Surety appends one for G1 only): the same message,
    // known by its stamps, not necessarily at the same position.
    let again = failed.all()[MAX_DELIVERIES as usize].clone();
    assert_eq!(again.delivery.payload, b"doomed");
    assert_eq!(
        again.delivery.message_id(),
        runs_seen[0].delivery.message_id(),
        "the resent message keeps its identity"
    );
    // It fails again, so it dies again: one live dead letter, which purge takes.
    one_dead_letter(&t, &topic, &g1, "after the resent copy failed").await;
    eventually(
        Duration::from_secs(10),
        "G2 settled after the resend",
        || async {
            match group_info(&t, &topic, &g2).await {
                Some(g) if g.lag == 0 && g.in_flight == 0 && g.dead_letters == 0 => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    assert_eq!(
        acked.len(),
        1,
        "a resend for G1 reached G2: {:?}",
        acked.all()
    );

    let purged = retrying("purge", || t.purge(&topic, &g1, &Selection::All))
        .await
        .unwrap();
    assert_eq!(purged, 1, "purge of G1's one dead letter");
    let page = dead_letters(&t, &topic, &g1).await;
    assert!(page.is_empty(), "dead letters after the purge: {page:?}");
    let info1 = group_info(&t, &topic, &g1).await.unwrap();
    assert_eq!(info1.dead_letters, 0, "G1 after the purge: {info1:?}");

    c1.stop().await;
    c2.stop().await;
    Verdict::Passed
}

fn reason(run: u32) -> String {
    format!("conformance failure #{run}")
}

async fn dead_letters(t: &Arc<dyn Transport>, topic: &str, group: &str) -> Vec<DeadLetter> {
    retrying("dead_letters", || t.dead_letters(topic, group, None, 100))
        .await
        .unwrap_or_else(|e| panic!("dead letters of {group}: {e}"))
        .items
}

/// Waits for the group's one dead letter (more than one fails).
async fn one_dead_letter(
    t: &Arc<dyn Transport>,
    topic: &str,
    group: &str,
    when: &str,
) -> DeadLetter {
    eventually(
        Duration::from_secs(30),
        &format!("a dead letter in {group} {when}"),
        || async {
            let mut page = dead_letters(t, topic, group).await;
            match page.len() {
                0 => Err("none".to_owned()),
                1 => Ok(page.pop().unwrap()),
                _ => panic!("{} dead letters for one message: {page:?}", page.len()),
            }
        },
    )
    .await
}
