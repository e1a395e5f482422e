//! The compact group state (`OffsetMap`, `SortedSet`, reasons as flags, settled offsets
//! implied) against the state machine it replaced, kept here as the reference: both are
//! driven by the same random fetches, acks, nacks (with and without reasons), sweeps,
//! seeks, retention expiries, policy changes and snapshot round trips, and must answer
//! every call alike — the same events in the same order, leases, refusals, counters,
//! stats, due times and snapshots. The reference is the code of commit c8169bb, unchanged
//! but for its name.

use proptest::prelude::*;
use surety_broker::group::{FreshMessage, Snapshot};
use surety_broker::{Backoff, GroupPartition, GroupPolicy, Lease, Settled};

mod reference {
    use std::collections::{BTreeMap, BTreeSet};

    use surety_broker::group::{
        ApplyError, AttemptSnapshot, AttemptState, Counters, FreshMessage, Millis, Snapshot,
    };
    use surety_broker::{Event, GroupPolicy, GroupStats, Lease, SettleError, Settled};

    #[derive(Debug, Clone, PartialEq, Eq)]
    struct Attempt {
        deliveries: u32,
        first_delivered_at: Option<Millis>,
        last_delivered_at: Option<Millis>,
        last_reason: Option<String>,
        state: AttemptState,
    }

    /// The state machine as it was with `BTreeMap`/`BTreeSet` (commit c8169bb).
    #[derive(Debug, Clone, PartialEq)]
    pub struct Reference {
        policy: GroupPolicy,
        /// First offset this group is responsible for (the log start when it was created).
        start: u64,
        /// Every offset below is settled.
        committed: u64,
        /// Offsets at or above were never seen by this group.
        next_fresh: u64,
        /// Settled offsets in `[committed, next_fresh)`.
        settled: BTreeSet<u64>,
        /// Seen, unsettled offsets: in flight or waiting.
        attempts: BTreeMap<u64, Attempt>,
        /// In-flight offsets by lease expiry.
        leases: BTreeSet<(Millis, u64)>,
        /// Waiting offsets by visibility time.
        waiting: BTreeSet<(Millis, u64)>,
        counters: Counters,
        /// Seeks applied so far; receipts carry it, so one issued before a seek is stale.
        seeks: u32,
    }

    impl Reference {
        /// A new group that starts consuming at `start`.
        pub fn new(policy: GroupPolicy, start: u64) -> Self {
            Self {
                policy,
                start,
                committed: start,
                next_fresh: start,
                settled: BTreeSet::new(),
                attempts: BTreeMap::new(),
                leases: BTreeSet::new(),
                waiting: BTreeSet::new(),
                counters: Counters::default(),
                seeks: 0,
            }
        }

        /// Seeks applied so far (receipts name it).
        pub fn seeks(&self) -> u32 {
            self.seeks
        }

        /// Topic settings may change; they apply to the next decisions.
        pub fn set_policy(&mut self, policy: GroupPolicy) {
            self.policy = policy;
        }

        /// Lowest unsettled offset: retention must not delete at or above it.
        pub fn committed(&self) -> u64 {
            self.committed
        }

        /// The next offset this group has never seen: where `plan_fetch` wants fresh
        /// messages from.
        pub fn next_fresh(&self) -> u64 {
            self.next_fresh
        }

        pub fn counters(&self) -> Counters {
            self.counters
        }

        /// The delivery count of an unsettled offset (0 if never delivered or settled).
        pub fn deliveries(&self, offset: u64) -> u32 {
            self.attempts.get(&offset).map_or(0, |a| a.deliveries)
        }

        /// The offsets leased right now, with their delivery numbers.
        pub fn in_flight(&self) -> impl Iterator<Item = Lease> + '_ {
            self.leases.iter().map(|&(lease_until, offset)| {
                let delivery = match self.attempts[&offset].state {
                    AttemptState::InFlight { delivery, .. } => delivery,
                    AttemptState::Waiting { .. } => {
                        unreachable!("leases index only in-flight offsets")
                    }
                };
                Lease {
                    offset,
                    delivery,
                    lease_until,
                }
            })
        }

