//! Messages to one node that wait behind the frame the carrier has for it go
//! out together, as one `DirectBatch`, in order; each caller is told its own
//! message's outcome, and what a refused batch carried is reported lost.

use async_trait::async_trait;
use bytes::Bytes;
use coordinator_core::envelope::{Kind, peek_kind};
use coordinator_core::transport::Transport;
use coordinator_core::{
    Coordinator, Error, Event, Node, NodeId, SendOutcome, Settings, StreamKind, TransportError,
};
use futures_util::future::BoxFuture;
use parking_lot::Mutex;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant};
use tests::wait::{event, until, within};
use tokio::sync::Semaphore;

const LIMIT: Duration = Duration::from_secs(10);

/// A carrier that can hold back the frames to one node, and refuse batches.
struct Gated {
    inner: Arc<dyn Transport>,
    holding: AtomicBool,
    gate: Semaphore,
    refuse_batches: AtomicBool,
    /// The kind of every frame handed to `send_to`, in order.
    kinds: Mutex<Vec<Option<Kind>>>,
}

#[async_trait]
impl Transport for Gated {
    async fn publish(&self, frame: Bytes) -> Result<(), TransportError> {
        self.inner.publish(frame).await
    }

    async fn send_to(&self, node: NodeId, frame: Bytes) -> Result<(), TransportError> {
        let kind = peek_kind(&frame);
        if kind == Some(Kind::Announce) {
            return self.inner.send_to(node, frame).await;
        }
        self.kinds.lock().push(kind);
        if self.holding.load(Ordering::SeqCst) {
            self.gate.acquire().await.expect("gate open").forget();
        }
        if kind == Some(Kind::DirectBatch) && self.refuse_batches.load(Ordering::SeqCst) {
            return Err(TransportError::LinkDown {
                carrier: "Gated",
                detail: "refused by the test".into(),
            });
        }
        self.inner.send_to(node, frame).await
    }

    async fn close(&self) {
        self.inner.close().await
    }
}

/// A gate around `inner`, open, refusing nothing.
fn gated(inner: Arc<dyn Transport>) -> Arc<Gated> {
    Arc::new(Gated {
        inner,
        holding: AtomicBool::new(false),
        gate: Semaphore::new(0),
        refuse_batches: AtomicBool::new(false),
        kinds: Mutex::new(Vec::new()),
    })
}

/// Node 1 over a gated carrier and node 2, on one memory network, seeing each other.
async fn gated_pair() -> (Arc<Gated>, Arc<Node>, Arc<Node>) {
    tests::harness::wrapped_memory_pair(gated).await
}

/// Sends "first" to node 2 from a task of its own and holds its frame in
/// the carrier: what is sent to node 2 after it waits its turn.
async fn first_held(gated: &Arc<Gated>, sender: &Arc<Node>) -> tokio::task::JoinHandle<()> {
    gated.holding.store(true, Ordering::SeqCst);
    let first = tokio::spawn({
        let sender = sender.clone();
        async move {
            sender.send(2, Bytes::from_static(b"first")).await.unwrap();
        }
    });
    until(LIMIT, "the first frame to reach the carrier", || {
        !gated.kinds.lock().is_empty()
    })
    .await;
    first
}

/// The carrier's refusal, as the test's carrier words it.
fn refused<T>(result: &Result<T, Error>) -> bool {
    matches!(
        result,
        Err(Error::Transport(TransportError::LinkDown { .. }))
    )
}

fn release(gated: &Gated) {
    gated.holding.store(false, Ordering::SeqCst);
    gated.gate.add_permits(Semaphore::MAX_PERMITS / 2);
}

