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

/// Over TLS, the subscription and the pool connect again to the restarted
/// server (same certificate).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_over_tls_survives_its_server_killed_and_restarted() {
    survives_a_broker_restart(own_broker(Kind::RedisTls, Timing::default()).await).await;
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
    // A request is answered. A broker that lost its log (Tansu here keeps it
    // in memory) has each node's topic made again as its consumer finds it
    // gone; a request published before that consumer has its new position
    // can be lost and times out, which the caller is told. So up to three
    // tries, each bounded.
    let mut answers = Vec::new();
    for _ in 0..3 {
        let answer = nodes[0]
            .request(2, Bytes::from_static(b"ping"), Duration::from_secs(5))
            .await;
        let answered = answer.is_ok();
        answers.push(answer);
        if answered {
            break;
        }
    }
    match answers.last() {
        Some(Ok(reply)) => assert_eq!(reply, "pong"),
        _ => panic!("no request answered after the restart: {answers:?}"),
    }
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

/// Broadcasts are published on the server the nodes subscribe on, never
/// through another one (that would cross the cluster bus, where
/// back-to-back messages can wait for a delayed ACK). What is sent to one
/// node is `SPUBLISH`ed at the master that owns that node's channel, and
/// crosses no other server; a node with `shardedPubSub` off gets it by
/// classic `PUBLISH`, from any sender. On a plain cluster (RESP2) and on
/// one that speaks only TLS (RESP3).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_publishes_broadcasts_at_home_and_node_messages_on_their_shard() {
    let plain = tokio::task::spawn_blocking(|| RedisClusterConnector::own_cluster("resp2"))
        .await
        .unwrap();
    routes_broadcasts_home_and_node_messages_to_their_shard(plain).await;
    let tls = tokio::task::spawn_blocking(|| RedisClusterConnector::own_tls_cluster("resp3"))
        .await
        .unwrap();
    routes_broadcasts_home_and_node_messages_to_their_shard(tls).await;
}

async fn routes_broadcasts_home_and_node_messages_to_their_shard(connector: RedisClusterConnector) {
    let mut harness = EngineHarness::new(connector, Timing::default());
    let routes = coordinator_core::routes::Routes::new(&harness.cluster());
    let (nodes, mut subscription, _events) = two_nodes_listening(&mut harness).await;
    let mut inboxes = vec![nodes[0].inbox().unwrap(), nodes[1].inbox().unwrap()];
    let calls = |harness: &EngineHarness<RedisClusterConnector>| {
        tokio::task::block_in_place(|| {
            harness
                .connector()
                .with_cluster(|c| (c.calls("publish"), c.calls("spublish")))
        })
    };
    let owners: Vec<usize> = tokio::task::block_in_place(|| {
        harness.connector().with_cluster(|c| {
            [1, 2]
                .map(|id| c.master_of(&routes.node(id), 0).expect("a master"))
                .to_vec()
        })
    });
    let before = calls(&harness);
    for i in 0..50u32 {
        nodes[0]
            .broadcast("t", Bytes::from(i.to_string()))
            .await
            .unwrap();
        nodes[0].send(2, Bytes::from(i.to_string())).await.unwrap();
        nodes[1].send(1, Bytes::from(i.to_string())).await.unwrap();
    }
    for i in 0..50u32 {
        let message = within(LONG, "the broadcasts", subscription.recv())
            .await
            .unwrap();
        assert_eq!(message.payload, i.to_string());
        for inbox in &mut inboxes {
            let incoming = within(LONG, "the node messages", inbox.recv())
                .await
                .unwrap();
            assert_eq!(incoming.payload, i.to_string());
        }
    }
    let after = calls(&harness);
    let published = difference(&after.0, &before.0);
    let sharded = difference(&after.1, &before.1);
    // Node 0 of `urls` is where both nodes subscribe.
    assert!(published[0] >= 1, "{published:?}");
    assert!(
        published[1..].iter().all(|&n| n == 0),
        "PUBLISH went through other servers too: {published:?}"
    );
    for (server, &count) in sharded.iter().enumerate() {
        if owners.contains(&server) {
            continue;
        }
        assert_eq!(count, 0, "SPUBLISH at {server}, no owner of {owners:?}");
    }
    let at_owners: u64 = sharded.iter().sum();
    assert!(at_owners >= 100, "{sharded:?} (owners {owners:?})");

    // Nodes 3 and 4 read their channels only the classic way.
    harness.connector().set_sharded(false);
    let more = vec![harness.start(3).await, harness.start(4).await];
    let all: Vec<_> = nodes.iter().chain(&more).cloned().collect();
    converge(&all, LONG).await;
    let mut inbox = more[1].inbox().unwrap();
    let before = calls(&harness);
    for i in 0..50u32 {
        // From a classic sender, and from a sharded one (whose SPUBLISH
        // reaches nobody, so it publishes again the classic way).
        more[0]
            .send(4, Bytes::from(format!("3: {i}")))
            .await
            .unwrap();
        nodes[0]
            .send(4, Bytes::from(format!("1: {i}")))
            .await
            .unwrap();
    }
    let mut next = std::collections::HashMap::from([(3, 0u32), (1, 0u32)]);
    within(LONG, "the messages to node 4", async {
        while next.values().sum::<u32>() < 100 {
            let incoming = inbox.recv().await.unwrap();
            let expected = next.get_mut(&incoming.from).unwrap();
            assert_eq!(incoming.payload, format!("{}: {expected}", incoming.from));
            *expected += 1;
        }
    })
    .await;
    let after = calls(&harness);
    let published = difference(&after.0, &before.0);
    assert!(published[0] >= 100, "{published:?}");
    assert!(published[1..].iter().all(|&n| n == 0), "{published:?}");
    for node in &all {
        node.leave().await.unwrap();
    }
}

