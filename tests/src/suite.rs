//! The conformance suite: what every carrier must do, checked through the
//! `Coordinator` trait only. Each function is one test; see
//! [`crate::conformance_suite!`].

use crate::harness::{CLUSTER_KEY, Harness};
use crate::wait::{broadcasts_reported_lost, converge, event, member_change, until, within};
use bytes::Bytes;
use coordinator_core::envelope::{Codec, Envelope, Kind, peek_kind, peek_sender};
use coordinator_core::transport::Inbound;
use coordinator_core::{
    Coordinator, DropReason, Error, Event, MemberChange, MemberState, NodeId, StatsSnapshot,
    SubscribeOptions,
};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

const LONG: Duration = Duration::from_secs(10);

async fn cluster(harness: &mut impl Harness, ids: &[NodeId]) -> Vec<Arc<dyn Coordinator>> {
    let mut nodes = Vec::new();
    for &id in ids {
        nodes.push(harness.start(id).await);
    }
    converge(&nodes, LONG).await;
    nodes
}

fn text(payload: &Bytes) -> String {
    String::from_utf8_lossy(payload).into_owned()
}

/// Every node's broadcasts reach every other node exactly once, in the sender's
/// order; no node receives its own.
pub async fn broadcast_in_order(mut harness: impl Harness) {
    const COUNT: usize = 200;
    let nodes = cluster(&mut harness, &[1, 2, 3]).await;
    let mut subscriptions = Vec::new();
    for node in &nodes {
        subscriptions.push(
            node.subscribe("orders", SubscribeOptions::default())
                .await
                .unwrap(),
        );
    }
    let mut senders = Vec::new();
    for node in nodes.clone() {
        senders.push(tokio::spawn(async move {
            for i in 0..COUNT {
                node.broadcast("orders", Bytes::from(format!("{i}")))
                    .await
                    .unwrap();
            }
            node.broadcast("orders", Bytes::from_static(b"end"))
                .await
                .unwrap();
        }));
    }
    for sender in senders {
        sender.await.unwrap();
    }
    for (node, subscription) in nodes.iter().zip(subscriptions.iter_mut()) {
        let me = node.node_id();
        let mut next: HashMap<NodeId, usize> = HashMap::new();
        let mut ended = 0;
        within(
            LONG,
            &format!("node {me} to receive every broadcast"),
            async {
                while ended < nodes.len() - 1 {
                    let message = subscription.recv().await.expect("subscription open");
                    assert_ne!(message.from, me, "node {me} received its own broadcast");
                    let expected = next.entry(message.from).or_default();
                    if message.payload == "end" {
                        assert_eq!(
                            *expected, COUNT,
                            "node {me}: 'end' from {} after {expected} messages",
                            message.from
                        );
                        ended += 1;
                    } else {
                        assert_eq!(
                            text(&message.payload),
                            expected.to_string(),
                            "node {me}: out of order or duplicated from {}",
                            message.from
                        );
                        *expected += 1;
                    }
                }
            },
        )
        .await;
        assert_eq!(
            node.stats().messages_lost,
            0,
            "node {me} lost messages on a lossless link"
        );
    }
}

/// A burst of broadcasts of many sizes shares carrier frames (batches, up to
/// the frame limit) and reaches every node whole and in order.
pub async fn a_burst_shares_frames_and_arrives_whole(mut harness: impl Harness) {
    const COUNT: usize = 3000;
    let size = |i: usize| 1 + (i * 397) % 6000;
    let nodes = cluster(&mut harness, &[1, 2, 3]).await;
    let mut subscriptions = Vec::new();
    for node in &nodes[1..] {
        subscriptions.push(
            node.subscribe("burst", SubscribeOptions::default())
                .await
                .unwrap(),
        );
    }
    let sender = tokio::spawn({
        let node = nodes[0].clone();
        async move {
            for i in 0..COUNT {
                let mut payload = format!("{i:08}").into_bytes();
                payload.resize(size(i).max(8), b'.');
                node.broadcast("burst", Bytes::from(payload)).await.unwrap();
            }
        }
    });
    for (node, subscription) in nodes[1..].iter().zip(subscriptions.iter_mut()) {
        let me = node.node_id();
        within(LONG, &format!("node {me} to receive the burst"), async {
            for i in 0..COUNT {
                let message = subscription.recv().await.expect("subscription open");
                assert_eq!(
                    (&message.payload[..8], message.payload.len(), message.seq),
                    (format!("{i:08}").as_bytes(), size(i).max(8), i as u64 + 1),
                    "node {me}: message {i}"
                );
            }
        })
        .await;
        assert_eq!(node.stats().messages_lost, 0, "node {me} lost messages");
    }
    sender.await.unwrap();
    assert!(
        nodes[0].stats().batches_sent > 0,
        "no batch in a burst of {COUNT}: {:?}",
        nodes[0].stats()
    );
}

