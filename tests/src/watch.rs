//! What a node's application sees of one sender's broadcasts on a topic:
//! each message, and each loss it is told of.

use coordinator_core::{Coordinator, Event, Node, NodeId, SubscribeOptions};
use parking_lot::Mutex;
use std::collections::HashSet;
use std::sync::Arc;

/// The broadcasts received (by number), the repeats, and the gaps reported.
#[derive(Default)]
pub struct Seen {
    pub received: HashSet<u64>,
    pub duplicates: u64,
    /// `(first, count)` of each gap reported.
    pub gaps: Vec<(u64, u64)>,
}

impl Seen {
    /// Broadcast `seq` was either received or reported missing.
    pub fn accounted(&self, seq: u64) -> bool {
        self.received.contains(&seq) || self.gapped(seq)
    }

    /// Broadcast `seq` was reported missing.
    pub fn gapped(&self, seq: u64) -> bool {
        self.gaps
            .iter()
            .any(|&(first, count)| (first..first + count).contains(&seq))
    }

    /// How many broadcasts the gaps reported.
    pub fn missed(&self) -> u64 {
        self.gaps.iter().map(|&(_, count)| count).sum()
    }
}

/// Follows what `node`'s application gets of `from`'s broadcasts on
/// `topic`, until the returned task is aborted. Panics if the test's own
/// reading falls behind (the node drops from its queues): what it records
/// must be about the carrier.
pub async fn watch(
    node: &Arc<Node>,
    topic: &str,
    from: NodeId,
) -> (Arc<Mutex<Seen>>, tokio::task::JoinHandle<()>) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let mut subscription = node
        .subscribe(topic, SubscribeOptions::default())
        .await
        .unwrap();
    let mut events = node.events();
    let reader = {
        let seen = seen.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    message = subscription.recv() => {
                        let Some(message) = message else { return };
                        let mut seen = seen.lock();
                        if !seen.received.insert(message.seq) {
                            seen.duplicates += 1;
                        }
                    }
                    event = events.next_event() => match event {
                        Some(Event::Gap { from: sender, first, count, .. }) if sender == from => {
                            seen.lock().gaps.push((first, count));
                        }
                        Some(Event::Overflow { queue, dropped }) => {
                            panic!("the test's reader fell behind: {dropped} dropped from {queue}");
                        }
                        Some(_) => {}
                        None => return,
                    },
                }
            }
        })
    };
    (seen, reader)
}