/// The master that owns a node's sharded channel is killed: messages to
/// that node take the classic route while its replica takes over, none is
/// lost or delivered twice, and once the node subscribes on the new master
/// the senders `SPUBLISH` there again. With both protocol versions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_node_messages_survive_their_shard_failing_over() {
    for protocol in ["resp2", "resp3"] {
        let connector =
            tokio::task::spawn_blocking(move || RedisClusterConnector::own_cluster(protocol))
                .await
                .unwrap();
        // A cluster name whose node 2 channel is owned by another master
        // than node 0, where the classic subscriptions are (they stay up).
        let (name, owner) = tokio::task::block_in_place(|| {
            connector.with_cluster(|c| {
                (0..100)
                    .map(|k| format!("shard-failover-{k}"))
                    .find_map(|name| {
                        let channel = coordinator_core::routes::Routes::new(&name).node(2);
                        let owner = c.master_of(&channel, 0).expect("a master");
                        (owner != 0).then_some((name, owner))
                    })
                    .expect("a channel owned by another master than node 0")
            })
        });
        let channel = coordinator_core::routes::Routes::new(&name).node(2);
        let mut harness = EngineHarness::new(connector, Timing::default()).with_cluster(name);
        let (nodes, _subscription, _events) = two_nodes_listening(&mut harness).await;
        let mut inbox = nodes[1].inbox().unwrap();
        let connector = harness.connector();
        tokio::task::block_in_place(|| connector.with_cluster(|c| c.nodes[owner].kill()));

        send_until_spublished_elsewhere(&nodes[0], &mut inbox, connector, &channel, owner)
            .await
            .unwrap_or_else(|error| panic!("{protocol}: {error}"));
        for node in &nodes {
            node.leave().await.unwrap();
        }
    }
}

/// Nodes that log in as an ACL user who may not run `SPUBLISH` and
/// `SSUBSCRIBE`: their messages to each other go the classic way, and each
/// sender stops asking for `SPUBLISH` after the first refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_user_without_sharded_commands_keeps_node_messages_classic() {
    let connector = tokio::task::spawn_blocking(|| RedisClusterConnector::own_cluster("resp2"))
        .await
        .unwrap();
    tokio::task::block_in_place(|| {
        connector.with_cluster(|c| {
            c.on_every_node(&[
                "acl",
                "setuser",
                "coordinator",
                "on",
                ">secret",
                "~*",
                "&*",
                "+@all",
                "-spublish",
                "-ssubscribe",
            ])
        })
    });
    connector.set_user("coordinator", "secret");
    let mut harness = EngineHarness::new(connector, Timing::default());
    let (nodes, _subscription, _events) = two_nodes_listening(&mut harness).await;
    let mut inboxes = vec![nodes[0].inbox().unwrap(), nodes[1].inbox().unwrap()];
    for i in 0..50u32 {
        nodes[0].send(2, Bytes::from(i.to_string())).await.unwrap();
        nodes[1].send(1, Bytes::from(i.to_string())).await.unwrap();
        if i == 24 {
            // Longer than a sender keeps to the classic route after an
            // ordinary failure (1 s): a refusal must end the tries for good.
            tokio::time::sleep(Duration::from_millis(1500)).await;
        }
    }
    for i in 0..50u32 {
        for inbox in &mut inboxes {
            let incoming = within(LONG, "the node messages", inbox.recv())
                .await
                .unwrap();
            assert_eq!(incoming.payload, i.to_string());
        }
    }
    let (refused, subscriptions_refused, sharded, published) = tokio::task::block_in_place(|| {
        harness.connector().with_cluster(|c| {
            (
                c.rejected_calls("spublish").iter().sum::<u64>(),
                c.rejected_calls("ssubscribe").iter().sum::<u64>(),
                c.calls("spublish").iter().sum::<u64>(),
                c.calls("publish")[0],
            )
        })
    });
    assert_eq!(sharded, 0);
    // One refusal per sender, then the classic route only.
    assert!(
        (1..=2).contains(&refused),
        "SPUBLISH refused {refused} times"
    );
    // Per node: the attempt at start and the subscriber's own, then no more.
    assert!(
        (2..=4).contains(&subscriptions_refused),
        "SSUBSCRIBE refused {subscriptions_refused} times"
    );
    assert!(published >= 100, "{published} PUBLISH at home");
    for node in &nodes {
        node.leave().await.unwrap();
    }
}