/// A subscription gets the node's own broadcasts only when it asks for them.
pub async fn own_messages_only_when_asked(mut harness: impl Harness) {
    let nodes = cluster(&mut harness, &[1, 2]).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let mut plain = a
        .subscribe("news", SubscribeOptions::default())
        .await
        .unwrap();
    let mut echo = a
        .subscribe("news", SubscribeOptions { receive_own: true })
        .await
        .unwrap();
    let mut at_b = b
        .subscribe("news", SubscribeOptions::default())
        .await
        .unwrap();
    a.broadcast("news", Bytes::from_static(b"mine"))
        .await
        .unwrap();
    let got = within(LONG, "b to receive a's message", at_b.recv())
        .await
        .unwrap();
    assert_eq!((got.from, got.payload.as_ref()), (1, &b"mine"[..]));
    b.broadcast("news", Bytes::from_static(b"theirs"))
        .await
        .unwrap();
    let first = within(LONG, "a's plain subscription", plain.recv())
        .await
        .unwrap();
    assert_eq!(
        first.payload, "theirs",
        "a plain subscription received the node's own message"
    );
    let own = within(LONG, "a's echo subscription", echo.recv())
        .await
        .unwrap();
    assert_eq!((own.from, own.payload.as_ref()), (1, &b"mine"[..]));
    let theirs = within(LONG, "a's echo subscription", echo.recv())
        .await
        .unwrap();
    assert_eq!(
        theirs.payload, "theirs",
        "own message delivered more than once"
    );
}

/// A new node is seen by every other node, and sees them, within one heartbeat
/// interval plus delivery time.
pub async fn join_is_seen_by_all_within_one_interval(mut harness: impl Harness) {
    let timing = harness.timing();
    let nodes = cluster(&mut harness, &[1, 2, 3]).await;
    let mut watchers: Vec<_> = nodes.iter().map(|n| n.member_events()).collect();
    let started = Instant::now();
    let newcomer = harness.start(4).await;
    let limit = timing.heartbeat + timing.delivery;
    for (node, events) in nodes.iter().zip(watchers.iter_mut()) {
        let joined = within(
            limit * 4,
            "the join to be seen",
            member_change(events, 4, |c| *c == MemberChange::Joined),
        )
        .await;
        assert_eq!(joined.member.state, MemberState::Alive);
        let elapsed = started.elapsed();
        assert!(
            elapsed <= limit,
            "node {} saw node 4 join after {elapsed:?} (limit {limit:?})",
            node.node_id()
        );
    }
    within(limit, "node 4 to learn the members", async {
        let mut events = newcomer.member_events();
        while newcomer.members().len() < 4 {
            events.recv().await;
        }
    })
    .await;
    let members: Vec<_> = newcomer.members().iter().map(|m| (m.id, m.state)).collect();
    assert_eq!(
        members,
        (1..=4)
            .map(|id| (id, MemberState::Alive))
            .collect::<Vec<_>>()
    );
}

