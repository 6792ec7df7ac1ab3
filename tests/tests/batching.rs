//! Broadcasts in a burst share carrier frames (batches); a lone one goes out
//! alone, at once. What the carrier refuses after `broadcast` returned is
//! reported, and a departure waits for what is queued.

use async_trait::async_trait;
use bytes::Bytes;
use coordinator_core::envelope::{Batch, Codec, Kind, peek_kind};
use coordinator_core::testing::MemoryNetwork;
use coordinator_core::transport::{Inbound, Transport};
use coordinator_core::{
    Coordinator, DropReason, Error, Event, MemberChange, Node, NodeId, Settings, SubscribeOptions,
    TransportError,
};
use futures_util::FutureExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tests::wait::{broadcasts_reported_lost, converge, event, member_change, until, within};
use tokio::sync::Semaphore;

const LIMIT: Duration = Duration::from_secs(10);

/// A carrier whose broadcast frames can be held back or refused.
struct Gated {
    inner: Arc<dyn Transport>,
    holding: AtomicBool,
    gate: Semaphore,
    /// Broadcast and batch frames handed to `publish`.
    attempts: AtomicU64,
    refuse_batches: AtomicBool,
    refuse_all: AtomicBool,
}

impl Gated {
    fn new(inner: Arc<dyn Transport>) -> Arc<Self> {
        Arc::new(Self {
            inner,
            holding: AtomicBool::new(false),
            gate: Semaphore::new(0),
            attempts: AtomicU64::new(0),
            refuse_batches: AtomicBool::new(false),
            refuse_all: AtomicBool::new(false),
        })
    }

    fn hold(&self) {
        self.holding.store(true, Ordering::SeqCst);
    }

    fn release(&self) {
        self.holding.store(false, Ordering::SeqCst);
        self.gate.add_permits(Semaphore::MAX_PERMITS / 2);
    }
}

#[async_trait]
impl Transport for Gated {
    async fn publish(&self, frame: Bytes) -> Result<(), TransportError> {
        let kind = peek_kind(&frame);
        if matches!(kind, Some(Kind::Broadcast | Kind::Batch)) {
            self.attempts.fetch_add(1, Ordering::SeqCst);
            if self.holding.load(Ordering::SeqCst) {
                self.gate.acquire().await.expect("gate open").forget();
            }
            let refused = self.refuse_all.load(Ordering::SeqCst)
                || (kind == Some(Kind::Batch) && self.refuse_batches.load(Ordering::SeqCst));
            if refused {
                return Err(TransportError::LinkDown {
                    carrier: "Gated",
                    detail: "refused by the test".into(),
                });
            }
        }
        self.inner.publish(frame).await
    }

    async fn send_to(&self, node: NodeId, frame: Bytes) -> Result<(), TransportError> {
        self.inner.send_to(node, frame).await
    }

    async fn close(&self) {
        self.inner.close().await
    }
}

/// Node 1 over a gated carrier and node 2, both on one memory network, seeing each other.
async fn gated_pair() -> (Arc<Gated>, Arc<Node>, Arc<Node>) {
    tests::harness::wrapped_memory_pair(Gated::new).await
}

