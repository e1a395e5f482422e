//! Property tests of the group state machine under random operations and clock jumps:
//! conservation holds after every step, delivery counts never decrease, a message is
//! leased to at most one consumer at a time, an acked message is never delivered again,
//! and replaying the journal rebuilds exactly the state that answered.

use std::collections::{HashMap, HashSet};

use proptest::prelude::*;
use surety_broker::group::FreshMessage;
use surety_broker::{Backoff, Event, GroupPartition, GroupPolicy, Lease, Settled};

#[derive(Debug, Clone)]
enum Op {
    Publish {
        count: u64,
        delayed_ms: Option<u64>,
        other_group: bool,
    },
    Fetch {
        max: usize,
        lease_ms: u64,
    },
    Ack {
        pick: usize,
        stale: bool,
    },
    Nack {
        pick: usize,
        delay_ms: u64,
    },
    AckUnknown {
        offset: u64,
    },
    Advance {
        ms: u64,
    },
    ExpireBelow {
        ahead: u64,
    },
    /// The sweeper's pass: expire leases that ran out, with no fetch.
    Sweep,
    /// An operator's seek to a point of the log (`permille` of its length).
    Seek {
        permille: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (1..5u64, prop::option::weighted(0.2, 1..2_000u64), prop::bool::weighted(0.1))
            .prop_map(|(count, delayed_ms, other_group)| Op::Publish { count, delayed_ms, other_group }),
        4 => (1..6usize, 1..3_000u64).prop_map(|(max, lease_ms)| Op::Fetch { max, lease_ms }),
        3 => (any::<usize>(), prop::bool::weighted(0.2)).prop_map(|(pick, stale)| Op::Ack { pick, stale }),
        2 => (any::<usize>(), 0..1_500u64).prop_map(|(pick, delay_ms)| Op::Nack { pick, delay_ms }),
        1 => (0..64u64).prop_map(|offset| Op::AckUnknown { offset }),
        3 => (0..4_000u64).prop_map(|ms| Op::Advance { ms }),
        1 => (0..3u64).prop_map(|ahead| Op::ExpireBelow { ahead }),
        2 => Just(Op::Sweep),
        1 => (0..=1000u64).prop_map(|permille| Op::Seek { permille }),
    ]
}

struct Harness {
    g: GroupPartition,
    journal: Vec<Event>,
    now: u64,
    /// The published messages (what the log holds).
    log: Vec<FreshMessage>,
    /// Leases handed out and not yet known to be over.
    held: HashMap<u64, Lease>,
    acked: HashSet<u64>,
    max_delivery_seen: HashMap<u64, u32>,
}

impl Harness {
    fn check(&self) {
        let s = self.g.stats(self.log.len() as u64);
        assert!(s.is_conserved(), "conservation broken: {s:?}");
        for (o, &max) in &self.max_delivery_seen {
            if !self.g.is_settled(*o) {
                assert!(
                    self.g.deliveries(*o) >= max,
                    "delivery count of {o} went down"
                );
            }
        }
        let in_flight: Vec<Lease> = self.g.in_flight().collect();
        assert_eq!(in_flight.len() as u64, s.in_flight);
    }

    fn record(&mut self, events: Vec<Event>) {
        for e in &events {
            if let Event::Acked { offset, .. } = e {
                self.acked.insert(*offset);
            }
            if let Event::Released { offset, .. }
            | Event::DeadLettered { offset, .. }
            | Event::Acked { offset, .. } = e
            {
                self.held.remove(offset);
            }
            if let Event::ExpiredUnsettled { below } = e {
                self.held.retain(|o, _| o >= below);
            }
            if let Event::Seeked { to } = *e {
                // Every lease is withdrawn; from `to` on everything starts over, so a
                // replayed message may be delivered again, from count 1.
                self.held.clear();
                self.acked.retain(|&o| o < to);
                self.max_delivery_seen.retain(|&o, _| o < to);
            }
        }
        self.journal.extend(events);
    }