/// A killed node is suspected, then declared dead, within the configured times.
pub async fn killed_node_is_suspected_then_dead_in_time(mut harness: impl Harness) {
    let timing = harness.timing();
    let nodes = cluster(&mut harness, &[1, 2, 3]).await;
    let mut watchers: Vec<_> = nodes[..2].iter().map(|n| n.member_events()).collect();
    harness.kill(3).await;
    let killed = Instant::now();
    for (node, events) in nodes[..2].iter().zip(watchers.iter_mut()) {
        let suspected = within(
            LONG,
            "suspicion",
            member_change(events, 3, |c| *c == MemberChange::Suspected),
        )
        .await;
        let suspected_after = killed.elapsed();
        assert_eq!(suspected.member.state, MemberState::Suspect);
        within(
            LONG,
            "death",
            member_change(events, 3, |c| *c == MemberChange::Died),
        )
        .await;
        let dead_after = killed.elapsed();
        let me = node.node_id();
        assert!(
            suspected_after + timing.heartbeat >= timing.suspect,
            "node {me} suspected node 3 after {suspected_after:?}, before the suspect timeout could pass"
        );
        let limit = timing.dead + timing.heartbeat + timing.delivery;
        assert!(
            dead_after <= limit,
            "node {me} took {dead_after:?} to declare node 3 dead (limit {limit:?})"
        );
        let member = node
            .members()
            .into_iter()
            .find(|m| m.id == 3)
            .expect("a dead node stays listed");
        assert_eq!(member.state, MemberState::Dead);
    }
    for node in &nodes[..2] {
        let others: Vec<_> = node
            .members()
            .into_iter()
            .filter(|m| m.id != 3)
            .map(|m| m.state)
            .collect();
        assert!(
            others.iter().all(|s| *s == MemberState::Alive),
            "a healthy node was marked {others:?}"
        );
    }
}

/// A node that leaves is gone from every other node's list at once, never suspected.
pub async fn graceful_leave_is_seen_at_once(mut harness: impl Harness) {
    let timing = harness.timing();
    let nodes = cluster(&mut harness, &[1, 2, 3]).await;
    let mut watchers: Vec<_> = nodes[..2].iter().map(|n| n.member_events()).collect();
    let started = Instant::now();
    nodes[2].leave().await.unwrap();
    for (node, events) in nodes[..2].iter().zip(watchers.iter_mut()) {
        let first = within(LONG, "the departure", member_change(events, 3, |_| true)).await;
        assert_eq!(
            first.change,
            MemberChange::Left,
            "node {}: first news of node 3 was {first:?}",
            node.node_id()
        );
        let elapsed = started.elapsed();
        assert!(
            elapsed < timing.suspect,
            "the departure took {elapsed:?}, as long as failure detection"
        );
        assert!(
            node.members().iter().all(|m| m.id != 3),
            "a departed node is still listed"
        );
    }
    assert!(matches!(
        nodes[2].broadcast("t", Bytes::new()).await,
        Err(Error::Closed)
    ));
    assert!(matches!(
        nodes[0].send(3, Bytes::new()).await,
        Err(Error::NodeLeft(3))
    ));
}

/// A restarted node gets a new incarnation and is listed once; its new
/// broadcasts are delivered from the start of its new stream.
pub async fn restarted_node_is_never_listed_twice(mut harness: impl Harness) {
    let nodes = cluster(&mut harness, &[1, 2, 3]).await;
    let old_incarnation = nodes[0]
        .members()
        .iter()
        .find(|m| m.id == 3)
        .unwrap()
        .incarnation;
    let mut events = nodes[0].member_events();
    let mut subscription = nodes[0]
        .subscribe("t", SubscribeOptions::default())
        .await
        .unwrap();
    harness.kill(3).await;
    let restarted = harness.start(3).await;
    let event = within(
        LONG,
        "the restart",
        member_change(&mut events, 3, |c| {
            matches!(c, MemberChange::Restarted { .. })
        }),
    )
    .await;
    assert_eq!(
        event.change,
        MemberChange::Restarted {
            previous_incarnation: old_incarnation
        }
    );
    assert!(event.member.incarnation > old_incarnation);
    let listed: Vec<_> = nodes[0]
        .members()
        .into_iter()
        .filter(|m| m.id == 3)
        .collect();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].state, MemberState::Alive);
    converge(
        &[restarted.clone(), nodes[0].clone(), nodes[1].clone()],
        LONG,
    )
    .await;
    restarted
        .broadcast("t", Bytes::from_static(b"again"))
        .await
        .unwrap();
    let message = within(LONG, "the restarted node's broadcast", subscription.recv())
        .await
        .unwrap();
    assert_eq!(
        (message.from, message.seq, message.payload.as_ref()),
        (3, 1, &b"again"[..])
    );
    nodes[0]
        .send(3, Bytes::from_static(b"hello"))
        .await
        .unwrap();
    let mut inbox = restarted.inbox().unwrap();
    let incoming = within(LONG, "a message to the restarted node", inbox.recv())
        .await
        .unwrap();
    assert_eq!(incoming.payload, "hello");
}

