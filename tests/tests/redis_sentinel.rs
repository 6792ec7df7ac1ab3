//! `RedisSentinel` through failovers, on real processes: one master, two
//! replicas and three sentinels from Debian's packages.

use bytes::Bytes;
use coordinator::{Event, StreamKind, SubscribeOptions};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tests::harness::{EngineHarness, Harness, RedisSentinelConnector, Timing};
use tests::wait::{converge, event, within};

const LONG: Duration = Duration::from_secs(30);

/// The numbered broadcasts one node received.
#[derive(Default)]
struct Received {
    last: Option<u64>,
    delivered: u64,
}

impl Received {
    /// Takes the next one: each number once, in increasing order.
    fn take(&mut self, message: coordinator::BroadcastMessage) {
        let number: u64 = std::str::from_utf8(&message.payload)
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            self.last.is_none_or(|last| number > last),
            "broadcast {number} after {:?}: a duplicate or out of order",
            self.last
        );
        self.last = Some(number);
        self.delivered += 1;
    }
}

async fn own_sentinels() -> EngineHarness<RedisSentinelConnector> {
    let connector = tokio::task::spawn_blocking(|| {
        let connector = RedisSentinelConnector::own();
        connector.with_sentinels(|sentinels| sentinels.wait_until_failover_ready());
        connector
    })
    .await
    .unwrap();
    EngineHarness::new(connector, Timing::default())
}

