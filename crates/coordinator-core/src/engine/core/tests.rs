//! The core driven by hand: no sockets, no sleeping, time passed in.

use super::*;
use crate::envelope::{Batch, peek_kind};

const MS: Duration = Duration::from_millis(1);

fn settings(id: NodeId) -> Settings {
    Settings::new(id).reorder_timeout(100 * MS)
}

/// Two cores that have heard each other; every frame so far delivered and sent.
struct Pair {
    t0: Instant,
    a: Core,
    b: Core,
}

impl Pair {
    fn new() -> Self {
        Self::with(settings(1), settings(2))
    }

    fn with(a: Settings, b: Settings) -> Self {
        let t0 = Instant::now();
        let mut pair = Self {
            t0,
            a: Core::new(&a, 10, false),
            b: Core::new(&b, 20, false),
        };
        pair.a.start(t0);
        pair.b.start(t0);
        pair.pump();
        pair.outputs_a();
        pair.outputs_b();
        pair
    }

    /// Delivers every frame either core has to send, and reports each sent.
    fn pump(&mut self) {
        loop {
            let mut moved = false;
            while let Some(t) = self.a.poll_transmit().or_else(|| self.a.poll_batch()) {
                self.b.handle_frame(self.t0, t.frame);
                self.a.sent(self.t0, t.token, Ok(()));
                moved = true;
            }
            while let Some(t) = self.b.poll_transmit().or_else(|| self.b.poll_batch()) {
                self.a.handle_frame(self.t0, t.frame);
                self.b.sent(self.t0, t.token, Ok(()));
                moved = true;
            }
            if !moved {
                return;
            }
        }
    }

    fn outputs_a(&mut self) -> Vec<Output> {
        std::iter::from_fn(|| self.a.poll_output()).collect()
    }

    fn outputs_b(&mut self) -> Vec<Output> {
        std::iter::from_fn(|| self.b.poll_output()).collect()
    }
}

fn now_transmit(sending: Sending) -> (u64, Transmit) {
    match sending {
        Sending::Now { seq, transmit } => (seq, transmit),
        other => panic!("expected to send at once, got {other:?}"),
    }
}

/// What reached the application: gaps as `(first, count)`, and payloads.
fn seen(outputs: &[Output]) -> (Vec<(u64, u64)>, Vec<Bytes>) {
    let mut gaps = Vec::new();
    let mut payloads = Vec::new();
    for output in outputs {
        match output {
            Output::Gap { gap, .. } => gaps.push((gap.first, gap.count)),
            Output::Incoming { payload, .. } => payloads.push(payload.clone()),
            Output::Broadcast(envelope) => payloads.push(envelope.payload.clone()),
            _ => {}
        }
    }
    (gaps, payloads)
}

fn link_down() -> TransportError {
    TransportError::LinkDown {
        carrier: "test",
        detail: "gone".into(),
    }
}

#[test]
fn a_failed_send_that_never_arrived_is_reported_lost_and_the_next_delivered() {
    let mut p = Pair::new();
    let (one, lost) = now_transmit(p.a.send(p.t0, 2, Bytes::from_static(b"one")).unwrap());
    p.a.sent(p.t0, lost.token, Err(link_down()));
    let (two, kept) = now_transmit(p.a.send(p.t0, 2, Bytes::from_static(b"two")).unwrap());
    assert_eq!((one, two), (1, 2), "a number is never given back");
    p.b.handle_frame(p.t0, kept.frame);
    assert!(
        seen(&p.outputs_b()).1.is_empty(),
        "held for the missing one"
    );
    p.b.handle_timeout(p.t0 + 100 * MS);
    assert_eq!(
        seen(&p.outputs_b()),
        (vec![(1, 1)], vec![Bytes::from_static(b"two")])
    );
}

#[test]
fn a_send_reported_failed_that_arrived_is_not_followed_by_a_duplicate_number() {
    // Before the fix the second message took number 1 again, and the
    // receiver dropped it as a duplicate: lost with no gap anywhere.
    let mut p = Pair::new();
    let (_, first) = now_transmit(p.a.send(p.t0, 2, Bytes::from_static(b"one")).unwrap());
    p.b.handle_frame(p.t0, first.frame);
    p.a.sent(p.t0, first.token, Err(TransportError::Stalled(MS)));
    let (_, second) = now_transmit(p.a.send(p.t0, 2, Bytes::from_static(b"two")).unwrap());
    p.b.handle_frame(p.t0, second.frame);
    assert_eq!(
        seen(&p.outputs_b()),
        (
            vec![],
            vec![Bytes::from_static(b"one"), Bytes::from_static(b"two")]
        )
    );
}