        pub fn is_settled(&self, offset: u64) -> bool {
            offset < self.committed || self.settled.contains(&offset)
        }

        /// Whether a fetch at `now` could deliver something that is already known to this
        /// group (a due redelivery or an expired lease), besides fresh messages.
        pub fn has_due(&self, now: Millis) -> bool {
            self.waiting.first().is_some_and(|&(t, _)| t <= now)
                || self.leases.first().is_some_and(|&(t, _)| t <= now)
        }

        /// When the earliest lease runs out: the sweeper expires it then, consumer or not.
        pub fn next_lease_expiry(&self) -> Option<Millis> {
            self.leases.first().map(|&(t, _)| t)
        }

        /// The earliest time something known becomes due (for long-poll wake-ups).
        pub fn next_due(&self) -> Option<Millis> {
            let w = self.waiting.first().map(|&(t, _)| t);
            let l = self.leases.first().map(|&(t, _)| t);
            w.into_iter().chain(l).min()
        }

        pub fn stats(&self, log_end: u64) -> GroupStats {
            let seen_end = self.next_fresh.max(log_end);
            // Replayed offsets count again, and so do their skips: add before subtracting.
            let accepted = seen_end + self.counters.replayed - self.start - self.counters.skipped;
            let in_flight = self.leases.len() as u64;
            let pending = self.waiting.len() as u64 + (seen_end - self.next_fresh);
            GroupStats {
                accepted,
                acked: self.counters.acked,
                in_flight,
                pending,
                dead_lettered: self.counters.dead_lettered,
                expired_unsettled: self.counters.expired_unsettled,
                skipped_by_seek: self.counters.skipped_by_seek,
                redeliveries: self.counters.redeliveries,
            }
        }

        /// Expires every lease that ran out by `now`: the message is visible again at once,
        /// or dead-lettered if it has used all its deliveries.
        pub fn plan_expiry(&mut self, now: Millis) -> Vec<Event> {
            let mut events = Vec::new();
            while let Some(&(lease_until, offset)) = self.leases.first() {
                if lease_until > now {
                    break;
                }
                let a = &self.attempts[&offset];
                let AttemptState::InFlight { delivery, .. } = a.state else {
                    unreachable!("leases index only in-flight offsets")
                };
                let e = self.release_or_dead_letter(
                    offset,
                    delivery,
                    lease_until,
                    "lease expired".into(),
                    now,
                );
                self.apply_checked(&e);
                events.push(e);
            }
            events
        }

        /// Leases up to `max` messages until `now + lease_ms`: first the due redeliveries
        /// (oldest due first), then fresh messages in partition order. `fresh` must start at
        /// [`Self::next_fresh`] and be contiguous; it may be shorter than `max` (end of log).
        /// Returns the journal events (expiries, deferrals and skips included) and the
        /// leases handed out.
        pub fn plan_fetch(
            &mut self,
            now: Millis,
            max: usize,
            lease_ms: u64,
            fresh: &[FreshMessage],
        ) -> (Vec<Event>, Vec<Lease>) {
            let mut events = self.plan_expiry(now);
            let mut leases = Vec::new();
            let lease_until = now.saturating_add(lease_ms.max(1));
            while leases.len() < max {
                let Some(&(visible_at, offset)) = self.waiting.first() else {
                    break;
                };
                if visible_at > now {
                    break;
                }
                let delivery = self.attempts[&offset].deliveries + 1;
                let e = Event::Delivered {
                    offset,
                    delivery,
                    at: now,
                    lease_until,
                };
                self.apply_checked(&e);
                events.push(e);
                leases.push(Lease {
                    offset,
                    delivery,
                    lease_until,
                });
            }
            for m in fresh {
                if leases.len() >= max {
                    break;
                }
                if m.offset != self.next_fresh {
                    // Not contiguous with what this group has seen: a caller bug. Stop here
                    // rather than skip offsets.
                    debug_assert!(
                        false,
                        "fresh offset {} but next_fresh is {}",
                        m.offset, self.next_fresh
                    );
                    break;
                }
                let e = if m.for_other_group {
                    Event::Skipped { offset: m.offset }
                } else if let Some(nb) = m.not_before.filter(|&nb| nb > now) {
                    Event::Deferred {
                        offset: m.offset,
                        visible_at: nb,
                    }
                } else {
                    leases.push(Lease {
                        offset: m.offset,
                        delivery: 1,
                        lease_until,
                    });
                    Event::Delivered {
                        offset: m.offset,
                        delivery: 1,
                        at: now,
                        lease_until,
                    }
                };
                self.apply_checked(&e);
                events.push(e);
            }
            (events, leases)
        }