/// A node that left can come back (a rolling restart: leave, then start
/// again with the same id): every node sees it alive again and can reach it.
pub async fn node_that_left_can_come_back(mut harness: impl Harness) {
    let nodes = cluster(&mut harness, &[1, 2, 3]).await;
    let mut watchers: Vec<_> = nodes[..2].iter().map(|n| n.member_events()).collect();
    nodes[2].leave().await.unwrap();
    for events in watchers.iter_mut() {
        within(
            LONG,
            "the departure",
            member_change(events, 3, |c| *c == MemberChange::Left),
        )
        .await;
    }
    let back = harness.start(3).await;
    converge(&[nodes[0].clone(), nodes[1].clone(), back.clone()], LONG).await;
    let mut inbox = back.inbox().unwrap();
    nodes[0]
        .send(3, Bytes::from_static(b"welcome back"))
        .await
        .unwrap();
    let incoming = within(LONG, "a message to the node that came back", inbox.recv())
        .await
        .unwrap();
    assert_eq!(incoming.payload, "welcome back");
}

/// Point-to-point messages arrive once each, in order per sender.
pub async fn point_to_point_is_fifo_per_pair(mut harness: impl Harness) {
    const COUNT: usize = 300;
    let nodes = cluster(&mut harness, &[1, 2, 3]).await;
    let mut inbox = nodes[2].inbox().unwrap();
    let mut senders = Vec::new();
    for node in &nodes[..2] {
        let node = node.clone();
        senders.push(tokio::spawn(async move {
            for i in 0..COUNT {
                node.send(3, Bytes::from(i.to_string())).await.unwrap();
            }
        }));
    }
    let mut next: HashMap<NodeId, usize> = HashMap::new();
    within(LONG, "every point-to-point message", async {
        while next.values().sum::<usize>() < 2 * COUNT {
            let incoming = inbox.recv().await.unwrap();
            assert!(!incoming.is_request());
            let expected = next.entry(incoming.from).or_default();
            assert_eq!(
                text(&incoming.payload),
                expected.to_string(),
                "from node {}",
                incoming.from
            );
            *expected += 1;
        }
    })
    .await;
    for sender in senders {
        sender.await.unwrap();
    }
    assert_eq!(next, HashMap::from([(1, COUNT), (2, COUNT)]));
}

/// One task posting to a node without waiting for each message, with an
/// awaited `send` now and then among them: every message arrives once, in
/// the order they were made, and every outcome is `Ok`.
pub async fn posted_messages_arrive_once_in_the_order_made(mut harness: impl Harness) {
    const COUNT: usize = 1_000;
    let nodes = cluster(&mut harness, &[1, 2]).await;
    let mut inbox = nodes[1].inbox().unwrap();
    let node = nodes[0].clone();
    let sender = tokio::spawn(async move {
        let mut outcomes = Vec::new();
        for i in 0..COUNT {
            let payload = Bytes::from(i.to_string());
            if i % 100 == 99 {
                node.send(2, payload).await.unwrap();
            } else {
                outcomes.push(node.post(2, payload).await.unwrap());
            }
        }
        for outcome in outcomes {
            outcome.await.unwrap();
        }
    });
    within(LONG, "every posted message", async {
        for i in 0..COUNT {
            let incoming = inbox.recv().await.unwrap();
            assert_eq!(incoming.from, 1);
            assert_eq!(text(&incoming.payload), i.to_string());
        }
    })
    .await;
    within(LONG, "every outcome", sender).await.unwrap();
    // Nothing more: each message came once (a repeat would come before a
    // message sent after them all).
    nodes[0].send(2, Bytes::from_static(b"end")).await.unwrap();
    let last = within(LONG, "the last message", inbox.recv())
        .await
        .unwrap();
    assert_eq!(text(&last.payload), "end", "a message came twice");
}

