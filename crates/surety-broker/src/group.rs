//! The consumer-group state machine for one partition: sans-IO, clock injected.
//!
//! It never touches disk, network or the wall clock. Every change happens through an
//! [`Event`]; the `plan_*` methods decide, apply the events to `self`, and return them.
//! The caller must make those events durable (the group journal) before it answers
//! anyone; if it cannot, it must drop this state and rebuild it by replaying the journal
//! with [`GroupPartition::apply`]. Replay is deterministic (backoff jitter is a hash, not
//! an RNG), so the rebuilt state is the one that was answered from.
//!
//! Offsets move through: fresh (never seen) → in flight (leased to one consumer) →
//! acked, or waiting (nacked / lease expired / delayed) → in flight again … → dead
//! lettered once `max_deliveries` deliveries all failed. Acked, dead-lettered, skipped
//! (addressed to another group) and retention-expired offsets are *settled*; everything
//! below `committed` is settled.

mod compact;

use std::collections::HashMap;

use crate::backoff::Backoff;
use compact::{OffsetMap, SortedSet};

/// Milliseconds on the injected clock.
pub type Millis = u64;

/// Per-group delivery policy (from the topic).
#[derive(Debug, Clone, PartialEq)]
pub struct GroupPolicy {
    /// Deliveries before a message is dead-lettered (at least 1).
    pub max_deliveries: u32,
    pub backoff: Backoff,
}

impl Default for GroupPolicy {
    fn default() -> Self {
        Self {
            max_deliveries: 5,
            backoff: Backoff::default(),
        }
    }
}

/// What the caller read from the log about the next fresh offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FreshMessage {
    pub offset: u64,
    /// Delayed delivery: not visible before this time.
    pub not_before: Option<Millis>,
    /// A resend addressed to another group: this group settles it without delivery.
    pub for_other_group: bool,
}

/// Every change to a group partition. These are what the journal stores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Leased to a consumer; `delivery` is the delivery count including this one.
    Delivered {
        offset: u64,
        delivery: u32,
        at: Millis,
        lease_until: Millis,
    },
    /// A fresh, delayed message set aside until `visible_at`.
    Deferred {
        offset: u64,
        visible_at: Millis,
    },
    /// A fresh message addressed to another group.
    Skipped {
        offset: u64,
    },
    Acked {
        offset: u64,
        delivery: u32,
    },
    /// Nacked, or its lease expired: visible again at `visible_at`.
    Released {
        offset: u64,
        delivery: u32,
        visible_at: Millis,
        reason: String,
        at: Millis,
    },
    /// Out of deliveries: moved to the group's dead letters.
    DeadLettered {
        offset: u64,
        reason: String,
        at: Millis,
        attempts: u32,
        first_delivered_at: Option<Millis>,
        last_delivered_at: Option<Millis>,
    },
    /// Retention deleted unsettled messages below `below` (only when the topic allows).
    ExpiredUnsettled {
        below: u64,
    },
    /// An operator moved the group's position to `to`: everything below is settled
    /// (unsettled messages there counted as skipped by seek), everything from `to` on is
    /// unseen again (settled messages there counted as replayed; in-flight and waiting
    /// ones start over at delivery 1, their receipts void).
    Seeked {
        to: u64,
    },
}

/// A lease handed out by `plan_fetch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub offset: u64,
    pub delivery: u32,
    pub lease_until: Millis,
}

/// Why an ack or nack was refused. Nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SettleError {
    #[error("offset {0} was never delivered to this group")]
    NotDelivered(u64),
    #[error("the lease of delivery {delivery} of offset {offset} has expired")]
    LeaseExpired { offset: u64, delivery: u32 },
    #[error("delivery {delivery} of offset {offset} is not the current one ({current})")]
    StaleDelivery {
        offset: u64,
        delivery: u32,
        current: u32,
    },
    /// The receipt predates a seek of this partition or the group's re-creation: the
    /// delivery it names was withdrawn.
    #[error("the delivery of offset {offset} was withdrawn by a seek or a group deletion")]
    Withdrawn { offset: u64 },
}

/// Why an event could not be applied during replay (a journal that does not belong to
/// this state, or a bug). The state is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("event {event:?} does not apply: {why}")]
pub struct ApplyError {
    pub event: Box<Event>,
    pub why: &'static str,
}