        /// Acknowledges delivery `delivery` of `offset`: settled for good.
        pub fn plan_ack(
            &mut self,
            now: Millis,
            offset: u64,
            delivery: u32,
        ) -> Result<Settled, SettleError> {
            if self.is_settled(offset) {
                return Ok(Settled::AlreadySettled);
            }
            self.check_current(now, offset, delivery)?;
            let e = Event::Acked { offset, delivery };
            self.apply_checked(&e);
            Ok(Settled::Changed(e))
        }

        /// Negatively acknowledges: visible again after `max(delay_ms, backoff)`, or dead
        /// lettered when this was the last allowed delivery.
        pub fn plan_nack(
            &mut self,
            now: Millis,
            offset: u64,
            delivery: u32,
            delay_ms: u64,
            reason: String,
        ) -> Result<Settled, SettleError> {
            if self.is_settled(offset) {
                return Ok(Settled::AlreadySettled);
            }
            self.check_current(now, offset, delivery)?;
            let backoff = self.policy.backoff.delay_ms(offset, delivery);
            let visible_at = now.saturating_add(delay_ms.max(backoff));
            let e = self.release_or_dead_letter(offset, delivery, visible_at, reason, now);
            self.apply_checked(&e);
            Ok(Settled::Changed(e))
        }

        /// Retention deleted the log below `below` although messages there were unsettled
        /// (only when the topic explicitly allows it): they are counted, then settled.
        pub fn plan_expire_unsettled(&mut self, below: u64) -> Option<Event> {
            if below <= self.committed {
                return None;
            }
            let e = Event::ExpiredUnsettled { below };
            self.apply_checked(&e);
            Some(e)
        }

        /// Moves the position to `to` (the caller keeps it within the log's retained range).
        /// Returns the event with how many unsettled messages it skips and how many settled
        /// ones it replays.
        pub fn plan_seek(&mut self, to: u64) -> (Event, u64, u64) {
            let before = self.counters;
            let e = Event::Seeked { to };
            self.apply_checked(&e);
            (
                e,
                self.counters.skipped_by_seek - before.skipped_by_seek,
                self.counters.replayed - before.replayed,
            )
        }

        /// Whether an ack or nack of delivery `delivery` of `offset` would be accepted at
        /// `now` (without changing anything): lets a batch be validated before any of it is
        /// applied.
        pub fn check_settle(
            &self,
            now: Millis,
            offset: u64,
            delivery: u32,
        ) -> Result<(), SettleError> {
            if self.is_settled(offset) {
                return Ok(());
            }
            self.check_current(now, offset, delivery)
        }

