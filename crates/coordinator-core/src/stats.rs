//! Counters of what a node sent, received, dropped and retried.

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident,)*) => {
        /// Live counters, updated without locks.
        #[derive(Debug, Default)]
        pub struct Stats {
            $($(#[$doc])* pub $name: AtomicU64,)*
            /// How long requests took to get their reply.
            pub request_latency: Latency,
        }

        /// A copy of the counters at one moment.
        #[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
        pub struct StatsSnapshot {
            $($(#[$doc])* pub $name: u64,)*
            /// How long requests took to get their reply.
            pub request_latency: LatencySnapshot,
        }

        impl Stats {
            pub fn snapshot(&self) -> StatsSnapshot {
                StatsSnapshot {
                    $($name: self.$name.load(Ordering::Relaxed),)*
                    request_latency: self.request_latency.snapshot(),
                }
            }
        }
    };
}

counters! {
    /// Broadcasts this node published.
    broadcasts_sent,
    /// Point-to-point messages, requests and replies this node sent.
    direct_sent,
    /// Heartbeats, joins and announcements this node sent.
    heartbeats_sent,
    /// Frames that carried several broadcasts of this node at once (sent
    /// while the carrier was still busy with the ones before).
    batches_sent,
    /// Broadcasts that could not be handed to the carrier after
    /// `broadcast` had returned (the receivers report them as a gap).
    broadcasts_failed,
    /// Frames the carrier handed to this node.
    frames_received,
    /// Of those, batches of several envelopes.
    batches_received,
    /// Broadcasts delivered to this node's subscribers (after de-duplication).
    broadcasts_delivered,
    /// Point-to-point messages and requests delivered to this node's inbox.
    direct_delivered,
    /// Frames that were not valid envelopes (garbage, truncated, unknown version).
    dropped_malformed,
    /// Frames without a valid tag for the cluster key.
    dropped_unauthenticated,
    /// Frames larger than `maxMessageSize`.
    dropped_too_large,
    /// Frames already delivered (duplicates from the carrier or a replay).
    dropped_duplicate,
    /// Frames for another incarnation, or from a departed one.
    dropped_stale,
    /// Gaps found in senders' streams.
    gaps,
    /// Messages lost in those gaps.
    messages_lost,
    /// Messages dropped because a subscriber or the inbox did not keep up.
    dropped_overflow,
    /// Sends the carrier refused (link down, no route).
    send_failures,
    /// Requests that got no reply in time.
    requests_timed_out,
    /// Times the carrier reported its link down.
    link_downs,
    /// Times the carrier reported its link up again.
    link_ups,
    /// Bytes of the frames this node handed to the carrier.
    bytes_sent,
    /// Bytes of the frames the carrier handed to this node.
    bytes_received,
}

/// Upper bounds of [`Latency`]'s buckets, in microseconds: 100 µs to 10 s.
pub const LATENCY_BOUNDS_MICROS: [u64; 16] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000,
];

/// A histogram of durations with fixed buckets, updated without locks.
#[derive(Debug, Default)]
pub struct Latency {
    /// Counts per bucket of [`LATENCY_BOUNDS_MICROS`], the last one for
    /// what is longer than all of them.
    buckets: [AtomicU64; LATENCY_BOUNDS_MICROS.len() + 1],
    sum_micros: AtomicU64,
}

/// A copy of a [`Latency`]: cumulative counts per upper bound, as
/// Prometheus histograms have them.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct LatencySnapshot {
    /// `(upper bound in microseconds, how many took at most that)`.
    pub cumulative: Vec<(u64, u64)>,
    /// How many in all (the `+Inf` bucket).
    pub count: u64,
    pub sum_micros: u64,
}

impl Latency {
    pub fn record(&self, took: std::time::Duration) {
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        let bucket = LATENCY_BOUNDS_MICROS.partition_point(|&bound| bound < micros);
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> LatencySnapshot {
        let mut total = 0;
        let mut cumulative = Vec::with_capacity(LATENCY_BOUNDS_MICROS.len());
        for (bound, bucket) in LATENCY_BOUNDS_MICROS.iter().zip(&self.buckets) {
            total += bucket.load(Ordering::Relaxed);
            cumulative.push((*bound, total));
        }
        total += self.buckets[LATENCY_BOUNDS_MICROS.len()].load(Ordering::Relaxed);
        LatencySnapshot {
            cumulative,
            count: total,
            sum_micros: self.sum_micros.load(Ordering::Relaxed),
        }
    }
}

impl Stats {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn latencies_fall_in_cumulative_buckets() {
        let latency = Latency::default();
        latency.record(Duration::from_micros(100));
        latency.record(Duration::from_micros(101));
        latency.record(Duration::from_secs(60));
        let snapshot = latency.snapshot();
        assert_eq!(snapshot.count, 3);
        assert_eq!(snapshot.cumulative[0], (100, 1));
        assert_eq!(snapshot.cumulative[1], (250, 2));
        assert_eq!(snapshot.cumulative.last(), Some(&(10_000_000, 2)));
        assert_eq!(snapshot.sum_micros, 60_000_201);
    }
}