/// Broadcasts "first" on `t` from a task of its own, and holds its publish in
/// the carrier: broadcasts after it wait in the queue.
async fn first_held(
    gated: &Arc<Gated>,
    sender: &Arc<Node>,
) -> tokio::task::JoinHandle<Result<(), Error>> {
    gated.hold();
    let first = tokio::spawn({
        let sender = sender.clone();
        async move { sender.broadcast("t", Bytes::from_static(b"first")).await }
    });
    until(LIMIT, "the first publish to start", || {
        gated.attempts.load(Ordering::SeqCst) == 1
    })
    .await;
    first
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_goes_out_in_batches_in_order_and_a_lone_broadcast_alone() {
    const COUNT: u64 = 5000;
    let network = MemoryNetwork::new();
    let sender = Arc::new(network.start(Settings::new(1)).unwrap());
    let receiver = Arc::new(network.start(Settings::new(2)).unwrap());
    let nodes: Vec<Arc<dyn Coordinator>> = vec![sender.clone(), receiver.clone()];
    converge(&nodes, LIMIT).await;
    let mut eavesdropper = network.connect(667).inbound;
    let mut subscription = receiver
        .subscribe("burst", SubscribeOptions::default())
        .await
        .unwrap();
    let burst = tokio::spawn({
        let sender = sender.clone();
        async move {
            for i in 0..COUNT {
                sender
                    .broadcast("burst", Bytes::from(i.to_string()))
                    .await
                    .unwrap();
            }
        }
    });
    within(LIMIT, "the whole burst, in order", async {
        for i in 0..COUNT {
            let message = subscription.recv().await.unwrap();
            assert_eq!(message.payload, i.to_string());
            assert_eq!(message.seq, i + 1);
        }
    })
    .await;
    burst.await.unwrap();
    assert!(sender.stats().batches_sent > 0, "{:?}", sender.stats());
    assert!(receiver.stats().batches_received > 0);
    assert!(
        receiver.stats().frames_received < COUNT,
        "one frame per broadcast: {:?}",
        receiver.stats()
    );
    assert_eq!(receiver.stats().messages_lost, 0);

    // Quiet now: the next broadcast goes out on its own, as a plain envelope.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mut kinds = Vec::new();
    while let Ok(Some(Inbound::Frame(frame))) =
        tokio::time::timeout(Duration::from_millis(1), eavesdropper.recv()).await
    {
        kinds.push(peek_kind(&frame));
    }
    assert!(kinds.contains(&Some(Kind::Batch)), "{kinds:?}");
    sender
        .broadcast("burst", Bytes::from_static(b"lone"))
        .await
        .unwrap();
    let lone = within(LIMIT, "the lone broadcast's frame", async {
        loop {
            if let Some(Inbound::Frame(frame)) = eavesdropper.recv().await
                && peek_kind(&frame) != Some(Kind::Heartbeat)
            {
                return frame;
            }
        }
    })
    .await;
    assert_eq!(peek_kind(&lone), Some(Kind::Broadcast));
    let message = within(LIMIT, "the lone broadcast", subscription.recv())
        .await
        .unwrap();
    assert_eq!(message.payload, "lone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_broadcasts_the_carrier_refuses_are_reported_and_seen_as_a_gap() {
    let (gated, sender, receiver) = gated_pair().await;
    let mut subscription = receiver
        .subscribe("t", SubscribeOptions::default())
        .await
        .unwrap();
    let mut sender_events = sender.events();
    let mut receiver_events = receiver.events();
    let first = first_held(&gated, &sender).await;
    // The carrier is busy with the first one: these wait in the queue and
    // `broadcast` returns at once.
    for i in 0..10 {
        within(
            LIMIT,
            "a queued broadcast to return",
            sender.broadcast("t", Bytes::from(i.to_string())),
        )
        .await
        .unwrap();
    }
    assert!(!first.is_finished());
    gated.refuse_batches.store(true, Ordering::SeqCst);
    gated.release();
    first.await.unwrap().unwrap();
    let failed = within(
        LIMIT,
        "the failure to be reported",
        event(&mut sender_events, |e| {
            matches!(e, Event::SendFailed { .. })
        }),
    )
    .await;
    let Event::SendFailed { messages, detail } = failed else {
        unreachable!()
    };
    assert_eq!(messages, 10);
    assert!(detail.contains("refused by the test"), "{detail}");
    let stats = sender.stats();
    assert_eq!(
        (
            stats.broadcasts_failed,
            stats.batches_sent,
            stats.send_failures
        ),
        (10, 1, 1)
    );

    gated.refuse_batches.store(false, Ordering::SeqCst);
    sender
        .broadcast("t", Bytes::from_static(b"after"))
        .await
        .unwrap();
    let got = within(LIMIT, "the first and the next broadcast", async {
        [
            subscription.recv().await.unwrap(),
            subscription.recv().await.unwrap(),
        ]
    })
    .await;
    assert_eq!(
        got.map(|m| (m.payload, m.seq)),
        [
            (Bytes::from_static(b"first"), 1),
            (Bytes::from_static(b"after"), 12)
        ]
    );
    let gap = event(&mut receiver_events, |e| matches!(e, Event::Gap { .. })).await;
    assert!(
        matches!(
            gap,
            Event::Gap {
                from: 1,
                first: 2,
                count: 10,
                ..
            }
        ),
        "{gap:?}"
    );
}

/// A refused publish may still have reached some receivers (a carrier that
/// wrote to some peers, a time-out whose answer was lost), so its number is
/// never given back: the caller gets the error, and a receiver that missed it
/// reports it lost instead of taking the next broadcast for a duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broadcast_the_carrier_refuses_fails_and_its_number_is_reported_lost() {
    let (gated, sender, receiver) = gated_pair().await;
    let mut subscription = receiver
        .subscribe("t", SubscribeOptions::default())
        .await
        .unwrap();
    let mut events = receiver.events();
    gated.refuse_all.store(true, Ordering::SeqCst);
    let refused = sender.broadcast("t", Bytes::from_static(b"refused")).await;
    assert!(
        matches!(
            refused,
            Err(Error::Transport(TransportError::LinkDown { .. }))
        ),
        "{refused:?}"
    );
    gated.refuse_all.store(false, Ordering::SeqCst);
    sender
        .broadcast("t", Bytes::from_static(b"kept"))
        .await
        .unwrap();
    let kept = within(LIMIT, "the next broadcast", subscription.recv())
        .await
        .unwrap();
    assert_eq!((kept.payload, kept.seq), (Bytes::from_static(b"kept"), 2));
    assert_eq!(
        broadcasts_reported_lost(&mut events, 1, Duration::from_millis(300)).await,
        1
    );
    assert_eq!(sender.stats().send_failures, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaving_sends_the_queued_broadcasts_first() {
    const QUEUED: u64 = 100;
    let (gated, sender, receiver) = gated_pair().await;
    let mut subscription = receiver
        .subscribe("t", SubscribeOptions::default())
        .await
        .unwrap();
    let mut members = receiver.member_events();
    let first = first_held(&gated, &sender).await;
    for i in 0..QUEUED {
        sender
            .broadcast("t", Bytes::from(i.to_string()))
            .await
            .unwrap();
    }
    let leaving = tokio::spawn({
        let sender = sender.clone();
        async move { sender.leave().await }
    });
    gated.release();
    first.await.unwrap().unwrap();
    leaving.await.unwrap().unwrap();
    within(
        LIMIT,
        "the departure",
        member_change(&mut members, 1, |c| *c == MemberChange::Left),
    )
    .await;
    let delivered = std::iter::from_fn(|| subscription.try_recv()).count() as u64;
    assert_eq!(delivered, QUEUED + 1, "delivered before the departure");
    assert_eq!(receiver.stats().messages_lost, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broadcast_waiting_for_room_fails_when_the_node_stops() {
    let (gated, sender, _receiver) = gated_pair().await;
    let first = first_held(&gated, &sender).await;
    // Larger than a batch: one batch each. With room, a broadcast is queued
    // on its first poll; the first one that is not is waiting for room.
    let big = Bytes::from(vec![7u8; 61 * 1024]);
    let mut queued = 0;
    let mut waiting = loop {
        let mut sending = Box::pin(sender.broadcast("t", big.clone()));
        match sending.as_mut().now_or_never() {
            Some(result) => result.unwrap(),
            None => break sending,
        }
        queued += 1;
        let room = Settings::new(1).max_outgoing_bytes / big.len() + 2;
        assert!(queued <= room, "the queue never filled up");
    };
    assert!(queued >= 2, "only {queued} queued before waiting");
    sender.abort();
    let result = within(LIMIT, "the waiting broadcast to give up", &mut waiting).await;
    assert!(matches!(result, Err(Error::Closed)), "{result:?}");
    first.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broadcast_waiting_for_room_goes_out_in_its_turn_once_there_is_room() {
    let (gated, sender, receiver) = gated_pair().await;
    let mut subscription = receiver
        .subscribe("t", SubscribeOptions::default())
        .await
        .unwrap();
    let first = first_held(&gated, &sender).await;
    let big = |i: u8| Bytes::from(vec![i; 61 * 1024]);
    let mut queued = 0u8;
    let mut waiting = loop {
        let mut sending = Box::pin(sender.broadcast("t", big(queued)));
        match sending.as_mut().now_or_never() {
            Some(result) => result.unwrap(),
            None => break sending,
        }
        queued += 1;
        assert!(queued < 200, "the queue never filled up");
    };
    // Still waiting a while later: nothing made room.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        waiting.as_mut().now_or_never().is_none(),
        "a broadcast went past a full queue"
    );
    gated.release();
    first.await.unwrap().unwrap();
    within(LIMIT, "the waiting broadcast", &mut waiting)
        .await
        .unwrap();
    within(LIMIT, "every broadcast, in order", async {
        let message = subscription.recv().await.unwrap();
        assert_eq!(message.payload, "first");
        for i in 0..=queued {
            let message = subscription.recv().await.unwrap();
            assert_eq!(message.payload, big(i), "broadcast {i} after the first");
        }
    })
    .await;
    assert_eq!(receiver.stats().messages_lost, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_batch_is_dropped_whole_and_reported_with_its_sender() {
    let network = MemoryNetwork::new();
    let receiver = Arc::new(network.start(Settings::new(2)).unwrap());
    let forger = network.connect(9);
    let mut events = receiver.events();
    let codec = Codec::new(&Settings::new(2).cluster, None, false, 1 << 20);
    let mut batch = Batch::new(9, 1, 64);
    batch.push(1, b"t", b"one");
    batch.push(2, b"t", b"two");
    let mut frame = codec.seal_batch(batch).to_vec();
    // The second record repeats the topic and claims more payload than there is.
    let last_length = frame.len() - 3 - 4;
    frame[last_length] = 0x7f;
    forger.transport.publish(Bytes::from(frame)).await.unwrap();
    let dropped = within(
        LIMIT,
        "the batch to be reported",
        event(&mut events, |e| matches!(e, Event::Dropped { .. })),
    )
    .await;
    let Event::Dropped { reason, detail } = dropped else {
        unreachable!()
    };
    assert_eq!(reason, DropReason::Malformed);
    assert!(
        detail.contains("from node 9") && detail.contains("message 1 of the batch"),
        "{detail}"
    );
    let stats = receiver.stats();
    assert_eq!(
        (stats.dropped_malformed, stats.broadcasts_delivered),
        (1, 0)
    );
}