/// Polls each call once, in order, so that each is numbered (and waits its
/// turn) before the next one is made.
async fn made_in_order<T>(calls: &mut [BoxFuture<'_, T>]) {
    for call in calls.iter_mut() {
        let polled = std::future::poll_fn(|cx| Poll::Ready(call.as_mut().poll(cx))).await;
        assert!(
            polled.is_pending(),
            "a call finished while the lane was busy"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_waits_for_one_node_goes_out_as_one_batch_in_order_each_caller_told() {
    let (gated, sender, receiver) = gated_pair().await;
    let mut inbox = receiver.inbox().unwrap();
    let first = first_held(&gated, &sender).await;
    // Ten one-way messages and, among them, two requests, while the carrier
    // still has "first".
    let mut sends: Vec<BoxFuture<'_, Result<(), Error>>> = Vec::new();
    let mut requests: Vec<BoxFuture<'_, Result<Bytes, Error>>> = Vec::new();
    for i in 0..10 {
        sends.push(sender.send(2, Bytes::from(format!("m{i}"))));
        let last = sends.len() - 1;
        made_in_order(&mut sends[last..]).await;
        if i == 3 || i == 7 {
            requests.push(sender.request(2, Bytes::from(format!("r{i}")), LIMIT));
            let last = requests.len() - 1;
            made_in_order(&mut requests[last..]).await;
        }
    }
    release(&gated);
    first.await.unwrap();
    for send in sends {
        within(LIMIT, "each queued send to be told it went", send)
            .await
            .unwrap();
    }
    let expected = [
        "first", "m0", "m1", "m2", "m3", "r3", "m4", "m5", "m6", "m7", "r7", "m8", "m9",
    ];
    let mut got = Vec::new();
    while got.len() < expected.len() {
        let incoming = within(LIMIT, "every message", inbox.recv()).await.unwrap();
        got.push(String::from_utf8(incoming.payload.to_vec()).unwrap());
        if incoming.is_request() {
            let answer = Bytes::from(got.last().unwrap().to_uppercase());
            incoming.reply(answer).await.unwrap();
        }
    }
    assert_eq!(got, expected, "in the order they were made");
    let mut answers = Vec::new();
    for request in requests {
        answers.push(within(LIMIT, "a reply", request).await.unwrap());
    }
    assert_eq!(answers, ["R3", "R7"]);
    // "first" alone, then the twelve that waited, in one frame.
    let kinds = gated.kinds.lock().clone();
    assert_eq!(
        kinds[..2],
        [Some(Kind::Direct), Some(Kind::DirectBatch)],
        "{kinds:?}"
    );
    assert_eq!(sender.stats().batches_sent, 1, "{:?}", sender.stats());
    assert_eq!(sender.stats().direct_sent, 13);
    assert_eq!(receiver.stats().batches_received, 1);
    assert_eq!(receiver.stats().messages_lost, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_batch_fails_each_of_its_messages_and_the_receiver_reports_them_lost() {
    let (gated, sender, receiver) = gated_pair().await;
    let mut inbox = receiver.inbox().unwrap();
    let mut events = receiver.events();
    let first = first_held(&gated, &sender).await;
    let mut sends: Vec<BoxFuture<'_, Result<(), Error>>> = (0..5)
        .map(|i| sender.send(2, Bytes::from(format!("m{i}"))))
        .collect();
    made_in_order(&mut sends).await;
    let mut request = [sender.request(2, Bytes::from_static(b"r"), LIMIT)];
    made_in_order(&mut request).await;
    let [request] = request;
    gated.refuse_batches.store(true, Ordering::SeqCst);
    release(&gated);
    first.await.unwrap();
    for send in sends {
        let result = within(LIMIT, "each send to be told it failed", send).await;
        assert!(refused(&result), "{result:?}");
    }
    // The request fails with the batch's error, not at its time-out.
    let started = Instant::now();
    let result = within(LIMIT, "the request to fail", request).await;
    assert!(refused(&result), "{result:?}");
    assert!(started.elapsed() < LIMIT / 2);
    assert_eq!(
        sender.stats().send_failures,
        6,
        "one per message: {:?}",
        sender.stats()
    );
    // Their numbers stay spent: the next message is number 8, and the
    // receiver reports 2 to 7 lost.
    gated.refuse_batches.store(false, Ordering::SeqCst);
    sender.send(2, Bytes::from_static(b"after")).await.unwrap();
    for expected in ["first", "after"] {
        let incoming = within(LIMIT, "a message", inbox.recv()).await.unwrap();
        assert_eq!(incoming.payload, expected);
    }
    let gap = within(
        LIMIT,
        "the gap",
        event(&mut events, |e| matches!(e, Event::Gap { .. })),
    )
    .await;
    let Event::Gap {
        from,
        stream,
        first,
        count,
    } = gap
    else {
        unreachable!()
    };
    assert_eq!((from, stream, first, count), (1, StreamKind::Direct, 2, 6));
}

/// Posts `payloads` to node 2 from this task: each post returns while the
/// carrier still holds "first", without waiting for its own outcome.
async fn posted(sender: &Arc<Node>, payloads: &[&str]) -> Vec<SendOutcome> {
    let mut outcomes = Vec::new();
    for payload in payloads {
        let post = sender.post(2, Bytes::from(payload.to_string()));
        outcomes.push(within(LIMIT, "a post to return", post).await.unwrap());
    }
    outcomes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posts_return_at_once_go_out_in_their_order_and_each_is_told_its_own_outcome() {
    let (gated, sender, receiver) = gated_pair().await;
    let mut inbox = receiver.inbox().unwrap();
    let first = first_held(&gated, &sender).await;
    let mut outcomes = posted(&sender, &["p0", "p1", "p2"]).await;
    // Unknown nodes fail at once, as `send` does, and take no number.
    let unknown = sender.post(9, Bytes::from_static(b"lost")).await;
    assert!(matches!(unknown, Err(Error::UnknownNode(9))), "{unknown:?}");
    outcomes.extend(posted(&sender, &["p3", "p4"]).await);
    // Nothing is settled while the carrier holds the frame before them.
    for outcome in &mut outcomes {
        let polled = std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *outcome).poll(cx))).await;
        assert!(polled.is_pending(), "an outcome came before its frame went");
    }
    release(&gated);
    first.await.unwrap();
    for outcome in outcomes {
        within(LIMIT, "each posted message's outcome", outcome)
            .await
            .unwrap();
    }
    let mut got = Vec::new();
    for _ in 0..6 {
        let incoming = within(LIMIT, "every message", inbox.recv()).await.unwrap();
        got.push(String::from_utf8(incoming.payload.to_vec()).unwrap());
    }
    assert_eq!(got, ["first", "p0", "p1", "p2", "p3", "p4"]);
    let kinds = gated.kinds.lock().clone();
    assert_eq!(
        kinds,
        [Some(Kind::Direct), Some(Kind::DirectBatch)],
        "the five posts went out as one batch"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_batch_fails_each_posted_message_and_the_next_post_goes() {
    let (gated, sender, receiver) = gated_pair().await;
    let mut inbox = receiver.inbox().unwrap();
    let first = first_held(&gated, &sender).await;
    let outcomes = posted(&sender, &["q0", "q1"]).await;
    gated.refuse_batches.store(true, Ordering::SeqCst);
    release(&gated);
    first.await.unwrap();
    for outcome in outcomes {
        let result = within(LIMIT, "each outcome to be told", outcome).await;
        assert!(refused(&result), "{result:?}");
    }
    gated.refuse_batches.store(false, Ordering::SeqCst);
    let after = posted(&sender, &["after"]).await;
    for outcome in after {
        within(LIMIT, "the last outcome", outcome).await.unwrap();
    }
    for expected in ["first", "after"] {
        let incoming = within(LIMIT, "a message", inbox.recv()).await.unwrap();
        assert_eq!(incoming.payload, expected);
    }
    assert_eq!(sender.stats().send_failures, 2, "{:?}", sender.stats());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_that_finds_the_lane_full_waits_for_room_instead_of_failing() {
    // Room for about four 100-byte messages to wait for node 2.
    let settings = Settings::new(1).memory(1 << 20, 4 * (100 + 64), 1 << 20);
    let (gated, sender, receiver) = tests::harness::wrapped_memory_pair_with(settings, gated).await;
    let mut inbox = receiver.inbox().unwrap();
    let first = first_held(&gated, &sender).await;
    let body = |i: usize| Bytes::from(format!("{i:0>100}"));
    // `send` from other tasks would fail with a backlog; a post waits.
    let mut outcomes = Vec::new();
    let mut waiting = None;
    for i in 0..64 {
        let mut post = Box::pin(sender.post(2, body(i)));
        match tokio::time::timeout(Duration::from_millis(200), &mut post).await {
            Ok(outcome) => outcomes.push(outcome.unwrap()),
            Err(_) => {
                waiting = Some((i, post));
                break;
            }
        }
    }
    let (last, post) = waiting.expect("a post to wait once the lane is full");
    assert!(
        (1..=8).contains(&last),
        "{last} posts were taken before one waited"
    );
    release(&gated);
    first.await.unwrap();
    outcomes.push(
        within(LIMIT, "the waiting post to return", post)
            .await
            .unwrap(),
    );
    for outcome in outcomes {
        within(LIMIT, "each outcome", outcome).await.unwrap();
    }
    let first = within(LIMIT, "the first message", inbox.recv())
        .await
        .unwrap();
    assert_eq!(first.payload, "first");
    for i in 0..=last {
        let incoming = within(LIMIT, "every posted message", inbox.recv())
            .await
            .unwrap();
        assert_eq!(incoming.payload, body(i), "in the order they were posted");
    }
    assert_eq!(sender.stats().send_failures, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posts_behind_a_stalled_link_fail_with_the_stall_by_the_send_timeout() {
    const SEND_TIMEOUT: Duration = Duration::from_millis(300);
    let settings = Settings::new(1).send_timeout(SEND_TIMEOUT);
    let (gated, sender, _receiver) =
        tests::harness::wrapped_memory_pair_with(settings, gated).await;
    // The carrier never lets "first" go: the link is stalled.
    gated.holding.store(true, Ordering::SeqCst);
    let first = tokio::spawn({
        let sender = sender.clone();
        async move { sender.send(2, Bytes::from_static(b"first")).await }
    });
    until(LIMIT, "the first frame to reach the carrier", || {
        !gated.kinds.lock().is_empty()
    })
    .await;
    let started = Instant::now();
    let outcomes = posted(&sender, &["s0", "s1", "s2"]).await;
    for outcome in outcomes {
        let result = within(LIMIT, "each posted message to fail", outcome).await;
        assert!(
            matches!(result, Err(Error::Transport(TransportError::Stalled(_)))),
            "{result:?}"
        );
    }
    assert!(
        started.elapsed() < 4 * SEND_TIMEOUT,
        "failed after {:?}",
        started.elapsed()
    );
    let first = within(LIMIT, "the held send to fail", first).await.unwrap();
    assert!(
        matches!(first, Err(Error::Transport(TransportError::Stalled(_)))),
        "{first:?}"
    );
}

/// One thread for everything: a task that posts message after message and
/// awaits no outcome until the end still lets the frames go out and node 2
/// read them (a post takes none of the task's budget, but one that finds
/// its lane full waits for room, and so yields).
#[tokio::test(flavor = "current_thread")]
async fn a_task_posting_in_a_loop_on_one_thread_lets_the_frames_go_out() {
    const COUNT: usize = 5_000;
    // A task that never yielded would hold the only thread, and no time-out
    // of the runtime could end the test: a thread of its own fails it.
    let done = Arc::new(AtomicBool::new(false));
    std::thread::spawn({
        let done = done.clone();
        move || {
            std::thread::sleep(Duration::from_secs(60));
            if !done.load(Ordering::SeqCst) {
                eprintln!("the posting task held the only thread for 60 s");
                std::process::exit(1);
            }
        }
    });
    // Room for about sixteen 100-byte messages to wait for node 2.
    let settings = Settings::new(1).memory(1 << 20, 16 * (100 + 64), 1 << 20);
    let (_, sender, receiver) = tests::harness::wrapped_memory_pair_with(settings, gated).await;
    let mut inbox = receiver.inbox().unwrap();
    let body = |i: usize| Bytes::from(format!("{i:0>100}"));
    let reader = tokio::spawn(async move {
        for i in 0..COUNT {
            let incoming = within(LIMIT, "every posted message", inbox.recv())
                .await
                .unwrap();
            assert_eq!(incoming.payload, body(i), "in the order they were posted");
        }
    });
    let mut outcomes = Vec::with_capacity(COUNT);
    for i in 0..COUNT {
        outcomes.push(sender.post(2, body(i)).await.unwrap());
    }
    for outcome in outcomes {
        within(LIMIT, "each outcome", outcome).await.unwrap();
    }
    within(LIMIT, "node 2 to read every message", reader)
        .await
        .unwrap();
    done.store(true, Ordering::SeqCst);
    let stats = receiver.stats();
    assert_eq!(stats.dropped_overflow + stats.messages_lost, 0, "{stats:?}");
    assert_eq!(sender.stats().send_failures, 0);
}
