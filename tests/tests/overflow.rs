//! A subscriber that does not keep up loses messages, and is told so.

use bytes::Bytes;
use coordinator::testing::MemoryNetwork;
use coordinator::{Coordinator, Event, Settings, SubscribeOptions};
use std::sync::Arc;
use std::time::Duration;
use tests::wait::{converge, event, within};

/// Node 1 with default settings and node 2 with `receiver`, seeing each other.
async fn pair(receiver: Settings) -> (Arc<coordinator::Node>, Arc<coordinator::Node>) {
    let network = MemoryNetwork::new();
    let sender = Arc::new(network.start(Settings::new(1)).unwrap());
    let receiver = Arc::new(network.start(receiver).unwrap());
    let nodes: Vec<Arc<dyn Coordinator>> = vec![sender.clone(), receiver.clone()];
    converge(&nodes, Duration::from_secs(10)).await;
    (sender, receiver)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_subscription_drops_and_reports_what_it_dropped() {
    let (sender, receiver) = pair(Settings::new(2).queue_capacity(4)).await;
    let mut slow = receiver
        .subscribe("busy", SubscribeOptions::default())
        .await
        .unwrap();
    let mut events = receiver.events();
    for i in 0..10 {
        sender
            .broadcast("busy", Bytes::from(i.to_string()))
            .await
            .unwrap();
    }
    let mut overflowed = 0;
    within(Duration::from_secs(10), "six overflow reports", async {
        while overflowed < 6 {
            if let Event::Overflow { queue, dropped } =
                event(&mut events, |e| matches!(e, Event::Overflow { .. })).await
            {
                assert_eq!(queue, "subscription busy");
                overflowed += dropped;
            }
        }
    })
    .await;
    assert_eq!(receiver.stats().dropped_overflow, 6);
    let kept: Vec<_> = std::iter::from_fn(|| slow.try_recv())
        .map(|m| m.payload)
        .collect();
    assert_eq!(
        kept,
        vec!["0", "1", "2", "3"],
        "the first messages are kept, in order"
    );
}

/// A request the full inbox cannot take is answered at once with an error
/// (not left to time out), and the node goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_the_full_inbox_refuses_fails_at_once() {
    let (sender, receiver) = pair(Settings::new(2).queue_capacity(1)).await;
    let mut inbox = receiver.inbox().unwrap();
    sender
        .send(2, Bytes::from_static(b"fills it"))
        .await
        .unwrap();
    let refused = within(
        Duration::from_secs(5),
        "the refused request",
        sender.request(2, Bytes::from_static(b"?"), Duration::from_secs(30)),
    )
    .await;
    assert!(
        matches!(&refused, Err(coordinator::Error::Remote { node: 2, message }) if message.contains("without replying")),
        "{refused:?}"
    );
    let first = inbox.recv().await.unwrap();
    assert_eq!(first.payload, Bytes::from_static(b"fills it"));
    // The node still answers.
    let answering = tokio::spawn(async move {
        let request = inbox.recv().await.unwrap();
        request.reply(Bytes::from_static(b"!")).await.unwrap();
    });
    let reply = sender
        .request(2, Bytes::from_static(b"?"), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(reply, Bytes::from_static(b"!"));
    answering.await.unwrap();
}

/// A subscription holds at most `max_queue_bytes` for a reader that does not
/// keep up, whatever the count allows: large messages beyond it are dropped
/// and reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_is_bounded_in_bytes_too() {
    let (sender, receiver) = pair(Settings::new(2).memory(64 << 20, 4 << 20, 100_000)).await;
    let mut slow = receiver
        .subscribe("big", SubscribeOptions::default())
        .await
        .unwrap();
    let mut events = receiver.events();
    for _ in 0..5 {
        sender
            .broadcast("big", Bytes::from(vec![1u8; 40_000]))
            .await
            .unwrap();
    }
    within(
        Duration::from_secs(10),
        "an overflow report",
        event(&mut events, |e| matches!(e, Event::Overflow { .. })),
    )
    .await;
    tests::wait::until(Duration::from_secs(10), "three dropped", || {
        receiver.stats().dropped_overflow == 3
    })
    .await;
    // Two of 40 kB fit under 100 kB; once read, there is room again.
    let kept = std::iter::from_fn(|| slow.try_recv()).count();
    assert_eq!(kept, 2);
    sender
        .broadcast("big", Bytes::from(vec![2u8; 40_000]))
        .await
        .unwrap();
    let next = within(Duration::from_secs(10), "the next message", slow.recv())
        .await
        .unwrap();
    assert_eq!(next.payload[0], 2);
}
