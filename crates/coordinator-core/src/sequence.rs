//! Per-sender sequencing, sans-IO: de-duplication, re-ordering and gap
//! detection for one sender's stream of numbered messages.
//!
//! A message that arrives ahead of its turn waits until the ones before it
//! arrive, or until `reorder_timeout` passes: then the missing numbers are
//! reported as a [`Gap`] and delivery goes on. A sender's heartbeat tells the
//! highest number it has sent, so a lost last message is reported too.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Messages `first..first + count` of a stream that never arrived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gap {
    pub first: u64,
    pub count: u64,
}

/// What happened to a received message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Delivered, possibly with earlier held messages after it.
    Delivered,
    /// Ahead of its turn: held until the missing ones arrive or time out.
    Held,
    /// Already delivered, already held, or arrived after it was reported lost.
    Duplicate,
}

/// How much a stream may hold while it waits for a missing message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeldLimits {
    /// Messages held at most.
    pub count: usize,
    /// Bytes held at most (as the caller counts them).
    pub bytes: usize,
}

/// One sender's stream.
///
/// Numbers are whatever the sender wrote, so nothing here may overflow on a
/// hostile one: the stream stops at `u64::MAX` (a stream that long cannot be
/// honest) and every step saturates.
#[derive(Debug)]
pub struct Stream<T> {
    next: u64,
    /// Begun by its sender's word of what it had sent, and nothing
    /// delivered or reported lost yet: an earlier message may still begin
    /// it (see [`Stream::after_announced`]).
    may_rewind: bool,
    held: BTreeMap<u64, (T, usize)>,
    /// Bytes of the messages in `held`.
    held_bytes: usize,
    /// Highest number the sender said it has sent.
    announced: u64,
    /// Since when the stream has been waiting for a missing message.
    waiting_since: Option<Instant>,
    limits: HeldLimits,
}

impl<T> Stream<T> {
    /// A stream whose next expected message is `next`. Beyond `limits`, the
    /// messages waiting for a missing one are released and the gap declared at once.
    pub fn starting_at(next: u64, limits: HeldLimits) -> Self {
        Self {
            next: next.max(1),
            may_rewind: false,
            held: BTreeMap::new(),
            held_bytes: 0,
            announced: 0,
            waiting_since: None,
            limits,
        }
    }

    /// A stream first heard of by its sender's word that it has sent up to
    /// `high` (a heartbeat, a join or an answer to one). What it sent
    /// before may have gone out before this node was there to get it, so
    /// the stream expects `high + 1`. But if one of those arrives first (it
    /// was on its way when the word overtook it, on another path of the
    /// carrier), the stream begins with it instead, and what follows it up
    /// to `high` is waited for and reported if lost, like any other. Such a
    /// message was dropped as a duplicate before, and nobody was told.
    pub fn after_announced(high: u64, limits: HeldLimits) -> Self {
        let mut stream = Self::starting_at(high.saturating_add(1), limits);
        stream.may_rewind = true;
        stream.announced = high.min(u64::MAX - 1);
        stream
    }

    /// Bytes of the messages held, waiting for a missing one.
    pub fn held_bytes(&self) -> usize {
        self.held_bytes
    }

    /// Gives up waiting at once: declares what is missing lost and delivers
    /// what was held (to bring memory down).
    pub fn release(&mut self, deliver: &mut Vec<T>, gaps: &mut Vec<Gap>) {
        self.skip_missing(deliver, gaps);
    }

    /// The next number this stream expects.
    pub fn next_expected(&self) -> u64 {
        self.next
    }

