//! This node's broadcasts on their way to the carrier, sans-IO.
//!
//! Broadcasts are numbered here, in the order the carrier will see them. When
//! the carrier is idle a broadcast goes out alone at once (its caller
//! publishes it: no hop between tasks). When broadcasts come faster than the
//! carrier takes them (a publish is still under way, or the last one ended
//! moments ago), they wait here and go out together as one `Batch` frame once
//! the publish before them is over: a burst costs the broker one message per
//! batch, and the receivers one tag check and one wake-up per batch.
//!
//! A number is never given back. A publish that failed, or whose outcome is
//! unknown (a time-out, a carrier that wrote to some peers and then failed),
//! may have reached some receivers: the next broadcast carries the next
//! number, and the receivers that missed it report a gap.

use crate::envelope::{Batch, FramePool};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// A broadcast that comes this soon after the previous publish ended joins
/// the queue instead of going out alone: the sender is in a burst, and the
/// next ones will follow it into the same batch.
pub(super) const BURST: Duration = Duration::from_micros(10);
pub(super) use crate::envelope::BATCH_BYTES;

pub(super) struct Outbox {
    last_seq: u64,
    /// Batches waiting, each with the number of its last broadcast and the
    /// bytes it counts for in `queued_bytes`.
    batches: VecDeque<(Batch, u64, usize)>,
    /// Bytes of the batches waiting.
    queued_bytes: usize,
    /// A publish is under way; nothing else goes out until it is over, so
    /// the carrier sees one order.
    publishing: bool,
    idle_since: Option<Instant>,
    /// The highest number whose publish is over, sent or failed: what
    /// heartbeats announce, so that they never announce a message still
    /// waiting here (its receivers would count it lost if it waited longer
    /// than their `reorderTimeout`).
    settled: u64,
    batch_bytes: usize,
    max_queued_bytes: usize,
    from: (u64, u64),
    /// Where batches are written (the codec's buffers).
    pool: FramePool,
}

/// What became of a broadcast handed to [`Outbox::push`].
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Pushed {
    /// The carrier is idle: publish it now, alone, numbered `seq`.
    Alone { seq: u64 },
    /// Queued behind a publish under way, numbered `seq`.
    Queued { seq: u64 },
    /// The queue is full (in bytes): not numbered; try again once a publish is over.
    Full,
}

impl Outbox {
    /// `batch_bytes`: the largest batch, unsealed; `max_queued_bytes`: what
    /// may wait at most.
    pub fn new(
        from: (u64, u64),
        batch_bytes: usize,
        max_queued_bytes: usize,
        pool: FramePool,
    ) -> Self {
        Self {
            last_seq: 0,
            batches: VecDeque::new(),
            queued_bytes: 0,
            publishing: false,
            idle_since: None,
            settled: 0,
            batch_bytes: batch_bytes.min(BATCH_BYTES),
            max_queued_bytes,
            from,
            pool,
        }
    }

    /// Numbers a broadcast and queues it, or hands it back to go out alone.
    /// `plain` is its size unsealed (from [`crate::envelope::Codec::check`]).
    pub fn push(&mut self, now: Instant, plain: usize, topic: &[u8], payload: &[u8]) -> Pushed {
        let in_burst = self
            .idle_since
            .is_some_and(|since| now.saturating_duration_since(since) < BURST);
        if !self.publishing && self.batches.is_empty() && !in_burst {
            self.last_seq += 1;
            self.publishing = true;
            return Pushed::Alone { seq: self.last_seq };
        }
        let fits = self.batches.back().is_some_and(|(batch, ..)| {
            batch.size() + batch.record_size(topic, payload.len()) <= self.batch_bytes
        });
        // One broadcast may always wait, whatever its size, or nothing could.
        if !self.batches.is_empty() && self.queued_bytes + plain > self.max_queued_bytes {
            return Pushed::Full;
        }
        if !fits {
            let capacity = self.batch_bytes.max(plain);
            let batch = Batch::in_pool(&self.pool, self.from.0, self.from.1, capacity);
            self.batches.push_back((batch, 0, 0));
        }
        self.queued_bytes += plain;
        self.last_seq += 1;
        let seq = self.last_seq;
        let (batch, last, bytes) = self.batches.back_mut().expect("a batch is queued");
        batch.push(seq, topic, payload);
        *last = seq;
        *bytes += plain;
        Pushed::Queued { seq }
    }

    /// The next batch to publish, if the carrier is free and one waits.
    pub fn take(&mut self) -> Option<(Batch, u64)> {
        if self.publishing {
            return None;
        }
        let (batch, last, bytes) = self.batches.pop_front()?;
        self.queued_bytes -= bytes;
        self.publishing = true;
        Some((batch, last))
    }

