//! Broker carriers across a broker that is killed (SIGKILL) and restarted:
//! no panic, no hang, the handles keep working, and every message of the
//! outage is delivered or reported lost.

use bytes::Bytes;
use coordinator::{Event, StreamKind, SubscribeOptions};
use std::time::Duration;
use tests::brokers::Kind;
use tests::harness::{
    BrokerConnector, BrokerControl, EngineHarness, Harness, KAFKA_TIMING, RedisClusterConnector,
    Timing, ZenohConnector,
};
use tests::wait::{broadcasts_reported_lost, converge, event, within};

const LONG: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_survives_its_server_killed_and_restarted() {
    survives_a_broker_restart(own_broker(Kind::Nats, Timing::default()).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_survives_its_server_killed_and_restarted() {
    survives_a_broker_restart(own_broker(Kind::Redis, Timing::default()).await).await;
}

/// Tansu keeps its log in memory here: a restart loses topics and messages.
/// The carrier creates the topics again, and the producer delivers what it
/// held during the outage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_survives_its_broker_killed_and_restarted() {
    survives_a_broker_restart(own_broker(Kind::Kafka, KAFKA_TIMING).await).await;
}

/// Clients of a Zenoh router across the router's restart: Zenoh reconnects,
/// the liveliness tokens come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zenoh_clients_survive_their_router_killed_and_restarted() {
    let connector = tokio::task::spawn_blocking(ZenohConnector::own_router)
        .await
        .unwrap();
    survives_a_broker_restart(EngineHarness::new(connector, Timing::default())).await;
}

async fn own_broker(kind: Kind, timing: Timing) -> EngineHarness<BrokerConnector> {
    let connector = tokio::task::spawn_blocking(move || BrokerConnector::own_broker(kind))
        .await
        .unwrap();
    EngineHarness::new(connector, timing)
}

/// Nodes 1 and 2, formed; node 2 subscribed to `t` and watching its events.
async fn two_nodes_listening(
    harness: &mut impl Harness,
) -> (
    Vec<std::sync::Arc<dyn coordinator::Coordinator>>,
    coordinator::Subscription,
    coordinator::EventStream<Event>,
) {
    let nodes = vec![harness.start(1).await, harness.start(2).await];
    converge(&nodes, LONG).await;
    let subscription = nodes[1]
        .subscribe("t", SubscribeOptions::default())
        .await
        .unwrap();
    let events = nodes[1].events();
    (nodes, subscription, events)
}

