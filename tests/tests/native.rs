//! What the `Native` carrier refuses on its port, and how it heals.
//!
//! Each attack is refused and counted, nothing of it reaches the application,
//! and the node keeps serving its real peers.

use bytes::Bytes;
use coordinator::{Coordinator, MemberChange, SubscribeOptions};
use coordinator_core::config::NativeConfig;
use coordinator_native::handshake::{self, AuthKey, Hello};
use coordinator_native::swim::{GossipCodec, Message, Packet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tests::harness::{self, CLUSTER_KEY, EngineHarness, Harness, NativeConnector};
use tests::wait::{converge, member_change, until, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

const LONG: Duration = Duration::from_secs(10);

async fn two_nodes() -> (
    EngineHarness<NativeConnector>,
    Vec<Arc<dyn Coordinator>>,
    SocketAddr,
) {
    let mut harness = harness::native().await;
    let nodes = vec![harness.start(1).await, harness.start(2).await];
    converge(&nodes, LONG).await;
    let target = harness.connector().address(2).unwrap();
    (harness, nodes, target)
}

/// Node 1's broadcast still reaches node 2.
async fn still_serving(nodes: &[Arc<dyn Coordinator>]) {
    let mut subscription = nodes[1]
        .subscribe("after", SubscribeOptions::default())
        .await
        .unwrap();
    nodes[0]
        .broadcast("after", Bytes::from_static(b"still here"))
        .await
        .unwrap();
    let message = within(LONG, "real traffic after the attack", subscription.recv())
        .await
        .unwrap();
    assert_eq!(message.payload, "still here");
    assert_eq!(nodes[1].members().len(), 2, "no stranger became a member");
}

/// Waits until the server closes `stream` (a read returns nothing or fails).
async fn closed_by_server(stream: &mut TcpStream) {
    within(LONG, "the server to close the connection", async {
        let mut buffer = [0u8; 1024];
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await;
}

/// TLS with the right cluster name and a key of our own.
async fn tls_handshake(
    target: SocketAddr,
    key: &[u8],
) -> (
    tokio_rustls::client::TlsStream<TcpStream>,
    Result<Hello, handshake::HandshakeError>,
) {
    let tls = coordinator_native::tls::build(&NativeConfig::default()).unwrap();
    let tcp = TcpStream::connect(target).await.unwrap();
    let mut stream = tls
        .connector
        .connect(tls.server_name.clone(), tcp)
        .await
        .unwrap();
    let mut exporter = [0u8; 32];
    stream
        .get_ref()
        .1
        .export_keying_material(&mut exporter, handshake::EXPORTER_LABEL, None)
        .unwrap();
    let hello = Hello::new(666, 1, "127.0.0.1:9".parse().unwrap());
    let result = handshake::client(
        &mut stream,
        &AuthKey::derive(key, "conformance"),
        &exporter,
        &hello,
    )
    .await;
    (stream, result)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_with_the_wrong_key_is_refused_and_counted() {
    let (_harness, nodes, target) = two_nodes().await;
    let before = nodes[1].stats().dropped_unauthenticated;
    let (mut stream, result) = tls_handshake(target, b"not the cluster key").await;
    assert!(result.is_err(), "the handshake must fail without the key");
    closed_by_server(stream.get_mut().0).await;
    until(LONG, "the refusal to be counted", || {
        nodes[1].stats().dropped_unauthenticated > before
    })
    .await;
    still_serving(&nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_and_garbage_are_refused_and_counted() {
    let (_harness, nodes, target) = two_nodes().await;
    let before = nodes[1].stats();
    let mut plaintext = TcpStream::connect(target).await.unwrap();
    plaintext
        .write_all(b"\x00\x00\x00\x10\x03hello, no TLS here")
        .await
        .unwrap();
    closed_by_server(&mut plaintext).await;
    let mut garbage = TcpStream::connect(target).await.unwrap();
    let noise: Vec<u8> = (0..4096u32).map(|i| (i * 7919 % 251) as u8).collect();
    let _ = garbage.write_all(&noise).await;
    closed_by_server(&mut garbage).await;
    until(LONG, "both refusals to be counted", || {
        let now = nodes[1].stats();
        now.dropped_unauthenticated + now.dropped_malformed
            >= before.dropped_unauthenticated + before.dropped_malformed + 2
    })
    .await;
    still_serving(&nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_is_dropped_after_the_handshake_timeout() {
    let (_harness, nodes, target) = two_nodes().await;
    let before = nodes[1].stats().dropped_malformed;
    let started = Instant::now();
    let mut silent = TcpStream::connect(target).await.unwrap();
    closed_by_server(&mut silent).await;
    let held = started.elapsed();
    let timeout = NativeConfig::default().timeout;
    assert!(
        held >= timeout - Duration::from_millis(50) && held < timeout * 3,
        "a silent socket was held {held:?} (handshake timeout {timeout:?})"
    );
    until(LONG, "the silent client to be counted", || {
        nodes[1].stats().dropped_malformed > before
    })
    .await;
    still_serving(&nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_over_the_size_limit_closes_the_connection_and_is_counted() {
    let (_harness, nodes, target) = two_nodes().await;
    let before = nodes[1].stats().dropped_too_large;
    let (mut stream, result) = tls_handshake(target, CLUSTER_KEY.as_bytes()).await;
    result.expect("the right key passes the handshake");
    // A message frame announcing 64 MiB: refused on its header, before any allocation.
    stream
        .write_all(&[0x04, 0x00, 0x00, 0x01, 0x03])
        .await
        .unwrap();
    stream.flush().await.unwrap();
    closed_by_server(stream.get_mut().0).await;
    until(LONG, "the oversized frame to be counted", || {
        nodes[1].stats().dropped_too_large > before
    })
    .await;
    still_serving(&nodes).await;
}

/// Envelopes go unsealed on Native (the TLS session, bound to a proof of the
/// key, authenticates them), so the connection names their sender: a key
/// holder that writes another node's name in one is refused and counted, the
/// application never sees it, and the connection stays open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_in_another_nodes_name_is_refused_and_counted() {
    use coordinator_core::envelope::{Codec, Envelope, Kind};
    use coordinator_native::frame::{FrameType, read_frame, write_frame};
    let (_harness, nodes, target) = two_nodes().await;
    let mut forged_topic = nodes[1]
        .subscribe("forged", SubscribeOptions::default())
        .await
        .unwrap();
    let before = nodes[1].stats().dropped_unauthenticated;
    let (mut stream, result) = tls_handshake(target, CLUSTER_KEY.as_bytes()).await;
    result.expect("the right key passes the handshake");
    // Node 666 (the Hello's) writes a broadcast in node 1's name.
    let forged = Codec::new("conformance", None, false, 1 << 20)
        .encode(&Envelope {
            kind: Kind::Broadcast,
            from: 1,
            from_incarnation: 1,
            to: 0,
            to_incarnation: 0,
            seq: 1,
            aux: 0,
            topic: Bytes::from_static(b"forged"),
            payload: Bytes::from_static(b"not from node 1"),
        })
        .unwrap();
    write_frame(&mut stream, FrameType::Message, &forged)
        .await
        .unwrap();
    // The connection is still served: a Ping is answered.
    write_frame(&mut stream, FrameType::Ping, &[])
        .await
        .unwrap();
    stream.flush().await.unwrap();
    let (kind, read) = within(LONG, "the Pong", read_frame(&mut stream, 64))
        .await
        .unwrap();
    assert_eq!(kind, FrameType::Pong);
    assert_eq!(read.as_ref(), 1u64.to_be_bytes(), "one message read");
    until(LONG, "the forged message to be counted", || {
        nodes[1].stats().dropped_unauthenticated > before
    })
    .await;
    still_serving(&nodes).await;
    assert!(
        forged_topic.try_recv().is_none(),
        "a message in another node's name reached the application"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_and_forged_gossip_datagrams_are_refused_and_counted() {
    let (_harness, nodes, target) = two_nodes().await;
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let key = AuthKey::gossip_key(CLUSTER_KEY.as_bytes(), "conformance");
    // From a gossip-only peer that holds the key (a real member's id would be
    // believed: whoever holds the key is trusted).
    let packet = Packet {
        from: 77,
        run: 1,
        messages: vec![Message::Ping { seq: 1, target: 2 }],
        updates: Vec::new(),
    };
    let datagram = GossipCodec::new(key).seal(&packet);
    let before = nodes[1].stats();
    socket.send_to(&datagram, target).await.unwrap();
    socket.send_to(&datagram, target).await.unwrap();
    let forged = GossipCodec::new([9; 32]).seal(&packet);
    socket.send_to(&forged, target).await.unwrap();
    socket.send_to(b"garbage", target).await.unwrap();
    until(
        LONG,
        "the replay, the forgery and the garbage to be counted",
        || {
            let now = nodes[1].stats();
            now.dropped_duplicate > before.dropped_duplicate
                && now.dropped_unauthenticated > before.dropped_unauthenticated
                && now.dropped_malformed > before.dropped_malformed
        },
    )
    .await;
    still_serving(&nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gossip_partition_is_detected_on_both_sides_and_heals_by_itself() {
    let mut harness = harness::native().await;
    let faults = harness.faults();
    let mut nodes = Vec::new();
    for id in 1..=4 {
        nodes.push(harness.start(id).await);
    }
    converge(&nodes, LONG).await;
    // Every death each node declares, for the check at the end.
    let deaths = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let watchers: Vec<_> = nodes
        .iter()
        .map(|node| {
            let (observer, mut events) = (node.node_id(), node.member_events());
            let deaths = deaths.clone();
            tokio::spawn(async move {
                while let Some(event) = events.next_event().await {
                    if event.change == MemberChange::Died {
                        deaths.lock().push((observer, event.member.id));
                    }
                }
            })
        })
        .collect();
    let mut at_1 = nodes[0].member_events();
    let mut at_4 = nodes[3].member_events();
    faults.partition(&[1, 2], &[3, 4]);
    within(
        LONG,
        "node 1 to declare node 4 dead",
        member_change(&mut at_1, 4, |c| *c == MemberChange::Died),
    )
    .await;
    within(
        LONG,
        "node 4 to declare node 1 dead",
        member_change(&mut at_4, 1, |c| *c == MemberChange::Died),
    )
    .await;
    faults.heal();
    within(
        LONG,
        "node 1 to see node 4 again",
        member_change(&mut at_1, 4, |c| *c == MemberChange::Recovered),
    )
    .await;
    converge(&nodes, LONG).await;
    // The far side's verdicts arrive with the heal; none may kill a member
    // that its own side could reach all along.
    tokio::time::sleep(Duration::from_millis(500)).await;
    converge(&nodes, LONG).await;
    watchers.iter().for_each(|watcher| watcher.abort());
    let side = |id| if id <= 2 { 0 } else { 1 };
    let deaths = deaths.lock().clone();
    for (observer, dead) in &deaths {
        assert_ne!(
            side(*observer),
            side(*dead),
            "node {observer} declared node {dead} of its own side dead: {deaths:?}"
        );
    }
    assert!(
        deaths.contains(&(1, 4)) && deaths.contains(&(4, 1)),
        "{deaths:?}"
    );
}

/// A node that left comes back on another port while the process of its
/// old run still exists (its handle kept): the others reach the new run,
/// because the old one closed its connections when it left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_left_comes_back_on_another_port() {
    let mut loopback = coordinator_native::Loopback::with_key("moved", CLUSTER_KEY);
    let mut start = async |id| -> Arc<dyn Coordinator> {
        let node: Arc<dyn Coordinator> = Arc::new(loopback.start(id).await.unwrap());
        node
    };
    let first = start(1).await;
    let second = start(2).await;
    let third = start(3).await;
    converge(&[first.clone(), second.clone(), third.clone()], LONG).await;
    // Traffic both ways, so that every pair has its connections open.
    first.send(3, Bytes::from_static(b"before")).await.unwrap();
    third.send(1, Bytes::from_static(b"before")).await.unwrap();
    let mut events = first.member_events();
    third.leave().await.unwrap();
    within(
        LONG,
        "the departure",
        member_change(&mut events, 3, |c| *c == MemberChange::Left),
    )
    .await;
    // A new port, joining through every earlier address (the old run's too).
    let back = start(3).await;
    converge(&[first.clone(), second.clone(), back.clone()], LONG).await;
    let mut inbox = back.inbox().unwrap();
    first
        .send(3, Bytes::from_static(b"welcome back"))
        .await
        .unwrap();
    let incoming = within(LONG, "a message to the new run", inbox.recv())
        .await
        .unwrap();
    assert_eq!(incoming.payload, "welcome back");
    drop(third);
}