/// Many tasks of one node sending to another at once (their messages share
/// frames when the carrier is busy): every message arrives once, each task's
/// in its order, and every request gets its own reply, answered by
/// concurrent handlers.
pub async fn concurrent_senders_to_one_node_keep_each_order(mut harness: impl Harness) {
    const TASKS: usize = 16;
    const EACH: usize = 100;
    const REQUESTERS: usize = 8;
    const REQUESTS: usize = 25;
    let size = |task: usize, i: usize| 16 + (task * 7919 + i * 397) % 6000;
    let nodes = cluster(&mut harness, &[1, 2, 3]).await;
    let mut inbox = nodes[2].inbox().unwrap();
    let mut senders = Vec::new();
    for task in 0..TASKS {
        let node = nodes[0].clone();
        senders.push(tokio::spawn(async move {
            for i in 0..EACH {
                let mut payload = format!("{task:04}:{i:06}").into_bytes();
                payload.resize(size(task, i), b'.');
                node.send(3, Bytes::from(payload)).await.unwrap();
            }
        }));
    }
    let mut requesters = Vec::new();
    for task in 0..REQUESTERS {
        let node = nodes[0].clone();
        requesters.push(tokio::spawn(async move {
            for i in 0..REQUESTS {
                let question = format!("q{task}:{i}");
                let reply = node.request(3, Bytes::from(question.clone()), LONG).await;
                assert_eq!(
                    reply.unwrap(),
                    question.to_uppercase(),
                    "request {question}"
                );
            }
        }));
    }
    let mut next = [0usize; TASKS];
    within(LONG * 3, "every message and request", async {
        let mut answered = 0;
        while next.iter().sum::<usize>() < TASKS * EACH || answered < REQUESTERS * REQUESTS {
            let incoming = inbox.recv().await.unwrap();
            if incoming.is_request() {
                answered += 1;
                // Answered from tasks of their own: replies to node 1 are
                // made at once too.
                tokio::spawn(async move {
                    let answer = Bytes::from(text(&incoming.payload).to_uppercase());
                    incoming.reply(answer).await.unwrap();
                });
                continue;
            }
            let head = text(&incoming.payload.slice(..11));
            let (task, i) = head.split_once(':').expect("task:index");
            let (task, i): (usize, usize) = (task.parse().unwrap(), i.parse().unwrap());
            assert_eq!(i, next[task], "task {task}'s messages out of order");
            assert_eq!(incoming.payload.len(), size(task, i), "message {head}");
            next[task] += 1;
        }
    })
    .await;
    for task in senders.into_iter().chain(requesters) {
        within(LONG, "the senders to finish", task).await.unwrap();
    }
    assert_eq!(nodes[2].stats().messages_lost, 0);
    eprintln!(
        "frames that carried several messages: node 1 {}, node 3 {}",
        nodes[0].stats().batches_sent,
        nodes[2].stats().batches_sent
    );
}

/// A request gets its reply; an error reply and an unanswered request fail at once.
pub async fn request_gets_its_reply(mut harness: impl Harness) {
    let nodes = cluster(&mut harness, &[1, 2]).await;
    let mut inbox = nodes[1].inbox().unwrap();
    let server = tokio::spawn(async move {
        while let Some(request) = inbox.recv().await {
            match request.payload.as_ref() {
                b"fail" => request.reply_error("no such mailbox").await.unwrap(),
                b"ignore" => drop(request),
                other => {
                    let answer = Bytes::from(String::from_utf8_lossy(other).to_uppercase());
                    request.reply(answer).await.unwrap()
                }
            }
        }
    });
    let mut pending = Vec::new();
    for i in 0..50 {
        let node = nodes[0].clone();
        pending.push(tokio::spawn(async move {
            node.request(2, Bytes::from(format!("req{i}")), LONG).await
        }));
    }
    for (i, reply) in pending.into_iter().enumerate() {
        assert_eq!(reply.await.unwrap().unwrap(), format!("REQ{i}"));
    }
    match nodes[0].request(2, Bytes::from_static(b"fail"), LONG).await {
        Err(Error::Remote { node: 2, message }) => assert_eq!(message, "no such mailbox"),
        other => panic!("expected a remote error, got {other:?}"),
    }
    let started = Instant::now();
    let dropped = nodes[0]
        .request(2, Bytes::from_static(b"ignore"), LONG)
        .await;
    assert!(
        matches!(dropped, Err(Error::Remote { node: 2, .. })),
        "{dropped:?}"
    );
    assert!(
        started.elapsed() < LONG / 4,
        "an unanswered request waited for its time-out"
    );
    let own = nodes[0]
        .request(1, Bytes::from_static(b"self"), Duration::from_millis(100))
        .await;
    assert!(
        matches!(own, Err(Error::Timeout { node: 1, .. })),
        "nobody reads node 1's inbox: {own:?}"
    );
    server.abort();
}