/// Outcome of a successful ack or nack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled {
    /// The event that settled or released it (journal it).
    Changed(Event),
    /// Already settled earlier: a repeated ack, harmless.
    AlreadySettled,
}

/// The reason of an expired lease: most releases carry it, so it is kept as a flag.
const LEASE_EXPIRED: &str = "lease expired";

/// One seen, unsettled offset, in 32 bytes (its offset is its place in `attempts`); see
/// docs/broker.md, "Memory per unsettled message".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Attempt {
    /// Lease expiry when in flight, visibility time when waiting.
    due: Millis,
    /// Valid with `HAS_FIRST` / `HAS_LAST`.
    first_delivered_at: Millis,
    last_delivered_at: Millis,
    /// Deliveries so far; in flight, also the number of the current one (receipts name it).
    deliveries: u32,
    /// `IN_FLIGHT`, `HAS_FIRST`, `HAS_LAST` and the last reason's kind (`REASON_*`).
    flags: u8,
}

const IN_FLIGHT: u8 = 1;
const HAS_FIRST: u8 = 1 << 1;
const HAS_LAST: u8 = 1 << 2;
const REASON_SHIFT: u32 = 3;
const REASON_MASK: u8 = 0b11 << REASON_SHIFT;
const REASON_NONE: u8 = 0;
const REASON_EMPTY: u8 = 1 << REASON_SHIFT;
const REASON_LEASE_EXPIRED: u8 = 2 << REASON_SHIFT;
/// The text is in `GroupPartition::reasons`.
const REASON_OTHER: u8 = 3 << REASON_SHIFT;

impl Attempt {
    /// A fresh offset set aside, never delivered.
    fn waiting(visible_at: Millis) -> Self {
        Self {
            due: visible_at,
            first_delivered_at: 0,
            last_delivered_at: 0,
            deliveries: 0,
            flags: 0,
        }
    }

    fn in_flight(&self) -> bool {
        self.flags & IN_FLIGHT != 0
    }

    fn state(&self) -> AttemptState {
        if self.in_flight() {
            AttemptState::InFlight {
                delivery: self.deliveries,
                lease_until: self.due,
            }
        } else {
            AttemptState::Waiting {
                visible_at: self.due,
            }
        }
    }

    fn first_delivered_at(&self) -> Option<Millis> {
        (self.flags & HAS_FIRST != 0).then_some(self.first_delivered_at)
    }

    fn last_delivered_at(&self) -> Option<Millis> {
        (self.flags & HAS_LAST != 0).then_some(self.last_delivered_at)
    }

    fn reason_kind(&self) -> u8 {
        self.flags & REASON_MASK
    }
}

/// Where an unsettled, seen offset is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptState {
    InFlight { delivery: u32, lease_until: Millis },
    Waiting { visible_at: Millis },
}

/// Totals since the group was created (they survive restarts through the journal).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub acked: u64,
    pub dead_lettered: u64,
    pub skipped: u64,
    pub expired_unsettled: u64,
    /// Deliveries after the first.
    pub redeliveries: u64,
    /// Unsettled messages an operator's seek passed over.
    pub skipped_by_seek: u64,
    /// Settled messages a seek made unseen again (they are accepted once more).
    pub replayed: u64,
}

/// Conservation of messages for one group and partition:
/// `accepted == acked + in_flight + pending + dead_lettered + expired_unsettled +
/// skipped_by_seek` (a message a seek replays is accepted again).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GroupStats {
    pub accepted: u64,
    pub acked: u64,
    pub in_flight: u64,
    /// Not yet delivered, or waiting for redelivery.
    pub pending: u64,
    pub dead_lettered: u64,
    pub expired_unsettled: u64,
    pub skipped_by_seek: u64,
    pub redeliveries: u64,
}

impl GroupStats {
    pub fn is_conserved(&self) -> bool {
        self.accepted
            == self.acked
                + self.in_flight
                + self.pending
                + self.dead_lettered
                + self.expired_unsettled
                + self.skipped_by_seek
    }