    /// Takes message `seq`. Messages ready for delivery are appended to
    /// `deliver` in order; gaps found on the way to `gaps`.
    /// `size` is what holding it would cost, counted against the byte limit.
    pub fn receive(
        &mut self,
        seq: u64,
        item: T,
        size: usize,
        now: Instant,
        deliver: &mut Vec<T>,
        gaps: &mut Vec<Gap>,
    ) -> Outcome {
        if self.may_rewind && seq > 0 && seq < self.next {
            // Nothing was delivered yet: the stream begins here.
            self.next = seq;
        }
        if seq < self.next || seq == u64::MAX || self.held.contains_key(&seq) {
            return Outcome::Duplicate;
        }
        if seq > self.next {
            self.held.insert(seq, (item, size));
            self.held_bytes = self.held_bytes.saturating_add(size);
            self.waiting_since.get_or_insert(now);
            if self.held.len() > self.limits.count || self.held_bytes > self.limits.bytes {
                self.skip_missing(deliver, gaps);
            }
            return Outcome::Held;
        }
        deliver.push(item);
        self.may_rewind = false;
        self.next = self.next.saturating_add(1);
        self.drain_ready(deliver);
        self.waiting_since = self.is_incomplete().then_some(now);
        Outcome::Delivered
    }

    /// The sender says it has sent up to `high`.
    pub fn announce(&mut self, high: u64, now: Instant) {
        // The last number can never be delivered (see `receive`).
        let high = high.min(u64::MAX - 1);
        if high > self.announced {
            self.announced = high;
            if self.is_incomplete() {
                self.waiting_since.get_or_insert(now);
            }
        }
    }

    /// When [`Stream::expire`] has something to do, if ever.
    pub fn deadline(&self, timeout: Duration) -> Option<Instant> {
        self.waiting_since.map(|since| since + timeout)
    }

    /// Gives up on missing messages that were waited for `timeout`: reports
    /// them as gaps and delivers what was held behind them.
    pub fn expire(
        &mut self,
        now: Instant,
        timeout: Duration,
        deliver: &mut Vec<T>,
        gaps: &mut Vec<Gap>,
    ) {
        match self.waiting_since {
            Some(since) if now >= since + timeout => self.skip_missing(deliver, gaps),
            _ => {}
        }
    }

    fn skip_missing(&mut self, deliver: &mut Vec<T>, gaps: &mut Vec<Gap>) {
        self.may_rewind = false;
        while let Some((&seq, _)) = self.held.first_key_value() {
            if seq > self.next {
                gaps.push(Gap {
                    first: self.next,
                    count: seq - self.next,
                });
                self.next = seq;
            }
            self.drain_ready(deliver);
        }
        if self.announced >= self.next {
            gaps.push(Gap {
                first: self.next,
                count: self.announced - self.next + 1,
            });
            self.next = self.announced.saturating_add(1);
        }
        self.waiting_since = None;
    }

    fn drain_ready(&mut self, deliver: &mut Vec<T>) {
        while let Some((item, size)) = self.held.remove(&self.next) {
            self.held_bytes -= size;
            deliver.push(item);
            self.next = self.next.saturating_add(1);
        }
    }