#[test]
fn a_broadcast_that_failed_after_reaching_some_is_a_gap_only_where_it_is_missing() {
    let mut p = Pair::new();
    let Broadcasting::Alone { seq, transmit } =
        p.a.broadcast(p.t0, "t", &Bytes::from_static(b"one"))
            .unwrap()
    else {
        panic!("an idle carrier takes it at once")
    };
    // It reached b, then the carrier failed on another peer.
    p.b.handle_frame(p.t0, transmit.frame);
    p.a.sent(p.t0, transmit.token, Err(link_down()));
    let later = p.t0 + 10 * MS;
    let Broadcasting::Alone { seq: next, .. } =
        p.a.broadcast(later, "t", &Bytes::from_static(b"two"))
            .unwrap()
    else {
        panic!("idle again")
    };
    assert_eq!((seq, next), (1, 2));
    assert_eq!(
        p.a.broadcasts_settled(),
        1,
        "heartbeats announce the failed one"
    );
    assert_eq!(seen(&p.outputs_b()).1, vec![Bytes::from_static(b"one")]);
}

#[test]
fn a_stalled_destination_fails_what_waits_for_it_and_never_blocks_for_good() {
    let mut s = settings(1).send_timeout(500 * MS);
    s.max_outgoing_bytes = 100;
    let mut p = Pair::with(s, settings(2));
    let t0 = p.t0;
    let (_, stuck) = now_transmit(p.a.send(t0, 2, Bytes::from_static(b"stuck")).unwrap());
    let Sending::Queued { seq, lane } = p.a.send(t0, 2, Bytes::from(vec![0; 60])).unwrap() else {
        panic!("one frame per destination with the carrier")
    };
    let full = p.a.send(t0, 2, Bytes::from(vec![0; 60]));
    assert!(
        matches!(full, Err(Error::Backlog { waiting_bytes, .. }) if waiting_bytes > 60),
        "{full:?}"
    );
    assert_eq!(p.a.poll_timeout().map(|at| at <= t0 + 500 * MS), Some(true));
    p.a.handle_timeout(t0 + 500 * MS);
    let failed: Vec<_> = p
        .outputs_a()
        .into_iter()
        .filter_map(|o| match o {
            Output::Sent {
                lane,
                first,
                last,
                result,
            } => Some(((lane, first, last), result)),
            _ => None,
        })
        .collect();
    assert!(
        matches!(&failed[..], [(range, Err(Error::Transport(TransportError::Stalled(_))))] if *range == (lane, seq, seq)),
        "{failed:?}"
    );
    // The driver's own deadline ends the stuck send: the lane is free again,
    // and the refused message took no number.
    p.a.sent(
        t0 + 500 * MS,
        stuck.token,
        Err(TransportError::Stalled(500 * MS)),
    );
    assert!(matches!(
        p.a.send(t0 + 500 * MS, 2, Bytes::from_static(b"next"))
            .unwrap(),
        Sending::Now { seq: 3, .. }
    ));
}

#[test]
fn a_request_settles_by_its_deadline_whatever_the_carrier_does() {
    let mut p = Pair::new();
    let (id, sending) =
        p.a.request(p.t0, 2, Bytes::from_static(b"?"), 200 * MS)
            .unwrap();
    // The carrier never answers for the frame.
    let _ = now_transmit(sending);
    assert_eq!(p.a.poll_timeout(), Some(p.t0 + 200 * MS));
    p.a.handle_timeout(p.t0 + 199 * MS);
    assert!(p.outputs_a().is_empty());
    p.a.handle_timeout(p.t0 + 200 * MS);
    let outputs = p.outputs_a();
    assert!(
        matches!(
            &outputs[..],
            [Output::Replied { request, result: Err(Error::Timeout { node: 2, .. }) }] if *request == id
        ),
        "{outputs:?}"
    );
}

/// A frame from node `from` (run `incarnation`) without a key, as anyone
/// who can reach the broker could write it.
fn forged(kind: Kind, from: NodeId, incarnation: u64, seq: u64, payload: &[u8]) -> Bytes {
    let codec = Codec::new(&Settings::new(0).cluster, None, false, 1 << 20);
    codec.encode_parts(
        &Header {
            kind,
            from,
            from_incarnation: incarnation,
            to: 0,
            to_incarnation: 0,
            seq,
            aux: seq,
        },
        if kind == Kind::Broadcast { b"t" } else { b"" },
        payload,
    )
}