        fn check_current(
            &self,
            now: Millis,
            offset: u64,
            delivery: u32,
        ) -> Result<(), SettleError> {
            let Some(a) = self.attempts.get(&offset) else {
                return Err(SettleError::NotDelivered(offset));
            };
            match a.state {
                AttemptState::InFlight {
                    delivery: current,
                    lease_until,
                } => {
                    if current != delivery {
                        Err(SettleError::StaleDelivery {
                            offset,
                            delivery,
                            current,
                        })
                    } else if lease_until <= now {
                        Err(SettleError::LeaseExpired { offset, delivery })
                    } else {
                        Ok(())
                    }
                }
                AttemptState::Waiting { .. } if delivery < a.deliveries || delivery == 0 => {
                    Err(SettleError::StaleDelivery {
                        offset,
                        delivery,
                        current: a.deliveries,
                    })
                }
                AttemptState::Waiting { .. } if delivery == a.deliveries => {
                    Err(SettleError::LeaseExpired { offset, delivery })
                }
                AttemptState::Waiting { .. } => Err(SettleError::NotDelivered(offset)),
            }
        }

        fn release_or_dead_letter(
            &self,
            offset: u64,
            delivery: u32,
            visible_at: Millis,
            reason: String,
            now: Millis,
        ) -> Event {
            let a = &self.attempts[&offset];
            if a.deliveries >= self.policy.max_deliveries.max(1) {
                Event::DeadLettered {
                    offset,
                    reason,
                    at: now,
                    attempts: a.deliveries,
                    first_delivered_at: a.first_delivered_at,
                    last_delivered_at: a.last_delivered_at,
                }
            } else {
                Event::Released {
                    offset,
                    delivery,
                    visible_at,
                    reason,
                    at: now,
                }
            }
        }

        fn apply_checked(&mut self, e: &Event) {
            if let Err(err) = self.apply(e) {
                unreachable!("planned event does not apply: {err}");
            }
        }

        /// Applies one event (replay, or the plan methods themselves). An event that does not
        /// fit the state is refused and changes nothing.
        pub fn apply(&mut self, e: &Event) -> Result<(), ApplyError> {
            let fail = |why| {
                Err(ApplyError {
                    event: Box::new(e.clone()),
                    why,
                })
            };
            match *e {
                Event::Delivered {
                    offset,
                    delivery,
                    at,
                    lease_until,
                } => {
                    if offset == self.next_fresh {
                        if delivery != 1 {
                            return fail("a fresh offset's first delivery must be 1");
                        }
                        self.take_fresh_as_waiting(offset, at);
                    }
                    let Some(a) = self.attempts.get_mut(&offset) else {
                        return fail("offset is not pending");
                    };
                    let AttemptState::Waiting { visible_at } = a.state else {
                        return fail("offset is already in flight");
                    };
                    if delivery != a.deliveries + 1 {
                        return fail("delivery count must rise by one");
                    }
                    self.waiting.remove(&(visible_at, offset));
                    a.deliveries = delivery;
                    a.first_delivered_at.get_or_insert(at);
                    a.last_delivered_at = Some(at);
                    a.state = AttemptState::InFlight {
                        delivery,
                        lease_until,
                    };
                    self.leases.insert((lease_until, offset));
                    if delivery > 1 {
                        self.counters.redeliveries += 1;
                    }
                }
                Event::Deferred { offset, visible_at } => {
                    if offset != self.next_fresh {
                        return fail("only the next fresh offset can be deferred");
                    }
                    self.take_fresh_as_waiting(offset, visible_at);
                }
                Event::Skipped { offset } => {
                    if offset != self.next_fresh {
                        return fail("only the next fresh offset can be skipped");
                    }
                    self.next_fresh += 1;
                    self.counters.skipped += 1;
                    self.settle(offset);
                }
                Event::Acked { offset, delivery } => {
                    match self.attempts.get(&offset).map(|a| a.state) {
                        Some(AttemptState::InFlight {
                            delivery: current,
                            lease_until,
                        }) if current == delivery => {
                            self.leases.remove(&(lease_until, offset));
                        }
                        _ => {
                            return fail(
                                "only the current delivery of an in-flight offset can be acked",
                            );
                        }
                    }
                    self.attempts.remove(&offset);
                    self.counters.acked += 1;
                    self.settle(offset);
                }
                Event::Released {
                    offset,
                    delivery,
                    visible_at,
                    ref reason,
                    ..
                } => {
                    let Some(a) = self.attempts.get_mut(&offset) else {
                        return fail("offset is not pending");
                    };
                    match a.state {
                        AttemptState::InFlight {
                            delivery: current,
                            lease_until,
                        } if current == delivery => {
                            self.leases.remove(&(lease_until, offset));
                        }
                        _ => {
                            return fail(
                                "only the current delivery of an in-flight offset can be released",
                            );
                        }
                    }
                    a.state = AttemptState::Waiting { visible_at };
                    a.last_reason = Some(reason.clone());
                    self.waiting.insert((visible_at, offset));
                }
                Event::DeadLettered { offset, .. } => {
                    if self.remove_attempt(offset).is_none() {
                        return fail("offset is not pending");
                    }
                    self.counters.dead_lettered += 1;
                    self.settle(offset);
                }
                Event::ExpiredUnsettled { below } => {
                    let mut expired = 0;
                    let pending: Vec<u64> = self.attempts.range(..below).map(|(&o, _)| o).collect();
                    for o in pending {
                        self.remove_attempt(o);
                        expired += 1;
                    }
                    if below > self.next_fresh {
                        expired += below - self.next_fresh;
                        self.next_fresh = below;
                    }
                    self.counters.expired_unsettled += expired;
                    // Everything below is settled now.
                    let keep = self.settled.split_off(&below);
                    self.settled = keep;
                    self.committed = self.committed.max(below);
                    self.advance_committed();
                }
                Event::Seeked { to } => {
                    // Below `to`: unsettled offsets (seen or not) are passed over.
                    let seen_below = self.attempts.range(..to).count() as u64;
                    let unseen_below = to.saturating_sub(self.next_fresh);
                    // From `to` on: settled offsets the group is responsible for come back.
                    let from = to.max(self.start);
                    let replayed = if from < self.next_fresh {
                        let unsettled = self.attempts.range(from..).count() as u64;
                        (self.next_fresh - from) - unsettled
                    } else {
                        0
                    };
                    self.counters.skipped_by_seek += seen_below + unseen_below;
                    self.counters.replayed += replayed;
                    // Offsets below the group's start it never had: they join it, unseen.
                    self.start = self.start.min(to);
                    self.committed = to;
                    self.next_fresh = to;
                    self.settled.clear();
                    self.attempts.clear();
                    self.leases.clear();
                    self.waiting.clear();
                    self.seeks = self.seeks.wrapping_add(1);
                }
            }
            Ok(())
        }

