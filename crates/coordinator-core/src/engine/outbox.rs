//! This node's broadcasts on their way to the carrier.
//!
//! A broadcast is numbered and queued under one lock, so the carrier sees them
//! in order. When the carrier is idle the caller publishes its own message at
//! once: a lone broadcast costs no hop between tasks and goes out exactly as
//! before batching existed. When broadcasts come faster than the carrier takes
//! them (a publish is still under way, or the last one ended moments ago),
//! they wait here and the node's flushing task publishes everything waiting as
//! one `Batch` frame: a burst costs the broker one message per batch, and the
//! receivers one tag check and one wake-up per batch.

use crate::envelope::{Batch, Codec};
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// A broadcast that comes this soon after the previous publish ended joins
/// the queue instead of being published by its caller: the sender is in a
/// burst, and the next ones will follow it into the same batch.
const BURST: Duration = Duration::from_micros(10);
/// Largest batch, in bytes, unsealed (and never more than `maxMessageSize`).
const BATCH_BYTES: usize = 60 * 1024;
/// Batches that can wait before `broadcast` waits for room.
const BATCHES_QUEUED: usize = 16;

pub(super) struct Outbox {
    queue: Mutex<Queue>,
    /// Wakes the flushing task.
    work: Notify,
    /// Wakes callers waiting for room, or for the queue to empty.
    room: Notify,
    /// The highest number whose publish is over, sent or failed: what
    /// heartbeats announce, so that they never announce a message still
    /// waiting here (its receivers would count it lost if it waited longer
    /// than their `reorderTimeout`).
    settled: AtomicU64,
    batch_bytes: usize,
    from: (u64, u64),
    /// The node stopped: nothing is queued any more, nobody waits for room.
    closed: AtomicBool,
}

struct Queue {
    last_seq: u64,
    /// Batches waiting, each with the number of its last broadcast.
    batches: VecDeque<(Batch, u64)>,
    /// Who publishes now; nobody else may, so the carrier sees one order.
    publisher: Publisher,
    idle_since: Instant,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Publisher {
    Nobody,
    /// A caller, its own broadcast.
    Caller,
    /// The flushing task, whatever waits.
    Task,
}

/// What a caller does with the broadcast it queued.
pub(super) enum Queued {
    /// Publish it now, numbered `seq`, then call [`Outbox::published`].
    Publish { seq: u64 },
    /// Nothing: the flushing task publishes it with the others.
    Behind { seq: u64 },
}

impl Outbox {
    pub fn new(codec: &Codec, from: u64, from_incarnation: u64) -> Self {
        Self {
            queue: Mutex::new(Queue {
                last_seq: 0,
                batches: VecDeque::new(),
                publisher: Publisher::Nobody,
                idle_since: Instant::now() - BURST,
            }),
            work: Notify::new(),
            room: Notify::new(),
            settled: AtomicU64::new(0),
            batch_bytes: codec.batch_limit().min(BATCH_BYTES),
            from: (from, from_incarnation),
            closed: AtomicBool::new(false),
        }
    }

    /// Numbers a broadcast and queues it, or hands it back to be published
    /// by the caller. `plain` is its size unsealed (from [`Codec::check`]).
    /// Waits while the queue is full; `None` once the node has stopped.
    pub async fn push(&self, plain: usize, topic: &[u8], payload: &[u8]) -> Option<Queued> {
        loop {
            let mut room = pin!(self.room.notified());
            room.as_mut().enable();
            if self.closed.load(Ordering::Acquire) {
                return None;
            }
            if let Some(queued) = self.try_push(plain, topic, payload) {
                return Some(queued);
            }
            room.await;
        }
    }

    /// The node stopped: callers waiting for room give up.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.room.notify_waiters();
    }

    fn try_push(&self, plain: usize, topic: &[u8], payload: &[u8]) -> Option<Queued> {
        let mut queue = self.queue.lock();
        let seq = queue.last_seq + 1;
        let idle = queue.publisher == Publisher::Nobody;
        if idle && queue.idle_since.elapsed() >= BURST {
            queue.publisher = Publisher::Caller;
            queue.last_seq = seq;
            return Some(Queued::Publish { seq });
        }
        let fits = queue.batches.back().is_some_and(|(batch, _)| {
            batch.size() + batch.record_size(topic, payload.len()) <= self.batch_bytes
        });
        if !fits {
            if queue.batches.len() >= BATCHES_QUEUED {
                return None;
            }
            let batch = Batch::new(self.from.0, self.from.1, self.batch_bytes.max(plain));
            queue.batches.push_back((batch, seq));
        }
        let (batch, last) = queue.batches.back_mut().expect("a batch is queued");
        batch.push(seq, topic, payload);
        *last = seq;
        queue.last_seq = seq;
        if idle {
            queue.publisher = Publisher::Task;
            drop(queue);
            self.work.notify_one();
        }
        Some(Queued::Behind { seq })
    }

    /// The caller's own publish of `seq` is over. A failed one is taken back
    /// when nothing was queued behind it, so that it leaves no gap.
    pub fn published(&self, seq: u64, sent: bool) {
        let mut queue = self.queue.lock();
        if !sent && queue.last_seq == seq && queue.batches.is_empty() {
            queue.last_seq = seq - 1;
            self.settled.store(seq - 1, Ordering::Release);
        } else {
            self.settled.store(seq, Ordering::Release);
        }
        self.hand_over(queue);
    }

    /// The next batch for the flushing task, or `None` once nothing waits.
    pub fn take(&self) -> Option<(Batch, u64)> {
        let mut queue = self.queue.lock();
        if queue.publisher != Publisher::Task {
            return None;
        }
        match queue.batches.pop_front() {
            Some(next) => {
                drop(queue);
                self.room.notify_waiters();
                Some(next)
            }
            None => {
                self.hand_over(queue);
                None
            }
        }
    }

    /// The flushing task's publish up to `seq` is over.
    pub fn settle(&self, seq: u64) {
        self.settled.store(seq, Ordering::Release);
    }

    /// Whoever published is done: the flushing task takes what waits, or the
    /// carrier is idle.
    fn hand_over(&self, mut queue: parking_lot::MutexGuard<'_, Queue>) {
        if queue.batches.is_empty() {
            queue.publisher = Publisher::Nobody;
            queue.idle_since = Instant::now();
            drop(queue);
            self.room.notify_waiters();
        } else {
            queue.publisher = Publisher::Task;
            drop(queue);
            self.work.notify_one();
        }
    }

    /// Waits until the flushing task has work.
    pub async fn work(&self) {
        self.work.notified().await
    }

    /// The highest broadcast number whose publish is over.
    pub fn settled(&self) -> u64 {
        self.settled.load(Ordering::Acquire)
    }

    /// Waits until every queued broadcast has been published (or failed).
    pub async fn drained(&self) {
        loop {
            let mut room = pin!(self.room.notified());
            room.as_mut().enable();
            {
                let queue = self.queue.lock();
                let idle = queue.publisher == Publisher::Nobody && queue.batches.is_empty();
                if idle || self.closed.load(Ordering::Acquire) {
                    return;
                }
            }
            room.await;
        }
    }
}

/// Ends a caller's own publish even if its future is dropped half-way, so the
/// queue never stays busy for nobody.
pub(super) struct Publishing<'a> {
    pub outbox: &'a Outbox,
    pub seq: u64,
    pub sent: Option<bool>,
}

impl Drop for Publishing<'_> {
    fn drop(&mut self) {
        // Cancelled: whether it went out is unknown, so it is not taken back.
        self.outbox.published(self.seq, self.sent.unwrap_or(true));
    }
}