    /// Adds another partition's (or group's) figures to these.
    pub fn add(&mut self, s: &GroupStats) {
        self.accepted += s.accepted;
        self.acked += s.acked;
        self.in_flight += s.in_flight;
        self.pending += s.pending;
        self.dead_lettered += s.dead_lettered;
        self.expired_unsettled += s.expired_unsettled;
        self.skipped_by_seek += s.skipped_by_seek;
        self.redeliveries += s.redeliveries;
    }
}

/// One consumer group's state for one partition.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupPartition {
    policy: GroupPolicy,
    /// First offset this group is responsible for (the log start when it was created).
    start: u64,
    /// Every offset below is settled.
    committed: u64,
    /// Offsets at or above were never seen by this group.
    next_fresh: u64,
    /// Seen, unsettled offsets: in flight or waiting. Every other offset in
    /// `[committed, next_fresh)` is settled, so settled ones need no record.
    attempts: OffsetMap<Attempt>,
    /// The last reasons that are neither empty nor "lease expired", by offset (only
    /// offsets whose attempt says `REASON_OTHER`).
    reasons: HashMap<u64, Box<str>>,
    /// In-flight offsets by lease expiry.
    leases: SortedSet<(Millis, u64)>,
    /// Waiting offsets by visibility time.
    waiting: SortedSet<(Millis, u64)>,
    counters: Counters,
    /// Seeks applied so far; receipts carry it, so one issued before a seek is stale.
    seeks: u32,
}

impl GroupPartition {
    /// A new group that starts consuming at `start`.
    pub fn new(policy: GroupPolicy, start: u64) -> Self {
        Self {
            policy,
            start,
            committed: start,
            next_fresh: start,
            attempts: OffsetMap::default(),
            reasons: HashMap::new(),
            leases: SortedSet::default(),
            waiting: SortedSet::default(),
            counters: Counters::default(),
            seeks: 0,
        }
    }

    /// Seeks applied so far (receipts name it).
    pub fn seeks(&self) -> u32 {
        self.seeks
    }

    pub fn policy(&self) -> &GroupPolicy {
        &self.policy
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
        self.attempts.get(offset).map_or(0, |a| a.deliveries)
    }