        /// The persistent part of this state (the lease and waiting indexes are derived).
        pub fn snapshot(&self) -> Snapshot {
            Snapshot {
                start: self.start,
                committed: self.committed,
                next_fresh: self.next_fresh,
                settled: self.settled.iter().copied().collect(),
                seeks: self.seeks,
                attempts: self
                    .attempts
                    .iter()
                    .map(|(&offset, a)| AttemptSnapshot {
                        offset,
                        deliveries: a.deliveries,
                        first_delivered_at: a.first_delivered_at,
                        last_delivered_at: a.last_delivered_at,
                        last_reason: a.last_reason.clone(),
                        state: a.state,
                    })
                    .collect(),
                counters: self.counters,
            }
        }

        /// Rebuilds a state from [`Self::snapshot`], checking that it is consistent.
        pub fn restore(policy: GroupPolicy, s: Snapshot) -> Result<Self, &'static str> {
            if !(s.start <= s.committed && s.committed <= s.next_fresh) {
                return Err("start <= committed <= next_fresh does not hold");
            }
            let mut g = Reference::new(policy, s.start);
            g.committed = s.committed;
            g.next_fresh = s.next_fresh;
            g.counters = s.counters;
            g.seeks = s.seeks;
            // Snapshots list offsets in ascending order; anything else was not written by us.
            if !s.settled.is_sorted_by(|a, b| a < b)
                || !s.attempts.is_sorted_by(|a, b| a.offset < b.offset)
            {
                return Err("offsets are not strictly ascending");
            }
            for o in s.settled {
                if o < s.committed || o >= s.next_fresh || !g.settled.insert(o) {
                    return Err("settled offset out of range or repeated");
                }
            }
            if g.settled.first() == Some(&g.committed) {
                return Err("committed is not advanced over the settled prefix");
            }
            for a in s.attempts {
                if a.offset < s.committed
                    || a.offset >= s.next_fresh
                    || g.settled.contains(&a.offset)
                {
                    return Err("attempt offset out of range or settled");
                }
                match a.state {
                    AttemptState::InFlight {
                        delivery,
                        lease_until,
                    } => {
                        if delivery != a.deliveries || delivery == 0 {
                            return Err("in-flight delivery does not match the delivery count");
                        }
                        g.leases.insert((lease_until, a.offset));
                    }
                    AttemptState::Waiting { visible_at } => {
                        g.waiting.insert((visible_at, a.offset));
                    }
                }
                let attempt = Attempt {
                    deliveries: a.deliveries,
                    first_delivered_at: a.first_delivered_at,
                    last_delivered_at: a.last_delivered_at,
                    last_reason: a.last_reason,
                    state: a.state,
                };
                if g.attempts.insert(a.offset, attempt).is_some() {
                    return Err("attempt offset repeated");
                }
            }
            Ok(g)
        }

        /// Moves the next fresh offset into the waiting queue, never delivered yet.
        fn take_fresh_as_waiting(&mut self, offset: u64, visible_at: Millis) {
            debug_assert_eq!(offset, self.next_fresh);
            self.next_fresh += 1;
            let attempt = Attempt {
                deliveries: 0,
                first_delivered_at: None,
                last_delivered_at: None,
                last_reason: None,
                state: AttemptState::Waiting { visible_at },
            };
            self.attempts.insert(offset, attempt);
            self.waiting.insert((visible_at, offset));
        }

        /// Forgets an unsettled offset and its place in the lease or waiting index.
        fn remove_attempt(&mut self, offset: u64) -> Option<Attempt> {
            let a = self.attempts.remove(&offset)?;
            match a.state {
                AttemptState::InFlight { lease_until, .. } => {
                    self.leases.remove(&(lease_until, offset))
                }
                AttemptState::Waiting { visible_at } => self.waiting.remove(&(visible_at, offset)),
            };
            Some(a)
        }

        fn settle(&mut self, offset: u64) {
            self.settled.insert(offset);
            self.advance_committed();
        }

        fn advance_committed(&mut self) {
            while self.settled.first() == Some(&self.committed) {
                self.settled.pop_first();
                self.committed += 1;
            }
            // Offsets below `committed` need no record.
            while self.settled.first().is_some_and(|&o| o < self.committed) {
                self.settled.pop_first();
            }
        }
    }
}

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
    /// Settles one of the leases ever handed out (current, expired, stale or settled).
    Ack {
        pick: usize,
        stale: bool,
    },
    Nack {
        pick: usize,
        delay_ms: u64,
        reason: usize,
    },
    AckUnknown {
        offset: u64,
    },
    Advance {
        ms: u64,
    },
    Sweep,
    Seek {
        permille: u64,
    },
    ExpireBelow {
        ahead: u64,
    },
    SetMaxDeliveries(u32),
    /// Compaction and restart: both states go through their snapshot.
    Restore,
}