    fn is_incomplete(&self) -> bool {
        !self.held.is_empty() || self.announced >= self.next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_millis(100);

    fn limits(count: usize) -> HeldLimits {
        HeldLimits {
            count,
            bytes: usize::MAX,
        }
    }

    fn feed(
        stream: &mut Stream<u64>,
        seqs: &[u64],
        now: Instant,
    ) -> (Vec<u64>, Vec<Gap>, Vec<Outcome>) {
        let (mut out, mut gaps, mut outcomes) = (Vec::new(), Vec::new(), Vec::new());
        for &seq in seqs {
            outcomes.push(stream.receive(seq, seq, 8, now, &mut out, &mut gaps));
        }
        (out, gaps, outcomes)
    }

    #[test]
    fn in_order_is_delivered_at_once() {
        let mut stream = Stream::starting_at(1, limits(100));
        let (out, gaps, _) = feed(&mut stream, &[1, 2, 3], Instant::now());
        assert_eq!(out, vec![1, 2, 3]);
        assert!(gaps.is_empty());
        assert_eq!(stream.deadline(TIMEOUT), None);
    }

    #[test]
    fn duplicates_are_dropped() {
        let mut stream = Stream::starting_at(1, limits(100));
        let (out, _, outcomes) = feed(&mut stream, &[1, 1, 2, 1, 2, 3, 3], Instant::now());
        assert_eq!(out, vec![1, 2, 3]);
        assert_eq!(
            outcomes
                .iter()
                .filter(|o| **o == Outcome::Duplicate)
                .count(),
            4
        );
    }

    #[test]
    fn reordered_messages_come_out_in_order() {
        let mut stream = Stream::starting_at(1, limits(100));
        let (out, gaps, _) = feed(&mut stream, &[2, 4, 3, 1, 5, 4], Instant::now());
        assert_eq!(out, vec![1, 2, 3, 4, 5]);
        assert!(gaps.is_empty());
        assert_eq!(stream.deadline(TIMEOUT), None, "nothing left to wait for");
    }

    #[test]
    fn a_hole_is_reported_after_the_timeout_and_delivery_goes_on() {
        let t0 = Instant::now();
        let mut stream = Stream::starting_at(1, limits(100));
        let (out, _, _) = feed(&mut stream, &[1, 2, 5, 6], t0);
        assert_eq!(out, vec![1, 2]);
        assert_eq!(stream.deadline(TIMEOUT), Some(t0 + TIMEOUT));
        let (mut out, mut gaps) = (Vec::new(), Vec::new());
        stream.expire(t0 + TIMEOUT / 2, TIMEOUT, &mut out, &mut gaps);
        assert!(out.is_empty() && gaps.is_empty(), "too early");
        stream.expire(t0 + TIMEOUT, TIMEOUT, &mut out, &mut gaps);
        assert_eq!(out, vec![5, 6]);
        assert_eq!(gaps, vec![Gap { first: 3, count: 2 }]);
        let (late, _, outcomes) = feed(&mut stream, &[3], t0 + TIMEOUT * 2);
        assert!(late.is_empty());
        assert_eq!(
            outcomes,
            vec![Outcome::Duplicate],
            "a message reported lost is not delivered late"
        );
    }

    #[test]
    fn a_lost_last_message_is_found_from_the_heartbeat() {
        let t0 = Instant::now();
        let mut stream = Stream::starting_at(1, limits(100));
        feed(&mut stream, &[1, 2], t0);
        stream.announce(4, t0);
        let (mut out, mut gaps) = (Vec::new(), Vec::new());
        stream.expire(t0 + TIMEOUT, TIMEOUT, &mut out, &mut gaps);
        assert_eq!(gaps, vec![Gap { first: 3, count: 2 }]);
        assert_eq!(stream.next_expected(), 5);
    }

    #[test]
    fn an_announcement_of_what_already_arrived_starts_no_timer() {
        let t0 = Instant::now();
        let mut stream = Stream::starting_at(1, limits(100));
        feed(&mut stream, &[1, 2], t0);
        stream.announce(2, t0);
        assert_eq!(stream.deadline(TIMEOUT), None);
    }

    #[test]
    fn a_message_in_flight_when_the_heartbeat_overtook_it_is_not_a_gap() {
        let t0 = Instant::now();
        let mut stream = Stream::starting_at(1, limits(100));
        stream.announce(2, t0);
        let (out, gaps, _) = feed(&mut stream, &[1, 2], t0 + TIMEOUT / 2);
        assert_eq!(out, vec![1, 2]);
        assert!(gaps.is_empty());
        assert_eq!(stream.deadline(TIMEOUT), None);
    }

    #[test]
    fn too_many_held_messages_declare_the_gap_at_once() {
        let t0 = Instant::now();
        let mut stream = Stream::starting_at(1, limits(3));
        let (out, gaps, _) = feed(&mut stream, &[3, 4, 5, 6], t0);
        assert_eq!(out, vec![3, 4, 5, 6]);
        assert_eq!(gaps, vec![Gap { first: 1, count: 2 }]);
    }

    #[test]
    fn several_holes_are_each_reported() {
        let t0 = Instant::now();
        let mut stream = Stream::starting_at(10, limits(100));
        feed(&mut stream, &[12, 15], t0);
        let (mut out, mut gaps) = (Vec::new(), Vec::new());
        stream.expire(t0 + TIMEOUT, TIMEOUT, &mut out, &mut gaps);
        assert_eq!(out, vec![12, 15]);
        assert_eq!(
            gaps,
            vec![
                Gap {
                    first: 10,
                    count: 2
                },
                Gap {
                    first: 13,
                    count: 2
                }
            ]
        );
    }

    #[test]
    fn too_many_held_bytes_declare_the_gap_at_once() {
        let t0 = Instant::now();
        let mut stream = Stream::starting_at(
            1,
            HeldLimits {
                count: 100,
                bytes: 20,
            },
        );
        let (out, gaps, _) = feed(&mut stream, &[3, 4], t0);
        assert!(out.is_empty() && gaps.is_empty());
        assert_eq!(stream.held_bytes(), 16);
        let (out, gaps, _) = feed(&mut stream, &[5], t0);
        assert_eq!(out, vec![3, 4, 5]);
        assert_eq!(gaps, vec![Gap { first: 1, count: 2 }]);
        assert_eq!(stream.held_bytes(), 0);
    }

    #[test]
    fn hostile_numbers_neither_overflow_nor_wrap() {
        let t0 = Instant::now();
        let mut stream = Stream::starting_at(u64::MAX - 1, limits(100));
        let (out, _, outcomes) = feed(&mut stream, &[u64::MAX, u64::MAX - 1, u64::MAX], t0);
        assert_eq!(out, vec![u64::MAX - 1]);
        assert_eq!(
            outcomes,
            vec![Outcome::Duplicate, Outcome::Delivered, Outcome::Duplicate]
        );
        let mut stream = Stream::<u64>::starting_at(1, limits(100));
        stream.announce(u64::MAX, t0);
        let (mut out, mut gaps) = (Vec::new(), Vec::new());
        stream.expire(t0 + TIMEOUT, TIMEOUT, &mut out, &mut gaps);
        assert_eq!(
            gaps,
            vec![Gap {
                first: 1,
                count: u64::MAX - 1
            }]
        );
        assert_eq!(stream.next_expected(), u64::MAX);
    }

    /// A stream begun by its sender's word that it had sent up to 10. Those
    /// that were on their way (the word overtook them) begin it instead and
    /// come out in order; what is missing after the first of them is
    /// reported as for any stream; nothing before it is waited for.
    #[test]
    fn messages_on_their_way_when_the_sender_was_first_heard_of_are_delivered() {
        let t0 = Instant::now();
        let mut stream = Stream::after_announced(10, limits(100));
        assert_eq!(stream.deadline(TIMEOUT), None, "nothing is waited for");
        let (out, gaps, outcomes) = feed(&mut stream, &[8, 9, 9, 11, 10, 7, 12], t0);
        assert_eq!(out, vec![8, 9, 10, 11, 12]);
        assert!(gaps.is_empty());
        assert_eq!(outcomes[5], Outcome::Duplicate, "7 came after 8");
        // One that was on its way, then none of those after it up to the word.
        let mut stream = Stream::after_announced(10, limits(100));
        let (out, _, _) = feed(&mut stream, &[8, 7], t0);
        assert_eq!(out, vec![8]);
        let (mut out, mut gaps) = (Vec::new(), Vec::new());
        stream.expire(t0 + TIMEOUT, TIMEOUT, &mut out, &mut gaps);
        assert_eq!(gaps, vec![Gap { first: 9, count: 2 }]);
        // The first to arrive may also be one after the word.
        let mut stream = Stream::after_announced(10, limits(100));
        let (out, _, _) = feed(&mut stream, &[11, 10], t0);
        assert_eq!(out, vec![11]);
        // Or one past a hole: the hole is reported, as for any stream, and
        // nothing from before the word is taken afterwards.
        let mut stream = Stream::after_announced(10, limits(100));
        let (out, _, _) = feed(&mut stream, &[13], t0);
        assert!(out.is_empty());
        let (mut out, mut gaps) = (Vec::new(), Vec::new());
        stream.expire(t0 + TIMEOUT, TIMEOUT, &mut out, &mut gaps);
        assert_eq!(
            (out, gaps),
            (
                vec![13],
                vec![Gap {
                    first: 11,
                    count: 2
                }]
            )
        );
        let (late, _, _) = feed(&mut stream, &[9, 12], t0 + TIMEOUT);
        assert!(late.is_empty(), "settled once the hole was reported");
    }
}