    /// The offsets leased right now, with their delivery numbers.
    pub fn in_flight(&self) -> impl Iterator<Item = Lease> + '_ {
        self.leases.iter().map(|(lease_until, offset)| Lease {
            offset,
            delivery: self.attempt(offset).deliveries,
            lease_until,
        })
    }

    pub fn is_settled(&self, offset: u64) -> bool {
        offset < self.committed || (offset < self.next_fresh && !self.attempts.contains(offset))
    }

    /// Whether a fetch at `now` could deliver something that is already known to this
    /// group (a due redelivery or an expired lease), besides fresh messages.
    pub fn has_due(&self, now: Millis) -> bool {
        self.waiting.first().is_some_and(|(t, _)| t <= now)
            || self.leases.first().is_some_and(|(t, _)| t <= now)
    }

    /// When the earliest lease runs out: the sweeper expires it then, consumer or not.
    pub fn next_lease_expiry(&self) -> Option<Millis> {
        self.leases.first().map(|(t, _)| t)
    }

    /// The earliest time something known becomes due (for long-poll wake-ups).
    pub fn next_due(&self) -> Option<Millis> {
        let w = self.waiting.first().map(|(t, _)| t);
        let l = self.leases.first().map(|(t, _)| t);
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
        while let Some((lease_until, offset)) = self.leases.first() {
            if lease_until > now {
                break;
            }
            let delivery = self.attempt(offset).deliveries;
            let e = self.release_or_dead_letter(
                offset,
                delivery,
                lease_until,
                LEASE_EXPIRED.into(),
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
            let Some((visible_at, offset)) = self.waiting.first() else {
                break;
            };
            if visible_at > now {
                break;
            }
            let delivery = self.attempt(offset).deliveries + 1;
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
    pub fn check_settle(&self, now: Millis, offset: u64, delivery: u32) -> Result<(), SettleError> {
        if self.is_settled(offset) {
            return Ok(());
        }
        self.check_current(now, offset, delivery)
    }

    fn check_current(&self, now: Millis, offset: u64, delivery: u32) -> Result<(), SettleError> {
        let Some(a) = self.attempts.get(offset) else {
            return Err(SettleError::NotDelivered(offset));
        };
        match a.state() {
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
        let a = self.attempt(offset);
        if a.deliveries >= self.policy.max_deliveries.max(1) {
            Event::DeadLettered {
                offset,
                reason,
                at: now,
                attempts: a.deliveries,
                first_delivered_at: a.first_delivered_at(),
                last_delivered_at: a.last_delivered_at(),
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
                let Some(a) = self.attempts.get_mut(offset) else {
                    return fail("offset is not pending");
                };
                if a.in_flight() {
                    return fail("offset is already in flight");
                }
                if delivery != a.deliveries + 1 {
                    return fail("delivery count must rise by one");
                }
                self.waiting.remove((a.due, offset));
                a.deliveries = delivery;
                if a.flags & HAS_FIRST == 0 {
                    a.first_delivered_at = at;
                }
                a.last_delivered_at = at;
                a.due = lease_until;
                a.flags |= IN_FLIGHT | HAS_FIRST | HAS_LAST;
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
                if !self
                    .attempts
                    .get(offset)
                    .is_some_and(|a| a.in_flight() && a.deliveries == delivery)
                {
                    return fail("only the current delivery of an in-flight offset can be acked");
                }
                self.remove_attempt(offset);
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
                let Some(a) = self.attempts.get_mut(offset) else {
                    return fail("offset is not pending");
                };
                if !(a.in_flight() && a.deliveries == delivery) {
                    return fail(
                        "only the current delivery of an in-flight offset can be released",
                    );
                }
                self.leases.remove((a.due, offset));
                a.due = visible_at;
                a.flags &= !IN_FLIGHT;
                set_reason(a, &mut self.reasons, offset, Some(reason.clone()));
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
                for o in self.attempts.offsets_below(below) {
                    self.remove_attempt(o);
                    expired += 1;
                }
                if below > self.next_fresh {
                    expired += below - self.next_fresh;
                    self.next_fresh = below;
                }
                self.counters.expired_unsettled += expired;
                // Everything below is settled now.
                self.advance_committed();
            }
            Event::Seeked { to } => {
                // Below `to`: unsettled offsets (seen or not) are passed over.
                let seen_below = self.attempts.count_below(to) as u64;
                let unseen_below = to.saturating_sub(self.next_fresh);
                // From `to` on: settled offsets the group is responsible for come back.
                let from = to.max(self.start);
                let replayed = if from < self.next_fresh {
                    let unsettled = (self.attempts.len() - self.attempts.count_below(from)) as u64;
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
                self.attempts.clear();
                self.reasons.clear();
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
            settled: self.settled_offsets(),
            seeks: self.seeks,
            attempts: self
                .attempts
                .iter()
                .map(|(offset, a)| AttemptSnapshot {
                    offset,
                    deliveries: a.deliveries,
                    first_delivered_at: a.first_delivered_at(),
                    last_delivered_at: a.last_delivered_at(),
                    last_reason: self.reason(offset, a),
                    state: a.state(),
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
        let mut g = GroupPartition::new(policy, s.start);
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
        if s.settled
            .iter()
            .any(|&o| o < s.committed || o >= s.next_fresh)
        {
            return Err("settled offset out of range or repeated");
        }
        if s.settled.first() == Some(&s.committed) {
            return Err("committed is not advanced over the settled prefix");
        }
        // Both lists are ascending: a merge finds an offset in both.
        let mut settled = s.settled.iter().peekable();
        for a in s.attempts {
            while settled.next_if(|&&o| o < a.offset).is_some() {}
            if a.offset < s.committed
                || a.offset >= s.next_fresh
                || settled.peek() == Some(&&a.offset)
            {
                return Err("attempt offset out of range or settled");
            }
            let mut attempt = Attempt::waiting(0);
            attempt.deliveries = a.deliveries;
            if let Some(t) = a.first_delivered_at {
                attempt.first_delivered_at = t;
                attempt.flags |= HAS_FIRST;
            }
            if let Some(t) = a.last_delivered_at {
                attempt.last_delivered_at = t;
                attempt.flags |= HAS_LAST;
            }
            match a.state {
                AttemptState::InFlight {
                    delivery,
                    lease_until,
                } => {
                    if delivery != a.deliveries || delivery == 0 {
                        return Err("in-flight delivery does not match the delivery count");
                    }
                    attempt.due = lease_until;
                    attempt.flags |= IN_FLIGHT;
                    g.leases.insert((lease_until, a.offset));
                }
                AttemptState::Waiting { visible_at } => {
                    attempt.due = visible_at;
                    g.waiting.insert((visible_at, a.offset));
                }
            }
            set_reason(&mut attempt, &mut g.reasons, a.offset, a.last_reason);
            g.attempts.insert(a.offset, attempt);
        }
        // Settled offsets are not recorded but implied, so every offset in between must be
        // one or the other (as every snapshot this code writes has it).
        if (s.settled.len() + g.attempts.len()) as u64 != s.next_fresh - s.committed {
            return Err(
                "an offset between committed and next_fresh is neither settled nor pending",
            );
        }
        Ok(g)
    }

    /// Moves the next fresh offset into the waiting queue, never delivered yet.
    fn take_fresh_as_waiting(&mut self, offset: u64, visible_at: Millis) {
        debug_assert_eq!(offset, self.next_fresh);
        self.next_fresh += 1;
        self.attempts.insert(offset, Attempt::waiting(visible_at));
        self.waiting.insert((visible_at, offset));
    }

    /// The attempt of an offset an index or the caller knows to be unsettled.
    fn attempt(&self, offset: u64) -> &Attempt {
        self.attempts
            .get(offset)
            .expect("indexed offsets have an attempt")
    }

    fn reason(&self, offset: u64, a: &Attempt) -> Option<String> {
        match a.reason_kind() {
            REASON_NONE => None,
            REASON_EMPTY => Some(String::new()),
            REASON_LEASE_EXPIRED => Some(LEASE_EXPIRED.into()),
            _ => Some(self.reasons[&offset].to_string()),
        }
    }

    /// Forgets an unsettled offset, its place in the lease or waiting index and its reason.
    fn remove_attempt(&mut self, offset: u64) -> Option<Attempt> {
        let a = self.attempts.remove(offset)?;
        if a.in_flight() {
            self.leases.remove((a.due, offset));
        } else {
            self.waiting.remove((a.due, offset));
        }
        if a.reason_kind() == REASON_OTHER {
            self.reasons.remove(&offset);
        }
        Some(a)
    }

    /// The offset was just settled (its attempt, if any, removed).
    fn settle(&mut self, offset: u64) {
        debug_assert!(!self.attempts.contains(offset));
        self.advance_committed();
    }

    /// `committed` moves up to the lowest unsettled offset: the first attempt, or the
    /// first offset never seen.
    fn advance_committed(&mut self) {
        self.committed = self.attempts.first_offset().unwrap_or(self.next_fresh);
    }

    /// The settled offsets in `[committed, next_fresh)`: those without an attempt.
    fn settled_offsets(&self) -> Vec<u64> {
        let mut out = Vec::new();
        let mut next = self.committed;
        for (o, _) in self.attempts.iter() {
            out.extend(next..o);
            next = o + 1;
        }
        out.extend(next..self.next_fresh);
        out
    }
}

/// Records `reason` as the attempt's last reason: the common ones as a flag, any other
/// in the side map.
fn set_reason(
    a: &mut Attempt,
    reasons: &mut HashMap<u64, Box<str>>,
    offset: u64,
    reason: Option<String>,
) {
    let kind = match reason.as_deref() {
        None => REASON_NONE,
        Some("") => REASON_EMPTY,
        Some(LEASE_EXPIRED) => REASON_LEASE_EXPIRED,
        Some(_) => REASON_OTHER,
    };
    a.flags = (a.flags & !REASON_MASK) | kind;
    match reason {
        Some(r) if kind == REASON_OTHER => {
            reasons.insert(offset, r.into_boxed_str());
        }
        _ => {
            reasons.remove(&offset);
        }
    }
}

/// The persistent part of a [`GroupPartition`], for journal compaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub start: u64,
    pub committed: u64,
    pub next_fresh: u64,
    pub settled: Vec<u64>,
    pub attempts: Vec<AttemptSnapshot>,
    pub counters: Counters,
    pub seeks: u32,
}

/// One unsettled offset in a [`Snapshot`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptSnapshot {
    pub offset: u64,
    pub deliveries: u32,
    pub first_delivered_at: Option<Millis>,
    pub last_delivered_at: Option<Millis>,
    pub last_reason: Option<String>,
    pub state: AttemptState,
}
