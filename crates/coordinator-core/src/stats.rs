//! Counters of what a node sent, received, dropped and retried.

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident,)*) => {
        /// Live counters, updated without locks.
        #[derive(Debug, Default)]
        pub struct Stats {
            $($(#[$doc])* pub $name: AtomicU64,)*
        }

        /// A copy of the counters at one moment.
        #[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
        pub struct StatsSnapshot {
            $($(#[$doc])* pub $name: u64,)*
        }

        impl Stats {
            pub fn snapshot(&self) -> StatsSnapshot {
                StatsSnapshot { $($name: self.$name.load(Ordering::Relaxed),)* }
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
}

impl Stats {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}
