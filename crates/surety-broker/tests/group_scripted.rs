//! Scripted scenarios for every transition of the group state machine: a regression here
//! means a message could be delivered twice after an ack, lost, or dropped instead of
//! dead-lettered.

use surety_broker::group::{ApplyError, FreshMessage};
use surety_broker::{Backoff, Event, GroupPartition, GroupPolicy, SettleError, Settled};

const LEASE: u64 = 30_000;

fn fresh(range: std::ops::Range<u64>) -> Vec<FreshMessage> {
    range
        .map(|offset| FreshMessage {
            offset,
            not_before: None,
            for_other_group: false,
        })
        .collect()
}

fn group(max_deliveries: u32) -> GroupPartition {
    GroupPartition::new(
        GroupPolicy {
            max_deliveries,
            backoff: Backoff {
                initial_ms: 100,
                max_ms: 1_000,
                multiplier: 2.0,
                jitter: 0.0,
            },
        },
        0,
    )
}

/// Replaying the journal must rebuild exactly the same state.
fn replayed(g: &GroupPartition, journal: &[Event]) -> GroupPartition {
    let mut r = GroupPartition::new(g.policy().clone(), 0);
    for e in journal {
        r.apply(e).unwrap();
    }
    assert_eq!(&r, g, "replay diverged");
    r
}