/// The reasons a nack gives: none kept as text (empty, the expiry's own) and some kept.
const REASONS: [&str; 4] = [
    "",
    "lease expired",
    "handler failed",
    "timeout talking to db",
];

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (1..6u64, prop::option::weighted(0.2, 1..2_000u64), prop::bool::weighted(0.1))
            .prop_map(|(count, delayed_ms, other_group)| Op::Publish { count, delayed_ms, other_group }),
        4 => (1..8usize, 1..3_000u64).prop_map(|(max, lease_ms)| Op::Fetch { max, lease_ms }),
        3 => (any::<usize>(), prop::bool::weighted(0.2)).prop_map(|(pick, stale)| Op::Ack { pick, stale }),
        3 => (any::<usize>(), 0..1_500u64, 0..REASONS.len()).prop_map(|(pick, delay_ms, reason)| Op::Nack { pick, delay_ms, reason }),
        1 => (0..80u64).prop_map(|offset| Op::AckUnknown { offset }),
        3 => (0..4_000u64).prop_map(|ms| Op::Advance { ms }),
        2 => Just(Op::Sweep),
        1 => (0..=1000u64).prop_map(|permille| Op::Seek { permille }),
        1 => (0..4u64).prop_map(|ahead| Op::ExpireBelow { ahead }),
        1 => (1..5u32).prop_map(Op::SetMaxDeliveries),
        1 => Just(Op::Restore),
    ]
}