#[test]
fn numbers_at_the_end_of_the_range_neither_panic_nor_wrap() {
    let t0 = Instant::now();
    let mut core = Core::new(&settings(1), 1, false);
    core.start(t0);
    for (kind, seq) in [
        (Kind::Heartbeat, u64::MAX),
        (Kind::Heartbeat, u64::MAX - 1),
        (Kind::Broadcast, u64::MAX),
        (Kind::Broadcast, u64::MAX - 1),
        (Kind::Join, u64::MAX),
    ] {
        core.handle_frame(t0, forged(kind, 9, 1, seq, b"x"));
    }
    let codec = Codec::new(&Settings::new(0).cluster, None, false, 1 << 20);
    let mut batch = Batch::new(8, 1, 64);
    batch.push(u64::MAX - 1, b"t", b"a");
    batch.push(u64::MAX, b"t", b"b");
    core.handle_frame(t0, codec.seal_batch(batch));
    core.handle_timeout(t0 + Duration::from_secs(1));
    let outputs: Vec<Output> = std::iter::from_fn(|| core.poll_output()).collect();
    let refused = outputs
        .iter()
        .filter(|o| {
            matches!(o, Output::Event(Event::Dropped { reason: DropReason::Malformed, detail })
                if detail.contains("out of range"))
        })
        .count();
    assert_eq!(refused, 4, "{outputs:?}");
    assert!(core.member(9).is_some() && core.member(8).is_some());
}

#[test]
fn forged_senders_cannot_grow_the_members_or_the_streams_without_bound() {
    let t0 = Instant::now();
    let mut core = Core::new(&settings(1).max_members(8), 1, false);
    core.start(t0);
    for id in 100..1100 {
        core.handle_frame(t0, forged(Kind::Heartbeat, id, 1, 0, b""));
    }
    // One id, a new run each time: each replaces the one before.
    for incarnation in 1..1000 {
        core.handle_frame(t0, forged(Kind::Broadcast, 100, incarnation, 1, b"x"));
    }
    let memory = core.memory();
    assert_eq!(memory.members, 8);
    assert!(memory.streams <= 16, "{memory:?}");
    let overflows = std::iter::from_fn(|| core.poll_output())
        .filter(|o| matches!(o, Output::Event(Event::Overflow { queue, .. }) if queue == "members"))
        .count();
    assert_eq!(overflows, 992);
    assert_eq!(core.stats().snapshot().dropped_overflow, 992);
}

#[test]
fn messages_held_out_of_order_stay_within_their_byte_bound() {
    let t0 = Instant::now();
    let mut s = settings(1);
    s.max_held_bytes = 64 * 1024;
    let mut core = Core::new(&s, 1, false);
    core.start(t0);
    core.handle_frame(t0, forged(Kind::Heartbeat, 9, 1, 0, b""));
    // Number 1 never comes; 2.. wait for it, 10 KiB each.
    for seq in 2..40 {
        core.handle_frame(t0, forged(Kind::Broadcast, 9, 1, seq, &[0; 10 * 1024]));
        assert!(core.memory().held_bytes <= 64 * 1024, "{:?}", core.memory());
    }
    let outputs: Vec<Output> = std::iter::from_fn(|| core.poll_output()).collect();
    let (gaps, delivered) = seen(&outputs);
    assert_eq!(
        gaps.first(),
        Some(&(1, 1)),
        "the missing one is declared lost"
    );
    assert!(delivered.len() >= 6, "what waited behind it is delivered");
}

#[test]
fn what_a_restarted_sender_sent_and_was_missed_is_reported_not_dropped() {
    let t0 = Instant::now();
    let mut core = Core::new(&settings(1), 1, false);
    core.start(t0);
    core.handle_frame(t0, forged(Kind::Heartbeat, 9, 1, 0, b""));
    core.handle_frame(t0, forged(Kind::Broadcast, 9, 1, 1, b"one"));
    core.handle_frame(t0, forged(Kind::Broadcast, 9, 1, 3, b"three"));
    // Node 9 restarts before number 2 ever arrives.
    core.handle_frame(t0, forged(Kind::Heartbeat, 9, 2, 0, b""));
    let outputs: Vec<Output> = std::iter::from_fn(|| core.poll_output()).collect();
    assert_eq!(
        seen(&outputs),
        (
            vec![(2, 1)],
            vec![Bytes::from_static(b"one"), Bytes::from_static(b"three")]
        )
    );
    assert_eq!(core.memory().held_bytes, 0);
}

/// Every frame `from` has to send, each reported sent.
fn drain(from: &mut Core, now: Instant) -> Vec<Bytes> {
    let mut frames = Vec::new();
    while let Some(t) = from.poll_transmit().or_else(|| from.poll_batch()) {
        from.sent(now, t.token, Ok(()));
        frames.push(t.frame);
    }
    frames
}