#[test]
fn fetch_delivers_fresh_messages_in_partition_order_with_count_one() {
    let mut g = group(5);
    let (events, leases) = g.plan_fetch(0, 3, LEASE, &fresh(0..10));
    assert_eq!(
        leases.iter().map(|l| l.offset).collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
    assert!(
        leases
            .iter()
            .all(|l| l.delivery == 1 && l.lease_until == LEASE)
    );
    assert_eq!(events.len(), 3);
    assert_eq!(g.next_fresh(), 3);
    let s = g.stats(10);
    assert_eq!((s.accepted, s.in_flight, s.pending), (10, 3, 7));
    replayed(&g, &events);
}

#[test]
fn ack_settles_for_good_and_repeating_it_is_harmless() {
    let mut g = group(5);
    let (mut journal, _) = g.plan_fetch(0, 2, LEASE, &fresh(0..2));
    let Settled::Changed(e) = g.plan_ack(10, 0, 1).unwrap() else {
        panic!()
    };
    journal.push(e);
    assert_eq!(g.plan_ack(11, 0, 1).unwrap(), Settled::AlreadySettled);
    assert_eq!(g.committed(), 1);
    // After the ack, no expiry or fetch ever hands offset 0 out again.
    let (_, leases) = g.plan_fetch(LEASE * 10, 10, LEASE, &[]);
    assert_eq!(leases.iter().map(|l| l.offset).collect::<Vec<_>>(), vec![1]);
    assert_eq!(g.stats(2).acked, 1);
}

#[test]
fn an_expired_lease_makes_the_message_visible_again_with_a_higher_count() {
    let mut g = group(5);
    g.plan_fetch(0, 1, LEASE, &fresh(0..1));
    // Not yet expired.
    assert!(g.plan_fetch(LEASE - 1, 1, LEASE, &[]).1.is_empty());
    let (events, leases) = g.plan_fetch(LEASE, 1, LEASE, &[]);
    assert!(matches!(&events[0], Event::Released { reason, .. } if reason == "lease expired"));
    assert_eq!(leases[0].offset, 0);
    assert_eq!(leases[0].delivery, 2);
    assert_eq!(g.counters().redeliveries, 1);
}

#[test]
fn a_late_ack_of_an_expired_lease_is_refused_and_changes_nothing() {
    let mut g = group(5);
    g.plan_fetch(0, 1, LEASE, &fresh(0..1));
    let before = g.clone();
    assert_eq!(
        g.plan_ack(LEASE, 0, 1),
        Err(SettleError::LeaseExpired {
            offset: 0,
            delivery: 1
        })
    );
    assert_eq!(g, before);
    // Redelivered: the first receipt is now stale, the second one works.
    g.plan_fetch(LEASE, 1, LEASE, &[]);
    assert_eq!(
        g.plan_ack(LEASE + 1, 0, 1),
        Err(SettleError::StaleDelivery {
            offset: 0,
            delivery: 1,
            current: 2
        })
    );
    assert!(matches!(
        g.plan_ack(LEASE + 1, 0, 2),
        Ok(Settled::Changed(_))
    ));
}

#[test]
fn acking_something_never_delivered_is_refused() {
    let mut g = group(5);
    assert_eq!(g.plan_ack(0, 7, 1), Err(SettleError::NotDelivered(7)));
    g.plan_fetch(0, 1, LEASE, &fresh(0..1));
    assert_eq!(
        g.plan_ack(0, 0, 9),
        Err(SettleError::StaleDelivery {
            offset: 0,
            delivery: 9,
            current: 1
        })
    );
}

#[test]
fn nack_delays_by_the_larger_of_its_delay_and_the_backoff() {
    let mut g = group(5);
    g.plan_fetch(0, 2, LEASE, &fresh(0..2));
    // Backoff after delivery 1 is 100 ms; a nack asking for 500 ms wins.
    g.plan_nack(10, 0, 1, 500, "busy".into()).unwrap();
    // A nack asking for 0 ms still waits the 100 ms backoff.
    g.plan_nack(10, 1, 1, 0, "flaky".into()).unwrap();
    assert!(g.plan_fetch(109, 5, LEASE, &[]).1.is_empty());
    let (_, l) = g.plan_fetch(110, 5, LEASE, &[]);
    assert_eq!(
        l.iter().map(|l| (l.offset, l.delivery)).collect::<Vec<_>>(),
        vec![(1, 2)]
    );
    let (_, l) = g.plan_fetch(510, 5, LEASE, &[]);
    assert_eq!(
        l.iter().map(|l| (l.offset, l.delivery)).collect::<Vec<_>>(),
        vec![(0, 2)]
    );
}

#[test]
fn backoff_grows_with_each_delivery() {
    let mut g = group(10);
    g.plan_fetch(0, 1, LEASE, &fresh(0..1));
    let mut now = 0;
    let mut waits = Vec::new();
    for delivery in 1..6 {
        let Settled::Changed(Event::Released { visible_at, .. }) =
            g.plan_nack(now, 0, delivery, 0, "x".into()).unwrap()
        else {
            panic!()
        };
        waits.push(visible_at - now);
        now = visible_at;
        assert_eq!(g.plan_fetch(now, 1, LEASE, &[]).1.len(), 1);
    }
    assert_eq!(waits, vec![100, 200, 400, 800, 1000]);
}

#[test]
fn the_last_allowed_delivery_failing_dead_letters_with_reason_and_history() {
    let mut g = group(3);
    let mut journal = g.plan_fetch(1_000, 1, LEASE, &fresh(0..1)).0;
    let mut now = 1_000;
    for delivery in 1..=3 {
        let Settled::Changed(e) = g
            .plan_nack(now, 0, delivery, 0, format!("failure {delivery}"))
            .unwrap()
        else {
            panic!()
        };
        if delivery < 3 {
            assert!(matches!(e, Event::Released { .. }));
            journal.push(e);
            now += 10_000;
            let (mut evs, leases) = g.plan_fetch(now, 1, LEASE, &[]);
            assert_eq!(leases[0].delivery, delivery + 1);
            journal.append(&mut evs);
        } else {
            assert_eq!(
                e,
                Event::DeadLettered {
                    offset: 0,
                    reason: "failure 3".into(),
                    at: now,
                    attempts: 3,
                    first_delivered_at: Some(1_000),
                    last_delivered_at: Some(21_000),
                }
            );
            journal.push(e);
        }
    }
    assert!(g.is_settled(0));
    assert_eq!(g.committed(), 1);
    let s = g.stats(1);
    assert_eq!((s.dead_lettered, s.pending, s.in_flight), (1, 0, 0));
    assert!(s.is_conserved());
    // Nothing is ever delivered again.
    assert!(g.plan_fetch(now + 1_000_000, 10, LEASE, &[]).1.is_empty());
    replayed(&g, &journal);
}

#[test]
fn an_expiring_last_delivery_dead_letters_too() {
    let mut g = group(1);
    g.plan_fetch(0, 1, LEASE, &fresh(0..1));
    let (events, leases) = g.plan_fetch(LEASE, 1, LEASE, &[]);
    assert!(leases.is_empty());
    assert!(
        matches!(&events[0], Event::DeadLettered { reason, attempts: 1, .. } if reason == "lease expired")
    );
}

#[test]
fn delayed_messages_wait_without_blocking_later_ones() {
    let mut g = group(5);
    let mut msgs = fresh(0..3);
    msgs[0].not_before = Some(5_000);
    let (events, leases) = g.plan_fetch(0, 10, LEASE, &msgs);
    assert!(matches!(
        events[0],
        Event::Deferred {
            offset: 0,
            visible_at: 5_000
        }
    ));
    assert_eq!(
        leases.iter().map(|l| l.offset).collect::<Vec<_>>(),
        vec![1, 2]
    );
    assert!(g.plan_fetch(4_999, 10, LEASE, &[]).1.is_empty());
    let (_, leases) = g.plan_fetch(5_000, 10, LEASE, &[]);
    assert_eq!(
        (leases[0].offset, leases[0].delivery),
        (0, 1),
        "first delivery of a delayed message counts 1"
    );
}

#[test]
fn messages_for_other_groups_are_skipped_and_not_counted_as_accepted() {
    let mut g = group(5);
    let mut msgs = fresh(0..3);
    msgs[1].for_other_group = true;
    let (_, leases) = g.plan_fetch(0, 10, LEASE, &msgs);
    assert_eq!(
        leases.iter().map(|l| l.offset).collect::<Vec<_>>(),
        vec![0, 2]
    );
    let s = g.stats(3);
    assert_eq!(s.accepted, 2);
    assert!(s.is_conserved());
}

#[test]
fn committed_advances_only_over_a_settled_prefix() {
    let mut g = group(5);
    g.plan_fetch(0, 3, LEASE, &fresh(0..3));
    g.plan_ack(1, 2, 1).unwrap();
    g.plan_ack(1, 1, 1).unwrap();
    assert_eq!(g.committed(), 0, "offset 0 is still in flight");
    g.plan_ack(1, 0, 1).unwrap();
    assert_eq!(g.committed(), 3);
}

#[test]
fn retention_expiry_of_unsettled_messages_is_counted() {
    let mut g = group(5);
    g.plan_fetch(0, 2, LEASE, &fresh(0..5));
    g.plan_ack(1, 0, 1).unwrap();
    let e = g.plan_expire_unsettled(4).unwrap();
    assert_eq!(e, Event::ExpiredUnsettled { below: 4 });
    let s = g.stats(5);
    assert_eq!(
        s.expired_unsettled, 3,
        "offset 1 in flight, 2 and 3 never delivered"
    );
    assert_eq!(g.committed(), 4);
    assert!(s.is_conserved(), "{s:?}");
    assert_eq!(g.plan_expire_unsettled(2), None);
}

#[test]
fn an_event_that_does_not_fit_is_refused_on_replay() {
    let mut g = group(5);
    let err: ApplyError = g
        .apply(&Event::Acked {
            offset: 3,
            delivery: 1,
        })
        .unwrap_err();
    assert!(err.why.contains("acked"));
    assert!(g.apply(&Event::Skipped { offset: 1 }).is_err());
    assert_eq!(g, group(5));
}