fn policy(max_deliveries: u32) -> GroupPolicy {
    GroupPolicy {
        max_deliveries,
        backoff: Backoff {
            initial_ms: 50,
            max_ms: 800,
            multiplier: 2.0,
            jitter: 0.3,
        },
    }
}

struct Pair {
    g: GroupPartition,
    r: reference::Reference,
    now: u64,
    log: Vec<FreshMessage>,
    issued: Vec<Lease>,
    journal: Vec<surety_broker::Event>,
    max_deliveries: u32,
}

impl Pair {
    /// Everything either state answers without changing.
    fn compare(&self) {
        let (g, r) = (&self.g, &self.r);
        let end = self.log.len() as u64;
        assert_eq!(g.stats(end), r.stats(end));
        assert!(g.stats(end).is_conserved());
        assert_eq!(g.committed(), r.committed());
        assert_eq!(g.next_fresh(), r.next_fresh());
        assert_eq!(g.counters(), r.counters());
        assert_eq!(g.seeks(), r.seeks());
        assert_eq!(
            g.in_flight().collect::<Vec<_>>(),
            r.in_flight().collect::<Vec<_>>(),
            "leases or their expiry order differ"
        );
        assert_eq!(g.next_due(), r.next_due());
        assert_eq!(g.next_lease_expiry(), r.next_lease_expiry());
        for t in [self.now, self.now + 500, self.now + 5_000] {
            assert_eq!(g.has_due(t), r.has_due(t));
        }
        for o in 0..end + 2 {
            assert_eq!(g.is_settled(o), r.is_settled(o), "is_settled({o})");
            assert_eq!(g.deliveries(o), r.deliveries(o), "deliveries({o})");
            for d in 0..4 {
                assert_eq!(
                    g.check_settle(self.now, o, d),
                    r.check_settle(self.now, o, d)
                );
            }
        }
        assert_eq!(g.snapshot(), r.snapshot(), "snapshots differ");
    }

    fn pick(&self, pick: usize) -> Option<Lease> {
        (!self.issued.is_empty()).then(|| self.issued[pick % self.issued.len()])
    }

