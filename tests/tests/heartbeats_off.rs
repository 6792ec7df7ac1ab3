//! `heartbeats: false`: an application that needs only broadcasts and
//! messages gets them with nothing periodic on the carrier, and membership
//! says that it detects no failures, instead of declaring silent nodes dead.

use bytes::Bytes;
use coordinator::{Coordinator, FailureDetection, MemberChange, MemberState, SubscribeOptions};
use std::sync::Arc;
use std::time::Duration;
use tests::brokers::Kind;
use tests::harness::{BrokerConnector, Connector, EngineHarness, Harness, Timing};
use tests::wait::{converge, within};

const LONG: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_without_heartbeats() {
    without_heartbeats(tests::harness::memory().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_without_heartbeats() {
    without_heartbeats(on_broker(Kind::Nats).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_without_heartbeats() {
    without_heartbeats(on_broker(Kind::Redis).await).await;
}

async fn on_broker(kind: Kind) -> EngineHarness<BrokerConnector> {
    let connector = tokio::task::spawn_blocking(move || BrokerConnector::own_broker(kind))
        .await
        .unwrap();
    EngineHarness::new(connector, Timing::default())
}

fn state_of(node: &dyn Coordinator, id: u64) -> Option<MemberState> {
    node.members()
        .into_iter()
        .find(|member| member.id == id)
        .map(|member| member.state)
}

async fn without_heartbeats<C: Connector>(harness: EngineHarness<C>) {
    let mut harness = harness.without_heartbeats();
    let timing = harness.timing();
    let nodes: Vec<Arc<dyn Coordinator>> = vec![harness.start(1).await, harness.start(2).await];
    // Node 2's join, and node 1's answer to it, make them members of each other.
    converge(&nodes, LONG).await;
    for node in &nodes {
        assert_eq!(node.failure_detection(), FailureDetection::Off);
    }
    let mut member_events = nodes[0].member_events();

    // Broadcasts and requests work.
    let mut subscription = nodes[1]
        .subscribe("t", SubscribeOptions::default())
        .await
        .unwrap();
    nodes[0]
        .broadcast("t", Bytes::from_static(b"hello"))
        .await
        .unwrap();
    let message = within(LONG, "the broadcast", subscription.recv())
        .await
        .unwrap();
    assert_eq!(message.payload, "hello");
    let mut inbox = nodes[1].inbox().unwrap();
    let server = tokio::spawn(async move {
        while let Some(request) = inbox.recv().await {
            let _ = request.reply(Bytes::from_static(b"pong")).await;
        }
    });
    let reply = nodes[0]
        .request(2, Bytes::from_static(b"ping"), LONG)
        .await
        .unwrap();
    assert_eq!(reply, "pong");

    // The join answers are counted when the carrier settles them, which on
    // a loaded machine can come after the round trip above: wait until the
    // counters have stopped moving for a while before the idle window.
    let counters = || -> Vec<(u64, u64)> {
        nodes
            .iter()
            .map(|node| {
                let stats = node.stats();
                (stats.heartbeats_sent, stats.frames_received)
            })
            .collect()
    };
    within(LONG, "the counters to settle", async {
        let mut last = counters();
        loop {
            // No event marks a frame settled: a quiet spell it is.
            tokio::time::sleep(Duration::from_millis(250)).await;
            let now = counters();
            if now == last {
                break;
            }
            last = now;
        }
    })
    .await;

    // Idle for three dead timeouts: nothing is sent or received, and the
    // silent member is neither suspected nor declared dead.
    let before: Vec<_> = nodes.iter().map(|node| node.stats()).collect();
    tokio::time::sleep(timing.dead * 3).await;
    for (node, before) in nodes.iter().zip(&before) {
        let after = node.stats();
        // (The counter also counts joins and answers to joins.)
        assert_eq!(
            after.heartbeats_sent,
            before.heartbeats_sent,
            "node {} sent heartbeats",
            node.node_id()
        );
        assert_eq!(
            after.frames_received,
            before.frames_received,
            "node {} received frames while all were idle",
            node.node_id()
        );
    }
    assert_eq!(state_of(nodes[0].as_ref(), 2), Some(MemberState::Alive));
    while let Ok(Some(event)) =
        tokio::time::timeout(Duration::from_millis(10), member_events.next_event()).await
    {
        assert!(
            !matches!(event.change, MemberChange::Suspected | MemberChange::Died),
            "{event:?} without failure detection"
        );
    }

    // A node that comes later is seen by both, and sees both; one that
    // restarts is seen as restarted; one that leaves, as gone.
    let mut all = nodes.clone();
    all.push(harness.start(3).await);
    converge(&all, LONG).await;
    all[2] = harness.start(3).await;
    within(LONG, "node 3's restart at node 1", async {
        loop {
            let event = member_events.next_event().await.expect("events open");
            if event.member.id == 3 && matches!(event.change, MemberChange::Restarted { .. }) {
                return;
            }
        }
    })
    .await;
    all[1].leave().await.unwrap();
    within(LONG, "node 2's departure at node 1", async {
        while state_of(all[0].as_ref(), 2).is_some() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    server.abort();
}