/// A request nobody answers fails with `Timeout` after its time-out, not before.
pub async fn request_times_out_with_a_typed_error(mut harness: impl Harness) {
    let nodes = cluster(&mut harness, &[1, 2]).await;
    let mut inbox = nodes[1].inbox().unwrap();
    let hoarder = tokio::spawn(async move {
        let mut kept = Vec::new();
        while let Some(request) = inbox.recv().await {
            kept.push(request);
        }
    });
    let timeout = Duration::from_millis(200);
    let started = Instant::now();
    let result = nodes[0]
        .request(2, Bytes::from_static(b"anyone?"), timeout)
        .await;
    let elapsed = started.elapsed();
    assert!(
        matches!(result, Err(Error::Timeout { node: 2, timeout: t }) if t == timeout),
        "{result:?}"
    );
    assert!(
        elapsed >= timeout && elapsed < timeout * 5,
        "timed out after {elapsed:?}"
    );
    assert_eq!(nodes[0].stats().requests_timed_out, 1);
    hoarder.abort();
}

/// Messages to an unknown, dead or departed node fail at once; a request
/// waiting on a node that dies fails when it is declared dead.
pub async fn unknown_and_dead_nodes_fail_fast(mut harness: impl Harness) {
    let nodes = cluster(&mut harness, &[1, 2, 3]).await;
    let started = Instant::now();
    assert!(matches!(
        nodes[0].send(99, Bytes::new()).await,
        Err(Error::UnknownNode(99))
    ));
    assert!(matches!(
        nodes[0].request(99, Bytes::new(), LONG).await,
        Err(Error::UnknownNode(99))
    ));
    assert!(started.elapsed() < Duration::from_millis(100));

    let mut inbox = nodes[2].inbox().unwrap();
    let hoarder = tokio::spawn(async move {
        let mut kept = Vec::new();
        while let Some(request) = inbox.recv().await {
            kept.push(request);
        }
    });
    let requester = nodes[0].clone();
    let waiting = tokio::spawn(async move {
        requester
            .request(3, Bytes::from_static(b"slow"), LONG)
            .await
    });
    let mut events = nodes[0].member_events();
    // Let the request reach node 3 before it dies.
    until(LONG, "the request to reach node 3", || {
        nodes[2].stats().direct_delivered >= 1
    })
    .await;
    harness.kill(3).await;
    hoarder.abort();
    within(
        LONG,
        "node 3 to be declared dead",
        member_change(&mut events, 3, |c| *c == MemberChange::Died),
    )
    .await;
    let result = within(
        Duration::from_secs(1),
        "the pending request to fail",
        waiting,
    )
    .await
    .unwrap();
    assert!(matches!(result, Err(Error::NodeDead(3))), "{result:?}");
    let started = Instant::now();
    assert!(matches!(
        nodes[0].send(3, Bytes::new()).await,
        Err(Error::NodeDead(3))
    ));
    assert!(matches!(
        nodes[0].request(3, Bytes::new(), LONG).await,
        Err(Error::NodeDead(3))
    ));
    assert!(started.elapsed() < Duration::from_millis(100));
}