/// The slot of a node's sharded channel moves to another master (as in a
/// resharding): the server unsubscribes the node, which subscribes again
/// on the new master, and no message to it is lost or delivered twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_node_channel_follows_its_slot_to_another_master() {
    let connector = tokio::task::spawn_blocking(|| RedisClusterConnector::own_cluster("resp2"))
        .await
        .unwrap();
    let mut harness = EngineHarness::new(connector, Timing::default());
    let channel = coordinator_core::routes::Routes::new(&harness.cluster()).node(2);
    let (nodes, _subscription, _events) = two_nodes_listening(&mut harness).await;
    let mut inbox = nodes[1].inbox().unwrap();
    let connector = harness.connector();
    let owner = tokio::task::block_in_place(|| {
        connector.with_cluster(|c| {
            let owner = c.master_of(&channel, 0).expect("a master");
            let to = c
                .masters()
                .into_iter()
                .find(|&m| m != owner)
                .expect("another master");
            c.move_slot_of(&channel, owner, to);
            owner
        })
    });
    send_until_spublished_elsewhere(&nodes[0], &mut inbox, connector, &channel, owner)
        .await
        .unwrap();
    for node in &nodes {
        node.leave().await.unwrap();
    }
}

/// Sends numbered messages from `sender` to node 2 until `channel` has
/// another master than `away_from`, node 2 subscribes there, and 10 of the
/// messages were `SPUBLISH`ed there; then waits for all of them: an error
/// if one was lost, reordered or delivered twice.
async fn send_until_spublished_elsewhere(
    sender: &std::sync::Arc<dyn coordinator::Coordinator>,
    inbox: &mut coordinator::Inbox,
    connector: &RedisClusterConnector,
    channel: &str,
    away_from: usize,
) -> Result<(), String> {
    let mut sent = 0u32;
    let mut received = Vec::new();
    within(
        LONG,
        "SPUBLISH at the new master of node 2's channel",
        async {
            let mut baseline: Option<(usize, u64)> = None;
            loop {
                sender.send(2, Bytes::from(sent.to_string())).await.unwrap();
                sent += 1;
                while let Ok(Some(incoming)) =
                    tokio::time::timeout(Duration::from_millis(20), inbox.recv()).await
                {
                    received.push(incoming.payload);
                }
                let now = tokio::task::block_in_place(|| {
                    connector.with_cluster(|c| {
                        let live = c.masters().into_iter().find(|&m| m != away_from)?;
                        let master = c.master_of(channel, live).filter(|&m| m != away_from)?;
                        (c.shard_subscribers(channel, master) == 1)
                            .then(|| (master, c.calls("spublish")[master]))
                    })
                });
                match (baseline, now) {
                    (None, Some(now)) => baseline = Some(now),
                    (Some((master, calls)), Some((now_master, now_calls)))
                        if master == now_master && now_calls >= calls + 10 =>
                    {
                        return;
                    }
                    _ => {}
                }
            }
        },
    )
    .await;
    within(LONG, "every message to node 2", async {
        while received.len() < sent as usize {
            received.push(inbox.recv().await.unwrap().payload);
        }
    })
    .await;
    let expected: Vec<Bytes> = (0..sent).map(|i| Bytes::from(i.to_string())).collect();
    if received == expected {
        Ok(())
    } else {
        Err(format!(
            "lost, reordered or twice: sent 0..{sent}, received {received:?}"
        ))
    }
}

fn difference(after: &[u64], before: &[u64]) -> Vec<u64> {
    after.iter().zip(before).map(|(a, b)| a - b).collect()
}
