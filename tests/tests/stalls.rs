//! A destination whose link stalls costs only its own messages, and only
//! until the send deadline: the node, and its other destinations, go on.

use async_trait::async_trait;
use bytes::Bytes;
use coordinator_core::testing::MemoryNetwork;
use coordinator_core::transport::{Link, Transport};
use coordinator_core::{Coordinator, Error, Node, NodeId, Settings, TransportError};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tests::wait::{converge, within};

const LIMIT: Duration = Duration::from_secs(10);
const SEND_TIMEOUT: Duration = Duration::from_millis(300);

/// A carrier whose sends to one node never finish while `stalled` is set.
struct Stalling {
    inner: Arc<dyn Transport>,
    node: NodeId,
    stalled: AtomicBool,
    /// Sends stuck in the carrier so far.
    stuck: AtomicU64,
}

#[async_trait]
impl Transport for Stalling {
    async fn publish(&self, frame: Bytes) -> Result<(), TransportError> {
        self.inner.publish(frame).await
    }

    async fn send_to(&self, node: NodeId, frame: Bytes) -> Result<(), TransportError> {
        if node == self.node && self.stalled.load(Ordering::SeqCst) {
            self.stuck.fetch_add(1, Ordering::SeqCst);
            std::future::pending::<()>().await;
        }
        self.inner.send_to(node, frame).await
    }

    async fn close(&self) {
        self.inner.close().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_destination_fails_by_the_deadline_and_blocks_nobody_else() {
    let network = MemoryNetwork::new();
    let Link { transport, inbound } = network.connect(1);
    let stalling = Arc::new(Stalling {
        inner: transport,
        node: 2,
        stalled: AtomicBool::new(false),
        stuck: AtomicU64::new(0),
    });
    let link = Link {
        transport: stalling.clone(),
        inbound,
    };
    let sender =
        Arc::new(Node::start(Settings::new(1).send_timeout(SEND_TIMEOUT), "Memory", link).unwrap());
    let two = Arc::new(network.start(Settings::new(2)).unwrap());
    let three = Arc::new(network.start(Settings::new(3)).unwrap());
    let nodes: Vec<Arc<dyn Coordinator>> = vec![sender.clone(), two.clone(), three.clone()];
    converge(&nodes, LIMIT).await;
    let mut inbox_two = two.inbox().unwrap();
    let mut inbox_three = three.inbox().unwrap();

    stalling.stalled.store(true, Ordering::SeqCst);
    let started = Instant::now();
    let stuck = tokio::spawn({
        let sender = sender.clone();
        async move { sender.send(2, Bytes::from_static(b"stuck")).await }
    });
    // The second one waits behind the first, once that one is with the carrier.
    tests::wait::until(LIMIT, "the first send to stall", || {
        stalling.stuck.load(Ordering::SeqCst) == 1
    })
    .await;
    let behind = tokio::spawn({
        let sender = sender.clone();
        async move { sender.send(2, Bytes::from_static(b"behind")).await }
    });
    // Another destination is not held up meanwhile.
    within(
        Duration::from_millis(200),
        "a message to node 3",
        sender.send(3, Bytes::from_static(b"free")),
    )
    .await
    .unwrap();
    let free = within(LIMIT, "node 3's message", inbox_three.recv())
        .await
        .unwrap();
    assert_eq!(free.payload, Bytes::from_static(b"free"));

    let stuck = within(LIMIT, "the stalled send to fail", stuck)
        .await
        .unwrap();
    assert!(
        matches!(stuck, Err(Error::Transport(TransportError::Stalled(_)))),
        "{stuck:?}"
    );
    let behind = within(LIMIT, "the send behind it to settle", behind)
        .await
        .unwrap();
    assert!(
        matches!(behind, Err(Error::Transport(TransportError::Stalled(_)))),
        "{behind:?}"
    );
    let waited = started.elapsed();
    assert!(
        waited >= SEND_TIMEOUT && waited < SEND_TIMEOUT * 4,
        "settled after {waited:?}"
    );

    // The link comes back: the next message goes through, and the receiver
    // reports the two it never got instead of waiting for them.
    stalling.stalled.store(false, Ordering::SeqCst);
    let mut events = two.events();
    sender.send(2, Bytes::from_static(b"after")).await.unwrap();
    let after = within(LIMIT, "the message after the stall", inbox_two.recv())
        .await
        .unwrap();
    assert_eq!(after.payload, Bytes::from_static(b"after"));
    let gap = within(
        LIMIT,
        "the gap",
        tests::wait::event(&mut events, |e| {
            matches!(e, coordinator_core::Event::Gap { from: 1, .. })
        }),
    )
    .await;
    assert!(
        matches!(
            gap,
            coordinator_core::Event::Gap {
                first: 1,
                count: 2,
                ..
            }
        ),
        "{gap:?}"
    );
    assert_eq!(sender.stats().send_failures, 2);
}