/// Messages lost on the way are reported as gaps: delivered + reported lost = sent.
pub async fn gap_is_reported_under_loss(mut harness: impl Harness) {
    // Broadcasts in a burst share frames (batches), so a round may lose
    // nothing: rounds go on until some message is missing, a bounded number
    // of times.
    const ROUND: u64 = 50;
    const ROUNDS: u64 = 40;
    let faults = harness.faults();
    let nodes = cluster(&mut harness, &[1, 2]).await;
    let mut subscription = nodes[1]
        .subscribe("lossy", SubscribeOptions::default())
        .await
        .unwrap();
    let mut events = nodes[1].events();
    faults.set_link(
        1,
        2,
        coordinator_core::testing::LinkFaults {
            drop: 0.3,
            ..Default::default()
        },
    );
    let mut delivered = Vec::new();
    let mut sent = 0;
    for _ in 0..ROUNDS {
        for _ in 0..ROUND {
            nodes[0]
                .broadcast("lossy", Bytes::from(sent.to_string()))
                .await
                .unwrap();
            sent += 1;
        }
        // The faults act where frames arrive: let those still in flight arrive
        // under the faults they were sent with.
        tokio::time::sleep(harness.timing().delivery).await;
        while let Some(message) = subscription.try_recv() {
            delivered.push(message.seq);
        }
        if (delivered.len() as u64) < sent {
            break;
        }
    }
    faults.clear();
    nodes[0]
        .broadcast("lossy", Bytes::from_static(b"end"))
        .await
        .unwrap();
    within(LONG, "the end marker", async {
        loop {
            let message = subscription.recv().await.unwrap();
            if message.payload == "end" {
                break;
            }
            delivered.push(message.seq);
        }
    })
    .await;
    assert!(
        delivered.windows(2).all(|w| w[0] < w[1]),
        "out of order: {delivered:?}"
    );
    let lost = broadcasts_reported_lost(&mut events, 1, Duration::ZERO).await;
    assert!(faults.dropped() > 0, "the fault injector dropped nothing");
    assert!(lost > 0, "no gap reported although frames were dropped");
    assert_eq!(
        delivered.len() as u64 + lost,
        sent,
        "delivered {} + reported lost {lost} != sent {sent}",
        delivered.len()
    );
    assert_eq!(nodes[1].stats().messages_lost, lost);
}

fn envelope(
    from: NodeId,
    kind: Kind,
    seq: u64,
    topic: &'static str,
    payload: &'static [u8],
) -> Envelope {
    Envelope {
        kind,
        from,
        from_incarnation: 1,
        to: 0,
        to_incarnation: 0,
        seq,
        aux: seq,
        topic: Bytes::from_static(topic.as_bytes()),
        payload: Bytes::from_static(payload),
    }
}

/// Garbage, wrong-key, forged, tampered and oversized frames are dropped and
/// counted; nothing of them reaches the application; real traffic goes on.
///
/// The attacker's link is made with the cluster key, as a node's would be (on
/// a carrier whose links prove the key, that is the only way to send at all).
/// Its unsealed frame is in node 1's name: a key holder's own unsealed frame
/// is genuine on a carrier whose link authenticates what it carries (Native),
/// but a frame in another node's name must be refused everywhere: for want of
/// a seal on a broker, for want of the sender's link on Native.
pub async fn tampered_and_unauthenticated_frames_are_dropped_and_counted(
    mut harness: impl Harness,
) {
    let nodes = cluster(&mut harness, &[1, 2]).await;
    let mut subscription = nodes[1]
        .subscribe("t", SubscribeOptions::default())
        .await
        .unwrap();
    let mut events = nodes[1].events();
    let attacker = harness.raw(666).await;
    let max = 1024 * 1024;
    let cluster = harness.cluster();
    let wrong_key = Codec::new(&cluster, Some(b"not the key"), false, max);
    let no_key = Codec::new(&cluster, None, false, max);
    let right_key = Codec::new(&cluster, Some(CLUSTER_KEY.as_bytes()), false, max);
    let mut tampered = right_key
        .encode(&envelope(666, Kind::Broadcast, 1, "t", b"evil"))
        .unwrap()
        .to_vec();
    let last = tampered.len() - 30;
    tampered[last] ^= 0x40;
    let frames = [
        Bytes::from_static(b"\x00\x01garbage that is not an envelope at all, not even close......"),
        wrong_key
            .encode(&envelope(666, Kind::Heartbeat, 0, "", b""))
            .unwrap(),
        wrong_key
            .encode(&envelope(666, Kind::Broadcast, 1, "t", b"evil"))
            .unwrap(),
        no_key
            .encode(&envelope(1, Kind::Broadcast, 1, "t", b"evil"))
            .unwrap(),
        Bytes::from(tampered),
        Bytes::from(vec![0xC0; max + 1]),
    ];
    for frame in frames {
        attacker.transport.publish(frame).await.unwrap();
    }
    // Each kind of bad frame must be reported (a duplicating carrier may report one twice).
    let expected = [
        (DropReason::Malformed, 1),
        (DropReason::Unauthenticated, 4),
        (DropReason::TooLarge, 1),
    ];
    let mut seen: HashMap<DropReason, u64> = HashMap::new();
    within(LONG, "every bad frame to be reported", async {
        while expected
            .iter()
            .any(|(reason, count)| seen.get(reason).copied().unwrap_or(0) < *count)
        {
            if let Event::Dropped { reason, .. } =
                event(&mut events, |e| matches!(e, Event::Dropped { .. })).await
            {
                *seen.entry(reason).or_default() += 1;
            }
        }
    })
    .await;
    let stats = nodes[1].stats();
    assert!(stats.dropped_malformed >= 1, "{stats:?}");
    assert!(stats.dropped_unauthenticated >= 4, "{stats:?}");
    assert!(stats.dropped_too_large >= 1, "{stats:?}");
    assert!(
        nodes[1].members().iter().all(|m| m.id != 666),
        "an unauthenticated node became a member"
    );
    nodes[0]
        .broadcast("t", Bytes::from_static(b"real"))
        .await
        .unwrap();
    let message = within(LONG, "real traffic after the attack", subscription.recv())
        .await
        .unwrap();
    assert_eq!(
        (message.from, message.payload.as_ref()),
        (1, &b"real"[..]),
        "the attacker's message was delivered"
    );
}

