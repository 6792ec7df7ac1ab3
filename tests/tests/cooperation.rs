//! A task that sends in a loop shares its thread: the receiving side runs
//! meanwhile, even when every send finishes at once (the in-process carrier).

use bytes::Bytes;
use coordinator::testing::MemoryNetwork;
use coordinator::{Coordinator, Settings};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tests::wait::converge;

const MESSAGES: u64 = 5_000;

/// Most messages sent and not yet read, seen by a sender of `MESSAGES` messages
/// on a runtime of one thread, which the sender, both nodes and the reader share.
async fn most_behind() -> u64 {
    let network = MemoryNetwork::new();
    let a = Arc::new(network.start(Settings::new(1)).unwrap());
    let b = Arc::new(network.start(Settings::new(2)).unwrap());
    let nodes: Vec<Arc<dyn Coordinator>> = vec![a.clone(), b.clone()];
    converge(&nodes, Duration::from_secs(10)).await;
    let mut inbox = b.inbox().unwrap();
    let read = Arc::new(AtomicU64::new(0));
    let counter = read.clone();
    let reader = tokio::spawn(async move {
        while inbox.recv().await.is_some() {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    });
    let mut most_behind = 0;
    let payload = Bytes::from_static(b"tight loop");
    for sent in 1..=MESSAGES {
        a.send(2, payload.clone()).await.unwrap();
        most_behind = most_behind.max(sent - read.load(Ordering::Relaxed));
    }
    reader.abort();
    most_behind
}

#[tokio::test]
async fn a_sender_in_a_tight_loop_lets_the_receiver_run() {
    let behind = most_behind().await;
    // The runtime's budget is 128 operations per turn: the reader gets its
    // turn every few hundred messages, not after the last one.
    assert!(
        behind < 1_000,
        "the receiver fell {behind} of {MESSAGES} messages behind: the sender never yielded"
    );
}