async fn survives_a_broker_restart<C: BrokerControl>(mut harness: EngineHarness<C>) {
    let (nodes, mut subscription, mut events) = two_nodes_listening(&mut harness).await;
    nodes[0]
        .broadcast("t", Bytes::from_static(b"before"))
        .await
        .unwrap();
    let first = within(LONG, "the first broadcast", subscription.recv()).await;
    assert_eq!(first.unwrap().payload, "before");

    harness.connector().kill_broker();
    within(
        LONG,
        "the link to be reported down",
        event(&mut events, |e| matches!(e, Event::LinkDown { .. })),
    )
    .await;
    // Sent while the server is gone: each is delivered later or reported lost.
    let mut sent_during = 0u64;
    for i in 0..5 {
        if nodes[0]
            .broadcast("t", Bytes::from(format!("during {i}")))
            .await
            .is_ok()
        {
            sent_during += 1;
        }
    }
    let connector = harness.connector();
    tokio::task::block_in_place(|| connector.restart_broker());
    // A carrier may notice the gap before it reports the link up (Zenoh's
    // tokens come back before its link watch looks again): count it too.
    let mut lost = 0;
    within(LONG, "the link to be reported up again", async {
        loop {
            match events.next_event().await.expect("events open") {
                Event::LinkUp => return,
                Event::Gap {
                    from: 1,
                    stream: StreamKind::Broadcast,
                    count,
                    ..
                } => lost += count,
                _ => {}
            }
        }
    })
    .await;
    converge(&nodes, LONG).await;

    // The handles still work: a new broadcast arrives, after whatever survived.
    let mut after = None;
    let mut delivered_during = 0u64;
    within(LONG, "a broadcast after the restart", async {
        loop {
            nodes[0]
                .broadcast("t", Bytes::from_static(b"after"))
                .await
                .unwrap();
            match tokio::time::timeout(Duration::from_millis(500), subscription.recv()).await {
                Ok(Some(message)) if message.payload == "after" => {
                    after = Some(message.seq);
                    return;
                }
                Ok(Some(_)) => delivered_during += 1,
                Ok(None) => panic!("subscription closed"),
                Err(_) => {}
            }
        }
    })
    .await;
    assert!(after.is_some());
    // Every broadcast of the outage is accounted for: delivered or reported lost.
    lost += broadcasts_reported_lost(&mut events, 1, Duration::from_millis(50)).await;
    assert!(
        delivered_during + lost >= sent_during,
        "sent {sent_during} during the outage, delivered {delivered_during}, reported lost {lost}"
    );
    let mut inbox = nodes[1].inbox().unwrap();
    let server = tokio::spawn(async move {
        while let Some(request) = inbox.recv().await {
            let _ = request.reply(Bytes::from_static(b"pong")).await;
        }
    });
    let reply = nodes[0]
        .request(2, Bytes::from_static(b"ping"), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(reply, "pong");
    server.abort();
}

/// A Redis Cluster master killed under the nodes' subscriptions: a replica
/// takes over and delivery goes on, with both protocol versions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_keeps_delivering_after_a_master_is_killed() {
    for protocol in ["resp2", "resp3"] {
        let connector =
            tokio::task::spawn_blocking(move || RedisClusterConnector::own_cluster(protocol))
                .await
                .unwrap();
        let mut harness = EngineHarness::new(connector, Timing::default());
        let (nodes, mut subscription, mut events) = two_nodes_listening(&mut harness).await;
        // The nodes subscribe on the first node of `urls`, a master.
        let connector = harness.connector();
        tokio::task::block_in_place(|| {
            connector.with_cluster(|cluster| {
                assert!(
                    cluster.masters().contains(&0),
                    "{protocol}: node 0 is no master"
                );
                cluster.nodes[0].kill();
            })
        });
        within(
            LONG,
            "the subscription to be reported down",
            event(&mut events, |e| matches!(e, Event::LinkDown { .. })),
        )
        .await;
        within(
            LONG,
            "the subscription to be reported up again",
            event(&mut events, |e| matches!(e, Event::LinkUp)),
        )
        .await;
        within(LONG, "a broadcast after the failover", async {
            loop {
                let _ = nodes[0].broadcast("t", Bytes::from_static(b"after")).await;
                if let Ok(Some(message)) =
                    tokio::time::timeout(Duration::from_millis(500), subscription.recv()).await
                    && message.payload == "after"
                {
                    return;
                }
            }
        })
        .await;
        converge(&nodes, LONG).await;
        for node in &nodes {
            node.leave().await.unwrap();
        }
    }
}

/// Messages are published on the server the nodes subscribe on, never
/// through another one (that would cross the cluster bus, where
/// back-to-back messages can wait for a delayed ACK).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_publishes_on_the_server_its_nodes_subscribe_on() {
    let connector = tokio::task::spawn_blocking(|| RedisClusterConnector::own_cluster("resp3"))
        .await
        .unwrap();
    let mut harness = EngineHarness::new(connector, Timing::default());
    let (nodes, mut subscription, _events) = two_nodes_listening(&mut harness).await;
    let calls = |harness: &EngineHarness<RedisClusterConnector>| {
        tokio::task::block_in_place(|| harness.connector().with_cluster(|c| c.publish_calls()))
    };
    let before = calls(&harness);
    for i in 0..50u32 {
        nodes[0]
            .broadcast("t", Bytes::from(i.to_string()))
            .await
            .unwrap();
        // And on each node's own channel (each hashes to its own slot).
        nodes[0].send(2, Bytes::from_static(b"to 2")).await.unwrap();
        nodes[1].send(1, Bytes::from_static(b"to 1")).await.unwrap();
    }
    for i in 0..50u32 {
        let message = within(LONG, "the broadcasts", subscription.recv())
            .await
            .unwrap();
        assert_eq!(message.payload, i.to_string());
    }
    let after = calls(&harness);
    let published: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    // Node 0 of `urls` is where both nodes subscribe.
    assert!(published[0] >= 150, "{published:?}");
    assert!(
        published[1..].iter().all(|&n| n == 0),
        "PUBLISH went through other servers too: {published:?}"
    );
    for node in &nodes {
        node.leave().await.unwrap();
    }
}
