//! The `Disabled` carrier, and partitions that heal by themselves.

use bytes::Bytes;
use coordinator::{Coordinator, CoordinatorConfig, MemberChange, MemberState, SubscribeOptions};
use std::sync::Arc;
use std::time::Duration;
use tests::harness::{self, Harness};
use tests::wait::{converge, member_change, until, within};

const LONG: Duration = Duration::from_secs(10);

#[tokio::test]
async fn disabled_is_a_cluster_of_one_that_still_works_locally() {
    let config = CoordinatorConfig::from_json(r#"{"@type":"Disabled","nodeId":7}"#).unwrap();
    let node = coordinator::start(&config).await.unwrap();
    let members = node.members();
    assert_eq!(members.len(), 1);
    assert!(members[0].local && members[0].id == 7 && members[0].state == MemberState::Alive);
    let mut own = node
        .subscribe("t", SubscribeOptions { receive_own: true })
        .await
        .unwrap();
    node.broadcast("t", Bytes::from_static(b"to myself"))
        .await
        .unwrap();
    assert_eq!(own.recv().await.unwrap().payload, "to myself");
    let mut inbox = node.inbox().unwrap();
    let server = tokio::spawn(async move {
        let request = inbox.recv().await.unwrap();
        request.reply(Bytes::from_static(b"pong")).await.unwrap();
    });
    assert_eq!(
        node.request(7, Bytes::from_static(b"ping"), LONG)
            .await
            .unwrap(),
        "pong"
    );
    server.await.unwrap();
    assert!(matches!(
        node.send(8, Bytes::new()).await,
        Err(coordinator::Error::UnknownNode(8))
    ));
    node.leave().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_is_detected_on_both_sides_and_heals_by_itself() {
    let mut harness = harness::memory().await;
    let faults = harness.faults();
    let mut nodes: Vec<Arc<dyn Coordinator>> = Vec::new();
    for id in 1..=3 {
        nodes.push(harness.start(id).await);
    }
    converge(&nodes, LONG).await;
    let mut at_1 = nodes[0].member_events();
    let mut at_3 = nodes[2].member_events();
    let mut subscription = nodes[2]
        .subscribe("t", SubscribeOptions::default())
        .await
        .unwrap();
    faults.partition(&[1, 2], &[3]);
    within(
        LONG,
        "node 1 to declare node 3 dead",
        member_change(&mut at_1, 3, |c| *c == MemberChange::Died),
    )
    .await;
    within(
        LONG,
        "node 3 to declare node 1 dead",
        member_change(&mut at_3, 1, |c| *c == MemberChange::Died),
    )
    .await;
    assert_eq!(
        nodes[1].members().iter().find(|m| m.id == 1).unwrap().state,
        MemberState::Alive,
        "same side stays alive"
    );
    let dropped_before = faults.dropped_between(1, 3);
    nodes[0]
        .broadcast("t", Bytes::from_static(b"during"))
        .await
        .unwrap();
    // Frames from node 1 reach node 3's fault stage in order: once three more
    // are dropped, the broadcast among them was dropped too.
    until(LONG, "the broadcast to be cut off", || {
        faults.dropped_between(1, 3) >= dropped_before + 3
    })
    .await;
    faults.heal();
    within(
        LONG,
        "node 1 to see node 3 again",
        member_change(&mut at_1, 3, |c| *c == MemberChange::Recovered),
    )
    .await;
    within(
        LONG,
        "node 3 to see node 1 again",
        member_change(&mut at_3, 1, |c| *c == MemberChange::Recovered),
    )
    .await;
    converge(&nodes, LONG).await;
    nodes[0]
        .broadcast("t", Bytes::from_static(b"after"))
        .await
        .unwrap();
    let message = within(LONG, "a broadcast after the heal", subscription.recv())
        .await
        .unwrap();
    assert_eq!(
        message.payload, "after",
        "the message sent during the partition cannot arrive"
    );
    assert!(
        nodes[2].stats().messages_lost >= 1,
        "the message lost in the partition was not reported"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_with_one_node_id_are_reported_once() {
    use coordinator::{DropReason, Event};
    use coordinator_core::envelope::{Codec, Envelope, Kind};
    let mut harness = harness::memory().await;
    let node = harness.start(1).await;
    let mut events = node.events();
    let other_process = harness.raw(99).await;
    let codec = Codec::new(
        "conformance",
        Some(harness::CLUSTER_KEY.as_bytes()),
        false,
        1 << 20,
    );
    let impostor_incarnation = 42;
    for counter in 1..=3 {
        let heartbeat = Envelope {
            kind: Kind::Heartbeat,
            from: 1,
            from_incarnation: impostor_incarnation,
            to: 0,
            to_incarnation: 0,
            seq: 0,
            aux: counter,
            topic: Bytes::new(),
            payload: Bytes::new(),
        };
        other_process
            .transport
            .publish(codec.encode(&heartbeat).unwrap())
            .await
            .unwrap();
    }
    // A frame that is dropped as malformed marks the end of the heartbeats.
    other_process
        .transport
        .publish(Bytes::from_static(b"end of the test frames"))
        .await
        .unwrap();
    let mut conflicts = Vec::new();
    within(LONG, "the frames to be handled", async {
        loop {
            match events.next_event().await.unwrap() {
                Event::Dropped {
                    reason: DropReason::Malformed,
                    ..
                } => break,
                Event::DuplicateNodeId { incarnation } => conflicts.push(incarnation),
                _ => {}
            }
        }
    })
    .await;
    assert_eq!(
        conflicts,
        vec![impostor_incarnation],
        "reported once per conflicting process"
    );
    assert_eq!(node.members().len(), 1, "the impostor is not a member");
}
