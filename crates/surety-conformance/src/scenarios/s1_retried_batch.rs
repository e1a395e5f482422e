//! Scenario 1: Confirmed publish; a retried batch (the same `Batch`, same stamps, sent again) is
//! stored once — before and after a restart of the server.
//!
//! Where `publish_dedupe` is `Native` the repeat is answered `duplicate: true` with the
//! first positions, also after the restart (the window survives it). Whatever the
//! dedupe, the consumer side must handle each stamp once: once the group has nothing
//! unsettled, every stored copy has been delivered, so a second copy would show.

use std::collections::BTreeMap;
use std::time::Duration;

use surety_core::{
    Batch, Confirm, Position, Producer, PublishDedupe, Published, TopicSpec, Transport,
};

use crate::support::{
    ConsumerOpts, Record, create_topic, messages, pos, producer, skip_step, start_recording,
    unique, wait_settled,
};
use crate::{TransportFixture, Verdict};

const N: usize = 5;

pub(crate) async fn run(fx: &dyn TransportFixture) -> Verdict {
    let t = fx.connect().await;
    let caps = t.capabilities().clone();
    let topic = unique("s1");
    let info = create_topic(&t, &topic, TopicSpec::default()).await;
    let p = producer(&t);

    let before = p.prepare(messages("before", N));
    let first = send(&p, &topic, &before).await;
    assert_confirmed_new(&first, &before);
    let again = send(&p, &topic, &before).await;
    assert_repeat(
        &caps.publish_dedupe,
        &first,
        &again,
        "repeated before the restart",
    );

    let restarted = match fx.restart_server().await {
        Ok(()) => true,
        Err(why) => {
            skip_step("restart_server", &why);
            false
        }
    };
    // Where the broker stores a repeat again (no native dedupe), the consumer side keeps
    // whichever copy it meets first: any position a send of the stamp was answered with.
    let mut repeats: Vec<(&Batch, Vec<Published>)> = vec![(&before, again.clone())];
    if restarted {
        let after_restart = send(&p, &topic, &before).await;
        assert_repeat(
            &caps.publish_dedupe,
            &first,
            &after_restart,
            "repeated after the restart",
        );
        repeats.push((&before, after_restart));
    }
    let after = p.prepare(messages("after", N));
    let first_after = send(&p, &topic, &after).await;
    assert_confirmed_new(&first_after, &after);
    let again_after = send(&p, &topic, &after).await;
    repeats.push((&after, again_after.clone()));
    assert_repeat(
        &caps.publish_dedupe,
        &first_after,
        &again_after,
        "a batch of the new server repeated",
    );

    // The consumer side: each stamp once, at the position its publish was answered with.
    let mut expected: BTreeMap<(String, u64), (String, Vec<Position>)> = BTreeMap::new();
    let lost_ok = restarted && matches!(info.confirm, Confirm::Memory);
    for (batch, answers) in [(&before, &first), (&after, &first_after)] {
        for (m, a) in batch.iter().zip(answers) {
            let payload = String::from_utf8(m.message.payload.clone()).unwrap();
            expected.insert(
                (m.producer_id.to_string(), m.sequence),
                (payload, vec![a.position]),
            );
        }
    }
    if !matches!(caps.publish_dedupe, PublishDedupe::Native { .. }) {
        for (batch, answers) in &repeats {
            for (m, a) in batch.iter().zip(answers) {
                if let Some((_, at)) = expected.get_mut(&(m.producer_id.to_string(), m.sequence)) {
                    at.push(a.position);
                }
            }
        }
    }
    let group = unique("g");
    let record = Record::default();
    let consumer = start_recording(
        &t,
        &topic,
        &group,
        ConsumerOpts::lease(Duration::from_secs(10)),
        &record,
    );
    wait_delivered(&t, &topic, &group, &record, expected.len(), lost_ok).await;
    consumer.stop().await;

    let seen = record.per_stamp();
    for (stamp, deliveries) in &seen {
        let Some((payload, positions)) = expected.get(stamp) else {
            panic!("delivered a stamp never published: {stamp:?} {deliveries:?}");
        };
        assert_eq!(
            deliveries.len(),
            1,
            "{stamp:?} ({payload}) was handled {} times: a retried batch was stored more than once \
             (publish_dedupe {:?})",
            deliveries.len(),
            caps.publish_dedupe
        );
        let d = &deliveries[0].delivery;
        assert_eq!(&deliveries[0].payload(), payload, "{stamp:?}");
        assert!(
            positions.contains(&d.position),
            "{payload} delivered at {} but its publishes were answered {}",
            pos(&d.position),
            positions.iter().map(pos).collect::<Vec<_>>().join(", ")
        );
    }
    for (stamp, (payload, _)) in &expected {
        if !seen.contains_key(stamp) {
            assert!(
                lost_ok && payload.starts_with("before"),
                "confirmed message {payload} {stamp:?} was never delivered \
                 (confirm {:?}, restarted {restarted})",
                info.confirm
            );
        }
    }
    Verdict::Passed
}

async fn send(p: &Producer, topic: &str, batch: &Batch) -> Vec<Published> {
    p.send(topic, batch)
        .await
        .unwrap_or_else(|e| panic!("publish of {} messages to {topic}: {e}", batch.len()))
}

fn assert_confirmed_new(answers: &[Published], batch: &Batch) {
    assert_eq!(answers.len(), batch.len(), "one answer per message");
    for (a, m) in answers.iter().zip(batch) {
        assert_eq!(a.sequence, m.sequence, "answers in batch order");
        assert!(!a.duplicate, "a first publish answered duplicate: {a:?}");
    }
    // Where a confirm names a place, distinct messages have distinct places; a transport
    // whose confirm names none (RabbitMQ) answers `Unaddressed` for every one.
    let mut positions: Vec<_> = answers
        .iter()
        .map(|a| a.position)
        .filter(|p| *p != Position::Unaddressed)
        .collect();
    let addressed = positions.len();
    positions.sort();
    positions.dedup();
    assert_eq!(
        positions.len(),
        addressed,
        "distinct messages got the same position: {answers:?}"
    );
}

fn assert_repeat(dedupe: &PublishDedupe, first: &[Published], again: &[Published], what: &str) {
    assert_eq!(again.len(), first.len(), "{what}: one answer per message");
    match dedupe {
        PublishDedupe::Native { .. } => {
            for (a, f) in again.iter().zip(first) {
                assert!(
                    a.duplicate,
                    "{what}: native publish dedupe answered a repeated stamp as new: {a:?} (first {f:?})"
                );
                assert_eq!(
                    a.position, f.position,
                    "{what}: a duplicate must name the first position"
                );
                assert_eq!(a.sequence, f.sequence);
            }
        }
        // Stored again (or not): the consumer-side check below decides.
        PublishDedupe::ClientSession | PublishDedupe::None => {}
    }
}

/// Waits until every expected stamp was delivered and the group has nothing left
/// unsettled (so any extra stored copy has been delivered too).
async fn wait_delivered(
    t: &std::sync::Arc<dyn Transport>,
    topic: &str,
    group: &str,
    record: &Record,
    expected: usize,
    lost_ok: bool,
) {
    if !lost_ok {
        crate::support::eventually(
            Duration::from_secs(30),
            &format!("{expected} messages delivered"),
            || async {
                let n = record.per_stamp().len();
                if n >= expected {
                    Ok(())
                } else {
                    Err(format!("{n} distinct stamps"))
                }
            },
        )
        .await;
    }
    wait_settled(t, topic, group, Duration::from_secs(30)).await;
}