    fn step(&mut self, op: &Op) {
        let now = self.now;
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
                        not_before: delayed_ms.map(|d| now + d),
                        for_other_group: other_group,
                    });
                }
            }
            Op::Fetch { max, lease_ms } => {
                let from = (self.g.next_fresh() as usize).min(self.log.len());
                let fresh = self.log[from..].to_vec();
                let a = self.g.plan_fetch(now, max, lease_ms, &fresh);
                let b = self.r.plan_fetch(now, max, lease_ms, &fresh);
                assert_eq!(a, b, "fetch");
                self.issued.extend(a.1.iter().copied());
                self.journal.extend(a.0);
            }
            Op::Ack { pick, stale } => {
                let Some(l) = self.pick(pick) else { return };
                let d = if stale {
                    l.delivery.saturating_sub(1)
                } else {
                    l.delivery
                };
                let a = self.g.plan_ack(now, l.offset, d);
                assert_eq!(a, self.r.plan_ack(now, l.offset, d), "ack");
                if let Ok(Settled::Changed(e)) = a {
                    self.journal.push(e);
                }
            }
            Op::Nack {
                pick,
                delay_ms,
                reason,
            } => {
                let Some(l) = self.pick(pick) else { return };
                let reason = REASONS[reason].to_string();
                let a = self
                    .g
                    .plan_nack(now, l.offset, l.delivery, delay_ms, reason.clone());
                let b = self
                    .r
                    .plan_nack(now, l.offset, l.delivery, delay_ms, reason);
                assert_eq!(a, b, "nack");
                if let Ok(Settled::Changed(e)) = a {
                    self.journal.push(e);
                }
            }
            Op::AckUnknown { offset } => {
                let a = self.g.plan_ack(now, offset, 1);
                assert_eq!(a, self.r.plan_ack(now, offset, 1));
                if let Ok(Settled::Changed(e)) = a {
                    self.journal.push(e);
                }
            }
            Op::Advance { ms } => self.now += ms,
            Op::Sweep => {
                let a = self.g.plan_expiry(now);
                assert_eq!(a, self.r.plan_expiry(now), "expiry");
                self.journal.extend(a);
            }
            Op::Seek { permille } => {
                let to = self.log.len() as u64 * permille / 1000;
                let a = self.g.plan_seek(to);
                assert_eq!(a, self.r.plan_seek(to), "seek");
                self.journal.push(a.0);
            }
            Op::ExpireBelow { ahead } => {
                let below = (self.g.committed() + ahead).min(self.log.len() as u64);
                let a = self.g.plan_expire_unsettled(below);
                assert_eq!(a, self.r.plan_expire_unsettled(below));
                self.journal.extend(a);
            }
            Op::SetMaxDeliveries(n) => {
                self.max_deliveries = n;
                self.g.set_policy(policy(n));
                self.r.set_policy(policy(n));
            }
            Op::Restore => {
                let s: Snapshot = self.g.snapshot();
                self.g = GroupPartition::restore(policy(self.max_deliveries), s.clone()).unwrap();
                self.r = reference::Reference::restore(policy(self.max_deliveries), s).unwrap();
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn compact_state_answers_as_the_reference(ops in prop::collection::vec(op(), 1..150), max_deliveries in 1..5u32) {
        let mut p = Pair {
            g: GroupPartition::new(policy(max_deliveries), 0),
            r: reference::Reference::new(policy(max_deliveries), 0),
            now: 0,
            log: Vec::new(),
            issued: Vec::new(),
            journal: Vec::new(),
            max_deliveries,
        };
        let restored = ops.iter().any(|op| matches!(op, Op::Restore | Op::SetMaxDeliveries(_)));
        for op in &ops {
            p.step(op);
            p.compare();
        }
        // Replaying the journal rebuilds the same compact state (without restores or
        // policy changes in between, the journal alone describes it).
        if !restored {
            let mut replay = GroupPartition::new(policy(max_deliveries), 0);
            for e in &p.journal {
                replay.apply(e).unwrap();
            }
            prop_assert_eq!(replay, p.g);
        }
    }
}

/// A snapshot whose offsets between `committed` and `next_fresh` are not all settled or
/// pending was never written by the broker; the compact state, which implies settled
/// offsets, refuses it rather than guess.
#[test]
fn a_snapshot_with_an_unaccounted_offset_is_refused() {
    let mut g = GroupPartition::new(policy(3), 0);
    let fresh: Vec<FreshMessage> = (0..3)
        .map(|offset| FreshMessage {
            offset,
            not_before: None,
            for_other_group: false,
        })
        .collect();
    g.plan_fetch(0, 3, 1_000, &fresh);
    g.plan_ack(0, 1, 1).unwrap();
    let mut s = g.snapshot();
    assert_eq!(s.settled, vec![1]);
    assert!(GroupPartition::restore(policy(3), s.clone()).is_ok());
    s.settled.clear();
    assert!(GroupPartition::restore(policy(3), s).is_err());
}