#[test]
fn without_heartbeats_nothing_periodic_is_sent_and_a_link_back_up_joins_again() {
    let t0 = Instant::now();
    let quiet = |id| settings(id).heartbeats(false);
    let (mut a, mut c) = (
        Core::new(&quiet(1), 10, false),
        Core::new(&quiet(3), 30, false),
    );
    assert_eq!(a.failure_detection(), FailureDetection::Off);
    assert_eq!(
        Core::new(&settings(2), 20, false).failure_detection(),
        FailureDetection::Heartbeats
    );
    a.start(t0);
    c.start(t0);
    // Both joins are lost: node 1's link was down.
    drain(&mut a, t0);
    drain(&mut c, t0);
    a.handle_link(Some("the broker went away".into()));
    a.handle_link(None);
    // Node 1 joins again once its link is up; node 3 answers it.
    for _ in 0..3 {
        for frame in drain(&mut a, t0) {
            c.handle_frame(t0, frame);
        }
        for frame in drain(&mut c, t0) {
            a.handle_frame(t0, frame);
        }
    }
    let ids = |core: &Core| core.members().iter().map(|m| m.id).collect::<Vec<_>>();
    assert_eq!(ids(&a), vec![1, 3]);
    assert_eq!(ids(&c), vec![1, 3]);
    // A minute of silence: no heartbeat is due, and nobody is suspected.
    let later = t0 + Duration::from_secs(60);
    a.handle_timeout(later);
    assert!(
        drain(&mut a, later).is_empty(),
        "something periodic was sent"
    );
    assert!(
        a.members().iter().all(|m| m.state == MemberState::Alive),
        "{:?}",
        a.members()
    );
}

#[test]
fn warnings_of_dropped_frames_are_limited_per_window_and_say_what_they_left_out() {
    let t0 = Instant::now();
    let mut warnings = DropWarnings::default();
    for _ in 0..DropWarnings::PER_WINDOW {
        assert_eq!(
            warnings.admit(DropReason::Malformed, t0),
            Admit::Log { suppressed: 0 }
        );
    }
    for _ in 0..1000 {
        assert_eq!(warnings.admit(DropReason::Malformed, t0), Admit::Quiet);
    }
    // Another kind has its own allowance.
    assert_eq!(
        warnings.admit(DropReason::Unauthenticated, t0),
        Admit::Log { suppressed: 0 }
    );
    // The next window's first warning counts what was left out.
    let later = t0 + DropWarnings::WINDOW;
    assert_eq!(
        warnings.admit(DropReason::Malformed, later),
        Admit::Log { suppressed: 1000 }
    );
    assert_eq!(
        warnings.admit(DropReason::Malformed, later),
        Admit::Log { suppressed: 0 }
    );
}

/// Node 2 starts while node 1 broadcasts: node 1's answer to node 2's join
/// says it has sent broadcast 1, and on a carrier with more than one path
/// (a broker's subject per node beside the cluster's) the answer can come
/// first. Broadcast 1 was published after node 2 was there to get it, and
/// it arrives: it is delivered. It was dropped as a duplicate, and nobody
/// was told (Stalwart's adapter test on NATS timed out waiting for it).
#[test]
fn a_broadcast_overtaken_by_the_answer_to_a_join_is_delivered() {
    let t0 = Instant::now();
    let mut one = Core::new(&settings(1), 10, false);
    let mut two = Core::new(&settings(2), 20, false);
    one.start(t0);
    while let Some(t) = one.poll_transmit() {
        // Nobody else is there yet.
        one.sent(t0, t.token, Ok(()));
    }
    two.start(t0);
    let join = two.poll_transmit().expect("node 2's join");
    two.sent(t0, join.token, Ok(()));
    // Node 1 broadcasts before it reads the join.
    let broadcast = match one.broadcast(t0, "t", &Bytes::from_static(b"one")).unwrap() {
        Broadcasting::Alone { transmit, .. } => transmit,
        other => panic!("expected to publish at once, got {other:?}"),
    };
    one.sent(t0, broadcast.token, Ok(()));
    one.handle_frame(t0, join.frame);
    let answer = one.poll_transmit().expect("node 1's answer to the join");
    assert_eq!(
        peek_kind(&answer.frame),
        Some(Kind::Announce),
        "the answer to a join"
    );
    one.sent(t0, answer.token, Ok(()));
    // The answer reaches node 2 before the broadcast.
    two.handle_frame(t0, answer.frame);
    two.handle_frame(t0, broadcast.frame);
    two.handle_timeout(t0 + 200 * MS);
    let outputs: Vec<Output> = std::iter::from_fn(|| two.poll_output()).collect();
    assert_eq!(
        seen(&outputs),
        (vec![], vec![Bytes::from_static(b"one")]),
        "{outputs:?}"
    );
}