    fn step(&mut self, op: &Op) {
        match *op {
            Op::Publish {
                count,
                delayed_ms,
                other_group,
            } => {
                for _ in 0..count {
                    let offset = self.log.len() as u64;
                    self.log.push(FreshMessage {
                        offset,
                        not_before: delayed_ms.map(|d| self.now + d),
                        for_other_group: other_group,
                    });
                }
            }
            Op::Fetch { max, lease_ms } => {
                let from = self.g.next_fresh() as usize;
                let fresh = self.log[from.min(self.log.len())..].to_vec();
                let (events, leases) = self.g.plan_fetch(self.now, max, lease_ms, &fresh);
                self.record(events);
                assert!(leases.len() <= max);
                for l in leases {
                    assert!(
                        !self.acked.contains(&l.offset),
                        "acked offset {} delivered again",
                        l.offset
                    );
                    if let Some(prev) = self.held.get(&l.offset) {
                        assert!(
                            prev.lease_until <= self.now,
                            "offset {} leased twice at once",
                            l.offset
                        );
                    }
                    let seen = self.max_delivery_seen.entry(l.offset).or_default();
                    assert!(
                        l.delivery > *seen,
                        "delivery count did not rise for {}",
                        l.offset
                    );
                    *seen = l.delivery;
                    self.held.insert(l.offset, l);
                }
            }
            Op::Ack { pick, stale } => {
                let Some(l) = self.pick(pick) else { return };
                let delivery = if stale {
                    l.delivery.saturating_sub(1)
                } else {
                    l.delivery
                };
                let before = self.g.clone();
                match self.g.plan_ack(self.now, l.offset, delivery) {
                    Ok(Settled::Changed(e)) => {
                        assert!(!stale && l.lease_until > self.now);
                        self.record(vec![e]);
                    }
                    Ok(Settled::AlreadySettled) => assert_eq!(self.g, before),
                    Err(_) => assert_eq!(self.g, before, "a refused ack changed state"),
                }
            }
            Op::Nack { pick, delay_ms } => {
                let Some(l) = self.pick(pick) else { return };
                let before = self.g.clone();
                match self
                    .g
                    .plan_nack(self.now, l.offset, l.delivery, delay_ms, "nack".into())
                {
                    Ok(Settled::Changed(e)) => self.record(vec![e]),
                    Ok(Settled::AlreadySettled) => assert_eq!(self.g, before),
                    Err(_) => assert_eq!(self.g, before, "a refused nack changed state"),
                }
            }
            Op::AckUnknown { offset } => {
                let before = self.g.clone();
                match self.g.plan_ack(self.now, offset, 1) {
                    Ok(Settled::Changed(e)) => self.record(vec![e]),
                    Ok(Settled::AlreadySettled) | Err(_) => assert_eq!(self.g, before),
                }
            }
            Op::Advance { ms } => self.now += ms,
            Op::Sweep => {
                let before = self.g.stats(self.log.len() as u64);
                let events = self.g.plan_expiry(self.now);
                assert!(
                    self.g.next_lease_expiry().is_none_or(|t| t > self.now),
                    "a sweep left an expired lease"
                );
                let after = self.g.stats(self.log.len() as u64);
                assert_eq!(
                    before.in_flight - after.in_flight,
                    events.len() as u64,
                    "every expired lease leaves in-flight"
                );
                self.record(events);
            }
            Op::Seek { permille } => {
                let to = self.log.len() as u64 * permille / 1000;
                let before = self.g.stats(self.log.len() as u64);
                let (e, skipped, replayed) = self.g.plan_seek(to);
                let after = self.g.stats(self.log.len() as u64);
                assert_eq!(after.skipped_by_seek - before.skipped_by_seek, skipped);
                assert_eq!(after.in_flight, 0, "a seek withdraws every lease");
                assert_eq!(self.g.committed(), to);
                assert_eq!(after.accepted - before.accepted, replayed);
                self.record(vec![e]);
            }
            Op::ExpireBelow { ahead } => {
                let below = (self.g.committed() + ahead).min(self.log.len() as u64);
                if let Some(e) = self.g.plan_expire_unsettled(below) {
                    self.record(vec![e]);
                }
            }
        }
    }

    fn pick(&self, pick: usize) -> Option<Lease> {
        if self.held.is_empty() {
            return None;
        }
        let mut v: Vec<&Lease> = self.held.values().collect();
        v.sort_by_key(|l| l.offset);
        Some(*v[pick % v.len()])
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn invariants_hold_after_every_step(ops in prop::collection::vec(op(), 1..120), max_deliveries in 1..5u32) {
        let policy = GroupPolicy {
            max_deliveries,
            backoff: Backoff { initial_ms: 50, max_ms: 800, multiplier: 2.0, jitter: 0.3 },
        };
        let mut h = Harness {
            g: GroupPartition::new(policy.clone(), 0),
            journal: Vec::new(),
            now: 0,
            log: Vec::new(),
            held: HashMap::new(),
            acked: HashSet::new(),
            max_delivery_seen: HashMap::new(),
        };
        for op in &ops {
            h.step(op);
            h.check();
        }
        // Drain: with time passing and every delivery nacked, every message ends acked,
        // dead-lettered or expired — nothing stays pending forever.
        for _ in 0..(max_deliveries as usize + 2) * 4 {
            h.now += 100_000;
            h.step(&Op::Fetch { max: usize::MAX, lease_ms: 1 });
            h.check();
        }
        let s = h.g.stats(h.log.len() as u64);
        prop_assert_eq!(s.pending + s.in_flight, 0, "not drained: {:?}", s);
        prop_assert_eq!(h.g.committed(), h.log.len() as u64);

        let mut replay = GroupPartition::new(policy, 0);
        for e in &h.journal {
            replay.apply(e).unwrap();
        }
        prop_assert_eq!(replay, h.g);
    }
}