/// The master is killed while node 1 broadcasts every 10 ms. The sentinels
/// promote a replica; both nodes report the link down and up again, the
/// broadcasts go on through the new master, and each one sent is delivered
/// once, in order, or reported lost in a gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_master_is_followed_while_broadcasts_go_on() {
    let mut harness = own_sentinels().await;
    let nodes = vec![harness.start(1).await, harness.start(2).await];
    converge(&nodes, LONG).await;
    let mut subscription = nodes[1]
        .subscribe("t", SubscribeOptions::default())
        .await
        .unwrap();
    let mut events = nodes[1].events();
    let mut sender_events = nodes[0].events();

    // Node 1 broadcasts 0, 1, 2, … until told to stop (at most 6,000: 60 s).
    let stop = Arc::new(AtomicBool::new(false));
    let accepted = Arc::new(AtomicU64::new(0));
    let broadcaster = {
        let (node, stop, accepted) = (nodes[0].clone(), stop.clone(), accepted.clone());
        tokio::spawn(async move {
            let mut next = 0u64;
            while !stop.load(Ordering::Relaxed) && next < 6_000 {
                if node
                    .broadcast("t", Bytes::from(next.to_string()))
                    .await
                    .is_ok()
                {
                    accepted.fetch_add(1, Ordering::Relaxed);
                }
                next += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            next
        })
    };
    // Delivery runs before the failover.
    let mut received = Received::default();
    for _ in 0..20 {
        let message = within(LONG, "broadcasts before the failover", subscription.recv())
            .await
            .unwrap();
        received.take(message);
    }

    let connector = harness.connector();
    let old = tokio::task::block_in_place(|| {
        connector.with_sentinels(|sentinels| {
            let old = sentinels.master_named_by(0).expect("a master");
            sentinels.servers[old].kill();
            old
        })
    });
    // The receiver and the sender both leave the dead master and come back
    // on the new one.
    let mut lost = 0u64;
    within(LONG, "the receiver's link down and up again", async {
        let mut down = false;
        loop {
            tokio::select! {
                message = subscription.recv() => received.take(message.expect("subscription open")),
                event = events.next_event() => match event.expect("events open") {
                    Event::LinkDown { .. } => down = true,
                    Event::LinkUp if down => return,
                    Event::Gap { from: 1, stream: StreamKind::Broadcast, count, .. } => lost += count,
                    _ => {}
                },
            }
        }
    })
    .await;
    within(
        LONG,
        "the sender's link up again",
        event(&mut sender_events, |e| matches!(e, Event::LinkUp)),
    )
    .await;
    let new = tokio::task::block_in_place(|| {
        connector.with_sentinels(|sentinels| sentinels.wait_for_new_master(old))
    });
    assert_ne!(new, old);

    // Broadcasts flow through the new master.
    let resumed_at = received.delivered;
    within(LONG, "50 broadcasts after the failover", async {
        while received.delivered < resumed_at + 50 {
            tokio::select! {
                message = subscription.recv() => received.take(message.expect("subscription open")),
                event = events.next_event() => {
                    if let Some(Event::Gap { from: 1, stream: StreamKind::Broadcast, count, .. }) = event {
                        lost += count;
                    }
                }
            }
        }
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let sent = broadcaster.await.unwrap();
    // The tail: what was published before the stop arrives within moments.
    while let Ok(Some(message)) =
        tokio::time::timeout(Duration::from_millis(500), subscription.recv()).await
    {
        received.take(message);
    }
    lost += tests::wait::broadcasts_reported_lost(&mut events, 1, Duration::from_millis(50)).await;
    let accepted = accepted.load(Ordering::Relaxed);
    let delivered = received.delivered;
    assert!(
        delivered + lost >= accepted,
        "{sent} broadcasts, {accepted} accepted, {delivered} delivered, {lost} reported lost"
    );
    assert!(
        delivered <= sent,
        "{delivered} delivered of {sent}: some twice"
    );
    let publishes = tokio::task::block_in_place(|| {
        connector.with_sentinels(|sentinels| sentinels.publish_calls(new))
    });
    eprintln!(
        "killed master: {sent} broadcasts, {accepted} accepted, {delivered} delivered, \
         {lost} reported lost; the new master served {publishes} PUBLISH"
    );
    assert!(
        publishes >= 50,
        "the new master served {publishes} PUBLISH commands"
    );
    for node in &nodes {
        node.leave().await.unwrap();
    }
}

/// A failover that leaves the old master running (`SENTINEL FAILOVER`: it
/// becomes a replica, and pub/sub on it still works locally). The nodes must
/// follow the sentinels' announcement, or a node started afterwards, on the
/// new master, would be cut off from them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_that_keeps_the_old_master_running_is_followed() {
    let mut harness = own_sentinels().await;
    let nodes = vec![harness.start(1).await, harness.start(2).await];
    converge(&nodes, LONG).await;
    let mut events = nodes[1].events();
    let connector = harness.connector();
    let old = tokio::task::block_in_place(|| {
        connector.with_sentinels(|sentinels| {
            let old = sentinels.master_named_by(0).expect("a master");
            sentinels.failover();
            (old, sentinels.wait_for_new_master(old))
        })
    });
    assert_ne!(old.0, old.1);
    within(LONG, "node 2's subscription to move", async {
        let mut down = false;
        loop {
            match events.next_event().await.expect("events open") {
                Event::LinkDown { .. } => down = true,
                Event::LinkUp if down => return,
                _ => {}
            }
        }
    })
    .await;
    let mut all = nodes.clone();
    all.push(harness.start(3).await);
    converge(&all, LONG).await;
    let mut subscription = all[2]
        .subscribe("t", SubscribeOptions::default())
        .await
        .unwrap();
    within(LONG, "node 1's broadcast at node 3", async {
        loop {
            all[0]
                .broadcast("t", Bytes::from_static(b"after"))
                .await
                .unwrap();
            if let Ok(Some(message)) =
                tokio::time::timeout(Duration::from_millis(500), subscription.recv()).await
                && message.payload == "after"
            {
                return;
            }
        }
    })
    .await;
    for node in &all {
        node.leave().await.unwrap();
    }
}

/// A service the sentinels do not know, and sentinels that do not answer,
/// stop the start with an error that names the field and the service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_service_or_no_sentinel_is_a_clear_start_error() {
    let sentinels = tokio::task::spawn_blocking(tests::brokers::RedisSentinels::start)
        .await
        .unwrap();
    let start = |urls: Vec<String>, service: &str| {
        let urls: Vec<String> = urls.iter().map(|url| format!("{url:?}")).collect();
        let text = format!(
            r#"{{"@type": "RedisSentinel", "nodeId": 1, "urls": [{}], "serviceName": {service:?}, "timeout": "2s"}}"#,
            urls.join(", ")
        );
        async move {
            let config = coordinator::CoordinatorConfig::from_json(&text).unwrap();
            match coordinator::start(&config).await {
                Ok(_) => panic!("started with {text}"),
                Err(error) => error.to_string(),
            }
        }
    };
    let error = start(sentinels.urls(), "no-such-service").await;
    assert!(
        error.contains("redisSentinel.urls") && error.contains("no-such-service"),
        "{error}"
    );
    let closed = format!("redis://127.0.0.1:{}", tests::brokers::free_port());
    let error = start(vec![closed.clone()], "mymaster").await;
    assert!(
        error.contains("redisSentinel.urls") && error.contains(&closed),
        "{error}"
    );
}