/// A captured frame sent again is not delivered again, and each replay is
/// counted: as a duplicate where anyone may publish (a broker), or as a frame
/// in another node's name where each link speaks for the node that proved the
/// key on it (Native).
pub async fn replayed_frames_are_not_delivered_twice(mut harness: impl Harness) {
    let nodes = cluster(&mut harness, &[1, 2]).await;
    let mut subscription = nodes[1]
        .subscribe("t", SubscribeOptions::default())
        .await
        .unwrap();
    let mut eavesdropper = harness.raw(667).await;
    nodes[0]
        .broadcast("t", Bytes::from_static(b"once"))
        .await
        .unwrap();
    let captured = within(LONG, "a broadcast frame to capture", async {
        loop {
            // Taken as it came, without checking it (on a carrier whose
            // links authenticate what they carry, envelopes have no seal).
            if let Some(Inbound::Frame(frame)) = eavesdropper.inbound.recv().await
                && peek_kind(&frame) == Some(Kind::Broadcast)
                && peek_sender(&frame) == Some(1)
            {
                return frame;
            }
        }
    })
    .await;
    let first = within(LONG, "the original", subscription.recv())
        .await
        .unwrap();
    assert_eq!(first.payload, "once");
    let refused = |stats: StatsSnapshot| stats.dropped_duplicate + stats.dropped_unauthenticated;
    let before = refused(nodes[1].stats());
    for _ in 0..3 {
        eavesdropper
            .transport
            .publish(captured.clone())
            .await
            .unwrap();
    }
    until(LONG, "the replays to be counted", || {
        refused(nodes[1].stats()) >= before + 3
    })
    .await;
    nodes[0]
        .broadcast("t", Bytes::from_static(b"next"))
        .await
        .unwrap();
    let next = within(LONG, "the next message", subscription.recv())
        .await
        .unwrap();
    assert_eq!(next.payload, "next", "a replayed frame was delivered again");
}

/// Messages over the size limit are refused before sending, with the sizes in the error.
pub async fn oversized_messages_are_refused(mut harness: impl Harness) {
    let nodes = cluster(&mut harness, &[1, 2]).await;
    let big = Bytes::from(vec![0u8; 2 * 1024 * 1024]);
    for result in [
        nodes[0].broadcast("t", big.clone()).await,
        nodes[0].send(2, big.clone()).await,
        nodes[0].request(2, big.clone(), LONG).await.map(|_| ()),
    ] {
        match result {
            Err(Error::TooLarge { size, max }) => assert!(size == big.len() && max < size),
            other => panic!("expected TooLarge, got {other:?}"),
        }
    }
    let long_topic = "x".repeat(256);
    assert!(matches!(
        nodes[0].broadcast(&long_topic, Bytes::new()).await,
        Err(Error::InvalidTopic { .. })
    ));
    assert!(matches!(
        nodes[0].subscribe("", SubscribeOptions::default()).await,
        Err(Error::InvalidTopic { .. })
    ));
    assert_eq!(nodes[0].stats().broadcasts_sent, 0);
}