    /// The publish under way, up to number `last`, is over (sent, failed or
    /// of unknown outcome: the numbers stay used either way).
    pub fn published(&mut self, now: Instant, last: u64) {
        self.publishing = false;
        self.settled = self.settled.max(last);
        if self.batches.is_empty() {
            self.idle_since = Some(now);
        }
    }

    /// The defect the simulator must find (tests only): a failed lone
    /// broadcast's number is given back when nothing was queued behind it.
    #[cfg(test)]
    pub fn give_back(&mut self, seq: u64) {
        if self.last_seq == seq && self.batches.is_empty() {
            self.last_seq -= 1;
            self.settled = self.settled.min(seq - 1);
        }
    }

    /// The highest broadcast number whose publish is over.
    pub fn settled(&self) -> u64 {
        self.settled
    }

    /// The highest broadcast number given out.
    #[cfg(test)]
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Nothing waits and nothing is being published.
    pub fn is_drained(&self) -> bool {
        !self.publishing && self.batches.is_empty()
    }

    /// Whether a batch waits and the carrier is free for it.
    pub fn ready(&self) -> bool {
        !self.publishing && !self.batches.is_empty()
    }

    /// Bytes waiting (each broadcast counted at its size as an envelope of its own).
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes
    }

    /// Broadcasts waiting (numbered, not yet handed to the carrier).
    pub fn queued_messages(&self) -> u64 {
        self.batches
            .iter()
            .map(|(batch, ..)| batch.len() as u64)
            .sum()
    }

    /// The node stops: what waits is dropped; returns how many broadcasts.
    pub fn clear(&mut self) -> u64 {
        let dropped = self.queued_messages();
        self.batches.clear();
        self.queued_bytes = 0;
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outbox() -> Outbox {
        Outbox::new((1, 1), 1024, 4096, FramePool::new(2048))
    }

    #[test]
    fn an_idle_carrier_takes_a_lone_broadcast_and_a_busy_one_queues_them() {
        let t0 = Instant::now();
        let mut outbox = outbox();
        assert_eq!(outbox.push(t0, 70, b"t", b"a"), Pushed::Alone { seq: 1 });
        assert_eq!(outbox.push(t0, 70, b"t", b"b"), Pushed::Queued { seq: 2 });
        assert_eq!(outbox.push(t0, 70, b"t", b"c"), Pushed::Queued { seq: 3 });
        assert!(outbox.take().is_none(), "one publish at a time");
        outbox.published(t0, 1);
        assert_eq!(outbox.settled(), 1);
        let (batch, last) = outbox.take().expect("the queued ones");
        assert_eq!((batch.len(), last), (2, 3));
        outbox.published(t0, 3);
        assert!(outbox.is_drained());
        // Within the burst window the next one still queues.
        assert_eq!(outbox.push(t0, 70, b"t", b"d"), Pushed::Queued { seq: 4 });
        outbox.take();
        outbox.published(t0, 4);
        assert_eq!(
            outbox.push(t0 + BURST, 70, b"t", b"e"),
            Pushed::Alone { seq: 5 }
        );
    }

    #[test]
    fn a_failed_publish_keeps_its_number() {
        let t0 = Instant::now();
        let mut outbox = outbox();
        assert_eq!(outbox.push(t0, 70, b"t", b"a"), Pushed::Alone { seq: 1 });
        // Failed, or unknown: either way the number is spent.
        outbox.published(t0, 1);
        assert_eq!(outbox.settled(), 1);
        assert_eq!(
            outbox.push(t0 + BURST, 70, b"t", b"b"),
            Pushed::Alone { seq: 2 }
        );
    }

    #[test]
    fn the_queue_is_bounded_in_bytes() {
        let t0 = Instant::now();
        let mut outbox = Outbox::new((1, 1), 1024, 2048, FramePool::new(2048));
        outbox.push(t0, 70, b"t", b"a");
        let payload = [0u8; 900];
        assert!(matches!(
            outbox.push(t0, 960, b"t", &payload),
            Pushed::Queued { .. }
        ));
        assert!(matches!(
            outbox.push(t0, 960, b"t", &payload),
            Pushed::Queued { .. }
        ));
        assert_eq!(outbox.push(t0, 960, b"t", &payload), Pushed::Full);
        assert_eq!(outbox.last_seq(), 3, "a refused broadcast takes no number");
        outbox.published(t0, 1);
        outbox.take().expect("a batch");
        assert!(matches!(
            outbox.push(t0, 960, b"t", &payload),
            Pushed::Queued { seq: 4 }
        ));
    }
}
