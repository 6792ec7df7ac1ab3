//! A subscriber that does not keep up loses messages, and is told so.

use bytes::Bytes;
use coordinator::testing::MemoryNetwork;
use coordinator::{Coordinator, Event, Settings, SubscribeOptions};
use std::time::Duration;
use tests::wait::{converge, event, within};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_subscription_drops_and_reports_what_it_dropped() {
    let network = MemoryNetwork::new();
    let sender = std::sync::Arc::new(network.start(Settings::new(1)).unwrap());
    let receiver = std::sync::Arc::new(network.start(Settings::new(2).queue_capacity(4)).unwrap());
    let nodes: Vec<std::sync::Arc<dyn Coordinator>> = vec![sender.clone(), receiver.clone()];
    converge(&nodes, Duration::from_secs(10)).await;
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
